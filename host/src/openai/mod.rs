//! The OpenAI-compatible model API (`/v1/chat/completions`, `/v1/embeddings`, `/v1/models`): its routes, client-key
//! authentication, and each endpoint's hand-over to the pipeline. OpenAI's shapes live in this
//! room only; GitLab's stay in `api`.

mod answer;
mod embeddings;
pub(crate) mod errors;
mod request;

use crate::error::GatewayError;
use crate::models::{ClientKey, ModelCatalog};
use crate::pipeline::{self, ModelTarget};
use crate::response::{Body, json_response};
use crate::state::RequestState;
use http::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

/// A model API endpoint.
#[derive(Debug)]
enum Endpoint {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `GET /v1/models`: the models the key may use.
    Models,
    /// `GET /v1/models/{name}`.
    Model(String),
}

/// A request's place in the model API's routes.
#[derive(Debug)]
pub(crate) struct Route {
    /// The metric label.
    pub(crate) label: &'static str,
    endpoint: Result<Endpoint, GatewayError>,
}

/// The model API's route for `path`, or `None` when the path is not one of its own (GitLab's API
/// has it). The two share `/v1/`: GitLab's `/v1/chat/{invokable}` has no `completions`, and its
/// `/v1/models/definitions` is GitLab's, so no named model can be called `definitions`.
pub(crate) fn route(method: &Method, path: &str) -> Option<Route> {
    let (label, endpoint, allowed) = match path {
        "/v1/chat/completions" => ("/v1/chat/completions", Endpoint::ChatCompletions, Method::POST),
        "/v1/embeddings" => ("/v1/embeddings", Endpoint::Embeddings, Method::POST),
        "/v1/models" => ("/v1/models", Endpoint::Models, Method::GET),
        "/v1/models/definitions" => return None,
        _ => {
            let name = path.strip_prefix("/v1/models/").filter(|name| !name.is_empty())?;
            ("/v1/models/{name}", Endpoint::Model(name.to_string()), Method::GET)
        }
    };
    let endpoint = if *method == allowed { Ok(endpoint) } else { Err(GatewayError::MethodNotAllowed) };
    Some(Route { label, endpoint })
}

/// Answer one model API request: the client key first, then the body.
pub(crate) async fn dispatch(
    state: &RequestState<'_>,
    route: Route,
    headers: &http::HeaderMap,
    body: impl std::future::Future<Output = Result<bytes::Bytes, GatewayError>>,
) -> Result<http::Response<Body>, GatewayError> {
    let endpoint = route.endpoint?;
    let catalog = state.models();
    let key = catalog.authenticate(bearer(headers), state.peer)?;
    match endpoint {
        Endpoint::ChatCompletions => chat_completions(state, &catalog, key, &body.await?).await,
        Endpoint::Embeddings => {
            let call = embeddings::parse(&body.await?)?;
            let target = named_target(&catalog, key, &call.model)?;
            embeddings::answer(state, &target, call).await
        }
        Endpoint::Models => Ok(models(&catalog, key)),
        Endpoint::Model(name) => {
            let model = catalog.authorize(key, &name)?;
            Ok(json_response(StatusCode::OK, model_object(&model.name).to_string().into()))
        }
    }
}

/// The named model `name` as the target of a call, if `key` may use it; the request's log line
/// names both.
fn named_target(catalog: &ModelCatalog, key: &ClientKey, name: &str) -> Result<ModelTarget, GatewayError> {
    let named = catalog.authorize(key, name)?;
    crate::telemetry::note_client_key(&key.id, Some(&named.name));
    Ok(ModelTarget::named(named, &named.name))
}

/// The key in `Authorization: Bearer <key>`.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// How long a conversation's model call may take in all: agent answers run long.
fn total_timeout(state: &RequestState<'_>) -> Duration {
    state.config.model_api.total_timeout
}

async fn chat_completions(
    state: &RequestState<'_>,
    catalog: &ModelCatalog,
    key: &ClientKey,
    body: &[u8],
) -> Result<http::Response<Body>, GatewayError> {
    let request::ChatCall { model, mut request, include_usage } = request::parse(body)?;
    let target = named_target(catalog, key, &model)?;
    request.model.clone_from(&target.model);
    let work = crate::fleet::Work::of(key.class);
    let answer = pipeline::converse(state, &target, request, total_timeout(state), work).await?;
    Ok(answer::respond(answer, &model, include_usage))
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "aigw"})
}

/// The models the key may use, in the models file's order.
fn models(catalog: &ModelCatalog, key: &ClientKey) -> http::Response<Body> {
    let data: Vec<_> =
        catalog.models().filter(|model| key.allows(&model.name)).map(|m| model_object(&m.name)).collect();
    json_response(StatusCode::OK, json!({"object": "list", "data": data}).to_string().into())
}
