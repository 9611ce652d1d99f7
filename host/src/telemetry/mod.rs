//! Telemetry: logging set-up (`tracing`, human-readable or JSON lines) and Prometheus metrics.

pub(crate) mod metrics;

pub(crate) use metrics::Metrics;

/// Install the global subscriber with the `level` filter (`AIGW_LOGGING__LEVEL`), as JSON lines
/// when `json` (`AIGW_LOGGING__FORMAT_JSON`). Call once, from the binary.
pub fn init(level: &str, json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file, a pipe or a log collector gets plain text
    // (escape codes in stored logs break searches and parsers).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    let installed = if json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}

/// What one request learned on its way through the gateway, for its log line: time spent
/// waiting for model servers, which model and plugin served it, and the tokens reported.
#[derive(Debug, Default, Clone)]
pub(crate) struct RequestFacts {
    /// Time spent waiting for model servers.
    pub(crate) upstream: std::time::Duration,
    /// Provider name of the model call.
    pub(crate) provider: Option<String>,
    /// Served model id.
    pub(crate) model: Option<String>,
    /// `name@version` of the plugin that translated the call.
    pub(crate) plugin: Option<String>,
    /// Prompt tokens reported.
    pub(crate) input_tokens: u64,
    /// Generated tokens reported.
    pub(crate) output_tokens: u64,
    /// Why the model call failed, with the model server's own words when it sent some.
    pub(crate) upstream_error: Option<String>,
    /// The answer's stream ended by a failure, even one the endpoint reported in-band (the
    /// chat agent's `error` event) in a body that otherwise ended cleanly.
    pub(crate) stream_failed: bool,
    /// The caller's realm, from its token's `gitlab_realm` claim.
    pub(crate) gitlab_realm: Option<String>,
    /// The caller's root namespace, from its token's `gitlab_root_namespace_id` claim.
    pub(crate) root_namespace_id: Option<String>,
    /// The id of the client key the caller presented (never the key).
    pub(crate) client_key: Option<String>,
    /// The named model the request used.
    pub(crate) named_model: Option<String>,
}

/// Facts shared between the request's task and its streamed body (which outlives the task).
pub(crate) type SharedFacts = std::sync::Arc<std::sync::Mutex<RequestFacts>>;

tokio::task_local! {
    static FACTS: SharedFacts;
}

/// Run `request` with `facts` as the current request's account.
pub(crate) async fn with_facts<F: std::future::Future>(facts: SharedFacts, request: F) -> F::Output {
    FACTS.scope(facts, request).await
}

/// The current request's facts (`None` outside a request).
pub(crate) fn current_facts() -> Option<SharedFacts> {
    FACTS.try_with(std::sync::Arc::clone).ok()
}

/// Note the client key (its id) and the named model of the current request, if any.
pub(crate) fn note_client_key(key: &str, named_model: Option<&str>) {
    if let Some(facts) = current_facts() {
        record(&facts, |f| {
            f.client_key = Some(key.to_string());
            if let Some(named_model) = named_model {
                f.named_model = Some(named_model.to_string());
            }
        });
    }
}

/// Update `facts`; a poisoned lock (a panic elsewhere) still gets the update.
pub(crate) fn record(facts: &SharedFacts, update: impl FnOnce(&mut RequestFacts)) {
    update(&mut facts.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
}
