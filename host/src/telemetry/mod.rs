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
