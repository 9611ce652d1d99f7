//! Whether a member is taking requests: consecutive failures eject it for a backoff that doubles
//! with each ejection, then one request (or an active health check) probes it back.

use std::time::{Duration, Instant};

/// When members are ejected and for how long (`eject_after`, `eject_base_ms`, `eject_max_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EjectionPolicy {
    /// Consecutive failures that eject a member.
    pub(crate) after_failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub(crate) base: Duration,
    /// The longest ejection.
    pub(crate) max: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy { after_failures: 3, base: Duration::from_secs(1), max: Duration::from_secs(30) }
    }
}

/// One member's health.
#[derive(Debug, Clone, Default)]
pub(crate) struct Health {
    /// Failures since the last success.
    failures: u32,
    /// Ejections since the last success: the next backoff's exponent.
    ejections: u32,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// The ejection ran out and one request is probing the member: no other goes until it ends.
    probing: bool,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The member keeps taking requests.
    Kept,
    /// The member was ejected for this long.
    Ejected(Duration),
}

impl Health {
    /// Whether a request may go to the member at `now`.
    pub(crate) fn usable(&self, now: Instant) -> bool {
        match self.ejected_until {
            None => true,
            Some(until) => now >= until && !self.probing,
        }
    }

    /// Whether the member is ejected (its probe not yet passed) at `now`.
    pub(crate) fn ejected(&self, now: Instant) -> bool {
        !self.usable(now) || self.ejected_until.is_some()
    }

    /// A request is going to the member at `now`: after an ejection ran out, it is the probe.
    pub(crate) fn sending(&mut self, now: Instant) {
        if self.ejected_until.is_some_and(|until| now >= until) {
            self.probing = true;
        }
    }

    /// The member answered: it is healthy again.
    pub(crate) fn succeeded(&mut self) {
        *self = Health::default();
    }

    /// A request to the member ended without a usable answer before its first byte. Past
    /// `policy.after_failures` in a row, or when it was the probe, the member is ejected.
    pub(crate) fn failed(&mut self, now: Instant, policy: &EjectionPolicy) -> Verdict {
        self.failures += 1;
        let probe_failed = self.probing;
        self.probing = false;
        if !probe_failed && (self.failures < policy.after_failures || self.ejected_until.is_some_and(|u| now < u)) {
            return Verdict::Kept;
        }
        let backoff = policy.base.saturating_mul(1 << self.ejections.min(16)).min(policy.max);
        self.ejections += 1;
        self.ejected_until = Some(now + backoff);
        Verdict::Ejected(backoff)
    }

    /// A request that was the probe ended for a reason that says nothing of the member (the
    /// caller went away): the next request probes instead.
    pub(crate) fn probe_abandoned(&mut self) {
        self.probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: EjectionPolicy =
        EjectionPolicy { after_failures: 3, base: Duration::from_secs(1), max: Duration::from_secs(4) };

    /// A member ejected at `now` by as many failures as the policy takes.
    fn ejected_at(now: Instant) -> Health {
        let mut health = Health::default();
        for _ in 0..POLICY.after_failures {
            health.failed(now, &POLICY);
        }
        health
    }

    #[test]
    fn failures_below_the_threshold_keep_the_member() {
        let now = Instant::now();
        let mut health = Health::default();
        assert_eq!(health.failed(now, &POLICY), Verdict::Kept);
        assert_eq!(health.failed(now, &POLICY), Verdict::Kept);
        health.succeeded();
        assert_eq!(health.failed(now, &POLICY), Verdict::Kept, "a success resets the count");
        assert_eq!(health.failed(now, &POLICY), Verdict::Kept);
        assert!(health.usable(now));
        assert_eq!(health.failed(now, &POLICY), Verdict::Ejected(Duration::from_secs(1)));
        assert!(!health.usable(now) && health.ejected(now));
    }

    #[test]
    fn an_ejected_member_is_probed_by_one_request_and_returns_on_success() {
        let start = Instant::now();
        let mut health = ejected_at(start);
        let later = start + Duration::from_millis(999);
        assert!(!health.usable(later));
        let due = start + Duration::from_secs(1);
        assert!(health.usable(due));
        health.sending(due);
        assert!(!health.usable(due), "one probe at a time");
        health.succeeded();
        assert!(health.usable(due) && !health.ejected(due));
    }

    #[test]
    fn a_failed_probe_ejects_again_for_twice_as_long_up_to_the_cap() {
        let mut now = Instant::now();
        let mut health = ejected_at(now);
        let mut lengths = Vec::new();
        for _ in 0..4 {
            now += Duration::from_secs(10);
            health.sending(now);
            let Verdict::Ejected(length) = health.failed(now, &POLICY) else { panic!("the probe failed") };
            lengths.push(length.as_secs());
        }
        assert_eq!(lengths, [2, 4, 4, 4]);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let now = Instant::now();
        let mut health = ejected_at(now);
        let due = now + Duration::from_secs(1);
        health.sending(due);
        health.probe_abandoned();
        assert!(health.usable(due));
    }
}
