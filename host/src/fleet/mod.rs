//! Named models served by several model servers: each pool's members with their load and
//! health, the choice of one per request, and the class-ordered wait when all are busy.

mod health;
mod picker;
mod queue;
mod watch;

pub(crate) use health::EjectionPolicy;
pub(crate) use picker::{ServerLoad, Strategy};
pub(crate) use watch::{Reader, WatchSettings, list_members, read_member, start as watch};

use health::{Health, Verdict};
use picker::{Ask, MemberLoad, Pick};
use queue::Waiting;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What kind of work a request is, in the order a saturated pool serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum WorkClass {
    /// A code completion: someone is waiting at the keyboard.
    Completion = 0,
    /// A chat turn, a code generation, a GitLab prompt.
    Chat = 1,
    /// An agent's or flow's model call (the Duo Workflow Service's).
    Agent = 2,
}

impl WorkClass {
    /// Every class, in priority order.
    pub(crate) const ALL: [WorkClass; 3] = [WorkClass::Completion, WorkClass::Chat, WorkClass::Agent];

    /// Its name in metrics and the models file.
    pub(crate) fn name(self) -> &'static str {
        match self {
            WorkClass::Completion => "completion",
            WorkClass::Chat => "chat",
            WorkClass::Agent => "agent",
        }
    }
}

/// A request as the fleet sees it: its class, and what its prompt continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Work {
    pub(crate) class: WorkClass,
    /// Requests with the same key continue the same prompt (a file of a user): they go to the
    /// same member while its load allows, which holds that prompt in its prefix cache.
    pub(crate) affinity: Option<u64>,
}

impl Work {
    /// Work of `class` with no affinity.
    pub(crate) fn of(class: WorkClass) -> Self {
        Work { class, affinity: None }
    }
}

/// An affinity key for a file a user is typing in.
pub(crate) fn affinity_key(user: &str, file: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // A fixed-key hasher: the same file maps to the same member in every worker and process.
    let mut hasher =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    hasher.write(user.as_bytes());
    hasher.write_u8(0);
    hasher.write(file.as_bytes());
    hasher.finish()
}

/// How a pool places requests (the `[models.pool]` table).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolSettings {
    pub(crate) strategy: Strategy,
    /// Most requests outstanding per member; `None`: no limit (or the learned one).
    pub(crate) max_concurrency: Option<u32>,
    /// Without `max_concurrency`, take each member's limit from its metrics: as many as it runs
    /// when it starts queueing requests of its own. Past it requests wait in the gateway, in
    /// class order, instead of in the server's first-come line.
    pub(crate) learn_concurrency: bool,
    /// How far above the average load a file's member may be and keep its completions.
    pub(crate) affinity_bound: f64,
    /// Longest wait for a member, by class.
    pub(crate) queue_wait: [Duration; 3],
    pub(crate) ejection: EjectionPolicy,
    /// What is read of the members in the background.
    pub(crate) watch: WatchSettings,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            strategy: Strategy::Aware,
            max_concurrency: None,
            learn_concurrency: false,
            affinity_bound: 1.25,
            queue_wait: [Duration::from_secs(2), Duration::from_secs(10), Duration::from_secs(30)],
            ejection: EjectionPolicy::default(),
            watch: WatchSettings::default(),
        }
    }
}

/// Interactive work seen within this long keeps one member clear of long prefills.
const INTERACTIVE_WINDOW: Duration = Duration::from_secs(10);

/// `Retry-After` (seconds) of a request that waited its class's longest wait.
const SATURATED_RETRY_AFTER: u32 = 1;

/// `Retry-After` (seconds) when a pool has no member at all.
const NO_MEMBER_RETRY_AFTER: u32 = 5;

/// Why a request found no member.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Every member was at its limit for as long as the request's class may wait.
    #[error("every model server of `{model}` is busy; the request waited {} ms", .waited.as_millis())]
    Saturated {
        /// The named model.
        model: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The pool has no member (its DNS name resolved to nothing, or failover found no other).
    #[error("`{model}` has no model server to take the request")]
    NoMember {
        /// The named model.
        model: String,
    },
}

impl FleetError {
    /// The `Retry-After` the caller gets, seconds.
    pub(crate) fn retry_after(&self) -> u32 {
        match self {
            FleetError::Saturated { .. } => SATURATED_RETRY_AFTER,
            FleetError::NoMember { .. } => NO_MEMBER_RETRY_AFTER,
        }
    }
}

/// One model server of a pool.
#[derive(Debug)]
pub(crate) struct Member {
    endpoint: http::Uri,
    /// `host:port`: what metrics and `doctor` call it.
    label: String,
    rank: u64,
    outstanding: AtomicU32,
    prefilling_tokens: AtomicU64,
    long_prefills: AtomicU32,
    health: Mutex<Health>,
    /// The server's own figures and when they were read.
    server: Mutex<Option<(Instant, ServerLoad)>>,
    /// The limit learned from its metrics (0: none).
    learned_limit: AtomicU32,
    picks: AtomicU64,
    affinity_hits: AtomicU64,
    ejections: AtomicU64,
    failovers: AtomicU64,
}

impl Member {
    fn new(endpoint: http::Uri) -> Self {
        let label = endpoint.authority().map_or_else(|| endpoint.to_string(), |a| a.as_str().to_string());
        let rank = picker::mix(affinity_key("", &endpoint.to_string()));
        Member {
            endpoint,
            label,
            rank,
            outstanding: AtomicU32::new(0),
            prefilling_tokens: AtomicU64::new(0),
            long_prefills: AtomicU32::new(0),
            health: Mutex::new(Health::default()),
            server: Mutex::new(None),
            learned_limit: AtomicU32::new(0),
            picks: AtomicU64::new(0),
            affinity_hits: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        }
    }

    /// Its endpoint.
    pub(crate) fn endpoint(&self) -> &http::Uri {
        &self.endpoint
    }

    /// What metrics and `doctor` call it.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether it is ejected now.
    pub(crate) fn is_ejected(&self) -> bool {
        self.health().ejected(Instant::now().into_std())
    }

    /// Requests outstanding on it now.
    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding.load(Relaxed)
    }

    /// The server's own figures, when read within `fresh`.
    pub(crate) fn server_load(&self, fresh: Duration) -> Option<ServerLoad> {
        let server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        server.filter(|(at, _)| at.elapsed() <= fresh).map(|(_, load)| load)
    }

    /// Note the server's own figures (from its metrics); with `learn`, learn its limit from
    /// them: a server that queues requests of its own runs as many as it can, and the limit is
    /// that many; once it runs fewer without queueing, it has room again and the limit goes.
    pub(crate) fn set_server_load(&self, load: ServerLoad, learn: bool) {
        *self.server.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), load));
        if learn {
            let learned = self.learned_limit.load(Relaxed);
            if load.waiting > 0 {
                self.learned_limit.store(load.running.max(1), Relaxed);
            } else if learned != 0 && load.running < learned {
                self.learned_limit.store(0, Relaxed);
            }
        }
    }

    /// The limit in force: the configured one, else the learned one.
    fn limit(&self, configured: Option<u32>) -> Option<u32> {
        configured.or_else(|| Some(self.learned_limit.load(Relaxed)).filter(|&limit| limit > 0))
    }

    /// An active health check's outcome: a pass brings the member back, a failure counts as one.
    fn health_checked(&self, healthy: bool, policy: &EjectionPolicy, model: &str) {
        if healthy {
            self.health().succeeded();
        } else {
            self.count_failure(policy, model, "health_check");
        }
    }

    /// A failure of the member (`reason`): past the policy's count, it is ejected.
    fn count_failure(&self, policy: &EjectionPolicy, model: &str, reason: &str) {
        let verdict = self.health().failed(Instant::now().into_std(), policy);
        if let Verdict::Ejected(length) = verdict {
            self.ejections.fetch_add(1, Relaxed);
            let eject_ms = length.as_millis() as u64;
            tracing::warn!(model, member = %self.label, eject_ms, reason, "model server ejected from its pool");
        }
    }

    fn load(&self, now: std::time::Instant, limit: Option<u32>, fresh: Duration) -> MemberLoad {
        MemberLoad {
            usable: self.health().usable(now),
            outstanding: self.outstanding.load(Relaxed),
            prefilling_tokens: self.prefilling_tokens.load(Relaxed),
            long_prefills: self.long_prefills.load(Relaxed),
            server: self.server_load(fresh),
            limit,
            rank: self.rank,
        }
    }
}

/// The waiting line of a pool, kept across reloads of the models file so that requests waiting
/// in it are woken by the members of the reloaded pool too.
#[derive(Debug, Default)]
struct Gate {
    waiting: Mutex<Waiting>,
    /// Told whenever a member may have room: a request ended or its answer began, a waiter left.
    changed: Notify,
}

impl Gate {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A named model's model servers.
#[derive(Debug)]
pub(crate) struct Pool {
    model: String,
    settings: PoolSettings,
    members: arc_swap::ArcSwap<Vec<Arc<Member>>>,
    gate: Arc<Gate>,
    turn: AtomicU64,
    /// When the last completion was placed, ms after `born` (0: never).
    last_completion_ms: AtomicU64,
    born: Instant,
    /// Its members were listed (in the file, or a first DNS answer came).
    listed: std::sync::atomic::AtomicBool,
}

impl Pool {
    /// The pool of `model` over `endpoints`. Members `previous` (the pool before a reload) also
    /// had keep their counters and health, and requests waiting in it keep their place.
    pub(crate) fn new(model: &str, settings: PoolSettings, endpoints: Vec<http::Uri>, previous: Option<&Pool>) -> Self {
        let members = match previous {
            Some(pool) => reuse_members(&pool.members(), endpoints),
            None => reuse_members(&[], endpoints),
        };
        let listed = !members.is_empty() || settings.watch.dns.is_none();
        Pool {
            listed: std::sync::atomic::AtomicBool::new(listed),
            model: model.to_string(),
            settings,
            members: arc_swap::ArcSwap::from_pointee(members),
            gate: previous.map(|pool| Arc::clone(&pool.gate)).unwrap_or_default(),
            turn: AtomicU64::new(0),
            last_completion_ms: AtomicU64::new(0),
            born: previous.map_or_else(Instant::now, |pool| pool.born),
        }
    }

    /// The named model it serves.
    pub(crate) fn model(&self) -> &str {
        &self.model
    }

    /// Its members now.
    pub(crate) fn members(&self) -> arc_swap::Guard<Arc<Vec<Arc<Member>>>> {
        self.members.load()
    }

    /// Make `endpoints` the members (a DNS answer): those it already had keep their counters
    /// and health, requests in flight on the others finish there.
    pub(crate) fn set_members(&self, endpoints: Vec<http::Uri>) {
        let current = self.members();
        if current.iter().map(|m| &m.endpoint).eq(endpoints.iter()) {
            return;
        }
        let members = reuse_members(&current, endpoints);
        tracing::info!(model = %self.model, members = members.len(), "pool members changed");
        self.members.store(Arc::new(members));
        self.listed.store(true, Relaxed);
        self.gate.changed.notify_waiters();
    }

    /// How many requests of `class` wait for a member.
    pub(crate) fn queued(&self, class: WorkClass) -> usize {
        self.gate.waiting().len(class)
    }

    /// A member for `work`, whose prompt is about `tokens` long, other than `exclude`. When
    /// every member is at its limit the request waits, behind higher classes and earlier
    /// arrivals of its own, for at most its class's wait; a caller that goes away leaves the
    /// line (dropping this future).
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        work: Work,
        tokens: u64,
        exclude: Option<&Arc<Member>>,
    ) -> Result<Slot, FleetError> {
        let started = Instant::now();
        let deadline = started + self.settings.queue_wait[work.class as usize];
        let mut ticket: Option<Ticket> = None;
        loop {
            let changed = self.gate.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut waiting = self.gate.waiting();
                if waiting.may_go(work.class, ticket.as_ref().map(|t| t.number)) {
                    match self.try_place(work, tokens, exclude) {
                        Ok(slot) => {
                            // Leaving the line (the ticket's drop) tells the next in line, who
                            // may have room too.
                            drop(waiting);
                            drop(ticket);
                            return Ok(slot);
                        }
                        Err(Some(error)) => return Err(error),
                        Err(None) => {}
                    }
                }
                if ticket.is_none() {
                    let number = waiting.join(work.class);
                    ticket = Some(Ticket { gate: Arc::clone(&self.gate), class: work.class, number });
                }
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(FleetError::Saturated { model: self.model.clone(), waited: started.elapsed() });
                }
            }
        }
    }

    /// Pick a member and take a place on it; `Err(None)`: wait.
    fn try_place(
        self: &Arc<Self>,
        work: Work,
        tokens: u64,
        exclude: Option<&Arc<Member>>,
    ) -> Result<Slot, Option<FleetError>> {
        let members = self.members();
        let now = Instant::now();
        let now_ms = now.duration_since(self.born).as_millis() as u64 + 1;
        if work.class == WorkClass::Completion {
            self.last_completion_ms.store(now_ms, Relaxed);
        }
        let last_completion = self.last_completion_ms.load(Relaxed);
        if members.is_empty() && !self.listed.load(Relaxed) {
            // The first DNS answer is on its way.
            return Err(None);
        }
        let fresh = self.settings.watch.freshness();
        let loads: Vec<MemberLoad> =
            members.iter().map(|m| m.load(now.into_std(), m.limit(self.settings.max_concurrency), fresh)).collect();
        let ask = Ask {
            tokens,
            affinity: work.affinity,
            exclude: exclude.and_then(|excluded| members.iter().position(|m| Arc::ptr_eq(m, excluded))),
            turn: self.turn.fetch_add(1, Relaxed),
            interactive_lately: last_completion != 0
                && now_ms.saturating_sub(last_completion) <= INTERACTIVE_WINDOW.as_millis() as u64,
            affinity_bound: self.settings.affinity_bound,
        };
        let mut random = |n: usize| rand::random::<u32>() as usize % n.max(1);
        match picker::pick(self.settings.strategy, &loads, &ask, &mut random) {
            Pick::Member { index, affinity_hit } => {
                let member = Arc::clone(&members[index]);
                member.picks.fetch_add(1, Relaxed);
                if affinity_hit {
                    member.affinity_hits.fetch_add(1, Relaxed);
                }
                Ok(Slot::take(Arc::clone(self), member, tokens, now))
            }
            Pick::Wait => Err(None),
            Pick::NoMember => Err(Some(FleetError::NoMember { model: self.model.clone() })),
        }
    }

    /// Whether a failed call may be tried again on another member.
    pub(crate) fn can_fail_over(&self) -> bool {
        self.members().len() > 1
    }
}

/// Members for `endpoints`: those of `current` with the same endpoint (their counters and
/// health kept), new ones for the rest.
fn reuse_members(current: &[Arc<Member>], endpoints: Vec<http::Uri>) -> Vec<Arc<Member>> {
    endpoints
        .into_iter()
        .map(|endpoint| {
            let kept = current.iter().find(|m| m.endpoint == endpoint).cloned();
            kept.unwrap_or_else(|| Arc::new(Member::new(endpoint)))
        })
        .collect()
}

/// A place in a pool's waiting line; dropping it (the caller went away, or it timed out)
/// leaves the line.
struct Ticket {
    gate: Arc<Gate>,
    class: WorkClass,
    number: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.waiting().leave(self.class, self.number);
        self.gate.changed.notify_waiters();
    }
}

/// A request's place on a member, from the pick until its answer is read to the end.
#[derive(Debug)]
pub(crate) struct Slot {
    pool: Arc<Pool>,
    member: Arc<Member>,
    tokens: u64,
    long: bool,
    /// The answer has not begun: its prompt counts as prefill ahead of others.
    prefilling: bool,
    /// Whether the member's health heard how this request went.
    reported: bool,
}

impl Slot {
    fn take(pool: Arc<Pool>, member: Arc<Member>, tokens: u64, now: Instant) -> Self {
        let long = tokens >= picker::LONG_PREFILL_TOKENS;
        member.outstanding.fetch_add(1, Relaxed);
        member.prefilling_tokens.fetch_add(tokens, Relaxed);
        if long {
            member.long_prefills.fetch_add(1, Relaxed);
        }
        member.health().sending(now.into_std());
        Slot { pool, member, tokens, long, prefilling: true, reported: false }
    }

    /// The member's endpoint.
    pub(crate) fn endpoint(&self) -> &http::Uri {
        &self.member.endpoint
    }

    /// The member.
    pub(crate) fn member(&self) -> &Arc<Member> {
        &self.member
    }

    fn end_prefill(&mut self) {
        if std::mem::take(&mut self.prefilling) {
            self.member.prefilling_tokens.fetch_sub(self.tokens, Relaxed);
            if self.long {
                self.member.long_prefills.fetch_sub(1, Relaxed);
            }
            self.pool.gate.changed.notify_waiters();
        }
    }

    /// The member's answer began: its prefill is done, and the member is healthy.
    pub(crate) fn answered(&mut self) {
        self.end_prefill();
        self.reported = true;
        self.member.health().succeeded();
    }

    /// The call failed before its answer began. A failure of the member (it could not be
    /// reached, or answered 5xx) counts toward ejecting it. Whether another member may be tried:
    /// a failure that says nothing about the request itself (retry's rule), 429 included.
    pub(crate) fn failed(mut self, error: &crate::upstream::UpstreamError) -> bool {
        self.end_prefill();
        self.reported = true;
        let passing = crate::upstream::retry::is_transient(error);
        let busy = matches!(error, crate::upstream::UpstreamError::Status { status, .. } if status.as_u16() == 429);
        if passing && !busy {
            self.member.count_failure(&self.pool.settings.ejection, &self.pool.model, error.reason());
        } else {
            self.member.health().probe_abandoned();
        }
        if passing {
            self.member.failovers.fetch_add(1, Relaxed);
        }
        passing
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.end_prefill();
        if !self.reported {
            self.member.health().probe_abandoned();
        }
        self.member.outstanding.fetch_sub(1, Relaxed);
        self.pool.gate.changed.notify_waiters();
    }
}

/// The pools' metrics in Prometheus's text format, per pool and member.
pub(crate) fn render_metrics<'a>(pools: impl Iterator<Item = &'a Arc<Pool>> + Clone, out: &mut String) {
    use crate::telemetry::metrics::label_text;
    use std::fmt::Write;
    type Read = fn(&Member) -> u64;
    let per_member: [(&str, &str, &str, Read); 6] = [
        ("aigw_pool_outstanding", "gauge", "Requests outstanding on each pool member.", |m| u64::from(m.outstanding())),
        ("aigw_pool_picks_total", "counter", "Requests placed on each pool member.", |m| m.picks.load(Relaxed)),
        (
            "aigw_pool_affinity_hits_total",
            "counter",
            "Completions placed on their file's first-choice member (its prefix cache).",
            |m| m.affinity_hits.load(Relaxed),
        ),
        ("aigw_pool_ejections_total", "counter", "Times each member was ejected after failing.", |m| {
            m.ejections.load(Relaxed)
        }),
        (
            "aigw_pool_failovers_total",
            "counter",
            "Calls to each member that failed before their answer began and could be tried on another.",
            |m| m.failovers.load(Relaxed),
        ),
        ("aigw_pool_member_ejected", "gauge", "1 while a member is ejected.", |m| u64::from(m.is_ejected())),
    ];
    for (name, kind, help, read) in per_member {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in pools.clone() {
            for member in pool.members().iter() {
                let labels = label_text(&["model", "member"], &[pool.model.clone(), member.label.clone()], None);
                let _ = writeln!(out, "{name}{labels} {}", read(member));
            }
        }
    }
    let name = "aigw_pool_queued";
    let _ = writeln!(out, "# HELP {name} Requests waiting for a pool member, by class.\n# TYPE {name} gauge");
    for pool in pools {
        for class in WorkClass::ALL {
            let labels = label_text(&["model", "class"], &[pool.model.clone(), class.name().to_string()], None);
            let _ = writeln!(out, "{name}{labels} {}", pool.queued(class));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(endpoints: &[&str], settings: PoolSettings) -> Arc<Pool> {
        let endpoints = endpoints.iter().map(|e| e.parse().unwrap()).collect();
        Arc::new(Pool::new("coder", settings, endpoints, None))
    }

    fn limited(limit: u32, waits_ms: u64) -> PoolSettings {
        PoolSettings {
            max_concurrency: Some(limit),
            queue_wait: [Duration::from_millis(waits_ms); 3],
            ..PoolSettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn within_the_limit_requests_go_at_once_and_past_it_they_wait_then_fail() {
        let pool = pool(&["http://a:1/v1"], limited(2, 500));
        let first = pool.acquire(Work::of(WorkClass::Chat), 10, None).await.unwrap();
        let _second = pool.acquire(Work::of(WorkClass::Chat), 10, None).await.unwrap();
        let started = Instant::now();
        let refused = pool.acquire(Work::of(WorkClass::Chat), 10, None).await.unwrap_err();
        assert!(matches!(refused, FleetError::Saturated { .. }), "{refused:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(500), "waited its class's wait");
        assert_eq!(pool.queued(WorkClass::Chat), 0, "a request that gave up leaves the line");
        // A place frees: the next request gets it.
        drop(first);
        assert!(pool.acquire(Work::of(WorkClass::Chat), 10, None).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_place_goes_to_the_highest_class_waiting() {
        let pool = pool(&["http://a:1/v1"], limited(1, 10_000));
        let busy = pool.acquire(Work::of(WorkClass::Agent), 10, None).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for class in [WorkClass::Agent, WorkClass::Chat, WorkClass::Completion] {
            let (pool, order) = (Arc::clone(&pool), Arc::clone(&order));
            waiters.push(tokio::spawn(async move {
                let slot = pool.acquire(Work::of(class), 10, None).await.unwrap();
                order.lock().unwrap().push(class);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slot);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            (pool.queued(WorkClass::Agent), pool.queued(WorkClass::Chat), pool.queued(WorkClass::Completion)),
            (1, 1, 1)
        );
        drop(busy);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [WorkClass::Completion, WorkClass::Chat, WorkClass::Agent]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_goes_away_leaves_the_line() {
        let pool = pool(&["http://a:1/v1"], limited(1, 10_000));
        let _busy = pool.acquire(Work::of(WorkClass::Chat), 10, None).await.unwrap();
        let waiting = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.acquire(Work::of(WorkClass::Chat), 10, None).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(pool.queued(WorkClass::Chat), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(pool.queued(WorkClass::Chat), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_counts_until_dropped_and_its_prefill_until_answered() {
        let pool = pool(&["http://a:1/v1", "http://b:1/v1"], PoolSettings::default());
        let mut slot = pool.acquire(Work::of(WorkClass::Agent), 30_000, None).await.unwrap();
        let member = Arc::clone(slot.member());
        assert_eq!((member.outstanding(), member.long_prefills.load(Relaxed)), (1, 1));
        slot.answered();
        assert_eq!((member.outstanding(), member.prefilling_tokens.load(Relaxed)), (1, 0));
        drop(slot);
        assert_eq!(member.outstanding(), 0);
        // Failover goes elsewhere.
        let other = pool.acquire(Work::of(WorkClass::Chat), 10, Some(&member)).await.unwrap();
        assert!(!Arc::ptr_eq(other.member(), &member));
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_failures_eject_a_member_until_its_probe_passes() {
        let settings = PoolSettings { strategy: Strategy::RoundRobin, ..PoolSettings::default() };
        let pool = pool(&["http://a:1/v1", "http://b:1/v1"], settings);
        let refused = crate::upstream::UpstreamError::Connect("refused".into());
        let a = Arc::clone(&pool.members()[0]);
        for _ in 0..3 {
            let slot = loop {
                let slot = pool.acquire(Work::of(WorkClass::Chat), 10, None).await.unwrap();
                if Arc::ptr_eq(slot.member(), &a) {
                    break slot;
                }
            };
            assert!(slot.failed(&refused), "a refused connection may go elsewhere");
        }
        assert!(a.is_ejected());
        for _ in 0..4 {
            let slot = pool.acquire(Work::of(WorkClass::Chat), 10, None).await.unwrap();
            assert!(!Arc::ptr_eq(slot.member(), &a), "an ejected member takes nothing");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe = loop {
            let slot = pool.acquire(Work::of(WorkClass::Chat), 10, None).await.unwrap();
            if Arc::ptr_eq(slot.member(), &a) {
                break slot;
            }
        };
        let mut probe = probe;
        probe.answered();
        assert!(!a.is_ejected());
        let mut metrics = String::new();
        render_metrics([&pool].into_iter(), &mut metrics);
        assert!(metrics.contains("aigw_pool_ejections_total{model=\"coder\",member=\"a:1\"} 1"), "{metrics}");
        assert!(metrics.contains("aigw_pool_outstanding{model=\"coder\",member=\"a:1\"} 1"), "{metrics}");
    }

    #[test]
    fn a_limit_is_learned_when_the_server_queues_and_dropped_when_it_has_room() {
        let member = Member::new("http://a:1/v1".parse().unwrap());
        let load = |waiting, running| ServerLoad { waiting, running, kv_cache_usage: 0.5 };
        member.set_server_load(load(0, 10), true);
        assert_eq!(member.limit(None), None, "no queue: no limit");
        member.set_server_load(load(3, 24), true);
        assert_eq!(member.limit(None), Some(24), "queueing at 24 running: 24");
        member.set_server_load(load(0, 24), true);
        assert_eq!(member.limit(None), Some(24), "held at the limit, the server's queue emptied");
        member.set_server_load(load(0, 20), true);
        assert_eq!(member.limit(None), None, "running fewer without a queue: room again");
        member.set_server_load(load(5, 30), false);
        assert_eq!(member.limit(None), None, "not learning");
        assert_eq!(member.limit(Some(8)), Some(8), "a configured limit wins");
    }

    #[test]
    fn a_reloaded_pool_keeps_the_members_it_still_has() {
        let old = pool(&["http://a:1/v1", "http://b:1/v1"], PoolSettings::default());
        old.members()[0].outstanding.fetch_add(3, Relaxed);
        let endpoints = vec!["http://a:1/v1".parse().unwrap(), "http://c:1/v1".parse().unwrap()];
        let new = Pool::new("coder", PoolSettings::default(), endpoints, Some(&old));
        assert!(Arc::ptr_eq(&new.members()[0], &old.members()[0]));
        assert_eq!(new.members()[0].outstanding(), 3);
        assert_eq!(new.members()[1].outstanding(), 0);
        assert!(Arc::ptr_eq(&new.gate, &old.gate));
    }
}
