//! `aigw-bench soak`: a bounded run of mixed traffic against one aigw process (completions,
//! streams, Duo Chat, callers that hang up, bad tokens, malformed bodies) with a plugin swap and a
//! prompt reload every minute, sampling the process's memory, descriptors and threads; good
//! requests must all succeed and the samples must not grow. Not part of CI.

use crate::gateway::{gitlab_body, start_aigw_with};
use crate::load::{self, BenchClient};
use crate::procfs;
use aigw_mock::{MockModelServer, Reply};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to run; bounded in time and in concurrency.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// How long the traffic runs.
    pub duration: Duration,
    /// Callers at once.
    pub concurrency: usize,
}

/// The kinds of request in the mix, in the order each caller cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    CompletionStream,
    Chat,
    HangUp,
    BadToken,
    MalformedBody,
}

const MIX: [Kind; 8] = [
    Kind::Completion,
    Kind::Completion,
    Kind::CompletionStream,
    Kind::Chat,
    Kind::HangUp,
    Kind::Completion,
    Kind::BadToken,
    Kind::MalformedBody,
];

/// Counts per kind: sent, and answered as that kind must be answered.
#[derive(Default)]
struct Tally {
    sent: [AtomicU64; 6],
    wrong: [AtomicU64; 6],
}

impl Tally {
    fn record(&self, kind: Kind, right: bool) {
        self.sent[kind as usize].fetch_add(1, Ordering::Relaxed);
        if !right {
            self.wrong[kind as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One sample of the process.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Sample {
    seconds: u64,
    rss_mib: f64,
    descriptors: usize,
    threads: u64,
}

fn sample(pid: u32, started: Instant) -> Sample {
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| status.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok()))
        .unwrap_or(0);
    Sample {
        seconds: started.elapsed().as_secs(),
        rss_mib: procfs::rss(pid) as f64 / (1024.0 * 1024.0),
        descriptors: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count),
        threads,
    }
}

/// Sends one request of `kind` and says whether it was answered as it must be: good requests
/// 200 with a body, a bad token 401, a malformed body 422; a hang-up reads the stream's first
/// piece and drops the connection, which is right whatever follows.
async fn one(client: &BenchClient, base: &str, token: &str, model: &MockModelServer, kind: Kind) -> bool {
    let (path, body, bearer) = match kind {
        Kind::Completion => ("/v2/code/completions", gitlab_body(model, false), token),
        Kind::CompletionStream | Kind::HangUp => ("/v2/code/completions", gitlab_body(model, true), token),
        Kind::Chat => {
            let body = json!({"messages": [{"role": "user", "content": "How do I squash commits?"}],
                "model_metadata": {"provider": "openai", "name": "mistral", "endpoint": model.base_url(),
                                   "api_key": "k", "identifier": "custom_openai/mistral-7b"}});
            ("/v2/chat/agent", Bytes::from(body.to_string()), token)
        }
        Kind::BadToken => ("/v2/code/completions", gitlab_body(model, false), "not-a-token"),
        Kind::MalformedBody => ("/v2/code/completions", Bytes::from_static(b"{\"current_file\": 7"), token),
    };
    let request = http::Request::post(format!("{base}{path}"))
        .header("authorization", format!("Bearer {bearer}"))
        .header("x-gitlab-authentication-type", "oidc")
        .header("content-type", "application/json")
        .body(Full::new(body));
    let Ok(request) = request else { return false };
    let answered = tokio::time::timeout(Duration::from_secs(30), async {
        let response = client.request(request).await.ok()?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        if kind == Kind::HangUp {
            let first = body.frame().await;
            return Some((status, first.is_some_and(|frame| frame.is_ok())));
        }
        let bytes = body.collect().await.ok()?.to_bytes();
        Some((status, !bytes.is_empty()))
    })
    .await;
    match (kind, answered) {
        (Kind::BadToken, Ok(Some((status, _)))) => status == 401,
        (Kind::MalformedBody, Ok(Some((status, _)))) => status == 422,
        (_, Ok(Some((status, has_body)))) => status == 200 && has_body,
        _ => false,
    }
}

/// Replaces `path` with `bytes` at once (write beside it, then rename), as a deployment does.
fn replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let staging = path.with_extension("staging");
    std::fs::write(&staging, bytes)?;
    std::fs::rename(&staging, path)?;
    Ok(())
}

fn prompt_file(generation: u64) -> String {
    format!(
        "description = \"soak generation {generation}\"\nunit_primitive = \"duo_chat\"\n[[messages]]\n\
         role = \"user\"\ncontent = \"Say {generation}.\"\n"
    )
}

/// The sum of `aigw_plugin_reloads_total` by outcome, from `/metrics`.
async fn reloads(client: &BenchClient, base: &str) -> Value {
    let text = load::get_text(client, &format!("{base}/metrics")).await.unwrap_or_default();
    let mut outcomes = serde_json::Map::new();
    for line in text.lines().filter(|line| line.starts_with("aigw_plugin_reloads_total{")) {
        let outcome = line.split("outcome=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("?");
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        outcomes.insert(outcome.to_string(), json!(value));
    }
    Value::Object(outcomes)
}

/// Run the soak and write `output`.
pub async fn run(plan: Plan, output: PathBuf) -> anyhow::Result<()> {
    let model = Arc::new(MockModelServer::start().await?);
    model.set_reply(Reply { chunks: 4, chunk_delay: Duration::from_millis(2), ..Reply::default() });
    let state = tempfile::tempdir()?;
    let plugins = state.path().join("plugins");
    let prompts = state.path().join("prompts");
    std::fs::create_dir_all(&plugins)?;
    std::fs::create_dir_all(prompts.join("soak/check"))?;
    for entry in std::fs::read_dir("target/plugins")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(&path, plugins.join(path.file_name().unwrap_or_default()))?;
        }
    }
    let swapped = plugins.join("openai-compatible.wasm");
    let original = std::fs::read(&swapped)?;
    std::fs::write(prompts.join("soak/check/1.0.0.toml"), prompt_file(0))?;
    let settings =
        [("AIGW_PLUGINS__DIR", plugins.display().to_string()), ("AIGW_PROMPTS__DIR", prompts.display().to_string())];
    let (aigw, addr, token) = start_aigw_with(state.path(), &settings).await?;
    let base = format!("http://{addr}");
    let client = load::client(plan.concurrency * 2);
    let started = Instant::now();
    let deadline = started + plan.duration;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for caller in 0..plan.concurrency {
        let (client, base, token, tally, stop, model) =
            (client.clone(), base.clone(), token.clone(), tally.clone(), stop.clone(), model.clone());
        callers.push(tokio::spawn(async move {
            let mut turn = caller;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let kind = MIX[turn % MIX.len()];
                tally.record(kind, one(&client, &base, &token, &model, kind).await);
                turn += 1;
            }
        }));
    }
    let mut samples = vec![sample(aigw.pid, started)];
    let mut generation = 0;
    let mut next_swap = started + Duration::from_secs(60);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now()))).await;
        samples.push(sample(aigw.pid, started));
        // The mock keeps every request it is sent, for tests to read; at soak rates that is
        // gigabytes within minutes, so drop them.
        model.clear_requests();
        if Instant::now() >= next_swap {
            generation += 1;
            replace(&swapped, &aigw_tests::with_new_digest(&original, &format!("aigw-soak-{generation}")))?;
            replace(&prompts.join("soak/check/1.0.0.toml"), prompt_file(generation).as_bytes())?;
            next_swap += Duration::from_secs(60);
        }
        let last = samples.last().copied().unwrap_or(samples[0]);
        println!(
            "  {:>5} s  RSS {:6.1} MiB  descriptors {:4}  threads {:3}",
            last.seconds, last.rss_mib, last.descriptors, last.threads
        );
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    samples.push(sample(aigw.pid, started));
    let reload_outcomes = reloads(&client, &base).await;

    let kinds = ["completion", "completion stream", "chat", "hang-up", "bad token", "malformed body"];
    let mut per_kind = serde_json::Map::new();
    let (mut good_sent, mut good_failed) = (0, 0);
    let seconds = started.elapsed().as_secs();
    println!(
        "soak: {seconds} s of mixed traffic, {} callers, {generation} plugin swaps and prompt reloads",
        plan.concurrency
    );
    for (index, name) in kinds.iter().enumerate() {
        let sent = tally.sent[index].load(Ordering::Relaxed);
        let wrong = tally.wrong[index].load(Ordering::Relaxed);
        println!("  {name:<18} {sent:>8} sent, {wrong} answered wrongly");
        per_kind.insert((*name).to_string(), json!({"sent": sent, "wrong": wrong}));
        if matches!(index, 0..=2) {
            good_sent += sent;
            good_failed += wrong;
        }
    }
    let settled: Vec<&Sample> = samples.iter().filter(|s| s.seconds >= 60).collect();
    let range = |f: fn(&Sample) -> f64| {
        let values: Vec<f64> = settled.iter().map(|s| f(s)).collect();
        (values.iter().copied().fold(f64::INFINITY, f64::min), values.iter().copied().fold(0.0, f64::max))
    };
    let rss = range(|s| s.rss_mib);
    let descriptors = range(|s| s.descriptors as f64);
    let threads = range(|s| s.threads as f64);
    println!("  good requests: {good_sent} sent, {good_failed} failed");
    println!(
        "  after the first minute: RSS {:.1}–{:.1} MiB, descriptors {}–{}, threads {}–{}; at the end {:?}",
        rss.0,
        rss.1,
        descriptors.0,
        descriptors.1,
        threads.0,
        threads.1,
        samples.last()
    );
    println!("  plugin reloads by outcome: {reload_outcomes}");
    let report = json!({
        "seconds": started.elapsed().as_secs(), "concurrency": plan.concurrency, "swaps": generation,
        "requests": per_kind, "good_sent": good_sent, "good_failed": good_failed,
        "reloads": reload_outcomes, "samples": samples,
    });
    crate::write_results(&output, &report)?;
    anyhow::ensure!(good_failed == 0, "{good_failed} good requests failed");
    Ok(())
}
