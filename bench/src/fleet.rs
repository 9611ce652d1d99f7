//! `aigw-bench fleet`: three simulated model servers behind aigw's pool, developers typing in
//! files, chat turns and agent calls; the same arrivals under round-robin (what a Kubernetes
//! Service gives), fewest-outstanding and aigw's picker, then aigw's picker with one server
//! killed mid-run.

use crate::gateway::start_aigw_with;
use crate::load::{self, BenchClient};
use aigw_mock::simulated::{CLASSES, SimParams, SimStats, SimulatedServer};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The workload, in real (unscaled) units.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Simulated seconds per run (each run takes this × the time scale).
    pub seconds: f64,
    /// Every duration of the servers and the workload is multiplied by this.
    pub time_scale: f64,
    /// Developers typing at once.
    pub developers: usize,
    /// Files each developer works in.
    pub files_per_developer: usize,
    /// Chat turns per second (Poisson).
    pub chats_per_second: f64,
    /// Agent calls per second (Poisson).
    pub agents_per_second: f64,
}

/// The four runs.
const RUNS: [(&str, &str, bool); 4] = [
    ("round-robin", "round-robin", false),
    ("fewest-outstanding", "least-outstanding", false),
    ("aigw", "aware", false),
    ("aigw, one server killed", "aware", true),
];

/// Bytes of a chat turn's prompt (~2,000 tokens) and an agent call's (~25,000 tokens).
const CHAT_PROMPT_BYTES: usize = 8_000;
const AGENT_PROMPT_BYTES: usize = 100_000;

/// Bytes a developer types between two completions (~10 tokens).
const TYPED_BYTES: usize = 40;

/// The longest a request may take before the run counts it failed.
const REQUEST_LIMIT: Duration = Duration::from_secs(120);

/// What happened to one request.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Answered whole: time to the first token, and to the end.
    Answered { first: Duration, total: Duration },
    /// Failed before any of its answer reached the client.
    Failed,
    /// Its answer broke off after it began (its server died while streaming).
    Broken,
}

#[derive(Debug, Default)]
struct Tally {
    by_class: [Vec<Outcome>; 3],
}

/// A small deterministic generator (xorshift64*), so that every run sees the same arrivals.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean `mean`.
    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Text that looks like code, `bytes` long.
    fn code(&mut self, bytes: usize) -> String {
        const WORDS: [&str; 12] =
            ["let ", "value", " = ", "compute(", "item", ");\n", "if ", "count", " > 0 {\n", "}\n", "return ", "    "];
        let mut text = String::with_capacity(bytes + 16);
        while text.len() < bytes {
            text.push_str(WORDS[(self.next() % WORDS.len() as u64) as usize]);
        }
        text.truncate(bytes);
        text
    }
}

/// One run's figures.
#[derive(Debug, Clone)]
struct RunResult {
    name: String,
    completion_ttft_p50_ms: f64,
    completion_ttft_p99_ms: f64,
    completion_cache_hit: f64,
    chat_ttft_p99_ms: f64,
    agent_ttft_p99_ms: f64,
    agent_latency_p99_ms: f64,
    agents_per_minute: f64,
    requests: usize,
    failed: usize,
    broken: usize,
    /// Completions placed on their file's first-choice member, of all completions.
    affinity_hits: f64,
    /// Calls aigw sent again to another member.
    failovers: f64,
}

pub async fn run(plan: Plan, output: PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(plan.time_scale > 0.0 && plan.time_scale <= 1.0, "time scale must be in (0, 1]");
    let params = SimParams { time_scale: plan.time_scale, ..SimParams::default() };
    println!(
        "fleet: 3 simulated servers (A100 40 GB, 7-8B model: {} slots, prefill {} tokens/s, decode {} ms/token, \
         {} K-token prefix cache); {} developers in {} files, {} chat turns/s, {} agent calls/s; {} simulated s \
         per run at {}x speed",
        params.slots,
        params.prefill_tokens_per_second,
        params.decode_per_token.as_millis(),
        params.cache_tokens / 1000,
        plan.developers,
        plan.developers * plan.files_per_developer,
        plan.chats_per_second,
        plan.agents_per_second,
        plan.seconds,
        1.0 / plan.time_scale
    );
    let mut results = Vec::new();
    for (name, picker, kill) in RUNS {
        let result = one_run(&plan, params, name, picker, kill).await?;
        println!(
            "  {:<24} completion TTFT p50 {:>7.0} ms p99 {:>7.0} ms, cache hit {:>5.1}%; chat TTFT p99 {:>6.0} ms; \
             agent TTFT p99 {:>6.0} ms, latency p99 {:>6.0} ms, {:>5.1}/min; {} requests, {} failed, {} broken streams; \
             affinity hits {:.0}%, {} failovers",
            result.name,
            result.completion_ttft_p50_ms,
            result.completion_ttft_p99_ms,
            result.completion_cache_hit * 100.0,
            result.chat_ttft_p99_ms,
            result.agent_ttft_p99_ms,
            result.agent_latency_p99_ms,
            result.agents_per_minute,
            result.requests,
            result.failed,
            result.broken,
            result.affinity_hits * 100.0,
            result.failovers
        );
        results.push(result);
    }
    let (round_robin, aware) = (&results[0], &results[2]);
    let ratio = round_robin.completion_ttft_p99_ms / aware.completion_ttft_p99_ms.max(f64::MIN_POSITIVE);
    println!(
        "  completion p99 TTFT: round-robin / aigw = {ratio:.1}x (target >= 10x); agent latency p99 {:.0} vs {:.0} ms \
         (target: no worse); cache hit {:.1}% vs {:.1}%; killed run: {} failed (target 0), {} broken streams",
        aware.agent_latency_p99_ms,
        round_robin.agent_latency_p99_ms,
        aware.completion_cache_hit * 100.0,
        round_robin.completion_cache_hit * 100.0,
        results[3].failed,
        results[3].broken,
    );
    let document = json!({
        "plan": {"seconds": plan.seconds, "time_scale": plan.time_scale, "developers": plan.developers,
                 "files": plan.developers * plan.files_per_developer, "chats_per_second": plan.chats_per_second,
                 "agents_per_second": plan.agents_per_second},
        "server": {"slots": params.slots, "prefill_tokens_per_second": params.prefill_tokens_per_second,
                   "decode_ms_per_token": params.decode_per_token.as_secs_f64() * 1e3, "cache_tokens": params.cache_tokens},
        "runs": results.iter().map(|r| json!({
            "name": r.name, "completion_ttft_p50_ms": r.completion_ttft_p50_ms,
            "completion_ttft_p99_ms": r.completion_ttft_p99_ms, "completion_cache_hit": r.completion_cache_hit,
            "chat_ttft_p99_ms": r.chat_ttft_p99_ms, "agent_ttft_p99_ms": r.agent_ttft_p99_ms,
            "agent_latency_p99_ms": r.agent_latency_p99_ms, "agents_per_minute": r.agents_per_minute,
            "requests": r.requests, "failed": r.failed, "broken_streams": r.broken,
            "affinity_hits": r.affinity_hits, "failovers": r.failovers,
        })).collect::<Vec<_>>(),
        "completion_p99_ratio": ratio,
    });
    crate::write_results(&output, &document)?;
    Ok(())
}

const CLIENT_KEYS: [(&str, &str); 3] = [
    ("completion", "sk-bench-completion-0123456789"),
    ("chat", "sk-bench-chat-0123456789"),
    ("agent", "sk-bench-agent-0123456789"),
];

fn models_file(servers: &[SimulatedServer], picker: &str) -> String {
    let endpoints: Vec<String> = servers.iter().map(|s| format!("{:?}", s.base_url())).collect();
    let mut text = format!(
        "gateway_urls = [\"http://aigw.bench/v1\"]\n\n[[models]]\nname = \"coder\"\n\
         identifier = \"custom_openai/sim-coder\"\nendpoints = [{}]\n\n[models.pool]\npicker = \"{picker}\"\n\
         metrics_path = \"/metrics\"\nscrape_interval_ms = 250\neject_base_ms = 60000\neject_max_ms = 60000\n\
         queue_wait_ms = {{ completion = 60000, chat = 60000, agent = 120000 }}\n",
        endpoints.join(", ")
    );
    for (class, key) in CLIENT_KEYS {
        text.push_str(&format!(
            "\n[[keys]]\nid = \"{class}\"\nsha256 = \"{}\"\nmodels = [\"*\"]\nclass = \"{class}\"\n",
            aigw::models::key_sha256_hex(key)
        ));
    }
    text
}

async fn one_run(plan: &Plan, params: SimParams, name: &str, picker: &str, kill: bool) -> anyhow::Result<RunResult> {
    let servers = vec![
        SimulatedServer::start(params).await?,
        SimulatedServer::start(params).await?,
        SimulatedServer::start(params).await?,
    ];
    let state = tempfile::tempdir()?;
    let models = state.path().join("models.toml");
    std::fs::write(&models, models_file(&servers, picker))?;
    let settings =
        [("AIGW_PLUGINS__DIR", "target/plugins".to_string()), ("AIGW_MODELS__FILE", models.display().to_string())];
    let (_aigw, addr, token) = start_aigw_with(state.path(), &settings).await?;
    let client = load::client(512);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let scale = plan.time_scale;
    let run_for = Duration::from_secs_f64(plan.seconds * scale);
    let started = Instant::now();
    let end = started + run_for;
    let mut tasks = tokio::task::JoinSet::new();
    for developer in 0..plan.developers {
        let (client, tally, addr, token) = (client.clone(), Arc::clone(&tally), addr.clone(), token.clone());
        let files = plan.files_per_developer;
        tasks.spawn(async move {
            developer_types(&client, &addr, &token, developer, files, scale, end, &tally).await;
        });
    }
    for (class, rate, bytes) in
        [(1usize, plan.chats_per_second, CHAT_PROMPT_BYTES), (2, plan.agents_per_second, AGENT_PROMPT_BYTES)]
    {
        let (client, tally, addr) = (client.clone(), Arc::clone(&tally), addr.clone());
        tasks.spawn(async move {
            arrivals(&client, &addr, class, rate, bytes, scale, end, &tally).await;
        });
    }
    if kill {
        // Mid-run, the third server dies as a crashed process does.
        tokio::time::sleep(run_for.mul_f64(0.4)).await;
        servers[2].kill();
    }
    while tasks.join_next().await.is_some() {}
    let elapsed_real = started.elapsed().as_secs_f64() / scale;
    let pool_metrics = load::get_text(&client, &format!("http://{addr}/metrics")).await.unwrap_or_default();
    let sum = |name: &str| -> f64 {
        pool_metrics
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (hits, failovers) = (sum("aigw_pool_affinity_hits_total{"), sum("aigw_pool_failovers_total{"));
    let stats: Vec<SimStats> = servers.iter().map(SimulatedServer::stats).collect();
    drop(servers);
    let tally =
        Arc::try_unwrap(tally).map_err(|_| anyhow::anyhow!("tasks outlived the run"))?.into_inner().unwrap_or_default();
    let mut result = summarize(name, &tally, &stats, scale, elapsed_real);
    result.affinity_hits = hits / tally.by_class[0].len().max(1) as f64;
    result.failovers = failovers;
    Ok(result)
}

fn summarize(name: &str, tally: &Tally, stats: &[SimStats], scale: f64, elapsed_real: f64) -> RunResult {
    // Durations are reported in simulated (real-world) time.
    let unscale = |d: Duration| d.as_secs_f64() * 1e3 / scale;
    let answered = |class: usize, first: bool| -> Vec<Duration> {
        tally.by_class[class]
            .iter()
            .filter_map(|o| match o {
                Outcome::Answered { first: f, total } => Some(if first { *f } else { *total }),
                _ => None,
            })
            .collect()
    };
    let p = |samples: Vec<Duration>, q: f64| -> f64 {
        let mut samples = samples;
        samples.sort();
        if samples.is_empty() {
            return f64::NAN;
        }
        unscale(samples[((samples.len() as f64 - 1.0) * q).round() as usize])
    };
    let count = |wanted: fn(&Outcome) -> bool| tally.by_class.iter().flatten().filter(|o| wanted(o)).count();
    let (cached, prompt): (u64, u64) = stats
        .iter()
        .map(|s| (s.classes[0].cached_tokens, s.classes[0].prompt_tokens))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let agents_done = answered(2, false).len();
    RunResult {
        name: name.to_string(),
        completion_ttft_p50_ms: p(answered(0, true), 0.50),
        completion_ttft_p99_ms: p(answered(0, true), 0.99),
        completion_cache_hit: cached as f64 / prompt.max(1) as f64,
        chat_ttft_p99_ms: p(answered(1, true), 0.99),
        agent_ttft_p99_ms: p(answered(2, true), 0.99),
        agent_latency_p99_ms: p(answered(2, false), 0.99),
        agents_per_minute: agents_done as f64 * 60.0 / elapsed_real,
        requests: tally.by_class.iter().map(Vec::len).sum(),
        failed: count(|o| matches!(o, Outcome::Failed)),
        broken: count(|o| matches!(o, Outcome::Broken)),
        affinity_hits: 0.0,
        failovers: 0.0,
    }
}

/// A developer: picks one of their files, types in it (a completion after each few words,
/// waiting for the suggestion, then a pause), moves to another file, until `end`.
#[allow(clippy::too_many_arguments)]
async fn developer_types(
    client: &BenchClient,
    addr: &str,
    token: &str,
    developer: usize,
    files: usize,
    scale: f64,
    end: Instant,
    tally: &Mutex<Tally>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (developer as u64 + 1).wrapping_mul(0x1000_0001));
    let contents: Vec<String> = (0..files)
        .map(|file| {
            let mut file_rng = Rng((developer * 1000 + file + 7) as u64 * 0x5851_f42d_4c95_7f2d);
            let length = 4_000 + (file_rng.next() % 4_000) as usize;
            format!("#sim:completion {developer}/{file}\n{}", file_rng.code(length))
        })
        .collect();
    let mut cursors: Vec<usize> = contents.iter().map(|c| c.len() / 2).collect();
    let url = format!("http://{addr}/v2/code/completions");
    while Instant::now() < end {
        let file = (rng.next() % files as u64) as usize;
        let keystrokes = 8 + rng.next() % 9;
        for _ in 0..keystrokes {
            if Instant::now() >= end {
                return;
            }
            let content = &contents[file];
            cursors[file] = (cursors[file] + TYPED_BYTES).min(content.len());
            if cursors[file] >= content.len() {
                cursors[file] = content.len() / 2;
            }
            let body = json!({
                "current_file": {"file_name": format!("src/file_{file}.rs"), "language_identifier": "rust",
                                 "content_above_cursor": &content[..cursors[file]], "content_below_cursor": ""},
                "model_provider": "litellm", "model_name": "codestral",
                "model_endpoint": "http://aigw.bench/v1", "model_identifier": "custom_openai/coder",
                "model_api_key": CLIENT_KEYS[0].1, "stream": true,
            });
            let headers = [
                ("authorization", format!("Bearer {token}")),
                ("x-gitlab-authentication-type", "oidc".to_string()),
                ("x-gitlab-global-user-id", format!("{developer}")),
                ("content-type", "application/json".to_string()),
            ];
            let outcome = request(client, &url, &headers, body.to_string().into()).await;
            tally.lock().unwrap_or_else(|p| p.into_inner()).by_class[0].push(outcome);
            let think = 0.5 + 2.0 * rng.unit();
            tokio::time::sleep(Duration::from_secs_f64(think * scale)).await;
        }
    }
}

/// Poisson arrivals of chat turns (`class` 1) or agent calls (2) through the model API.
#[allow(clippy::too_many_arguments)]
async fn arrivals(
    client: &BenchClient,
    addr: &str,
    class: usize,
    per_second: f64,
    prompt_bytes: usize,
    scale: f64,
    end: Instant,
    tally: &Arc<Mutex<Tally>>,
) {
    let mut rng = Rng(0xdead_beef_cafe_f00d ^ class as u64);
    let url = format!("http://{addr}/v1/chat/completions");
    let mut calls = tokio::task::JoinSet::new();
    let mut next = Instant::now();
    loop {
        next += Duration::from_secs_f64(rng.exponential(1.0 / per_second) * scale);
        if next >= end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        let prompt = format!("#sim:{} {}\n{}", CLASSES[class], rng.next(), rng.code(prompt_bytes));
        let body = json!({"model": "coder", "stream": true, "max_tokens": 512,
                          "messages": [{"role": "system", "content": "You are a helpful agent."},
                                       {"role": "user", "content": prompt}]});
        let headers = [
            ("authorization", format!("Bearer {}", CLIENT_KEYS[class].1)),
            ("content-type", "application/json".to_string()),
        ];
        let (client, url, tally) = (client.clone(), url.clone(), Arc::clone(tally));
        calls.spawn(async move {
            let outcome = request(&client, &url, &headers, body.to_string().into()).await;
            tally.lock().unwrap_or_else(|p| p.into_inner()).by_class[class].push(outcome);
        });
    }
    while calls.join_next().await.is_some() {}
}

/// Send one request and read its answer: the time to its first token (the first body bytes)
/// and to its end, or how it failed. A whole answer ends with the server's `<END>`.
async fn request(client: &BenchClient, url: &str, headers: &[(&str, String)], body: Bytes) -> Outcome {
    let mut builder = http::Request::post(url);
    for (name, value) in headers {
        builder = builder.header(*name, value);
    }
    let Ok(request) = builder.body(Full::new(body)) else { return Outcome::Failed };
    let started = Instant::now();
    let reading = async {
        let response = client.request(request).await.map_err(|_| false)?;
        if !response.status().is_success() {
            return Err(false);
        }
        let mut body = response.into_body();
        let (mut first, mut text) = (None, Vec::new());
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return Err(first.is_some()) };
            if let Some(data) = frame.data_ref().filter(|data| !data.is_empty()) {
                first.get_or_insert_with(|| started.elapsed());
                text.extend_from_slice(data);
            }
        }
        let whole = String::from_utf8_lossy(&text).contains("<END>");
        match first {
            Some(first) if whole => Ok(Outcome::Answered { first, total: started.elapsed() }),
            Some(_) => Err(true),
            None => Err(false),
        }
    };
    match tokio::time::timeout(REQUEST_LIMIT, reading).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(true)) => Outcome::Broken,
        Ok(Err(false)) | Err(_) => Outcome::Failed,
    }
}
