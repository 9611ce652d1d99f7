//! Raw settings as written in the TOML file or the environment, before validation.

use super::{
    Config, ConfigError, DEFAULT_EGRESS_ALLOW, DevSettings, EgressSettings, PluginSettings, UpstreamSettings,
    parse_allowlist,
};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Settings file shape; every field optional, unknown fields rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
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
    /// The standard AWS variables (environment only, never in the file).
    #[serde(skip)]
    aws: crate::upstream::aws::AwsEnvironment,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelfSignedJwt {
    signing_key: Option<String>,
    validation_key: Option<String>,
}

impl std::fmt::Debug for SelfSignedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Private keys never reach a log line, even through a debug dump of the settings.
        f.debug_struct("SelfSignedJwt")
            .field("signing_key", &self.signing_key.as_ref().map(|_| "<redacted>"))
            .field("validation_key", &self.validation_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Prompts {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Auth {
    jwks_min_refresh_ms: Option<u64>,
    bypass_external: Option<bool>,
    allowed_kids: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fastapi {
    api_host: Option<String>,
    api_port: Option<u16>,
    #[serde(default)]
    tls: Tls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    enabled: Option<bool>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ingress {
    allow: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DuoChat {
    model_request_timeout: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomModels {
    enabled: Option<bool>,
    disable_streaming: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Logging {
    level: Option<String>,
    format_json: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plugins {
    dir: Option<PathBuf>,
    memory_limit_mb: Option<u64>,
    call_timeout_ms: Option<u64>,
    max_concurrent: Option<u32>,
    reload_debounce_ms: Option<u64>,
    perf_map: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Egress {
    allow: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Upstream {
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    total_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Server {
    max_body_bytes: Option<u64>,
    workers: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Dev {
    key_file: Option<PathBuf>,
}

fn parse<T: std::str::FromStr>(name: &str, value: &str, valid: &str) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::new(name, format!("{value:?} is not {valid}")))
}

fn parse_bool(name: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(name, format!("{value:?} is not a boolean (true or false)"))),
    }
}

const INTEGER: &str = "a non-negative integer";

impl RawConfig {
    /// Apply `AIGW_*` variables over the file's values. Variables this gateway does not know are
    /// ignored: GitLab's own gateway reads many more, and operators may keep them set.
    pub fn overlay_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (name, value) in env {
            let n = name.as_str();
            match n {
                "AIGW_GITLAB_URL" => self.gitlab_url = Some(value),
                "AIGW_FASTAPI__API_HOST" => self.fastapi.api_host = Some(value),
                "AIGW_FASTAPI__API_PORT" => self.fastapi.api_port = Some(parse(n, &value, "a TCP port (0-65535)")?),
                "AIGW_CUSTOM_MODELS__ENABLED" => self.custom_models.enabled = Some(parse_bool(n, &value)?),
                "AIGW_CUSTOM_MODELS__DISABLE_STREAMING" => {
                    self.custom_models.disable_streaming = Some(parse_bool(n, &value)?)
                }
                "AIGW_FASTAPI__TLS__ENABLED" => self.fastapi.tls.enabled = Some(parse_bool(n, &value)?),
                "AIGW_FASTAPI__TLS__CERT_FILE" => self.fastapi.tls.cert_file = Some(PathBuf::from(value)),
                "AIGW_FASTAPI__TLS__KEY_FILE" => self.fastapi.tls.key_file = Some(PathBuf::from(value)),
                "AIGW_INGRESS__ALLOW" => self.ingress.allow = Some(value),
                "AIGW_METRICS__LISTEN" => self.metrics.listen = Some(value),
                "AIGW_AUTH__BYPASS_EXTERNAL" => self.auth.bypass_external = Some(parse_bool(n, &value)?),
                "AIGW_AUTH__ALLOWED_KIDS" => self.auth.allowed_kids = Some(value),
                "AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT" => {
                    self.duo_chat.model_request_timeout = Some(parse(n, &value, "a number of seconds")?)
                }
                "AIGW_LOGGING__LEVEL" => self.logging.level = Some(value),
                "AIGW_LOGGING__FORMAT_JSON" => self.logging.format_json = Some(parse_bool(n, &value)?),
                "AIGW_PLUGINS__DIR" => self.plugins.dir = Some(PathBuf::from(value)),
                "AIGW_PLUGINS__MEMORY_LIMIT_MB" => self.plugins.memory_limit_mb = Some(parse(n, &value, INTEGER)?),
                "AIGW_PLUGINS__CALL_TIMEOUT_MS" => self.plugins.call_timeout_ms = Some(parse(n, &value, INTEGER)?),
                "AIGW_PLUGINS__PERF_MAP" => self.plugins.perf_map = Some(parse_bool(n, &value)?),
                "AIGW_PLUGINS__MAX_CONCURRENT" => self.plugins.max_concurrent = Some(parse(n, &value, INTEGER)?),
                "AIGW_PLUGINS__RELOAD_DEBOUNCE_MS" => {
                    self.plugins.reload_debounce_ms = Some(parse(n, &value, INTEGER)?)
                }
                "AIGW_EGRESS__ALLOW" => self.egress.allow = Some(value),
                "AIGW_UPSTREAM__CONNECT_TIMEOUT_MS" => {
                    self.upstream.connect_timeout_ms = Some(parse(n, &value, INTEGER)?)
                }
                "AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS" => {
                    self.upstream.first_byte_timeout_ms = Some(parse(n, &value, INTEGER)?)
                }
                "AIGW_UPSTREAM__IDLE_TIMEOUT_MS" => self.upstream.idle_timeout_ms = Some(parse(n, &value, INTEGER)?),
                "AIGW_UPSTREAM__TOTAL_TIMEOUT_MS" => self.upstream.total_timeout_ms = Some(parse(n, &value, INTEGER)?),
                "AIGW_SERVER__MAX_BODY_BYTES" => self.server.max_body_bytes = Some(parse(n, &value, INTEGER)?),
                "AIGW_SERVER__WORKERS" => self.server.workers = Some(parse(n, &value, INTEGER)?),
                "AIGW_AUTH__JWKS_MIN_REFRESH_MS" => self.auth.jwks_min_refresh_ms = Some(parse(n, &value, INTEGER)?),
                "AIGW_SELF_SIGNED_JWT__SIGNING_KEY" => self.self_signed_jwt.signing_key = Some(value),
                "AIGW_SELF_SIGNED_JWT__VALIDATION_KEY" => self.self_signed_jwt.validation_key = Some(value),
                "AIGW_PROMPTS__DIR" => self.prompts.dir = Some(PathBuf::from(value)),
                "AIGW_DEV__KEY_FILE" => self.dev.key_file = Some(PathBuf::from(value)),
                _ => {
                    self.aws.set(n, value);
                }
            }
        }
        Ok(())
    }

    /// Check every value and fill in defaults, section by section in a fixed order (so that of
    /// several bad settings, the same one is always reported).
    pub fn validate(self, dev: bool) -> Result<Config, ConfigError> {
        let listen = self.fastapi.listen(dev)?;
        let gitlab_url = gitlab_url(self.gitlab_url, dev)?;
        let log_level = self.logging.level()?;
        let plugins = self.plugins.validate()?;
        let egress = self.egress.validate()?;
        let upstream = self.upstream.validate()?;
        let (max_body_bytes, workers) = self.server.validate()?;
        let gateway_keys = self.self_signed_jwt.keys()?;
        let tls = self.fastapi.tls.validate()?;
        let ingress_allow = self.ingress.validate()?;
        let metrics_listen = self.metrics.validate()?;
        let allowed_kids = self.auth.allowed_kids()?;
        let chat_timeout = self.duo_chat.timeout()?;
        Ok(Config {
            listen,
            tls,
            ingress_allow,
            bypass_auth: self.auth.bypass_external.unwrap_or(false),
            disable_streaming: self.custom_models.disable_streaming.unwrap_or(false),
            chat_timeout,
            gateway_keys,
            gitlab_url,
            custom_models_enabled: self.custom_models.enabled.unwrap_or(true),
            log_level,
            log_json: self.logging.format_json.unwrap_or(false),
            plugins,
            egress,
            upstream,
            max_body_bytes,
            workers,
            prompts_dir: self.prompts.dir,
            allowed_kids,
            jwks_min_refresh: Duration::from_millis(self.auth.jwks_min_refresh_ms.unwrap_or(10_000)),
            aws: self.aws,
            metrics_listen,
            dev: dev.then(|| DevSettings {
                key_file: self.dev.key_file.unwrap_or_else(|| PathBuf::from(".aigw/dev-signing-key.pem")),
            }),
        })
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
        Ok(SocketAddr::new(host, self.api_port.unwrap_or(5052)))
    }
}

impl Tls {
    fn validate(self) -> Result<Option<super::TlsSettings>, ConfigError> {
        if !self.enabled.unwrap_or(false) {
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
        let level = self.level.clone().unwrap_or_else(|| "info".to_string());
        tracing_subscriber::EnvFilter::try_new(&level).map_err(|e| {
            ConfigError::new("AIGW_LOGGING__LEVEL", format!("{level:?}: {e} (use e.g. info, debug, warn)"))
        })?;
        Ok(level)
    }
}

impl Plugins {
    fn validate(self) -> Result<PluginSettings, ConfigError> {
        let memory_mb = self.memory_limit_mb.unwrap_or(64);
        if !(1..=4096).contains(&memory_mb) {
            return Err(ConfigError::new("AIGW_PLUGINS__MEMORY_LIMIT_MB", "must be between 1 and 4096"));
        }
        let call_ms = self.call_timeout_ms.unwrap_or(100);
        if !(1..=60_000).contains(&call_ms) {
            return Err(ConfigError::new("AIGW_PLUGINS__CALL_TIMEOUT_MS", "must be between 1 and 60000"));
        }
        let max_concurrent = self.max_concurrent.unwrap_or(1024);
        if !(1..=100_000).contains(&max_concurrent) {
            return Err(ConfigError::new("AIGW_PLUGINS__MAX_CONCURRENT", "must be between 1 and 100000"));
        }
        Ok(PluginSettings {
            dir: self.dir.unwrap_or_else(|| PathBuf::from("target/plugins")),
            memory_bytes: usize::try_from(memory_mb << 20)
                .map_err(|_| ConfigError::new("AIGW_PLUGINS__MEMORY_LIMIT_MB", "too large for this machine"))?,
            call_deadline: Duration::from_millis(call_ms),
            max_concurrent,
            reload_debounce: Duration::from_millis(self.reload_debounce_ms.unwrap_or(250)),
            perf_map: self.perf_map.unwrap_or(false),
        })
    }
}

impl Egress {
    fn validate(self) -> Result<EgressSettings, ConfigError> {
        let allow_text = self.allow.unwrap_or_else(|| DEFAULT_EGRESS_ALLOW.to_string());
        Ok(EgressSettings { allow: parse_allowlist("AIGW_EGRESS__ALLOW", &allow_text)? })
    }
}

impl Upstream {
    fn validate(&self) -> Result<UpstreamSettings, ConfigError> {
        let timeout = |name: &str, value: Option<u64>, default_ms: u64| -> Result<Duration, ConfigError> {
            match value.unwrap_or(default_ms) {
                0 => Err(ConfigError::new(name, "must be at least 1 millisecond")),
                ms => Ok(Duration::from_millis(ms)),
            }
        };
        Ok(UpstreamSettings {
            connect_timeout: timeout("AIGW_UPSTREAM__CONNECT_TIMEOUT_MS", self.connect_timeout_ms, 5_000)?,
            first_byte_timeout: timeout("AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS", self.first_byte_timeout_ms, 60_000)?,
            idle_timeout: timeout("AIGW_UPSTREAM__IDLE_TIMEOUT_MS", self.idle_timeout_ms, 30_000)?,
            total_timeout: timeout("AIGW_UPSTREAM__TOTAL_TIMEOUT_MS", self.total_timeout_ms, 60_000)?,
        })
    }
}

impl Server {
    /// The body limit in bytes and the number of serving threads.
    fn validate(&self) -> Result<(usize, usize), ConfigError> {
        let max_body = self.max_body_bytes.unwrap_or(4 << 20);
        if !(1024..=(256 << 20)).contains(&max_body) {
            return Err(ConfigError::new("AIGW_SERVER__MAX_BODY_BYTES", "must be between 1024 and 268435456"));
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let workers = match self.workers {
            None => cores,
            Some(n @ 1..=1024) => n as usize,
            Some(_) => return Err(ConfigError::new("AIGW_SERVER__WORKERS", "must be between 1 and 1024")),
        };
        Ok((max_body as usize, workers))
    }
}

impl SelfSignedJwt {
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
}

impl DuoChat {
    fn timeout(&self) -> Result<Duration, ConfigError> {
        let secs = self.model_request_timeout.unwrap_or(30);
        if !(1..=3600).contains(&secs) {
            return Err(ConfigError::new("AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT", "must be between 1 and 3600 seconds"));
        }
        Ok(Duration::from_secs(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

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
    fn bad_values_name_the_setting_and_the_fix() {
        let cases = [
            ("AIGW_FASTAPI__API_PORT", "http"),
            ("AIGW_EGRESS__ALLOW", "10.0.0.0/8,not-a-net"),
            ("AIGW_PLUGINS__MEMORY_LIMIT_MB", "0"),
            ("AIGW_CUSTOM_MODELS__ENABLED", "maybe"),
            ("AIGW_PLUGINS__PERF_MAP", "sometimes"),
            ("AIGW_LOGGING__LEVEL", "loud=[["),
            ("AIGW_METRICS__LISTEN", "9090"),
            ("AIGW_SERVER__WORKERS", "0"),
            ("AIGW_SERVER__WORKERS", "1025"),
            ("AIGW_AUTH__ALLOWED_KIDS", " , "),
            ("AIGW_SELF_SIGNED_JWT__SIGNING_KEY", "-----BEGIN RSA PRIVATE KEY-----\nnope\n"),
        ];
        for (name, value) in cases {
            let err =
                Config::load(None, env(&[("AIGW_GITLAB_URL", "http://gitlab"), (name, value)]), false).unwrap_err();
            assert_eq!(err.setting, name, "{err}");
        }
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let err = toml::from_str::<RawConfig>("[plugins]\nmemroy_limit_mb = 3\n").unwrap_err();
        assert!(err.to_string().contains("memroy_limit_mb"), "{err}");
    }
}
