//! The epoch ticker: advances the engine's epoch, which bounds every plugin call, while plugin
//! stores are alive, and sleeps once none has been for a while.
//!
//! Why it sleeps: a thread waking every few milliseconds costs an idle gateway CPU for nothing,
//! each wake a context switch (`aigw-bench gateway`'s "idle CPU after the load" guards it). A
//! call's deadline only needs ticks while a store exists, and every store is
//! counted by an [`Alive`] guard, which wakes the ticker when it finds it asleep.
//!
//! The hand-off: the ticker announces `asleep`, then checks that no store is alive; a new store
//! counts itself alive, then checks `asleep`. Both sides use sequentially consistent operations,
//! so at least one of them sees the other: either the ticker sees the store and stays awake, or
//! the store sees the ticker asleep and wakes it. A call never runs without ticks.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// How long without a new store before the ticker sleeps. Long against the gap between
/// requests of a busy gateway, so it does not sleep and wake between them.
const SLEEP_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The ticker thread's shared state.
#[derive(Debug, Default)]
pub(super) struct EpochTicker {
    stop: AtomicBool,
    /// Stores alive now.
    alive: AtomicUsize,
    /// Stores created so far: unchanged over a period means no request came.
    created: AtomicU64,
    /// The ticker is asleep, or about to be, for want of stores.
    asleep: AtomicBool,
    thread: OnceLock<Thread>,
}

impl EpochTicker {
    /// Start the ticker thread for `engine`, ticking every `period` while stores are alive.
    pub(super) fn start(engine: &wasmtime::Engine, period: Duration) -> std::io::Result<Arc<Self>> {
        let ticker = Arc::new(EpochTicker::default());
        let (engine, shared) = (engine.clone(), Arc::clone(&ticker));
        let handle =
            std::thread::Builder::new().name("aigw-epoch".into()).spawn(move || shared.run(&engine, period))?;
        let _ = ticker.thread.set(handle.thread().clone());
        Ok(ticker)
    }

    fn run(&self, engine: &wasmtime::Engine, period: Duration) {
        let idle_ticks_before_sleep = (SLEEP_AFTER_IDLE.as_nanos() / period.as_nanos().max(1)).max(1);
        let (mut idle_ticks, mut seen) = (0, 0);
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(period);
            engine.increment_epoch();
            let created = self.created.load(Ordering::Relaxed);
            if created != seen || self.alive.load(Ordering::Relaxed) > 0 {
                (seen, idle_ticks) = (created, 0);
                continue;
            }
            idle_ticks += 1;
            if idle_ticks < idle_ticks_before_sleep {
                continue;
            }
            self.asleep.store(true, Ordering::SeqCst);
            // A store that came alive before `asleep` was set is seen here; one that comes
            // alive after it sees `asleep` and wakes this thread. `park` may also return
            // spuriously, hence the loop.
            while self.asleep.load(Ordering::SeqCst)
                && self.alive.load(Ordering::SeqCst) == 0
                && !self.stop.load(Ordering::SeqCst)
            {
                std::thread::park();
            }
            self.asleep.store(false, Ordering::SeqCst);
            idle_ticks = 0;
        }
    }

    /// Whether the ticker is asleep (no store has been alive for a while).
    pub(super) fn asleep(&self) -> bool {
        self.asleep.load(Ordering::SeqCst)
    }

    /// Stores alive now.
    pub(super) fn stores_alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// Stop the thread (at its next tick, or at once if asleep).
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// Counts one store as alive until dropped; taken before the store runs any guest code, and
/// wakes the ticker if it sleeps.
pub(super) struct Alive(Arc<EpochTicker>);

impl Alive {
    /// Count a new store.
    pub(super) fn new(ticker: &Arc<EpochTicker>) -> Self {
        ticker.created.fetch_add(1, Ordering::Relaxed);
        ticker.alive.fetch_add(1, Ordering::SeqCst);
        if ticker.asleep.load(Ordering::SeqCst) && ticker.asleep.swap(false, Ordering::SeqCst) {
            ticker.wake();
        }
        Alive(Arc::clone(ticker))
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn sleeps_when_idle_and_ticks_again_for_a_new_store() {
        let engine = wasmtime::Engine::new(wasmtime::Config::new().epoch_interruption(true)).unwrap();
        let ticker = EpochTicker::start(&engine, Duration::from_millis(2)).unwrap();
        wait_until("the idle ticker sleeps", || ticker.asleep());
        let alive = Alive::new(&ticker);
        assert!(!ticker.asleep(), "a new store wakes the ticker");
        assert_eq!(ticker.stores_alive(), 1);
        // While a store lives the ticker never sleeps, however long that is.
        std::thread::sleep(SLEEP_AFTER_IDLE + Duration::from_millis(200));
        assert!(!ticker.asleep(), "a live store keeps the ticker awake");
        drop(alive);
        assert_eq!(ticker.stores_alive(), 0);
        wait_until("the ticker sleeps again", || ticker.asleep());
        ticker.stop();
    }
}
