//! Raw settings as written in the TOML file or the environment, before validation.

use super::{
    Config, ConfigError, DEFAULT_EGRESS_ALLOW, DevSettings, EgressSettings, PluginSettings, UpstreamSettings,
    parse_allowlist,
};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::upstream::retry::RetryPolicy;

/// Most retries of one model call: each one waits up to the backoff cap, inside the deadline.
const MAX_RETRIES: u32 = 10;

/// Declares one settings section: its struct, every field's default (so `validate` never
/// invents one), and the `AIGW_*` variable of each field, derived from the section's prefix and
/// the field's name. A new setting is one line here and its check in `validate`.
///
/// A field may end with `; "what"` to say what a valid value is when the variable does not
/// parse; otherwise its type says (see [`FromVariable`]).
macro_rules! section {
    ($(#[$meta:meta])* $name:ident, $prefix:literal {
        $($field:ident : $ty:ty = $default:expr $(; $what:literal)?),* $(,)?
    } $(nested { $($sub:ident : $sub_ty:ty),* $(,)? })?) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        struct $name {
            $($field: $ty,)*
            $($($sub: $sub_ty,)*)?
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* $($($sub: <$sub_ty>::default(),)*)? }
            }
        }

        impl Section for $name {
            fn variables(&self, out: &mut Vec<String>) {
                $(out.push(concat!("AIGW_", $prefix, stringify!($field)).to_ascii_uppercase());)*
                $($(self.$sub.variables(out);)*)?
            }

            fn set(&mut self, variable: &str, value: &str) -> Option<Result<(), ConfigError>> {
                $(
                    if variable.eq_ignore_ascii_case(concat!("AIGW_", $prefix, stringify!($field))) {
                        let what: Option<&str> = None $(.or(Some($what)))?;
                        return Some(FromVariable::from_variable(variable, value, what).map(|v| self.$field = v));
                    }
                )*
                $($(
                    if let Some(outcome) = self.$sub.set(variable, value) {
                        return Some(outcome);
                    }
                )*)?
                None
            }
        }
    };
}

/// What [`section!`] generates for each section.
trait Section {
    /// The section's variable names, upper case.
    fn variables(&self, out: &mut Vec<String>);
    /// Set the field `variable` names; `None` when it names none of this section's fields.
    fn set(&mut self, variable: &str, value: &str) -> Option<Result<(), ConfigError>>;
}

/// A setting's value parsed from an environment variable's text.
trait FromVariable: Sized {
    /// What a valid value is, for the error message.
    const WHAT: &'static str;
    /// Parse; `what` overrides [`Self::WHAT`] in the message.
    fn from_variable(name: &str, value: &str, what: Option<&str>) -> Result<Self, ConfigError>;
}

fn parse<T: std::str::FromStr>(name: &str, value: &str, valid: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::new(name, format!("{value:?} is not {valid}")))
}

macro_rules! from_variable_by_parse {
    ($($ty:ty => $what:literal),* $(,)?) => {$(
        impl FromVariable for $ty {
            const WHAT: &'static str = $what;
            fn from_variable(name: &str, value: &str, what: Option<&str>) -> Result<Self, ConfigError> {
                parse(name, value, what.unwrap_or(Self::WHAT))
            }
        }
    )*};
}

from_variable_by_parse!(u64 => "a non-negative integer", u32 => "a non-negative integer", u16 => "an integer from 0 to 65535");

impl FromVariable for bool {
    const WHAT: &'static str = "a boolean (true or false)";
    fn from_variable(name: &str, value: &str, what: Option<&str>) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(name, format!("{value:?} is not {}", what.unwrap_or(Self::WHAT)))),
        }
    }
}

impl FromVariable for String {
    const WHAT: &'static str = "text";
    fn from_variable(_: &str, value: &str, _: Option<&str>) -> Result<Self, ConfigError> {
        Ok(value.to_string())
    }
}

impl FromVariable for PathBuf {
    const WHAT: &'static str = "a path";
    fn from_variable(_: &str, value: &str, _: Option<&str>) -> Result<Self, ConfigError> {
        Ok(PathBuf::from(value))
    }
}

impl<T: FromVariable> FromVariable for Option<T> {
    const WHAT: &'static str = T::WHAT;
    fn from_variable(name: &str, value: &str, what: Option<&str>) -> Result<Self, ConfigError> {
        T::from_variable(name, value, what).map(Some)
    }
}

/// Settings file shape; every section optional, unknown fields rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    gitlab_url: Option<String>,
    #[serde(default)]
    fastapi: Fastapi,
    #[serde(default)]
    custom_models: CustomModels,
    #[serde(default)]
    logging: Logging,
    #[serde(default)]
    plugins: Plugins,
    #[serde(default)]
    egress: Egress,
    #[serde(default)]
    upstream: Upstream,
    #[serde(default)]
    server: Server,
    #[serde(default)]
    dev: Dev,
    #[serde(default)]
    auth: Auth,
    #[serde(default)]
    prompts: Prompts,
    #[serde(default)]
    self_signed_jwt: SelfSignedJwt,
    #[serde(default)]
    ingress: Ingress,
    #[serde(default)]
    duo_chat: DuoChat,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    models: Models,
    #[serde(default)]
    google_cloud_platform: GoogleCloudPlatform,
    /// The standard AWS variables (environment only, never in the file).
    #[serde(skip)]
    aws: crate::upstream::aws::AwsEnvironment,
}

/// The one top-level setting; every other lives in a section.
const GITLAB_URL: &str = "AIGW_GITLAB_URL";

section!(Fastapi, "FASTAPI__" {
    api_host: Option<String> = None,
    api_port: u16 = 5052; "a TCP port (0-65535)",
    // GitLab's names for the metrics listener (its image: 0.0.0.0:8082).
    metrics_host: Option<String> = None,
    metrics_port: Option<u16> = None; "a TCP port (0-65535)",
} nested { tls: Tls });

section!(Tls, "FASTAPI__TLS__" {
    enabled: bool = false,
    cert_file: Option<PathBuf> = None,
    key_file: Option<PathBuf> = None,
});

section!(CustomModels, "CUSTOM_MODELS__" {
    enabled: bool = true,
    disable_streaming: bool = false,
});

section!(Logging, "LOGGING__" {
    level: String = "info".to_string(),
    format_json: bool = false,
});

section!(Plugins, "PLUGINS__" {
    dir: PathBuf = PathBuf::from("target/plugins"),
    memory_limit_mb: u64 = 64,
    call_timeout_ms: u64 = 100,
    max_concurrent: u32 = 1024,
    reload_debounce_ms: u64 = 250,
    perf_map: bool = false,
    cache_dir: Option<PathBuf> = None,
});

section!(Egress, "EGRESS__" {
    allow: String = DEFAULT_EGRESS_ALLOW.to_string(),
});

section!(Upstream, "UPSTREAM__" {
    connect_timeout_ms: u64 = 5_000,
    first_byte_timeout_ms: u64 = 60_000,
    idle_timeout_ms: u64 = 30_000,
    total_timeout_ms: u64 = 60_000,
    // Two retries: a blip is ridden out, a broken server is not hammered (GitLab's gateway
    // makes up to twelve calls on a 500).
    retries: u64 = 2; "a number of retries",
    retry_max_backoff_ms: u64 = 2_000,
});

section!(Server, "SERVER__" {
    max_body_bytes: u64 = 4 << 20,
    // Unset: one per core, known only at run time.
    workers: Option<u64> = None,
    header_read_timeout_ms: u64 = 10_000,
    body_read_timeout_ms: u64 = 30_000,
    // Inside Kubernetes' default termination grace period of 30 s.
    shutdown_grace_ms: u64 = 25_000,
    // 0: a process that nothing balances to need not wait; behind a load balancer, set it to
    // the time the balancer takes to notice readiness turned 503.
    drain_delay_ms: u64 = 0,
    // Two descriptors per connection (with its model-server one): fits the common 65,536 limit.
    max_connections: u64 = crate::config::DEFAULT_MAX_CONNECTIONS as u64; "a number of connections",
    write_idle_timeout_ms: u64 = 30_000,
});

section!(Dev, "DEV__" {
    key_file: PathBuf = PathBuf::from(".aigw/dev-signing-key.pem"),
});

section!(Auth, "AUTH__" {
    jwks_min_refresh_ms: u64 = 10_000,
    bypass_external: bool = false,
    allowed_kids: Option<String> = None,
    max_token_lifetime_secs: u64 = crate::auth::verify::DEFAULT_MAX_TOKEN_LIFETIME_SECS,
    jwks_origin: Option<String> = None,
});

section!(Prompts, "PROMPTS__" {
    dir: Option<PathBuf> = None,
    gitlab_dir: Option<PathBuf> = None,
});

section!(
    // Debug is written by hand below: private keys never reach a log line.
    SelfSignedJwtFields, "SELF_SIGNED_JWT__" {
    signing_key: Option<String> = None,
    validation_key: Option<String> = None,
});

section!(Ingress, "INGRESS__" {
    allow: Option<String> = None,
});

section!(DuoChat, "DUO_CHAT__" {
    model_request_timeout: u64 = 30; "a number of seconds",
});

// GitLab's variable: its gateway reports this location as the `region` code suggestions were
// served in. A self-hosted gateway has none unless the operator names one.
section!(GoogleCloudPlatform, "GOOGLE_CLOUD_PLATFORM__" {
    location: Option<String> = None,
});

section!(Models, "MODELS__" {
    file: Option<PathBuf> = None,
    // DWS's first request is ~105 KB and its later turns grow with the conversation; several
    // MB of history must fit.
    max_body_bytes: u64 = 32 << 20,
    // An agent's answer of thousands of tokens streams for minutes; silence is bounded by
    // AIGW_UPSTREAM__IDLE_TIMEOUT_MS meanwhile.
    total_timeout_ms: u64 = 600_000,
});

section!(MetricsSection, "METRICS__" {
    listen: Option<String> = None,
});

impl RawConfig {
    /// Every section, in one list: the environment overlay and the list of variables both read it.
    fn sections(&mut self) -> [&mut dyn Section; 16] {
        [
            &mut self.fastapi,
            &mut self.custom_models,
            &mut self.logging,
            &mut self.plugins,
            &mut self.egress,
            &mut self.upstream,
            &mut self.server,
            &mut self.dev,
            &mut self.auth,
            &mut self.prompts,
            &mut self.self_signed_jwt.0,
            &mut self.ingress,
            &mut self.duo_chat,
            &mut self.metrics,
            &mut self.google_cloud_platform,
            &mut self.models,
        ]
    }

    /// Every `AIGW_*` variable aigw reads.
    pub(crate) fn variables() -> Vec<String> {
        let mut out = vec![GITLAB_URL.to_string()];
        for section in RawConfig::default().sections() {
            section.variables(&mut out);
        }
        out
    }

    /// Apply `AIGW_*` variables over the file's values. Variables this gateway does not know are
    /// ignored: GitLab's own gateway reads many more, and operators may keep them set.
    pub(crate) fn overlay_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (name, value) in env {
            // Variable names are matched exactly: upper case, as they are documented.
            if name.bytes().any(|b| b.is_ascii_lowercase()) {
                continue;
            }
            if name == GITLAB_URL {
                self.gitlab_url = Some(value);
                continue;
            }
            if let Some(outcome) = self.sections().into_iter().find_map(|section| section.set(&name, &value)) {
                outcome?;
                continue;
            }
            self.aws.set(&name, value);
        }
        Ok(())
    }

    /// Check every value, section by section in a fixed order (so that of several bad settings,
    /// the same one is always reported).
    pub(crate) fn validate(self, dev: bool) -> Result<Config, ConfigError> {
        let listen = self.fastapi.listen(dev)?;
        let gitlab_url = gitlab_url(self.gitlab_url, dev)?;
        let log_level = self.logging.level()?;
        let plugins = self.plugins.validate()?;
        let egress = self.egress.validate()?;
        let upstream = self.upstream.validate()?;
        let server = self.server.validate()?;
        let gateway_keys = self.self_signed_jwt.0.keys()?;
        let gitlab_metrics_listen = self.fastapi.metrics_listen()?;
        let tls = self.fastapi.tls.validate()?;
        let ingress_allow = self.ingress.validate()?;
        let metrics_listen = self.metrics.validate()?.or(gitlab_metrics_listen);
        let allowed_kids = self.auth.allowed_kids()?;
        let max_token_lifetime = self.auth.max_token_lifetime()?;
        let jwks_origin = self.auth.jwks_origin()?;
        let chat_timeout = self.duo_chat.timeout()?;
        let model_api = self.models.validate()?;
        Ok(Config {
            model_api,
            listen,
            tls,
            ingress_allow,
            bypass_auth: self.auth.bypass_external,
            disable_streaming: self.custom_models.disable_streaming,
            chat_timeout,
            region: self.google_cloud_platform.location.filter(|location| !location.is_empty()),
            gateway_keys,
            gitlab_url,
            custom_models_enabled: self.custom_models.enabled,
            log_level,
            log_json: self.logging.format_json,
            plugins,
            egress,
            upstream,
            max_body_bytes: server.max_body_bytes,
            workers: server.workers,
            header_read_timeout: server.header_read_timeout,
            body_read_timeout: server.body_read_timeout,
            shutdown_grace: server.shutdown_grace,
            drain_delay: server.drain_delay,
            max_connections: server.max_connections,
            write_idle_timeout: server.write_idle_timeout,
            prompts: crate::prompts::PromptSources { dir: self.prompts.dir, gitlab_dir: self.prompts.gitlab_dir },
            allowed_kids,
            max_token_lifetime,
            jwks_origin,
            jwks_min_refresh: Duration::from_millis(self.auth.jwks_min_refresh_ms),
            aws: self.aws,
            metrics_listen,
            dev: dev.then_some(DevSettings { key_file: self.dev.key_file }),
        })
    }
}

impl Models {
    fn validate(self) -> Result<super::ModelApiSettings, ConfigError> {
        if !(1024..=(1 << 30)).contains(&self.max_body_bytes) {
            return Err(ConfigError::new("AIGW_MODELS__MAX_BODY_BYTES", "must be between 1024 and 1073741824"));
        }
        if !(1..=86_400_000).contains(&self.total_timeout_ms) {
            return Err(ConfigError::new(
                "AIGW_MODELS__TOTAL_TIMEOUT_MS",
                "must be between 1 and 86400000 milliseconds",
            ));
        }
        Ok(super::ModelApiSettings {
            file: self.file,
            max_body_bytes: self.max_body_bytes as usize,
            total_timeout: Duration::from_millis(self.total_timeout_ms),
        })
    }
}

/// `[self_signed_jwt]`: its fields hold private keys, so its `Debug` shows only whether each is set.
#[derive(Default, Deserialize)]
#[serde(transparent)]
struct SelfSignedJwt(SelfSignedJwtFields);

impl std::fmt::Debug for SelfSignedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfSignedJwt")
            .field("signing_key", &self.0.signing_key.as_ref().map(|_| "<redacted>"))
            .field("validation_key", &self.0.validation_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// `AIGW_GITLAB_URL`: required, http(s), without a trailing `/` (development mode may go without).
fn gitlab_url(url: Option<String>, dev: bool) -> Result<Option<String>, ConfigError> {
    match url.map(|u| u.trim().trim_end_matches('/').to_string()) {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            url.parse::<http::Uri>()
                .map_err(|e| ConfigError::new("AIGW_GITLAB_URL", format!("{url:?} is not a URL: {e}")))?;
            Ok(Some(url))
        }
        Some(url) if url.is_empty() && dev => Ok(None),
        Some(url) => Err(ConfigError::new(
            "AIGW_GITLAB_URL",
            format!("{url:?} is not an http:// or https:// URL of the GitLab instance"),
        )),
        None if dev => Ok(None),
        None => Err(ConfigError::new(
            "AIGW_GITLAB_URL",
            "is required: the URL of the GitLab instance whose tokens to trust (or run `aigw serve --dev`)",
        )),
    }
}

impl Fastapi {
    fn listen(&self, dev: bool) -> Result<SocketAddr, ConfigError> {
        let default_host = if dev { "127.0.0.1" } else { "0.0.0.0" };
        let host = self.api_host.as_deref().unwrap_or(default_host);
        let host: IpAddr = parse("AIGW_FASTAPI__API_HOST", host, "an IP address such as 0.0.0.0 or 127.0.0.1")?;
        Ok(SocketAddr::new(host, self.api_port))
    }
}

impl Fastapi {
    /// The metrics listener GitLab's variables ask for, if either is set: its host (default
    /// 0.0.0.0, as GitLab's) and its port (default 8082, as GitLab's image).
    /// `AIGW_METRICS__LISTEN`, when set, wins over both.
    fn metrics_listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.metrics_host.is_none() && self.metrics_port.is_none() {
            return Ok(None);
        }
        let host = self.metrics_host.as_deref().map(str::trim).unwrap_or("0.0.0.0");
        let host: IpAddr = parse("AIGW_FASTAPI__METRICS_HOST", host, "an IP address such as 0.0.0.0 or 127.0.0.1")?;
        Ok(Some(SocketAddr::new(host, self.metrics_port.unwrap_or(8082))))
    }
}

impl Tls {
    fn validate(self) -> Result<Option<super::TlsSettings>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let file = |setting: &str, path: Option<PathBuf>| match path {
            Some(path) if path.is_file() => Ok(path),
            Some(path) => Err(ConfigError::new(setting, format!("{} is not a readable file", path.display()))),
            None => Err(ConfigError::new(setting, "is required when AIGW_FASTAPI__TLS__ENABLED is true")),
        };
        Ok(Some(super::TlsSettings {
            cert_file: file("AIGW_FASTAPI__TLS__CERT_FILE", self.cert_file)?,
            key_file: file("AIGW_FASTAPI__TLS__KEY_FILE", self.key_file)?,
        }))
    }
}

impl Logging {
    fn level(&self) -> Result<String, ConfigError> {
        let level = self.level.clone();
        tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
            ConfigError::new("AIGW_LOGGING__LEVEL", format!("{level:?}: {e} (use e.g. info, debug, warn)"))
        })?;
        Ok(level)
    }
}

impl Plugins {
    fn validate(self) -> Result<PluginSettings, ConfigError> {
        let memory_mb = self.memory_limit_mb;
        if !(1..=4096).contains(&memory_mb) {
            return Err(ConfigError::new("AIGW_PLUGINS__MEMORY_LIMIT_MB", "must be between 1 and 4096"));
        }
        let call_ms = self.call_timeout_ms;
        if !(1..=60_000).contains(&call_ms) {
            return Err(ConfigError::new("AIGW_PLUGINS__CALL_TIMEOUT_MS", "must be between 1 and 60000"));
        }
        let max_concurrent = self.max_concurrent;
        if !(1..=100_000).contains(&max_concurrent) {
            return Err(ConfigError::new("AIGW_PLUGINS__MAX_CONCURRENT", "must be between 1 and 100000"));
        }
        // As PATH: directories separated by ':', the earlier winning a provider name.
        let dirs: Vec<PathBuf> = std::env::split_paths(&self.dir).filter(|dir| !dir.as_os_str().is_empty()).collect();
        if dirs.is_empty() {
            return Err(ConfigError::new(
                "AIGW_PLUGINS__DIR",
                "names no directory (give one, or several separated by ':')",
            ));
        }
        Ok(PluginSettings {
            dirs,
            memory_bytes: usize::try_from(memory_mb << 20)
                .map_err(|_| ConfigError::new("AIGW_PLUGINS__MEMORY_LIMIT_MB", "too large for this machine"))?,
            call_deadline: Duration::from_millis(call_ms),
            max_concurrent,
            reload_debounce: Duration::from_millis(self.reload_debounce_ms),
            perf_map: self.perf_map,
            cache_dir: self.cache_dir.filter(|dir| !dir.as_os_str().is_empty()),
        })
    }
}

impl Egress {
    fn validate(self) -> Result<EgressSettings, ConfigError> {
        Ok(EgressSettings { allow: parse_allowlist("AIGW_EGRESS__ALLOW", &self.allow)? })
    }
}

impl Upstream {
    fn validate(&self) -> Result<UpstreamSettings, ConfigError> {
        let timeout = |name: &str, ms: u64| -> Result<Duration, ConfigError> {
            match ms {
                0 => Err(ConfigError::new(name, "must be at least 1 millisecond")),
                ms => Ok(Duration::from_millis(ms)),
            }
        };
        Ok(UpstreamSettings {
            connect_timeout: timeout("AIGW_UPSTREAM__CONNECT_TIMEOUT_MS", self.connect_timeout_ms)?,
            first_byte_timeout: timeout("AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", self.first_byte_timeout_ms)?,
            idle_timeout: timeout("AIGW_UPSTREAM__IDLE_TIMEOUT_MS", self.idle_timeout_ms)?,
            total_timeout: timeout("AIGW_UPSTREAM__TOTAL_TIMEOUT_MS", self.total_timeout_ms)?,
            retry: RetryPolicy {
                retries: match u32::try_from(self.retries) {
                    Ok(retries) if retries <= MAX_RETRIES => retries,
                    _ => {
                        return Err(ConfigError::new(
                            "AIGW_UPSTREAM__RETRIES",
                            format!("must be at most {MAX_RETRIES}"),
                        ));
                    }
                },
                max_backoff: Duration::from_millis(self.retry_max_backoff_ms),
            },
        })
    }
}

/// `[server]`, checked.
struct ServerLimits {
    max_body_bytes: usize,
    workers: usize,
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    shutdown_grace: Duration,
    drain_delay: Duration,
    max_connections: usize,
    write_idle_timeout: Duration,
}

impl Server {
    fn validate(&self) -> Result<ServerLimits, ConfigError> {
        let max_body = self.max_body_bytes;
        if !(1024..=(256 << 20)).contains(&max_body) {
            return Err(ConfigError::new("AIGW_SERVER__MAX_BODY_BYTES", "must be between 1024 and 268435456"));
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let workers = match self.workers {
            None => cores,
            Some(n @ 1..=1024) => n as usize,
            Some(_) => return Err(ConfigError::new("AIGW_SERVER__WORKERS", "must be between 1 and 1024")),
        };
        let millis = |name: &str, ms: u64, range: std::ops::RangeInclusive<u64>| {
            if range.contains(&ms) {
                Ok(Duration::from_millis(ms))
            } else {
                Err(ConfigError::new(
                    name,
                    format!("must be between {} and {} milliseconds", range.start(), range.end()),
                ))
            }
        };
        Ok(ServerLimits {
            max_body_bytes: max_body as usize,
            workers,
            header_read_timeout: millis(
                "AIGW_SERVER__HEADER_READ_TIMEOUT_MS",
                self.header_read_timeout_ms,
                1..=600_000,
            )?,
            body_read_timeout: millis("AIGW_SERVER__BODY_READ_TIMEOUT_MS", self.body_read_timeout_ms, 1..=600_000)?,
            shutdown_grace: millis("AIGW_SERVER__SHUTDOWN_GRACE_MS", self.shutdown_grace_ms, 1..=3_600_000)?,
            drain_delay: millis("AIGW_SERVER__DRAIN_DELAY_MS", self.drain_delay_ms, 0..=600_000)?,
            write_idle_timeout: millis(
                "AIGW_SERVER__WRITE_IDLE_TIMEOUT_MS",
                self.write_idle_timeout_ms,
                1..=3_600_000,
            )?,
            max_connections: match self.max_connections {
                n @ 1..=1_000_000 => n as usize,
                _ => return Err(ConfigError::new("AIGW_SERVER__MAX_CONNECTIONS", "must be between 1 and 1000000")),
            },
        })
    }
}

impl SelfSignedJwtFields {
    /// The signing key, then the validation key kept through a rotation.
    fn keys(&self) -> Result<Vec<crate::auth::SigningKey>, ConfigError> {
        let mut keys = Vec::new();
        for (setting, pem) in [
            ("AIGW_SELF_SIGNED_JWT__SIGNING_KEY", &self.signing_key),
            ("AIGW_SELF_SIGNED_JWT__VALIDATION_KEY", &self.validation_key),
        ] {
            if let Some(pem) = pem.as_deref().filter(|p| !p.trim().is_empty()) {
                let key =
                    crate::auth::SigningKey::from_pem(pem).map_err(|e| ConfigError::new(setting, e.to_string()))?;
                keys.push(key);
            } else if setting.ends_with("VALIDATION_KEY") {
                continue;
            } else if self.validation_key.as_deref().is_some_and(|p| !p.trim().is_empty()) {
                return Err(ConfigError::new(setting, "is required when a validation key is set"));
            }
        }
        Ok(keys)
    }
}

impl Ingress {
    fn validate(&self) -> Result<Option<Vec<ipnet::IpNet>>, ConfigError> {
        match self.allow.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            Some(text) => Ok(Some(parse_allowlist("AIGW_INGRESS__ALLOW", text)?)),
            None => Ok(None),
        }
    }
}

impl MetricsSection {
    fn validate(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.listen.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
            Some(text) => Ok(Some(parse("AIGW_METRICS__LISTEN", text, "an address and port such as 127.0.0.1:9090")?)),
            None => Ok(None),
        }
    }
}

impl Auth {
    fn allowed_kids(&self) -> Result<Option<Vec<String>>, ConfigError> {
        let allowed = self.allowed_kids.as_deref().map(str::trim).filter(|k| !k.is_empty()).map(|text| {
            text.split(',').map(str::trim).filter(|kid| !kid.is_empty()).map(String::from).collect::<Vec<_>>()
        });
        if allowed.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::new("AIGW_AUTH__ALLOWED_KIDS", "names no key id; list them comma-separated"));
        }
        Ok(allowed)
    }

    fn max_token_lifetime(&self) -> Result<Duration, ConfigError> {
        // From a minute (shorter would refuse tokens GitLab has just minted) to 30 days.
        if !(60..=30 * 86_400).contains(&self.max_token_lifetime_secs) {
            return Err(ConfigError::new("AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS", "must be between 60 and 2592000"));
        }
        Ok(Duration::from_secs(self.max_token_lifetime_secs))
    }

    /// A second origin (`https://host[:port]`) the instance's `jwks_uri` may name.
    fn jwks_origin(&self) -> Result<Option<crate::auth::jwks::Origin>, ConfigError> {
        match self.jwks_origin.as_deref().map(str::trim).filter(|o| !o.is_empty()) {
            Some(text) => crate::auth::jwks::Origin::parse(text).map(Some).ok_or_else(|| {
                ConfigError::new(
                    "AIGW_AUTH__JWKS_ORIGIN",
                    format!("{text:?} is not an origin such as https://keys.example.com or http://10.0.0.5:8080"),
                )
            }),
            None => Ok(None),
        }
    }
}

impl DuoChat {
    fn timeout(&self) -> Result<Duration, ConfigError> {
        let secs = self.model_request_timeout;
        if !(1..=3600).contains(&secs) {
            return Err(ConfigError::new("AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT", "must be between 1 and 3600 seconds"));
        }
        Ok(Duration::from_secs(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::test_env as env;

    #[test]
    fn defaults_follow_gitlab() {
        let config = Config::load(None, env(&[("AIGW_GITLAB_URL", "https://gitlab.example.com/")]), false).unwrap();
        assert_eq!(config.listen.port(), 5052);
        assert_eq!(config.gitlab_url.as_deref(), Some("https://gitlab.example.com"));
        assert_eq!(config.plugins.memory_bytes, 64 << 20);
        assert_eq!(config.plugins.call_deadline, Duration::from_millis(100));
        assert_eq!(config.workers, std::thread::available_parallelism().map_or(1, usize::from));
        let one =
            Config::load(None, env(&[("AIGW_GITLAB_URL", "http://gitlab"), ("AIGW_SERVER__WORKERS", "1")]), false);
        assert_eq!(one.unwrap().workers, 1);
    }

    #[test]
    fn missing_gitlab_url_names_the_setting() {
        let err = Config::load(None, env(&[]), false).unwrap_err();
        assert_eq!(err.setting, "AIGW_GITLAB_URL");
    }

    #[test]
    fn gitlabs_metrics_variables_open_the_metrics_listener() {
        let listener = |vars: &[(&str, &str)]| {
            let mut all = vec![("AIGW_GITLAB_URL", "http://gitlab")];
            all.extend_from_slice(vars);
            Config::load(None, env(&all), false).unwrap().metrics_listen
        };
        let addr = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
        assert_eq!(listener(&[]), None, "metrics stay on the API port unless asked");
        assert_eq!(listener(&[("AIGW_FASTAPI__METRICS_PORT", "8082")]), addr("0.0.0.0:8082"));
        assert_eq!(listener(&[("AIGW_FASTAPI__METRICS_HOST", "127.0.0.1")]), addr("127.0.0.1:8082"));
        let both = [("AIGW_FASTAPI__METRICS_PORT", "9100"), ("AIGW_METRICS__LISTEN", "127.0.0.1:9090")];
        assert_eq!(listener(&both), addr("127.0.0.1:9090"), "aigw's own setting wins");
    }

    #[test]
    fn bad_values_name_the_setting_and_the_fix() {
        let cases = [
            ("AIGW_FASTAPI__API_PORT", "http"),
            ("AIGW_EGRESS__ALLOW", "10.0.0.0/8,not-a-net"),
            ("AIGW_PLUGINS__MEMORY_LIMIT_MB", "0"),
            ("AIGW_CUSTOM_MODELS__ENABLED", "maybe"),
            ("AIGW_PLUGINS__PERF_MAP", "sometimes"),
            ("AIGW_PLUGINS__DIR", ":"),
            ("AIGW_LOGGING__LEVEL", "loud=[["),
            ("AIGW_METRICS__LISTEN", "9090"),
            ("AIGW_FASTAPI__METRICS_PORT", "metrics"),
            ("AIGW_FASTAPI__METRICS_HOST", "metrics.internal"),
            ("AIGW_SERVER__WORKERS", "0"),
            ("AIGW_SERVER__WORKERS", "1025"),
            ("AIGW_SERVER__HEADER_READ_TIMEOUT_MS", "0"),
            ("AIGW_SERVER__BODY_READ_TIMEOUT_MS", "600001"),
            ("AIGW_SERVER__SHUTDOWN_GRACE_MS", "0"),
            ("AIGW_SERVER__DRAIN_DELAY_MS", "600001"),
            ("AIGW_AUTH__ALLOWED_KIDS", " , "),
            ("AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS", "59"),
            ("AIGW_AUTH__MAX_TOKEN_LIFETIME_SECS", "2592001"),
            ("AIGW_AUTH__JWKS_ORIGIN", "https://keys.example.com/oauth"),
            ("AIGW_AUTH__JWKS_ORIGIN", "ftp://keys.example.com"),
            ("AIGW_SELF_SIGNED_JWT__SIGNING_KEY", "-----BEGIN RSA PRIVATE KEY-----\nnope\n"),
        ];
        for (name, value) in cases {
            let err =
                Config::load(None, env(&[("AIGW_GITLAB_URL", "http://gitlab"), (name, value)]), false).unwrap_err();
            assert_eq!(err.setting, name, "{err}");
        }
    }

    #[test]
    fn file_values_keep_the_other_defaults_and_the_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aigw.toml");
        std::fs::write(&file, "gitlab_url = \"http://gitlab\"\n[plugins]\nmemory_limit_mb = 32\ncall_timeout_ms = 7\n")
            .unwrap();
        let config = Config::load(Some(&file), env(&[("AIGW_PLUGINS__CALL_TIMEOUT_MS", "9")]), false).unwrap();
        assert_eq!(config.plugins.memory_bytes, 32 << 20);
        assert_eq!(config.plugins.call_deadline, Duration::from_millis(9));
        assert_eq!(config.plugins.max_concurrent, 1024);
        assert_eq!(config.upstream.total_timeout, Duration::from_secs(60));
    }

    #[test]
    fn only_upper_case_names_are_read() {
        let config = Config::load(
            None,
            env(&[("AIGW_GITLAB_URL", "http://gitlab"), ("aigw_server__workers", "0"), ("AIGW_Server__Workers", "0")]),
            false,
        );
        assert!(config.is_ok(), "{config:?}");
    }

    /// The README's configuration table is what operators read: it lists every variable aigw
    /// reads, and nothing it does not.
    #[test]
    fn the_readme_lists_every_variable_and_no_other() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = readme.split("\n## Configuration\n").nth(1).unwrap().split("\n## ").next().unwrap();
        let mut documented = Vec::new();
        for row in table.lines().filter(|line| line.starts_with("| `")) {
            let first_cell = row.split('|').nth(1).unwrap();
            let mut prefix = String::new();
            for name in first_cell.split('`').skip(1).step_by(2) {
                let name = match name.strip_prefix("__") {
                    Some(key) => format!("{prefix}__{key}"),
                    None => name.to_string(),
                };
                prefix = name.rsplit_once("__").map_or(String::new(), |(section, _)| section.to_string());
                if name.starts_with("AIGW_") {
                    documented.push(name);
                }
            }
        }
        let mut read = RawConfig::variables();
        read.sort();
        documented.sort();
        assert_eq!(documented, read);
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = toml::from_str::<RawConfig>("[plugins]\nmemroy_limit_mb = 3\n").unwrap_err();
        assert!(err.to_string().contains("memroy_limit_mb"), "{err}");
    }
}
