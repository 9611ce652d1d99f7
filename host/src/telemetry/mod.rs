//! Telemetry: logging set-up (`tracing`, human-readable or JSON lines) and Prometheus metrics.

pub mod metrics;

pub use metrics::Metrics;

use crate::config::Config;

/// Install the global subscriber. Call once, from the binary.
pub fn init(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = if config.log_json { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    if installed.is_err() {
        tracing::debug!("a tracing subscriber was already installed");
    }
}

tokio::task_local! {
    /// Time this request spent waiting for model servers, so the gateway's own share can be
    /// reported per request.
    static UPSTREAM_TIME: std::cell::Cell<std::time::Duration>;
}

/// Run `request` while accounting model server time; returns its output and that time.
pub async fn with_upstream_clock<F: std::future::Future>(request: F) -> (F::Output, std::time::Duration) {
    UPSTREAM_TIME
        .scope(std::cell::Cell::new(std::time::Duration::ZERO), async move {
            let output = request.await;
            (output, UPSTREAM_TIME.with(std::cell::Cell::get))
        })
        .await
}

/// Add time spent waiting for a model server to the current request's account (no-op outside one).
pub fn add_upstream_time(elapsed: std::time::Duration) {
    let _ = UPSTREAM_TIME.try_with(|total| total.set(total.get() + elapsed));
}
