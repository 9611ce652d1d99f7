//! `make parity`: replays GitLab's recorded transcripts against aigw and reports, case by case,
//! whether aigw answers as GitLab's own gateway did.
//!
//! For every case it serves the model server's recorded answers from the mock model server,
//! sends the recorded GitLab request with a real token from a mock GitLab instance, and compares
//! aigw's answer with GitLab's (see `compare`), or, for a deliberate deviation, checks the answer
//! aigw gives instead (see `deviations`). The reference directory is `AIGW_GITLAB_REFERENCE`
//! (default `../shared/reference` beside the workspace); without it the run fails, it never
//! skips. aigw runs with GitLab's prompt registry from the same reference directory
//! (`gitlab-prompts/definitions`), and the model-server requests it sends are compared with those
//! GitLab's gateway sent (see `upstream`).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test runner: failing loudly is the point"
)]

mod compare;
mod deviations;
mod transcript;
mod upstream;

use aigw_tests::{Recording, Setup, TestGateway, component, instance_claims, workspace};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::Method;
use std::fmt::Write as _;
use std::path::PathBuf;
use transcript::Case;

/// How one case came out: its answer, and how aigw's model-server request compares.
struct Replayed {
    outcome: Outcome,
    upstream: upstream::Upstream,
    /// Where aigw's model-server request differs from GitLab's.
    upstream_differences: Vec<String>,
}

/// How one case's answer came out.
enum Outcome {
    Equal,
    Deviation { name: &'static str, wrong: Vec<String> },
    Different(Vec<String>),
}

#[tokio::main]
async fn main() {
    match run().await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(error) => {
            eprintln!("parity: {error:#}");
            std::process::exit(2);
        }
    }
}

fn reference_directory() -> PathBuf {
    match std::env::var_os("AIGW_GITLAB_REFERENCE") {
        Some(directory) => PathBuf::from(directory),
        None => workspace().join("../shared/reference"),
    }
}

async fn run() -> Result<bool> {
    let reference = reference_directory();
    let transcripts = reference.join("gitlab-transcripts");
    if !transcripts.is_dir() {
        bail!(
            "GitLab's transcripts are not at {} (set AIGW_GITLAB_REFERENCE to the reference directory)",
            transcripts.display()
        );
    }
    let cases = transcript::load(&transcripts)?;
    let stale = deviations::unknown_names(&cases);
    if !stale.is_empty() {
        bail!("deviations name cases the transcripts do not have: {stale:?}");
    }
    let gitlab_prompts = reference.join("gitlab-prompts/definitions");
    if !gitlab_prompts.is_dir() {
        bail!("GitLab's prompt registry is not at {}", gitlab_prompts.display());
    }
    // The recording ran with GitLab's default location, which its answers report as `region`,
    // and with GitLab's prompt registry, which aigw reads from the reference copy.
    let gateway = Setup::default()
        .plugin(component("plugins/ollama.wasm"), "ollama.wasm")
        .env("AIGW_GOOGLE_CLOUD_PLATFORM__LOCATION", "us-central1")
        .env("AIGW_PROMPTS__GITLAB_DIR", gitlab_prompts.to_str().context("the reference path is not UTF-8")?)
        .start()
        .await;

    let mut report = String::new();
    let (mut equal, mut deviating, mut open, mut failed) = (0, 0, 0, 0);
    let mut upstream_counts = std::collections::BTreeMap::new();
    let mut upstream_report = String::new();
    for case in &cases {
        let Replayed { outcome, upstream, upstream_differences } =
            replay(&gateway, case).await.with_context(|| format!("replaying {:?}", case.name))?;
        *upstream_counts.entry(format!("{upstream:?}")).or_insert(0) += 1;
        // Only calls GitLab's gateway made are compared: where it made none, the answer is a
        // deliberate deviation, checked above.
        if !case.model_calls.is_empty() {
            let reason = deviations::upstream_open_reason(case);
            match (upstream_differences.is_empty(), reason) {
                (true, None) => {}
                (true, Some(_)) => {
                    failed += 1;
                    writeln!(upstream_report, "NOW IDENTICAL  {} (take it off the open differences)", case.name)?;
                }
                (false, reason) => {
                    if reason.is_none() {
                        failed += 1;
                    }
                    let label = if reason.is_some() { "open     " } else { "DIFFERENT" };
                    writeln!(upstream_report, "{label}  {} ({upstream:?})", case.name)?;
                    for line in upstream_differences.iter().take(6) {
                        writeln!(upstream_report, "             {line}")?;
                    }
                    if upstream_differences.len() > 6 {
                        writeln!(upstream_report, "             … {} more", upstream_differences.len() - 6)?;
                    }
                }
            }
        }
        let open_reason = deviations::open_reason(case);
        match (outcome, open_reason) {
            (Outcome::Equal, Some(_)) => {
                failed += 1;
                writeln!(report, "NOW EQUAL  {} (take it off the open differences)", case.name)?;
            }
            (Outcome::Equal, None) => {
                equal += 1;
                writeln!(report, "equal      {}", case.name)?;
            }
            (Outcome::Deviation { name, wrong }, _) if wrong.is_empty() => {
                deviating += 1;
                writeln!(report, "deviation  {} ({name})", case.name)?;
            }
            (Outcome::Deviation { name, wrong }, _) => {
                failed += 1;
                writeln!(report, "WRONG      {} (deviation: {name})", case.name)?;
                for line in wrong {
                    writeln!(report, "             {line}")?;
                }
            }
            (Outcome::Different(found), Some(reason)) => {
                open += 1;
                writeln!(report, "open       {} ({reason})", case.name)?;
                for line in found {
                    writeln!(report, "             {line}")?;
                }
            }
            (Outcome::Different(found), None) => {
                failed += 1;
                writeln!(report, "DIFFERENT  {} ({})", case.name, case.file)?;
                for line in found {
                    writeln!(report, "             {line}")?;
                }
            }
        }
    }
    writeln!(
        report,
        "\n{} cases replayed: {equal} equal to GitLab's answer, {deviating} deliberate deviations answered as \
         documented, {open} open differences, {failed} failed",
        cases.len()
    )?;
    let called = cases.iter().filter(|case| !case.model_calls.is_empty()).count();
    writeln!(
        report,
        "model-server requests, with GitLab's prompt registry loaded: {} of {called} identical to GitLab's, {} more \
         with the same method, path and credential; by outcome {upstream_counts:?}",
        upstream_counts.get("Identical").copied().unwrap_or(0),
        upstream_counts.get("SameShape").copied().unwrap_or(0),
    )?;
    writeln!(report, "\nmodel-server requests that differ:\n{upstream_report}")?;
    let mut causes: Vec<&str> = deviations::UPSTREAM_OPEN.iter().map(|(_, cause)| *cause).collect();
    causes.dedup();
    writeln!(report, "their causes:")?;
    for cause in causes {
        let cases = deviations::UPSTREAM_OPEN.iter().filter(|(_, c)| *c == cause).count();
        writeln!(report, "- {cases} case(s): {cause}")?;
    }
    writeln!(report, "\ndeliberate deviations:")?;
    for deviation in deviations::all() {
        writeln!(report, "- {}: {}", deviation.name, deviation.reason)?;
    }
    writeln!(report, "- clean end after an error event: {}", deviations::CLEAN_END_AFTER_ERROR_EVENT)?;
    print!("{report}");
    let directory = workspace().join("target/parity");
    std::fs::create_dir_all(&directory)?;
    std::fs::write(directory.join("report.txt"), &report)?;
    Ok(failed == 0)
}

async fn replay(gateway: &TestGateway, case: &Case) -> Result<Replayed> {
    let recordings = case
        .model_calls
        .iter()
        .flat_map(|call| {
            let recording =
                Recording { status: call.status, content_type: call.content_type.clone(), body: call.body.clone() };
            std::iter::repeat_n(recording, call.times)
        })
        .collect();
    gateway.model.replay(recordings);
    gateway.model.clear_requests();
    let endpoint = if case.endpoint_is_server_root() { gateway.model.root_url() } else { gateway.model.base_url() };
    let mut claims = instance_claims(&gateway.gitlab.url(), &[]);
    claims["scopes"] = serde_json::json!(case.scopes);
    claims["sub"] = serde_json::json!(case.instance_id);
    claims["gitlab_instance_id"] = serde_json::json!(case.instance_id);
    let token = gateway.key.sign(&claims);
    let headers: Vec<(String, String)> =
        case.headers.iter().map(|(name, value)| (name.clone(), value.replace("<token>", &token))).collect();
    let body = Bytes::from(case.body.replace("{model_endpoint}", &endpoint));
    let method = Method::from_bytes(case.method.as_bytes())?;
    let answer = gateway.request_allowing_abort(method, &case.path, &headers, body).await;
    gateway.model.replay(Vec::new());
    let base_path = if case.endpoint_is_server_root() { "" } else { "/v1" };
    let request: serde_json::Value = serde_json::from_str(&case.body).unwrap_or_default();
    let api_key = ["/model_api_key", "/model_metadata/api_key", "/prompt_components/0/payload/model_api_key"]
        .iter()
        .find_map(|pointer| request.pointer(pointer).and_then(serde_json::Value::as_str));
    let sent = gateway.model.requests();
    let (upstream, upstream_differences) = upstream::compare(case, &sent, base_path, api_key);
    // What aigw sent, for reading beside the transcript.
    if let Some(first) = sent.first() {
        let directory = workspace().join("target/parity/requests");
        std::fs::create_dir_all(&directory)?;
        let file: String = case.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        std::fs::write(directory.join(format!("{file}.json")), serde_json::to_vec_pretty(&first.body)?)?;
    }
    let outcome = match deviations::of(case) {
        Some(deviation) => Outcome::Deviation { name: deviation.name, wrong: deviation.check(&answer) },
        None => {
            let found = compare::differences(&case.answer, &answer);
            if found.is_empty() { Outcome::Equal } else { Outcome::Different(found) }
        }
    };
    Ok(Replayed { outcome, upstream, upstream_differences })
}
