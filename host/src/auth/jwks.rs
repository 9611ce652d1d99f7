//! The GitLab instance's signing keys: OIDC discovery → `jwks_uri`, cached, refreshed on an
//! unknown `kid` at a bounded rate, served from cache while the instance is unreachable.

use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm, PublicKeyUse};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest discovery or JWKS document accepted, bytes.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Why a refresh failed (logged; the cache keeps serving the keys it has).
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    /// The instance could not be reached or answered badly.
    #[error("{0}")]
    Fetch(#[from] crate::upstream::UpstreamError),
    /// The documents were not what OIDC discovery and JWKS promise.
    #[error("{0}")]
    Malformed(String),
    /// Discovery named a key set on another origin than the instance's (or the one allowed).
    #[error(
        "jwks_uri {0:?} is not on the instance's origin (add its origin to AIGW_AUTH__JWKS_ORIGIN if it should be)"
    )]
    ForeignKeySet(String),
}

/// One key of a published key set, as aigw sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublishedKey {
    /// Its `kid`, if it has one.
    pub(crate) kid: Option<String>,
    /// Why aigw cannot verify tokens with it; `None` when it can.
    pub(crate) unusable: Option<&'static str>,
}

/// A key set as one fetch found it.
#[derive(Debug)]
pub(crate) struct PublishedKeys {
    /// Every key in the document, in its order.
    pub(crate) keys: Vec<PublishedKey>,
    usable: HashMap<String, Arc<DecodingKey>>,
}

impl PublishedKeys {
    /// The ids of the keys tokens can be verified with.
    pub(crate) fn usable_kids(&self) -> Vec<&str> {
        self.keys.iter().filter(|key| key.unusable.is_none()).filter_map(|key| key.kid.as_deref()).collect()
    }
}

/// The scheme, host and port of an http(s) URL: where a key set may be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an http(s) URL; `None` for anything else.
    pub(crate) fn of(url: &str) -> Option<Self> {
        let uri: http::Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let authority = uri.authority()?;
        Some(Origin {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
            scheme,
        })
    }

    /// An origin written on its own (`https://host[:port]`, with at most a trailing `/`).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let uri: http::Uri = text.parse().ok()?;
        let bare = matches!(uri.path(), "" | "/") && uri.query().is_none();
        bare.then(|| Self::of(text)).flatten()
    }
}

/// Cached verification keys of one GitLab instance, by `kid`.
pub struct JwksCache {
    gitlab_url: String,
    /// Origins `jwks_uri` may name: the instance's own, and one the operator added. Discovery
    /// is a document from the network; it does not get to send aigw anywhere else.
    key_origins: Vec<Origin>,
    http: Upstream,
    keys: ArcSwap<HashMap<String, Arc<DecodingKey>>>,
    /// When the last refresh was attempted; refreshes are at least `min_refresh_interval` apart.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    min_refresh_interval: Duration,
    /// Successful refreshes, for readiness and tests.
    loaded_once: std::sync::atomic::AtomicBool,
    metrics: Arc<crate::telemetry::Metrics>,
    /// Bumped whenever the published key set changes, so verified-token caches start over.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache").field("gitlab_url", &self.gitlab_url).finish_non_exhaustive()
    }
}

impl JwksCache {
    /// An empty cache for the instance at `gitlab_url`; keys load on first use or [`Self::refresh`].
    ///
    /// Its client reaches any address but those the egress policy always refuses (link-local,
    /// metadata, unspecified): the instance's URL is the operator's own setting, and putting
    /// its address into `AIGW_EGRESS__ALLOW` would open it to request-supplied model endpoints.
    pub(crate) fn new(
        gitlab_url: String,
        extra_origin: Option<Origin>,
        settings: crate::upstream::UpstreamSettings,
        min_refresh_interval: Duration,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Result<Self, crate::upstream::UpstreamError> {
        let policy = Arc::new(crate::upstream::EgressPolicy::any_but_always_refused());
        let http = Upstream::new(policy, settings, Default::default())?;
        Ok(JwksCache {
            key_origins: Origin::of(&gitlab_url).into_iter().chain(extra_origin).collect(),
            gitlab_url,
            http,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_attempt: tokio::sync::Mutex::new(None),
            min_refresh_interval,
            loaded_once: std::sync::atomic::AtomicBool::new(false),
            metrics,
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The key with this `kid`; an unknown `kid` triggers a refresh unless one ran recently.
    pub(crate) async fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.keys.load().get(kid) {
            return Some(Arc::clone(key));
        }
        self.refresh_if_due().await;
        self.keys.load().get(kid).cloned()
    }

    /// Changes whenever the set of published keys changes.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True once keys were fetched successfully at least once.
    pub(crate) fn has_loaded(&self) -> bool {
        self.loaded_once.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refresh now unless a refresh was attempted within the minimum interval. Concurrent callers
    /// wait for the one refresh in progress instead of starting their own.
    pub(crate) async fn refresh_if_due(&self) {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return;
        }
        *last = Some(Instant::now());
        let outcome = self.refresh().await;
        self.metrics.jwks_refresh(if outcome.is_ok() { "ok" } else { "failed" });
        if let Err(error) = outcome {
            tracing::warn!(%error, gitlab_url = %self.gitlab_url, "could not refresh the instance's signing keys; serving cached keys");
        }
    }

    /// Fetch discovery and the key set and publish the usable RS256 signing keys; a set with none
    /// is refused and the current keys stay.
    pub(crate) async fn refresh(&self) -> Result<usize, JwksError> {
        let jwks_uri = self.discover().await?;
        let PublishedKeys { keys: published, usable: keys } = self.fetch_keys(&jwks_uri).await?;
        // A key set with nothing aigw can verify with is a broken answer, not a rotation to no
        // keys: the keys already held keep serving.
        if keys.is_empty() {
            return Err(JwksError::Malformed(format!(
                "{jwks_uri} holds {} keys and no usable RS256 signing key; keeping the keys already loaded",
                published.len()
            )));
        }
        let count = keys.len();
        tracing::info!(keys = count, jwks_uri, "loaded the instance's signing keys");
        let changed = {
            let current = self.keys.load();
            current.len() != keys.len() || keys.keys().any(|kid| !current.contains_key(kid))
        };
        self.keys.store(Arc::new(keys));
        if changed {
            self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.loaded_once.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(count)
    }

    /// The instance's OIDC discovery document's address.
    pub(crate) fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.gitlab_url)
    }

    /// Read discovery and return its `jwks_uri`, once it is known to be on an allowed origin.
    pub(crate) async fn discover(&self) -> Result<String, JwksError> {
        let discovery_url = self.discovery_url();
        let discovery = self.http.get_json(&discovery_url, MAX_DOCUMENT_BYTES).await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| JwksError::Malformed(format!("{discovery_url} has no jwks_uri")))?;
        if !Origin::of(jwks_uri).is_some_and(|origin| self.key_origins.contains(&origin)) {
            return Err(JwksError::ForeignKeySet(jwks_uri.to_string()));
        }
        Ok(jwks_uri.to_string())
    }

    /// Fetch the key set at `jwks_uri` (which [`Self::discover`] returned), without publishing it.
    pub(crate) async fn fetch_keys(&self, jwks_uri: &str) -> Result<PublishedKeys, JwksError> {
        let document = self.http.get_json(jwks_uri, MAX_DOCUMENT_BYTES).await?;
        let set: JwkSet = serde_json::from_value(document)
            .map_err(|e| JwksError::Malformed(format!("{jwks_uri} is not a JWK set: {e}")))?;
        let mut usable = HashMap::new();
        let keys = set
            .keys
            .iter()
            .map(|jwk| {
                let kid = jwk.common.key_id.clone();
                let unusable = match (&kid, verification_key(jwk)) {
                    (_, Err(why)) => Some(why),
                    (None, Ok(_)) => Some("it has no kid"),
                    (Some(kid), Ok(key)) => {
                        usable.insert(kid.clone(), Arc::new(key));
                        None
                    }
                };
                PublishedKey { kid, unusable }
            })
            .collect();
        Ok(PublishedKeys { keys, usable })
    }
}

/// The key to verify RS256 signatures with, or why this one is none: it must be an RSA key not
/// marked for another algorithm or use.
fn verification_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<DecodingKey, &'static str> {
    if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
        return Err("it is not an RSA key");
    }
    if !matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256)) {
        return Err("it is marked for another algorithm than RS256");
    }
    if !matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature)) {
        return Err("it is marked for another use than signatures");
    }
    DecodingKey::from_jwk(jwk).map_err(|_| "its RSA parameters do not read")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let instance = Origin::of("https://GitLab.example.com/some/path").unwrap();
        assert_eq!(Some(instance.clone()), Origin::of("https://gitlab.example.com:443/oauth/discovery/keys"));
        assert_ne!(Some(instance.clone()), Origin::of("http://gitlab.example.com/oauth/discovery/keys"));
        assert_ne!(Some(instance.clone()), Origin::of("https://gitlab.example.com:8443/keys"));
        assert_ne!(Some(instance.clone()), Origin::of("https://gitlab.example.com.evil.test/keys"));
        assert_ne!(Some(instance), Origin::of("https://gitlab.example.com@evil.test/keys"));
        assert_eq!(Origin::of("file:///etc/passwd"), None);
        assert!(Origin::parse("https://keys.example.com/").is_some());
        assert_eq!(Origin::parse("https://keys.example.com/oauth"), None);
    }

    #[tokio::test]
    async fn the_instance_client_never_reaches_always_refused_addresses() {
        let settings = crate::upstream::UpstreamSettings {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(5),
            retry: crate::upstream::retry::RetryPolicy { retries: 0, max_backoff: Duration::ZERO },
        };
        let metrics = Arc::new(crate::telemetry::Metrics::default());
        for url in ["http://169.254.169.254", "http://[fe80::1]:8080", "http://0.0.0.0:80"] {
            let cache = JwksCache::new(url.to_string(), None, settings, Duration::ZERO, Arc::clone(&metrics)).unwrap();
            let error = cache.refresh().await.unwrap_err();
            assert!(matches!(error, JwksError::Fetch(crate::upstream::UpstreamError::Refused(_))), "{url}: {error}");
        }
    }
}
