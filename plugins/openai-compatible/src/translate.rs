//! Translation between aigw's canonical model request/result and the OpenAI chat completions API,
//! as served at `{endpoint}/chat/completions` by vLLM and every OpenAI-compatible server.

use crate::types::{Credential, Framing, Method, ModelRequest, PluginError, PluginInfo, UpstreamRequest};
use aigw_plugin_sdk::chat::{AnswerShape, ChatRequest};
use aigw_plugin_sdk::embeddings::EmbeddingsRequest;
use aigw_plugin_sdk::openai::{self, Dialect};
/// Answers and stream events are OpenAI's own.
pub use aigw_plugin_sdk::openai::{parse_event, parse_response};
use aigw_plugin_sdk::openai_chat;
/// Embeddings answers are OpenAI's own too.
pub use aigw_plugin_sdk::openai_embeddings::parse as parse_embeddings_response;
use aigw_plugin_sdk::openai_embeddings::{self, EmbeddingsDialect};

/// Provider names routed to this plugin: `custom_openai/<model>` (and bare identifiers, which the
/// host maps to `custom_openai`) and `openai/<model>`.
pub const PROVIDERS: [&str; 2] = ["custom_openai", "openai"];

/// Plugin identity reported to the host.
pub fn info() -> PluginInfo {
    aigw_plugin_sdk::plugin_info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), &PROVIDERS, Framing::Sse, None)
}

/// `POST /chat/completions` with the rendered messages; the bearer key is injected by the host.
pub fn build_request(request: &ModelRequest) -> Result<UpstreamRequest, PluginError> {
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/chat/completions".to_string(),
        headers: Vec::new(),
        body: openai::chat_body(request, Dialect::OPENAI)?,
        credential: Credential::Bearer,
    })
}

/// The server answers in OpenAI's own shapes, which an OpenAI client may be sent as they came.
pub fn answers() -> AnswerShape {
    AnswerShape::Openai
}

/// `POST /chat/completions` with the conversation as the client sent it (tools, tool results,
/// the fields aigw does not interpret).
pub fn build_chat_request(request: &ChatRequest) -> Result<UpstreamRequest, PluginError> {
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/chat/completions".to_string(),
        headers: Vec::new(),
        body: openai_chat::chat_body(request, Dialect::OPENAI)?,
        credential: Credential::Bearer,
    })
}

/// Conversations' answers are OpenAI's own.
pub use aigw_plugin_sdk::openai_chat::{parse_event as parse_chat_event, parse_response as parse_chat_response};

/// `POST /embeddings` in OpenAI's shape (vLLM, TEI, llama.cpp and LiteLLM serve it there).
pub fn build_embeddings_request(request: &EmbeddingsRequest) -> Result<UpstreamRequest, PluginError> {
    Ok(UpstreamRequest {
        method: Method::Post,
        path: "/embeddings".to_string(),
        headers: Vec::new(),
        body: openai_embeddings::body(request, EmbeddingsDialect::OPENAI)?,
        credential: Credential::Bearer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Role, Sampling};

    #[test]
    fn posts_to_chat_completions_with_a_bearer_key() {
        let request = ModelRequest {
            model: "m".into(),
            messages: vec![Message { role: Role::User, content: "hi".into() }],
            fill_in_middle: None,
            sampling: Sampling { max_tokens: None, temperature: None, top_p: None, stop: vec![] },
            stream: true,
        };
        let built = build_request(&request).unwrap();
        assert_eq!(built.path, "/chat/completions");
        assert!(matches!(built.method, Method::Post));
        assert!(matches!(built.credential, Credential::Bearer));
        let body: serde_json::Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn embeddings_post_to_embeddings_with_a_bearer_key() {
        use aigw_plugin_sdk::embeddings::EmbeddingPurpose;
        let request = EmbeddingsRequest {
            model: "e".into(),
            inputs: vec!["a".into()],
            dimensions: Some(12),
            purpose: EmbeddingPurpose::Query,
        };
        let built = build_embeddings_request(&request).unwrap();
        assert_eq!(built.path, "/embeddings");
        assert!(matches!(built.credential, Credential::Bearer));
        let body: serde_json::Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(body["dimensions"], 12);
    }
}
