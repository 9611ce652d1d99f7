//! The one model pipeline every endpoint shares: plugin builds the request, the host sends it,
//! the plugin parses the answer (whole, or event by event as it streams).

use super::AppState;
use super::model::{ModelTarget, parse_endpoint};
use crate::error::GatewayError;
use crate::plugins::runtime::PluginIdentity;
use crate::plugins::{PluginError, PluginLease, wit};
use crate::telemetry::Metrics;
use crate::upstream::aws::AwsEnvironment;
use crate::upstream::framing::{Decoder, FramingError};
use crate::upstream::{ModelCall, UpstreamError, UpstreamResponse, client::MAX_ANSWER_BYTES};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// A canonical model request bound for a target.
#[derive(Debug)]
pub struct ModelJob {
    /// Where it goes.
    pub target: ModelTarget,
    /// What is asked.
    pub request: wit::ModelRequest,
    /// The whole model call's time limit, when the endpoint has its own (chat).
    pub total_timeout: Option<std::time::Duration>,
}

/// What the model answered.
pub enum Outcome {
    /// A complete answer.
    Complete(wit::Completion),
    /// A stream of chunks, pulled on demand.
    Stream(Box<ChunkStream>),
}

/// Run a job up to the answer (complete) or up to the response head (streaming).
pub async fn run(state: &AppState, mut job: ModelJob) -> Result<Outcome, GatewayError> {
    // With streaming disabled the model server is asked for a whole answer, which a caller that
    // asked for a stream then receives as a single piece.
    let deliver_as_stream = job.request.stream;
    crate::prompts::fit_roles(&job.target.family, &mut job.request.messages);
    if state.config.disable_streaming {
        job.request.stream = false;
    }
    let metrics = &state.metrics;
    let plugin = state.plugins.snapshot().resolve(&job.target.provider)?;
    let endpoint = endpoint_for(&job.target, plugin.identity(), state.upstream().aws())?;
    let facts = crate::telemetry::current_facts();
    if let Some(facts) = &facts {
        let identity = plugin.identity();
        crate::telemetry::record(facts, |f| {
            f.provider = Some(job.target.provider.clone());
            f.model = Some(job.target.model.clone());
            f.plugin = Some(format!("{}@{}", identity.name, identity.version));
        });
    }
    let started = Instant::now();
    let plugin_failed = |e| log_plugin_failure(metrics, plugin.identity(), e);
    let mut lease = PluginLease::new(plugin.clone()).await.map_err(plugin_failed)?;
    let built = async { lease.session().await?.build_request(&job.request).await }.await.map_err(plugin_failed)?;
    metrics.plugin_call(&plugin.identity().name, "build_request", started.elapsed());
    let call = ModelCall {
        endpoint: &endpoint,
        request: built,
        api_key: &job.target.api_key,
        total_timeout: job.total_timeout,
    };
    let sent = Instant::now();
    let provider = job.target.provider.as_str();
    let response = lease.wait(state.upstream().send(call)).await.map_err(|e| {
        if matches!(e, UpstreamError::Refused(_)) {
            metrics.egress_refused();
        }
        metrics.upstream_failure(provider, e.reason());
        hint_missing_v1(e, &job.target, &endpoint)
    })?;
    metrics.upstream(provider, sent.elapsed());
    let accounts =
        Accounts { metrics: Arc::clone(metrics), facts, model: job.target.model, provider: job.target.provider };
    if !job.request.stream {
        let body = lease
            .wait(response.collect(MAX_ANSWER_BYTES))
            .await
            .inspect_err(|e| accounts.metrics.upstream_failure(&accounts.provider, e.reason()))?;
        crate::telemetry::add_upstream_time(sent.elapsed());
        let parsing = Instant::now();
        let completion = async { lease.session().await?.parse_response(&body).await }.await.map_err(plugin_failed)?;
        metrics.plugin_call(&plugin.identity().name, "parse_response", parsing.elapsed());
        if let Some(usage) = &completion.usage {
            accounts.tokens(usage);
        }
        if !deliver_as_stream {
            return Ok(Outcome::Complete(completion));
        }
        let whole = wit::StreamChunk {
            text: completion.text,
            finish_reason: completion.finish_reason,
            // Already counted above; carried on for the endpoint's own usage report.
            usage: completion.usage,
            done: true,
        };
        return Ok(Outcome::Stream(Box::new(ChunkStream::new(lease, None, accounts, sent, Some(whole)))));
    }
    crate::telemetry::add_upstream_time(sent.elapsed());
    Ok(Outcome::Stream(Box::new(ChunkStream::new(lease, Some(response), accounts, sent, None))))
}

/// Where a model call's numbers go: the metrics and the request's log line.
struct Accounts {
    metrics: Arc<Metrics>,
    facts: Option<crate::telemetry::SharedFacts>,
    /// Served model id.
    model: String,
    /// Provider name.
    provider: String,
}

impl Accounts {
    fn tokens(&self, usage: &wit::Usage) {
        self.metrics.tokens(&self.model, usage.input_tokens, usage.output_tokens);
        if let Some(facts) = &self.facts {
            crate::telemetry::record(facts, |f| {
                f.input_tokens += u64::from(usage.input_tokens);
                f.output_tokens += u64::from(usage.output_tokens);
            });
        }
    }
}

/// Plugin traps and limits are logged with the plugin's identity; the caller gets a generic body.
fn log_plugin_failure(metrics: &Metrics, identity: &PluginIdentity, error: PluginError) -> GatewayError {
    let kind = match &error {
        PluginError::Guest(_) | PluginError::UnknownProvider { .. } => None,
        PluginError::Invalid(_) | PluginError::BadInfo(_) | PluginError::Trap(_) => Some("trap"),
        PluginError::Capacity => Some("capacity"),
        PluginError::Deadline(_) => Some("deadline"),
        PluginError::MemoryLimit(_) => Some("memory_limit"),
    };
    if let Some(kind) = kind {
        metrics.plugin_failure(&identity.name, kind);
        tracing::error!(plugin = %identity.name, version = %identity.version, %error, "plugin call failed");
    }
    GatewayError::Plugin(error)
}

/// The endpoint the request named, else the plugin's default one (with the AWS region filled in).
fn endpoint_for(
    target: &ModelTarget,
    plugin: &PluginIdentity,
    aws: &AwsEnvironment,
) -> Result<http::Uri, GatewayError> {
    if let Some(endpoint) = &target.endpoint {
        return Ok(endpoint.clone());
    }
    let Some(template) = &plugin.default_endpoint else {
        return Err(GatewayError::Unprocessable(format!(
            "model_endpoint is required for provider {:?} (plugin {} has no default endpoint)",
            target.provider, plugin.name
        )));
    };
    let endpoint = aws.expand_endpoint(template).map_err(UpstreamError::from)?;
    parse_endpoint(&endpoint)
}

/// A 404 from an OpenAI-compatible endpoint without `/v1` is the most common misconfiguration.
fn hint_missing_v1(error: UpstreamError, target: &ModelTarget, endpoint: &http::Uri) -> GatewayError {
    let not_found = matches!(&error, UpstreamError::Status { status, .. } if *status == http::StatusCode::NOT_FOUND);
    let openai_style = matches!(target.provider.as_str(), "custom_openai" | "openai");
    if not_found && openai_style && !endpoint.path().trim_end_matches('/').ends_with("/v1") {
        return GatewayError::Unprocessable(format!(
            "The model server answered 404 Not Found at {endpoint}; OpenAI-compatible endpoints usually end with /v1"
        ));
    }
    GatewayError::Upstream(error)
}

/// A model answer being streamed: upstream bytes → frames → plugin → chunks. Dropping it drops
/// the upstream response, which cancels the upstream request at once.
pub struct ChunkStream {
    /// The plugin that parses the events, and its store (freed while the stream waits).
    lease: PluginLease,
    /// `None` when the whole answer was already read (streaming disabled).
    response: Option<UpstreamResponse>,
    decoder: Decoder,
    ready: VecDeque<wit::StreamChunk>,
    finished: bool,
    accounts: Accounts,
    /// When the model request was sent, and when its first text arrived.
    sent: Instant,
    first_text: Option<Instant>,
    output_tokens: u32,
}

impl ChunkStream {
    fn new(
        lease: PluginLease,
        response: Option<UpstreamResponse>,
        accounts: Accounts,
        sent: Instant,
        whole: Option<wit::StreamChunk>,
    ) -> Self {
        let decoder = match lease.identity().framing {
            wit::Framing::Sse => Decoder::sse(),
            wit::Framing::Ndjson => Decoder::ndjson(),
            wit::Framing::AwsEventStream => Decoder::aws_event_stream(),
        };
        ChunkStream {
            lease,
            response,
            decoder,
            finished: whole.is_some(),
            ready: whole.into_iter().collect(),
            accounts,
            sent,
            first_text: None,
            output_tokens: 0,
        }
    }

    /// The next chunk with text or metadata; `None` at the end of the answer.
    pub async fn next(&mut self) -> Option<Result<wit::StreamChunk, GatewayError>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(Ok(chunk));
            }
            if self.finished {
                self.report_pace();
                return None;
            }
            if let Err(error) = self.fill().await {
                self.finished = true;
                return Some(Err(error));
            }
        }
    }

    /// Read one upstream chunk and parse every complete event it finishes.
    async fn fill(&mut self) -> Result<(), GatewayError> {
        let Some(response) = self.response.as_mut() else {
            self.finished = true;
            return Ok(());
        };
        let next = self.lease.wait(response.next_chunk()).await;
        let next = next.inspect_err(|e| self.accounts.metrics.upstream_failure(&self.accounts.provider, e.reason()))?;
        let bytes = match next {
            Some(bytes) => bytes,
            None => {
                self.finished = true;
                if let Some(event) = self.decoder.finish() {
                    self.parse(event).await?;
                }
                return Ok(());
            }
        };
        self.decoder.push(&bytes).map_err(|e| self.framing_failed(e))?;
        while let Some(event) = self.decoder.next_event().map_err(|e| self.framing_failed(e))? {
            self.parse(event).await?;
            if self.finished {
                break;
            }
        }
        Ok(())
    }

    /// A stream that cannot be decoded ends like a broken one, and is counted.
    fn framing_failed(&self, error: FramingError) -> UpstreamError {
        let error = UpstreamError::Body(error.to_string());
        self.accounts.metrics.upstream_failure(&self.accounts.provider, error.reason());
        error
    }

    /// At the end of a stream: time per generated token after the first.
    fn report_pace(&mut self) {
        if let Some(first) = self.first_text.take() {
            let after_first = self.output_tokens.saturating_sub(1);
            self.accounts.metrics.tokens_after_first(&self.accounts.provider, after_first, first.elapsed());
        }
    }

    async fn parse(&mut self, event: crate::upstream::framing::Event) -> Result<(), GatewayError> {
        let parsing = Instant::now();
        let metrics = &self.accounts.metrics;
        let lease = &mut self.lease;
        let chunk = async { lease.session().await?.parse_event(event.name.as_deref(), &event.data).await }
            .await
            .map_err(|e| log_plugin_failure(metrics, self.lease.identity(), e))?;
        metrics.plugin_call(&self.lease.identity().name, "parse_event", parsing.elapsed());
        if let Some(usage) = &chunk.usage {
            self.accounts.tokens(usage);
            self.output_tokens += usage.output_tokens;
        }
        if !chunk.text.is_empty() && self.first_text.is_none() {
            self.first_text = Some(Instant::now());
            self.accounts.metrics.first_token(&self.accounts.provider, self.sent.elapsed());
        }
        if chunk.done {
            self.finished = true;
        }
        if !chunk.text.is_empty() || chunk.finish_reason.is_some() || chunk.usage.is_some() {
            self.ready.push_back(chunk);
        }
        Ok(())
    }
}
