//! Where aigw answers differently from GitLab's gateway on purpose: each deliberate deviation by
//! case name, with its reason and the check aigw's answer must pass instead of equality.

use crate::transcript::Case;
use aigw_tests::Answer;
use serde_json::Value;

/// A deliberate deviation: why, and what aigw answers instead.
pub struct Deviation {
    /// Short name, as the README's contract section lists it.
    pub name: &'static str,
    /// Why aigw does not answer as GitLab's gateway does.
    pub reason: &'static str,
    check: fn(&Answer) -> Vec<String>,
}

impl Deviation {
    /// What is wrong with `answer` as this deviation's answer; empty when it is right.
    pub fn check(&self, answer: &Answer) -> Vec<String> {
        (self.check)(answer)
    }
}

const CLEAR_ERROR: Deviation = Deviation {
    name: "clear error instead of an unhandled exception",
    reason: "GitLab's gateway answers `500 text/plain Internal Server Error` when an exception escapes its \
             handler (a model-server error on /v2/code/completions, an unknown model identifier); aigw keeps \
             a status that names the failure and a JSON `detail` saying what to fix",
    check: json_error,
};

const VALIDATION_DETAIL: Deviation = Deviation {
    name: "detailed validation errors",
    reason: "GitLab's gateway hides request validation errors as `{\"detail\": \"Validation error\"}` unless \
             request logging is on; aigw keeps FastAPI's detailed list (`type`, `loc`, `msg`), or a sentence \
             naming the field for rules across fields, which tells the operator what is wrong",
    check: detailed_validation_error,
};

const V1_CHAT_WORKS: Deviation = Deviation {
    name: "/v1/chat answers",
    reason: "at the recorded commit GitLab's own /v1/chat/{invokable} answers 500 to every request (a renamed \
             parameter under its auth decorator), so there is no reference answer; aigw serves it",
    check: not_a_server_error,
};

const MODEL_NAME_AS_IDENTIFIER: Deviation = Deviation {
    name: "no model identifier",
    reason: "without `model_identifier` GitLab's gateway fails with an unhandled exception; aigw asks the \
             model server for the model by its `model_name`, as servers that name models by family do",
    check: success,
};

const MORE_FAMILIES: Deviation = Deviation {
    name: "families GitLab refuses",
    reason: "GitLab's gateway refuses model families it has no prompt for (e.g. `qwen` for completions, any \
             unknown name on \"Test connection\"); aigw serves them, with the family's own prompt or the \
             `base` one",
    check: success,
};

const CLEAN_ERROR_BEFORE_FIRST_BYTE: Deviation = Deviation {
    name: "model failure before the first byte of a code-suggestion stream",
    reason: "GitLab's gateway sends `stream_start` and then drops the connection, which the IDE sees as a \
             broken stream with no reason; aigw has not sent a byte yet, so it answers the model server's \
             failure as an HTTP error with a status and a `detail` the IDE and Rails can show",
    check: json_error,
};

const EMBEDDINGS_SCOPE: Deviation = Deviation {
    name: "403 for a token without the embeddings scope",
    reason: "GitLab's gateway checks `generate_embeddings_codebase` inside its prompt registry, where the refusal \
             escapes as an unhandled exception (500 `Internal Server Error`); aigw refuses it as GitLab refuses every \
             other missing scope, 403 `Unauthorized to access code embeddings`",
    check: forbidden,
};

const CUSTOM_OPENAI_EMBEDDINGS: Deviation = Deviation {
    name: "custom_openai/ embeddings",
    reason: "GitLab's gateway embeds only `openai/<model>` identifiers (LiteLLM has no embeddings route for \
             `custom_openai`, 400 `Unmapped LLM provider`), while its chat and completions take both; aigw sends \
             both to the same OpenAI-compatible `/embeddings`, so one identifier works for every feature",
    check: success,
};

const DIMENSIONS_TO_THE_SERVER: Deviation = Deviation {
    name: "embedding dimensions left to the model server",
    reason: "GitLab's gateway (LiteLLM's OpenAI rule) refuses `dimensions` for every model whose name lacks \
             `text-embedding-3`, without asking the server; aigw passes it on, so a self-hosted Matryoshka model \
             (vLLM serves `dimensions` for them) gives shortened vectors, and a model that cannot answers 400 itself, \
             which aigw passes on as GitLab's 400",
    check: success,
};

/// The deliberate deviations, by case name.
const BY_NAME: &[(&str, &Deviation)] = &[
    ("v2 completions qwen2p5-coder-7b", &CLEAR_ERROR),
    ("v2 completions qwen", &MORE_FAMILIES),
    ("v2 completions codestral-2501", &CLEAR_ERROR),
    ("v2 completions no identifier", &MODEL_NAME_AS_IDENTIFIER),
    ("v2 completions missing current_file", &VALIDATION_DETAIL),
    ("v2 completions unknown family", &VALIDATION_DETAIL),
    ("v2 completions invalid JSON", &VALIDATION_DETAIL),
    ("v2 completions model 500", &CLEAR_ERROR),
    ("v2 completions model 429", &CLEAR_ERROR),
    ("v2 completions model 401", &CLEAR_ERROR),
    ("v2 generations prompt_version 2 missing prompt", &VALIDATION_DETAIL),
    ("v4 suggestions model 500", &CLEAN_ERROR_BEFORE_FIRST_BYTE),
    ("v4 suggestions model 500, no prompt_version", &CLEAN_ERROR_BEFORE_FIRST_BYTE),
    ("v4 suggestions completion stream, model 429", &CLEAN_ERROR_BEFORE_FIRST_BYTE),
    ("v4 completion stream codellama, model 429", &CLEAN_ERROR_BEFORE_FIRST_BYTE),
    ("v4 completion stream gemini, model 500", &CLEAN_ERROR_BEFORE_FIRST_BYTE),
    ("v4 completion deepseekcoder, model 500", &CLEAR_ERROR),
    ("v4 suggestions empty prompt_components", &VALIDATION_DETAIL),
    ("v1 chat agent string content", &V1_CHAT_WORKS),
    ("v1 chat agent message list", &V1_CHAT_WORKS),
    ("v1 chat agent stream", &V1_CHAT_WORKS),
    ("v1 chat agent llama3", &V1_CHAT_WORKS),
    ("v1 chat agent no identifier", &V1_CHAT_WORKS),
    ("v1 chat unknown invokable", &V1_CHAT_WORKS),
    ("v1 chat agent model 500", &V1_CHAT_WORKS),
    ("v1 chat agent missing prompt_components", &VALIDATION_DETAIL),
    ("v2 chat agent missing messages", &VALIDATION_DETAIL),
    ("v1 prompts check unknown family", &MORE_FAMILIES),
    ("embeddings search, token without generate_embeddings_codebase", &EMBEDDINGS_SCOPE),
    ("embeddings index, custom_openai/ identifier", &CUSTOM_OPENAI_EMBEDDINGS),
    ("embeddings search, dimensions 24 on a model that is not text-embedding-3", &DIMENSIONS_TO_THE_SERVER),
];

/// Differences not removed yet, by case name, each with its cause and the work that removes
/// it. Such a case is reported as open, not as a failure; one that becomes equal fails the run
/// until it is taken off this list, so the list only shrinks.
pub const OPEN: &[(&str, &str)] = &[];

/// Why GitLab's Duo Chat requests are not byte for byte the same even with GitLab's registry:
/// the text of the tools in the ReAct system prompt lives in GitLab's Python code, not in the
/// registry, and aigw describes the same tools (names, order, resources, versions) in its own
/// words.
const TOOL_PROSE: &str = "the tools' descriptions and examples in the ReAct system prompt are GitLab's prose in its \
     Python code (`ai_gateway/chat/tools/gitlab.py`), not in the registry, so aigw cannot read them; it offers the \
     same tools in the same order with the same names and resources, described in its own words, and everything \
     else in the request is GitLab's";

/// GitLab's gateway builds the legacy `/v2/code/generations` prompts in code, not from its
/// registry.
const LEGACY_GENERATION: &str = "GitLab's legacy v2 generation (no `prompt_id`) is built in its code: a fenced copy \
     of the content above the cursor (the instance's own prompt text or messages ignored or kept unfolded), with \
     `model` = the family name (`mistral`), which a server that names its model otherwise refuses; aigw renders its \
     own legacy generation prompt and names the model by the identifier";

/// GitLab's route to Ollama flattens the prompt; aigw's Ollama plugin uses Ollama's own API.
const OLLAMA_NATIVE: &str = "GitLab's model library sends Ollama models the chat messages flattened into one `### User:` \
     text on `/api/generate` (then asks `/api/show`); aigw's Ollama plugin uses Ollama's own fill-in-the-middle \
     (`prompt` and `suffix`), which the model's FIM template was trained for";

/// Model-server requests that still differ from GitLab's with GitLab's registry loaded, with
/// their cause. The run fails when another case differs, or when one of these becomes identical
/// (so that the list can only shrink).
pub const UPSTREAM_OPEN: &[(&str, &str)] = &[
    ("v2 chat agent model 500", TOOL_PROSE),
    ("v2 chat agent model 429", TOOL_PROSE),
    ("v2 chat agent first step (final answer)", TOOL_PROSE),
    ("v2 chat agent first step (action)", TOOL_PROSE),
    ("v2 chat agent action, model repeats 'Thought:'", TOOL_PROSE),
    ("v2 chat agent options.agent_scratchpad (older Rails)", TOOL_PROSE),
    ("v2 chat agent with scratchpad", TOOL_PROSE),
    ("v2 chat agent mistral family", TOOL_PROSE),
    ("v2 chat agent qwen family", TOOL_PROSE),
    ("v2 chat agent gpt family", TOOL_PROSE),
    ("v2 chat agent additional_context, token has include_snippet_context", TOOL_PROSE),
    ("v2 chat agent plain text (unknown)", TOOL_PROSE),
    ("v2 completions ollama/codellama identifier", OLLAMA_NATIVE),
    ("v2 generations prompt_version 2 (legacy, no prompt_id)", LEGACY_GENERATION),
    ("v2 generations prompt_version 3 (messages)", LEGACY_GENERATION),
    ("v2 generations prompt_version 1", LEGACY_GENERATION),
];

/// Model-server requests whose structure still differs from GitLab's when aigw renders its own
/// built-in prompts, with their cause. As with [`UPSTREAM_OPEN`], the list may only shrink.
pub const BUILT_IN_OPEN: &[(&str, &str)] = &[
    (
        "v2 chat agent gpt family",
        "aigw's ReAct prompt keeps its `Observation:` stop for GPT models, where GitLab's `gpt` one has none: \
         without it the model goes on to write the tool's observation itself, and the step answers from an invented \
         result",
    ),
    ("v2 completions ollama/codellama identifier", OLLAMA_NATIVE),
    ("v2 generations prompt_version 2 (legacy, no prompt_id)", LEGACY_GENERATION),
    ("v2 generations prompt_version 3 (messages)", LEGACY_GENERATION),
    ("v2 generations prompt_version 1", LEGACY_GENERATION),
];

/// Why `case`'s model-server request may differ in structure with the built-in prompts, if it may.
pub fn built_in_open_reason(case: &Case) -> Option<&'static str> {
    open_in(&[BUILT_IN_OPEN], case)
}

/// Why `case`'s model-server request may still differ, if it may.
pub fn upstream_open_reason(case: &Case) -> Option<&'static str> {
    open_in(&[UPSTREAM_OPEN], case)
}

/// Why `case` is still allowed to differ, if it is.
pub fn open_reason(case: &Case) -> Option<&'static str> {
    open_in(&[OPEN], case)
}

/// The reason `lists` give for `case`.
fn open_in(lists: &[&'static [(&'static str, &'static str)]], case: &Case) -> Option<&'static str> {
    lists.iter().find_map(|list| named(list, case))
}

/// What `list` holds for `case`, by its name.
fn named<T: Copy>(list: &[(&str, T)], case: &Case) -> Option<T> {
    list.iter().find(|(name, _)| *name == case.name).map(|(_, value)| *value)
}

/// Said once in the report rather than per case: GitLab's gateway drops the connection after an
/// NDJSON `error` event because the exception escapes its generator; aigw ends the body
/// properly after the same event, which Rails reads the same way.
pub const CLEAN_END_AFTER_ERROR_EVENT: &str = "after an in-stream `error` event GitLab's gateway drops the connection (its exception escapes the \
     generator); aigw ends the body properly after the same event";

/// The deliberate deviation `case` falls under, if any.
pub fn of(case: &Case) -> Option<&'static Deviation> {
    named(BY_NAME, case)
}

/// Every deliberate deviation once, in the order first named.
pub fn all() -> Vec<&'static Deviation> {
    let mut all: Vec<&'static Deviation> = Vec::new();
    for (_, deviation) in BY_NAME {
        if !all.iter().any(|known| known.name == deviation.name) {
            all.push(deviation);
        }
    }
    all
}

/// Case names in [`BY_NAME`] that no transcript has (a renamed case would silently stop being
/// checked).
pub fn unknown_names(cases: &[Case]) -> Vec<&'static str> {
    BY_NAME
        .iter()
        .map(|(name, _)| *name)
        .chain(OPEN.iter().map(|(name, _)| *name))
        .chain(UPSTREAM_OPEN.iter().map(|(name, _)| *name))
        .chain(BUILT_IN_OPEN.iter().map(|(name, _)| *name))
        .filter(|name| !cases.iter().any(|case| case.name == *name))
        .collect()
}

fn json_detail(answer: &Answer) -> Option<Value> {
    let content_type = answer.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return None;
    }
    serde_json::from_slice::<Value>(&answer.body).ok().map(|body| body["detail"].clone())
}

fn json_error(answer: &Answer) -> Vec<String> {
    let mut wrong = Vec::new();
    if !answer.status.is_client_error() && !answer.status.is_server_error() {
        wrong.push(format!("expected an error status, aigw answered {}", answer.status));
    }
    let has_detail = json_detail(answer).is_some_and(|detail| detail.as_str().is_some_and(|d| !d.is_empty()));
    if !has_detail {
        wrong.push(format!("expected a JSON body with a `detail` text, aigw sent {:?}", answer.text()));
    }
    wrong
}

fn detailed_validation_error(answer: &Answer) -> Vec<String> {
    let mut wrong = Vec::new();
    if answer.status.as_u16() != 422 {
        wrong.push(format!("expected 422, aigw answered {}", answer.status));
    }
    let detailed = json_detail(answer).is_some_and(|detail| match detail {
        Value::Array(items) => {
            !items.is_empty() && items.iter().all(|item| item["type"].is_string() && item["msg"].is_string())
        }
        Value::String(sentence) => !sentence.is_empty(),
        _ => false,
    });
    if !detailed {
        wrong.push(format!(
            "expected `detail` as a list of {{type, loc, msg}} or a sentence, aigw sent {:?}",
            answer.text()
        ));
    }
    wrong
}

fn not_a_server_error(answer: &Answer) -> Vec<String> {
    if answer.status.is_server_error() {
        vec![format!("expected an answer that is not a server error, aigw answered {}", answer.status)]
    } else {
        Vec::new()
    }
}

fn forbidden(answer: &Answer) -> Vec<String> {
    let mut wrong = json_error(answer);
    if answer.status.as_u16() != 403 {
        wrong.push(format!("expected 403, aigw answered {}", answer.status));
    }
    wrong
}

fn success(answer: &Answer) -> Vec<String> {
    if answer.status.is_success() {
        Vec::new()
    } else {
        vec![format!("expected success, aigw answered {}: {}", answer.status, answer.text())]
    }
}
