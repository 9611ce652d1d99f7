//! Every model family × feature, beyond the recorded cases: the structure of the model-server
//! request aigw sends with its built-in prompts against the one it sends with GitLab's registry
//! loaded (whose requests `upstream` shows to be GitLab's own), for the same request.

use crate::upstream;
use aigw_tests::{TestGateway, instance_claims};
use anyhow::Result;
use serde_json::{Value, json};
use std::fmt::Write as _;

/// The families GitLab's self-hosted models name (`models.yml`'s self-hosted entries).
const FAMILIES: [&str; 12] = [
    "mistral",
    "mixtral",
    "codestral",
    "llama3",
    "codellama",
    "gpt",
    "codegemma",
    "deepseekcoder",
    "claude_3",
    "gemini",
    "qwen",
    "general",
];

/// The prompt ids GitLab calls through `/v1/prompts/{id}`.
const PROMPT_IDS: [&str; 12] = [
    "chat/explain_code",
    "chat/fix_code",
    "chat/refactor_code",
    "chat/write_tests",
    "chat/explain_vulnerability",
    "chat/summarize_comments",
    "chat/troubleshoot_job",
    "generate_commit_message",
    "review_merge_request",
    "summarize_new_merge_request",
    "summarize_review",
    "model_configuration/check",
];

/// Every scope a feature here needs.
const SCOPES: [&str; 14] = [
    "complete_code",
    "generate_code",
    "duo_chat",
    "explain_code",
    "fix_code",
    "refactor_code",
    "write_tests",
    "explain_vulnerability",
    "summarize_comments",
    "troubleshoot_job",
    "generate_commit_message",
    "summarize_new_merge_request",
    "review_merge_request",
    "summarize_review",
];

/// Inputs aigw's own chat prompts read; GitLab's ask for theirs by name (see [`prompt_inputs`]).
fn own_inputs() -> Value {
    json!({
        "input": "Explain this code", "selected_text": "def f(x):\n    return x * 2",
        "language_info": "The code is written in Python.", "file_content": "", "file_content_reuse": "",
        "job_log": "npm ERR! 404", "notes_content": "LGTM", "diff": "+fn a() {}", "mr_title": "Add a",
    })
}

/// Why a family × feature is allowed to have another structure than GitLab's, if it is.
fn known_deviation(feature: &str, family: &str) -> Option<&'static str> {
    let generation = feature == "code generation";
    match (feature, family) {
        (_, "codegemma") if feature != "code completion" => Some(
            "Gemma's chat template has no system role (vLLM answers 400 to one), so aigw sends CodeGemma the \
             system text at the start of the first user message; GitLab's prompts send it a system message",
        ),
        ("chat/react", "gpt") => Some(
            "aigw's ReAct prompt keeps its `Observation:` stop for GPT models: without it the model writes the \
             tool's observation itself",
        ),
        (_, "claude_3" | "gemini" | "qwen" | "general") if generation => Some(
            "GitLab's base generation prompt asks the model for UNABLE_TO_GENERATE and stops there; aigw's \
             base generation prompt asks for an empty reply and needs no stop word",
        ),
        _ => None,
    }
}

/// One request of the matrix.
struct Case {
    feature: String,
    family: &'static str,
    path: String,
    body: Value,
}

fn metadata(gateway: &TestGateway, family: &str) -> Value {
    json!({"provider": "openai", "name": family, "endpoint": gateway.model.base_url(), "api_key": "sk-matrix",
           "identifier": format!("custom_openai/{family}-model")})
}

fn cases(gateway: &TestGateway) -> Vec<Case> {
    let mut cases = Vec::new();
    for family in FAMILIES {
        let mut completion = gateway.completion_body(family, Some(&format!("custom_openai/{family}-model")), false);
        completion["prompt_version"] = json!(2);
        cases.push(Case {
            feature: "code completion".into(),
            family,
            path: "/v2/code/completions".into(),
            body: completion,
        });
        let generation = json!({"prompt_components": [{"type": "code_editor_generation",
            "metadata": {"source": "GitLab EE", "version": "18.5.0"},
            "payload": {"file_name": "main.go", "content_above_cursor": "package main\n\nfunc main() {\n\t",
                        "content_below_cursor": "\n}\n", "language_identifier": "go", "stream": false,
                        "prompt_id": "code_suggestions/generations", "prompt_version": "^1.0.0",
                        "prompt_enhancer": {"examples_array": [], "trimmed_content_above_cursor": "package main",
                                            "trimmed_content_below_cursor": "}", "related_files": [],
                                            "related_snippets": [], "libraries": [],
                                            "user_instruction": "print hello"}}}],
            "model_metadata": metadata(gateway, family)});
        cases.push(Case {
            feature: "code generation".into(),
            family,
            path: "/v4/code/suggestions".into(),
            body: generation,
        });
        let chat = json!({"messages": [{"role": "user", "content": "How do I squash commits?"}],
                          "model_metadata": metadata(gateway, family)});
        cases.push(Case { feature: "chat/react".into(), family, path: "/v2/chat/agent".into(), body: chat });
        for id in PROMPT_IDS {
            let body = json!({"inputs": own_inputs(), "prompt_version": "^1.0.0", "stream": false,
                              "model_metadata": metadata(gateway, family)});
            cases.push(Case { feature: id.into(), family, path: format!("/v1/prompts/{id}"), body });
        }
    }
    cases
}

/// Sends `case` to `gateway` with the endpoint rewritten to its own mock model server, and
/// returns the status and the model-server request it made, if any.
async fn send(gateway: &TestGateway, case: &Case, body: &Value) -> (u16, Option<Value>) {
    let mut body = body.clone();
    for pointer in ["/model_endpoint", "/model_metadata/endpoint"] {
        if let Some(endpoint) = body.pointer_mut(pointer) {
            *endpoint = json!(gateway.model.base_url());
        }
    }
    gateway.model.clear_requests();
    let token = gateway.key.sign(&instance_claims(&gateway.gitlab.url(), &SCOPES));
    let answer = gateway.post(&case.path, &gateway.gitlab_headers(&token), &body).await;
    (answer.status.as_u16(), gateway.model.requests().first().map(|request| request.body.clone()))
}

/// For a `/v1/prompts` case, the inputs GitLab's prompt asks for besides aigw's: GitLab's
/// gateway names what it misses (`missing variables {'a', 'b'}`), so ask until it is satisfied.
async fn prompt_inputs(gitlab: &TestGateway, case: &Case) -> Value {
    let mut body = case.body.clone();
    for _ in 0..4 {
        gitlab.model.clear_requests();
        let token = gitlab.key.sign(&instance_claims(&gitlab.gitlab.url(), &SCOPES));
        let answer = gitlab.post(&case.path, &gitlab.gitlab_headers(&token), &body).await;
        let detail = answer.json()["detail"].as_str().unwrap_or_default().to_string();
        let Some(names) = detail.split_once("missing variables {").map(|(_, rest)| rest.to_string()) else {
            break;
        };
        for name in names.split(['\'', ',', ' ', '}']).filter(|name| !name.is_empty()) {
            body["inputs"][name] = json!(format!("sample {name}"));
        }
    }
    body
}

/// Runs the matrix and returns the failures and the report's section.
pub async fn run(gitlab: &TestGateway, built_in: &TestGateway) -> Result<(usize, String)> {
    let (mut same, mut deviating, mut failed, mut total) = (0, 0, 0, 0);
    let mut lines = String::new();
    let mut reasons: Vec<(&'static str, Vec<String>)> = Vec::new();
    for case in cases(gitlab) {
        total += 1;
        let body =
            if case.path.starts_with("/v1/prompts/") { prompt_inputs(gitlab, &case).await } else { case.body.clone() };
        let (theirs_status, theirs) = send(gitlab, &case, &body).await;
        let (ours_status, ours) = send(built_in, &case, &body).await;
        let label = format!("{} × {}", case.feature, case.family);
        let differences = match (&theirs, &ours) {
            (Some(theirs), Some(ours)) => upstream::structural_differences(theirs, ours),
            _ => vec![format!("model call: with GitLab's registry {theirs_status}, built-in {ours_status}")],
        };
        match (differences.is_empty(), known_deviation(&case.feature, case.family)) {
            (true, None) => same += 1,
            (true, Some(_)) => {
                failed += 1;
                writeln!(lines, "NOW SAME   {label} (take it off the known deviations)")?;
            }
            (false, Some(reason)) => {
                deviating += 1;
                match reasons.iter_mut().find(|(known, _)| *known == reason) {
                    Some((_, labels)) => labels.push(label),
                    None => reasons.push((reason, vec![label])),
                }
            }
            (false, None) => {
                failed += 1;
                writeln!(lines, "DIFFERENT  {label}")?;
                for line in differences.iter().take(4) {
                    writeln!(lines, "             {line}")?;
                }
            }
        }
    }
    let mut report = format!(
        "\nevery family × feature ({total}: {} families, completion, generation, Duo Chat and {} prompt ids), \
         built-in prompts against GitLab's registry: {same} with GitLab's structure, {deviating} known deviations, \
         {failed} failed\n",
        FAMILIES.len(),
        PROMPT_IDS.len()
    );
    report.push_str(&lines);
    for (reason, labels) in reasons {
        writeln!(report, "- {} ({}): {reason}", labels.len(), labels.join(", "))?;
    }
    Ok((failed, report))
}
