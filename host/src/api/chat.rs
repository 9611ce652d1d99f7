//! `POST /v1/chat/{invokable}`: one-shot chat. The instance sends the finished prompt (a string or
//! a message list) in exactly one prompt component; the answer is `{"response", "metadata"}` or
//! the raw text stream.

use super::stream::raw_text_response;
use super::{parse_json, parse_messages};
use crate::error::GatewayError;
use crate::pipeline::{self, Deadline, ModelFields, ModelJob, ModelTarget};
use crate::plugins::wit;
use crate::response::{Body, json_response};
use crate::state::RequestState;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Invokables GitLab calls on this endpoint. Each is also accepted as a scope of its own.
pub(crate) const INVOKABLES: [&str; 12] = [
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
pub(crate) struct ChatRequest {
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

impl ChatRequest {
    /// The fields of its (first) prompt component that name the model and where it is served.
    pub(crate) fn model_fields(&self) -> ModelFields<'_> {
        let payload = &self.prompt_components[0].payload;
        ModelFields {
            family: payload.model.as_deref(),
            endpoint: payload.model_endpoint.as_deref(),
            api_key: payload.model_api_key.as_deref(),
            identifier: payload.model_identifier.as_deref(),
        }
    }
}

/// The request, with exactly one prompt component, and that component's messages.
pub(crate) fn parse(body: &[u8]) -> Result<(ChatRequest, Vec<wit::Message>), GatewayError> {
    let request: ChatRequest = parse_json(body)?;
    let [component] = request.prompt_components.as_slice() else {
        return Err(GatewayError::Unprocessable("exactly one prompt component is required".into()));
    };
    let messages = match &component.payload.content {
        Value::String(text) => vec![wit::Message { role: wit::Role::User, content: text.clone() }],
        list @ Value::Array(_) => parse_messages(list)?,
        _ => return Err(GatewayError::Unprocessable("content must be a string or a list of messages".into())),
    };
    Ok((request, messages))
}

/// Handle one call of an invokable (one of [`INVOKABLES`]; the route table has checked its scope).
pub(crate) async fn handle(state: &RequestState<'_>, body: &[u8]) -> Result<http::Response<Body>, GatewayError> {
    let (request, messages) = parse(body)?;
    let payload = &request.prompt_components[0].payload;
    let target = ModelTarget::resolve(request.model_fields(), state.config.custom_models_enabled)?;
    let provider = payload.provider.clone().unwrap_or_else(|| "litellm".to_string());
    let family = target.family.clone();
    let sampling = wit::Sampling {
        max_tokens: payload.params.max_tokens_to_sample,
        temperature: payload.params.temperature,
        top_p: None,
        stop: payload.params.stop_sequences.clone().unwrap_or_default(),
    };
    let job = ModelJob::new(target, messages, sampling, Deadline::Chat);
    if request.stream {
        return Ok(raw_text_response(pipeline::stream(state, job).await?.first_piece().await?, None));
    }
    let completion = pipeline::complete(state, job).await?;
    let answer = ChatAnswer {
        response: &completion.text,
        metadata: ChatMetadata { provider: &provider, model: &family, timestamp: super::unix_now() },
    };
    Ok(json_response(http::StatusCode::OK, serde_json::to_vec(&answer).unwrap_or_default().into()))
}
