//! `POST /v2/code/completions` (alias `/v2/completions`): GitLab's code completion request with
//! flat `model_*` fields → fill-in-the-middle prompt → model → GitLab's answer or raw text stream.

use super::model::{ModelFields, ModelTarget};
use super::pipeline::{self, ModelJob, Outcome};
use super::{AppState, language, parse_json};
use crate::auth::Principal;
use crate::error::{GatewayError, ValidationIssue};
use crate::plugins::wit;
use crate::prompts::trim_to_budget;
use crate::server::{Body, json_response, text_stream_response};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Scopes that grant code completion: the current unit primitive and the older name.
const SCOPES: [&str; 2] = ["complete_code", "code_suggestions"];

/// GitLab's limit on each side of the cursor, characters.
const MAX_CONTENT_CHARS: usize = 100_000;

/// GitLab's limit on `context` items.
const MAX_CONTEXT_ITEMS: usize = 100;

/// The only `model_provider` of self-hosted models.
const SELF_HOSTED_PROVIDER: &str = "litellm";

#[derive(Debug, Deserialize)]
struct CurrentFile {
    file_name: String,
    language_identifier: Option<String>,
    content_above_cursor: String,
    content_below_cursor: String,
}

#[derive(Debug, Deserialize)]
struct CompletionsRequest {
    current_file: CurrentFile,
    model_provider: Option<String>,
    model_name: Option<String>,
    model_endpoint: Option<String>,
    model_api_key: Option<String>,
    model_identifier: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    context: Vec<serde_json::Value>,
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

#[derive(Serialize)]
struct CompletionsAnswer<'a> {
    id: &'a str,
    model: ModelInfo<'a>,
    experiments: [(); 0],
    object: &'a str,
    created: u64,
    choices: Vec<Choice<'a>>,
}

fn validate(request: &CompletionsRequest) -> Result<(), GatewayError> {
    let mut issues = Vec::new();
    for (field, value) in [
        (
            "content_above_cursor",
            &request.current_file.content_above_cursor,
        ),
        (
            "content_below_cursor",
            &request.current_file.content_below_cursor,
        ),
    ] {
        if value.chars().count() > MAX_CONTENT_CHARS {
            issues.push(ValidationIssue {
                kind: "string_too_long",
                loc: vec![json!("body"), json!("current_file"), json!(field)],
                msg: format!("String should have at most {MAX_CONTENT_CHARS} characters"),
            });
        }
    }
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
    if issues.is_empty() {
        Ok(())
    } else {
        Err(GatewayError::Validation(issues))
    }
}

/// Handle one request whose caller is already authenticated.
pub async fn handle(
    state: &AppState,
    principal: &Principal,
    body: &[u8],
) -> Result<http::Response<Body>, GatewayError> {
    principal.require_any(&SCOPES, "code suggestions")?;
    let request: CompletionsRequest = parse_json(body)?;
    validate(&request)?;
    let engine = request.model_provider.as_deref().unwrap_or_default();
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
    let prompt = state.prompts.code_completion(&target.family)?;
    let file = &request.current_file;
    let Some(lang) = language::resolve(file.language_identifier.as_deref(), &file.file_name) else {
        // GitLab's gateway answers an unknown language with no suggestion and calls no model.
        return Ok(answer(engine, &target.family, None, None));
    };
    let (prefix, suffix) = match prompt.budget {
        Some(budget) => trim_to_budget(
            &file.content_above_cursor,
            &file.content_below_cursor,
            budget,
        ),
        None => (
            file.content_above_cursor.as_str(),
            file.content_below_cursor.as_str(),
        ),
    };
    let variables = minijinja::context! {
        prefix => prefix, suffix => suffix, language => lang, file_name => file.file_name,
    };
    let messages = state.prompts.render(prompt, &variables)?;
    let model_request = wit::ModelRequest {
        model: target.model.clone(),
        messages,
        fill_in_middle: Some(wit::FillInMiddle {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        }),
        sampling: wit::Sampling {
            max_tokens: prompt.params.max_tokens,
            temperature: prompt.params.temperature,
            top_p: prompt.params.top_p,
            stop: prompt.params.stop.clone(),
        },
        stream: request.stream,
    };
    let family = target.family.clone();
    match pipeline::run(
        state,
        ModelJob {
            target,
            request: model_request,
        },
    )
    .await?
    {
        Outcome::Complete(completion) => {
            Ok(answer(engine, &family, Some(lang), Some(&completion.text)))
        }
        Outcome::Stream(chunks) => Ok(text_stream_response(*chunks)),
    }
}

fn answer(
    engine: &str,
    family: &str,
    lang: Option<&str>,
    text: Option<&str>,
) -> http::Response<Body> {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let answer = CompletionsAnswer {
        id: "id",
        model: ModelInfo {
            engine,
            name: family,
            lang,
        },
        experiments: [],
        object: "text_completion",
        created,
        // GitLab's gateway always reports "length" here.
        choices: text
            .map(|text| Choice {
                text,
                index: 0,
                finish_reason: "length",
            })
            .into_iter()
            .collect(),
    };
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    json_response(http::StatusCode::OK, body.into())
}
