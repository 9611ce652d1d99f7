//! The HTTP server: accept loop (HTTP/1.1 and h2, plain or TLS), client allowlist, body limits,
//! the request's metrics and log line, graceful drain. It calls `api`; `api` never calls it.

pub(crate) mod tls;
pub(crate) mod workers;

mod abortive;
mod chunk_guard;
mod host_header;
mod request_log;
mod write_watch;

use crate::admission::{Admission, Admitted, ConnectionSlot, RequestMark};
use crate::api;
use crate::error::GatewayError;
use crate::response::{Body, error_response, json_response, metrics_response};
use crate::state::AppState;
use abortive::{AbortHandle, AbortableStream};
use bytes::Bytes;
use chunk_guard::{ChunkGuard, DeclaredPastLimit};
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
        // At the cap, an idle connection (keep-alive, or one that has sent no request yet)
        // gives way to the newcomer; only when every connection has a request in progress is
        // the newcomer closed at once, so those keep their descriptors, workers and slots.
        let slot = match admit(&state.connections).await {
            Some((slot, gave_way)) => {
                if gave_way {
                    state.metrics.connection_dropped("idle_at_cap");
                }
                slot
            }
            None => {
                state.metrics.connection_refused();
                drop(stream);
                continue;
            }
        };
        // Head and body of small answers must not wait for the client's delayed ACK.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let slot = Arc::new(slot);
        let watch = WriteWatch::new();
        let (service_watch, service_state, service_slot) = (Arc::clone(&watch), Arc::clone(&state), Arc::clone(&slot));
        let service = hyper::service::service_fn(move |request| {
            let (state, watch) = (Arc::clone(&service_state), Arc::clone(&service_watch));
            let mark = service_slot.begin_request();
            async move { Ok::<_, Infallible>(handle(&state, worker, peer.ip(), request, watch, mark).await) }
        });
        let (stream, abort) = AbortableStream::new(stream);
        let body_limit = state.config.max_body_bytes;
        let guard = ConnectionGuard {
            slot,
            watch,
            abort,
            peer,
            write_idle: state.config.write_idle_timeout,
            metrics: Arc::clone(&state.metrics),
        };
        match &tls {
            None => {
                let stream = ChunkGuard::new(stream, body_limit);
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                tokio::spawn(guard.drive(connection));
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
                    let stream = ChunkGuard::new(tls_stream, body_limit);
                    let connection =
                        watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                    guard.drive(connection).await;
                });
            }
        }
    }
    // Closed now, not after the drain: a connection waiting in the backlog would be accepted by
    // the kernel and then reset, where a closed port sends the caller elsewhere at once.
    drop(listener);
    graceful.shutdown().await;
}

/// Longest the accept loop waits for the connections that gave way to close (they close within
/// a scheduler turn of their worker; under CPU pressure that turn can take milliseconds).
const CLOSING_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// A place for a newcomer under the cap, and whether an idle connection gave way for it; `None`
/// to refuse it. After an idle connection gave way the accept loop yields to it, and while those
/// that did are still closing it waits for them: accepting a backlog of newcomers in one go
/// would outrun their closing and refuse callers for nothing.
async fn admit(connections: &Arc<Admission>) -> Option<(ConnectionSlot, bool)> {
    let deadline = tokio::time::Instant::now() + CLOSING_WAIT;
    loop {
        let freed = connections.freed();
        match connections.admit() {
            Admitted::Free(slot) => return Some((slot, false)),
            Admitted::GaveWay(slot) => {
                tokio::task::yield_now().await;
                return Some((slot, true));
            }
            Admitted::Closing => tokio::time::timeout_at(deadline, freed).await.ok()?,
            Admitted::Full => return None,
        }
    }
}

/// What watches one client connection while hyper serves it: its place under the cap, whether
/// its caller still reads, and how to reset it.
struct ConnectionGuard {
    slot: Arc<ConnectionSlot>,
    watch: Arc<WriteWatch>,
    abort: AbortHandle,
    peer: std::net::SocketAddr,
    write_idle: std::time::Duration,
    metrics: Arc<crate::telemetry::Metrics>,
}

impl ConnectionGuard {
    /// Serve `connection` until it ends, its caller stops reading in time, or it gives way to a
    /// newcomer at the cap; then free its place.
    async fn drive<E: std::fmt::Display>(self, connection: impl std::future::Future<Output = Result<(), E>>) {
        let mut connection = Box::pin(connection);
        tokio::select! {
            ended = &mut connection => if let Err(error) = ended {
                tracing::debug!(error = %error, "connection ended with an error");
            },
            stall = self.watch.stalled(self.write_idle) => {
                // A caller that left its answer unread past the write-idle timeout, or read a
                // stream so slowly that it outlived its deadline: marked before the connection
                // is dropped, so that what the kernel still holds for it is discarded (a reset,
                // not a close), and with it go the model call, its upstream connection and its
                // plugin slot.
                self.abort.abort();
                tracing::info!(peer = %self.peer, reason = stall.reason(), "the caller is not reading its answer in time; connection reset");
                self.metrics.connection_dropped(stall.reason());
            }
            () = self.slot.evicted() => {
                tracing::debug!(peer = %self.peer, "an idle connection gave way to a newcomer at the connection cap");
            }
        }
        // The connection (and its descriptor) goes before its place under the cap.
        drop(connection);
        drop(self.slot);
    }
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

/// Which front door a request came to: GitLab's API or the OpenAI-compatible model API. Each
/// authenticates its callers and renders its errors in its own shape.
enum FrontDoor {
    GitLab(api::Route),
    Models(crate::openai::Route),
}

impl FrontDoor {
    /// The model API's routes are exact paths GitLab's API does not have; every other path is
    /// GitLab's.
    fn route(method: &http::Method, path: &str) -> Self {
        match crate::openai::route(method, path) {
            Some(route) => FrontDoor::Models(route),
            None => FrontDoor::GitLab(api::route(method, path)),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            FrontDoor::GitLab(route) => route.label,
            FrontDoor::Models(route) => route.label,
        }
    }

    fn error_response(&self, error: GatewayError) -> http::Response<Body> {
        match self {
            FrontDoor::GitLab(_) => error_response(error),
            FrontDoor::Models(_) => crate::openai::errors::error_response(error),
        }
    }
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
    mut request: http::Request<Incoming>,
    watch: Arc<WriteWatch>,
    mark: Option<RequestMark>,
) -> http::Response<Body> {
    let started = std::time::Instant::now();
    workers::note_request(started);
    if host_header::drop_malformed(request.headers_mut()) {
        tracing::debug!(path = request.uri().path(), "malformed Host header dropped");
    }
    let door = FrontDoor::route(request.method(), request.uri().path());
    let endpoint = door.label();
    let Some(mark) = mark else {
        // The request arrived as its connection was giving way to a newcomer at the cap: the
        // caller may send it again on a new connection.
        let mut response = door.error_response(GatewayError::Unavailable(
            "The connection was closed to make room for another; retry on a new connection".into(),
        ));
        response.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        state.metrics.request(endpoint, 503, None, started.elapsed());
        return response;
    };
    if !ingress_allows(state, peer) {
        // Before any token work: a caller outside the allowlist learns nothing else.
        tracing::info!(%peer, path = request.uri().path(), "client outside AIGW_INGRESS__ALLOW refused");
        state.metrics.request(endpoint, 403, None, started.elapsed());
        return match door {
            FrontDoor::GitLab(_) => {
                json_response(StatusCode::FORBIDDEN, serde_json::json!({"detail": "Forbidden"}).to_string().into())
            }
            FrontDoor::Models(_) => door.error_response(crate::models::AccessError::OutsideIngress.into()),
        };
    }
    let (parts, body) = request.into_parts();
    let limit = match door {
        FrontDoor::GitLab(_) => state.config.max_body_bytes,
        FrontDoor::Models(_) => state.config.model_api.max_body_bytes,
    };
    let body = read_body(body, &parts.headers, limit, state.config.body_read_timeout);
    let facts = crate::telemetry::SharedFacts::default();
    let request_state = state.for_request(worker, peer);
    let model_api = matches!(door, FrontDoor::Models(_));
    let (result, render): (_, fn(GatewayError) -> http::Response<Body>) = match door {
        FrontDoor::GitLab(route) => (
            crate::telemetry::with_facts(
                Arc::clone(&facts),
                api::dispatch(&request_state, route, &parts.headers, body),
            )
            .await,
            error_response,
        ),
        FrontDoor::Models(route) => (
            crate::telemetry::with_facts(
                Arc::clone(&facts),
                crate::openai::dispatch(&request_state, route, &parts.headers, body),
            )
            .await,
            crate::openai::errors::error_response,
        ),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(error) => render(error),
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
    let (named_model, client_key) =
        facts.lock().map(|f| (f.named_model.clone(), f.client_key.clone())).unwrap_or_default();
    if model_api || client_key.is_some() {
        let model = named_model.as_deref().unwrap_or("none");
        state.metrics.model_api_request(model, client_key.as_deref().unwrap_or("none"), status);
    }
    state.metrics.overhead(endpoint, overhead);
    // The log line is written when the body is done, so streams report tokens and duration.
    let line = RequestLine {
        request_id,
        method: parts.method,
        path: parts.uri.path().to_string(),
        host: parts.headers.get(header::HOST).and_then(|host| host.to_str().ok()).map(str::to_string),
        status,
        started,
        head: elapsed,
        overhead,
        facts,
    };
    if let Some(crate::response::StreamDeadline(deadline)) = response.extensions().get() {
        watch.streaming_until(*deadline);
    }
    response.map(|body| LoggedBody::new(body, line, watch, mark).boxed_unsync())
}

/// How much heap a body's parse may take, in multiples of the body limit: text-heavy JSON
/// takes about its size, GitLab's most structured requests (chat histories) about 15×
/// (`json_cost`), and a body of tiny values up to 57×, which is what this refuses.
const PARSE_FACTOR: u64 = 4;

/// The request body, up to `limit` bytes, within `timeout` (a slow POST cannot hold a
/// connection and its handler open indefinitely), and whose parse would take at most
/// [`PARSE_FACTOR`] times `limit`.
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
        Ok(collected) => {
            let body = collected.to_bytes();
            let (estimated, budget) = (crate::json_cost::estimated_parse_bytes(&body), PARSE_FACTOR * limit as u64);
            if estimated > budget {
                return Err(GatewayError::TooComplex { estimated, budget });
            }
            Ok(body)
        }
        Err(error) if error.is::<http_body_util::LengthLimitError>() || DeclaredPastLimit::is_in(&*error) => {
            Err(GatewayError::PayloadTooLarge(limit))
        }
        Err(error) => Err(GatewayError::Validation(vec![crate::error::ValidationIssue {
            kind: "body_read",
            loc: vec![serde_json::json!("body")],
            msg: format!("the request body could not be read: {error}"),
        }])),
    }
}

/// The separate metrics listener (`AIGW_METRICS__LISTEN`): `GET /metrics`, and the liveness
/// probe `GET /monitoring/healthz`, which keeps answering here when the API port is at its
/// connection cap. It holds at most [`crate::admission::METRICS_CONNECTIONS`] connections (the
/// API port's cap leaves descriptors for them), an idle one giving way to a newcomer, and each
/// must send its request head within `header_read_timeout`.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<crate::telemetry::Metrics>,
    header_read_timeout: std::time::Duration,
) {
    let admission = crate::admission::Admission::new(crate::admission::METRICS_CONNECTIONS);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
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
        let Some((slot, _)) = admit(&admission).await else {
            drop(stream);
            continue;
        };
        let slot = Arc::new(slot);
        let (metrics, service_slot) = (Arc::clone(&metrics), Arc::clone(&slot));
        let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
            let metrics = Arc::clone(&metrics);
            let mark = service_slot.begin_request();
            async move {
                let response = match (request.method(), request.uri().path()) {
                    _ if mark.is_none() => {
                        error_response(GatewayError::Unavailable("Retry on a new connection".into()))
                    }
                    (&http::Method::GET, "/metrics") => metrics_response(&metrics),
                    (&http::Method::GET, "/monitoring/healthz") => {
                        json_response(StatusCode::OK, serde_json::json!({"status": "ok"}).to_string().into())
                    }
                    _ => error_response(GatewayError::NotFound),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = slot.evicted() => {}
            }
        });
    }
}
