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
//! GitLab's gateway sent (see `upstream`). Last, GitLab's Duo Workflow Service's recorded model
//! calls go through the model API (see `agent_platform`).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test runner: failing loudly is the point"
)]

mod agent_platform;
mod compare;
mod deviations;
mod matrix;
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
            if !ratchet(&mut upstream_report, case, &format!("{upstream:?}"), &upstream_differences, reason)? {
                failed += 1;
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
    let built_in = Setup::default().plugin(component("plugins/ollama.wasm"), "ollama.wasm").start().await;
    let (built_in_failed, built_in_report) = compare_built_in_prompts(&cases, &built_in).await?;
    failed += built_in_failed;
    report.push_str(&built_in_report);
    let (matrix_failed, matrix_report) = matrix::run(&gateway, &built_in).await?;
    failed += matrix_failed;
    report.push_str(&matrix_report);
    let (agent_failed, agent_report) = agent_platform::run(&reference).await?;
    failed += agent_failed;
    report.push_str(&agent_report);
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

/// Reports one case's model-server request against a list of known differences that may only
/// shrink: a difference not on the list, or a listed case that no longer differs, fails. Returns
/// whether the case passes.
fn ratchet(
    report: &mut String,
    case: &Case,
    outcome: &str,
    differences: &[String],
    known: Option<&str>,
) -> Result<bool> {
    match (differences.is_empty(), known) {
        (true, None) => Ok(true),
        (true, Some(_)) => {
            writeln!(report, "NOW IDENTICAL  {} (take it off the open differences)", case.name)?;
            Ok(false)
        }
        (false, known) => {
            let label = if known.is_some() { "open     " } else { "DIFFERENT" };
            writeln!(report, "{label}  {} ({outcome})", case.name)?;
            for line in differences.iter().take(6) {
                writeln!(report, "             {line}")?;
            }
            if differences.len() > 6 {
                writeln!(report, "             … {} more", differences.len() - 6)?;
            }
            Ok(known.is_some())
        }
    }
}

/// Replays every case that called the model server against aigw with its built-in prompts (no
/// GitLab directory) and compares the structure of each model-server request with GitLab's:
/// roles, prefill, guard, special tokens, stops, parameters, path and credential, everything but
/// the prose. Returns the failures and the report's section.
async fn compare_built_in_prompts(cases: &[Case], gateway: &TestGateway) -> Result<(usize, String)> {
    let mut report = String::new();
    let (mut same_structure, mut identical, mut called, mut failed) = (0, 0, 0, 0);
    let mut differing = String::new();
    for case in cases.iter().filter(|case| !case.model_calls.is_empty()) {
        called += 1;
        let sent =
            send(gateway, case).await.with_context(|| format!("replaying {:?} with built-in prompts", case.name))?;
        sent.keep_request(case, "built-in-requests")?;
        let (outcome, differences) = sent.compare_upstream(case, upstream::Body::Structure);
        if differences.is_empty() {
            same_structure += 1;
        }
        if sent.compare_upstream(case, upstream::Body::Whole).1.is_empty() {
            identical += 1;
        }
        let known = deviations::built_in_open_reason(case);
        if !ratchet(&mut differing, case, &format!("{outcome:?}"), &differences, known)? {
            failed += 1;
        }
    }
    writeln!(
        report,
        "\nmodel-server requests with aigw's built-in prompts: {same_structure} of {called} with GitLab's structure \
         (everything but the prose), {identical} of them identical byte for byte"
    )?;
    writeln!(report, "\nbuilt-in prompts, structures that differ:\n{differing}")?;
    Ok((failed, report))
}

/// What one case sent and got: aigw's answer, the model-server requests it made, and the
/// arguments `upstream::compare` needs for them.
struct Sent {
    answer: aigw_tests::Answer,
    requests: Vec<aigw_tests::Recorded>,
    base_path: &'static str,
    api_key: Option<String>,
}

/// Serves `case`'s recorded model answers, sends its GitLab request with a real token, and
/// collects what aigw answered and sent.
async fn send(gateway: &TestGateway, case: &Case) -> Result<Sent> {
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
        .find_map(|pointer| request.pointer(pointer).and_then(serde_json::Value::as_str))
        .map(str::to_owned);
    Ok(Sent { answer, requests: gateway.model.requests(), base_path, api_key })
}

impl Sent {
    fn compare_upstream(&self, case: &Case, body: upstream::Body) -> (upstream::Upstream, Vec<String>) {
        upstream::compare(case, &self.requests, self.base_path, self.api_key.as_deref(), body)
    }

    /// Writes the first model-server request to `target/parity/<folder>/`, for reading beside
    /// the transcript.
    fn keep_request(&self, case: &Case, folder: &str) -> Result<()> {
        if let Some(first) = self.requests.first() {
            let directory = workspace().join("target/parity").join(folder);
            std::fs::create_dir_all(&directory)?;
            let file: String = case.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
            std::fs::write(directory.join(format!("{file}.json")), serde_json::to_vec_pretty(&first.body)?)?;
        }
        Ok(())
    }
}

async fn replay(gateway: &TestGateway, case: &Case) -> Result<Replayed> {
    let sent = send(gateway, case).await?;
    let (upstream, upstream_differences) = sent.compare_upstream(case, upstream::Body::Whole);
    sent.keep_request(case, "requests")?;
    let answer = &sent.answer;
    let outcome = match deviations::of(case) {
        Some(deviation) => Outcome::Deviation { name: deviation.name, wrong: deviation.check(answer) },
        None => {
            let found = compare::differences(&case.answer, answer);
            if found.is_empty() { Outcome::Equal } else { Outcome::Different(found) }
        }
    };
    Ok(Replayed { outcome, upstream, upstream_differences })
}
