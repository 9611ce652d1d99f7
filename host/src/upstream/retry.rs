//! When and how long to wait before calling a failing model server again: bounded retries with
//! exponential backoff and jitter, `Retry-After` honoured up to a cap, all inside the call's own
//! deadline.

use super::{TimeoutPhase, UpstreamError};
use std::time::Duration;

/// The first backoff; each retry doubles it, up to [`RetryPolicy::max_backoff`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);

/// How a model call is retried (`AIGW_UPSTREAM__RETRIES`, `AIGW_UPSTREAM__RETRY_MAX_BACKOFF_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Calls after the first; 0 turns retries off.
    pub(crate) retries: u32,
    /// Longest wait before a retry, `Retry-After` included: a server that asks for longer is not
    /// called again, and its answer goes to the caller with its `Retry-After`.
    pub(crate) max_backoff: Duration,
}

impl RetryPolicy {
    /// How long to wait before call number `attempt + 1` after `error` ended call number
    /// `attempt` (1-based), or `None` when the call must not be retried: the error is not a
    /// passing one, the retries are used up, or the server asked for a longer wait than the cap.
    /// `jitter` is a random number in `[0, 1)`.
    pub(crate) fn backoff(&self, error: &UpstreamError, attempt: u32, jitter: f64) -> Option<Duration> {
        if attempt > self.retries || !is_transient(error) {
            return None;
        }
        if let Some(asked) = retry_after(error) {
            return (asked <= self.max_backoff).then_some(asked);
        }
        let exponential = BASE_BACKOFF.saturating_mul(1 << (attempt - 1).min(16)).min(self.max_backoff);
        // "Equal jitter": half the delay is fixed, half random, so that callers who failed
        // together do not come back together, and no retry comes at once.
        let half = exponential / 2;
        Some(half + half.mul_f64(jitter.clamp(0.0, 1.0)))
    }
}

/// Failures that say nothing about the request itself: the server could not be reached, or
/// said it is busy or broken for now. Never a 4xx other than 429, never a timeout after the
/// request reached the server (the model may be working on it), never a broken body.
pub(crate) fn is_transient(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Connect(_) => true,
        UpstreamError::Timeout { phase, .. } => *phase == TimeoutPhase::Connect,
        UpstreamError::Status { status, .. } => matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504),
        _ => false,
    }
}

/// The wait a `Retry-After` asked for, in delta-seconds (the form model servers send; an HTTP
/// date is not honoured and falls back to the backoff).
fn retry_after(error: &UpstreamError) -> Option<Duration> {
    let UpstreamError::Status { retry_after: Some(value), .. } = error else {
        return None;
    };
    value.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, StatusCode};

    const POLICY: RetryPolicy = RetryPolicy { retries: 2, max_backoff: Duration::from_secs(2) };

    fn status(code: u16, retry_after: Option<&str>) -> UpstreamError {
        UpstreamError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: retry_after.map(|v| HeaderValue::from_str(v).unwrap()),
            excerpt: String::new(),
        }
    }

    #[test]
    fn passing_failures_are_retried_until_the_retries_are_used_up() {
        for code in [429, 500, 502, 503, 504] {
            assert!(POLICY.backoff(&status(code, None), 1, 0.5).is_some(), "{code}");
            assert!(POLICY.backoff(&status(code, None), 2, 0.5).is_some(), "{code}");
            assert_eq!(POLICY.backoff(&status(code, None), 3, 0.5), None, "{code}");
        }
        assert!(POLICY.backoff(&UpstreamError::Connect("refused".into()), 1, 0.0).is_some());
        let off = RetryPolicy { retries: 0, ..POLICY };
        assert_eq!(off.backoff(&status(503, None), 1, 0.0), None);
    }

    #[test]
    fn the_request_s_own_failures_are_not_retried() {
        for code in [400, 401, 403, 404, 413, 422, 501, 505] {
            assert_eq!(POLICY.backoff(&status(code, None), 1, 0.0), None, "{code}");
        }
        let late = UpstreamError::Timeout { phase: TimeoutPhase::FirstByte, after: Duration::from_secs(1) };
        assert_eq!(POLICY.backoff(&late, 1, 0.0), None);
        assert_eq!(POLICY.backoff(&UpstreamError::Body("cut".into()), 1, 0.0), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let error = status(500, None);
        assert_eq!(POLICY.backoff(&error, 1, 0.0), Some(Duration::from_millis(50)));
        assert_eq!(POLICY.backoff(&error, 1, 0.999_999).map(|d| d.as_millis()), Some(99));
        assert_eq!(POLICY.backoff(&error, 2, 0.0), Some(Duration::from_millis(100)));
        let many = RetryPolicy { retries: 40, max_backoff: Duration::from_millis(300) };
        assert_eq!(many.backoff(&error, 30, 1.0), Some(Duration::from_millis(300)));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        assert_eq!(POLICY.backoff(&status(429, Some("1")), 1, 0.0), Some(Duration::from_secs(1)));
        assert_eq!(POLICY.backoff(&status(503, Some(" 2 ")), 1, 0.0), Some(Duration::from_secs(2)));
        assert_eq!(POLICY.backoff(&status(429, Some("30")), 1, 0.0), None, "longer than the cap");
        // A date is not read; the backoff applies.
        let dated = status(429, Some("Wed, 21 Oct 2026 07:28:00 GMT"));
        assert_eq!(POLICY.backoff(&dated, 1, 0.0), Some(Duration::from_millis(50)));
    }
}
