//! The doctor's model steps: the model as GitLab names it resolves to a plugin and a family, its
//! endpoint passes the egress policy, accepts a connection, and answers a one-token completion
//! sent through the gateway's own pipeline.

use super::loads::Loaded;
use super::{ModelProbe, Section, Step};
use crate::auth::Verifier;
use crate::config::Config;
use crate::error::GatewayError;
use crate::pipeline::{self, Deadline, ModelFields, ModelJob, ModelTarget};
use crate::plugins::{PluginError, wit};
use crate::state::AppState;
use crate::telemetry::Metrics;
use crate::upstream::connector::{self, ConnectError};
use crate::upstream::{EgressError, EgressPolicy, Upstream, UpstreamError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The family assumed when `--model-name` is not given: the one with no family-specific prompt.
const DEFAULT_FAMILY: &str = "general";

/// What the test completion asks for; one token of it is enough to prove the round trip.
const TEST_PROMPT: &str = "Reply with the single word OK.";

/// Check `probe` with the plugins and prompts that loaded.
pub(super) async fn check(config: Config, probe: &ModelProbe, loaded: Loaded, metrics: Arc<Metrics>) -> Section {
    let heading = match &probe.endpoint {
        Some(endpoint) => format!("Model endpoint ({endpoint}, {})", probe.identifier),
        None => format!("Model endpoint (the plugin's default, {})", probe.identifier),
    };
    let mut section = Section::new(heading);
    let family = probe.family.as_deref().unwrap_or(DEFAULT_FAMILY);
    let fields = ModelFields {
        family: Some(family),
        endpoint: probe.endpoint.as_deref(),
        api_key: probe.api_key.as_deref(),
        identifier: Some(&probe.identifier),
    };
    let target = match ModelTarget::resolve(fields, config.custom_models_enabled) {
        Ok(target) => target,
        Err(error) => {
            let fix = if config.custom_models_enabled {
                "GitLab sends these fields as its model configuration holds them: correct them there and here"
            } else {
                "AIGW_CUSTOM_MODELS__ENABLED is false, so requests may not name an endpoint or key: set it to \
                 true, or name a model the gateway reaches on its own"
            };
            section.push(Step::fail(format!("the model fields are refused: {error}"), fix));
            return section;
        }
    };
    let plugin = match loaded.registry.snapshot().resolve(&target.provider) {
        Ok(plugin) => plugin,
        Err(error) => {
            let fix = match &error {
                PluginError::UnknownProvider { loaded, .. } => format!(
                    "the identifier's part before '/' names the provider; the plugins loaded serve: {loaded}. \
                     Correct it, or add the provider's plugin to AIGW_PLUGINS__DIR"
                ),
                _ => "see the plugins above".to_string(),
            };
            section.push(Step::fail(format!("provider {:?}: {error}", target.provider), fix));
            return section;
        }
    };
    let identity = plugin.identity();
    let family_note = if probe.family.is_some() { String::new() } else { " (no --model-name)".to_string() };
    section.push(Step::ok(format!(
        "{}: plugin {} {} serves provider {}, model {:?}, family {family}{family_note}",
        probe.identifier, identity.name, identity.version, target.provider, target.model
    )));
    if probe.family.is_some()
        && let Err(error) = loaded.prompts.code_completion(family)
    {
        section.push(Step::fail(
            format!("family {family}: {error}"),
            "--model-name is the model family GitLab's model configuration names (codestral, llama3, …); \
             code suggestions for this one would be refused",
        ));
    }
    let endpoint = match pipeline::endpoint_for(&target, identity, &config.aws) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            section.push(Step::fail(
                format!("no endpoint: {error}"),
                "give --model-endpoint, the endpoint GitLab's model configuration holds",
            ));
            return section;
        }
    };
    let Some(addr) = egress_and_reach(&config, &endpoint, &mut section).await else {
        return section;
    };
    section.push(test_completion(config, loaded, metrics, target, addr).await);
    section
}

/// Send the one-token completion through the gateway's own pipeline, as a request would.
async fn test_completion(
    config: Config,
    loaded: Loaded,
    metrics: Arc<Metrics>,
    target: ModelTarget,
    addr: SocketAddr,
) -> Step {
    let state = match test_state(config, loaded, metrics) {
        Ok(state) => state,
        Err(error) => {
            return Step::fail(format!("the outbound client cannot be set up: {error}"), "report this as a bug");
        }
    };
    let messages = vec![wit::Message { role: wit::Role::User, content: TEST_PROMPT.to_string() }];
    let sampling = wit::Sampling { max_tokens: Some(1), temperature: Some(0.0), top_p: None, stop: Vec::new() };
    let job = ModelJob::new(target.clone(), messages, sampling, Deadline::Code);
    let started = Instant::now();
    let answered = pipeline::complete(&state.for_worker(0), job).await;
    let ms = started.elapsed().as_millis();
    match answered {
        Ok(completion) => {
            let mut step = Step::ok(format!("test completion answered in {ms} ms: {:?}", completion.text));
            if let Some(reason) = completion.finish_reason {
                let reason = match reason {
                    wit::FinishReason::Stop => "stop".to_string(),
                    wit::FinishReason::Length => "length (the one-token limit)".to_string(),
                    wit::FinishReason::Other(other) => other,
                };
                step = step.detail(format!("finish reason: {reason}"));
            }
            if let Some(usage) = completion.usage {
                step = step.detail(format!("tokens: {} in, {} out", usage.input_tokens, usage.output_tokens));
            }
            step
        }
        Err(error) => {
            let said = match &error {
                GatewayError::Upstream { error, .. } => error.log_reason(),
                other => other.to_string(),
            };
            Step::fail(format!("test completion to {addr} failed after {ms} ms: {said}"), fix_for(&error, &target))
        }
    }
}

/// The egress and reachability steps, with the connector's own resolution and connection; the
/// address connected to when both pass.
pub(super) async fn egress_and_reach(
    config: &Config,
    endpoint: &http::Uri,
    section: &mut Section,
) -> Option<SocketAddr> {
    let host = endpoint.host().unwrap_or_default();
    let addrs = match connector::resolve(endpoint).await {
        Ok(addrs) => addrs,
        Err(ConnectError::Io(error)) => {
            section.push(Step::fail(
                format!("egress: {host} does not resolve here: {error}"),
                "the gateway resolves the endpoint itself, from this environment: use a name its DNS knows \
                 (inside Kubernetes, a Service name), or an address",
            ));
            return None;
        }
        Err(error) => {
            section.push(Step::fail(format!("egress: {error}"), "correct the endpoint's host"));
            return None;
        }
    };
    let policy = EgressPolicy::new(config.egress.allow.clone());
    let resolved: Vec<String> = addrs.iter().map(|addr| addr.ip().to_string()).collect();
    // A name is shown with what it resolved to; an address stands for itself.
    let shown = if resolved == [host.trim_matches(['[', ']'])] {
        host.to_string()
    } else {
        format!("{host} ({})", resolved.join(", "))
    };
    if let Some(refused) = addrs.iter().find_map(|addr| policy.check(addr.ip()).err()) {
        let fix = match refused {
            EgressError::NotAllowed(ip) => {
                let allowed: Vec<String> = config.egress.allow.iter().map(ToString::to_string).collect();
                format!(
                    "add {ip} (or its network) to AIGW_EGRESS__ALLOW, which allows {} now; by default only \
                     loopback and private networks are",
                    allowed.join(",")
                )
            }
            _ => "no setting allows it: a model server never lives there; correct the endpoint".to_string(),
        };
        let mut step = Step::fail(format!("egress refused: {refused}"), fix);
        if shown != host {
            step = step.detail(shown);
        }
        section.push(step);
        return None;
    }
    section.push(Step::ok(format!("egress: {shown} is inside AIGW_EGRESS__ALLOW")));
    let started = Instant::now();
    match connector::connect_any(&addrs, config.upstream.connect_timeout).await {
        Ok(stream) => {
            let addr = stream.peer_addr().unwrap_or(addrs[0]);
            section.push(Step::ok(format!("reachable: connected to {addr} in {} ms", started.elapsed().as_millis())));
            Some(addr)
        }
        Err(error) => {
            let tried: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            section.push(Step::fail(
                format!("unreachable: {}: {error}", tried.join(", ")),
                "start the model server, or make it listen where this environment reaches it (vLLM and Ollama \
                 listen on loopback unless told otherwise: vllm serve --host 0.0.0.0, OLLAMA_HOST=0.0.0.0); \
                 check firewalls and NetworkPolicies on the way",
            ));
            None
        }
    }
}

/// The gateway's shared state as a request sees it, with one outbound client.
pub(super) fn test_state(config: Config, loaded: Loaded, metrics: Arc<Metrics>) -> Result<AppState, UpstreamError> {
    let policy = Arc::new(EgressPolicy::new(config.egress.allow.clone()));
    let upstream = Upstream::new(policy, config.upstream, config.aws.clone())?;
    Ok(AppState {
        config,
        verifier: Verifier::new(),
        plugins: loaded.registry,
        prompts: arc_swap::ArcSwap::from_pointee(loaded.prompts),
        models: arc_swap::ArcSwap::from_pointee(crate::models::ModelCatalog::empty()),
        upstreams: vec![upstream],
        metrics,
        connections: crate::admission::Admission::new(1),
        draining: std::sync::atomic::AtomicBool::new(false),
    })
}

/// What to do about a failed test completion.
fn fix_for(error: &GatewayError, target: &ModelTarget) -> String {
    let provider = &target.provider;
    match error {
        GatewayError::MissingV1 { endpoint } => format!(
            "vLLM and other OpenAI-compatible servers serve their API under /v1: use {endpoint}/v1, here and in \
             GitLab's self-hosted model configuration"
        ),
        GatewayError::Upstream { error, .. } => match error {
            UpstreamError::Status { status, .. } => match status.as_u16() {
                401 | 403 => "the model server refused the key: give the key GitLab's model configuration holds \
                              (--model-api-key, or AIGW_DOCTOR_MODEL_API_KEY)"
                    .to_string(),
                404 => format!(
                    "the model server has no such route or model: check the endpoint's path and that it serves \
                     model {:?} (vLLM: --served-model-name)",
                    target.model
                ),
                429 | 500..=599 => "the model server is overloaded or failing: see its own log".to_string(),
                _ => format!(
                    "the model server did not accept the request: check that it speaks {provider}'s API (the \
                     identifier's part before '/')"
                ),
            },
            UpstreamError::Timeout { .. } => "the model did not answer in time: a model still loading can take \
                                              minutes; otherwise raise AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS"
                .to_string(),
            UpstreamError::Handshake(_) => super::untrusted_certificate_fix("the model server's"),
            UpstreamError::Signing(_) => "set the AWS credentials the gateway signs with: AWS_ACCESS_KEY_ID, \
                                          AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), and AWS_REGION"
                .to_string(),
            UpstreamError::Body(_) => format!("the answer could not be read: is this endpoint {provider}'s API?"),
            UpstreamError::Connect(_) | UpstreamError::Refused(_) => {
                "the connection was refused or broke: see the model server's log".to_string()
            }
            UpstreamError::InvalidRequest(_) | UpstreamError::Tls(_) => {
                "check --model-endpoint and the plugin".to_string()
            }
        },
        GatewayError::Plugin(PluginError::Guest(wit::PluginError::MalformedResponse(_))) => format!(
            "the plugin could not read the answer: the endpoint does not speak {provider}'s API; check the \
             identifier's part before '/'"
        ),
        _ => "the message says what failed".to_string(),
    }
}
