//! `aigw-bench`: aigw's own measurements, each reported as a ratio against a baseline measured in
//! the same run (machines here are noisy; only same-run ratios mean something).
//!
//! `plugin`: one plugin round trip (fresh store, build + parse) against native Rust.
//! `gateway`: a completion directly, through a bare proxy and through aigw, at concurrency 1 and
//! 64, whole and streamed, with each process's CPU and memory, and the budget.

#![forbid(unsafe_code)]

mod gateway;
mod load;
mod plugin;
mod procfs;
mod proxy;

use aigw::plugins::wit;
use clap::{Parser, Subcommand};
use openai_compatible::types as native;
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Plugin { component, iterations, output } => plugin::run(component, iterations, output).await,
            Command::Gateway { iterations, open_streams, output } => {
                gateway::run(gateway::Plan { iterations, open_streams }, output).await
            }
            Command::Proxy { listen, upstream } => proxy::run(listen, upstream).await,
        }
    })
}
