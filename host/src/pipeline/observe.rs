//! Where a model call's numbers go: the Prometheus metrics and the request's log facts, written
//! in one place so the pipeline reads as its steps.

use super::ModelTarget;
use crate::error::GatewayError;
use crate::plugins::runtime::PluginIdentity;
use crate::plugins::{PluginError, wit};
use crate::telemetry::{Metrics, SharedFacts};
use crate::upstream::UpstreamError;
use std::sync::Arc;
use std::time::Duration;

/// The observer of one model call.
pub(super) struct Observer {
    metrics: Arc<Metrics>,
    /// The request's log facts (`None` outside a request, as in benchmarks).
    facts: Option<SharedFacts>,
    /// Served model id.
    model: String,
    /// Provider name.
    provider: String,
    /// Plugin name and version.
    plugin: String,
    plugin_version: String,
}

impl Observer {
    /// Start observing a call to `target` through `plugin`, and note both in the request's log facts.
    pub(super) fn new(metrics: &Arc<Metrics>, target: &ModelTarget, plugin: &PluginIdentity) -> Self {
        let facts = crate::telemetry::current_facts();
        if let Some(facts) = &facts {
            crate::telemetry::record(facts, |f| {
                f.provider = Some(target.provider.clone());
                f.model = Some(target.model.clone());
                f.plugin = Some(format!("{}@{}", plugin.name, plugin.version));
            });
        }
        Observer {
            metrics: Arc::clone(metrics),
            facts,
            model: target.model.clone(),
            provider: target.provider.clone(),
            plugin: plugin.name.clone(),
            plugin_version: plugin.version.clone(),
        }
    }

    /// An observer outside any request, counting into metrics of its own.
    pub(super) fn unrecorded(plugin: &PluginIdentity) -> Self {
        Observer {
            metrics: Arc::new(Metrics::default()),
            facts: None,
            model: String::new(),
            provider: String::new(),
            plugin: plugin.name.clone(),
            plugin_version: plugin.version.clone(),
        }
    }

    /// A plugin export returned after `elapsed`.
    pub(super) fn plugin_call(&self, export: &'static str, elapsed: Duration) {
        self.metrics.plugin_call(&self.plugin, export, elapsed);
    }

    /// Plugin traps and limits are counted and logged with the plugin's identity; the caller gets
    /// a generic body.
    pub(super) fn plugin_failed(&self, error: PluginError) -> GatewayError {
        let kind = match &error {
            PluginError::Guest(_)
            | PluginError::UnknownProvider { .. }
            | PluginError::NoEmbeddings { .. }
            | PluginError::NoChat { .. } => None,
            PluginError::Invalid(_) | PluginError::BadInfo(_) | PluginError::Cache { .. } | PluginError::Trap(_) => {
                Some("trap")
            }
            PluginError::Capacity => Some("capacity"),
            PluginError::Deadline(_) => Some("deadline"),
            PluginError::MemoryLimit(_) => Some("memory_limit"),
        };
        if let Some(kind) = kind {
            self.metrics.plugin_failure(&self.plugin, kind);
            tracing::error!(plugin = %self.plugin, version = %self.plugin_version, %error, "plugin call failed");
        }
        GatewayError::Plugin(error)
    }

    /// The model server could not be reached or answered badly: counted, and the reason kept
    /// for the request's log line.
    pub(super) fn upstream_failed(&self, error: &UpstreamError) {
        if matches!(error, UpstreamError::Refused(_)) {
            self.metrics.egress_refused();
        }
        self.metrics.upstream_failure(&self.provider, error.reason());
        if let Some(facts) = &self.facts {
            crate::telemetry::record(facts, |f| f.upstream_error = Some(error.log_reason()));
        }
    }

    /// The model call failed in passing and is about to be made again: counted (the last
    /// failure, if the retries do not help, is counted by [`Observer::upstream_failed`]).
    pub(super) fn retrying(&self, error: &UpstreamError) {
        self.metrics.upstream_retry(&self.provider, error.reason());
    }

    /// The stream ended by a failure: the request's log line says `stream_error`, however the
    /// endpoint reports it to the caller.
    pub(super) fn stream_failed(&self) {
        if let Some(facts) = &self.facts {
            crate::telemetry::record(facts, |f| f.stream_failed = true);
        }
    }

    /// The model server's response head arrived `elapsed` after the request was sent.
    pub(super) fn answered(&self, elapsed: Duration) {
        self.metrics.upstream(&self.provider, elapsed);
    }

    /// Time spent waiting for the model server, which the request's overhead excludes.
    pub(super) fn waited(&self, elapsed: Duration) {
        if let Some(facts) = &self.facts {
            crate::telemetry::record(facts, |f| f.upstream += elapsed);
        }
    }

    /// The named model and client key of the request, when it used one.
    fn named(&self) -> Option<(String, String)> {
        let facts = self.facts.as_ref()?.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some((facts.named_model.clone()?, facts.client_key.clone().unwrap_or_else(|| "none".into())))
    }

    /// Tokens the model server reported.
    pub(super) fn tokens(&self, usage: &wit::Usage) {
        self.metrics.tokens(&self.model, usage.input_tokens, usage.output_tokens);
        if let Some((model, key)) = self.named() {
            self.metrics.model_api_tokens(&model, &key, usage.input_tokens, usage.output_tokens);
        }
        if let Some(facts) = &self.facts {
            crate::telemetry::record(facts, |f| {
                f.input_tokens += u64::from(usage.input_tokens);
                f.output_tokens += u64::from(usage.output_tokens);
            });
        }
    }

    /// The first text of a stream arrived `elapsed` after the request was sent.
    pub(super) fn first_token(&self, elapsed: Duration) {
        self.metrics.first_token(&self.provider, elapsed);
        if let Some((model, _)) = self.named() {
            self.metrics.model_api_first_token(&model, elapsed);
        }
    }

    /// At the end of a stream: `tokens` generated after the first one, in `elapsed`.
    pub(super) fn pace(&self, tokens: u32, elapsed: Duration) {
        self.metrics.tokens_after_first(&self.provider, tokens, elapsed);
    }
}
