//! GitLab-compatible endpoints: routing, the shared request state, and request-body parsing.

pub mod code;
pub mod fence;
pub mod language;
pub mod model;
pub mod pipeline;
pub mod stream;

use crate::auth::Verifier;
use crate::config::Config;
use crate::error::{GatewayError, ValidationIssue};
use crate::plugins::PluginRegistry;
use crate::prompts::PromptRegistry;
use crate::server::{Body, json_response};
use crate::upstream::Upstream;
use http::{Method, StatusCode};
use serde_json::json;
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
    /// Prompt templates.
    pub prompts: PromptRegistry,
    /// Client for model servers (egress-policed).
    pub upstream: Upstream,
}

/// The endpoints, by what they need before their handler runs.
enum Route {
    Healthz,
    Ready,
    /// v2 completions and generations.
    CodeV2(code::Task),
    /// v3 completions, v4 suggestions.
    CodeV3(code::Version),
}

fn route(method: &Method, path: &str) -> Result<Route, GatewayError> {
    let (route, allowed) = match path {
        "/monitoring/healthz" => (Route::Healthz, Method::GET),
        "/monitoring/ready" => (Route::Ready, Method::GET),
        "/v2/code/completions" | "/v2/completions" => (Route::CodeV2(code::Task::Completion), Method::POST),
        "/v2/code/generations" => (Route::CodeV2(code::Task::Generation), Method::POST),
        "/v3/code/completions" => (Route::CodeV3(code::Version::V3), Method::POST),
        "/v4/code/suggestions" => (Route::CodeV3(code::Version::V4), Method::POST),
        _ => return Err(GatewayError::NotFound),
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
    match route(method, path)? {
        Route::Healthz => Ok(json_response(StatusCode::OK, json!({"status": "ok"}).to_string().into())),
        Route::Ready => {
            let plugins = state.plugins.snapshot();
            let (status, text) = if plugins.is_empty() {
                (StatusCode::SERVICE_UNAVAILABLE, "no provider plugin loaded")
            } else {
                (StatusCode::OK, "ok")
            };
            Ok(json_response(status, json!({"status": text, "providers": plugins.provider_names()}).to_string().into()))
        }
        Route::CodeV2(task) => {
            let principal = state.verifier.authenticate(headers).await?;
            code::handle_v2(state, &principal, &body.await?, task).await
        }
        Route::CodeV3(version) => {
            let principal = state.verifier.authenticate(headers).await?;
            code::handle_v3(state, &principal, &body.await?, version).await
        }
    }
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
