//! `POST /v1/chat/{invokable}`: one-shot chat. The instance sends the finished prompt (a string or
//! a message list) in exactly one prompt component; the answer is `{"response", "metadata"}` or
//! the raw text stream.

use super::model::{ModelFields, ModelTarget};
use super::pipeline::{self, ModelJob, Outcome};
use super::stream::raw_text_response;
use super::{AppState, parse_json, parse_messages};
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::plugins::wit;
use crate::server::{Body, json_response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Invokables GitLab calls on this endpoint. Each is also accepted as a scope of its own.
pub const INVOKABLES: [&str; 12] = [
    "agent",
    "explain_code",
    "write_tests",
    "refactor_code",
    "fix_code",
    "explain_vulnerability",
    "resolve_vulnerability",
    "troubleshoot_job",
    "summarize_comments",
    "summarize_review",
    "generate_commit_message",
    "generate_description",
];

#[derive(Debug, Deserialize)]
struct ChatRequest {
    prompt_components: Vec<ChatComponent>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
struct ChatComponent {
    payload: ChatPayload,
}

#[derive(Debug, Deserialize)]
struct ChatPayload {
    content: Value,
    provider: Option<String>,
    model: Option<String>,
    model_endpoint: Option<String>,
    model_api_key: Option<String>,
    model_identifier: Option<String>,
    #[serde(default)]
    params: ChatParams,
}

#[derive(Debug, Default, Deserialize)]
struct ChatParams {
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f32>,
    max_tokens_to_sample: Option<u32>,
}

#[derive(Serialize)]
struct ChatMetadata<'a> {
    provider: &'a str,
    model: &'a str,
    timestamp: u64,
}

#[derive(Serialize)]
struct ChatAnswer<'a> {
    response: &'a str,
    metadata: ChatMetadata<'a>,
}

/// Handle one call of `invokable` (already known to be in [`INVOKABLES`]).
pub async fn handle(
    state: &AppState,
    principal: &Principal,
    invokable: &str,
    body: &[u8],
) -> Result<http::Response<Body>, GatewayError> {
    if !principal.has_any_scope(&["duo_chat", invokable]) {
        return Err(crate::auth::AuthError::MissingScope("duo chat").into());
    }
    let request: ChatRequest = parse_json(body)?;
    let [component] = request.prompt_components.as_slice() else {
        return Err(GatewayError::Unprocessable("exactly one prompt component is required".into()));
    };
    let payload = &component.payload;
    let messages = match &payload.content {
        Value::String(text) => vec![wit::Message { role: wit::Role::User, content: text.clone() }],
        list @ Value::Array(_) => parse_messages(list)?,
        _ => return Err(GatewayError::Unprocessable("content must be a string or a list of messages".into())),
    };
    let target = ModelTarget::resolve(
        ModelFields {
            family: payload.model.as_deref(),
            endpoint: payload.model_endpoint.as_deref(),
            api_key: payload.model_api_key.as_deref(),
            identifier: payload.model_identifier.as_deref(),
        },
        state.config.custom_models_enabled,
    )?;
    let provider = payload.provider.clone().unwrap_or_else(|| "litellm".to_string());
    let family = target.family.clone();
    let model_request = wit::ModelRequest {
        model: target.model.clone(),
        messages,
        fill_in_middle: None,
        sampling: wit::Sampling {
            max_tokens: payload.params.max_tokens_to_sample,
            temperature: payload.params.temperature,
            top_p: None,
            stop: payload.params.stop_sequences.clone().unwrap_or_default(),
        },
        stream: request.stream,
    };
    Ok(
        match pipeline::run(
            state,
            ModelJob { target, request: model_request, total_timeout: Some(state.config.chat_timeout) },
        )
        .await?
        {
            Outcome::Complete(completion) => {
                let timestamp = super::unix_now();
                let answer = ChatAnswer {
                    response: &completion.text,
                    metadata: ChatMetadata { provider: &provider, model: &family, timestamp },
                };
                json_response(http::StatusCode::OK, serde_json::to_vec(&answer).unwrap_or_default().into())
            }
            Outcome::Stream(chunks) => raw_text_response(*chunks, None),
        },
    )
}
