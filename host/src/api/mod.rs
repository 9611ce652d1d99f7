//! GitLab-compatible endpoints: routing, the shared request state, and request-body parsing.

pub mod access_token;
pub mod agent;
pub mod chat;
pub mod code;
pub mod fence;
pub mod language;
pub mod model;
pub mod pipeline;
pub mod prompts;
pub mod react;
pub mod stream;

use crate::auth::Verifier;
use crate::config::Config;
use crate::error::{GatewayError, ValidationIssue};
use crate::plugins::PluginRegistry;
use crate::plugins::wit;
use crate::prompts::PromptRegistry;
use crate::server::{Body, json_response};
use crate::upstream::Upstream;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

/// Everything a request handler needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    /// Validated configuration.
    pub config: Config,
    /// Caller authentication.
    pub verifier: Verifier,
    /// Loaded provider plugins.
    pub plugins: Arc<PluginRegistry>,
    /// Prompt templates; swapped whole when the prompts directory changes.
    pub prompts: arc_swap::ArcSwap<PromptRegistry>,
    /// Clients for model servers (egress-policed), one per serving thread: see [`AppState::upstream`].
    pub upstreams: Vec<Upstream>,
    /// Prometheus metrics.
    pub metrics: std::sync::Arc<crate::telemetry::Metrics>,
}

impl AppState {
    /// The model-server client of the serving thread this runs on, so that pooled connections
    /// are driven by the thread that uses them.
    pub fn upstream(&self) -> &Upstream {
        &self.upstreams[crate::server::workers::current() % self.upstreams.len()]
    }

    /// The current prompt registry; a request keeps the one it started with.
    pub fn prompts(&self) -> std::sync::Arc<PromptRegistry> {
        self.prompts.load_full()
    }

    /// Rebuild the registry from the embedded prompts and `dir`; a directory that does not load
    /// keeps the last good registry in place.
    pub fn reload_prompts(&self, dir: &std::path::Path) {
        match PromptRegistry::embedded_with_dir(dir) {
            Ok(registry) => {
                self.prompts.store(std::sync::Arc::new(registry));
                tracing::info!(dir = %dir.display(), "prompts reloaded");
            }
            Err(error) => tracing::warn!(%error, "prompt files rejected; keeping the prompts already loaded"),
        }
    }
}

/// Public endpoints: no token needed.
enum Public {
    Healthz,
    Ready,
    ModelDefinitions,
    Metrics,
}

/// Endpoints that authenticate the caller before reading the body.
enum Authenticated {
    /// v2 completions and generations.
    CodeV2(code::Task),
    /// v3 completions, v4 suggestions.
    CodeV3(code::Version),
    /// v1 one-shot chat.
    Chat(String),
    /// Registry prompts by id.
    Prompt(prompts::Api, String),
    /// IDE direct access token.
    UserAccessToken,
    /// Duo Chat ReAct step.
    Agent,
}

enum Route {
    Public(Public),
    Authenticated(Authenticated),
}

fn route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    use Authenticated as A;
    let (route, allowed) = match path {
        "/monitoring/healthz" => (Route::Public(Public::Healthz), Method::GET),
        "/monitoring/ready" => (Route::Public(Public::Ready), Method::GET),
        "/v1/models/definitions" => (Route::Public(Public::ModelDefinitions), Method::GET),
        "/metrics" => (Route::Public(Public::Metrics), Method::GET),
        "/v2/code/completions" | "/v2/completions" => {
            (Route::Authenticated(A::CodeV2(code::Task::Completion)), Method::POST)
        }
        "/v2/code/generations" => (Route::Authenticated(A::CodeV2(code::Task::Generation)), Method::POST),
        "/v3/code/completions" => (Route::Authenticated(A::CodeV3(code::Version::V3)), Method::POST),
        "/v4/code/suggestions" => (Route::Authenticated(A::CodeV3(code::Version::V4)), Method::POST),
        "/v1/code/user_access_token" => (Route::Authenticated(A::UserAccessToken), Method::POST),
        "/v2/chat/agent" => (Route::Authenticated(A::Agent), Method::POST),
        _ => {
            if let Some(invokable) = path.strip_prefix("/v1/chat/") {
                if !chat::INVOKABLES.contains(&invokable) {
                    return Err(GatewayError::NotFound);
                }
                (Route::Authenticated(A::Chat(invokable.to_string())), Method::POST)
            } else if let Some((api, raw)) = path
                .strip_prefix("/v1/prompts/")
                .map(|raw| (prompts::Api::V1, raw))
                .or_else(|| path.strip_prefix("/v2/prompts/").map(|raw| (prompts::Api::V2, raw)))
            {
                let id = prompts::decode_id(raw).ok_or(GatewayError::NotFound)?;
                (Route::Authenticated(A::Prompt(api, id)), Method::POST)
            } else {
                return Err(GatewayError::NotFound);
            }
        }
    };
    if *method == allowed { Ok(route) } else { Err(GatewayError::MethodNotAllowed) }
}

/// Dispatch one request. Authentication runs before the body is parsed, as in GitLab's gateway.
pub async fn dispatch(
    state: &AppState,
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
    body: impl std::future::Future<Output = Result<bytes::Bytes, GatewayError>>,
) -> Result<http::Response<Body>, GatewayError> {
    let endpoint = match route(method, path)? {
        Route::Public(public) => return Ok(public_answer(state, public)),
        Route::Authenticated(endpoint) => endpoint,
    };
    let principal = if state.config.bypass_auth {
        crate::auth::Principal::unrestricted()
    } else {
        state.verifier.authenticate(headers).await?
    };
    let body = body.await?;
    match endpoint {
        Authenticated::CodeV2(task) => code::handle_v2(state, &principal, &body, task).await,
        Authenticated::CodeV3(version) => code::handle_v3(state, &principal, &body, version).await,
        Authenticated::Chat(invokable) => chat::handle(state, &principal, &invokable, &body).await,
        Authenticated::Prompt(api, id) => prompts::handle(state, &principal, &id, &body, api).await,
        Authenticated::UserAccessToken => access_token::handle(state, &principal, headers),
        Authenticated::Agent => agent::handle(state, &principal, &body).await,
    }
}

fn public_answer(state: &AppState, public: Public) -> http::Response<Body> {
    match public {
        Public::Healthz => json_response(StatusCode::OK, json!({"status": "ok"}).to_string().into()),
        Public::Ready => {
            let plugins = state.plugins.snapshot();
            let problem = if plugins.is_empty() {
                Some("no provider plugin is loaded")
            } else if !state.verifier.has_keys() {
                Some("no signing key could be loaded from the GitLab instance yet")
            } else {
                None
            };
            let status = if problem.is_some() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            let body = json!({"status": problem.unwrap_or("ok"), "providers": plugins.provider_names()});
            json_response(status, body.to_string().into())
        }
        // With a metrics listener of its own, the API port does not expose them.
        Public::Metrics if state.config.metrics_listen.is_some() => GatewayError::NotFound.into_response(),
        Public::Metrics => crate::server::metrics_response(&state.metrics),
        Public::ModelDefinitions => {
            let models: Vec<Value> =
                crate::prompts::FAMILIES.iter().map(|family| json!({"name": family, "identifier": family})).collect();
            let body = json!({"models": models, "providers": state.plugins.snapshot().provider_names()});
            json_response(StatusCode::OK, body.to_string().into())
        }
    }
}

/// The endpoint a path belongs to, as a bounded label (ids in paths are not labels).
pub fn endpoint_label(path: &str) -> &'static str {
    const FIXED: [&str; 12] = [
        "/monitoring/healthz",
        "/monitoring/ready",
        "/v1/models/definitions",
        "/metrics",
        "/v2/code/completions",
        "/v2/completions",
        "/v2/code/generations",
        "/v3/code/completions",
        "/v4/code/suggestions",
        "/v1/code/user_access_token",
        "/v2/chat/agent",
        "/v1/chat/{invokable}",
    ];
    if let Some(fixed) = FIXED.iter().find(|p| **p == path) {
        return fixed;
    }
    if path.starts_with("/v1/chat/") {
        "/v1/chat/{invokable}"
    } else if path.starts_with("/v1/prompts/") {
        "/v1/prompts/{id}"
    } else if path.starts_with("/v2/prompts/") {
        "/v2/prompts/{id}"
    } else {
        "other"
    }
}

/// Unix time, seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A `[{role, content}]` list as chat messages (`system`, `user`, `assistant`).
pub fn parse_messages(value: &Value) -> Result<Vec<wit::Message>, GatewayError> {
    #[derive(serde::Deserialize)]
    struct RawMessage {
        role: String,
        content: String,
    }
    let raw: Vec<RawMessage> = serde_json::from_value(value.clone())
        .map_err(|e| GatewayError::Unprocessable(format!("messages must be a list of {{role, content}}: {e}")))?;
    raw.into_iter()
        .map(|m| {
            let role = match m.role.as_str() {
                "system" => wit::Role::System,
                "user" => wit::Role::User,
                "assistant" => wit::Role::Assistant,
                other => return Err(GatewayError::Unprocessable(format!("unknown message role {other:?}"))),
            };
            Ok(wit::Message { role, content: m.content })
        })
        .collect()
}

/// Parse a JSON body; syntax and shape errors become FastAPI-style 422 issues.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|error| {
        let kind = match error.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "json_invalid",
            serde_json::error::Category::Data | serde_json::error::Category::Io => "value_error",
        };
        GatewayError::Validation(vec![ValidationIssue { kind, loc: vec![json!("body")], msg: error.to_string() }])
    })
}
