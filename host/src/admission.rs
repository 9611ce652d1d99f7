//! Admission of client connections: how many are open across the workers, the cap past which a
//! new one is closed at once (so that a flood cannot starve the requests in flight), and the
//! open-file limit those connections need.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors kept free beyond the client connections: listeners, plugin and prompt files, the
/// GitLab instance, logs.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The open client connections, shared by every worker.
#[derive(Debug)]
pub(crate) struct Admission {
    open: AtomicUsize,
    cap: usize,
}

/// One admitted connection; dropping it (when the connection ends) frees its place.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<Admission>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// At most `cap` client connections at once.
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Admission { open: AtomicUsize::new(0), cap })
    }

    /// A place for one more connection, or `None` when all `cap` are taken.
    pub(crate) fn admit(self: &Arc<Self>) -> Option<ConnectionSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < self.cap).then_some(open + 1))
            .ok()
            .map(|_| ConnectionSlot(Arc::clone(self)))
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Raise the soft open-file limit to the hard one, and warn when `cap` client connections (each
/// may hold a model-server connection too) would not fit in it. Returns the soft limit.
pub(crate) fn fit_file_limit(cap: usize) -> Option<u64> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "could not read or raise the open-file limit");
            return None;
        }
    };
    let needed = (cap as u64).saturating_mul(2).saturating_add(RESERVED_DESCRIPTORS);
    if needed > limit {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = cap,
            needed,
            "AIGW_SERVER__MAX_CONNECTIONS does not fit in the open-file limit (two descriptors per connection, \
             with its model-server connection, and a reserve): lower it or raise the limit (ulimit -n, \
             LimitNOFILE=), or new connections will fail to be accepted before the cap refuses them"
        );
    }
    Some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_a_closed_connection_frees_its_place() {
        let admission = Admission::new(2);
        let first = admission.admit().unwrap();
        let _second = admission.admit().unwrap();
        assert!(admission.admit().is_none(), "past the cap");
        assert_eq!(admission.open(), 2);
        drop(first);
        assert_eq!(admission.open(), 1);
        assert!(admission.admit().is_some(), "a place came free");
    }

    #[test]
    fn the_soft_file_limit_is_raised_to_the_hard_one() {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let limit = fit_file_limit(16).unwrap();
        assert_eq!(limit, hard.min(limit));
        assert_eq!(rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap().0, limit);
    }
}
