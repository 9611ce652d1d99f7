//! GitLab's code suggestion endpoints: completions and generations, in the v2 form (flat
//! `model_*` fields, [`v2`]) and the v3/v4 form (`prompt_components` + `model_metadata`, [`v3`]),
//! both turned into one [`CodeInput`] and one model call.

mod v2;
mod v3;

pub(crate) use v2::{handle_v2, parse_v2};
pub(crate) use v3::{Version, handle_v3, parse_v3};

use super::fence::FenceStripper;
use super::{language, parse_messages};
use crate::auth::scopes;
use crate::error::{GatewayError, ValidationIssue};
use crate::fleet::{Work, WorkClass, affinity_key};
use crate::pipeline::{self, ChunkStream, Deadline, ModelJob, ModelTarget};
use crate::plugins::wit;
use crate::prompts::FittedCode;
use crate::state::RequestState;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// GitLab's limit on each side of the cursor, characters.
const MAX_CONTENT_CHARS: usize = 100_000;

/// The share of the budget GitLab's gateway reserves for the suffix of a completion.
const GITLAB_SUFFIX_SHARE: f32 = 0.07;

/// GitLab's limit on `context` items.
const MAX_CONTEXT_ITEMS: usize = 100;

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
    /// A prompt by id from the registry (`prompt_id`), at the version the constraint picks
    /// (the highest stable one without).
    ById { id: String, constraint: Option<String> },
    /// The instance built the prompt: one user message (prompt version 2).
    Text(String),
    /// The instance built the messages (prompt version 3).
    Messages(Vec<wit::Message>),
}

/// Where GitLab's gateway strips the markdown fence a chat model puts around generated code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FenceRule {
    /// v2: whole answers and streams (a whole answer also starts on a new line when the code
    /// above the cursor does not end with one, and one that is only whitespace becomes empty).
    Always,
    /// v4: streams only; a whole answer is the model's text as it is.
    StreamsOnly,
    /// v3: never.
    Never,
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
    /// Which of a generation's answers lose their markdown code fence.
    strip_fence: FenceRule,
    /// The instance's code context (the contents of open files), in its order; GitLab's gateway
    /// puts it in front of the prefix.
    context: Vec<String>,
    /// The v3/v4 generation payload's `prompt_enhancer`: variables for the generation prompt.
    enhancer: serde_json::Map<String, Value>,
    /// A generation without `prompt_id` uses the registry's generation prompt, GitLab's when its
    /// registry is loaded (v3 and v4, as GitLab's gateway); v2's legacy forms never use GitLab's
    /// registry (GitLab's gateway builds those prompts in code).
    legacy: bool,
    /// Who is typing, for a named model's pool to keep a file's completions on one member.
    user: String,
}

/// The user a GitLab request is made for (`X-Gitlab-Global-User-Id`): a hint for the fleet's
/// prefix affinity only, never for access.
pub(crate) fn typing_user(headers: &http::HeaderMap) -> String {
    headers.get("x-gitlab-global-user-id").and_then(|value| value.to_str().ok()).unwrap_or_default().to_string()
}

/// The answer before it takes an endpoint's shape.
enum CodeOutcome {
    /// No language could be resolved: no suggestion, no model call.
    NoLanguage,
    /// A complete suggestion.
    Text {
        lang: &'static str,
        text: String,
        /// What the model server reported.
        usage: Option<wit::Usage>,
        /// The model stopped at its output limit.
        cut_at_limit: bool,
        /// Characters of the instance's code context the prompt carried.
        context_used: usize,
    },
    /// A streamed suggestion.
    Stream { chunks: Box<ChunkStream>, fence: Option<FenceStripper> },
}

/// A code answer: the display name of the prompt that made it, and the outcome.
struct CodeAnswer {
    prompt_name: String,
    outcome: CodeOutcome,
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

/// `prompt_version` as GitLab sends it: the number of the v2 payload's prompt form, or, in the
/// `code_editor_generation` payloads of v3 and v4, a registry version constraint (`^1.0.0`) for
/// `prompt_id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PromptVersion {
    /// 1: the registry's template; 2: `prompt` is the prompt text; 3: `prompt` is the messages.
    Form(u8),
    /// Which version of the `prompt_id` prompt to use.
    Constraint(String),
}

/// `prompt_id` names a registry prompt (at the constraint's version); otherwise the number says
/// how the instance gave the prompt. A constraint without `prompt_id` selects nothing, as in
/// GitLab's gateway: the registry's own generation prompt is used.
fn generation_prompt(
    version: Option<PromptVersion>,
    prompt: Option<&Value>,
    prompt_id: Option<&str>,
) -> Result<GenerationPrompt, GatewayError> {
    if let Some(id) = prompt_id.filter(|id| !id.is_empty()) {
        let constraint = match version {
            Some(PromptVersion::Constraint(constraint)) => Some(constraint),
            Some(PromptVersion::Form(_)) | None => None,
        };
        return Ok(GenerationPrompt::ById { id: id.to_string(), constraint });
    }
    let form = match version {
        Some(PromptVersion::Form(form)) => form,
        Some(PromptVersion::Constraint(_)) | None => 1,
    };
    match (form, prompt) {
        (1, _) => Ok(GenerationPrompt::Template),
        (2, Some(Value::String(text))) => Ok(GenerationPrompt::Text(text.clone())),
        (3, Some(messages @ Value::Array(_))) => Ok(GenerationPrompt::Messages(parse_messages(messages)?)),
        (2 | 3, _) => Err(GatewayError::Unprocessable(
            "prompt_version 2 needs a prompt string and prompt_version 3 a prompt message list".into(),
        )),
        (other, _) => Err(GatewayError::Unprocessable(format!("prompt_version {other} is not supported (1, 2 or 3)"))),
    }
}

/// Render the prompt, call the model, and strip a generation's code fence where the endpoint does.
async fn run(state: &RequestState<'_>, input: CodeInput) -> Result<CodeAnswer, GatewayError> {
    let family = input.target.family.clone();
    let prompts = state.prompts();
    let prompt = match (input.task, &input.prompt) {
        (Task::Completion, _) => prompts.code_completion(&family)?,
        (Task::Generation, GenerationPrompt::ById { id, constraint }) => {
            prompts.for_family(id, &family, constraint.as_deref())?
        }
        (Task::Generation, _) if input.legacy => prompts.own_code_generation(&family)?,
        (Task::Generation, _) => prompts.code_generation(&family)?,
    };
    let prompt_name = prompt.name.clone();
    let lang = language::reported(&input.file_name);
    let Some(language) = language::resolve(input.language_identifier.as_deref(), &input.file_name) else {
        // GitLab's gateway answers a file it cannot name a language for (no extension, no editor
        // language) with no suggestion and calls no model.
        return Ok(CodeAnswer { prompt_name, outcome: CodeOutcome::NoLanguage });
    };
    // The caller's code, cut to the tokens the prompt leaves in the family's context window:
    // the prefix keeps its end and the suffix its start (7 % of the budget for GitLab's
    // completions); a completion's code context (its items joined by newlines) gets what they
    // leave, and a generation's instruction (fenced content above the cursor) is the prefix alone.
    let sampling = prompts.sampling(prompt, &family);
    let suffix_share = match (prompt.budget, input.task) {
        (Some(budget), _) => budget.suffix_share,
        (None, Task::Completion) => GITLAB_SUFFIX_SHARE,
        (None, Task::Generation) => 0.0,
    };
    let joined_context = match input.task {
        Task::Completion => input.context.join("\n"),
        Task::Generation => String::new(),
    };
    let FittedCode { prefix, suffix, context } =
        prompts.fit_code(prompt, &family, &sampling, (&input.above, &input.below, &joined_context), suffix_share);
    let with_context =
        |prefix: &str| if context.is_empty() { prefix.to_string() } else { format!("{context}\n{prefix}") };
    let gitlab = prompt.is_gitlab();
    let (model_prefix, variables) = match input.task {
        Task::Generation if gitlab => {
            // GitLab's generation variables: the content above the cursor, as `prefix` and fenced
            // as the instruction, the editor's language id, and the prompt enhancer's fields.
            let fence_language = if lang.is_empty() {
                std::path::Path::new(&input.file_name).extension().and_then(|e| e.to_str()).unwrap_or_default()
            } else {
                lang
            };
            let instruction = format!("```{fence_language}\n{prefix}\n```");
            let base = minijinja::context! {
                prefix => &input.above, instruction => &instruction, user_instruction => &instruction,
                language => input.language_identifier.as_deref(), file_name => input.file_name,
            };
            let variables = minijinja::context! { ..minijinja::Value::from_serialize(&input.enhancer), ..base };
            (input.above.clone(), variables)
        }
        _ => {
            let prefix = with_context(prefix);
            // GitLab's prompts get the editor's language id (else the language's name),
            // lower-cased; aigw's get the language's name.
            let editor_language = input.language_identifier.as_deref().map(str::trim).filter(|id| !id.is_empty());
            let language = match editor_language {
                Some(id) if gitlab => id.to_lowercase(),
                _ if gitlab => language.to_lowercase(),
                _ => language.into_owned(),
            };
            let variables = minijinja::context! {
                prefix => &prefix, suffix => suffix, language => language, file_name => input.file_name,
            };
            (prefix, variables)
        }
    };
    // A completion continues its file's last prompt: the fleet keeps it on the same model
    // server, and the prompt's start stays the same for that server's prefix cache.
    let completion_scope = (input.task == Task::Completion).then(|| affinity_key(&input.user, &input.file_name));
    let work = match completion_scope {
        Some(scope) => Work { class: WorkClass::Completion, affinity: Some(scope) },
        None => Work::of(WorkClass::Chat),
    };
    let messages = match input.prompt {
        GenerationPrompt::Text(text) if input.task == Task::Generation => {
            vec![wit::Message { role: wit::Role::User, content: text }]
        }
        GenerationPrompt::Messages(messages) if input.task == Task::Generation => messages,
        // A file's completions share their guard, so that a model server's prefix cache serves
        // each keystroke from the last one's prompt.
        _ => prompts.render_in(prompt, &variables, completion_scope)?,
    };
    let mut job = ModelJob::new(input.target, messages, sampling, Deadline::Code).with_work(work);
    if gitlab {
        job = job.with_roles_as_rendered();
    }
    if input.task == Task::Completion {
        job = job.with_fill_in_middle(&model_prefix, suffix);
    }
    let generation = input.task == Task::Generation;
    if input.stream {
        let chunks = Box::new(pipeline::stream(state, job).await?.first_piece().await?);
        let strip = generation && input.strip_fence != FenceRule::Never;
        let outcome = CodeOutcome::Stream { chunks, fence: strip.then(FenceStripper::default) };
        return Ok(CodeAnswer { prompt_name, outcome });
    }
    let completion = pipeline::complete(state, job).await?;
    let cut_at_limit = matches!(completion.finish_reason, Some(wit::FinishReason::Length));
    let text = if generation && input.strip_fence == FenceRule::Always {
        post_process_generation(&input.above, &completion.text)
    } else {
        completion.text
    };
    let context_used = context.chars().count();
    let outcome = CodeOutcome::Text { lang, text, usage: completion.usage, cut_at_limit, context_used };
    Ok(CodeAnswer { prompt_name, outcome })
}

/// GitLab's post-processing of a whole v2 generation: the fence stripped, a new line in front
/// when the code above the cursor does not end with one (so the code does not continue the
/// cursor's line), and nothing when only whitespace is left.
fn post_process_generation(above: &str, answer: &str) -> String {
    let code = FenceStripper::strip(answer);
    if code.trim().is_empty() {
        return String::new();
    }
    if above.ends_with('\n') || code.starts_with('\n') { code } else { format!("\n{code}") }
}

/// `model` of the v3/v4 answers: the provider as GitLab named it (or `agent` for a registry
/// prompt), the family (or the prompt's name), the language (`""` when none resolved).
#[derive(Serialize)]
struct ModelInfo {
    engine: String,
    name: String,
    lang: &'static str,
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

#[cfg(test)]
mod tests {
    use super::post_process_generation;

    #[test]
    fn a_whole_generation_starts_on_its_own_line() {
        let fenced = "```python\ndef hi():\n    return 1\n```";
        assert_eq!(post_process_generation("# say hi\n", fenced), "def hi():\n    return 1\n");
        assert_eq!(post_process_generation("# say hi", fenced), "\ndef hi():\n    return 1\n");
        assert_eq!(post_process_generation("x = 1", "\ny = 2"), "\ny = 2", "already on a new line");
        assert_eq!(post_process_generation("x = 1", "```\n  \n```"), "", "only whitespace");
    }
}
