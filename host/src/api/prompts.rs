//! `POST /v1/prompts/{id}` and `/v2/prompts/{id}`: a named, versioned prompt from the registry,
//! rendered with the caller's inputs and sent to the caller's model (GitLab's "Test connection"
//! button calls `model_configuration/check` this way).

use super::model::ModelMetadata;
use super::parse_json;
use super::stream::{prompt_lines_response, raw_text_response, usage_by_model};
use crate::auth::{AuthError, Principal};
use crate::error::GatewayError;
use crate::pipeline::{self, Deadline, ModelJob};
use crate::response::{Body, json_response};
use crate::state::RequestState;
use crate::upstream::UpstreamError;
use serde::Deserialize;
use serde_json::{Value, json};

/// Which answer shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// Answer: a JSON string; stream: raw text.
    V1,
    /// Answer: `{"content", "usage"?}`; stream: one such object per line, usage on the last.
    V2,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PromptRequest {
    #[serde(default)]
    inputs: serde_json::Map<String, Value>,
    prompt_version: Option<String>,
    #[serde(default)]
    stream: bool,
    model_metadata: Option<ModelMetadata>,
}

/// The id from the path: everything after `/v1/prompts/`, percent-decoded once (GitLab sends
/// `model_configuration%2Fcheck`; a literal `/` works too).
pub(crate) fn decode_id(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|id| !id.is_empty())
}

/// Every model-server HTTP error, 429 included, answers 421 `"<status>: <reason>"` on these
/// endpoints, as GitLab's gateway does: Rails shows that text as what the self-hosted model
/// server returned (its "Test connection" result).
fn model_status_as_421(error: GatewayError) -> GatewayError {
    match error {
        GatewayError::Upstream { error: UpstreamError::Status { status, .. }, .. } => {
            GatewayError::ModelAnswered(status)
        }
        other => other,
    }
}

/// Who may call a prompt by id: a holder of one of its scopes, everyone for an open prompt, and
/// nobody for a prompt that declares neither (so that forgetting a scope closes, not opens, it).
fn authorize(prompt: &crate::prompts::Prompt, principal: &Principal, id: &str) -> Result<(), AuthError> {
    let allowed = prompt.open
        || !prompt.unit_primitives.is_empty() && principal.permits(&prompt.unit_primitives, !prompt.gateway_tokens);
    if allowed { Ok(()) } else { Err(AuthError::PromptScope(id.to_string())) }
}

/// The request: the prompt's inputs, version constraint and model.
pub(crate) fn parse(body: &[u8]) -> Result<PromptRequest, GatewayError> {
    parse_json(body)
}

/// Handle one call for prompt `id`.
pub(crate) async fn handle(
    state: &RequestState<'_>,
    principal: &Principal,
    id: &str,
    body: &[u8],
    api: Api,
) -> Result<http::Response<Body>, GatewayError> {
    let request = parse(body)?;
    let prompts = state.prompts();
    let family = request.model_metadata.as_ref().and_then(|m| m.name.as_deref()).unwrap_or("base");
    let prompt = prompts.for_family(id, family, request.prompt_version.as_deref())?;
    authorize(prompt, principal, id)?;
    let (target, _) = ModelMetadata::resolve(request.model_metadata, state.config.custom_models_enabled)?;
    // Each input is a template variable; `inputs` holds them all, for prompts that show the model
    // whatever the instance sent. GitLab's gateway adds today's date unless the caller did.
    let variables = minijinja::context! {
        inputs => &request.inputs,
        ..minijinja::context! {
            ..minijinja::Value::from_serialize(&request.inputs),
            ..minijinja::context! { current_date => super::date::Date::today().long() }
        }
    };
    let messages = prompts.render(prompt, &variables)?;
    // GitLab's gateway keys a whole answer's usage by the family the instance named and a
    // stream's by the model that answered.
    let (family, model) = (target.family.clone(), target.model.clone());
    let sampling = prompts.sampling(prompt, &family);
    let mut job = ModelJob::new(target, messages, sampling, Deadline::Chat);
    if prompt.is_gitlab() {
        job = job.with_roles_as_rendered();
    }
    if request.stream {
        let chunks = pipeline::stream(state, job).await.map_err(model_status_as_421)?;
        let chunks = chunks.first_piece().await.map_err(model_status_as_421)?;
        return Ok(match api {
            Api::V1 => raw_text_response(chunks, None),
            Api::V2 => prompt_lines_response(chunks, model),
        });
    }
    let completion = pipeline::complete(state, job).await.map_err(model_status_as_421)?;
    Ok(match api {
        Api::V1 => json_response(http::StatusCode::OK, Value::String(completion.text).to_string().into()),
        Api::V2 => {
            let mut answer = json!({ "content": completion.text });
            if let Some(usage) = completion.usage {
                answer["usage"] = usage_by_model(&family, &usage);
            }
            json_response(http::StatusCode::OK, answer.to_string().into())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::decode_id;

    #[test]
    fn ids_are_percent_decoded_once() {
        assert_eq!(decode_id("model_configuration%2Fcheck").as_deref(), Some("model_configuration/check"));
        assert_eq!(decode_id("chat/explain_code").as_deref(), Some("chat/explain_code"));
        assert_eq!(decode_id("a%252Fb").as_deref(), Some("a%2Fb"));
        assert_eq!(decode_id("bad%zz"), None);
        assert_eq!(decode_id(""), None);
    }
}
