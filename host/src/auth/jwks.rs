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
pub enum JwksError {
    /// The instance could not be reached or answered badly.
    #[error("{0}")]
    Fetch(#[from] crate::upstream::UpstreamError),
    /// The documents were not what OIDC discovery and JWKS promise.
    #[error("{0}")]
    Malformed(String),
}

/// Cached verification keys of one GitLab instance, by `kid`.
pub struct JwksCache {
    gitlab_url: String,
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
    pub fn new(
        gitlab_url: String,
        http: Upstream,
        min_refresh_interval: Duration,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Self {
        JwksCache {
            gitlab_url,
            http,
            keys: ArcSwap::from_pointee(HashMap::new()),
            last_attempt: tokio::sync::Mutex::new(None),
            min_refresh_interval,
            loaded_once: std::sync::atomic::AtomicBool::new(false),
            metrics,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The key with this `kid`; an unknown `kid` triggers a refresh unless one ran recently.
    pub async fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        if let Some(key) = self.keys.load().get(kid) {
            return Some(Arc::clone(key));
        }
        self.refresh_if_due().await;
        self.keys.load().get(kid).cloned()
    }

    /// Changes whenever the set of published keys changes.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True once keys were fetched successfully at least once.
    pub fn has_loaded(&self) -> bool {
        self.loaded_once.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refresh now unless a refresh was attempted within the minimum interval. Concurrent callers
    /// wait for the one refresh in progress instead of starting their own.
    pub async fn refresh_if_due(&self) {
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

    /// Fetch discovery and the key set and publish the usable RS256 signing keys.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.gitlab_url);
        let discovery = self.http.get_json(&discovery_url, MAX_DOCUMENT_BYTES).await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| JwksError::Malformed(format!("{discovery_url} has no jwks_uri")))?;
        let document = self.http.get_json(jwks_uri, MAX_DOCUMENT_BYTES).await?;
        let set: JwkSet = serde_json::from_value(document)
            .map_err(|e| JwksError::Malformed(format!("{jwks_uri} is not a JWK set: {e}")))?;
        let keys = usable_keys(&set);
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
}

/// RSA signature keys with a `kid`, not marked for another algorithm or use.
fn usable_keys(set: &JwkSet) -> HashMap<String, Arc<DecodingKey>> {
    set.keys
        .iter()
        .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
        .filter(|jwk| matches!(jwk.common.key_algorithm, None | Some(KeyAlgorithm::RS256)))
        .filter(|jwk| matches!(jwk.common.public_key_use, None | Some(PublicKeyUse::Signature)))
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, Arc::new(key)))
        })
        .collect()
}
