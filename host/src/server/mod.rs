//! The HTTP server: accept loop (HTTP/1.1 and h2, plain or TLS), client allowlist, body limits,
//! the request's metrics and log line, graceful drain. It calls `api`; `api` never calls it.

pub(crate) mod tls;
pub(crate) mod workers;

mod request_log;
mod write_watch;

use crate::api;
use crate::error::GatewayError;
use crate::response::{Body, error_response, json_response, metrics_response};
use crate::state::AppState;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use request_log::{LoggedBody, RequestLine};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use write_watch::WriteWatch;

/// Pause after a failed `accept` (out of file descriptors and the like), instead of spinning.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest silence between two log lines about failing `accept`s: a descriptor shortage makes
/// every attempt fail, and a line per attempt would flood the log.
const ACCEPT_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs failing `accept`s at most once per [`ACCEPT_LOG_INTERVAL`], with how many it did not log.
#[derive(Default)]
struct AcceptFailures {
    last_logged: Option<std::time::Instant>,
    unlogged: u64,
}

impl AcceptFailures {
    fn failed(&mut self, error: &std::io::Error) {
        let now = std::time::Instant::now();
        if self.last_logged.is_some_and(|last| now.duration_since(last) < ACCEPT_LOG_INTERVAL) {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(%error, failures_not_logged = self.unlogged, "accepting a connection failed; backing off");
        (self.last_logged, self.unlogged) = (Some(now), 0);
    }
}

/// Longest a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serve `listener` as worker `worker` until `shutdown` resolves, then stop accepting and let
/// open connections finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    worker: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client must finish sending a request head within this time (slowloris); hyper applies it
    // only with a timer.
    builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(state.config.header_read_timeout);
    tokio::pin!(shutdown);
    let mut failures = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    failures.failed(&error);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Past the cap a new connection is closed at once: the ones in flight keep their
        // descriptors, workers and plugin slots.
        let Some(slot) = state.connections.admit() else {
            state.metrics.connection_refused();
            drop(stream);
            continue;
        };
        // Head and body of small answers must not wait for the client's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let write_idle = state.config.write_idle_timeout;
        let watch = WriteWatch::new();
        let service_watch = Arc::clone(&watch);
        let service_state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |request| {
            let (state, watch) = (Arc::clone(&service_state), Arc::clone(&service_watch));
            async move { Ok::<_, Infallible>(handle(&state, worker, peer.ip(), request, watch).await) }
        });
        let metrics = Arc::clone(&state.metrics);
        match &tls {
            None => {
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                tokio::spawn(async move {
                    tokio::select! {
                        ended = connection => if let Err(error) = ended {
                            tracing::debug!(error = %error, "connection ended with an error");
                        },
                        stall = watch.stalled(write_idle) => dropped(&metrics, peer, stall),
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, watcher) = (acceptor.clone(), builder.clone(), graceful.watcher());
                tokio::spawn(async move {
                    // The handshake runs in the connection's task, bounded, so a slow client
                    // cannot hold up the accept loop.
                    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    let Ok(Ok(tls_stream)) = handshake else {
                        tracing::debug!(%peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let connection =
                        watcher.watch(builder.serve_connection(TokioIo::new(tls_stream), service).into_owned());
                    tokio::select! {
                        ended = connection => if let Err(error) = ended {
                            tracing::debug!(error = %error, "connection ended with an error");
                        },
                        stall = watch.stalled(write_idle) => dropped(&metrics, peer, stall),
                    }
                    drop(slot);
                });
            }
        }
    }
    // Closed now, not after the drain: a connection waiting in the backlog would be accepted by
    // the kernel and then reset, where a closed port sends the caller elsewhere at once.
    drop(listener);
    graceful.shutdown().await;
}

/// A caller left its answer unread past `AIGW_SERVER__WRITE_IDLE_TIMEOUT_MS`, or read a stream
/// so slowly that it outlived its deadline: its connection is dropped, and with it the model
/// call, its upstream connection and its plugin slot.
fn dropped(metrics: &crate::telemetry::Metrics, peer: std::net::SocketAddr, stall: write_watch::Stall) {
    tracing::info!(%peer, reason = stall.reason(), "the caller is not reading its answer in time; connection dropped");
    metrics.connection_dropped(stall.reason());
}

/// The instance's `X-Request-ID` (printable, at most 128 bytes), or a new random one.
fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()))
}

/// Whether the client allowlist admits `peer` (no allowlist: everyone).
fn ingress_allows(state: &AppState, peer: std::net::IpAddr) -> bool {
    let peer = crate::upstream::egress::canonical(peer);
    state.config.ingress_allow.as_ref().is_none_or(|allow| allow.iter().any(|net| net.contains(&peer)))
}

async fn handle(
    state: &AppState,
    worker: usize,
    peer: std::net::IpAddr,
    request: http::Request<Incoming>,
    watch: Arc<WriteWatch>,
) -> http::Response<Body> {
    let started = std::time::Instant::now();
    workers::note_request(started);
    let route = api::route(request.method(), request.uri().path());
    let endpoint = route.label;
    if !ingress_allows(state, peer) {
        // Before any token work: a caller outside the allowlist learns nothing else.
        tracing::info!(%peer, path = request.uri().path(), "client outside AIGW_INGRESS__ALLOW refused");
        state.metrics.request(endpoint, 403, None, started.elapsed());
        return json_response(StatusCode::FORBIDDEN, serde_json::json!({"detail": "Forbidden"}).to_string().into());
    }
    let (parts, body) = request.into_parts();
    let limit = state.config.max_body_bytes;
    let body = read_body(body, &parts.headers, limit, state.config.body_read_timeout);
    let facts = crate::telemetry::SharedFacts::default();
    let result = crate::telemetry::with_facts(
        Arc::clone(&facts),
        api::dispatch(&state.for_worker(worker), route, &parts.headers, body),
    )
    .await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => error_response(error),
    };
    let elapsed = started.elapsed();
    let (upstream, provider) = facts.lock().map(|f| (f.upstream, f.provider.clone())).unwrap_or_default();
    let overhead = elapsed.saturating_sub(upstream);
    let request_id = request_id(&parts.headers);
    let headers = response.headers_mut();
    if let Ok(value) = http::HeaderValue::from_str(&format!("{:.3}", overhead.as_secs_f64() * 1e3)) {
        headers.insert("x-aigw-overhead-ms", value);
    }
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", value);
    }
    // While draining, a kept-alive HTTP/1 connection would bring its caller (or a balancer's
    // pooled connection) back here; closing it after this answer sends the next request to a
    // replica that stays. HTTP/2 learns it from the GOAWAY the drain sends.
    if state.is_draining() && parts.version <= http::Version::HTTP_11 {
        headers.insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    let status = response.status().as_u16();
    state.metrics.request(endpoint, status, provider.as_deref(), elapsed);
    state.metrics.overhead(endpoint, overhead);
    // The log line is written when the body is done, so streams report tokens and duration.
    let line = RequestLine {
        request_id,
        method: parts.method,
        path: parts.uri.path().to_string(),
        status,
        started,
        head: elapsed,
        overhead,
        facts,
    };
    if let Some(crate::response::StreamDeadline(deadline)) = response.extensions().get() {
        watch.streaming_until(*deadline);
    }
    response.map(|body| LoggedBody::new(body, line, watch).boxed_unsync())
}

/// The request body, up to `limit` bytes and within `timeout` (a slow POST cannot hold a
/// connection and its handler open indefinitely).
async fn read_body(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, GatewayError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(GatewayError::PayloadTooLarge(limit));
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| GatewayError::BodyTimeout(timeout))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(GatewayError::PayloadTooLarge(limit)),
        Err(error) => Err(GatewayError::Validation(vec![crate::error::ValidationIssue {
            kind: "body_read",
            loc: vec![serde_json::json!("body")],
            msg: format!("the request body could not be read: {error}"),
        }])),
    }
}

/// The separate metrics listener (`AIGW_METRICS__LISTEN`): `GET /metrics`, and the liveness
/// probe `GET /monitoring/healthz`, which keeps answering here when the API port is at its
/// connection cap.
pub(crate) async fn serve_metrics(listener: TcpListener, metrics: Arc<crate::telemetry::Metrics>) {
    let mut failures = AcceptFailures::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                failures.failed(&error);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move {
                    let response = match (request.method(), request.uri().path()) {
                        (&http::Method::GET, "/metrics") => metrics_response(&metrics),
                        (&http::Method::GET, "/monitoring/healthz") => {
                            json_response(StatusCode::OK, serde_json::json!({"status": "ok"}).to_string().into())
                        }
                        _ => error_response(GatewayError::NotFound),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
