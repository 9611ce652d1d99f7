//! Response plumbing: the body type, JSON and streamed responses, and a gateway error rendered as
//! its response. A leaf: it knows no route and no handler.

use crate::error::GatewayError;
use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

/// Response body type: a full body or a stream, boxed.
pub(crate) type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, GatewayError>;

/// `text/event-stream`, as GitLab's gateway labels its raw text and SSE streams.
pub(crate) const EVENT_STREAM: &str = "text/event-stream; charset=utf-8";

/// Newline-delimited JSON, one object per line (Duo Chat's agent events), labelled as GitLab's
/// gateway labels it.
pub(crate) const NDJSON: &str = "application/x-ndjson; charset=utf-8";

/// A JSON response (`application/json`, compact, as FastAPI sends it).
pub(crate) fn json_response(status: StatusCode, body: Bytes) -> http::Response<Body> {
    let mut response = http::Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A streamed body of `content_type`. A frame that is an error aborts the body, so the client
/// sees an incomplete answer rather than a silently truncated one.
pub(crate) fn streamed_response(
    content_type: &'static str,
    frames: impl Stream<Item = Result<Frame<Bytes>, GatewayError>> + Send + 'static,
) -> http::Response<Body> {
    let mut response = http::Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The moment a streamed answer's model call must end by (its total deadline), carried as a
/// response extension so that the server can close a connection whose caller reads too slowly
/// for the gateway to notice on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamDeadline(pub(crate) tokio::time::Instant);

/// `response`, marked with the `deadline` of the stream it carries.
pub(crate) fn with_deadline(
    mut response: http::Response<Body>,
    deadline: Option<tokio::time::Instant>,
) -> http::Response<Body> {
    if let Some(deadline) = deadline {
        response.extensions_mut().insert(StreamDeadline(deadline));
    }
    response
}

/// `GET /metrics`, on the API port or on the metrics listener: the Prometheus text format.
pub(crate) fn metrics_response(metrics: &crate::telemetry::Metrics) -> http::Response<Body> {
    let mut response = json_response(StatusCode::OK, metrics.render().into());
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE));
    response
}

/// The answer to a request that failed with `error`: its status, JSON body and headers. The
/// failure is logged here, once, with the internal reason the caller never sees.
pub(crate) fn error_response(error: GatewayError) -> http::Response<Body> {
    let (status, body) = error.status_and_body();
    // The debug form carries internal reasons (why a token was refused, which timeout
    // fired) that the caller never sees; none of them contains a token or a key.
    if status.is_server_error() {
        tracing::warn!(error = ?error, status = status.as_u16(), "request failed");
    } else {
        tracing::info!(error = ?error, status = status.as_u16(), "request refused");
    }
    let mut response = json_response(status, Bytes::from(body.to_string()));
    for (name, value) in error.headers() {
        response.headers_mut().insert(name, value);
    }
    response
}
