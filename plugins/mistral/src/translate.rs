//! Translation to Mistral's API: chat completions for conversations, the native
//! fill-in-the-middle endpoint for Codestral code completion. Answers are OpenAI-shaped.

use crate::types::{Credential, Framing, Method, ModelRequest, PluginError, PluginInfo, UpstreamRequest};
use aigw_plugin_sdk::chat::{AnswerShape, ChatRequest};
use aigw_plugin_sdk::embeddings::EmbeddingsRequest;
use aigw_plugin_sdk::openai::{self, Dialect, SamplingFields};
pub use aigw_plugin_sdk::openai::{parse_event, parse_response};
use aigw_plugin_sdk::openai_chat;
/// Embeddings answers are OpenAI-shaped.
pub use aigw_plugin_sdk::openai_embeddings::parse as parse_embeddings_response;
use aigw_plugin_sdk::openai_embeddings::{self, EmbeddingsDialect};
use aigw_plugin_sdk::to_json;
use serde::Serialize;
use std::borrow::Cow;

/// Provider names routed to this plugin: `mistral/<model>` and `codestral/<model>`.
pub const PROVIDERS: [&str; 2] = ["mistral", "codestral"];

/// Mistral's public API. Like LiteLLM's `api_base`, the endpoint includes `/v1`.
pub const DEFAULT_ENDPOINT: &str = "https://api.mistral.ai/v1";

/// Mistral refuses unknown fields (so no `stream_options`), reports usage in the last chunk
/// without being asked, and continues a last assistant message only when it says `prefix`.
const DIALECT: Dialect = Dialect {
    model_in_body: true,
    stream_options: false,
    prefix_last_assistant: true,
    max_stop: None,
    continue_mistral_prefill: false,
};

/// Plugin identity reported to the host.
pub fn info() -> PluginInfo {
    aigw_plugin_sdk::plugin_info(
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        &PROVIDERS,
        Framing::Sse,
        Some(DEFAULT_ENDPOINT),
    )
}

#[derive(Serialize)]
struct FimRequest<'a> {
    model: &'a str,
    prompt: &'a str,
    suffix: &'a str,
    #[serde(flatten)]
    sampling: SamplingFields<'a>,
    stream: bool,
}

/// Only Codestral models are served by the fill-in-the-middle endpoint.
fn serves_fim(model: &str) -> bool {
    model.starts_with("codestral")
}

/// A code completion for a Codestral model goes to `POST /fim/completions` with the raw prefix and
/// suffix; everything else to `POST /chat/completions` with the rendered messages.
pub fn build_request(request: &ModelRequest) -> Result<UpstreamRequest, PluginError> {
    openai::check_request(request)?;
    let (path, body) = match &request.fill_in_middle {
        Some(fim) if serves_fim(&request.model) => (
            "/fim/completions",
            to_json(&FimRequest {
                model: &request.model,
                prompt: &fim.prefix,
                suffix: &fim.suffix,
                sampling: SamplingFields::of(request),
                stream: request.stream,
            })?,
        ),
        _ => ("/chat/completions", openai::chat_body(request, DIALECT)?),
    };
    Ok(UpstreamRequest {
        method: Method::Post,
        path: path.to_string(),
        headers: Vec::new(),
        body,
        credential: Credential::Bearer,
    })
}

/// Mistral's chunks are close to OpenAI's but not the same (its own tool-call ids, usage on the
/// last chunk): the host writes OpenAI's answer from the parsed results.
pub fn answers() -> AnswerShape {
    AnswerShape::Canonical
}

/// A conversation with tools to `POST /chat/completions`. Mistral takes tool-call ids of nine
/// letters and digits only: any other id (one another provider made) is replaced by one derived
/// from it, the same in the assistant's call and in the tool's result.
pub fn build_chat_request(request: &ChatRequest) -> Result<UpstreamRequest, PluginError> {
    let request = with_mistral_call_ids(request);
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/chat/completions".to_string(),
        headers: Vec::new(),
        body: openai_chat::chat_body(&request, DIALECT)?,
        credential: Credential::Bearer,
    })
}

/// Conversations' answers are OpenAI-shaped.
pub use aigw_plugin_sdk::openai_chat::{parse_event as parse_chat_event, parse_response as parse_chat_response};

/// Whether Mistral takes `id` as a tool-call id.
fn is_mistral_call_id(id: &str) -> bool {
    id.len() == 9 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Nine letters and digits derived from `id` (FNV-1a, in base 62): the same id gives the same
/// result in every message and every request of a conversation.
fn mistral_call_id(id: &str) -> String {
    const DIGITS: &[u8; 62] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    (0..9)
        .map(|_| {
            let digit = DIGITS[(hash % 62) as usize];
            hash /= 62;
            char::from(digit)
        })
        .collect()
}

/// `request` with every tool-call id Mistral would refuse replaced (borrowed when none is).
fn with_mistral_call_ids(request: &ChatRequest) -> Cow<'_, ChatRequest> {
    let foreign = |id: &str| !is_mistral_call_id(id);
    let any_foreign = request.messages.iter().any(|message| {
        message.tool_calls.iter().any(|call| foreign(&call.id)) || message.tool_call_id.as_deref().is_some_and(foreign)
    });
    if !any_foreign {
        return Cow::Borrowed(request);
    }
    let mut owned = request.clone();
    for message in &mut owned.messages {
        for call in &mut message.tool_calls {
            if foreign(&call.id) {
                call.id = mistral_call_id(&call.id);
            }
        }
        if let Some(id) = message.tool_call_id.as_mut().filter(|id| foreign(id)) {
            *id = mistral_call_id(id);
        }
    }
    Cow::Owned(owned)
}

/// Mistral names the shortening field `output_dimension` (Codestral Embed).
const EMBEDDINGS_DIALECT: EmbeddingsDialect =
    EmbeddingsDialect { model_in_body: true, dimensions_field: "output_dimension" };

/// `POST /embeddings` (under the endpoint's `/v1`) with a bearer key; answers are OpenAI-shaped.
pub fn build_embeddings_request(request: &EmbeddingsRequest) -> Result<UpstreamRequest, PluginError> {
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/embeddings".to_string(),
        headers: Vec::new(),
        body: openai_embeddings::body(request, EMBEDDINGS_DIALECT)?,
        credential: Credential::Bearer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FillInMiddle, Message, Role, Sampling};
    use serde_json::{Value, json};

    fn completion(model: &str) -> ModelRequest {
        ModelRequest {
            model: model.into(),
            messages: vec![Message { role: Role::User, content: "<s>[SUFFIX]\n[PREFIX]def add(a, b):".into() }],
            fill_in_middle: Some(FillInMiddle { prefix: "def add(a, b):".into(), suffix: "\n".into() }),
            sampling: Sampling {
                max_tokens: Some(64),
                temperature: Some(0.25),
                top_p: None,
                stop: vec!["\n\n".into()],
            },
            stream: true,
        }
    }

    #[test]
    fn codestral_completion_uses_fill_in_the_middle() {
        let built = build_request(&completion("codestral-latest")).unwrap();
        assert_eq!(built.path, "/fim/completions");
        assert!(matches!(built.credential, Credential::Bearer));
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(
            body,
            json!({"model": "codestral-latest", "prompt": "def add(a, b):", "suffix": "\n",
                   "max_tokens": 64, "temperature": 0.25, "stop": ["\n\n"], "stream": true})
        );
    }

    #[test]
    fn other_models_and_chat_use_chat_completions_without_stream_options() {
        let mut chat = completion("mistral-large-latest");
        let built = build_request(&chat).unwrap();
        assert_eq!(built.path, "/chat/completions");
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(body.get("stream_options"), None);
        assert_eq!(body["model"], "mistral-large-latest");

        chat.model = "codestral-latest".into();
        chat.fill_in_middle = None;
        assert_eq!(build_request(&chat).unwrap().path, "/chat/completions");
    }

    #[test]
    fn foreign_tool_call_ids_become_mistral_ones_consistently() {
        use aigw_plugin_sdk::chat::{ChatMessage, ChatRole, Content, ToolCall};
        let message = |role, tool_calls, tool_call_id: Option<&str>| ChatMessage {
            role,
            content: Some(Content::Text("x".into())),
            name: None,
            tool_calls,
            tool_call_id: tool_call_id.map(str::to_string),
        };
        let call = |id: &str| ToolCall { id: id.into(), name: "f".into(), arguments: "{}".into() };
        let request = ChatRequest {
            model: "mistral-large-latest".into(),
            messages: vec![
                message(ChatRole::User, vec![], None),
                message(ChatRole::Assistant, vec![call("call_b6d9ca569f5c48d0b930"), call("Ab3dE5gH9")], None),
                message(ChatRole::Tool, vec![], Some("call_b6d9ca569f5c48d0b930")),
                message(ChatRole::Tool, vec![], Some("Ab3dE5gH9")),
            ],
            tools: vec![],
            tool_choice: None,
            parallel_tool_calls: None,
            sampling: Sampling { max_tokens: None, temperature: None, top_p: None, stop: vec![] },
            seed: None,
            response_format: None,
            user: None,
            extra: None,
            stream: false,
        };
        let body: Value = serde_json::from_slice(&build_chat_request(&request).unwrap().body).unwrap();
        let mapped = body["messages"][1]["tool_calls"][0]["id"].as_str().unwrap().to_string();
        assert!(is_mistral_call_id(&mapped), "{mapped}");
        assert_eq!(body["messages"][2]["tool_call_id"], json!(mapped), "the result quotes the same id");
        assert_eq!(body["messages"][1]["tool_calls"][1]["id"], "Ab3dE5gH9", "Mistral's own ids stay");
        assert_eq!(body["messages"][3]["tool_call_id"], "Ab3dE5gH9");
        assert_eq!(body.get("stream_options"), None);
    }

    #[test]
    fn a_last_assistant_message_is_a_prefix_mistral_continues() {
        let mut chat = completion("mistral-large-latest");
        chat.fill_in_middle = None;
        chat.messages.push(Message { role: Role::Assistant, content: "Thought:".into() });
        let body: Value = serde_json::from_slice(&build_request(&chat).unwrap().body).unwrap();
        assert_eq!(body["messages"][1], json!({"role": "assistant", "content": "Thought:", "prefix": true}));
        assert_eq!(body["messages"][0].get("prefix"), None, "only the last assistant message");
    }
}
