//! Configuration: a TOML file and `AIGW_*` environment variables (GitLab's names where they exist),
//! validated into one [`Config`] before anything starts.

mod raw;
pub(crate) mod sources;

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use crate::upstream::UpstreamSettings;
pub(crate) use raw::RawConfig;

/// `AIGW_SERVER__MAX_CONNECTIONS` when unset: at start it is lowered to what the open-file limit
/// holds, without a warning, since nobody asked for more.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 16_384;

/// A setting that cannot be used, with what would be valid.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {problem}")]
pub struct ConfigError {
    /// The setting's environment name (or TOML path when it only exists there).
    pub(crate) setting: String,
    /// What is wrong and what would be valid.
    pub(crate) problem: String,
}

impl ConfigError {
    pub(crate) fn new(setting: &str, problem: impl Into<String>) -> Self {
        ConfigError { setting: setting.to_string(), problem: problem.into() }
    }
}

/// Validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Credentials and region for plugins that ask for AWS SigV4 (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`).
    pub(crate) aws: crate::upstream::aws::AwsEnvironment,
    /// Address the API listens on (`AIGW_FASTAPI__API_HOST`, `AIGW_FASTAPI__API_PORT`).
    pub(crate) listen: SocketAddr,
    /// Serve HTTPS with these files (`AIGW_FASTAPI__TLS__ENABLED`, `__CERT_FILE`, `__KEY_FILE`).
    pub(crate) tls: Option<TlsSettings>,
    /// Serve `GET /metrics` on this address instead of the API port (`AIGW_METRICS__LISTEN`),
    /// so that scraping stays on a private interface.
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Client networks allowed to call the gateway at all (`AIGW_INGRESS__ALLOW`); `None`: any.
    /// Others get 403 before any token work.
    pub(crate) ingress_allow: Option<Vec<IpNet>>,
    /// Skip authentication entirely (`AIGW_AUTH__BYPASS_EXTERNAL`): for isolated test set-ups
    /// only; start-up warns loudly.
    pub(crate) bypass_auth: bool,
    /// Never stream from model servers (`AIGW_CUSTOM_MODELS__DISABLE_STREAMING`); a caller that
    /// asked for a stream gets the whole answer as one piece in its stream format.
    pub(crate) disable_streaming: bool,
    /// Total timeout of chat model calls (`AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT`, seconds).
    pub(crate) chat_timeout: Duration,
    /// What code suggestion answers report as their `region`
    /// (`AIGW_GOOGLE_CLOUD_PLATFORM__LOCATION`, GitLab's variable; GitLab's gateway defaults it
    /// to its own cloud's `us-central1`, aigw to none).
    pub(crate) region: Option<String>,
    /// The GitLab instance whose tokens are trusted (`AIGW_GITLAB_URL`), without a trailing `/`.
    /// `None` only in development mode, where the local development key is the only issuer.
    pub gitlab_url: Option<String>,
    /// Whether requests may name their own model endpoint and key (`AIGW_CUSTOM_MODELS__ENABLED`).
    pub(crate) custom_models_enabled: bool,
    /// Logging level filter (`AIGW_LOGGING__LEVEL`), e.g. `info` or `aigw=debug,warn`.
    pub log_level: String,
    /// JSON log lines (`AIGW_LOGGING__FORMAT_JSON`).
    pub log_json: bool,
    /// Plugin loading and sandbox settings.
    pub(crate) plugins: PluginSettings,
    /// Where model requests may go.
    pub(crate) egress: EgressSettings,
    /// Outbound HTTP timeouts.
    pub(crate) upstream: UpstreamSettings,
    /// The gateway's own signing key, then the previous one still accepted during a rotation
    /// (`AIGW_SELF_SIGNED_JWT__SIGNING_KEY`, `__VALIDATION_KEY`, PEM). Empty: no user access tokens.
    pub(crate) gateway_keys: Vec<crate::auth::SigningKey>,
    /// Where prompts come from besides the built-in ones: the operator's own files
    /// (`AIGW_PROMPTS__DIR`) and GitLab's registry (`AIGW_PROMPTS__GITLAB_DIR`), both hot-reloaded.
    pub(crate) prompts: crate::prompts::PromptSources,
    /// Request body limit, bytes (`AIGW_SERVER__MAX_BODY_BYTES`).
    pub(crate) max_body_bytes: usize,
    /// Serving threads, each with its own single-threaded runtime (`AIGW_SERVER__WORKERS`;
    /// default: one per core).
    pub(crate) workers: usize,
    /// Longest a client may take to send a request head (`AIGW_SERVER__HEADER_READ_TIMEOUT_MS`).
    pub(crate) header_read_timeout: Duration,
    /// Longest a client may take to send a request body (`AIGW_SERVER__BODY_READ_TIMEOUT_MS`).
    pub(crate) body_read_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish before they are cut
    /// (`AIGW_SERVER__SHUTDOWN_GRACE_MS`).
    pub(crate) shutdown_grace: Duration,
    /// On SIGTERM, how long the gateway keeps accepting with readiness at 503 before it stops
    /// accepting and the grace period begins, so that a load balancer stops sending first
    /// (`AIGW_SERVER__DRAIN_DELAY_MS`).
    pub(crate) drain_delay: Duration,
    /// Client connections open at once, across the workers (`AIGW_SERVER__MAX_CONNECTIONS`);
    /// past it a new connection is closed at once.
    pub(crate) max_connections: usize,
    /// Longest a caller may leave its answer unread before its connection is dropped
    /// (`AIGW_SERVER__WRITE_IDLE_TIMEOUT_MS`).
    pub(crate) write_idle_timeout: Duration,
    /// Shortest interval between two key-set refreshes triggered by unknown key ids
    /// (`AIGW_AUTH__JWKS_MIN_REFRESH_MS`): bounds the load a stream of forged `kid`s can put on GitLab.
    pub(crate) jwks_min_refresh: Duration,
    /// Key ids of the instance's key set whose tokens are accepted (`AIGW_AUTH__ALLOWED_KIDS`,
    /// comma-separated); `None`: any key the instance publishes.
    pub(crate) allowed_kids: Option<Vec<String>>,
    /// Longest lifetime of an accepted token (`AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS`).
    pub(crate) max_token_lifetime: Duration,
    /// An origin besides the instance's own that its `jwks_uri` may name (`AIGW_AUTH__JWKS_ORIGIN`).
    pub(crate) jwks_origin: Option<crate::auth::jwks::Origin>,
    /// Development mode: trust a locally generated signing key.
    pub dev: Option<DevSettings>,
    /// The OpenAI-compatible model API: named models and client keys.
    pub(crate) model_api: ModelApiSettings,
}

/// The OpenAI-compatible model API's settings.
#[derive(Debug, Clone)]
pub(crate) struct ModelApiSettings {
    /// Named models, client keys and the gateway's own URLs (`AIGW_MODELS__FILE`, TOML),
    /// hot-reloaded; none: the model API has no models and refuses every key.
    pub(crate) file: Option<PathBuf>,
    /// Request body limit of the model API, bytes (`AIGW_MODELS__MAX_BODY_BYTES`): agent
    /// conversations are far larger than GitLab's own requests.
    pub(crate) max_body_bytes: usize,
    /// Longest a conversation's model call may take in all, streams included
    /// (`AIGW_MODELS__TOTAL_TIMEOUT_MS`).
    pub(crate) total_timeout: Duration,
}

/// Plugin directory and sandbox limits.
#[derive(Debug, Clone)]
pub(crate) struct PluginSettings {
    /// Directories of `*.wasm` provider components, in precedence order (`AIGW_PLUGINS__DIR`,
    /// separated by ':').
    pub(crate) dirs: Vec<PathBuf>,
    /// Per-store linear memory cap (`AIGW_PLUGINS__MEMORY_LIMIT_MB`).
    pub(crate) memory_bytes: usize,
    /// Per-call deadline (`AIGW_PLUGINS__CALL_TIMEOUT_MS`).
    pub(crate) call_deadline: Duration,
    /// Plugin stores that may exist at once (`AIGW_PLUGINS__MAX_CONCURRENT`).
    pub(crate) max_concurrent: u32,
    /// Quiet period before a change in the directory triggers a reload (`AIGW_PLUGINS__RELOAD_DEBOUNCE_MS`).
    pub(crate) reload_debounce: Duration,
    /// Write `/tmp/perf-<pid>.map` so that `perf` names the plugins' compiled functions
    /// (`AIGW_PLUGINS__PERF_MAP`).
    pub(crate) perf_map: bool,
    /// Compiled components kept between runs (`AIGW_PLUGINS__CACHE_DIR`); none when unset.
    pub(crate) cache_dir: Option<PathBuf>,
}

/// Egress policy for model endpoints.
#[derive(Debug, Clone)]
pub(crate) struct EgressSettings {
    /// Networks model endpoints may resolve to (`AIGW_EGRESS__ALLOW`, comma-separated CIDRs).
    pub(crate) allow: Vec<IpNet>,
}

/// Certificate chain and private key for HTTPS, PEM files.
#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    /// Certificate chain.
    pub(crate) cert_file: PathBuf,
    /// Private key.
    pub(crate) key_file: PathBuf,
}

/// Development mode settings.
#[derive(Debug, Clone)]
pub struct DevSettings {
    /// PEM file holding the local signing key; created on first use.
    pub key_file: PathBuf,
}

/// Default networks for model endpoints: loopback and private ranges, where self-hosted model
/// servers live. Public addresses must be allowed explicitly, so the gateway is never an open proxy
/// by default.
pub(crate) const DEFAULT_EGRESS_ALLOW: &str = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7";

impl Config {
    /// Read the optional TOML file, overlay the environment and validate.
    pub fn load(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
        dev: bool,
    ) -> Result<Self, ConfigError> {
        let mut raw = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<RawConfig>(&text)
                    .map_err(|e| ConfigError::new("--config", format!("{}: {e}", path.display())))?
            }
            None => RawConfig::default(),
        };
        raw.overlay_env(env)?;
        raw.validate(dev)
    }
}

pub(crate) fn parse_allowlist(setting: &str, text: &str) -> Result<Vec<IpNet>, ConfigError> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            part.parse::<IpNet>().or_else(|_| part.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                ConfigError::new(setting, format!("{part:?} is not a CIDR such as 10.0.0.0/8 or an IP address"))
            })
        })
        .collect()
}

/// An environment for tests, from name and value pairs.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
