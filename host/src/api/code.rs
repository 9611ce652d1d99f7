//! GitLab's code suggestion endpoints: completions and generations in the v2 form (flat `model_*`
//! fields) and the v3/v4 form (`prompt_components` + `model_metadata`), one pipeline for all.

use super::fence::FenceStripper;
use super::model::ModelMetadata;
use super::stream::{raw_text_response, v4_sse_response};
use super::{language, parse_json, parse_messages, unix_now};
use crate::auth::{Principal, scopes};
use crate::error::{GatewayError, ValidationIssue};
use crate::pipeline::{self, ChunkStream, Deadline, ModelFields, ModelJob, ModelTarget};
use crate::plugins::wit;
use crate::prompts::trim_to_budget;
use crate::response::{Body, json_response};
use crate::state::RequestState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// GitLab's limit on each side of the cursor, characters.
const MAX_CONTENT_CHARS: usize = 100_000;

/// GitLab's limit on `context` items.
const MAX_CONTEXT_ITEMS: usize = 100;

/// The only v2 `model_provider` of self-hosted models.
const SELF_HOSTED_PROVIDER: &str = "litellm";

/// Which code suggestion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// Fill in the middle at the cursor.
    Completion,
    /// Write new code from an instruction (a comment, or the prompt GitLab built).
    Generation,
}

impl Task {
    /// What the caller must hold (generation is refused to the gateway's own IDE tokens).
    fn requirement(self) -> scopes::Requirement {
        match self {
            Task::Completion => scopes::CODE_COMPLETION,
            Task::Generation => scopes::CODE_GENERATION,
        }
    }
}

/// How a generation's prompt is given.
#[derive(Debug)]
enum GenerationPrompt {
    /// Rendered from the registry's `code_generations/<family>` template (prompt version 1).
    Template,
    /// A prompt by id from the registry (`prompt_id`).
    ById(String),
    /// The instance built the prompt: one user message (prompt version 2).
    Text(String),
    /// The instance built the messages (prompt version 3).
    Messages(Vec<wit::Message>),
}

/// What the editor sent, whichever endpoint version carried it.
#[derive(Debug)]
struct CodeInput {
    task: Task,
    file_name: String,
    language_identifier: Option<String>,
    above: String,
    below: String,
    stream: bool,
    prompt: GenerationPrompt,
    target: ModelTarget,
}

/// The answer before it takes an endpoint's shape.
enum CodeOutcome {
    /// No language could be resolved: no suggestion, no model call.
    NoLanguage,
    /// A complete suggestion.
    Text { lang: &'static str, text: String },
    /// A streamed suggestion.
    Stream { lang: &'static str, chunks: Box<ChunkStream>, fence: Option<FenceStripper> },
}

fn too_long_issue(loc: Vec<Value>) -> ValidationIssue {
    ValidationIssue {
        kind: "string_too_long",
        loc,
        msg: format!("String should have at most {MAX_CONTENT_CHARS} characters"),
    }
}

fn check_content(above: &str, below: &str, loc: &[&str]) -> Vec<ValidationIssue> {
    let mut issues = Vec::new();
    for (field, value) in [("content_above_cursor", above), ("content_below_cursor", below)] {
        if value.chars().count() > MAX_CONTENT_CHARS {
            let mut path: Vec<Value> = loc.iter().map(|p| json!(p)).collect();
            path.push(json!(field));
            issues.push(too_long_issue(path));
        }
    }
    issues
}

/// `prompt_version` 2 is a prompt string, 3 a message list; `prompt_id` names a registry prompt.
fn generation_prompt(
    version: Option<u8>,
    prompt: Option<&Value>,
    prompt_id: Option<&str>,
) -> Result<GenerationPrompt, GatewayError> {
    if let Some(id) = prompt_id.filter(|id| !id.is_empty()) {
        return Ok(GenerationPrompt::ById(id.to_string()));
    }
    match (version.unwrap_or(1), prompt) {
        (1, _) => Ok(GenerationPrompt::Template),
        (2, Some(Value::String(text))) => Ok(GenerationPrompt::Text(text.clone())),
        (3, Some(messages @ Value::Array(_))) => Ok(GenerationPrompt::Messages(parse_messages(messages)?)),
        (2 | 3, _) => Err(GatewayError::Unprocessable(
            "prompt_version 2 needs a prompt string and prompt_version 3 a prompt message list".into(),
        )),
        (other, _) => Err(GatewayError::Unprocessable(format!("prompt_version {other} is not supported (1, 2 or 3)"))),
    }
}

/// Render the prompt, call the model, and strip a generation's code fence.
async fn run(state: &RequestState<'_>, input: CodeInput) -> Result<CodeOutcome, GatewayError> {
    let family = input.target.family.clone();
    let prompts = state.prompts();
    let prompt = match (input.task, &input.prompt) {
        (Task::Completion, _) => prompts.code_completion(&family)?,
        (Task::Generation, GenerationPrompt::ById(id)) => prompts.for_family(id, &family, None)?,
        (Task::Generation, _) => prompts.code_generation(&family)?,
    };
    let Some(lang) = language::resolve(input.language_identifier.as_deref(), &input.file_name) else {
        // GitLab's gateway answers an unknown language with no suggestion and calls no model.
        return Ok(CodeOutcome::NoLanguage);
    };
    let (prefix, suffix) = match prompt.budget {
        Some(budget) => trim_to_budget(&input.above, &input.below, budget),
        None => (input.above.as_str(), input.below.as_str()),
    };
    let variables = minijinja::context! {
        prefix => prefix, suffix => suffix, language => lang, file_name => input.file_name,
    };
    let messages = match input.prompt {
        GenerationPrompt::Text(text) if input.task == Task::Generation => {
            vec![wit::Message { role: wit::Role::User, content: text }]
        }
        GenerationPrompt::Messages(messages) if input.task == Task::Generation => messages,
        _ => prompts.render(prompt, &variables)?,
    };
    let mut job = ModelJob::new(input.target, messages, prompt.sampling(), Deadline::Code);
    if input.task == Task::Completion {
        job = job.with_fill_in_middle(prefix, suffix);
    }
    let strip = input.task == Task::Generation;
    if input.stream {
        let chunks = Box::new(pipeline::stream(state, job).await?);
        return Ok(CodeOutcome::Stream { lang, chunks, fence: strip.then(FenceStripper::default) });
    }
    let completion = pipeline::complete(state, job).await?;
    let text = if strip { FenceStripper::strip(&completion.text) } else { completion.text };
    Ok(CodeOutcome::Text { lang, text })
}

#[derive(Serialize)]
struct ModelInfo<'a> {
    engine: &'a str,
    name: &'a str,
    lang: Option<&'a str>,
}

#[derive(Serialize)]
struct Choice<'a> {
    text: &'a str,
    index: u32,
    finish_reason: &'a str,
}

fn choices(text: Option<&str>) -> Vec<Choice<'_>> {
    // GitLab's gateway always reports "length" here.
    text.map(|text| Choice { text, index: 0, finish_reason: "length" }).into_iter().collect()
}

// ---- v2: flat model fields ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct CurrentFile {
    file_name: String,
    language_identifier: Option<String>,
    content_above_cursor: String,
    content_below_cursor: String,
}

#[derive(Debug, Deserialize)]
struct V2Request {
    current_file: CurrentFile,
    prompt_version: Option<u8>,
    prompt: Option<Value>,
    prompt_id: Option<String>,
    model_provider: Option<String>,
    model_name: Option<String>,
    model_endpoint: Option<String>,
    model_api_key: Option<String>,
    model_identifier: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    context: Vec<Value>,
}

#[derive(Serialize)]
struct V2Answer<'a> {
    id: &'a str,
    model: ModelInfo<'a>,
    experiments: [(); 0],
    object: &'a str,
    created: u64,
    choices: Vec<Choice<'a>>,
}

/// `POST /v2/code/completions` (alias `/v2/completions`) and `POST /v2/code/generations`.
/// The route table has checked the task's scopes.
pub(crate) async fn handle_v2(
    state: &RequestState<'_>,
    body: &[u8],
    task: Task,
) -> Result<http::Response<Body>, GatewayError> {
    let request: V2Request = parse_json(body)?;
    let file = &request.current_file;
    let mut issues = check_content(&file.content_above_cursor, &file.content_below_cursor, &["body", "current_file"]);
    if request.context.len() > MAX_CONTEXT_ITEMS {
        issues.push(ValidationIssue {
            kind: "too_long",
            loc: vec![json!("body"), json!("context")],
            msg: format!(
                "List should have at most {MAX_CONTEXT_ITEMS} items after validation, not {}",
                request.context.len()
            ),
        });
    }
    if !issues.is_empty() {
        return Err(GatewayError::Validation(issues));
    }
    let engine = request.model_provider.clone().unwrap_or_default();
    if engine != SELF_HOSTED_PROVIDER {
        return Err(GatewayError::Unprocessable(format!(
            "model_provider {engine:?} is not served by this gateway; self-hosted models use \"{SELF_HOSTED_PROVIDER}\""
        )));
    }
    let target = ModelTarget::resolve(
        ModelFields {
            family: request.model_name.as_deref(),
            endpoint: request.model_endpoint.as_deref(),
            api_key: request.model_api_key.as_deref(),
            identifier: request.model_identifier.as_deref(),
        },
        state.config.custom_models_enabled,
    )?;
    let prompt = match task {
        Task::Completion => GenerationPrompt::Template,
        Task::Generation => {
            generation_prompt(request.prompt_version, request.prompt.as_ref(), request.prompt_id.as_deref())?
        }
    };
    let family = target.family.clone();
    let input = CodeInput {
        task,
        file_name: request.current_file.file_name,
        language_identifier: request.current_file.language_identifier,
        above: request.current_file.content_above_cursor,
        below: request.current_file.content_below_cursor,
        stream: request.stream,
        prompt,
        target,
    };
    let v2_answer = |lang: Option<&str>, text: Option<&str>| {
        let answer = V2Answer {
            id: "id",
            model: ModelInfo { engine: &engine, name: &family, lang },
            experiments: [],
            object: "text_completion",
            created: unix_now(),
            choices: choices(text),
        };
        json_response(http::StatusCode::OK, serde_json::to_vec(&answer).unwrap_or_default().into())
    };
    Ok(match run(state, input).await? {
        CodeOutcome::NoLanguage => v2_answer(None, None),
        CodeOutcome::Text { lang, text } => v2_answer(Some(lang), Some(&text)),
        CodeOutcome::Stream { chunks, fence, .. } => raw_text_response(*chunks, fence),
    })
}

// ---- v3 / v4: prompt components and model_metadata ---------------------------------------

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
    prompt_version: Option<u8>,
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
        model: OwnedModelInfo { engine: engine.clone(), name: family.clone(), lang },
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
    model: OwnedModelInfo,
    timestamp: u64,
}

#[derive(Serialize)]
struct OwnedModelInfo {
    engine: String,
    name: String,
    lang: Option<&'static str>,
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
