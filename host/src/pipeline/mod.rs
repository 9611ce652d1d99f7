//! The model call every endpoint shares: one canonical job (a chat or completion, or texts to
//! embed), which the provider plugin builds into an HTTP request, the host sends (egress policy,
//! credentials, timeouts), and the plugin parses back, whole or event by event as it streams.

mod chat;
mod events;
mod observe;
mod target;

pub(crate) use chat::{ChatAnswer, converse};
pub use events::{ChatPiece, ChunkStream, EventParser, Parsed};
pub(crate) use target::{ModelFields, ModelTarget, parse_endpoint};

use crate::error::GatewayError;
use crate::fleet::{Pool, Slot, Work, WorkClass};
use crate::plugins::runtime::PluginIdentity;
use crate::plugins::{PluginError, PluginLease, embeddings, wit};
use crate::state::RequestState;
use crate::upstream::aws::AwsEnvironment;
use crate::upstream::{ModelCall, UpstreamError, UpstreamResponse, client::MAX_ANSWER_BYTES};
use observe::Observer;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of a model request per prompt token, for the fleet's estimate of a prompt's length
/// (about four for English and code in JSON).
const BYTES_PER_TOKEN: u64 = 4;

/// Which time limit a model call runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// Code suggestions: the outbound total timeout (`AIGW_UPSTREAM__TOTAL_TIMEOUT_MS`).
    Code,
    /// Chat and registry prompts: `AIGW_DUO_CHAT__MODEL_REQUEST_TIMEOUT`.
    Chat,
}

/// A canonical model request bound for a target: what every endpoint hands the pipeline.
#[derive(Debug)]
pub(crate) struct ModelJob {
    target: ModelTarget,
    request: wit::ModelRequest,
    deadline: Deadline,
    /// Its class and affinity, for a named model's pool.
    work: Work,
    /// Fold system messages into the first user message for families without a system role.
    fit_roles: bool,
}

impl ModelJob {
    /// A chat request for `target`'s model. Before it is sent, a family whose chat template has
    /// no system role (the registry's `families.toml` says which) gets the system text at the
    /// start of the first user message instead.
    pub(crate) fn new(
        target: ModelTarget,
        messages: Vec<wit::Message>,
        sampling: wit::Sampling,
        deadline: Deadline,
    ) -> Self {
        let request =
            wit::ModelRequest { model: target.model.clone(), messages, fill_in_middle: None, sampling, stream: false };
        let class = match deadline {
            Deadline::Code => WorkClass::Completion,
            Deadline::Chat => WorkClass::Chat,
        };
        ModelJob { target, request, deadline, work: Work::of(class), fit_roles: true }
    }

    /// Place it in a named model's pool as `work` (its class unless said here: completion for
    /// code, chat for chat).
    pub(crate) fn with_work(mut self, work: Work) -> Self {
        self.work = work;
        self
    }

    /// Send the messages with the roles they were rendered with, whatever the family: GitLab's
    /// prompts say for themselves which roles a family gets, and GitLab's gateway sends them so.
    pub(crate) fn with_roles_as_rendered(mut self) -> Self {
        self.fit_roles = false;
        self
    }

    /// Also carry the code around the cursor, for providers with a native fill-in-the-middle API.
    pub(crate) fn with_fill_in_middle(mut self, prefix: &str, suffix: &str) -> Self {
        self.request.fill_in_middle =
            Some(wit::FillInMiddle { prefix: prefix.to_string(), suffix: suffix.to_string() });
        self
    }

    fn total_timeout(&self, state: &RequestState<'_>) -> Option<Duration> {
        match self.deadline {
            Deadline::Code => None,
            Deadline::Chat => Some(state.config.chat_timeout),
        }
    }
}

/// Run `job` and return the model's whole answer.
pub(crate) async fn complete(state: &RequestState<'_>, job: ModelJob) -> Result<wit::Completion, GatewayError> {
    let call = Call::send(state, job, false).await?;
    Ok(call.whole_answer().await?.completion)
}

/// Run `job` up to the model server's response head and return its answer as a stream. With
/// streaming disabled (`AIGW_CUSTOM_MODELS__DISABLE_STREAMING`) the model server is asked for a
/// whole answer, which the stream then yields as a single piece.
pub(crate) async fn stream(state: &RequestState<'_>, job: ModelJob) -> Result<ChunkStream, GatewayError> {
    if state.config.disable_streaming {
        let call = Call::send(state, job, false).await?;
        let sent = call.sent;
        let WholeAnswer { completion, lease, observer } = call.whole_answer().await?;
        let whole = wit::StreamChunk {
            text: completion.text,
            finish_reason: completion.finish_reason,
            // Already counted; carried on for the endpoint's own usage report.
            usage: completion.usage,
            done: true,
        };
        return Ok(ChunkStream::whole(lease, observer, sent, whole));
    }
    let call = Call::send(state, job, true).await?;
    call.observer.waited(call.sent.elapsed());
    Ok(ChunkStream::new(call.lease, call.response, call.observer, call.sent))
}

/// A model's whole answer, with the lease and observer for a caller that goes on with them.
struct WholeAnswer {
    completion: wit::Completion,
    lease: PluginLease,
    observer: Observer,
}

/// A model call whose response head has arrived.
struct Call {
    lease: PluginLease,
    response: UpstreamResponse,
    observer: Observer,
    /// When the request went to the model server.
    sent: Instant,
}

/// The most texts one request may carry: far above a search query's one and an indexing batch,
/// and low enough that the answer's vectors stay within what the gateway reads from a model
/// server (16 MiB of JSON holds 256 vectors of about 3,000 dimensions).
pub(crate) const MAX_CONTENTS: usize = 256;

/// The most text, in bytes, one request may embed (all contents together).
pub(crate) const MAX_CONTENT_BYTES: usize = 2 << 20;

/// The longest vector a caller may ask for (the largest embedding models today give 4,096).
pub(crate) const MAX_DIMENSIONS: u32 = 8192;

/// Run an embeddings request for `target` and return the model server's vectors, checked: one
/// per input, all of one length (the one asked for, if any).
pub(crate) async fn embed(
    state: &RequestState<'_>,
    target: &ModelTarget,
    mut request: embeddings::EmbeddingsRequest,
) -> Result<embeddings::EmbeddingsResult, GatewayError> {
    let target = &in_process(state, target.clone())?;
    request.model.clone_from(&target.model);
    let Prepared { destination, observer, mut lease } = Prepared::new(state, target).await?;
    if !lease.identity().can_embed() {
        let identity = lease.identity();
        let refused = PluginError::NoEmbeddings { plugin: identity.name.clone(), wit_version: identity.wit_version };
        return Err(observer.plugin_failed(refused));
    }
    let building = Instant::now();
    let built = async { lease.session().await?.build_embeddings_request(&request).await }
        .await
        .map_err(|e| observer.plugin_failed(e))?;
    observer.plugin_call("build_embeddings_request", building.elapsed());
    let work = Work::of(WorkClass::Chat);
    let call = Call::dispatch(state, target, &destination, built, lease, observer, None, work).await?;
    let (body, mut lease, observer) = call.body().await?;
    let parsing = Instant::now();
    let result = async { lease.session().await?.parse_embeddings_response(&body).await }
        .await
        .map_err(|e| observer.plugin_failed(e))?;
    observer.plugin_call("parse_embeddings_response", parsing.elapsed());
    if let Err(why) = check_vectors(&result.vectors, request.inputs.len(), request.dimensions) {
        let malformed = PluginError::Guest(wit::PluginError::MalformedResponse(why));
        return Err(observer.plugin_failed(malformed));
    }
    if let Some(input_tokens) = result.input_tokens {
        observer.tokens(&wit::Usage { input_tokens, output_tokens: 0 });
    }
    Ok(result)
}

/// Why `vectors` are not an answer for `inputs` texts, if they are not: one each, all of one
/// non-zero length, `dimensions` long when the caller asked for it.
fn check_vectors(vectors: &[Vec<f32>], inputs: usize, dimensions: Option<u32>) -> Result<(), String> {
    if vectors.len() != inputs {
        return Err(format!("{} vectors for {inputs} inputs", vectors.len()));
    }
    let Some(first) = vectors.first() else { return Ok(()) };
    if first.is_empty() || vectors.iter().any(|vector| vector.len() != first.len()) {
        return Err("the vectors are empty or of different lengths".into());
    }
    match dimensions {
        Some(asked) if first.len() != asked as usize => {
            Err(format!("vectors of {} dimensions where {asked} were asked", first.len()))
        }
        _ => Ok(()),
    }
}

/// Where a model call goes.
enum Destination {
    /// The one endpoint the request named (or the plugin's default).
    Endpoint(http::Uri),
    /// A member of a named model's pool, chosen when the request is ready to go.
    Pool(Arc<Pool>),
}

/// What every model call has before its plugin builds the request: where it goes, who observes
/// it, and a fresh sandbox of the plugin serving its provider.
struct Prepared {
    destination: Destination,
    observer: Observer,
    lease: PluginLease,
}

impl Prepared {
    async fn new(state: &RequestState<'_>, target: &ModelTarget) -> Result<Self, GatewayError> {
        let plugin = state.plugins.snapshot().resolve(&target.provider)?;
        let destination = match &target.pool {
            Some(pool) => Destination::Pool(Arc::clone(pool)),
            None => Destination::Endpoint(endpoint_for(target, plugin.identity(), state.upstream.aws())?),
        };
        let observer = Observer::new(&state.metrics, target, plugin.identity());
        let lease = PluginLease::new(plugin.clone()).await.map_err(|e| observer.plugin_failed(e))?;
        Ok(Prepared { destination, observer, lease })
    }
}

impl Call {
    /// Resolve the plugin, let it build the provider request, and send it.
    async fn send(state: &RequestState<'_>, mut job: ModelJob, stream: bool) -> Result<Self, GatewayError> {
        job.request.stream = stream;
        job.target = in_process(state, job.target)?;
        job.request.model.clone_from(&job.target.model);
        if job.fit_roles {
            state.prompts.load().families().fit_roles(&job.target.family, &mut job.request.messages);
        }
        let total_timeout = job.total_timeout(state);
        let building = Instant::now();
        let Prepared { destination, observer, mut lease } = Prepared::new(state, &job.target).await?;
        let built = async { lease.session().await?.build_request(&job.request).await }
            .await
            .map_err(|e| observer.plugin_failed(e))?;
        observer.plugin_call("build_request", building.elapsed());
        Self::dispatch(state, &job.target, &destination, built, lease, observer, total_timeout, job.work).await
    }

    /// Send the request the plugin built and wait for the answer's head (from a pool member, for
    /// its first bytes: until then another member may still take the request).
    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        state: &RequestState<'_>,
        target: &ModelTarget,
        destination: &Destination,
        built: wit::UpstreamRequest,
        mut lease: PluginLease,
        observer: Observer,
        total_timeout: Option<Duration>,
        work: Work,
    ) -> Result<Self, GatewayError> {
        let sent = Instant::now();
        let answered = match destination {
            Destination::Endpoint(endpoint) => {
                let call = ModelCall {
                    endpoint,
                    request: built,
                    api_key: &target.api_key,
                    total_timeout,
                    single_attempt: false,
                };
                let mut calls = 1;
                let mut retrying = |error: &UpstreamError| {
                    calls += 1;
                    observer.retrying(error);
                };
                let answered = lease.wait(state.upstream.send(call, &mut retrying)).await;
                answered.map_err(|error| (error, calls, endpoint.clone()))
            }
            Destination::Pool(pool) => {
                let placed = Placement { state, target, pool, work, total_timeout, observer: &observer };
                match lease.wait(placed.send(built)).await {
                    Ok(answered) => Ok(answered),
                    Err(Failed::Fleet(error)) => {
                        observer.waited(sent.elapsed());
                        return Err(error.into());
                    }
                    Err(Failed::Upstream { error, calls, endpoint }) => Err((error, calls, endpoint)),
                }
            }
        };
        let response = answered.map_err(|(error, calls, endpoint)| {
            // A call that failed or timed out was still time spent on the model server.
            observer.waited(sent.elapsed());
            observer.upstream_failed(&error);
            hint_missing_v1(error, calls, target, &endpoint)
        })?;
        observer.answered(sent.elapsed());
        Ok(Call { lease, response, observer, sent })
    }

    /// Read the whole answer body; the lease and observer go on with it.
    async fn body(self) -> Result<(bytes::Bytes, PluginLease, Observer), GatewayError> {
        let Call { mut lease, response, observer, sent } = self;
        let body = lease.wait(response.collect(MAX_ANSWER_BYTES)).await;
        observer.waited(sent.elapsed());
        let body = body.inspect_err(|e| observer.upstream_failed(e))?;
        Ok((body, lease, observer))
    }

    /// Read the whole answer and let the plugin parse it.
    async fn whole_answer(self) -> Result<WholeAnswer, GatewayError> {
        let (body, mut lease, observer) = self.body().await?;
        let parsing = Instant::now();
        let completion = async { lease.session().await?.parse_response(&body).await }
            .await
            .map_err(|e| observer.plugin_failed(e))?;
        observer.plugin_call("parse_response", parsing.elapsed());
        if let Some(usage) = &completion.usage {
            observer.tokens(usage);
        }
        Ok(WholeAnswer { completion, lease, observer })
    }
}

/// A call to a pool of model servers: a member taken (waiting in line when all are busy), the
/// request sent, and, when it fails before its answer began for a reason that says nothing of
/// the request, sent once more to another member.
struct Placement<'a> {
    state: &'a RequestState<'a>,
    target: &'a ModelTarget,
    pool: &'a Arc<Pool>,
    work: Work,
    total_timeout: Option<Duration>,
    observer: &'a Observer,
}

/// Why a pool call failed.
enum Failed {
    /// No member took it.
    Fleet(crate::fleet::FleetError),
    /// The last member tried failed so, after `calls` calls.
    Upstream { error: UpstreamError, calls: u32, endpoint: http::Uri },
}

impl Placement<'_> {
    async fn send(&self, built: wit::UpstreamRequest) -> Result<UpstreamResponse, Failed> {
        let tokens = built.body.len() as u64 / BYTES_PER_TOKEN;
        let slot = self.pool.acquire(self.work, tokens, None).await.map_err(Failed::Fleet)?;
        // Kept only where another member could take it: a copy of the body costs a few µs.
        let second = self.pool.can_fail_over().then(|| built.clone());
        let (error, slot) = match self.attempt(slot, built, second.is_some()).await {
            Ok(response) => return Ok(response),
            Err(failed) => failed,
        };
        let endpoint = slot.endpoint().clone();
        let failed_member = Arc::clone(slot.member());
        let Some(second) = second.filter(|_| slot.failed(&error)) else {
            return Err(Failed::Upstream { error, calls: 1, endpoint });
        };
        // A second member, if one can take it now or within its class's wait.
        let Ok(slot) = self.pool.acquire(self.work, tokens, Some(&failed_member)).await else {
            return Err(Failed::Upstream { error, calls: 1, endpoint });
        };
        self.observer.retrying(&error);
        match self.attempt(slot, second, true).await {
            Ok(response) => Ok(response),
            Err((error, slot)) => {
                let endpoint = slot.endpoint().clone();
                slot.failed(&error);
                Err(Failed::Upstream { error, calls: 2, endpoint })
            }
        }
    }

    /// One call to the member `slot` holds; the slot goes with the answer (its place on the
    /// member lasts until the answer is read), or comes back with the error.
    async fn attempt(
        &self,
        mut slot: Slot,
        request: wit::UpstreamRequest,
        single_attempt: bool,
    ) -> Result<UpstreamResponse, (UpstreamError, Slot)> {
        let call = ModelCall {
            endpoint: slot.endpoint(),
            request,
            api_key: &self.target.api_key,
            total_timeout: self.total_timeout,
            single_attempt,
        };
        let mut retrying = |error: &UpstreamError| self.observer.retrying(error);
        let mut response = match self.state.upstream.send(call, &mut retrying).await {
            Ok(response) => response,
            Err(error) => return Err((error, slot)),
        };
        // The prefill ends, and the member has answered, with the first bytes, not the head.
        if let Err(error) = response.await_first_bytes().await {
            return Err((error, slot));
        }
        slot.answered();
        response.hold(Box::new(slot));
        Ok(response)
    }
}

/// A GitLab request whose model endpoint is aigw's own model API, and whose identifier names one
/// of its models, is served from that named model here (no loop back over HTTP), with the API key
/// GitLab sent checked as a client key, as the model API would check it. Any other target is
/// left as it is.
fn in_process(state: &RequestState<'_>, target: ModelTarget) -> Result<ModelTarget, GatewayError> {
    if !target.endpoint.as_ref().is_some_and(|endpoint| state.models.load().is_gateway_url(endpoint)) {
        return Ok(target);
    }
    let catalog = state.models();
    let key = catalog.authenticate(Some(&target.api_key), state.peer)?;
    let named = catalog.authorize(key, &target.model)?;
    crate::telemetry::note_client_key(&key.id, Some(&named.name));
    Ok(ModelTarget::named(named, &target.family))
}

/// The endpoint the request named, else the plugin's default one (with the AWS region filled in).
pub(crate) fn endpoint_for(
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
fn hint_missing_v1(error: UpstreamError, calls: u32, target: &ModelTarget, endpoint: &http::Uri) -> GatewayError {
    let not_found = matches!(&error, UpstreamError::Status { status, .. } if *status == http::StatusCode::NOT_FOUND);
    let openai_style = matches!(target.provider.as_str(), "custom_openai" | "openai");
    if not_found && openai_style && !endpoint.path().trim_end_matches('/').ends_with("/v1") {
        return GatewayError::MissingV1 { endpoint: endpoint.to_string().trim_end_matches('/').to_string() };
    }
    GatewayError::Upstream { error, calls }
}
