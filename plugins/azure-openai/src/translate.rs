//! Translation to Azure OpenAI: the deployment is named in the path, the API version in the query,
//! the key in the `api-key` header; bodies and answers are OpenAI's chat completions.

use crate::types::{Credential, Framing, Method, ModelRequest, PluginError, PluginInfo, UpstreamRequest};
use aigw_plugin_sdk::chat::{AnswerShape, ChatRequest};
use aigw_plugin_sdk::embeddings::EmbeddingsRequest;
use aigw_plugin_sdk::invalid;
use aigw_plugin_sdk::openai::{self, Dialect};
pub use aigw_plugin_sdk::openai::{parse_event, parse_response};
use aigw_plugin_sdk::openai_chat;
/// Embeddings answers are OpenAI's.
pub use aigw_plugin_sdk::openai_embeddings::parse as parse_embeddings_response;
use aigw_plugin_sdk::openai_embeddings::{self, EmbeddingsDialect};

/// Provider names routed to this plugin: `azure/<deployment>`.
pub const PROVIDERS: [&str; 1] = ["azure"];

/// The Azure OpenAI data-plane API version requested (the newest generally available one with
/// `stream_options`).
pub const API_VERSION: &str = "2024-10-21";

/// Azure names the model by deployment, in the path; the body carries no `model`.
/// Azure serves OpenAI's API (its limit of 4 stop sequences too) and no vLLM extensions.
const DIALECT: Dialect = Dialect {
    model_in_body: false,
    stream_options: true,
    prefix_last_assistant: false,
    max_stop: Some(4),
    continue_mistral_prefill: false,
};

/// Plugin identity reported to the host.
pub fn info() -> PluginInfo {
    aigw_plugin_sdk::plugin_info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), &PROVIDERS, Framing::Sse, None)
}

/// Deployment names are letters, digits, `-`, `_` and `.`; anything else could change the path.
fn check_deployment(name: &str) -> Result<(), PluginError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || !name.chars().all(allowed) || name.chars().all(|c| c == '.') {
        return Err(invalid(format!(
            "{name:?} is not an Azure deployment name (letters, digits, '-', '_' and '.' only)"
        )));
    }
    Ok(())
}

/// `POST /openai/deployments/{deployment}/chat/completions?api-version=…` with `api-key`.
pub fn build_request(request: &ModelRequest) -> Result<UpstreamRequest, PluginError> {
    check_deployment(&request.model)?;
    Ok(UpstreamRequest {
        method: Method::Post,
        path: format!("/openai/deployments/{}/chat/completions?api-version={API_VERSION}", request.model),
        headers: Vec::new(),
        body: openai::chat_body(request, DIALECT)?,
        credential: Credential::Header("api-key".to_string()),
    })
}

/// Azure's streams carry chunks of its own (content-filter results with no choices), so the host
/// writes OpenAI's answer from the parsed results rather than forwarding Azure's.
pub fn answers() -> AnswerShape {
    AnswerShape::Canonical
}

/// A conversation with tools, to the deployment's chat completions, as OpenAI's API has it.
pub fn build_chat_request(request: &ChatRequest) -> Result<UpstreamRequest, PluginError> {
    check_deployment(&request.model)?;
    Ok(UpstreamRequest {
        method: Method::Post,
        path: format!("/openai/deployments/{}/chat/completions?api-version={API_VERSION}", request.model),
        headers: Vec::new(),
        body: openai_chat::chat_body(request, DIALECT)?,
        credential: Credential::Header("api-key".to_string()),
    })
}

/// Conversations' answers are OpenAI's.
pub use aigw_plugin_sdk::openai_chat::{parse_event as parse_chat_event, parse_response as parse_chat_response};

/// Azure's embeddings name the deployment in the path, as its chat does.
const EMBEDDINGS_DIALECT: EmbeddingsDialect =
    EmbeddingsDialect { model_in_body: false, dimensions_field: "dimensions" };

/// `POST /openai/deployments/{deployment}/embeddings?api-version=…` with `api-key`.
pub fn build_embeddings_request(request: &EmbeddingsRequest) -> Result<UpstreamRequest, PluginError> {
    check_deployment(&request.model)?;
    Ok(UpstreamRequest {
        method: Method::Post,
        path: format!("/openai/deployments/{}/embeddings?api-version={API_VERSION}", request.model),
        headers: Vec::new(),
        body: openai_embeddings::body(request, EMBEDDINGS_DIALECT)?,
        credential: Credential::Header("api-key".to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Message, Role, Sampling};
    use serde_json::{Value, json};

    fn request(model: &str) -> ModelRequest {
        ModelRequest {
            model: model.into(),
            messages: vec![Message { role: Role::User, content: "hi".into() }],
            fill_in_middle: None,
            sampling: Sampling { max_tokens: Some(8), temperature: None, top_p: None, stop: vec![] },
            stream: false,
        }
    }

    #[test]
    fn deployment_path_api_version_and_key_header() {
        let built = build_request(&request("gpt-4o-prod")).unwrap();
        assert_eq!(built.path, "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21");
        assert!(matches!(built.credential, Credential::Header(ref name) if name == "api-key"));
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert_eq!(
            body,
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}),
            "no model in the body, no stream key"
        );
    }

    #[test]
    fn deployment_names_that_would_bend_the_path_are_refused() {
        for name in ["", "..", "a/b", "a?b", "a b", "a%2Fb", "dépl"] {
            assert!(matches!(build_request(&request(name)), Err(PluginError::InvalidInput(_))), "{name:?}");
        }
    }

    #[test]
    fn embeddings_name_the_deployment_in_the_path() {
        use aigw_plugin_sdk::embeddings::EmbeddingPurpose;
        let mut request = EmbeddingsRequest {
            model: "embed-small".into(),
            inputs: vec!["a".into()],
            dimensions: None,
            purpose: EmbeddingPurpose::Document,
        };
        let built = build_embeddings_request(&request).unwrap();
        assert_eq!(built.path, format!("/openai/deployments/embed-small/embeddings?api-version={API_VERSION}"));
        let body: Value = serde_json::from_slice(&built.body).unwrap();
        assert!(body.get("model").is_none());
        request.model = "../x".into();
        assert!(build_embeddings_request(&request).is_err());
    }
}
