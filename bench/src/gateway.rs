//! The end-to-end benchmark: the same completion sent directly to the mock model server, through
//! the bare proxy, and through aigw (each a separate process whose CPU and memory are read from
//! /proc), at concurrency 1 and 64, whole and streamed; then memory with many open streams. The
//! ratios and differences are the result; the budget is checked and printed, never asserted.

use crate::breakdown::Histograms;
use crate::load::{self, Summary, Target, Timing, summarize};
use crate::procfs;
use aigw_mock::{MockModelServer, Reply};
use bytes::Bytes;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How much to run; everything is bounded in count and time.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Requests per target at concurrency 1.
    pub iterations: usize,
    /// Streams held open at once for the memory measurement.
    pub open_streams: usize,
}

/// A child process that is killed when dropped.
pub(crate) struct Process {
    child: Child,
    pub(crate) pid: u32,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Start `command`, wait for a stdout line containing `marker`, and return the process and the
/// text following the marker on that line.
async fn spawn_until(mut command: Command, marker: &str) -> anyhow::Result<(Process, String)> {
    command.stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("the child exited at once"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(at) = line.find(marker) {
                return anyhow::Ok(line[at + marker.len()..].to_string());
            }
        }
        anyhow::bail!("the child ended without printing {marker:?}")
    })
    .await??;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Process { child, pid }, found))
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().map(|dir| dir.join(name)).ok_or_else(|| anyhow::anyhow!("no binary directory"))?;
    anyhow::ensure!(path.is_file(), "{} is missing: run `make build`", path.display());
    Ok(path)
}

async fn start_aigw(state: &Path) -> anyhow::Result<(Process, String, String)> {
    start_aigw_with(state, &[("AIGW_PLUGINS__DIR", "target/plugins".into())]).await
}

/// Start `aigw serve --dev` with `settings` added to its environment; returns the process, its
/// address and a development token.
pub(crate) async fn start_aigw_with(
    state: &Path,
    settings: &[(&str, String)],
) -> anyhow::Result<(Process, String, String)> {
    let key_file = state.join("dev-key.pem");
    let key = aigw::auth::SigningKey::load_or_create(&key_file)?;
    let token = key.sign(&aigw::auth::keys::DevClaims::new(aigw::DEV_ISSUER, Duration::from_secs(3600)))?;
    let mut command = Command::new(sibling_binary("aigw")?);
    command
        .args(["serve", "--dev"])
        .env("AIGW_FASTAPI__API_PORT", "0")
        .env("AIGW_DEV__KEY_FILE", &key_file)
        .env("AIGW_LOGGING__LEVEL", "warn")
        .envs(settings.iter().map(|(name, value)| (*name, value.as_str())));
    let (process, rest) = spawn_until(command, "curl -s http://").await?;
    let addr = rest.split('/').next().unwrap_or_default().to_string();
    Ok((process, addr, token))
}

async fn start_proxy(upstream: &str) -> anyhow::Result<(Process, String)> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["proxy", "--listen", "127.0.0.1:0", "--upstream", upstream]);
    spawn_until(command, "listening on ").await
}

/// About 7.5 KB of code before the cursor, as in a real completion request.
pub(crate) fn gitlab_body(model: &MockModelServer, stream: bool) -> Bytes {
    completion_body(model, "codestral", &crate::workload::prefix(), stream)
}

/// A completion request as GitLab sends it, for `family`, with `above` before the cursor.
fn completion_body(model: &MockModelServer, family: &str, above: &str, stream: bool) -> Bytes {
    Bytes::from(
        json!({"current_file": {"file_name": "app.py", "content_above_cursor": above, "content_below_cursor": "\n"},
               "model_provider": "litellm", "model_name": family, "model_endpoint": model.base_url(),
               "model_identifier": format!("custom_openai/{family}"), "stream": stream})
        .to_string(),
    )
}

/// A file as long as GitLab sends (96,000 characters above the cursor), about 25,000 tokens.
const LONG_FILE_BYTES: usize = 96_000;

/// aigw's CPU per completion of a long file, concurrency 1, `count` requests each: for a family
/// whose window takes it whole (codestral, 128,000 tokens: only its length is looked at), and for
/// one it must be cut for (codellama, 16,000 tokens: counted and cut in tokens).
async fn long_file_cost(model: &MockModelServer, aigw: &Leg, count: usize) -> anyhow::Result<(f64, f64)> {
    let above = crate::workload::code_of_length(LONG_FILE_BYTES);
    let mut cost = Vec::new();
    for family in ["codestral", "codellama"] {
        let body = completion_body(model, family, &above, false);
        let before = Counters::read(aigw.pid);
        let (latencies, _) = load::concurrent(&aigw.target, &body, count, 1, Duration::from_secs(60)).await?;
        cost.push(micros(Counters::read(aigw.pid).since(before).cpu) / latencies.len().max(1) as f64);
    }
    Ok((cost[0], cost[1]))
}

/// The request aigw sends upstream for the body above, for the direct and proxied calls.
fn openai_body(stream: bool) -> Bytes {
    let prompt = format!("<s>[SUFFIX]\n[PREFIX]{}", crate::workload::prefix());
    Bytes::from(
        json!({"model": "codestral-22b", "messages": [{"role": "user", "content": prompt}],
               "max_tokens": 64, "temperature": 0.32, "stream": stream})
        .to_string(),
    )
}

/// One measured target.
struct Leg {
    name: &'static str,
    target: Target,
    body: Bytes,
    stream_body: Bytes,
    /// The process whose CPU counts (none for the direct call).
    pid: Option<u32>,
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// One leg's sequential run: timings, and its process's CPU time and context switches per request.
struct LegRun {
    timings: Vec<Timing>,
    cpu_us: f64,
    switches: f64,
    /// Share of that CPU time spent in the kernel, from clock ticks; `None` when too few ticks
    /// passed for the share to mean anything (a short run).
    kernel_share: Option<f64>,
}

/// An idle gateway is measured this long after the last request (its epoch ticker and workers go
/// quiet after a second without work), over this window.
const IDLE_SETTLE: Duration = Duration::from_millis(1500);
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// Clock ticks are 10 ms: below 0.15 s of CPU time the user/kernel split is too coarse to report
/// (at 15 ticks, one tick is 7 % of it).
const MIN_TICKS_FOR_SHARE: u64 = 15;

/// A process's counters at one moment: CPU time, context switches, user and kernel ticks.
#[derive(Default, Clone, Copy)]
struct Counters {
    cpu: Duration,
    switches: u64,
    ticks: (u64, u64),
}

impl Counters {
    fn read(pid: Option<u32>) -> Counters {
        let Some(pid) = pid else { return Counters::default() };
        Counters {
            cpu: procfs::cpu(pid),
            switches: procfs::context_switches(pid),
            ticks: procfs::user_and_kernel_ticks(pid),
        }
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            cpu: self.cpu.saturating_sub(before.cpu),
            switches: self.switches.saturating_sub(before.switches),
            ticks: (self.ticks.0.saturating_sub(before.ticks.0), self.ticks.1.saturating_sub(before.ticks.1)),
        }
    }

    fn add(&mut self, other: Counters) {
        self.cpu += other.cpu;
        self.switches += other.switches;
        self.ticks = (self.ticks.0 + other.ticks.0, self.ticks.1 + other.ticks.1);
    }
}

/// Sequential rounds over all legs, interleaved so that drift in the machine hits each alike.
async fn interleaved(legs: &[Leg], stream: bool, iterations: usize) -> anyhow::Result<Vec<LegRun>> {
    let rounds = 10;
    let per_round = (iterations / rounds).max(1);
    let mut results: Vec<(Vec<Timing>, Counters)> = legs.iter().map(|_| (Vec::new(), Counters::default())).collect();
    for round in 0..=rounds {
        for (leg, result) in legs.iter().zip(results.iter_mut()) {
            let body = if stream { &leg.stream_body } else { &leg.body };
            let before = Counters::read(leg.pid);
            let timings = load::sequential(&leg.target, body, per_round).await?;
            let spent = Counters::read(leg.pid).since(before);
            // Round 0 warms connections, caches and allocators.
            if round > 0 {
                result.0.extend(timings);
                result.1.add(spent);
            }
        }
    }
    let counted = (per_round * rounds) as f64;
    Ok(results
        .into_iter()
        .map(|(timings, spent)| LegRun {
            timings,
            cpu_us: micros(spent.cpu) / counted,
            switches: spent.switches as f64 / counted,
            kernel_share: {
                let ticks = spent.ticks.0 + spent.ticks.1;
                (ticks >= MIN_TICKS_FOR_SHARE).then(|| spent.ticks.1 as f64 / ticks as f64)
            },
        })
        .collect())
}

fn latency(timings: &[Timing]) -> Summary {
    summarize(timings.iter().map(|t| t.total).collect())
}

fn first_byte(timings: &[Timing]) -> Summary {
    summarize(timings.iter().map(|t| t.first_byte).collect())
}

/// Time per stream piece after the first, microseconds (mean).
fn per_piece(timings: &[Timing]) -> f64 {
    let pieces: usize = timings.iter().map(|t| t.pieces.saturating_sub(1)).sum();
    let after_first: Duration = timings.iter().map(|t| t.total.saturating_sub(t.first_byte)).sum();
    micros(after_first) / pieces.max(1) as f64
}

/// Hold `count` streams open through aigw and return the resident memory added per stream, and
/// whether they all closed again upstream once the callers hung up.
async fn open_streams_memory(model: &MockModelServer, aigw: &Leg, count: usize) -> anyhow::Result<(u64, u64, bool)> {
    let pid = aigw.pid.ok_or_else(|| anyhow::anyhow!("aigw has no pid"))?;
    model.set_reply(Reply { chunks: 2, chunk_delay: Duration::from_secs(20), ..Reply::default() });
    let client = load::client(count);
    let before = procfs::rss(pid);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (client, target, body) = (client.clone(), aigw.target.clone(), aigw.stream_body.clone());
        callers.spawn(async move { load::post(&client, &target, &body).await });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while model.open_streams() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(model.open_streams() >= count, "only {} of {count} streams opened", model.open_streams());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = procfs::rss(pid);
    callers.abort_all();
    let deadline = Instant::now() + Duration::from_secs(10);
    while model.open_streams() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = model.open_streams() == 0;
    model.set_reply(Reply::default());
    Ok((held.saturating_sub(before) / count.max(1) as u64, held, closed))
}

/// aigw's own account of a completion at concurrency 1, from its histograms: wall-time means per
/// request, microseconds. On an otherwise idle worker the gateway's share is CPU time on the
/// request's path (nothing in it waits); the model server's share includes both TCP legs' sends.
#[derive(Debug, serde::Serialize)]
struct Inside {
    to_response_head: Option<f64>,
    gateway_own: Option<f64>,
    model_server: Option<f64>,
    build_request: Option<f64>,
    parse_response: Option<f64>,
}

impl Inside {
    fn between(before: &Histograms, after: &Histograms) -> Inside {
        let endpoint = "endpoint=\"/v2/code/completions\"";
        let mean = |metric: &str, labels: &[&str]| after.mean_since(before, metric, labels);
        let to_response_head = mean("aigw_request_duration_seconds", &[endpoint]);
        let gateway_own = mean("aigw_overhead_seconds", &[endpoint]);
        Inside {
            to_response_head,
            gateway_own,
            model_server: to_response_head.zip(gateway_own).map(|(total, own)| total - own),
            build_request: mean("aigw_plugin_call_duration_seconds", &["function=\"build_request\""]),
            parse_response: mean("aigw_plugin_call_duration_seconds", &["function=\"parse_response\""]),
        }
    }

    fn describe(&self) -> String {
        let us = |value: Option<f64>| value.map_or("n/a".to_string(), |v| format!("{v:.1} µs"));
        format!(
            "  aigw's own histograms, wall time per request: {} to the response head = model server {} + gateway {}; \
             of the gateway's, plugin calls: build_request {} (fresh store included), parse_response {}",
            us(self.to_response_head),
            us(self.model_server),
            us(self.gateway_own),
            us(self.build_request),
            us(self.parse_response)
        )
    }
}

/// One budget line: what was measured against what is allowed.
fn budget(name: &str, measured: f64, limit: f64, unit: &str) -> Value {
    let status = if measured <= limit { "within" } else { "OVER" };
    println!("  {status:<7} {name:<58} {measured:>10.1} {unit} (budget {limit:.1})");
    json!({"name": name, "measured": measured, "limit": limit, "unit": unit, "within": measured <= limit})
}

/// Run the whole benchmark and write `output`.
pub async fn run(plan: Plan, output: PathBuf) -> anyhow::Result<()> {
    let model = MockModelServer::start().await?;
    let state = tempfile::tempdir()?;
    let (aigw_process, aigw_addr, token) = start_aigw(state.path()).await?;
    let (proxy_process, proxy_addr) = start_proxy(&format!("http://{}", model.addr())).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = procfs::rss(aigw_process.pid);
    let json_header = ("content-type", "application/json".to_string());
    let legs = [
        Leg {
            name: "direct",
            target: Target {
                url: format!("{}/chat/completions", model.base_url()),
                headers: vec![json_header.clone()],
            },
            body: openai_body(false),
            stream_body: openai_body(true),
            pid: None,
        },
        Leg {
            name: "bare proxy",
            target: Target {
                url: format!("http://{proxy_addr}/v1/chat/completions"),
                headers: vec![json_header.clone()],
            },
            body: openai_body(false),
            stream_body: openai_body(true),
            pid: Some(proxy_process.pid),
        },
        Leg {
            name: "aigw",
            target: Target {
                url: format!("http://{aigw_addr}/v2/code/completions"),
                headers: vec![
                    ("authorization", format!("Bearer {token}")),
                    ("x-gitlab-authentication-type", "oidc".to_string()),
                    json_header,
                ],
            },
            body: gitlab_body(&model, false),
            stream_body: gitlab_body(&model, true),
            pid: Some(aigw_process.pid),
        },
    ];
    let client = load::client(128);
    let iterations = plan.iterations.clamp(50, 200_000);

    // Concurrency 1, whole answers, with aigw's own account of where each request's time went.
    let metrics_url = format!("http://{aigw_addr}/metrics");
    let before = Histograms::parse(&load::get_text(&client, &metrics_url).await?);
    let whole = interleaved(&legs, false, iterations).await?;
    let after = Histograms::parse(&load::get_text(&client, &metrics_url).await?);
    let inside = Inside::between(&before, &after);
    // Concurrency 64, whole answers: throughput, p99, CPU per request.
    let mut busy = Vec::new();
    for leg in &legs {
        let before = Counters::read(leg.pid);
        let total = (iterations * 4).clamp(256, 100_000);
        let (latencies, wall) = load::concurrent(&leg.target, &leg.body, total, 64, Duration::from_secs(30)).await?;
        let count = latencies.len() as f64;
        let cpu_per_request = micros(Counters::read(leg.pid).since(before).cpu) / count;
        busy.push((summarize(latencies), count / wall.as_secs_f64(), cpu_per_request));
    }
    // Streams: 1 piece and 32 pieces, for time to first token and the cost of each further piece.
    model.set_reply(Reply { text: "x".repeat(64), chunks: 1, ..Reply::default() });
    let one_piece = interleaved(&legs, true, iterations / 2).await?;
    model.set_reply(Reply { text: "x".repeat(64), chunks: 32, ..Reply::default() });
    let many_pieces = interleaved(&legs, true, iterations / 2).await?;
    model.set_reply(Reply::default());
    // Memory with many open streams, twice: the first burst also leaves plugin pool slots warm
    // (their pages stay resident for the next store, bounded by the most stores ever alive at
    // once); the second, on a warm pool, is what each further open stream costs.
    let (per_stream, held_rss, all_closed) = open_streams_memory(&model, &legs[2], plan.open_streams).await?;
    let (per_stream_warm, _, closed_again) = open_streams_memory(&model, &legs[2], plan.open_streams).await?;
    let all_closed = all_closed && closed_again;
    let (proxy_per_stream, _, _) = open_streams_memory(&model, &legs[1], plan.open_streams).await?;
    let (long_whole_cpu, long_cut_cpu) = long_file_cost(&model, &legs[2], (iterations / 4).max(50)).await?;
    let peak_rss = procfs::peak_rss(aigw_process.pid);
    // Idle, once the load is over: what a gateway nobody calls costs in CPU.
    tokio::time::sleep(IDLE_SETTLE).await;
    let idle_cpu = Counters::read(Some(aigw_process.pid));
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_ms_per_s =
        micros(Counters::read(Some(aigw_process.pid)).since(idle_cpu).cpu) / 1e3 / IDLE_WINDOW.as_secs_f64();

    println!("completion through aigw and through a bare proxy vs direct, same mock model server, same run");
    println!("  concurrency 1, keep-alive, {iterations} requests each; CPU is the process's own (/proc schedstat)");
    println!(
        "  {:<12} {:>9} {:>9} {:>9} {:>12} {:>13}",
        "", "p50 µs", "p99 µs", "mean µs", "CPU µs/req", "switches/req"
    );
    let mut report = serde_json::Map::new();
    for (leg, run) in legs.iter().zip(&whole) {
        let s = latency(&run.timings);
        println!(
            "  {:<12} {:>9.1} {:>9.1} {:>9.1} {:>12.1} {:>13.1}",
            leg.name, s.p50, s.p99, s.mean, run.cpu_us, run.switches
        );
    }
    let added =
        |i: usize, pick: fn(&Summary) -> f64| pick(&latency(&whole[i].timings)) - pick(&latency(&whole[0].timings));
    println!(
        "  added p50/p99: bare proxy {:.1}/{:.1} µs, aigw {:.1}/{:.1} µs",
        added(1, |s| s.p50),
        added(1, |s| s.p99),
        added(2, |s| s.p50),
        added(2, |s| s.p99)
    );
    let (proxy_run, aigw_run) = (&whole[1], &whole[2]);
    let split = |run: &LegRun| run.kernel_share.map(|share| (run.cpu_us * (1.0 - share), run.cpu_us * share));
    let (proxy_split, aigw_split) = (split(proxy_run), split(aigw_run));
    let show = |split: Option<(f64, f64)>| {
        split.map_or("n/a (too few clock ticks)".to_string(), |(user, kernel)| {
            format!("user space {user:.1} µs, kernel {kernel:.1} µs")
        })
    };
    println!("  where the CPU per request goes: aigw {}; bare proxy {}", show(aigw_split), show(proxy_split));
    println!("{}", inside.describe());
    println!("  concurrency 64:");
    for (leg, (s, throughput, cpu)) in legs.iter().zip(&busy) {
        println!("  {:<12} {:>9.0} req/s  p99 {:>9.1} µs  CPU {:>7.1} µs/req", leg.name, throughput, s.p99, cpu);
    }
    println!("  streams (64 characters in 1 and in 32 pieces):");
    let ttft_added = |i: usize| first_byte(&one_piece[i].timings).p99 - first_byte(&one_piece[0].timings).p99;
    let piece_added = |i: usize| per_piece(&many_pieces[i].timings) - per_piece(&many_pieces[0].timings);
    let cpu_per_piece = |i: usize| (many_pieces[i].cpu_us - one_piece[i].cpu_us) / 31.0;
    for (i, leg) in legs.iter().enumerate() {
        let ttft = first_byte(&one_piece[i].timings);
        println!(
            "  {:<12} first token p50 {:>8.1} p99 {:>8.1} µs; per further piece {:>6.1} µs wall, {:>5.1} µs CPU",
            leg.name,
            ttft.p50,
            ttft.p99,
            per_piece(&many_pieces[i].timings),
            cpu_per_piece(i)
        );
    }
    println!(
        "  a 96,000-character file: aigw CPU {long_whole_cpu:.1} µs per completion when the window takes it whole \
         (codestral), {long_cut_cpu:.1} µs when it is cut to 16,000 tokens (codellama)"
    );
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "  aigw idle CPU after the load: {idle_ms_per_s:.2} ms per second\n  aigw memory: idle {:.1} MiB, {} open streams {:.1} MiB ({:.1} KiB each, first burst; {:.1} KiB each on a warm pool; bare proxy {:.1} KiB each), peak {:.1} MiB; streams closed upstream after hang-up: {all_closed}",
        mib(idle_rss),
        plan.open_streams,
        mib(held_rss),
        per_stream as f64 / 1024.0,
        per_stream_warm as f64 / 1024.0,
        proxy_per_stream as f64 / 1024.0,
        mib(peak_rss)
    );

    println!("  budget (issue 5):");
    let (proxy_cpu, aigw_cpu) = (whole[1].cpu_us, whole[2].cpu_us);
    let budgets = vec![
        budget("aigw CPU per completion request", aigw_cpu, 60.0, "µs"),
        budget("aigw CPU per request / bare proxy's", aigw_cpu / proxy_cpu, 2.0, "x"),
        budget(
            "added p99, concurrency 1 (limit: bare proxy's + 50 µs)",
            added(2, |s| s.p99),
            added(1, |s| s.p99) + 50.0,
            "µs",
        ),
        budget(
            "added time to first token p99 (limit: bare proxy's + 100 µs)",
            ttft_added(2),
            ttft_added(1) + 100.0,
            "µs",
        ),
        budget("aigw CPU per further stream piece", cpu_per_piece(2), 10.0, "µs"),
        // The issue says 40 MB: 40 000 000 bytes, 38.1 MiB.
        budget("aigw idle RSS, default plugins loaded", mib(idle_rss), mib(40_000_000), "MiB"),
        // 64 KB: 64 000 bytes, 62.5 KiB.
        budget("aigw RSS per open stream, first burst", per_stream as f64 / 1024.0, 64_000.0 / 1024.0, "KiB"),
        budget("aigw RSS per open stream, warm plugin pool", per_stream_warm as f64 / 1024.0, 64_000.0 / 1024.0, "KiB"),
    ];

    let leg_json = |i: usize| {
        let run = &whole[i];
        let (busy_summary, throughput, busy_cpu) = busy[i];
        json!({
            "c1": {"latency_us": latency(&run.timings), "cpu_us_per_request": run.cpu_us,
                   "context_switches_per_request": run.switches},
            "c64": {"latency_us": busy_summary, "requests_per_second": throughput, "cpu_us_per_request": busy_cpu},
            "stream": {"first_token_us": first_byte(&one_piece[i].timings), "per_piece_wall_us": per_piece(&many_pieces[i].timings),
                       "cpu_us_per_piece": cpu_per_piece(i)},
        })
    };
    for (i, leg) in legs.iter().enumerate() {
        report.insert(leg.name.replace(' ', "_"), leg_json(i));
    }
    let results = json!({
        "benchmark": "gateway",
        "requests_c1": iterations,
        "legs": report,
        // Kept for comparison with earlier runs.
        "aigw_us": latency(&whole[2].timings),
        "direct_us": latency(&whole[0].timings),
        "added_p50_us": added(2, |s| s.p50),
        "added_p99_us": added(2, |s| s.p99),
        "bare_proxy_added_p99_us": added(1, |s| s.p99),
        "added_first_token_p99_us": ttft_added(2),
        "bare_proxy_added_first_token_p99_us": ttft_added(1),
        "added_per_piece_us": piece_added(2),
        "idle_cpu_ms_per_second": idle_ms_per_s,
        "long_file_cpu_us_per_completion": {"bytes": LONG_FILE_BYTES, "whole": long_whole_cpu, "cut_to_tokens": long_cut_cpu},
        "memory": {"idle_rss_bytes": idle_rss, "open_streams": plan.open_streams, "rss_with_open_streams_bytes": held_rss,
                   "rss_per_open_stream_bytes": per_stream, "rss_per_open_stream_warm_pool_bytes": per_stream_warm,
                   "bare_proxy_rss_per_open_stream_bytes": proxy_per_stream,
                   "peak_rss_bytes": peak_rss, "streams_closed_after_hang_up": all_closed},
        "budget": budgets,
        "c1_breakdown_us": {"aigw_user": aigw_split.map(|s| s.0), "aigw_kernel": aigw_split.map(|s| s.1),
                            "bare_proxy_user": proxy_split.map(|s| s.0), "bare_proxy_kernel": proxy_split.map(|s| s.1),
                            "aigw_histograms": inside},
    });
    crate::write_results(&output, &results)?;
    drop(aigw_process);
    drop(proxy_process);
    Ok(())
}

/// The model API's cost beside the bare proxy, in one run: a short chat completion and an
/// agent's ~105 KB tool request (whole), and a streamed answer of 32 pieces; CPU per request and
/// per piece, added latency. aigw serves the named model `agent` at the mock, passing
/// OpenAI-shaped answers through as they came.
pub async fn run_model_api(iterations: usize, output: PathBuf) -> anyhow::Result<()> {
    const KEY: &str = "sk-aigw-bench-0123456789abcdef";
    let model = MockModelServer::start().await?;
    let state = tempfile::tempdir()?;
    let models_file = state.path().join("models.toml");
    std::fs::write(
        &models_file,
        format!(
            "[[models]]\nname = \"agent\"\nidentifier = \"custom_openai/mock-model\"\nendpoint = \"{}\"\n\n\
             [[keys]]\nid = \"bench\"\nsha256 = \"{}\"\nmodels = [\"agent\"]\n",
            model.base_url(),
            aigw::models::key_sha256_hex(KEY)
        ),
    )?;
    let settings =
        [("AIGW_PLUGINS__DIR", "target/plugins".to_string()), ("AIGW_MODELS__FILE", models_file.display().to_string())];
    let (aigw_process, aigw_addr, _) = start_aigw_with(state.path(), &settings).await?;
    let (proxy_process, proxy_addr) = start_proxy(&format!("http://{}", model.addr())).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let json_header = ("content-type", "application/json".to_string());
    let short = |name: &str, stream: bool| {
        let mut body =
            json!({"model": name, "messages": [{"role": "user", "content": "Summarise issue 42."}], "max_tokens": 256});
        if stream {
            body["stream"] = json!(true);
        }
        Bytes::from(body.to_string())
    };
    let agent = |name: &str| Bytes::from(agent_request(name, false).to_string());
    let agent_size = agent("agent").len();
    let legs = |upstream_name: &str, client_name: &str| {
        [
            Leg {
                name: "direct",
                target: Target {
                    url: format!("{}/chat/completions", model.base_url()),
                    headers: vec![json_header.clone()],
                },
                body: short(upstream_name, false),
                stream_body: short(upstream_name, true),
                pid: None,
            },
            Leg {
                name: "bare proxy",
                target: Target {
                    url: format!("http://{proxy_addr}/v1/chat/completions"),
                    headers: vec![json_header.clone()],
                },
                body: short(upstream_name, false),
                stream_body: short(upstream_name, true),
                pid: Some(proxy_process.pid),
            },
            Leg {
                name: "aigw",
                target: Target {
                    url: format!("http://{aigw_addr}/v1/chat/completions"),
                    headers: vec![("authorization", format!("Bearer {KEY}")), json_header.clone()],
                },
                body: short(client_name, false),
                stream_body: short(client_name, true),
                pid: Some(aigw_process.pid),
            },
        ]
    };
    let client = load::client(16);
    let iterations = iterations.clamp(50, 100_000);
    let short_legs = legs("mock-model", "agent");
    let whole = interleaved(&short_legs, false, iterations).await?;
    let mut agent_legs = legs("mock-model", "agent");
    for (leg, name) in agent_legs.iter_mut().zip(["mock-model", "mock-model", "agent"]) {
        leg.body = agent(name);
    }
    let metrics_url = format!("http://{aigw_addr}/metrics");
    let before = Histograms::parse(&load::get_text(&client, &metrics_url).await?);
    let agent_runs = interleaved(&agent_legs, false, (iterations / 5).max(50)).await?;
    let after = Histograms::parse(&load::get_text(&client, &metrics_url).await?);
    let plugin_call = |function: &str| {
        after
            .mean_since(&before, "aigw_plugin_call_duration_seconds", &[&format!("function=\"{function}\"")])
            .unwrap_or(0.0)
    };
    let (agent_build, agent_parse) = (plugin_call("build_chat_request"), plugin_call("parse_chat_response"));
    let agent_overhead = after.mean_since(&before, "aigw_overhead_seconds", &["/v1/chat/completions"]).unwrap_or(0.0);
    model.set_reply(Reply { text: "x".repeat(64), chunks: 1, ..Reply::default() });
    let one_piece = interleaved(&short_legs, true, iterations / 2).await?;
    model.set_reply(Reply { text: "x".repeat(64), chunks: 32, ..Reply::default() });
    let many_pieces = interleaved(&short_legs, true, iterations / 2).await?;
    model.set_reply(Reply::default());

    println!("the model API (/v1/chat/completions, named model, pass-through) beside a bare proxy and a direct call");
    println!(
        "  {:<12} {:>14} {:>14} {:>16} {:>16} {:>18}",
        "", "short p50 µs", "short CPU µs", "agent p50 µs", "agent CPU µs", "CPU/stream piece"
    );
    let cpu_per_piece = |i: usize| (many_pieces[i].cpu_us - one_piece[i].cpu_us) / 31.0;
    let mut legs_json = serde_json::Map::new();
    for (i, leg) in short_legs.iter().enumerate() {
        let (short_latency, agent_latency) = (latency(&whole[i].timings), latency(&agent_runs[i].timings));
        println!(
            "  {:<12} {:>14.1} {:>14.1} {:>16.1} {:>16.1} {:>18.1}",
            leg.name,
            short_latency.p50,
            whole[i].cpu_us,
            agent_latency.p50,
            agent_runs[i].cpu_us,
            cpu_per_piece(i)
        );
        legs_json.insert(
            leg.name.replace(' ', "_"),
            json!({"short": {"latency_us": short_latency, "cpu_us_per_request": whole[i].cpu_us},
                   "agent": {"latency_us": agent_latency, "cpu_us_per_request": agent_runs[i].cpu_us},
                   "cpu_us_per_stream_piece": cpu_per_piece(i)}),
        );
    }
    let added = |runs: &[LegRun], i: usize, pick: fn(&Summary) -> f64| {
        pick(&latency(&runs[i].timings)) - pick(&latency(&runs[0].timings))
    };
    let ratio = |runs: &[LegRun]| runs[2].cpu_us / runs[1].cpu_us;
    println!(
        "  added p50/p99: short: bare proxy {:.1}/{:.1} µs, aigw {:.1}/{:.1} µs; agent ({} KB): bare proxy {:.1}/{:.1} µs, aigw {:.1}/{:.1} µs",
        added(&whole, 1, |s| s.p50),
        added(&whole, 1, |s| s.p99),
        added(&whole, 2, |s| s.p50),
        added(&whole, 2, |s| s.p99),
        agent_size / 1000,
        added(&agent_runs, 1, |s| s.p50),
        added(&agent_runs, 1, |s| s.p99),
        added(&agent_runs, 2, |s| s.p50),
        added(&agent_runs, 2, |s| s.p99),
    );
    println!(
        "  agent request inside aigw (wall, mean): plugin build_chat_request {agent_build:.1} µs, \
         parse_chat_response {agent_parse:.1} µs; aigw's own time to the answer head {agent_overhead:.1} µs"
    );
    println!(
        "  aigw CPU / bare proxy's: short {:.2}x, agent {:.2}x, per stream piece {:.2}x",
        ratio(&whole),
        ratio(&agent_runs),
        cpu_per_piece(2) / cpu_per_piece(1)
    );
    let results = json!({
        "benchmark": "model-api",
        "requests_c1": iterations,
        "agent_request_bytes": agent_size,
        "agent_inside_aigw_us": {"build_chat_request": agent_build, "parse_chat_response": agent_parse, "overhead": agent_overhead},
        "legs": legs_json,
        "cpu_ratio_to_bare_proxy": {"short": ratio(&whole), "agent": ratio(&agent_runs), "stream_piece": cpu_per_piece(2) / cpu_per_piece(1)},
    });
    crate::write_results(&output, &results)?;
    drop(aigw_process);
    drop(proxy_process);
    Ok(())
}

/// An agent's first model call, as GitLab's Duo Workflow Service makes it (its size and shape,
/// not its text): three system messages (~14 KB), a question, 38 function tools (~94 KB of
/// schemas), streamed with usage, `max_tokens` 32768. About 105 KB of JSON.
fn agent_request(model: &str, stream: bool) -> serde_json::Value {
    let sentence = "Use this tool to read the object the user names and report its fields precisely. ";
    let tools: Vec<serde_json::Value> = (0..38)
        .map(|n| {
            let properties: serde_json::Map<String, serde_json::Value> = (0..8)
                .map(|p| {
                    (
                        format!("field_{p}"),
                        serde_json::json!({"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}],
                                           "default": null, "description": sentence}),
                    )
                })
                .collect();
            serde_json::json!({"type": "function", "function": {
                "name": format!("tool_{n}"),
                "description": sentence.repeat(8),
                "parameters": {"type": "object", "properties": properties, "required": ["field_0"]},
            }})
        })
        .collect();
    let mut body = serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": sentence.repeat(100)},
            {"role": "system", "content": sentence.repeat(48)},
            {"role": "system", "content": sentence.repeat(19)},
            {"role": "user", "content": "What is the state of work item 42 in project 1000?"},
        ],
        "tools": tools,
        "max_tokens": 32768,
        "temperature": 0.0,
    });
    if stream {
        body["stream"] = serde_json::json!(true);
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    body
}
