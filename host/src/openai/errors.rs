//! A gateway error as OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`),
//! with the status the gateway's one mapping gives it, so that OpenAI's SDKs raise the exception
//! that status means.

use crate::error::GatewayError;
use crate::models::AccessError;
use crate::response::{Body, json_response};
use http::StatusCode;
use serde_json::{Value, json};

/// Status and OpenAI error body for `error`. A request the gateway cannot serve as written is a
/// 400 here (GitLab's API says 422).
pub(super) fn status_and_body(error: &GatewayError) -> (StatusCode, Value) {
    let (status, gitlab_body) = error.status_and_body();
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { status };
    let message = match gitlab_body.get("detail").or_else(|| gitlab_body.get("error")) {
        Some(Value::String(message)) => message.clone(),
        Some(Value::Array(issues)) => {
            issues.iter().filter_map(|issue| issue.get("msg").and_then(Value::as_str)).collect::<Vec<_>>().join("; ")
        }
        _ => error.to_string(),
    };
    let param = match error {
        GatewayError::InvalidRequest { param, .. } => param.clone(),
        _ => None,
    };
    let code = match error {
        GatewayError::Access(AccessError::MissingKey | AccessError::UnknownKey) => Some("invalid_api_key"),
        GatewayError::Access(AccessError::UnknownModel(_)) => Some("model_not_found"),
        _ if status == StatusCode::TOO_MANY_REQUESTS => Some("rate_limit_exceeded"),
        _ => None,
    };
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    (status, json!({"error": {"message": message, "type": kind, "param": param, "code": code}}))
}

/// The answer to a model API request that failed with `error`, logged once as GitLab's are.
pub(crate) fn error_response(error: GatewayError) -> http::Response<Body> {
    let (status, body) = status_and_body(&error);
    if status.is_server_error() {
        tracing::warn!(error = ?error, status = status.as_u16(), "model API request failed");
    } else {
        tracing::info!(error = ?error, status = status.as_u16(), "model API request refused");
    }
    let mut response = json_response(status, body.to_string().into());
    for (name, value) in error.headers() {
        response.headers_mut().insert(name, value);
    }
    response
}
