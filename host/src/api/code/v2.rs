//! `/v2/code/completions` (alias `/v2/completions`) and `/v2/code/generations`: flat `model_*`
//! fields, GitLab's `text_completion` answer, a raw text stream.

use super::{
    Choice, CodeInput, CodeOutcome, FenceRule, GenerationPrompt, MAX_CONTEXT_ITEMS, PromptVersion, Task, check_content,
    choices, generation_prompt, run,
};
use crate::api::stream::raw_text_response;
use crate::api::{parse_json, unix_now};
use crate::error::{GatewayError, ValidationIssue};
use crate::pipeline::{ModelFields, ModelTarget};
use crate::response::{Body, json_response};
use crate::state::RequestState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The only v2 `model_provider` of self-hosted models.
const SELF_HOSTED_PROVIDER: &str = "litellm";

#[derive(Debug, Deserialize)]
struct CurrentFile {
    file_name: String,
    language_identifier: Option<String>,
    content_above_cursor: String,
    content_below_cursor: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct V2Request {
    current_file: CurrentFile,
    prompt_version: Option<PromptVersion>,
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

/// GitLab's `text_completion` answer, in its field order.
#[derive(Serialize)]
struct V2Answer<'a> {
    id: &'a str,
    model: V2Model<'a>,
    experiments: [(); 0],
    object: &'a str,
    created: u64,
    choices: Vec<Choice<'a>>,
    metadata: FeatureFlags,
}

#[derive(Serialize)]
struct V2Model<'a> {
    engine: &'a str,
    name: &'a str,
    lang: &'static str,
    tokens_consumption_metadata: Option<TokensConsumption>,
    region: Option<&'a str>,
}

/// What a completion cost, as GitLab's gateway reports it with completions (generations report
/// `null`).
#[derive(Serialize)]
struct TokensConsumption {
    input_tokens: u32,
    output_tokens: u32,
    /// The model stopped at its output limit.
    max_output_tokens_used: bool,
    /// Characters of `context` the instance sent (GitLab's count for self-hosted models).
    context_tokens_sent: usize,
    /// Of those, how many the prompt used.
    context_tokens_used: usize,
}

/// `metadata` of v2 answers: the feature flags the gateway ran with (none here).
#[derive(Serialize)]
struct FeatureFlags {
    enabled_feature_flags: [(); 0],
}

impl V2Request {
    /// The fields that name the model and where it is served.
    pub(crate) fn model_fields(&self) -> ModelFields<'_> {
        ModelFields {
            family: self.model_name.as_deref(),
            endpoint: self.model_endpoint.as_deref(),
            api_key: self.model_api_key.as_deref(),
            identifier: self.model_identifier.as_deref(),
        }
    }
}

/// The request, checked as GitLab's schema checks it (each side of the cursor, the number of
/// context items) and served by this gateway (the self-hosted provider).
pub(crate) fn parse_v2(body: &[u8]) -> Result<V2Request, GatewayError> {
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
    let engine = request.model_provider.as_deref().unwrap_or_default();
    if engine != SELF_HOSTED_PROVIDER {
        return Err(GatewayError::Unprocessable(format!(
            "model_provider {engine:?} is not served by this gateway; self-hosted models use \"{SELF_HOSTED_PROVIDER}\""
        )));
    }
    Ok(request)
}

/// `POST /v2/code/completions` (alias `/v2/completions`) and `POST /v2/code/generations`.
/// The route table has checked the task's scopes.
pub(crate) async fn handle_v2(
    state: &RequestState<'_>,
    body: &[u8],
    task: Task,
    user: &str,
) -> Result<http::Response<Body>, GatewayError> {
    let request = parse_v2(body)?;
    let engine = request.model_provider.clone().unwrap_or_default();
    let target = ModelTarget::resolve(request.model_fields(), state.config.custom_models_enabled)?;
    let prompt = match task {
        Task::Completion => GenerationPrompt::Template,
        Task::Generation => {
            generation_prompt(request.prompt_version, request.prompt.as_ref(), request.prompt_id.as_deref())?
        }
    };
    // A generation answer names the provider and family (`custom_openai/mistral`), or, for a
    // registry prompt, the prompt; a completion names the family.
    let by_prompt = matches!(prompt, GenerationPrompt::ById { .. });
    let name = match task {
        Task::Completion => target.family.clone(),
        Task::Generation => format!("{}/{}", target.provider, target.family),
    };
    let context: Vec<String> =
        request.context.iter().filter_map(|item| item["content"].as_str().map(str::to_string)).collect();
    let context_chars: usize = context.iter().map(|content| content.chars().count()).sum();
    let input = CodeInput {
        task,
        file_name: request.current_file.file_name,
        language_identifier: request.current_file.language_identifier,
        above: request.current_file.content_above_cursor,
        below: request.current_file.content_below_cursor,
        stream: request.stream,
        prompt,
        target,
        strip_fence: FenceRule::Always,
        context,
        enhancer: serde_json::Map::new(),
        legacy: true,
        user: user.to_string(),
    };
    let answer = run(state, input).await?;
    let (engine, name) =
        if by_prompt { ("agent", answer.prompt_name.as_str()) } else { (engine.as_str(), name.as_str()) };
    let region = state.config.region.as_deref();
    let v2_answer = |lang: &'static str, text: Option<&str>, tokens: Option<TokensConsumption>| {
        let answer = V2Answer {
            id: "id",
            model: V2Model { engine, name, lang, tokens_consumption_metadata: tokens, region },
            experiments: [],
            object: "text_completion",
            created: unix_now(),
            choices: choices(text),
            metadata: FeatureFlags { enabled_feature_flags: [] },
        };
        json_response(http::StatusCode::OK, serde_json::to_vec(&answer).unwrap_or_default().into())
    };
    Ok(match answer.outcome {
        CodeOutcome::NoLanguage => v2_answer("", None, None),
        CodeOutcome::Text { lang, text, usage, cut_at_limit, context_used } => {
            let tokens = (task == Task::Completion).then(|| TokensConsumption {
                input_tokens: usage.as_ref().map_or(0, |u| u.input_tokens),
                output_tokens: usage.as_ref().map_or(0, |u| u.output_tokens),
                max_output_tokens_used: cut_at_limit,
                context_tokens_sent: context_chars,
                context_tokens_used: context_used,
            });
            v2_answer(lang, Some(&text), tokens)
        }
        CodeOutcome::Stream { chunks, fence, .. } => raw_text_response(*chunks, fence),
    })
}

// ---- v3 / v4: prompt components and model_metadata ---------------------------------------
