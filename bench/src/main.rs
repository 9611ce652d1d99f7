//! `aigw-bench`: aigw's own measurements, each reported as a ratio against a baseline measured in
//! the same run (machines here are noisy; only same-run ratios mean something).
//!
//! `plugin`: one plugin round trip as the gateway does it per request (fresh store + instance,
//! `build-request`, `parse-response`) for an ~8 KB completion request, against the same
//! translation called natively.

#![forbid(unsafe_code)]

use aigw::plugins::{PluginRuntime, SandboxLimits, wit};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use openai_compatible::types as native;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "aigw-bench", about = "aigw benchmarks (same-run ratios)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plugin round trip (fresh store, build + parse) against native Rust.
    Plugin {
        /// The openai-compatible component.
        #[arg(long, default_value = "target/plugins/openai-compatible.wasm")]
        component: PathBuf,
        /// Measured iterations of each variant (bounded; warm-up is a tenth of this).
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
        /// Where to write the machine-readable results.
        #[arg(long, default_value = "target/bench/plugin-roundtrip.json")]
        output: PathBuf,
    },
    /// Added latency and CPU of a completion through aigw against the direct call.
    Gateway {
        /// Measured requests of each kind (bounded).
        #[arg(long, default_value_t = 5_000)]
        iterations: usize,
        /// Where to write the machine-readable results.
        #[arg(long, default_value = "target/bench/gateway-vs-direct.json")]
        output: PathBuf,
    },
}

/// Code before the cursor: about 7.5 KB of Python.
fn prefix() -> String {
    let unit =
        "def handler_{n}(request):\n    payload = request.json()\n    return {\"id\": {n}, \"ok\": bool(payload)}\n\n";
    let mut text = String::new();
    let mut n = 0;
    while text.len() < 7_500 {
        text.push_str(&unit.replace("{n}", &n.to_string()));
        n += 1;
    }
    text
}

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"codestral-22b","choices":[{"index":0,"message":{"role":"assistant","content":"    payload = request.json()\n    return {\"id\": 99, \"ok\": bool(payload)}\n"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2100,"completion_tokens":24,"total_tokens":2124}}"#;

fn wit_request(prefix: &str) -> wit::ModelRequest {
    wit::ModelRequest {
        model: "codestral-22b".into(),
        messages: vec![wit::Message { role: wit::Role::User, content: format!("<s>[SUFFIX]\n[PREFIX]{prefix}") }],
        fill_in_middle: Some(wit::FillInMiddle { prefix: prefix.to_string(), suffix: "\n".into() }),
        sampling: wit::Sampling {
            max_tokens: Some(64),
            temperature: Some(0.32),
            top_p: None,
            stop: ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"].map(String::from).to_vec(),
        },
        stream: false,
    }
}

fn native_request(prefix: &str) -> native::ModelRequest {
    native::ModelRequest {
        model: "codestral-22b".into(),
        messages: vec![native::Message { role: native::Role::User, content: format!("<s>[SUFFIX]\n[PREFIX]{prefix}") }],
        fill_in_middle: Some(native::FillInMiddle { prefix: prefix.to_string(), suffix: "\n".into() }),
        sampling: native::Sampling {
            max_tokens: Some(64),
            temperature: Some(0.32),
            top_p: None,
            stop: ["[INST]", "[/INST]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"].map(String::from).to_vec(),
        },
        stream: false,
    }
}

/// Percentiles of a sample, microseconds.
#[derive(Debug, Clone, Copy)]
struct Summary {
    p50: f64,
    p99: f64,
    mean: f64,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| micros(samples[((samples.len() as f64 - 1.0) * q).round() as usize]);
    let mean = samples.iter().map(|d| micros(*d)).sum::<f64>() / samples.len() as f64;
    Summary { p50: at(0.50), p99: at(0.99), mean }
}

async fn plugin(component: PathBuf, iterations: usize, output: PathBuf) -> anyhow::Result<()> {
    let iterations = iterations.clamp(100, 1_000_000);
    let bytes = std::fs::read(&component).with_context(|| format!("{} (run `make build`)", component.display()))?;
    let runtime = PluginRuntime::new(SandboxLimits::default())?;
    let plugin = runtime.load(bytes).await?;
    let prefix = prefix();
    let request = wit_request(&prefix);
    let native_req = native_request(&prefix);
    let request_bytes =
        openai_compatible::translate::build_request(&native_req).map_err(|e| anyhow::anyhow!("{e:?}"))?.body.len();

    let mut wasm = Vec::with_capacity(iterations);
    let mut phases: [Vec<Duration>; 4] = std::array::from_fn(|_| Vec::with_capacity(iterations));
    let mut native_samples = Vec::with_capacity(iterations);
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        let mut session = plugin.session().await?;
        let instantiated = started.elapsed();
        let built = session.build_request(&request).await?;
        let after_build = started.elapsed();
        let parsed = session.parse_response(ANSWER.as_bytes()).await?;
        let after_parse = started.elapsed();
        drop(session);
        let total = started.elapsed();

        let _ = std::hint::black_box((built, parsed));

        let started = Instant::now();
        let built = openai_compatible::translate::build_request(&native_req);
        let parsed = openai_compatible::translate::parse_response(ANSWER.as_bytes());
        let native_total = started.elapsed();
        let _ = std::hint::black_box((built, parsed));

        if i >= iterations / 10 {
            wasm.push(total);
            let splits = [instantiated, after_build - instantiated, after_parse - after_build, total - after_parse];
            for (phase, split) in phases.iter_mut().zip(splits) {
                phase.push(split);
            }
            native_samples.push(native_total);
        }
    }
    let wasm = summarize(wasm);
    let [instantiate, build, parse, teardown] = phases.map(summarize);
    let native_summary = summarize(native_samples);
    println!("plugin round trip: fresh store + build-request + parse-response, {iterations} iterations");
    println!("  request JSON body: {request_bytes} bytes; answer {} bytes", ANSWER.len());
    println!("  {:<28} {:>9} {:>9} {:>9}", "", "p50 µs", "p99 µs", "mean µs");
    let rows = [
        ("wasm (fresh store per call)", wasm),
        ("  instantiate", instantiate),
        ("  build-request", build),
        ("  parse-response", parse),
        ("  store teardown", teardown),
        ("native Rust", native_summary),
    ];
    for (name, s) in rows {
        println!("  {name:<28} {:>9.1} {:>9.1} {:>9.1}", s.p50, s.p99, s.mean);
    }
    let ratio = wasm.p50 / native_summary.p50;
    println!(
        "  ratio wasm/native (p50): {ratio:.2}x; added per request (p50): {:.1} µs",
        wasm.p50 - native_summary.p50
    );
    let json = serde_json::json!({
        "benchmark": "plugin-roundtrip",
        "iterations": iterations,
        "request_body_bytes": request_bytes,
        "wasm_us": {"p50": wasm.p50, "p99": wasm.p99, "mean": wasm.mean},
        "phases_p50_us": {"instantiate": instantiate.p50, "build_request": build.p50,
                          "parse_response": parse.p50, "teardown": teardown.p50},
        "native_us": {"p50": native_summary.p50, "p99": native_summary.p99, "mean": native_summary.mean},
        "ratio_p50": ratio,
    });
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&output, serde_json::to_string_pretty(&json)?)?;
    println!("  results: {}", output.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Plugin { component, iterations, output } => plugin(component, iterations, output).await,
            Command::Gateway { iterations, output } => gateway(iterations, output).await,
        }
    })
}

/// CPU time this process has used (user + system), from /proc.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the command name.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

type BenchClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

async fn timed_post(
    client: &BenchClient,
    url: &str,
    headers: &[(&str, String)],
    body: &bytes::Bytes,
) -> anyhow::Result<Duration> {
    use http_body_util::BodyExt;
    let mut request = http::Request::post(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let response = client.request(request.body(http_body_util::Full::new(body.clone()))?).await?;
    let status = response.status();
    response.into_body().collect().await?;
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(started.elapsed())
}

/// Added latency and CPU of a completion through the gateway against the same model call made
/// directly, sequentially (concurrency 1, keep-alive), in one process and one run.
async fn gateway(iterations: usize, output: PathBuf) -> anyhow::Result<()> {
    let iterations = iterations.clamp(100, 200_000);
    let model = aigw_mock::MockModelServer::start().await?;
    let key = aigw::auth::SigningKey::generate()?;
    let state = tempfile::tempdir()?;
    let env = vec![
        ("AIGW_FASTAPI__API_PORT".to_string(), "0".to_string()),
        ("AIGW_PLUGINS__DIR".to_string(), "target/plugins".to_string()),
        ("AIGW_DEV__KEY_FILE".to_string(), state.path().join("key.pem").display().to_string()),
        ("AIGW_LOGGING__LEVEL".to_string(), "warn".to_string()),
    ];
    let config = aigw::config::Config::load(None, env, true).map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = key.sign(&aigw::auth::keys::DevClaims::new(aigw::DEV_ISSUER, Duration::from_secs(3600)))?;
    let options = aigw::StartOptions { local_key: Some((key, aigw::DEV_ISSUER.to_string())) };
    let gateway = aigw::Gateway::start(config, options).await?;
    let client: BenchClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();

    let direct_url = format!("{}/chat/completions", model.base_url());
    let direct_body = bytes::Bytes::from(
        serde_json::json!({"model": "codestral-22b", "messages": [{"role": "user", "content": format!("<s>[SUFFIX]\n[PREFIX]{}", prefix())}],
                           "max_tokens": 64, "temperature": 0.32, "stream": false})
        .to_string(),
    );
    let gateway_url = format!("http://{}/v2/code/completions", gateway.addr());
    let gateway_body = bytes::Bytes::from(
        serde_json::json!({"current_file": {"file_name": "app.py", "content_above_cursor": prefix(), "content_below_cursor": "\n"},
                           "model_provider": "litellm", "model_name": "codestral", "model_endpoint": model.base_url(),
                           "model_identifier": "custom_openai/codestral-22b", "stream": false})
        .to_string(),
    );
    let json = ("content-type", "application/json".to_string());
    let gateway_headers = [
        ("authorization", format!("Bearer {token}")),
        ("x-gitlab-authentication-type", "oidc".to_string()),
        json.clone(),
    ];
    let direct_headers = [json];

    let (mut direct, mut through) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    let (mut direct_cpu, mut through_cpu) = (Duration::ZERO, Duration::ZERO);
    let rounds = 10;
    let per_round = iterations / rounds;
    for round in 0..=rounds {
        // Round 0 warms connections, caches and the allocator; it is not counted.
        let cpu = process_cpu();
        let mut samples = Vec::with_capacity(per_round);
        for _ in 0..per_round {
            samples.push(timed_post(&client, &direct_url, &direct_headers, &direct_body).await?);
        }
        let spent = process_cpu().saturating_sub(cpu);
        if round > 0 {
            direct.extend(samples);
            direct_cpu += spent;
        }
        let cpu = process_cpu();
        let mut samples = Vec::with_capacity(per_round);
        for _ in 0..per_round {
            samples.push(timed_post(&client, &gateway_url, &gateway_headers, &gateway_body).await?);
        }
        let spent = process_cpu().saturating_sub(cpu);
        if round > 0 {
            through.extend(samples);
            through_cpu += spent;
        }
    }
    let counted = (per_round * rounds) as f64;
    let (direct, through) = (summarize(direct), summarize(through));
    let added_cpu_us = (through_cpu.as_secs_f64() - direct_cpu.as_secs_f64()) * 1e6 / counted;
    println!("completion through aigw vs direct to the same mock model server, concurrency 1, keep-alive");
    println!("  {:<28} {:>9} {:>9} {:>9}", "", "p50 µs", "p99 µs", "mean µs");
    for (name, s) in [("direct", direct), ("through aigw", through)] {
        println!("  {name:<28} {:>9.1} {:>9.1} {:>9.1}", s.p50, s.p99, s.mean);
    }
    println!(
        "  added latency: p50 {:.1} µs, p99 {:.1} µs; added CPU per request (whole process, /proc): {added_cpu_us:.1} µs",
        through.p50 - direct.p50,
        through.p99 - direct.p99
    );
    let json = serde_json::json!({
        "benchmark": "gateway-vs-direct",
        "requests": counted,
        "direct_us": {"p50": direct.p50, "p99": direct.p99, "mean": direct.mean},
        "aigw_us": {"p50": through.p50, "p99": through.p99, "mean": through.mean},
        "added_p50_us": through.p50 - direct.p50,
        "added_p99_us": through.p99 - direct.p99,
        "added_cpu_per_request_us": added_cpu_us,
    });
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&output, serde_json::to_string_pretty(&json)?)?;
    println!("  results: {}", output.display());
    gateway.shutdown().await;
    Ok(())
}
