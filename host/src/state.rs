//! The state request handlers share: configuration, the verifier, plugins, prompts, metrics, and
//! each worker's own model-server client.

use crate::auth::Verifier;
use crate::config::Config;
use crate::plugins::PluginRegistry;
use crate::prompts::PromptRegistry;
use crate::upstream::Upstream;
use std::sync::Arc;

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub(crate) struct AppState {
    /// Validated configuration.
    pub config: Config,
    /// Caller authentication.
    pub verifier: Verifier,
    /// Loaded provider plugins.
    pub plugins: Arc<PluginRegistry>,
    /// Named models and client keys; swapped whole when the models file changes.
    pub models: arc_swap::ArcSwap<crate::models::ModelCatalog>,
    /// Prompt templates; swapped whole when the prompts directory changes.
    pub prompts: arc_swap::ArcSwap<PromptRegistry>,
    /// Clients for model servers (egress-policed), one per serving thread: see [`AppState::for_worker`].
    pub upstreams: Vec<Upstream>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// Open client connections and their cap.
    pub(crate) connections: Arc<crate::admission::Admission>,
    /// Set when shutdown begins: readiness answers 503 and HTTP/1 answers close their
    /// connection, so that a load balancer moves callers elsewhere during the drain delay.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// What a request served by worker `worker` sees: this state, and that worker's own
    /// model-server client, so that pooled connections are driven by the thread that uses them.
    pub(crate) fn for_worker(&self, worker: usize) -> RequestState<'_> {
        RequestState { shared: self, upstream: &self.upstreams[worker % self.upstreams.len()], peer: None }
    }

    /// What a request from `peer` served by worker `worker` sees.
    pub(crate) fn for_request(&self, worker: usize, peer: std::net::IpAddr) -> RequestState<'_> {
        RequestState { peer: Some(peer), ..self.for_worker(worker) }
    }

    /// The named models and client keys in force; a request keeps the set it started with.
    pub(crate) fn models(&self) -> Arc<crate::models::ModelCatalog> {
        self.models.load_full()
    }

    /// Read the models file again; a file that does not load keeps the last good set in place.
    pub(crate) fn reload_models(&self) {
        let Some(path) = &self.config.model_api.file else { return };
        let previous = self.models.load_full();
        match crate::models::ModelCatalog::load(path, &|name| std::env::var(name).ok(), Some(&previous)) {
            Ok(catalog) => {
                let (models, keys) = (catalog.models().count(), catalog.key_count());
                self.models.store(Arc::new(catalog));
                self.watch_pools();
                tracing::info!(file = %path.display(), models, keys, "models reloaded");
            }
            Err(error) => tracing::warn!(%error, "models file rejected; keeping the models and keys already loaded"),
        }
    }

    /// Start reading the members of the models' pools in the background, as their settings ask
    /// (each reader stops when its pool is replaced), through a client of its own.
    pub(crate) fn watch_pools(&self) {
        let Some(upstream) = self.upstreams.first() else { return };
        let reader: Arc<dyn crate::fleet::Reader> = Arc::new(upstream.with_own_pool());
        for pool in self.models.load().pools() {
            crate::fleet::watch(pool, Arc::clone(&reader));
        }
    }

    /// Whether shutdown has begun (see [`AppState::draining`]).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The current prompt registry; a request keeps the one it started with.
    pub(crate) fn prompts(&self) -> Arc<PromptRegistry> {
        self.prompts.load_full()
    }

    /// Rebuild the registry from the built-in prompts and the configured directories; a set that
    /// does not load keeps the last good registry in place.
    pub(crate) fn reload_prompts(&self) {
        match PromptRegistry::load(&self.config.prompts) {
            Ok(registry) => {
                self.prompts.store(Arc::new(registry));
                tracing::info!(sources = ?self.config.prompts, "prompts reloaded");
            }
            Err(error) => tracing::warn!(%error, "prompt files rejected; keeping the prompts already loaded"),
        }
    }
}

/// The state one request is handled with: the shared [`AppState`] (which it dereferences to)
/// and the model-server client of the worker serving it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestState<'a> {
    shared: &'a AppState,
    /// The serving worker's model-server client and connection pool.
    pub upstream: &'a Upstream,
    /// The caller's address (`None` outside a request, as in `doctor`).
    pub peer: Option<std::net::IpAddr>,
}

impl std::ops::Deref for RequestState<'_> {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        self.shared
    }
}
