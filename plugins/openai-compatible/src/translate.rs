//! Translation between aigw's canonical model request/result and the OpenAI chat completions API.

use crate::types::{
    Completion, Credential, FinishReason, Framing, Message, Method, ModelRequest, PluginError, PluginInfo, Role,
    StreamChunk, UpstreamRequest, Usage,
};
use serde::{Deserialize, Serialize};

/// Provider names routed to this plugin: `custom_openai/<model>` (and bare identifiers, which the
/// host maps to `custom_openai`) and `openai/<model>`.
pub const PROVIDERS: [&str; 2] = ["custom_openai", "openai"];

/// Plugin identity reported to the host.
pub fn info() -> PluginInfo {
    PluginInfo {
        name: env!("CARGO_PKG_NAME").to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        providers: PROVIDERS.iter().map(|p| p.to_string()).collect(),
        framing: Framing::Sse,
    }
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    stream: bool,
    /// Asks for a final usage chunk; servers that predate the option ignore unknown fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// `POST /chat/completions` with the rendered messages; the bearer key is injected by the host.
pub fn build_request(request: &ModelRequest) -> Result<UpstreamRequest, PluginError> {
    if request.model.is_empty() {
        return Err(PluginError::InvalidInput("the model id is empty".to_string()));
    }
    if request.messages.is_empty() {
        return Err(PluginError::InvalidInput("the request has no messages".to_string()));
    }
    let body = ChatRequest {
        model: &request.model,
        messages: request.messages.iter().map(chat_message).collect(),
        max_tokens: request.sampling.max_tokens,
        temperature: request.sampling.temperature,
        top_p: request.sampling.top_p,
        stop: &request.sampling.stop,
        stream: request.stream,
        stream_options: request.stream.then_some(StreamOptions { include_usage: true }),
    };
    let body =
        serde_json::to_vec(&body).map_err(|e| PluginError::InvalidInput(format!("cannot encode the request: {e}")))?;
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/chat/completions".to_string(),
        headers: Vec::new(),
        body,
        credential: Credential::Bearer,
    })
}

fn chat_message(message: &Message) -> ChatMessage<'_> {
    ChatMessage { role: role_name(message.role), content: &message.content }
}

#[derive(Deserialize)]
struct ChatResponse {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
    /// vLLM and LiteLLM report failures, mid-stream too, as `{"error": {...}}`.
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<WireMessage>,
    /// Present in streamed chunks.
    delta: Option<WireMessage>,
    /// Present in `/completions` answers, which some servers return for chat requests too.
    text: Option<String>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

impl From<WireUsage> for Usage {
    fn from(usage: WireUsage) -> Self {
        Usage { input_tokens: usage.prompt_tokens, output_tokens: usage.completion_tokens }
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" | "eos" => FinishReason::Stop,
        "length" => FinishReason::Length,
        other => FinishReason::Other(other.to_string()),
    }
}

fn malformed(what: impl std::fmt::Display) -> PluginError {
    PluginError::MalformedResponse(what.to_string())
}

fn reported_error(answer: &ChatResponse) -> Result<(), PluginError> {
    match &answer.error {
        Some(error) => Err(malformed(format!(
            "the model server reported an error: {}",
            error.message.as_deref().unwrap_or("(no message)")
        ))),
        None => Ok(()),
    }
}

/// Parse a complete chat completion: the first choice's text, its finish reason and the usage.
pub fn parse_response(body: &[u8]) -> Result<Completion, PluginError> {
    let response: ChatResponse = serde_json::from_slice(body).map_err(malformed)?;
    reported_error(&response)?;
    let choice = response.choices.into_iter().next().ok_or_else(|| malformed("the answer has no choices"))?;
    let text = choice.message.and_then(|m| m.content).or(choice.text).unwrap_or_default();
    Ok(Completion {
        text,
        finish_reason: choice.finish_reason.as_deref().map(finish_reason),
        usage: response.usage.map(Usage::from),
    })
}

/// Parse one SSE `data:` payload: a chunk, the usage-only chunk, an error object or `[DONE]`.
pub fn parse_event(data: &[u8]) -> Result<StreamChunk, PluginError> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(StreamChunk { text: String::new(), finish_reason: None, usage: None, done: true });
    }
    let chunk: ChatResponse = serde_json::from_slice(data).map_err(malformed)?;
    reported_error(&chunk)?;
    let (text, finish) = match chunk.choices.into_iter().next() {
        Some(choice) => (
            choice.delta.and_then(|d| d.content).or(choice.text).unwrap_or_default(),
            choice.finish_reason.as_deref().map(finish_reason),
        ),
        None => (String::new(), None),
    };
    Ok(StreamChunk { text, finish_reason: finish, usage: chunk.usage.map(Usage::from), done: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FillInMiddle, Sampling};
    use serde_json::{Value, json};

    fn request(stream: bool) -> ModelRequest {
        ModelRequest {
            model: "qwen2.5-coder".to_string(),
            messages: vec![
                Message { role: Role::System, content: "You complete code.".to_string() },
                Message { role: Role::User, content: "def add(a, b):".to_string() },
            ],
            fill_in_middle: Some(FillInMiddle { prefix: "def add(a, b):".into(), suffix: "".into() }),
            sampling: Sampling {
                max_tokens: Some(64),
                temperature: Some(0.32),
                top_p: None,
                stop: vec!["[INST]".to_string()],
            },
            stream,
        }
    }

    #[test]
    fn builds_chat_completions_request() {
        let built = build_request(&request(false)).unwrap();
        assert_eq!(built.path, "/chat/completions");
        assert!(matches!(built.method, Method::Post));
        assert!(matches!(built.credential, Credential::Bearer));
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "qwen2.5-coder",
                "messages": [
                    {"role": "system", "content": "You complete code."},
                    {"role": "user", "content": "def add(a, b):"}
                ],
                "max_tokens": 64,
                "temperature": 0.32,
                "stop": ["[INST]"],
                "stream": false
            })
        );
    }

    #[test]
    fn streaming_request_asks_for_usage() {
        let built = build_request(&request(true)).unwrap();
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(body["stream"], json!(true));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn empty_model_is_invalid_input() {
        let mut req = request(false);
        req.model.clear();
        assert!(matches!(build_request(&req), Err(PluginError::InvalidInput(_))));
    }

    #[test]
    fn parses_complete_answer_with_usage() {
        let body = br#"{"id":"x","object":"chat.completion","choices":[{"index":0,
            "message":{"role":"assistant","content":"return a + b"},"finish_reason":"length"}],
            "usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;
        let done = parse_response(body).unwrap();
        assert_eq!(done.text, "return a + b");
        assert!(matches!(done.finish_reason, Some(FinishReason::Length)));
        let usage = done.usage.unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (12, 5));
    }

    #[test]
    fn answer_without_choices_is_malformed() {
        assert!(matches!(parse_response(b"{\"choices\":[]}"), Err(PluginError::MalformedResponse(_))));
        assert!(matches!(parse_response(b"<html>"), Err(PluginError::MalformedResponse(_))));
    }

    #[test]
    fn parses_stream_events() {
        let chunk =
            parse_event(br#"{"choices":[{"index":0,"delta":{"content":"ret"},"finish_reason":null}]}"#).unwrap();
        assert_eq!(chunk.text, "ret");
        assert!(!chunk.done && chunk.finish_reason.is_none());

        let last = parse_event(br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#).unwrap();
        assert_eq!(last.text, "");
        assert!(matches!(last.finish_reason, Some(FinishReason::Stop)));

        let usage = parse_event(br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#).unwrap();
        assert_eq!(usage.usage.map(|u| u.output_tokens), Some(2));

        assert!(parse_event(b"[DONE]").unwrap().done);
    }

    #[test]
    fn stream_error_object_is_reported() {
        let err = parse_event(br#"{"error":{"message":"model overloaded","code":503}}"#).unwrap_err();
        match err {
            PluginError::MalformedResponse(message) => {
                assert!(message.contains("model overloaded"))
            }
            other => unreachable!("unexpected {other:?}"),
        }
    }
}
