//! GitLab-compatible endpoints: the one route table, dispatch to each endpoint's handler, and the
//! request-body parsing they share.

pub(crate) mod access_token;
pub(crate) mod agent;
pub(crate) mod chat;
pub(crate) mod code;
mod date;
pub(crate) mod embeddings;
pub(crate) mod fence;
pub(crate) mod language;
pub(crate) mod model;
pub(crate) mod prompts;
pub(crate) mod react;
pub(crate) mod stream;

use crate::auth::scopes::{self, Requirement};
use crate::error::{GatewayError, ValidationIssue};
use crate::plugins::wit;
use crate::response::{Body, error_response, json_response, metrics_response};
use crate::state::{AppState, RequestState};
use http::{Method, StatusCode};
use serde_json::{Value, json};

/// Endpoints anyone may call: no token is read.
#[derive(Debug)]
enum Public {
    /// `GET /monitoring/healthz`: liveness.
    Healthz,
    /// `GET /monitoring/ready`: readiness.
    Ready,
    /// `GET /v1/models/definitions`: the families and providers served.
    ModelDefinitions,
    /// `GET /metrics` on the API port.
    Metrics,
}

/// Endpoints that authenticate the caller before reading the body.
#[derive(Debug)]
enum Authenticated {
    /// v2 completions and generations.
    CodeV2(code::Task),
    /// v3 completions, v4 suggestions.
    CodeV3(code::Version),
    /// v1 one-shot chat, for one of [`chat::INVOKABLES`] (its scope is in the route).
    Chat,
    /// Registry prompts by (decoded) id.
    Prompt(prompts::Api, String),
    /// IDE direct access token.
    UserAccessToken,
    /// Duo Chat ReAct step.
    Agent,
    /// Code embeddings for semantic search.
    Embeddings(embeddings::Path),
}

/// Every endpoint aigw serves, with who may call it.
#[derive(Debug)]
enum Endpoint {
    Public(Public),
    /// `None`: the handler decides from the body (a v3/v4 component's type, a registry prompt's
    /// own scope).
    Authenticated(Authenticated, Option<Requirement>),
}

/// A request's place in the route table, found once: its endpoint (or the error that answers
/// it) and the bounded label its metrics carry (ids in paths are not labels).
#[derive(Debug)]
pub(crate) struct Route {
    /// The metric label.
    pub label: &'static str,
    endpoint: Result<Endpoint, GatewayError>,
}

/// The route table: each path with its label, endpoint, method and scope requirement, in one arm.
pub(crate) fn route(method: &Method, path: &str) -> Route {
    use Authenticated as A;
    use code::{Task, Version};
    let public = |endpoint, method| Ok((Endpoint::Public(endpoint), method));
    let scoped = |endpoint, requirement, method| Ok((Endpoint::Authenticated(endpoint, Some(requirement)), method));
    let by_body = |endpoint, method| Ok((Endpoint::Authenticated(endpoint, None), method));
    let (label, found) = match path {
        "/monitoring/healthz" => ("/monitoring/healthz", public(Public::Healthz, Method::GET)),
        "/monitoring/ready" => ("/monitoring/ready", public(Public::Ready, Method::GET)),
        "/v1/models/definitions" => ("/v1/models/definitions", public(Public::ModelDefinitions, Method::GET)),
        "/metrics" => ("/metrics", public(Public::Metrics, Method::GET)),
        "/v2/code/completions" => {
            ("/v2/code/completions", scoped(A::CodeV2(Task::Completion), scopes::CODE_COMPLETION, Method::POST))
        }
        "/v2/completions" => {
            ("/v2/completions", scoped(A::CodeV2(Task::Completion), scopes::CODE_COMPLETION, Method::POST))
        }
        "/v2/code/generations" => {
            ("/v2/code/generations", scoped(A::CodeV2(Task::Generation), scopes::CODE_GENERATION, Method::POST))
        }
        "/v3/code/completions" => ("/v3/code/completions", by_body(A::CodeV3(Version::V3), Method::POST)),
        "/v4/code/suggestions" => ("/v4/code/suggestions", by_body(A::CodeV3(Version::V4), Method::POST)),
        "/v1/code/user_access_token" => {
            ("/v1/code/user_access_token", scoped(A::UserAccessToken, scopes::USER_ACCESS_TOKEN, Method::POST))
        }
        "/v2/chat/agent" => ("/v2/chat/agent", scoped(A::Agent, scopes::CHAT_AGENT, Method::POST)),
        "/v1/embeddings/code_embeddings" => (
            "/v1/embeddings/code_embeddings",
            scoped(A::Embeddings(embeddings::Path::Index), scopes::CODE_EMBEDDINGS, Method::POST),
        ),
        "/v1/embeddings/code_embeddings/index" => (
            "/v1/embeddings/code_embeddings/index",
            scoped(A::Embeddings(embeddings::Path::Index), scopes::CODE_EMBEDDINGS, Method::POST),
        ),
        "/v1/embeddings/code_embeddings/search" => (
            "/v1/embeddings/code_embeddings/search",
            scoped(A::Embeddings(embeddings::Path::Search), scopes::CODE_EMBEDDINGS, Method::POST),
        ),
        _ => {
            if let Some(invokable) = path.strip_prefix("/v1/chat/") {
                let known = chat::INVOKABLES.iter().copied().find(|known| *known == invokable);
                let found = match known {
                    Some(invokable) => scoped(A::Chat, scopes::one_shot_chat(invokable), Method::POST),
                    None => Err(GatewayError::NotFound),
                };
                ("/v1/chat/{invokable}", found)
            } else if let Some((label, api, raw)) = path
                .strip_prefix("/v1/prompts/")
                .map(|raw| ("/v1/prompts/{id}", prompts::Api::V1, raw))
                .or_else(|| path.strip_prefix("/v2/prompts/").map(|raw| ("/v2/prompts/{id}", prompts::Api::V2, raw)))
            {
                let found = match prompts::decode_id(raw) {
                    Some(id) => by_body(A::Prompt(api, id), Method::POST),
                    None => Err(GatewayError::NotFound),
                };
                (label, found)
            } else {
                ("other", Err(GatewayError::NotFound))
            }
        }
    };
    let endpoint = found.and_then(
        |(endpoint, allowed)| {
            if *method == allowed { Ok(endpoint) } else { Err(GatewayError::MethodNotAllowed) }
        },
    );
    Route { label, endpoint }
}

/// Answer one routed request. Authentication runs before the body is read, and the scope
/// check after it, as in GitLab's gateway.
pub(crate) async fn dispatch(
    state: &RequestState<'_>,
    route: Route,
    headers: &http::HeaderMap,
    body: impl std::future::Future<Output = Result<bytes::Bytes, GatewayError>>,
) -> Result<http::Response<Body>, GatewayError> {
    let (endpoint, requirement) = match route.endpoint? {
        Endpoint::Public(public) => return Ok(public_answer(state, public)),
        Endpoint::Authenticated(endpoint, requirement) => (endpoint, requirement),
    };
    let principal = if state.config.bypass_auth {
        crate::auth::Principal::unrestricted()
    } else {
        state.verifier.authenticate(headers).await?
    };
    // Who the caller is, for its log line: from the token's claims, never from the headers.
    if let Some(facts) = crate::telemetry::current_facts() {
        crate::telemetry::record(&facts, |f| {
            f.gitlab_realm.clone_from(&principal.realm);
            f.root_namespace_id.clone_from(&principal.root_namespace_id);
        });
    }
    let body = body.await?;
    if let Some(requirement) = requirement {
        principal.require(&requirement)?;
    }
    match endpoint {
        Authenticated::CodeV2(task) => code::handle_v2(state, &body, task, &code::typing_user(headers)).await,
        Authenticated::CodeV3(version) => code::handle_v3(state, &principal, headers, &body, version).await,
        Authenticated::Chat => chat::handle(state, &body).await,
        Authenticated::Prompt(api, id) => prompts::handle(state, &principal, &id, &body, api).await,
        Authenticated::UserAccessToken => access_token::handle(state, &principal, headers),
        Authenticated::Agent => agent::handle(state, &principal, headers, &body).await,
        Authenticated::Embeddings(path) => embeddings::handle(state, &body, path).await,
    }
}

/// The answers that need no caller: health, readiness, metrics, the model catalogue.
fn public_answer(state: &AppState, public: Public) -> http::Response<Body> {
    match public {
        Public::Healthz => json_response(StatusCode::OK, json!({"status": "ok"}).to_string().into()),
        Public::Ready => {
            let plugins = state.plugins.snapshot();
            let problem = if state.is_draining() {
                Some("draining: shutting down")
            } else if plugins.is_empty() {
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
        Public::Metrics if state.config.metrics_listen.is_some() => error_response(GatewayError::NotFound),
        Public::Metrics => metrics_response(&state.metrics),
        Public::ModelDefinitions => {
            let prompts = state.prompts();
            // Each family, with the supported models GitLab maps to it.
            let models: Vec<Value> = prompts
                .families()
                .all()
                .map(|family| json!({"name": family.name, "identifier": family.name, "models": family.models}))
                .collect();
            // Which prompt set serves: GitLab's registry (and the ids it has), else aigw's own.
            let gitlab = prompts.gitlab_ids();
            let prompt_set = if gitlab.is_some() { "gitlab" } else { "aigw" };
            let body = json!({
                "models": models,
                "providers": state.plugins.snapshot().provider_names(),
                "prompts": {"set": prompt_set, "gitlab_prompt_ids": gitlab},
            });
            json_response(StatusCode::OK, body.to_string().into())
        }
    }
}

/// Unix time, seconds.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// A `[{role, content}]` list as chat messages (`system`, `user`, `assistant`).
pub(crate) fn parse_messages(value: &Value) -> Result<Vec<wit::Message>, GatewayError> {
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
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, GatewayError> {
    serde_json::from_slice(body).map_err(|error| {
        let kind = match error.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "json_invalid",
            serde_json::error::Category::Data | serde_json::error::Category::Io => "value_error",
        };
        GatewayError::Validation(vec![ValidationIssue { kind, loc: vec![json!("body")], msg: error.to_string() }])
    })
}
