//! The `aigw` command line: `serve`, `doctor`, `token mint`, `plugin check`.

use aigw::auth::SigningKey;
use aigw::auth::keys::DevClaims;
use aigw::config::Config;
use aigw::doctor::{self, DoctorOptions, ModelProbe};
use aigw::plugins::{PluginRuntime, SandboxLimits};
use aigw::{DEV_ISSUER, Gateway, StartOptions};
use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "aigw", version, about = "Self-hosted AI gateway for GitLab Duo")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// TOML settings file; `AIGW_*` environment variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Development mode: trust a locally generated signing key and print a ready-to-use token.
        #[arg(long)]
        dev: bool,
    },
    /// Check this environment as the gateway would use it, step by step, and say what to fix;
    /// exits 1 when a step fails.
    Doctor {
        /// TOML settings file, as given to `serve`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Check the settings as `serve --dev` reads them.
        #[arg(long)]
        dev: bool,
        /// A model endpoint to send a one-token test completion to, as GitLab's self-hosted
        /// model configuration holds it (e.g. http://vllm:8000/v1).
        #[arg(long, requires = "model_identifier")]
        model_endpoint: Option<String>,
        /// The model identifier, `<provider>/<model>` (e.g. custom_openai/codestral-22b).
        #[arg(long)]
        model_identifier: Option<String>,
        /// The model family, which selects the prompts (e.g. codestral).
        #[arg(long, requires = "model_identifier")]
        model_name: Option<String>,
        /// The model server's key, if it needs one.
        #[arg(long, env = "AIGW_DOCTOR_MODEL_API_KEY", hide_env_values = true, requires = "model_identifier")]
        model_api_key: Option<String>,
        /// A token the GitLab instance sent (its `Authorization: Bearer` value), to verify.
        #[arg(long, env = "AIGW_DOCTOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// A named model of the models file (AIGW_MODELS__FILE) to check end to end: plugin,
        /// egress, reachability, an answer and a tool call.
        #[arg(long = "model")]
        named_model: Option<String>,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Provider plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Client keys for the OpenAI-compatible model API.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a new random key (give it to the client, once) and the `[[keys]]` entry for the
    /// models file, which holds only its SHA-256.
    New {
        /// The key's id: what logs and metrics name.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a token signed with the development key (the one `serve --dev` trusts).
    Mint {
        /// TOML settings file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Compile and validate a component and print what it serves, or why it cannot load.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aigw: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve { config, dev } => serve(config, dev).await,
            Command::Token { command: TokenCommand::Mint { config, ttl } } => {
                let config = load_config(config, true)?;
                let (key, issuer) = dev_key(&config)?;
                println!("{}", key.sign(&DevClaims::new(&issuer, Duration::from_secs(ttl)))?);
                Ok(())
            }
            Command::Plugin { command: PluginCommand::Check { file } } => check_plugin(file).await,
            Command::Key { command: KeyCommand::New { id } } => {
                // 192 random bits: a key that cannot be guessed, so that a fast hash suffices.
                let key = format!("sk-aigw-{:032x}{:016x}", rand::random::<u128>(), rand::random::<u64>());
                println!("key (give it to the client; it is not stored anywhere): {key}");
                println!();
                println!("[[keys]]");
                println!("id = {id:?}");
                println!("sha256 = \"{}\"", aigw::models::key_sha256_hex(&key));
                println!("models = [\"*\"]");
                println!("# networks = [\"10.0.0.0/8\"]");
                Ok(())
            }
            Command::Doctor {
                config,
                dev,
                model_endpoint,
                model_identifier,
                model_name,
                model_api_key,
                token,
                named_model,
            } => {
                let model = model_identifier.map(|identifier| ModelProbe {
                    endpoint: model_endpoint,
                    identifier,
                    family: model_name,
                    api_key: model_api_key,
                });
                // The doctor's own inputs are not settings: leave them out of the settings check.
                let env = std::env::vars().filter(|(name, _)| !name.starts_with("AIGW_DOCTOR_")).collect();
                let options = DoctorOptions { config_file: config, dev, model, token, named_model };
                let report = doctor::run(options, env).await;
                print!("{}", report.render());
                std::io::stdout().flush()?;
                if report.failed() {
                    return Err(anyhow::anyhow!("doctor: a check failed (the fix is under it)"));
                }
                Ok(())
            }
        }
    })
}

fn load_config(file: Option<PathBuf>, dev: bool) -> anyhow::Result<Config> {
    Config::load(file.as_deref(), std::env::vars(), dev).map_err(|e| anyhow::anyhow!("{e}"))
}

fn dev_key(config: &Config) -> anyhow::Result<(SigningKey, String)> {
    let dev = config.dev.as_ref().context("development mode is off")?;
    let key = SigningKey::load_or_create(&dev.key_file)?;
    let issuer = config.gitlab_url.clone().unwrap_or_else(|| DEV_ISSUER.to_string());
    Ok((key, issuer))
}

async fn serve(config_file: Option<PathBuf>, dev: bool) -> anyhow::Result<()> {
    let config = load_config(config_file, dev)?;
    aigw::telemetry::init(&config.log_level, config.log_json);
    let mut options = StartOptions::default();
    let mut dev_token = None;
    if dev {
        let (key, issuer) = dev_key(&config)?;
        dev_token = Some(key.sign(&DevClaims::new(&issuer, Duration::from_secs(24 * 3600)))?);
        options.local_key = Some((key, issuer));
    }
    let gateway = Gateway::start(config, options).await?;
    if let Some(token) = dev_token {
        let addr = gateway.addr();
        // Whoever started us may have stopped reading stdout (a script that took the token and
        // closed the pipe): the gateway keeps serving regardless.
        let banner = writeln!(
            std::io::stdout(),
            "\nDevelopment mode: tokens signed by the local key are accepted (valid 24 h):\n\n\
             export AIGW_TOKEN={token}\n\n\
             curl -s http://{addr}/v2/code/completions \\\n  \
             -H \"Authorization: Bearer $AIGW_TOKEN\" -H 'X-Gitlab-Authentication-Type: oidc' \\\n  \
             -H 'Content-Type: application/json' \\\n  \
             -d '{{\"current_file\": {{\"file_name\": \"add.py\", \"content_above_cursor\": \"def add(a, b):\\n    \", \"content_below_cursor\": \"\"}},\n       \
             \"model_provider\": \"litellm\", \"model_name\": \"codestral\", \"model_endpoint\": \"http://127.0.0.1:8000/v1\"}}'\n"
        );
        if let Err(error) = banner.and_then(|()| std::io::stdout().flush()) {
            tracing::warn!(%error, "could not print the development banner; serving anyway");
        }
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    // A second signal (an impatient operator) stops at once, cancelling what is in flight.
    tokio::select! {
        () = gateway.shutdown() => {}
        () = shutdown_signal() => tracing::warn!("second signal: stopping now, cutting requests in flight"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn check_plugin(file: PathBuf) -> anyhow::Result<()> {
    let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let runtime = PluginRuntime::new(SandboxLimits::default())?;
    match runtime.load(bytes).await {
        Ok(plugin) => {
            let id = plugin.identity();
            println!("{}: ok", file.display());
            println!("  plugin:    {} {}", id.name, id.version);
            println!("  providers: {}", id.providers.join(", "));
            println!("  framing:   {:?}", id.framing);
            let exports = match id.missing() {
                None => "embeddings and tool calling".to_string(),
                Some(missing) => format!("{missing} (rebuild against this gateway's WIT for them)"),
            };
            println!("  contract:  aigw:plugin@{}, {exports}", id.wit_version);
            println!("  sha256:    {}", plugin.digest());
            println!(
                "  imports:   {} (served inert: no files, network, environment or clock)",
                plugin.imports().join(", ")
            );
            Ok(())
        }
        Err(error) => anyhow::bail!("{}: cannot be loaded: {error}", file.display()),
    }
}
