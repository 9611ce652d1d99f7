//! Whether a caller still reads its answer: when the connection was last handed a frame it has
//! not come back for, and the watchdog that drops a connection whose caller stopped reading
//! (and with it the model call, its upstream connection and its plugin slot).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Wake, Waker};
use std::time::Duration;
// tokio's clock, so that the tests can pause it; the same clock as std's otherwise.
use tokio::time::Instant;

/// Shortest pause between two looks of the watchdog.
const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// One connection's writing progress. hyper polls a response body only when it can write, so
/// the caller is the one being waited for from the moment the body has something for the
/// connection (it handed a frame, or its source woke it with more) until the next poll.
#[derive(Debug)]
pub(super) struct WriteWatch {
    base: Instant,
    /// Milliseconds after `base` since which the body has had something for the connection
    /// without being polled; 0 while it is polled or waits for the model.
    ready_since_ms: AtomicU64,
    /// Milliseconds after `base` by which the streamed answer in progress must have ended; 0:
    /// none in progress.
    deadline_ms: AtomicU64,
}

/// Why a connection is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stall {
    /// Its caller left the answer unread past the write-idle timeout.
    WriteIdle,
    /// A streamed answer outlived its model call's total deadline.
    Deadline,
}

impl Stall {
    /// The metric label.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Stall::WriteIdle => "write_idle",
            Stall::Deadline => "deadline",
        }
    }
}

impl WriteWatch {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(WriteWatch { base: Instant::now(), ready_since_ms: AtomicU64::new(0), deadline_ms: AtomicU64::new(0) })
    }

    /// A streamed answer began that must end by `deadline`.
    pub(super) fn streaming_until(&self, deadline: Instant) {
        let ms = deadline.saturating_duration_since(self.base).as_millis();
        self.deadline_ms.store(u64::try_from(ms).unwrap_or(u64::MAX).max(1), Ordering::Release);
    }

    /// The streamed answer ended (or was dropped).
    pub(super) fn stream_ended(&self) {
        self.deadline_ms.store(0, Ordering::Release);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// The connection asked the body for more: it has written what it had.
    pub(super) fn polled(&self) {
        self.ready_since_ms.store(0, Ordering::Release);
    }

    /// The body has something for the connection (a frame handed over, or its source woke it);
    /// the first such moment since the last poll counts.
    pub(super) fn ready(&self) {
        let _ = self.ready_since_ms.compare_exchange(0, self.now_ms(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// A waker for the body's source that notes, when it fires, that the body has something
    /// again, then wakes the connection as `inner` would.
    pub(super) fn waker(self: &Arc<Self>, inner: &Waker) -> Waker {
        Waker::from(Arc::new(NotingWaker { watch: Arc::clone(self), inner: inner.clone() }))
    }

    /// Resolves once the caller has left the body's output unread for longer than `limit`, or
    /// a streamed answer is still going past its deadline (a caller reading so slowly that the
    /// gateway, whose writes wait for the caller, would not see the deadline pass).
    pub(super) async fn stalled(&self, limit: Duration) -> Stall {
        let interval = (limit / 4).clamp(MIN_CHECK_INTERVAL, Duration::from_secs(1));
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(interval).await;
            let now = self.now_ms();
            let since = self.ready_since_ms.load(Ordering::Acquire);
            if since != 0 && now.saturating_sub(since) > limit_ms {
                return Stall::WriteIdle;
            }
            let deadline = self.deadline_ms.load(Ordering::Acquire);
            if deadline != 0 && now > deadline {
                return Stall::Deadline;
            }
        }
    }
}

/// Wakes the connection, noting first that the body has something for it.
struct NotingWaker {
    watch: Arc<WriteWatch>,
    inner: Waker,
}

impl Wake for NotingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.watch.ready();
        self.inner.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn output_left_unread_past_the_limit_is_a_stall_and_polling_clears_it() {
        let watch = WriteWatch::new();
        // Waiting for the model (polled, nothing handed) is never a stall.
        watch.polled();
        let waiting = tokio::time::timeout(Duration::from_secs(5), watch.stalled(Duration::from_secs(1))).await;
        assert!(waiting.is_err());
        watch.ready();
        let unread = tokio::time::timeout(Duration::from_secs(5), watch.stalled(Duration::from_secs(1))).await;
        assert_eq!(unread.ok(), Some(Stall::WriteIdle), "a frame unread for more than a second");
        watch.polled();
        let woken = Arc::clone(&watch).waker(futures_waker_noop());
        woken.wake_by_ref();
        let unread = tokio::time::timeout(Duration::from_secs(5), watch.stalled(Duration::from_secs(1))).await;
        assert_eq!(unread.ok(), Some(Stall::WriteIdle), "woken with more and not polled for more than a second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_is_a_stall_until_it_ends() {
        let watch = WriteWatch::new();
        watch.streaming_until(tokio::time::Instant::now() + Duration::from_secs(2));
        let late = tokio::time::timeout(Duration::from_secs(5), watch.stalled(Duration::from_secs(30))).await;
        assert_eq!(late.ok(), Some(Stall::Deadline));
        watch.stream_ended();
        let ended = tokio::time::timeout(Duration::from_secs(5), watch.stalled(Duration::from_secs(30))).await;
        assert!(ended.is_err(), "an ended stream has no deadline");
    }

    fn futures_waker_noop() -> &'static Waker {
        Waker::noop()
    }
}
