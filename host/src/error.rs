//! The gateway error: every module's error meets here, in one exhaustive mapping to the status,
//! body and headers GitLab's gateway would send. Data only: `response` renders it.

use crate::auth::AuthError;
use crate::fleet::FleetError;
use crate::models::AccessError;
use crate::plugins::{PluginError, wit};
use crate::prompts::PromptError;
use crate::upstream::UpstreamError;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

/// One problem with a request body, in FastAPI's validation-error shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ValidationIssue {
    /// Error kind, e.g. `missing`, `string_too_long`.
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    /// Path to the offending field, starting with `body`.
    pub(crate) loc: Vec<serde_json::Value>,
    /// Human-readable message.
    pub(crate) msg: String,
}

/// Everything that can end a request with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Authentication or authorisation failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A client key or a named model was refused.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// A model API request the gateway will not serve as written: `param` names the field.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong and what would be right.
        message: String,
        /// The offending field (`messages[2].content`, `n`), when one is.
        param: Option<String>,
    },
    /// The body does not match the endpoint's schema.
    #[error("request validation failed")]
    Validation(Vec<ValidationIssue>),
    /// A well-formed request the gateway cannot serve as asked (e.g. a missing model endpoint).
    #[error("{0}")]
    Unprocessable(String),
    /// The gateway is not configured for this (a missing key, for instance).
    #[error("{0}")]
    Unavailable(String),
    /// The body exceeds the configured limit.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The body would take more memory once parsed than a body is allowed to (its shape, not
    /// its size: many small values).
    #[error("request body would take about {} KiB once parsed, more than the {} KiB allowed (4 × AIGW_SERVER__MAX_BODY_BYTES)", .estimated.div_ceil(1024), .budget / 1024)]
    TooComplex {
        /// The estimated heap of the parse, bytes.
        estimated: u64,
        /// The most a parse may take, bytes.
        budget: u64,
    },
    /// The body did not arrive within the configured time.
    #[error("the request body did not arrive within {} ms", .0.as_millis())]
    BodyTimeout(std::time::Duration),
    /// No such route.
    #[error("not found")]
    NotFound,
    /// The route exists with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// Prompt registry failure.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// Plugin failure.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The model server answered with an HTTP error, reported as GitLab's prompt endpoints do.
    #[error("{}: {}", .0.as_u16(), .0.canonical_reason().unwrap_or("Unknown"))]
    ModelAnswered(StatusCode),
    /// The model server refused the call with 400, 401 or 429, passed on with that status, as
    /// GitLab's embeddings endpoints do.
    #[error("The model server refused the request: {status}")]
    ModelRefused {
        /// The status it sent.
        status: StatusCode,
        /// Its `Retry-After`, passed on for 429.
        retry_after: Option<HeaderValue>,
        /// How many calls were made.
        calls: u32,
    },
    /// An OpenAI-style endpoint without `/v1` answered 404: the most common misconfiguration,
    /// said as such.
    #[error("The model server answered 404 Not Found at {endpoint}; OpenAI-compatible endpoints usually end with /v1")]
    MissingV1 {
        /// The endpoint as configured.
        endpoint: String,
    },
    /// No model server of a named model's pool could take the request.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// Model server or network failure, after `calls` calls (retries included).
    #[error("{error}")]
    Upstream {
        /// The last call's failure.
        error: UpstreamError,
        /// How many calls were made.
        calls: u32,
    },
}

impl From<UpstreamError> for GatewayError {
    fn from(error: UpstreamError) -> Self {
        GatewayError::Upstream { error, calls: 1 }
    }
}

/// Generic body for plugin failures: the details (which may describe the request) go to the log.
const PLUGIN_FAILED: &str = "The model provider plugin failed to handle this request";

impl GatewayError {
    /// Status code and JSON body. Upstream bodies and secrets are never echoed.
    pub(crate) fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let detail = |status: StatusCode, message: String| (status, json!({ "detail": message }));
        match self {
            GatewayError::Auth(auth) => match auth {
                AuthError::MissingHeader
                | AuthError::InvalidHeader
                | AuthError::WrongAuthenticationType
                | AuthError::Forbidden { .. }
                | AuthError::HeaderMismatch(_) => (StatusCode::UNAUTHORIZED, json!({ "error": auth.to_string() })),
                AuthError::MissingScope(_) | AuthError::MissingContextScope(_) | AuthError::PromptScope(_) => {
                    detail(StatusCode::FORBIDDEN, auth.to_string())
                }
            },
            GatewayError::Access(access) => match access {
                AccessError::MissingKey | AccessError::UnknownKey => {
                    detail(StatusCode::UNAUTHORIZED, access.to_string())
                }
                AccessError::OutsideIngress
                | AccessError::WrongNetwork { .. }
                | AccessError::ModelNotAllowed { .. } => detail(StatusCode::FORBIDDEN, access.to_string()),
                AccessError::UnknownModel(_) => detail(StatusCode::NOT_FOUND, access.to_string()),
            },
            GatewayError::InvalidRequest { message, .. } => detail(StatusCode::BAD_REQUEST, message.clone()),
            GatewayError::Validation(issues) => (StatusCode::UNPROCESSABLE_ENTITY, json!({ "detail": issues })),
            GatewayError::Unprocessable(message) => detail(StatusCode::UNPROCESSABLE_ENTITY, message.clone()),
            GatewayError::Unavailable(message) => detail(StatusCode::SERVICE_UNAVAILABLE, message.clone()),
            GatewayError::PayloadTooLarge(_) | GatewayError::TooComplex { .. } => {
                detail(StatusCode::PAYLOAD_TOO_LARGE, self.to_string())
            }
            GatewayError::BodyTimeout(_) => detail(StatusCode::REQUEST_TIMEOUT, self.to_string()),
            GatewayError::NotFound => detail(StatusCode::NOT_FOUND, "Not Found".into()),
            GatewayError::MethodNotAllowed => detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed".into()),
            GatewayError::ModelAnswered(_) => detail(StatusCode::MISDIRECTED_REQUEST, self.to_string()),
            GatewayError::MissingV1 { .. } => detail(StatusCode::UNPROCESSABLE_ENTITY, self.to_string()),
            GatewayError::ModelRefused { status, calls, .. } => {
                let why = match status.as_u16() {
                    401 => "check the model's API key",
                    429 => "it is rate limiting requests",
                    _ => "the gateway log has its reason",
                };
                let after = if *calls > 1 { format!(" (after {calls} calls)") } else { String::new() };
                detail(*status, format!("{self}: {why}{after}"))
            }
            GatewayError::Prompt(prompt) => match prompt {
                PromptError::UnsupportedFamily { .. } | PromptError::Render { .. } => {
                    detail(StatusCode::UNPROCESSABLE_ENTITY, prompt.to_string())
                }
                // GitLab's gateway answers 400 when its registry has no such prompt or version.
                PromptError::BadVersion(_) | PromptError::NotFound(_) => {
                    detail(StatusCode::BAD_REQUEST, prompt.to_string())
                }
                PromptError::BadFile { .. } => {
                    detail(StatusCode::INTERNAL_SERVER_ERROR, "Prompt registry error".into())
                }
            },
            GatewayError::Plugin(plugin) => match plugin {
                PluginError::UnknownProvider { .. } | PluginError::NoEmbeddings { .. } | PluginError::NoChat { .. } => {
                    detail(StatusCode::UNPROCESSABLE_ENTITY, plugin.to_string())
                }
                PluginError::Capacity => {
                    detail(StatusCode::SERVICE_UNAVAILABLE, "The gateway is at capacity; retry shortly".into())
                }
                PluginError::Guest(wit::PluginError::InvalidInput(_) | wit::PluginError::Unsupported(_)) => {
                    detail(StatusCode::UNPROCESSABLE_ENTITY, plugin.to_string())
                }
                PluginError::Guest(wit::PluginError::MalformedResponse(_)) => {
                    detail(StatusCode::BAD_GATEWAY, "The model server's answer could not be understood".into())
                }
                PluginError::Invalid(_)
                | PluginError::BadInfo(_)
                | PluginError::Cache { .. }
                | PluginError::Trap(_)
                | PluginError::Deadline(_)
                | PluginError::MemoryLimit(_) => detail(StatusCode::BAD_GATEWAY, PLUGIN_FAILED.into()),
            },
            GatewayError::Fleet(fleet) => match fleet {
                FleetError::Saturated { .. } => detail(StatusCode::TOO_MANY_REQUESTS, fleet.to_string()),
                FleetError::NoMember { .. } => detail(StatusCode::SERVICE_UNAVAILABLE, fleet.to_string()),
            },
            GatewayError::Upstream { error, calls } => {
                let (status, mut body) = upstream_status_and_body(error);
                if *calls > 1
                    && let Some(detail) = body["detail"].as_str()
                {
                    // The caller learns that the gateway already tried again.
                    body["detail"] = json!(format!("{detail} (after {calls} calls)"));
                }
                (status, body)
            }
        }
    }

    /// Extra headers the answer carries (`Retry-After` of a rate-limited model server).
    pub(crate) fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        match self {
            GatewayError::Upstream {
                error: UpstreamError::Status { status, retry_after: Some(value), .. }, ..
            } if *status == StatusCode::TOO_MANY_REQUESTS => {
                vec![(header::RETRY_AFTER, value.clone())]
            }
            GatewayError::ModelRefused { status, retry_after: Some(value), .. }
                if *status == StatusCode::TOO_MANY_REQUESTS =>
            {
                vec![(header::RETRY_AFTER, value.clone())]
            }
            GatewayError::Fleet(fleet) => vec![(header::RETRY_AFTER, HeaderValue::from(fleet.retry_after()))],
            _ => Vec::new(),
        }
    }
}

/// Status and body for a model server or network failure.
fn upstream_status_and_body(upstream: &UpstreamError) -> (StatusCode, serde_json::Value) {
    let detail = |status: StatusCode, message: String| (status, json!({ "detail": message }));
    match upstream {
        UpstreamError::InvalidRequest(message) => detail(StatusCode::BAD_GATEWAY, message.clone()),
        UpstreamError::Refused(refused) => detail(StatusCode::FORBIDDEN, refused.to_string()),
        UpstreamError::Connect(_) => detail(StatusCode::BAD_GATEWAY, "The model server could not be reached".into()),
        UpstreamError::Timeout { .. } => {
            detail(StatusCode::GATEWAY_TIMEOUT, "The model server did not answer in time".into())
        }
        UpstreamError::Status { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
            detail(StatusCode::TOO_MANY_REQUESTS, "The model server is rate limiting requests".into())
        }
        UpstreamError::Status { status, .. } => {
            detail(StatusCode::BAD_GATEWAY, format!("The model server answered {status}"))
        }
        UpstreamError::Body(_) => detail(StatusCode::BAD_GATEWAY, "The model server's answer could not be read".into()),
        UpstreamError::Signing(message) => detail(StatusCode::BAD_GATEWAY, message.clone()),
        UpstreamError::Handshake(_) => {
            detail(StatusCode::BAD_GATEWAY, "The TLS handshake with the model server failed".into())
        }
        UpstreamError::Tls(_) => detail(StatusCode::INTERNAL_SERVER_ERROR, "TLS is unavailable".into()),
    }
}
