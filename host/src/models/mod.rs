//! Named models and the client keys that may use them: the operator's models file, read whole
//! and swapped whole on reload, which both front doors consult below the pipeline.

mod file;

pub use file::ModelsError;

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// Why a client key or a model name was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The caller's network may not use the gateway at all (`AIGW_INGRESS__ALLOW`).
    #[error("Forbidden")]
    OutsideIngress,
    /// No key was sent.
    #[error("No API key: send it as `Authorization: Bearer <key>`")]
    MissingKey,
    /// The key is not one the operator configured.
    #[error("The API key is not valid")]
    UnknownKey,
    /// The key may not be used from the caller's address.
    #[error("This API key may not be used from this network")]
    WrongNetwork {
        /// The key's id (never the key).
        key: String,
    },
    /// No model of that name.
    #[error("The model `{0}` does not exist")]
    UnknownModel(String),
    /// The key may not use the model.
    #[error("This API key may not use the model `{model}`")]
    ModelNotAllowed {
        /// The key's id.
        key: String,
        /// The model asked for.
        model: String,
    },
}

/// A provider credential, kept out of every log line and debug output.
#[derive(Clone, Default)]
pub(crate) struct Secret(String);

impl Secret {
    /// The value, for the one place that injects it into a model request.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "<none>" } else { "<redacted>" })
    }
}

/// A model the operator named: what clients call it, and where and how it is served.
#[derive(Debug, Clone)]
pub(crate) struct NamedModel {
    /// The name clients use.
    pub(crate) name: String,
    /// Provider name, which selects the plugin (`custom_openai`, `bedrock`, …).
    pub(crate) provider: String,
    /// The model id the model server knows.
    pub(crate) model: String,
    /// The model servers; `None`: the plugin's default endpoint (Bedrock's regional one, …).
    pub(crate) pool: Option<std::sync::Arc<crate::fleet::Pool>>,
    /// The provider credential, from the environment or a file.
    pub(crate) api_key: Secret,
    /// Where the credential comes from, for `doctor` (a variable's or file's name, never the value).
    pub(crate) credential_source: String,
}

/// Which models a key may use.
#[derive(Debug, Clone)]
pub(crate) enum Allowed {
    /// Every named model (`models = ["*"]`).
    All,
    /// These names.
    Only(Vec<String>),
}

/// A client key, known by the SHA-256 of its value only.
#[derive(Clone)]
pub(crate) struct ClientKey {
    /// The key's id: what logs and metrics name.
    pub(crate) id: String,
    digest: [u8; 32],
    /// Models it may use.
    pub(crate) models: Allowed,
    /// Networks it may be used from; `None`: any.
    pub(crate) networks: Option<Vec<IpNet>>,
    /// The class of its requests in a saturated pool.
    pub(crate) class: crate::fleet::WorkClass,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKey")
            .field("id", &self.id)
            .field("models", &self.models)
            .field("networks", &self.networks)
            .field("class", &self.class)
            .finish_non_exhaustive()
    }
}

impl ClientKey {
    /// Whether the key may use the model `name`.
    pub(crate) fn allows(&self, name: &str) -> bool {
        match &self.models {
            Allowed::All => true,
            Allowed::Only(names) => names.iter().any(|allowed| allowed == name),
        }
    }
}

/// The named models and client keys in force.
#[derive(Debug, Default)]
pub struct ModelCatalog {
    models: HashMap<String, NamedModel>,
    /// In the file's order (for `/v1/models` and `doctor`).
    order: Vec<String>,
    keys: Vec<ClientKey>,
    /// The URLs GitLab reaches aigw's front door by, without a trailing `/`.
    gateway_urls: Vec<String>,
    /// The file it was read from.
    source: Option<PathBuf>,
}

/// SHA-256 of a key.
pub(crate) fn key_digest(key: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).into()
}

/// SHA-256 of a key in hex, as the models file's `sha256` holds it.
pub fn key_sha256_hex(key: &str) -> String {
    key_digest(key).iter().map(|byte| format!("{byte:02x}")).collect()
}

impl ModelCatalog {
    /// Read the models file, taking credentials from `env` (the process environment in
    /// production) and the files it names.
    pub(crate) fn load(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        previous: Option<&ModelCatalog>,
    ) -> Result<Self, ModelsError> {
        file::load(path, env, previous)
    }

    /// The pools of the named models that have several model servers or any.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &std::sync::Arc<crate::fleet::Pool>> + Clone {
        self.models().filter_map(|model| model.pool.as_ref())
    }

    /// The catalog when no models file is configured: no models, no keys.
    pub(crate) fn empty() -> Self {
        ModelCatalog::default()
    }

    /// Where the catalog was read from.
    pub(crate) fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// The named models, in the file's order.
    pub(crate) fn models(&self) -> impl Iterator<Item = &NamedModel> + Clone {
        self.order.iter().filter_map(|name| self.models.get(name))
    }

    /// Number of client keys configured.
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The client key `presented` is, if it may be used from `peer`. Every configured key is
    /// compared, in constant time, whichever matches: the time taken says nothing about which
    /// key, or how much of one, was right. A known key's id (never the key) goes to the
    /// request's log line and metrics, whether or not its network may use it.
    pub(crate) fn authenticate(
        &self,
        presented: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<&ClientKey, AccessError> {
        let presented = presented.filter(|key| !key.is_empty()).ok_or(AccessError::MissingKey)?;
        let digest = key_digest(presented);
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(AccessError::UnknownKey)?;
        crate::telemetry::note_client_key(&key.id, None);
        if let Some(networks) = &key.networks {
            let peer = peer.map(crate::upstream::egress::canonical);
            if !peer.is_some_and(|peer| networks.iter().any(|net| net.contains(&peer))) {
                return Err(AccessError::WrongNetwork { key: key.id.clone() });
            }
        }
        Ok(key)
    }

    /// The model `name`, if `key` may use it.
    pub(crate) fn authorize<'a>(&'a self, key: &ClientKey, name: &str) -> Result<&'a NamedModel, AccessError> {
        let model = self.models.get(name).ok_or_else(|| AccessError::UnknownModel(name.to_string()))?;
        if !key.allows(name) {
            return Err(AccessError::ModelNotAllowed { key: key.id.clone(), model: name.to_string() });
        }
        Ok(model)
    }

    /// Whether `endpoint` is one of the URLs aigw's own front door is reached by.
    pub(crate) fn is_gateway_url(&self, endpoint: &http::Uri) -> bool {
        let endpoint = endpoint.to_string();
        let endpoint = endpoint.trim_end_matches('/');
        self.gateway_urls.iter().any(|url| url.eq_ignore_ascii_case(endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> ModelCatalog {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("models.toml");
        std::fs::write(
            &path,
            format!(
                r#"
gateway_urls = ["http://aigw.internal:5052/v1/"]

[[models]]
name = "coder"
identifier = "custom_openai/Qwen/Qwen2.5-Coder-7B"
endpoint = "http://vllm:8000/v1"
api_key_env = "VLLM_KEY"

[[models]]
name = "claude"
identifier = "bedrock/anthropic.claude-sonnet-4-5"

[[keys]]
id = "dws"
sha256 = "{}"
models = ["coder"]
networks = ["10.0.0.0/8"]

[[keys]]
id = "admin"
sha256 = "{}"
models = ["*"]
"#,
                key_sha256_hex("sk-dws"),
                key_sha256_hex("sk-admin")
            ),
        )
        .unwrap();
        let env = |name: &str| (name == "VLLM_KEY").then(|| "vllm-secret".to_string());
        ModelCatalog::load(&path, &env, None).unwrap()
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn a_known_key_from_its_network_may_use_its_models_only() {
        let catalog = catalog();
        let key = catalog.authenticate(Some("sk-dws"), ip("10.1.2.3")).unwrap();
        assert_eq!(key.id, "dws");
        let coder = catalog.authorize(key, "coder").unwrap();
        assert_eq!((coder.provider.as_str(), coder.model.as_str()), ("custom_openai", "Qwen/Qwen2.5-Coder-7B"));
        assert_eq!(coder.api_key.expose(), "vllm-secret");
        assert!(matches!(catalog.authorize(key, "claude"), Err(AccessError::ModelNotAllowed { .. })));
        assert!(matches!(catalog.authorize(key, "nope"), Err(AccessError::UnknownModel(_))));
        let admin = catalog.authenticate(Some("sk-admin"), ip("192.0.2.1")).unwrap();
        assert!(catalog.authorize(admin, "claude").is_ok(), "`*` allows every model, from anywhere");
    }

    #[test]
    fn unknown_missing_and_misplaced_keys_are_refused() {
        let catalog = catalog();
        assert!(matches!(catalog.authenticate(None, ip("10.0.0.1")), Err(AccessError::MissingKey)));
        assert!(matches!(catalog.authenticate(Some(""), ip("10.0.0.1")), Err(AccessError::MissingKey)));
        assert!(matches!(catalog.authenticate(Some("sk-dwx"), ip("10.0.0.1")), Err(AccessError::UnknownKey)));
        assert!(matches!(
            catalog.authenticate(Some("sk-dws"), ip("192.168.1.1")),
            Err(AccessError::WrongNetwork { key }) if key == "dws"
        ));
        assert!(catalog.authenticate(Some("sk-dws"), ip("::ffff:10.9.9.9")).is_ok(), "an IPv4-mapped peer");
    }

    #[test]
    fn gateway_urls_match_without_a_trailing_slash_and_debug_hides_secrets() {
        let catalog = catalog();
        assert!(catalog.is_gateway_url(&"http://aigw.internal:5052/v1".parse().unwrap()));
        assert!(!catalog.is_gateway_url(&"http://vllm:8000/v1".parse().unwrap()));
        let shown = format!("{catalog:?}");
        assert!(!shown.contains("vllm-secret") && shown.contains("<redacted>"), "{shown}");
    }
}
