//! `/v3/code/completions` and `/v4/code/suggestions`: `prompt_components` and `model_metadata`,
//! `choices` with `metadata`, a raw text stream (v3) or CRLF-framed SSE (v4).

use super::{
    Choice, CodeInput, CodeOutcome, FenceRule, GenerationPrompt, ModelInfo, PromptVersion, Task, check_content,
    choices, generation_prompt, run,
};
use crate::api::model::ModelMetadata;
use crate::api::stream::{V4Content, raw_text_response, v4_sse_response};
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
pub(crate) struct EditorPayload {
    file_name: String,
    content_above_cursor: String,
    content_below_cursor: String,
    language_identifier: Option<String>,
    #[serde(default)]
    stream: bool,
    prompt_id: Option<String>,
    prompt_version: Option<PromptVersion>,
    prompt: Option<Value>,
    #[serde(default)]
    prompt_enhancer: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct V3Request {
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

/// The request, its one editor component's payload checked as GitLab's schema checks it, and
/// the task it asks for, which `principal` must be allowed (checked between the two, in GitLab's
/// order of errors).
pub(crate) fn parse_v3(body: &[u8], principal: &Principal) -> Result<(V3Request, EditorPayload, Task), GatewayError> {
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
    Ok((request, payload, task))
}

/// `POST /v3/code/completions` and `POST /v4/code/suggestions`.
pub(crate) async fn handle_v3(
    state: &RequestState<'_>,
    principal: &Principal,
    headers: &http::HeaderMap,
    body: &[u8],
    version: Version,
) -> Result<http::Response<Body>, GatewayError> {
    let (request, payload, task) = parse_v3(body, principal)?;
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
        // GitLab's gateway strips the fence of a v4 generation as it streams, and of nothing else.
        strip_fence: match version {
            Version::V4 => FenceRule::StreamsOnly,
            Version::V3 => FenceRule::Never,
        },
        context: code_context(&request.prompt_components, headers),
        enhancer: payload.prompt_enhancer.unwrap_or_default(),
        legacy: false,
        user: super::typing_user(headers),
    };
    let answer = run(state, input).await?;
    // A completion names the provider and family the instance sent; a generation, and every
    // stream's start, the prompt that made it (GitLab's gateway runs those as its "agent").
    let model = |lang: &'static str| match task {
        Task::Completion => ModelInfo { engine: engine.clone(), name: family.clone(), lang },
        Task::Generation => ModelInfo { engine: AGENT.into(), name: answer.prompt_name.clone(), lang },
    };
    Ok(match answer.outcome {
        CodeOutcome::NoLanguage => v3_answer(None, model("")),
        CodeOutcome::Text { lang, text, .. } => v3_answer(Some(&text), model(lang)),
        CodeOutcome::Stream { chunks, fence, .. } => match version {
            Version::V3 => raw_text_response(*chunks, fence),
            Version::V4 => {
                let start = StreamStart {
                    model: StartModel { engine: AGENT, name: answer.prompt_name.clone() },
                    timestamp: unix_now(),
                    enabled_feature_flags: [],
                    region: state.config.region.clone(),
                };
                let content = match task {
                    Task::Completion => V4Content::EveryChunk,
                    Task::Generation => V4Content::Whole,
                };
                v4_sse_response(*chunks, content, fence, start)
            }
        },
    })
}

/// The first language server version whose `code_context` components GitLab's gateway puts
/// into the prompt (older ones send context GitLab does not trust to fit).
const CONTEXT_FROM_LANGUAGE_SERVER: semver::Version = semver::Version::new(7, 17, 1);

/// The contents of the request's `code_context` components, in order, when the language server
/// that sent them (`X-Gitlab-Language-Server-Version`) is recent enough; otherwise none.
fn code_context(components: &[PromptComponent], headers: &http::HeaderMap) -> Vec<String> {
    let version = headers
        .get("x-gitlab-language-server-version")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| semver::Version::parse(text.trim()).ok());
    if version.is_none_or(|version| version < CONTEXT_FROM_LANGUAGE_SERVER) {
        return Vec::new();
    }
    components
        .iter()
        .filter(|component| component.kind == "code_context")
        .filter_map(|component| component.payload.get("content").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// The engine GitLab's gateway names for answers made by a registry prompt.
const AGENT: &str = "agent";

/// `metadata` of a v3/v4 answer, in GitLab's field order. `region` is always `null` here, as
/// GitLab's gateway sends it (only a stream's start carries the location).
#[derive(Serialize)]
struct V3Metadata<'a> {
    model: &'a ModelInfo,
    timestamp: u64,
    enabled_feature_flags: [(); 0],
    region: Option<String>,
}

#[derive(Serialize)]
struct V3Answer<'a> {
    choices: Vec<Choice<'a>>,
    metadata: V3Metadata<'a>,
    model: &'a ModelInfo,
}

/// `metadata` of the v4 `stream_start` event.
#[derive(Serialize)]
pub(crate) struct StreamStart {
    model: StartModel,
    timestamp: u64,
    enabled_feature_flags: [(); 0],
    region: Option<String>,
}

#[derive(Serialize)]
struct StartModel {
    engine: &'static str,
    name: String,
}

fn v3_answer(text: Option<&str>, model: ModelInfo) -> http::Response<Body> {
    let metadata = V3Metadata { model: &model, timestamp: unix_now(), enabled_feature_flags: [], region: None };
    let body = serde_json::to_vec(&V3Answer { choices: choices(text), metadata, model: &model }).unwrap_or_default();
    json_response(http::StatusCode::OK, body.into())
}
