//! Thread-per-core serving: each worker is an OS thread with its own single-threaded tokio
//! runtime, accepting from the shared listener, so a request runs start to finish on one thread.
//!
//! Why: on a work-stealing runtime a request's tasks (its connection, the model server
//! connection, their wake-ups) hop between worker threads, and every hop is a futex wake and a
//! context switch; one runtime per thread brings a completion's context switches down to the
//! bare proxy's (`aigw-bench gateway`, "switches/req", guards it; the figures are in the README's
//! performance section). Each worker also has its own model-server connection pool (its requests
//! get it through [`AppState::for_worker`]), so pooled connections never hand work to another thread.

use super::serve;
use crate::state::AppState;
use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, oneshot};

thread_local! {
    /// When this thread last began a request (none yet: `None`).
    static LAST_REQUEST: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Tells this worker's timer keeper that a request came after an idle spell.
    static BUSY_AGAIN: Arc<Notify> = Arc::new(Notify::new());
}

/// Note that this thread began a request at `started`: its worker keeps a timer armed for a while.
pub(crate) fn note_request(started: Instant) {
    if !busy_at(LAST_REQUEST.with(|last| last.replace(Some(started))), started) {
        BUSY_AGAIN.with(|busy| busy.notify_one());
    }
}

/// Whether a worker whose last request began at `last` counts as busy at `now`.
fn busy_at(last: Option<Instant>, now: Instant) -> bool {
    last.is_some_and(|last| now.saturating_duration_since(last) < IDLE_AFTER)
}

/// How a worker is asked to stop.
enum Stop {
    /// Stop accepting, finish the requests in flight.
    Drain,
}

struct Worker {
    /// Dropping it without sending stops the worker at once.
    stop: Option<oneshot::Sender<Stop>>,
    stopped: oneshot::Receiver<()>,
}

/// The running workers. Dropping this stops them at once, cancelling requests in flight;
/// [`Workers::drain`] stops them gracefully.
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers").field("count", &self.workers.len()).finish()
    }
}

impl Workers {
    /// Start `count` workers serving `listener` (which must be non-blocking). A drain gives the
    /// requests in flight `grace` to finish; then their connections are cut.
    pub(crate) fn start(
        count: usize,
        listener: &std::net::TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        state: &Arc<AppState>,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let listener = listener.try_clone()?;
            let (tls, state) = (tls.clone(), Arc::clone(state));
            let (stop, stop_requested) = oneshot::channel();
            let (done, stopped) = oneshot::channel();
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new().name(format!("aigw-worker-{index}")).spawn(move || {
                runtime.block_on(run(listener, tls, state, index, stop_requested, grace));
                // Dropping the runtime cancels whatever is left (an immediate stop).
                drop(runtime);
                let _ = done.send(());
            })?;
            workers.push(Worker { stop: Some(stop), stopped });
        }
        Ok(Workers { workers })
    }

    /// Stop accepting, let every worker finish its requests in flight, and wait for them.
    pub(crate) async fn drain(mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(Stop::Drain);
            }
        }
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.stopped.await;
        }
    }
}

async fn run(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    index: usize,
    stop_requested: oneshot::Receiver<Stop>,
    grace: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "worker could not register the listener");
            return;
        }
    };
    let keep_armed = tokio::spawn(keep_a_timer_armed());
    let (drain, draining) = oneshot::channel::<()>();
    let serving = serve(listener, tls, state, index, async {
        let _ = draining.await;
    });
    tokio::pin!(serving);
    tokio::select! {
        () = &mut serving => {}
        stop = stop_requested => {
            if let Ok(Stop::Drain) = stop {
                let _ = drain.send(());
                // A connection that never completes its request (a half-sent head, a stalled
                // upload) must not keep the process alive past the grace period.
                if tokio::time::timeout(grace, serving).await.is_err() {
                    tracing::warn!(worker = index, ?grace, "shutdown grace period over; closing the connections still open");
                }
            }
            // Otherwise the gateway was dropped: return, and the runtime's drop cancels the rest.
        }
    }
    keep_armed.abort();
}

/// A worker without a request for this long is idle.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// While the worker serves requests, keeps a timer due within 10 ms in its time driver.
///
/// Every model call arms timers (timeouts, and 20 ms before a waiting request frees its plugin
/// store). When a new timer is due before everything the driver already waits for, tokio
/// re-arms the driver's wait with an eventfd write, even on the driver's own thread, and each is
/// a context switch. With a near timer always pending, a request's timers are never the earliest
/// (`aigw-bench gateway`'s CPU per completion at concurrency 64 guards it).
///
/// The price is a wake-up every 10 ms, so an idle worker (no request begun for [`IDLE_AFTER`])
/// waits for its next request instead (the benchmark's "idle CPU after the load" guards that).
async fn keep_a_timer_armed() {
    const BUSY_TICK: Duration = Duration::from_millis(10);
    let busy_again = BUSY_AGAIN.with(Arc::clone);
    loop {
        if busy_at(LAST_REQUEST.with(Cell::get), Instant::now()) {
            tokio::time::sleep(BUSY_TICK).await;
        } else {
            busy_again.notified().await;
        }
    }
}
