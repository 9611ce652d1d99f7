//! Admission of client connections: how many are open across the workers, a cap that always fits
//! the open-file limit, and which idle connection gives way when a newcomer arrives at the cap.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use tokio::sync::Notify;

/// Descriptors kept free beyond two per client connection: listeners, plugin and prompt files,
/// the GitLab instance, logs, the metrics listener's connections ([`METRICS_CONNECTIONS`]) and
/// the connections admitted while an idle one is still closing ([`GIVING_WAY`]).
const RESERVED_DESCRIPTORS: u64 = 256;

/// Connections the metrics listener holds open at once (probes and scrapers need a handful).
pub(crate) const METRICS_CONNECTIONS: usize = 32;

/// Newcomers admitted past the cap while the idle connections giving way to them are still
/// closing (their tasks close them within a scheduler turn).
const GIVING_WAY: usize = 32;

/// Connections looked at, at random, for the one that gives way: the one idle longest among
/// them. Sampling keeps the choice O(1) at any cap, and a newcomer that has yet to send its
/// request (idle for microseconds) is the last a sample would pick.
const EVICTION_SAMPLE: usize = 16;

/// A tenant's `state` once it was chosen to give way: no request may start on it.
const EVICTED: usize = usize::MAX;

/// The open client connections of one listener, shared by every worker.
#[derive(Debug)]
pub(crate) struct Admission {
    open: AtomicUsize,
    cap: usize,
    /// Every open connection, for picking the one that gives way at the cap.
    tenants: Mutex<Vec<Arc<Tenant>>>,
    /// The clock `Tenant::idle_since_ms` counts from.
    base: Instant,
    /// Told whenever a connection closes, for a newcomer waiting on those giving way.
    freed: Notify,
}

/// One open connection: whether a request is in progress on it, and since when it has been idle.
#[derive(Debug)]
pub(crate) struct Tenant {
    /// Requests in progress (HTTP/2 may have several), or [`EVICTED`].
    state: AtomicUsize,
    /// Milliseconds after [`Admission::base`] since which no request has been in progress: the
    /// connection's arrival, or the end of its last answer.
    idle_since_ms: AtomicU64,
    /// Its position in [`Admission::tenants`], kept up to date under that lock.
    index: AtomicUsize,
    evicted: Notify,
}

/// One admitted connection; dropping it (when the connection ends) frees its place.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    admission: Arc<Admission>,
    tenant: Arc<Tenant>,
}

/// What a newcomer gets.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// A free place.
    Free(ConnectionSlot),
    /// A place an idle connection gave up for it (that one is being closed).
    GaveWay(ConnectionSlot),
    /// Places will come free in a moment: the connections that gave way are still closing.
    Closing,
    /// Every place is taken by a connection with a request in progress.
    Full,
}

/// A request in progress on a connection, which therefore may not be chosen to give way.
#[derive(Debug)]
pub(crate) struct RequestMark {
    admission: Arc<Admission>,
    tenant: Arc<Tenant>,
}

impl Drop for RequestMark {
    fn drop(&mut self) {
        // Idle from now, noted before the count falls so that a picker never sees an idle
        // connection with an old date.
        self.tenant.idle_since_ms.store(self.admission.now_ms(), Ordering::Release);
        self.tenant.state.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionSlot {
    /// Mark a request as in progress, or `None` when the connection has been chosen to give way
    /// (it is about to be closed).
    pub(crate) fn begin_request(&self) -> Option<RequestMark> {
        self.tenant
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n != EVICTED).then_some(n + 1))
            .ok()
            .map(|_| RequestMark { admission: Arc::clone(&self.admission), tenant: Arc::clone(&self.tenant) })
    }

    /// Resolves when this connection has been chosen to give way to a newcomer.
    pub(crate) async fn evicted(&self) {
        self.tenant.evicted.notified().await;
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        {
            let mut tenants = self.admission.tenants.lock().unwrap_or_else(PoisonError::into_inner);
            let index = self.tenant.index.load(Ordering::Acquire);
            if index < tenants.len() && Arc::ptr_eq(&tenants[index], &self.tenant) {
                tenants.swap_remove(index);
                if let Some(moved) = tenants.get(index) {
                    moved.index.store(index, Ordering::Release);
                }
            }
        }
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
        self.admission.freed.notify_waiters();
    }
}

impl Admission {
    /// At most `cap` client connections at once (and [`GIVING_WAY`] more for a moment).
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Admission {
            open: AtomicUsize::new(0),
            cap,
            tenants: Mutex::new(Vec::new()),
            base: Instant::now(),
            freed: Notify::new(),
        })
    }

    /// Resolves when a connection closes after this call (create it before looking for a place,
    /// so that none is missed between the look and the wait).
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A place for a newcomer: a free one, or the place of the connection idle longest (among
    /// a sample) when all are taken; [`Admitted::Full`] when every sampled connection is busy.
    pub(crate) fn admit(self: &Arc<Self>) -> Admitted {
        if self.take_place(self.cap) {
            return Admitted::Free(self.register());
        }
        if !self.take_place(self.cap + GIVING_WAY) {
            return Admitted::Closing;
        }
        if self.evict_one() {
            return Admitted::GaveWay(self.register());
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        Admitted::Full
    }

    /// One more connection, if fewer than `limit` are open.
    fn take_place(&self, limit: usize) -> bool {
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < limit).then_some(open + 1)).is_ok()
    }

    fn register(self: &Arc<Self>) -> ConnectionSlot {
        let tenant = Arc::new(Tenant {
            state: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            index: AtomicUsize::new(0),
            evicted: Notify::new(),
        });
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenant.index.store(tenants.len(), Ordering::Release);
        tenants.push(Arc::clone(&tenant));
        ConnectionSlot { admission: Arc::clone(self), tenant }
    }

    /// Choose the connection idle longest among a random sample, mark it so that no request
    /// starts on it, and tell it to close. False when the sample holds no idle connection.
    fn evict_one(&self) -> bool {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if tenants.is_empty() {
            return false;
        }
        let sampled: Vec<&Arc<Tenant>> = if tenants.len() <= EVICTION_SAMPLE {
            tenants.iter().collect()
        } else {
            (0..EVICTION_SAMPLE).map(|_| &tenants[rand::random::<usize>() % tenants.len()]).collect()
        };
        let mut idle: Vec<&Arc<Tenant>> =
            sampled.into_iter().filter(|tenant| tenant.state.load(Ordering::Acquire) == 0).collect();
        idle.sort_by_key(|tenant| tenant.idle_since_ms.load(Ordering::Acquire));
        // A request may have begun since the look; the next idle one then gives way.
        let Some(victim) = idle
            .into_iter()
            .find(|tenant| tenant.state.compare_exchange(0, EVICTED, Ordering::AcqRel, Ordering::Acquire).is_ok())
        else {
            return false;
        };
        let victim = Arc::clone(victim);
        // Out of the candidates at once: the next newcomer must not sample it again while it
        // closes. Its slot finds it gone when it drops.
        let index = victim.index.load(Ordering::Acquire);
        tenants.swap_remove(index);
        if let Some(moved) = tenants.get(index) {
            moved.index.store(index, Ordering::Release);
        }
        victim.evicted.notify_one();
        true
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The cap in force.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
}

/// Raise the soft open-file limit to the hard one, and the cap on client connections that fits
/// in it: each connection may hold a model-server connection too, and [`RESERVED_DESCRIPTORS`]
/// stay free, so that `accept` never fails for want of a descriptor before the cap is reached
/// (a failing `accept` refuses everyone, the metrics listener's probes included).
pub(crate) fn fit_to_file_limit(configured: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "could not read or raise the open-file limit; the connection cap is not checked against it");
            return configured;
        }
    };
    let fits = cap_within(limit);
    if fits >= configured {
        return configured;
    }
    // A warning only when the operator asked for more than fits; the default is fitted quietly.
    if configured == crate::config::DEFAULT_MAX_CONNECTIONS {
        tracing::info!(open_file_limit = limit, max_connections = fits, "the connection cap fits the open-file limit");
    } else {
        tracing::warn!(
            open_file_limit = limit,
            configured = configured,
            max_connections = fits,
            "AIGW_SERVER__MAX_CONNECTIONS lowered to fit the open-file limit (two descriptors per connection, with \
             its model-server connection, and {RESERVED_DESCRIPTORS} kept free); raise the limit (ulimit -n, \
             LimitNOFILE=) for more"
        );
    }
    fits
}

/// The most client connections an open-file limit of `limit` holds (at least one).
fn cap_within(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS) / 2).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(admitted: Admitted) -> ConnectionSlot {
        match admitted {
            Admitted::Free(slot) | Admitted::GaveWay(slot) => slot,
            Admitted::Closing | Admitted::Full => panic!("refused"),
        }
    }

    #[test]
    fn the_cap_holds_and_a_closed_connection_frees_its_place() {
        let admission = Admission::new(2);
        let first = slot(admission.admit());
        let second = slot(admission.admit());
        let (_a, _b) = (first.begin_request().unwrap(), second.begin_request().unwrap());
        assert!(matches!(admission.admit(), Admitted::Full), "past the cap, every connection busy");
        assert_eq!(admission.open(), 2);
        drop(first);
        assert_eq!(admission.open(), 1);
        assert!(matches!(admission.admit(), Admitted::Free(_)), "a place came free");
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_idle_longest_gives_way_and_takes_no_new_request() {
        let admission = Admission::new(3);
        let oldest = slot(admission.admit());
        // Idle times are counted in milliseconds: the next ones arrive later.
        std::thread::sleep(std::time::Duration::from_millis(5));
        let busy = slot(admission.admit());
        let _request = busy.begin_request().unwrap();
        let younger = slot(admission.admit());
        // Within the cap nobody gives way; past it, the idle one that came first does.
        let newcomer = admission.admit();
        assert!(matches!(newcomer, Admitted::GaveWay(_)), "{newcomer:?}");
        tokio::time::timeout(std::time::Duration::from_secs(1), oldest.evicted()).await.expect("told to close");
        assert!(oldest.begin_request().is_none(), "no request starts on a connection giving way");
        assert!(younger.begin_request().is_some());
        assert_eq!(admission.open(), 4, "for a moment, until the one giving way has closed");
        drop(oldest);
        assert_eq!(admission.open(), 3);
    }

    #[test]
    fn a_connection_whose_request_ended_is_idle_again() {
        let admission = Admission::new(1);
        let only = slot(admission.admit());
        let request = only.begin_request().unwrap();
        assert!(matches!(admission.admit(), Admitted::Full));
        drop(request);
        assert!(matches!(admission.admit(), Admitted::GaveWay(_)), "idle between requests, it gives way");
    }

    #[test]
    fn places_given_way_are_bounded() {
        let admission = Admission::new(1);
        let mut held = vec![slot(admission.admit())];
        for _ in 0..GIVING_WAY {
            held.push(slot(admission.admit()));
        }
        // The connections told to close have not closed yet: no more newcomers for now.
        assert!(matches!(admission.admit(), Admitted::Closing));
        assert_eq!(admission.open(), 1 + GIVING_WAY);
        // One that gave way closes: a place again, given up by the newest idle connection.
        held.remove(0);
        assert!(matches!(admission.admit(), Admitted::GaveWay(_)), "one closed: a place again");
    }

    #[test]
    fn the_cap_fits_the_file_limit_with_the_reserve() {
        assert_eq!(cap_within(1024), (1024 - 256) / 2);
        assert_eq!(cap_within(100), 1, "at least one");
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        assert_eq!(fit_to_file_limit(16), 16.min(cap_within(hard)));
        assert_eq!(fit_to_file_limit(usize::MAX), cap_within(rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0));
    }
}
