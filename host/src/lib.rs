//! aigw: a self-hosted AI gateway for GitLab Duo whose provider wire formats run as sandboxed
//! WebAssembly components. The binary is a thin CLI over [`Gateway`].

// Denied, not forbidden: the one exception, loading plugin machine code this process compiled
// and checksummed (plugins::cache), is allowed at its site with its reasoning.
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub(crate) mod admission;
pub(crate) mod api;
pub mod auth;
pub mod config;
pub mod doctor;
pub mod error;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod json_cost;
pub mod models;
pub(crate) mod openai;
pub mod pipeline;
pub mod plugins;
pub mod prompts;
pub(crate) mod response;
pub(crate) mod server;
pub(crate) mod state;
pub mod telemetry;
pub mod upstream;
pub(crate) mod watch;

use crate::auth::{JwksCache, SigningKey, Verifier};
use crate::config::Config;
use crate::plugins::{PluginRegistry, PluginRuntime, SandboxLimits};
use crate::state::AppState;
use crate::upstream::{EgressPolicy, Upstream};
use crate::watch::DirWatcher;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Issuer of development tokens when no GitLab URL is configured.
pub const DEV_ISSUER: &str = "aigw-dev";

/// How often the instance's key set is refreshed even when no unknown `kid` asks for it.
pub const JWKS_REFRESH_PERIOD: Duration = Duration::from_secs(3600);

/// Longest a fetch from the GitLab instance (discovery, key set) may take, whatever the
/// model-call timeouts are: the documents are small, and requests wait on them.
pub(crate) const INSTANCE_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Wasm runtime could not be created.
    #[error("plugin runtime: {0}")]
    Plugins(#[from] plugins::PluginError),
    /// The plugins directory does not exist.
    #[error("plugins directory {0}")]
    PluginsDir(String),
    /// The plugins directory cannot be watched.
    #[error("plugins directory {dir}: {source}")]
    Watch {
        /// The directory.
        dir: String,
        /// Why.
        source: notify::Error,
    },
    /// The prompts (built in, under AIGW_PROMPTS__DIR, or GitLab's under AIGW_PROMPTS__GITLAB_DIR) do not load.
    #[error("prompt registry: {0}")]
    Prompts(#[from] prompts::PromptError),
    /// The models file (AIGW_MODELS__FILE) does not load.
    #[error("models file {0}")]
    Models(#[from] models::ModelsError),
    /// Outbound client setup failed.
    #[error("outbound client: {0}")]
    Upstream(#[from] upstream::UpstreamError),
    /// The HTTPS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] server::tls::TlsError),
    /// The listen address is unavailable.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Extra trust given at start-up besides the GitLab instance.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// Locally held key whose tokens are accepted, with their issuer (development mode).
    pub local_key: Option<(SigningKey, String)>,
}

/// A running gateway. Dropping it without [`Gateway::shutdown`] stops it at once, cancelling
/// requests in flight.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    state: Arc<AppState>,
    /// The serving threads; `None` once drained.
    workers: Option<server::workers::Workers>,
    /// Periodic work (key refresh), stopped with the gateway.
    background: Vec<tokio::task::JoinHandle<()>>,
    _watchers: Vec<DirWatcher>,
}

impl Gateway {
    /// Load plugins and prompts, bind the listener and start serving.
    pub async fn start(config: Config, options: StartOptions) -> Result<Self, StartError> {
        // Fail fast on what the operator configured before doing any expensive work.
        let tls = match &config.tls {
            Some(settings) => Some(server::tls::acceptor(settings)?),
            None => None,
        };
        if let Some(missing) = config.plugins.dirs.iter().find(|dir| !dir.is_dir()) {
            return Err(StartError::PluginsDir(format!(
                "{} is not a directory (AIGW_PLUGINS__DIR; `make build` fills target/plugins)",
                missing.display()
            )));
        }
        let prompts = prompts::PromptRegistry::load(&config.prompts)?;
        let models = match &config.model_api.file {
            Some(path) => models::ModelCatalog::load(path, &|name| std::env::var(name).ok(), None)?,
            None => models::ModelCatalog::empty(),
        };
        let metrics = Arc::new(telemetry::Metrics::default());
        let (registry, mut watchers) = load_plugins(&config, &metrics).await?;
        let (verifier, background) = build_verifier(&config, options, &metrics)?;
        let policy = Arc::new(EgressPolicy::new(config.egress.allow.clone()));
        // One model-server client (and connection pool) per worker thread.
        let first = Upstream::new(policy, config.upstream, config.aws.clone())?;
        let mut upstreams: Vec<Upstream> = (1..config.workers).map(|_| first.with_own_pool()).collect();
        upstreams.push(first);
        if config.bypass_auth {
            tracing::warn!(
                "AIGW_AUTH__BYPASS_EXTERNAL is true: AUTHENTICATION IS OFF. Anyone who can reach {} can use \
                 every model endpoint. Never run this way outside an isolated test set-up.",
                config.listen
            );
        }
        let listen_error = |source| StartError::Listen { addr: config.listen, source };
        let listener = std::net::TcpListener::bind(config.listen).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let addr = listener.local_addr().map_err(listen_error)?;
        let mut background = background;
        let mut metrics_addr = None;
        if let Some(metrics_listen) = config.metrics_listen {
            let metrics_listener = tokio::net::TcpListener::bind(metrics_listen)
                .await
                .map_err(|source| StartError::Listen { addr: metrics_listen, source })?;
            metrics_addr = metrics_listener.local_addr().ok();
            background.push(tokio::spawn(server::serve_metrics(
                metrics_listener,
                Arc::clone(&metrics),
                config.header_read_timeout,
            )));
        }
        let connections = admission::Admission::new(admission::fit_to_file_limit(config.max_connections));
        let (open, cap) = (Arc::clone(&connections), connections.cap() as u64);
        metrics.gauge("aigw_open_connections", "Client connections open now.", move || open.open() as u64);
        metrics.gauge(
            "aigw_connection_cap",
            "Client connections allowed at once: AIGW_SERVER__MAX_CONNECTIONS, lowered to fit the open-file limit.",
            move || cap,
        );
        let state = Arc::new(AppState {
            prompts: arc_swap::ArcSwap::from_pointee(prompts),
            models: arc_swap::ArcSwap::from_pointee(models),
            config,
            verifier,
            plugins: registry,
            upstreams,
            metrics,
            connections,
            draining: std::sync::atomic::AtomicBool::new(false),
        });
        state.watch_pools();
        let pools = Arc::downgrade(&state);
        state.metrics.section(move |out| {
            if let Some(state) = pools.upgrade() {
                fleet::render_metrics(state.models.load().pools(), out);
            }
        });
        // Either prompt directory changing reloads both, so that a reload never mixes sets.
        for dir in [&state.config.prompts.dir, &state.config.prompts.gitlab_dir].into_iter().flatten() {
            watchers.push(watch_state(&state, dir, true, AppState::reload_prompts)?);
        }
        // The models file's directory: editors and Kubernetes (a ConfigMap's symlink swap) replace
        // the file rather than write it in place.
        if let Some(file) = &state.config.model_api.file {
            let dir = file.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
            watchers.push(watch_state(&state, dir, false, AppState::reload_models)?);
        }
        let workers =
            server::workers::Workers::start(state.config.workers, &listener, tls, &state, state.config.shutdown_grace)
                .map_err(|source| StartError::Listen { addr, source })?;
        tracing::info!(%addr, metrics = ?metrics_addr, workers = state.config.workers, "aigw listening");
        Ok(Gateway { addr, metrics_addr, state, workers: Some(workers), background, _watchers: watchers })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the separate metrics listener, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The plugin registry (to reload or inspect).
    pub fn plugins(&self) -> &Arc<PluginRegistry> {
        &self.state.plugins
    }

    /// Drain, then stop: readiness turns 503 at once and the listener keeps accepting for the
    /// drain delay (`AIGW_SERVER__DRAIN_DELAY_MS`), so that a load balancer stops sending here
    /// first; then it stops accepting and requests in flight get the grace period to finish.
    pub async fn shutdown(mut self) {
        self.state.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let delay = self.state.config.drain_delay;
        if !delay.is_zero() {
            tracing::info!(?delay, "draining: readiness answers 503; still accepting for the drain delay");
            tokio::time::sleep(delay).await;
        }
        if let Some(workers) = self.workers.take() {
            tracing::info!(grace = ?self.state.config.shutdown_grace, "no longer accepting; finishing requests in flight");
            workers.drain().await;
        }
    }
}

/// The Wasm runtime with the configured sandbox limits and compiled-plugin cache.
pub(crate) fn plugin_runtime(config: &Config) -> Result<Arc<PluginRuntime>, plugins::PluginError> {
    let limits = SandboxLimits {
        memory_bytes: config.plugins.memory_bytes,
        call_deadline: config.plugins.call_deadline,
        max_concurrent: config.plugins.max_concurrent,
    };
    let options = plugins::runtime::RuntimeOptions {
        perf_map: config.plugins.perf_map,
        cache_dir: config.plugins.cache_dir.clone(),
    };
    PluginRuntime::with_options(limits, options)
}

/// Run `reload` on the shared state whenever `dir` changes (debounced as plugin reloads are).
fn watch_state(
    state: &Arc<AppState>,
    dir: &std::path::Path,
    recursive: bool,
    reload: fn(&AppState),
) -> Result<DirWatcher, StartError> {
    let watched = Arc::clone(state);
    let run = move || {
        let state = Arc::clone(&watched);
        async move { reload(&state) }
    };
    DirWatcher::start(dir, recursive, state.config.plugins.reload_debounce, run)
        .map_err(|source| StartError::Watch { dir: dir.display().to_string(), source })
}

/// Compile the plugins directory's components and watch it for changes.
async fn load_plugins(
    config: &Config,
    metrics: &Arc<telemetry::Metrics>,
) -> Result<(Arc<PluginRegistry>, Vec<DirWatcher>), StartError> {
    let runtime = plugin_runtime(config)?;
    let (slots, stores, ready) = (Arc::clone(&runtime), Arc::clone(&runtime), Arc::clone(&runtime));
    metrics.gauge(
        "aigw_plugin_slots_in_use",
        "Plugin sandbox slots held by requests in flight (AIGW_PLUGINS__MAX_CONCURRENT is the limit).",
        move || slots.slots_in_use() as u64,
    );
    metrics.gauge(
        "aigw_plugin_stores_alive",
        "Plugin stores alive; a request waiting on its model server holds a slot but no store.",
        move || stores.stores_alive() as u64,
    );
    metrics.gauge(
        "aigw_plugin_stores_ready",
        "Plugin stores instantiated ahead for the next requests, untouched (at most 4 per plugin, 16 in all).",
        move || ready.stores_ready() as u64,
    );
    let registry = Arc::new(PluginRegistry::new(runtime, config.plugins.dirs.clone()));
    let report = registry.reload().await;
    metrics.reloads(&report);
    let dirs = std::env::join_paths(&config.plugins.dirs).unwrap_or_default();
    tracing::info!(
        dirs = %dirs.to_string_lossy(),
        loaded = report.loaded.len(),
        rejected = report.rejected.len(),
        providers = %registry.snapshot().provider_names().join(","),
        "plugins loaded"
    );
    // One watch per directory; any change rescans them all (reloads are serialised).
    let mut watchers = Vec::new();
    for dir in &config.plugins.dirs {
        let (watched, reload_metrics) = (Arc::clone(&registry), Arc::clone(metrics));
        let watcher = DirWatcher::start(dir, false, config.plugins.reload_debounce, move || {
            let (registry, metrics) = (Arc::clone(&watched), Arc::clone(&reload_metrics));
            async move {
                let report = registry.reload().await;
                metrics.reloads(&report);
                tracing::info!(
                    loaded = report.loaded.len(),
                    rejected = report.rejected.len(),
                    unloaded = report.unloaded.len(),
                    "plugins reloaded"
                );
            }
        })
        .map_err(|source| StartError::Watch { dir: dir.display().to_string(), source })?;
        watchers.push(watcher);
    }
    Ok((registry, watchers))
}

/// Trust the GitLab instance's keys (warmed now, refreshed hourly by the returned task), the
/// gateway's own keys and any local development key.
fn build_verifier(
    config: &Config,
    options: StartOptions,
    metrics: &Arc<telemetry::Metrics>,
) -> Result<(Verifier, Vec<tokio::task::JoinHandle<()>>), StartError> {
    let mut verifier = Verifier::new().max_token_lifetime(config.max_token_lifetime);
    let mut background = Vec::new();
    if let Some(gitlab_url) = &config.gitlab_url {
        let jwks = Arc::new(instance_keys(config, gitlab_url, metrics)?);
        let refresher = Arc::clone(&jwks);
        // Warm the cache without delaying start-up (an unreachable instance is retried on
        // demand), then refresh periodically so keys the instance withdrew stop verifying.
        background.push(tokio::spawn(async move {
            loop {
                refresher.refresh_if_due().await;
                tokio::time::sleep(JWKS_REFRESH_PERIOD).await;
            }
        }));
        verifier = verifier.trust_instance(gitlab_url, jwks, config.allowed_kids.clone());
    }
    if !config.gateway_keys.is_empty() {
        let keys: Vec<&SigningKey> = config.gateway_keys.iter().collect();
        verifier = verifier.trust_gateway_keys(&keys);
    }
    if let Some((key, issuer)) = options.local_key {
        verifier = verifier.trust_local_key(&issuer, key.kid(), key.decoding_key().clone());
    }
    Ok((verifier, background))
}

/// The GitLab instance's key cache, empty until refreshed; its fetches get
/// [`INSTANCE_FETCH_TIMEOUT`].
pub(crate) fn instance_keys(
    config: &Config,
    gitlab_url: &str,
    metrics: &Arc<telemetry::Metrics>,
) -> Result<JwksCache, upstream::UpstreamError> {
    let mut gitlab_settings = config.upstream;
    gitlab_settings.total_timeout = INSTANCE_FETCH_TIMEOUT;
    gitlab_settings.first_byte_timeout = INSTANCE_FETCH_TIMEOUT;
    JwksCache::new(
        gitlab_url.to_string(),
        config.jwks_origin.clone(),
        gitlab_settings,
        config.jwks_min_refresh,
        Arc::clone(metrics),
    )
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Dropping the workers (when not drained) stops them at once.
        for task in &self.background {
            task.abort();
        }
    }
}
