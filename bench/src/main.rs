//! `aigw-bench`: aigw's own measurements, each reported as a ratio against a baseline measured in
//! the same run (machines here are noisy; only same-run ratios mean something).
//!
//! `plugin`: one plugin round trip (fresh store, build + parse) against native Rust.
//! `gateway`: a completion directly, through a bare proxy and through aigw, at concurrency 1 and
//! 64, whole and streamed, with each process's CPU and memory, and the budget.
//! `model-api`: the OpenAI-compatible model API beside the same baselines, with an agent's
//! ~105 KB tool request.
//! `fleet`: a pool of three simulated model servers under developers' completions, chat and
//! agents: round-robin, fewest-outstanding and aigw's picker, then a server killed mid-run.
//! `soak`: a bounded run of mixed traffic with plugin swaps and prompt reloads, watching memory,
//! descriptors and threads.

#![forbid(unsafe_code)]

mod breakdown;
mod fleet;
mod gateway;
mod load;
mod plugin;
mod procfs;
mod proxy;
mod soak;
mod workload;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    /// A completion directly, through a bare proxy and through aigw: latency, throughput,
    /// streams, CPU and memory, and the budget.
    Gateway {
        /// Requests per target at concurrency 1 (bounded; concurrency 64 runs four times as many).
        #[arg(long, default_value_t = 5_000)]
        iterations: usize,
        /// Streams held open at once for the memory measurement.
        #[arg(long, default_value_t = 1_000)]
        open_streams: usize,
        /// Where to write the machine-readable results.
        #[arg(long, default_value = "target/bench/gateway.json")]
        output: PathBuf,
    },
    /// The model API (named model, client key, pass-through) beside a bare proxy: a short chat
    /// completion, an agent's ~105 KB tool request, a streamed answer.
    ModelApi {
        /// Requests per target at concurrency 1 (bounded; the agent request runs a fifth as many).
        #[arg(long, default_value_t = 2_000)]
        iterations: usize,
        /// Where to write the machine-readable results.
        #[arg(long, default_value = "target/bench/model-api.json")]
        output: PathBuf,
    },
    /// A pool of three simulated model servers (slots, a queue, prefill with an LRU prefix cache,
    /// decode, vLLM's metrics) under developers typing, chat turns and agent calls: round-robin,
    /// fewest-outstanding and aigw's picker, then one server killed mid-run.
    Fleet {
        /// Simulated seconds per run (4 runs; each takes this × --time-scale).
        #[arg(long, default_value_t = 240.0)]
        seconds: f64,
        /// Speed-up: every duration is multiplied by this.
        #[arg(long, default_value_t = 0.25)]
        time_scale: f64,
        /// Developers typing at once.
        #[arg(long, default_value_t = 20)]
        developers: usize,
        /// Files each developer works in.
        #[arg(long, default_value_t = 10)]
        files_per_developer: usize,
        /// Chat turns per second.
        #[arg(long, default_value_t = 0.5)]
        chats_per_second: f64,
        /// Agent calls per second (~25,000-token prompts).
        #[arg(long, default_value_t = 0.35)]
        agents_per_second: f64,
        /// Where to write the machine-readable results.
        #[arg(long, default_value = "target/bench/fleet.json")]
        output: PathBuf,
    },
    /// Mixed traffic for a bounded time, with a plugin swap and a prompt reload every minute:
    /// good requests must all succeed, memory, descriptors and threads must stay flat.
    Soak {
        /// Minutes of traffic (at most 120).
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Callers at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Where to write the machine-readable results.
        #[arg(long, default_value = "target/bench/soak.json")]
        output: PathBuf,
    },
    /// A bounded keep-alive load against one URL, for profiling a process from outside (`perf
    /// record -p`): the same client the benchmarks use, so no load generator's quirks show.
    #[command(hide = true)]
    Drive {
        /// Full URL to POST to.
        #[arg(long)]
        url: String,
        /// A request header, `name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// File holding the request body.
        #[arg(long)]
        body_file: PathBuf,
        /// Requests in all (at most 1,000,000).
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Callers at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// The bare pass-through proxy (started by `gateway` as a separate process).
    #[command(hide = true)]
    Proxy {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// `http://host:port` to forward to.
        #[arg(long)]
        upstream: String,
    },
}

/// Write a benchmark's machine-readable results to `output` (its directory made as needed) and
/// say where.
pub(crate) fn write_results(output: &std::path::Path, results: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(parent) = output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(output, serde_json::to_string_pretty(results)?)?;
    println!("  results: {}", output.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Plugin { component, iterations, output } => plugin::run(component, iterations, output).await,
            Command::Gateway { iterations, open_streams, output } => {
                gateway::run(gateway::Plan { iterations, open_streams }, output).await
            }
            Command::ModelApi { iterations, output } => gateway::run_model_api(iterations, output).await,
            Command::Fleet {
                seconds,
                time_scale,
                developers,
                files_per_developer,
                chats_per_second,
                agents_per_second,
                output,
            } => {
                let plan = fleet::Plan {
                    seconds: seconds.clamp(10.0, 3600.0),
                    time_scale,
                    developers: developers.clamp(1, 500),
                    files_per_developer: files_per_developer.clamp(1, 100),
                    chats_per_second,
                    agents_per_second,
                };
                fleet::run(plan, output).await
            }
            Command::Soak { minutes, concurrency, output } => {
                let duration = std::time::Duration::from_secs(minutes.clamp(1, 120) * 60);
                soak::run(soak::Plan { duration, concurrency: concurrency.clamp(1, 256) }, output).await
            }
            Command::Drive { url, headers, body_file, requests, concurrency } => {
                load::drive(url, headers, body_file, requests.min(1_000_000), concurrency.clamp(1, 1024)).await
            }
            Command::Proxy { listen, upstream } => proxy::run(listen, upstream).await,
        }
    })
}
