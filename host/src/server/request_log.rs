//! The per-request log line, written when the answer's body has been sent or dropped, so that a
//! stream's line carries its tokens and whole duration. Never a token, a key or a body.

use super::write_watch::WriteWatch;
use crate::admission::RequestMark;
use crate::error::GatewayError;
use crate::response::Body;
use crate::telemetry::SharedFacts;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Everything known about a request when its response head goes out.
#[derive(Debug)]
pub(super) struct RequestLine {
    /// The instance's `X-Request-ID`, or the one assigned.
    pub request_id: String,
    /// HTTP method.
    pub method: http::Method,
    /// Request path (never the query).
    pub path: String,
    /// The `Host` the caller named, when it is well-formed (a malformed one was dropped).
    pub host: Option<String>,
    /// Response status.
    pub status: u16,
    /// When the request arrived.
    pub started: Instant,
    /// Time to the response head.
    pub head: Duration,
    /// The gateway's own share of `head`.
    pub overhead: Duration,
    /// What the request learned on its way (model, plugin, tokens, upstream time).
    pub facts: SharedFacts,
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

impl RequestLine {
    fn write(self, outcome: &'static str) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let facts = self.facts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let outcome = if outcome == "completed" && facts.stream_failed { "stream_error" } else { outcome };
        tracing::info!(
            request_id = self.request_id,
            method = %self.method,
            path = self.path,
            host = self.host,
            status = self.status,
            head_ms = millis(self.head),
            duration_ms = millis(self.started.elapsed()),
            upstream_ms = millis(facts.upstream),
            overhead_ms = millis(self.overhead),
            provider = facts.provider,
            model = facts.model,
            plugin = facts.plugin,
            input_tokens = facts.input_tokens,
            output_tokens = facts.output_tokens,
            upstream_error = facts.upstream_error,
            gitlab_realm = facts.gitlab_realm,
            root_namespace_id = facts.root_namespace_id,
            client_key = facts.client_key,
            named_model = facts.named_model,
            outcome,
            "request"
        );
    }
}

/// A response body that writes its request's log line once: at its end, at an error, or when
/// dropped early (the caller hung up); its polls also tell the connection's [`WriteWatch`].
pub(super) struct LoggedBody {
    inner: Body,
    line: Option<RequestLine>,
    /// The connection's writing progress, which the body's polls tell.
    watch: Arc<WriteWatch>,
    /// Keeps the connection busy (never chosen to give way at the cap) until the answer is done.
    _request: RequestMark,
}

impl LoggedBody {
    /// Wrap `inner`.
    pub(super) fn new(inner: Body, line: RequestLine, watch: Arc<WriteWatch>, request: RequestMark) -> Self {
        LoggedBody { inner, line: Some(line), watch, _request: request }
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(line) = self.line.take() {
            line.write(outcome);
        }
        self.watch.stream_ended();
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = GatewayError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, GatewayError>>> {
        self.watch.polled();
        let waker = self.watch.waker(cx.waker());
        let polled = Pin::new(&mut self.inner).poll_frame(&mut Context::from_waker(&waker));
        match &polled {
            Poll::Ready(None) => self.finish("completed"),
            Poll::Ready(Some(Err(_))) => self.finish("stream_error"),
            Poll::Ready(Some(Ok(_))) => self.watch.ready(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // A body hyper finished without polling to the end (a complete `Full` body is sent
        // whole) lands here too; only a stream cut short is "cancelled".
        let outcome = if self.inner.is_end_stream() { "completed" } else { "cancelled" };
        self.finish(outcome);
        self.watch.polled();
    }
}
