//! `/v3/code/completions` and `/v4/code/suggestions`: `prompt_components` and `model_metadata`,
//! `choices` with `metadata`, a raw text stream (v3) or CRLF-framed SSE (v4).

use super::{
    Choice, CodeInput, CodeOutcome, GenerationPrompt, ModelInfo, PromptVersion, Task, check_content, choices,
    generation_prompt, run,
};
use crate::api::model::ModelMetadata;
use crate::api::stream::{raw_text_response, v4_sse_response};
use crate::api::{parse_json, unix_now};
use crate::auth::Principal;
use crate::error::{GatewayError, ValidationIssue};
use crate::response::{Body, json_response};
use crate::state::RequestState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
struct PromptComponent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Debug, Deserialize)]
struct EditorPayload {
    file_name: String,
    content_above_cursor: String,
    content_below_cursor: String,
    language_identifier: Option<String>,
    #[serde(default)]
    stream: bool,
    prompt_id: Option<String>,
    prompt_version: Option<PromptVersion>,
    prompt: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct V3Request {
    prompt_components: Vec<PromptComponent>,
    model_metadata: Option<ModelMetadata>,
}

/// Which of the two newer endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// `/v3/code/completions`: streams raw text.
    V3,
    /// `/v4/code/suggestions`: streams CRLF-framed SSE events.
    V4,
}

/// `POST /v3/code/completions` and `POST /v4/code/suggestions`.
pub(crate) async fn handle_v3(
    state: &RequestState<'_>,
    principal: &Principal,
    body: &[u8],
    version: Version,
) -> Result<http::Response<Body>, GatewayError> {
    let request: V3Request = parse_json(body)?;
    let editor: Vec<&PromptComponent> = request
        .prompt_components
        .iter()
        .filter(|c| matches!(c.kind.as_str(), "code_editor_completion" | "code_editor_generation"))
        .collect();
    let [component] = editor.as_slice() else {
        return Err(GatewayError::Unprocessable(
            "exactly one code_editor_completion or code_editor_generation prompt component is required".into(),
        ));
    };
    let task = if component.kind == "code_editor_completion" { Task::Completion } else { Task::Generation };
    principal.require(&task.requirement())?;
    let payload: EditorPayload = serde_json::from_value(component.payload.clone()).map_err(|e| {
        GatewayError::Validation(vec![ValidationIssue {
            kind: "value_error",
            loc: vec![json!("body"), json!("prompt_components"), json!(0), json!("payload")],
            msg: e.to_string(),
        }])
    })?;
    let issues = check_content(
        &payload.content_above_cursor,
        &payload.content_below_cursor,
        &["body", "prompt_components", "0", "payload"],
    );
    if !issues.is_empty() {
        return Err(GatewayError::Validation(issues));
    }
    let (target, provider) = ModelMetadata::resolve(request.model_metadata, state.config.custom_models_enabled)?;
    let prompt = match task {
        Task::Completion => GenerationPrompt::Template,
        Task::Generation => {
            generation_prompt(payload.prompt_version, payload.prompt.as_ref(), payload.prompt_id.as_deref())?
        }
    };
    let engine = provider.unwrap_or_else(|| target.provider.clone());
    let family = target.family.clone();
    let input = CodeInput {
        task,
        file_name: payload.file_name,
        language_identifier: payload.language_identifier,
        above: payload.content_above_cursor,
        below: payload.content_below_cursor,
        stream: payload.stream,
        prompt,
        target,
    };
    let metadata = |lang: Option<&'static str>| V3Metadata {
        model: ModelInfo { engine: engine.clone(), name: family.clone(), lang },
        timestamp: unix_now(),
    };
    Ok(match run(state, input).await? {
        CodeOutcome::NoLanguage => v3_answer(None, metadata(None)),
        CodeOutcome::Text { lang, text } => v3_answer(Some(&text), metadata(Some(lang))),
        CodeOutcome::Stream { lang, chunks, fence } => match version {
            Version::V3 => raw_text_response(*chunks, fence),
            Version::V4 => v4_sse_response(*chunks, fence, metadata(Some(lang))),
        },
    })
}

/// `model` and `timestamp`, in GitLab's field order (a struct, so serde keeps the order).
#[derive(Serialize)]
pub(crate) struct V3Metadata {
    model: ModelInfo,
    timestamp: u64,
}

#[derive(Serialize)]
struct V3Answer<'a> {
    choices: Vec<Choice<'a>>,
    metadata: V3Metadata,
}

fn v3_answer(text: Option<&str>, metadata: V3Metadata) -> http::Response<Body> {
    let body = serde_json::to_vec(&V3Answer { choices: choices(text), metadata }).unwrap_or_default();
    json_response(http::StatusCode::OK, body.into())
}
