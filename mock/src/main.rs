//! `aigw-mock`: run the mock OpenAI-compatible model server on a fixed loopback port.

#![forbid(unsafe_code)]

use aigw_mock::{MockModelServer, Reply};
use clap::Parser;

#[derive(Parser)]
#[command(name = "aigw-mock", about = "Mock OpenAI-compatible model server for aigw's quick start and benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// Text every completion answers with.
    #[arg(long, default_value = "return a + b")]
    reply: String,
    /// Stream chunks per answer.
    #[arg(long, default_value_t = 3)]
    chunks: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let server = MockModelServer::bind(args.listen).await?;
    server.set_reply(Reply { text: args.reply, chunks: args.chunks, ..Reply::default() });
    println!("mock model server: {}", server.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
