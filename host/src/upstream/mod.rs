//! The way out: one pooled HTTP client, the egress policy checked on the address actually
//! connected to, credential injection and AWS signing, timeouts, and stream frame decoding.

pub(crate) mod aws;
pub(crate) mod client;
pub(crate) mod connector;
pub(crate) mod egress;
pub(crate) mod endpoint;
pub mod framing;
pub(crate) mod retry;

pub(crate) use client::{ModelCall, Upstream, UpstreamResponse};
pub(crate) use egress::{EgressError, EgressPolicy};

use std::time::Duration;

/// Outbound timeouts (built by `config` from `AIGW_UPSTREAM__*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamSettings {
    /// TCP (and TLS) connection establishment (`AIGW_UPSTREAM__CONNECT_TIMEOUT_MS`).
    pub(crate) connect_timeout: Duration,
    /// From sending the request to the response head (`AIGW_UPSTREAM__FIRST_BYTE_TIMEOUT_MS`).
    pub(crate) first_byte_timeout: Duration,
    /// Longest silence between two body chunks (`AIGW_UPSTREAM__IDLE_TIMEOUT_MS`).
    pub(crate) idle_timeout: Duration,
    /// Whole exchange, streams and retries included (`AIGW_UPSTREAM__TOTAL_TIMEOUT_MS`; GitLab
    /// uses 60 s for code).
    pub(crate) total_timeout: Duration,
    /// Retries of a call that failed before its answer began.
    pub(crate) retry: retry::RetryPolicy,
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutPhase {
    /// Establishing the TCP/TLS connection.
    Connect,
    /// Waiting for the response head.
    FirstByte,
    /// Silence between two body chunks.
    Idle,
    /// The whole exchange.
    Total,
}

/// Why a call to a model server (or to the GitLab instance) failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The endpoint is not a usable http(s) URL, or the plugin built an unusable request.
    #[error("invalid model request: {0}")]
    InvalidRequest(String),
    /// The egress policy refused the destination; nothing was sent.
    #[error(transparent)]
    Refused(#[from] EgressError),
    /// The connection could not be established or broke.
    #[error("model server unreachable: {0}")]
    Connect(String),
    /// A timeout fired.
    #[error("model server timed out ({phase:?}, {after:?})")]
    Timeout {
        /// Which one.
        phase: TimeoutPhase,
        /// Its configured length.
        after: Duration,
    },
    /// The model server answered with an HTTP error status.
    #[error("model server answered {status}")]
    Status {
        /// The status it sent.
        status: http::StatusCode,
        /// Its `Retry-After`, passed on for 429.
        retry_after: Option<http::HeaderValue>,
        /// The start of its error body, for the log only (bounded, control characters replaced,
        /// the request's key removed); never sent to the caller.
        excerpt: String,
    },
    /// The request could not be signed (AWS SigV4): the gateway's AWS environment is incomplete.
    #[error("model request not signed: {0}")]
    Signing(String),
    /// The TLS handshake failed, most often on a certificate aigw does not trust (a private CA,
    /// a wrong name, expired): a set-up mistake, so never retried.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// The TLS client could not be set up (start-up only).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The answer body was larger than allowed or a frame could not be decoded.
    #[error("model server answer unusable: {0}")]
    Body(String),
}

impl UpstreamError {
    /// What the log line says of the failure: the error, and the model server's own words
    /// when it sent some.
    pub(crate) fn log_reason(&self) -> String {
        match self {
            UpstreamError::Status { excerpt, .. } if !excerpt.is_empty() => format!("{self}: {excerpt}"),
            other => other.to_string(),
        }
    }

    /// A short, fixed label for metrics: which timeout, or what else went wrong.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            UpstreamError::InvalidRequest(_) => "invalid_request",
            UpstreamError::Refused(_) => "egress_refused",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout { phase: TimeoutPhase::Connect, .. } => "connect_timeout",
            UpstreamError::Timeout { phase: TimeoutPhase::FirstByte, .. } => "first_byte_timeout",
            UpstreamError::Timeout { phase: TimeoutPhase::Idle, .. } => "idle_timeout",
            UpstreamError::Timeout { phase: TimeoutPhase::Total, .. } => "total_timeout",
            UpstreamError::Status { status, .. } if *status == http::StatusCode::TOO_MANY_REQUESTS => "status_429",
            UpstreamError::Status { status, .. } if status.is_client_error() => "status_4xx",
            UpstreamError::Status { .. } => "status_other",
            UpstreamError::Signing(_) => "signing",
            UpstreamError::Handshake(_) => "tls_handshake",
            UpstreamError::Tls(_) => "tls",
            UpstreamError::Body(_) => "body",
        }
    }
}
