//! Translation between aigw's canonical model request/result and Ollama's native API: `/api/chat`
//! for conversations, `/api/generate` with `suffix` for fill-in-the-middle, NDJSON streams.

use crate::types::{
    Completion, Credential, FinishReason, Framing, Method, ModelRequest, PluginError, PluginInfo, Role, StreamChunk,
    UpstreamRequest, Usage,
};
use aigw_plugin_sdk::embeddings::{EmbeddingsRequest, EmbeddingsResult};
use serde::{Deserialize, Serialize};

/// Provider names routed to this plugin: `ollama/<model>`.
pub const PROVIDERS: [&str; 1] = ["ollama"];

/// Plugin identity reported to the host.
pub fn info() -> PluginInfo {
    aigw_plugin_sdk::plugin_info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), &PROVIDERS, Framing::Ndjson, None)
}

/// Sampling in Ollama's `options` object.
#[derive(Serialize)]
struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    /// Ollama's name for the token limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    stream: bool,
    options: Options<'a>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct GenerateRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    suffix: &'a str,
    stream: bool,
    options: Options<'a>,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// Completions go to `/api/generate` with the raw prefix and suffix (Ollama applies the model's
/// own fill-in-the-middle template); everything else to `/api/chat` with the rendered messages.
pub fn build_request(request: &ModelRequest) -> Result<UpstreamRequest, PluginError> {
    if request.model.is_empty() {
        return Err(PluginError::InvalidInput("the model id is empty".to_string()));
    }
    let sampling = &request.sampling;
    let options = Options {
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        num_predict: sampling.max_tokens,
        stop: &sampling.stop,
    };
    let (path, body) = match &request.fill_in_middle {
        Some(fim) => {
            let body = GenerateRequest {
                model: &request.model,
                prompt: &fim.prefix,
                suffix: &fim.suffix,
                stream: request.stream,
                options,
            };
            ("/api/generate", serde_json::to_vec(&body))
        }
        None => {
            if request.messages.is_empty() {
                return Err(PluginError::InvalidInput("the request has no messages".to_string()));
            }
            let messages =
                request.messages.iter().map(|m| ChatMessage { role: role_name(m.role), content: &m.content }).collect();
            let body = ChatRequest { model: &request.model, messages, stream: request.stream, options };
            ("/api/chat", serde_json::to_vec(&body))
        }
    };
    let body = body.map_err(|e| PluginError::InvalidInput(format!("cannot encode the request: {e}")))?;
    Ok(UpstreamRequest {
        method: Method::Post,
        path: path.to_string(),
        headers: Vec::new(),
        body,
        // Ollama itself ignores it; a reverse proxy in front of it may check it.
        credential: Credential::Bearer,
    })
}

/// One answer object: a whole `/api/chat` or `/api/generate` answer, or one NDJSON stream line.
#[derive(Deserialize)]
struct Answer {
    message: Option<AnswerMessage>,
    response: Option<String>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    prompt_eval_count: Option<u32>,
    eval_count: Option<u32>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: String,
}

fn malformed(what: impl std::fmt::Display) -> PluginError {
    PluginError::MalformedResponse(what.to_string())
}

fn parse(data: &[u8]) -> Result<(String, Option<FinishReason>, Option<Usage>, bool), PluginError> {
    let answer: Answer = serde_json::from_slice(data).map_err(malformed)?;
    if let Some(error) = answer.error {
        return Err(malformed(format!("the model server reported an error: {error}")));
    }
    let text = answer.message.map(|m| m.content).or(answer.response).unwrap_or_default();
    let finish = answer.done_reason.as_deref().map(|reason| match reason {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        other => FinishReason::Other(other.to_string()),
    });
    let usage = match (answer.prompt_eval_count, answer.eval_count) {
        (None, None) => None,
        (input, output) => Some(Usage { input_tokens: input.unwrap_or(0), output_tokens: output.unwrap_or(0) }),
    };
    Ok((text, finish, usage, answer.done))
}

/// Parse a complete answer.
pub fn parse_response(body: &[u8]) -> Result<Completion, PluginError> {
    let (text, finish_reason, usage, _) = parse(body)?;
    Ok(Completion { text, finish_reason, usage })
}

/// Parse one NDJSON line; the line with `"done": true` ends the stream and carries the usage.
pub fn parse_event(_event: Option<&str>, data: &[u8]) -> Result<StreamChunk, PluginError> {
    let (text, finish_reason, usage, done) = parse(data)?;
    Ok(StreamChunk { text, finish_reason, usage, done })
}

#[derive(Serialize)]
struct EmbedRequest<'a> {
    model: &'a str,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

#[derive(Deserialize)]
struct EmbedAnswer {
    embeddings: Vec<Vec<f32>>,
    prompt_eval_count: Option<u32>,
}

/// `POST /api/embed` with every input at once (Ollama 0.3.4 and later; `dimensions` since 0.11).
pub fn build_embeddings_request(request: &EmbeddingsRequest) -> Result<UpstreamRequest, PluginError> {
    aigw_plugin_sdk::openai_embeddings::check(request)?;
    let body = EmbedRequest { model: &request.model, input: &request.inputs, dimensions: request.dimensions };
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/api/embed".to_string(),
        headers: Vec::new(),
        body: aigw_plugin_sdk::to_json(&body)?,
        credential: Credential::Bearer,
    })
}

/// `{"embeddings": [[…], …], "prompt_eval_count": n}`, or Ollama's `{"error": …}`.
pub fn parse_embeddings_response(body: &[u8]) -> Result<EmbeddingsResult, PluginError> {
    if let Ok(Answer { error: Some(error), .. }) = serde_json::from_slice::<Answer>(body) {
        return Err(malformed(format!("Ollama reported an error: {error}")));
    }
    let answer: EmbedAnswer =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not an /api/embed answer: {e}")))?;
    Ok(EmbeddingsResult { vectors: answer.embeddings, input_tokens: answer.prompt_eval_count })
}

/// Conversations with tools.
pub use crate::conversation::{answers, build_chat_request, parse_chat_event, parse_chat_response};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FillInMiddle, Message, Sampling};
    use serde_json::{Value, json};

    fn request(fim: bool, stream: bool) -> ModelRequest {
        ModelRequest {
            model: "qwen2.5-coder:7b".to_string(),
            messages: vec![Message { role: Role::User, content: "explain".to_string() }],
            fill_in_middle: fim.then(|| FillInMiddle { prefix: "def add(a, b):".into(), suffix: "\n".into() }),
            sampling: Sampling {
                max_tokens: Some(48),
                temperature: Some(0.95),
                top_p: None,
                stop: vec!["\n\n".into()],
            },
            stream,
        }
    }

    #[test]
    fn completion_uses_generate_with_suffix() {
        let built = build_request(&request(true, false)).unwrap();
        assert_eq!(built.path, "/api/generate");
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(
            body,
            json!({"model": "qwen2.5-coder:7b", "prompt": "def add(a, b):", "suffix": "\n", "stream": false,
                   "options": {"temperature": 0.95, "num_predict": 48, "stop": ["\n\n"]}})
        );
    }

    #[test]
    fn chat_uses_api_chat() {
        let built = build_request(&request(false, true)).unwrap();
        assert_eq!(built.path, "/api/chat");
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(body["messages"], json!([{"role": "user", "content": "explain"}]));
        assert_eq!(body["stream"], json!(true));
    }

    #[test]
    fn parses_answers_and_stream_lines() {
        let done = parse_response(
            br#"{"model":"m","message":{"role":"assistant","content":"hi"},"done":true,"done_reason":"stop","prompt_eval_count":7,"eval_count":2}"#,
        )
        .unwrap();
        assert_eq!(done.text, "hi");
        assert!(matches!(done.finish_reason, Some(FinishReason::Stop)));
        assert_eq!(done.usage.map(|u| (u.input_tokens, u.output_tokens)), Some((7, 2)));

        let piece = parse_event(None, br#"{"model":"m","response":"ret","done":false}"#).unwrap();
        assert_eq!((piece.text.as_str(), piece.done), ("ret", false));
        let last =
            parse_event(None, br#"{"model":"m","response":"","done":true,"done_reason":"length","eval_count":5}"#)
                .unwrap();
        assert!(last.done && matches!(last.finish_reason, Some(FinishReason::Length)));
    }

    #[test]
    fn errors_are_malformed_responses() {
        assert!(matches!(parse_event(None, br#"{"error":"model not found"}"#), Err(PluginError::MalformedResponse(_))));
        assert!(matches!(parse_response(b"not json"), Err(PluginError::MalformedResponse(_))));
    }

    #[test]
    fn embeddings_go_to_api_embed_in_one_call() {
        use aigw_plugin_sdk::embeddings::EmbeddingPurpose;
        let request = EmbeddingsRequest {
            model: "nomic-embed-text".into(),
            inputs: vec!["a".into(), "b".into()],
            dimensions: None,
            purpose: EmbeddingPurpose::Document,
        };
        let built = build_embeddings_request(&request).unwrap();
        assert_eq!(built.path, "/api/embed");
        let body: serde_json::Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(body, serde_json::json!({"model": "nomic-embed-text", "input": ["a", "b"]}));
        let parsed =
            parse_embeddings_response(br#"{"model":"m","embeddings":[[0.5],[1.5]],"prompt_eval_count":4}"#).unwrap();
        assert_eq!(parsed.vectors, vec![vec![0.5], vec![1.5]]);
        assert_eq!(parsed.input_tokens, Some(4));
        assert!(parse_embeddings_response(br#"{"error":"model not found"}"#).is_err());
    }
}
