//! Translation between aigw's canonical model request/result and the Anthropic Messages API:
//! `POST /v1/messages`, top-level `system`, `x-api-key` and `anthropic-version`, SSE events.

use crate::types::{
    Completion, Credential, FinishReason, Framing, Header, Method, ModelRequest, PluginError, PluginInfo, StreamChunk,
    UpstreamRequest, Usage,
};
use aigw_plugin_sdk::embeddings::{EmbeddingsRequest, EmbeddingsResult};
use aigw_plugin_sdk::model_rules;
use serde::{Deserialize, Serialize};

/// Provider names routed to this plugin: `anthropic/<model>`.
pub const PROVIDERS: [&str; 1] = ["anthropic"];

/// The Messages API version this plugin speaks.
pub const API_VERSION: &str = "2023-06-01";

/// The Messages API requires `max_tokens`; used when the prompt sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// Plugin identity reported to the host.
pub fn info() -> PluginInfo {
    aigw_plugin_sdk::plugin_info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), &PROVIDERS, Framing::Sse, None)
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<Turn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    stream: bool,
}

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: std::borrow::Cow<'a, str>,
}

/// System messages become the top-level `system` (joined by blank lines); the rest must start
/// with the user, as the Messages API requires. A last assistant turn (a prefill) that the model
/// refuses (Claude 4.6 and later) is sent as the user's, and `temperature` is left out for the
/// models that refuse it.
pub fn build_request(request: &ModelRequest) -> Result<UpstreamRequest, PluginError> {
    if request.model.is_empty() {
        return Err(PluginError::InvalidInput("the model id is empty".to_string()));
    }
    let aigw_plugin_sdk::SystemAndTurns { system, turns } =
        aigw_plugin_sdk::system_and_turns(&request.messages, "Messages API")?;
    let refuses_prefill = !model_rules::accepts_assistant_prefill(&request.model);
    let count = turns.len();
    let messages = turns
        .into_iter()
        .enumerate()
        .map(|(index, (role, content))| match role {
            "assistant" if index + 1 == count && refuses_prefill => {
                Turn { role: "user", content: model_rules::prefill_as_user(content).into() }
            }
            _ => Turn { role, content: content.into() },
        })
        .collect();
    let sampling = &request.sampling;
    let body = MessagesRequest {
        model: &request.model,
        max_tokens: sampling.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        temperature: sampling.temperature.filter(|_| model_rules::accepts_temperature(&request.model)),
        top_p: sampling.top_p,
        stop_sequences: &sampling.stop,
        stream: request.stream,
    };
    let body = serde_json::to_vec(&body).map_err(|e| PluginError::InvalidInput(format!("cannot encode: {e}")))?;
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/v1/messages".to_string(),
        headers: vec![Header { name: "anthropic-version".to_string(), value: API_VERSION.to_string() }],
        body,
        credential: Credential::Header("x-api-key".to_string()),
    })
}

#[derive(Deserialize)]
struct MessagesAnswer {
    #[serde(default)]
    content: Vec<ContentBlock>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u32,
    #[serde(default)]
    output_tokens: u32,
}

fn malformed(what: impl std::fmt::Display) -> PluginError {
    PluginError::MalformedResponse(what.to_string())
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        other => FinishReason::Other(other.to_string()),
    }
}

/// Parse a complete answer: the text blocks, joined.
pub fn parse_response(body: &[u8]) -> Result<Completion, PluginError> {
    let answer: MessagesAnswer = serde_json::from_slice(body).map_err(malformed)?;
    let text = answer.content.iter().filter(|b| b.kind == "text").map(|b| b.text.as_str()).collect();
    Ok(Completion {
        text,
        finish_reason: answer.stop_reason.as_deref().map(finish_reason),
        usage: answer.usage.map(|u| Usage { input_tokens: u.input_tokens, output_tokens: u.output_tokens }),
    })
}

/// One SSE event. Usage arrives in two parts (input in `message_start`, output in
/// `message_delta`); each is reported as it comes and the host adds them up.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    message: Option<StartMessage>,
    delta: Option<Delta>,
    usage: Option<WireUsage>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct StartMessage {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(rename = "type")]
    kind: Option<String>,
    text: Option<String>,
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

fn chunk() -> StreamChunk {
    StreamChunk { text: String::new(), finish_reason: None, usage: None, done: false }
}

/// Parse one event; `event` is the SSE event name, `data` its JSON (which repeats the type).
pub fn parse_event(event: Option<&str>, data: &[u8]) -> Result<StreamChunk, PluginError> {
    let parsed: Event = serde_json::from_slice(data).map_err(malformed)?;
    let kind = event.unwrap_or(&parsed.kind);
    let mut out = chunk();
    match kind {
        "message_start" => {
            // Output so far is counted again, in total, by `message_delta`.
            let usage = parsed.message.and_then(|m| m.usage).unwrap_or_default();
            out.usage = Some(Usage { input_tokens: usage.input_tokens, output_tokens: 0 });
        }
        "content_block_delta" => {
            if let Some(delta) = parsed.delta.filter(|d| d.kind.as_deref() == Some("text_delta")) {
                out.text = delta.text.unwrap_or_default();
            }
        }
        "message_delta" => {
            out.finish_reason = parsed.delta.and_then(|d| d.stop_reason).as_deref().map(finish_reason);
            out.usage = parsed.usage.map(|u| Usage { input_tokens: 0, output_tokens: u.output_tokens });
        }
        "message_stop" => out.done = true,
        "error" => {
            let message = parsed.error.and_then(|e| e.message).unwrap_or_else(|| "unknown error".into());
            return Err(malformed(format!("the model server reported an error: {message}")));
        }
        // ping, content_block_start, content_block_stop and event types added later carry no text.
        _ => {}
    }
    Ok(out)
}

/// Anthropic's API has no embeddings (Anthropic points to other providers for them).
pub fn build_embeddings_request(_request: &EmbeddingsRequest) -> Result<UpstreamRequest, PluginError> {
    Err(aigw_plugin_sdk::no_embeddings("Anthropic's Messages API"))
}

/// Never called: no embeddings request is ever built.
pub fn parse_embeddings_response(_body: &[u8]) -> Result<EmbeddingsResult, PluginError> {
    Err(aigw_plugin_sdk::no_embeddings("Anthropic's Messages API"))
}

/// Conversations with tools.
pub use crate::conversation::{answers, build_chat_request, parse_chat_event, parse_chat_response};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Role, Sampling};
    use serde_json::{Value, json};

    fn request() -> ModelRequest {
        ModelRequest {
            model: "claude-3-5-sonnet".to_string(),
            messages: vec![
                Message { role: Role::System, content: "Be brief.".into() },
                Message { role: Role::User, content: "hi".into() },
            ],
            fill_in_middle: None,
            sampling: Sampling {
                max_tokens: None,
                temperature: Some(0.1),
                top_p: None,
                stop: vec!["Observation:".into()],
            },
            stream: true,
        }
    }

    #[test]
    fn builds_a_messages_request_with_top_level_system() {
        let built = build_request(&request()).unwrap();
        assert_eq!(built.path, "/v1/messages");
        assert!(matches!(&built.credential, Credential::Header(name) if name == "x-api-key"));
        assert_eq!(built.headers[0].value, "2023-06-01");
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(
            body,
            json!({"model": "claude-3-5-sonnet", "max_tokens": 1024, "system": "Be brief.",
                   "messages": [{"role": "user", "content": "hi"}], "temperature": 0.1,
                   "stop_sequences": ["Observation:"], "stream": true})
        );
    }

    #[test]
    fn a_conversation_must_start_with_the_user() {
        let mut req = request();
        req.messages.retain(|m| matches!(m.role, Role::System));
        assert!(matches!(build_request(&req), Err(PluginError::InvalidInput(_))));
    }

    #[test]
    fn parses_the_event_sequence() {
        let start = parse_event(
            Some("message_start"),
            br#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#,
        )
        .unwrap();
        assert_eq!(start.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((9, 0)));
        let delta = parse_event(
            Some("content_block_delta"),
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
        )
        .unwrap();
        assert_eq!(delta.text, "Hel");
        let end = parse_event(
            Some("message_delta"),
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}"#,
        )
        .unwrap();
        assert!(matches!(end.finish_reason, Some(FinishReason::Stop)));
        assert_eq!(end.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((0, 4)));
        assert!(parse_event(Some("message_stop"), br#"{"type":"message_stop"}"#).unwrap().done);
        assert!(parse_event(Some("ping"), br#"{"type":"ping"}"#).unwrap().text.is_empty());
        let error = parse_event(
            Some("error"),
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(matches!(error, Err(PluginError::MalformedResponse(m)) if m.contains("Overloaded")));
    }

    #[test]
    fn parses_a_complete_answer() {
        let done = parse_response(
            br#"{"content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}],"stop_reason":"max_tokens","usage":{"input_tokens":3,"output_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(done.text, "Hi there");
        assert!(matches!(done.finish_reason, Some(FinishReason::Length)));
    }

    #[test]
    fn a_refused_prefill_is_sent_as_the_users() {
        use crate::types::{Message, Role, Sampling};
        let request = |model: &str| ModelRequest {
            model: model.into(),
            messages: vec![
                Message { role: Role::User, content: "Question".into() },
                Message { role: Role::Assistant, content: "Thought:".into() },
            ],
            fill_in_middle: None,
            sampling: Sampling { max_tokens: None, temperature: Some(0.1), top_p: None, stop: vec![] },
            stream: false,
        };
        let body = |model: &str| -> serde_json::Value {
            serde_json::from_slice(&build_request(&request(model)).unwrap().body).unwrap()
        };
        let refused = body("claude-sonnet-4-6");
        assert_eq!(
            refused["messages"][1],
            serde_json::json!({"role": "user", "content": "[Previous assistant context]: Thought:"})
        );
        let kept = body("claude-sonnet-4-5-20250929");
        assert_eq!(kept["messages"][1], serde_json::json!({"role": "assistant", "content": "Thought:"}));
        assert!(body("claude-opus-4-7").get("temperature").is_none());
    }
}
