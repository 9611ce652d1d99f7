//! Which member of a pool takes a request: a choice made from numbers alone (each member's load
//! and health, the request's class, size and affinity), so that it is tested without sockets.

/// How a pool chooses among its members (`picker` in the models file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Strategy {
    /// In turn, as a Kubernetes Service does: for comparison, or servers that are truly alike.
    RoundRobin,
    /// The fewer outstanding requests of two members drawn at random.
    LeastOutstanding,
    /// Load in prompt tokens not yet prefilled, long prompts kept apart from interactive work,
    /// prefix affinity for completions (the default).
    Aware,
}

/// A prompt at least this long (estimated tokens) is a long prefill: an agent's or flow's
/// request, whose prefill keeps a model server busy for seconds and makes every request queued
/// behind it wait as long.
pub(crate) const LONG_PREFILL_TOKENS: u64 = 4096;

/// What one outstanding request weighs against prompt tokens waiting for their prefill: a
/// request decoding makes every step of the server's batch a little slower.
const OUTSTANDING_WEIGHT: u64 = 256;

/// What one request waiting in the server's own queue weighs (its size is unknown to the
/// gateway): about a chat turn's prompt.
const SERVER_WAITING_WEIGHT: u64 = 2048;

/// KV-cache use past which a server is about to preempt running requests: avoided when another
/// member will do.
const KV_CACHE_FULL: f64 = 0.95;

/// A member's load as the picker sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct MemberLoad {
    /// Not ejected (or due for its probe).
    pub(crate) usable: bool,
    /// Requests sent to it and not yet finished.
    pub(crate) outstanding: u32,
    /// Estimated prompt tokens sent to it whose answer has not begun: prefill work ahead of a
    /// newcomer.
    pub(crate) prefilling_tokens: u64,
    /// How many of those are long prefills.
    pub(crate) long_prefills: u32,
    /// The server's own figures, when scraped recently enough.
    pub(crate) server: Option<ServerLoad>,
    /// The most requests it may have outstanding; `None`: no limit.
    pub(crate) limit: Option<u32>,
    /// A stable number for the member (a hash of its endpoint): the affinity ranking's.
    pub(crate) rank: u64,
}

/// What a model server says of its own load (vLLM's metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct ServerLoad {
    /// Requests waiting for a place in its batch (`vllm:num_requests_waiting`).
    pub(crate) waiting: u32,
    /// Requests in its batch (`vllm:num_requests_running`).
    pub(crate) running: u32,
    /// KV-cache use, 0 to 1 (`vllm:kv_cache_usage_perc`).
    pub(crate) kv_cache_usage: f64,
}

/// The request to place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// Estimated prompt tokens.
    pub(crate) tokens: u64,
    /// Requests with the same key continue the same prompt (a file a user is typing in).
    pub(crate) affinity: Option<u64>,
    /// A member not to use (the one a failed first attempt went to).
    pub(crate) exclude: Option<usize>,
    /// A counter that advances per pick (round-robin's turn).
    pub(crate) turn: u64,
    /// Interactive work (completions) arrived lately: keep one member free of long prefills.
    pub(crate) interactive_lately: bool,
    /// How far above the pool's average load the affinity member may be and still be chosen
    /// (consistent hashing with bounded loads; 1.25 is the paper's usual value).
    pub(crate) affinity_bound: f64,
}

/// The picker's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// This member; `affinity_hit`: it is the first choice of the request's affinity key.
    Member { index: usize, affinity_hit: bool },
    /// Every usable member is at its limit (or, for a long prefill, busy with one): wait.
    Wait,
    /// No member can take it at all.
    NoMember,
}

/// Choose a member for `ask`. `random(n)` returns a number below `n`. Members that are not
/// usable are passed over, unless none is usable: a pool whose members were all ejected still
/// tries them (a guess beats a certain failure).
pub(crate) fn pick(
    strategy: Strategy,
    members: &[MemberLoad],
    ask: &Ask,
    random: &mut dyn FnMut(usize) -> usize,
) -> Pick {
    let allowed = |index: usize| Some(index) != ask.exclude;
    let any_usable = (0..members.len()).any(|i| allowed(i) && members[i].usable);
    let usable = |index: usize| allowed(index) && (members[index].usable || !any_usable);
    let open =
        |index: usize| usable(index) && members[index].limit.is_none_or(|limit| members[index].outstanding < limit);
    let usable_count = (0..members.len()).filter(|&i| usable(i)).count();
    if usable_count == 0 {
        return Pick::NoMember;
    }
    let open_members: Vec<usize> = (0..members.len()).filter(|&i| open(i)).collect();
    if open_members.is_empty() {
        return Pick::Wait;
    }
    let chosen = |index: usize| Pick::Member { index, affinity_hit: false };
    match strategy {
        Strategy::RoundRobin => chosen(open_members[(ask.turn % open_members.len() as u64) as usize]),
        Strategy::LeastOutstanding => {
            chosen(two_choices(&open_members, random, |index| u64::from(members[index].outstanding)))
        }
        Strategy::Aware => aware(members, ask, &open_members, usable_count, &usable, random),
    }
}

/// The aware strategy: see [`Strategy::Aware`].
fn aware(
    members: &[MemberLoad],
    ask: &Ask,
    open_members: &[usize],
    usable_count: usize,
    usable: &dyn Fn(usize) -> bool,
    random: &mut dyn FnMut(usize) -> usize,
) -> Pick {
    let clear = |index: usize| members[index].long_prefills == 0;
    let cost = |index: usize| cost(&members[index]);
    if ask.tokens >= LONG_PREFILL_TOKENS {
        // One long prefill per member at a time: a second would only queue inside the server,
        // where interactive requests would queue behind both. And while interactive work is
        // around, one usable member stays clear of long prefills for it.
        let clear_open: Vec<usize> = open_members.iter().copied().filter(|&i| clear(i)).collect();
        let clear_usable = (0..members.len()).filter(|&i| usable(i) && clear(i)).count();
        let keep_one_clear = ask.interactive_lately && usable_count > 1;
        if clear_open.is_empty() || (keep_one_clear && clear_usable <= 1) {
            return Pick::Wait;
        }
        return Pick::Member { index: least(&clear_open, random, cost), affinity_hit: false };
    }
    if let Some(key) = ask.affinity {
        // Rendezvous hashing: each member's rank for this key; members come and go without
        // moving the keys of the others. The first in that order holds the prompt's prefix in
        // its cache; elsewhere the whole prompt is prefilled again. So the request goes to the
        // member where it would start soonest, counting the prefill ahead of it there and, away
        // from its first choice, its own prompt: it stays while the prefill queued on its
        // member is shorter than itself. A member loaded past the bound is not a first choice.
        let mut ranked: Vec<usize> = (0..members.len()).filter(|&i| usable(i)).collect();
        ranked.sort_by_key(|&i| std::cmp::Reverse(mix(key ^ members[i].rank)));
        let total: u64 = ranked.iter().map(|&i| u64::from(members[i].outstanding)).sum();
        let cap = bounded_load(total, ranked.len(), ask.affinity_bound);
        let home = ranked[0];
        let home_within = u64::from(members[home].outstanding) < cap;
        let start = |i: usize| members[i].prefilling_tokens + if i == home { 0 } else { ask.tokens };
        let candidates =
            ranked.iter().copied().filter(|&i| open_members.contains(&i) && clear(i) && (i != home || home_within));
        // `min_by_key` keeps the first of equals: the rank order breaks ties.
        if let Some(index) = candidates.min_by_key(|&i| start(i)) {
            return Pick::Member { index, affinity_hit: index == home };
        }
    }
    let clear_open: Vec<usize> = open_members.iter().copied().filter(|&i| clear(i)).collect();
    let candidates = if clear_open.is_empty() { open_members } else { &clear_open };
    Pick::Member { index: least(candidates, random, cost), affinity_hit: false }
}

/// The most outstanding requests a member may already have and still take an affine request:
/// `bound` times the pool's average once the request is placed (rounded up), and never below 2,
/// so that at light load a file's completions stay on one member.
fn bounded_load(total: u64, members: usize, bound: f64) -> u64 {
    let average = (total + 1) as f64 / members.max(1) as f64;
    ((bound * average).ceil() as u64).max(2)
}

/// A member's load in prompt-token units: prefill ahead of a newcomer, what decodes beside it,
/// what waits in the server's own queue, and a server about to run out of KV cache.
fn cost(member: &MemberLoad) -> u64 {
    let mut cost = member.prefilling_tokens + OUTSTANDING_WEIGHT * u64::from(member.outstanding);
    if let Some(server) = member.server {
        cost += SERVER_WAITING_WEIGHT * u64::from(server.waiting);
        if server.kv_cache_usage >= KV_CACHE_FULL {
            cost += 1 << 24;
        }
    }
    cost
}

/// The candidate of least `cost`, ties broken at random.
fn least(candidates: &[usize], random: &mut dyn FnMut(usize) -> usize, cost: impl Fn(usize) -> u64) -> usize {
    let lowest = candidates.iter().map(|&i| cost(i)).min().unwrap_or(0);
    let tied: Vec<usize> = candidates.iter().copied().filter(|&i| cost(i) == lowest).collect();
    tied[random(tied.len())]
}

/// Power of two choices: two candidates at random, the one of lower `load`.
fn two_choices(candidates: &[usize], random: &mut dyn FnMut(usize) -> usize, load: impl Fn(usize) -> u64) -> usize {
    let first = candidates[random(candidates.len())];
    let second = candidates[random(candidates.len())];
    if load(second) < load(first) { second } else { first }
}

/// SplitMix64's finaliser: a key and a member's rank mixed into a well-spread number.
pub(crate) fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(count: usize) -> Vec<MemberLoad> {
        (0..count).map(|i| MemberLoad { usable: true, rank: mix(i as u64 + 1), ..MemberLoad::default() }).collect()
    }

    use crate::fleet::WorkClass;

    fn ask(class: WorkClass, tokens: u64) -> Ask {
        let _ = class;
        Ask { tokens, affinity: None, exclude: None, turn: 0, interactive_lately: false, affinity_bound: 1.25 }
    }

    fn first(n: usize) -> usize {
        let _ = n;
        0
    }

    fn member(pick: Pick) -> usize {
        match pick {
            Pick::Member { index, .. } => index,
            other => panic!("expected a member, got {other:?}"),
        }
    }

    #[test]
    fn round_robin_takes_turns_and_skips_what_it_cannot_use() {
        let mut members = idle(3);
        let chosen: Vec<usize> = (0..4)
            .map(|turn| {
                member(pick(Strategy::RoundRobin, &members, &Ask { turn, ..ask(WorkClass::Chat, 10) }, &mut first))
            })
            .collect();
        assert_eq!(chosen, [0, 1, 2, 0]);
        members[1].usable = false;
        let chosen: Vec<usize> = (0..4)
            .map(|turn| {
                member(pick(Strategy::RoundRobin, &members, &Ask { turn, ..ask(WorkClass::Chat, 10) }, &mut first))
            })
            .collect();
        assert_eq!(chosen, [0, 2, 0, 2]);
    }

    #[test]
    fn least_outstanding_prefers_the_less_busy_of_two() {
        let mut members = idle(2);
        members[0].outstanding = 5;
        let mut draws = [0, 1].into_iter().cycle();
        let mut random = |_: usize| draws.next().unwrap();
        assert_eq!(member(pick(Strategy::LeastOutstanding, &members, &ask(WorkClass::Chat, 10), &mut random)), 1);
    }

    #[test]
    fn a_member_at_its_limit_takes_nothing_until_one_ends() {
        let mut members = idle(2);
        for m in &mut members {
            m.limit = Some(2);
            m.outstanding = 2;
        }
        for strategy in [Strategy::RoundRobin, Strategy::LeastOutstanding, Strategy::Aware] {
            assert_eq!(pick(strategy, &members, &ask(WorkClass::Completion, 10), &mut first), Pick::Wait);
        }
        members[1].outstanding = 1;
        for strategy in [Strategy::RoundRobin, Strategy::LeastOutstanding, Strategy::Aware] {
            assert_eq!(member(pick(strategy, &members, &ask(WorkClass::Completion, 10), &mut first)), 1);
        }
    }

    #[test]
    fn ejected_members_are_passed_over_unless_all_are() {
        let mut members = idle(2);
        members[0].usable = false;
        assert_eq!(member(pick(Strategy::Aware, &members, &ask(WorkClass::Chat, 10), &mut first)), 1);
        members[1].usable = false;
        assert!(matches!(pick(Strategy::Aware, &members, &ask(WorkClass::Chat, 10), &mut first), Pick::Member { .. }));
        let excluded = Ask { exclude: Some(0), ..ask(WorkClass::Chat, 10) };
        assert_eq!(member(pick(Strategy::Aware, &members, &excluded, &mut first)), 1);
        let alone = idle(1);
        assert_eq!(
            pick(Strategy::Aware, &alone, &Ask { exclude: Some(0), ..ask(WorkClass::Chat, 10) }, &mut first),
            Pick::NoMember
        );
        assert_eq!(pick(Strategy::Aware, &[], &ask(WorkClass::Chat, 10), &mut first), Pick::NoMember);
    }

    #[test]
    fn completions_avoid_a_member_busy_with_a_long_prefill() {
        let mut members = idle(3);
        members[0].prefilling_tokens = 25_000;
        members[0].long_prefills = 1;
        members[1].outstanding = 3;
        assert_eq!(member(pick(Strategy::Aware, &members, &ask(WorkClass::Completion, 800), &mut first)), 2);
    }

    #[test]
    fn long_prefills_go_one_per_member_and_keep_one_clear_for_completions() {
        let mut members = idle(3);
        let long = ask(WorkClass::Agent, 25_000);
        members[0].long_prefills = 1;
        members[0].prefilling_tokens = 25_000;
        let lately = Ask { interactive_lately: true, ..long };
        assert!(matches!(pick(Strategy::Aware, &members, &lately, &mut first), Pick::Member { index: 1 | 2, .. }));
        members[1].long_prefills = 1;
        // Two of three busy: the last stays clear while completions are around…
        assert_eq!(pick(Strategy::Aware, &members, &lately, &mut first), Pick::Wait);
        // …and takes the long prefill when they are not.
        assert_eq!(member(pick(Strategy::Aware, &members, &long, &mut first)), 2);
        members[2].long_prefills = 1;
        assert_eq!(pick(Strategy::Aware, &members, &long, &mut first), Pick::Wait);
        // A pool of one cannot keep a member clear.
        assert_eq!(member(pick(Strategy::Aware, &idle(1), &lately, &mut first)), 0);
    }

    #[test]
    fn a_file_keeps_its_member_within_the_bound_and_moves_past_it() {
        let members = idle(4);
        let typing = |key: u64| Ask { affinity: Some(key), ..ask(WorkClass::Completion, 900) };
        let home = |members: &[MemberLoad], key| pick(Strategy::Aware, members, &typing(key), &mut first);
        // The same key goes to the same member, and keys spread over the members.
        let homes: std::collections::HashSet<usize> = (0..64).map(|key| member(home(&members, key))).collect();
        assert_eq!(homes.len(), 4);
        let Pick::Member { index, affinity_hit: true } = home(&members, 7) else { panic!("no affinity hit") };
        // Within the bound (1.25 × the average, at least 2): it stays.
        let mut loaded = members.clone();
        loaded[index].outstanding = 1;
        assert_eq!(home(&loaded, 7), Pick::Member { index, affinity_hit: true });
        // Past it: the next member in the key's order takes it.
        loaded[index].outstanding = 4;
        let moved = home(&loaded, 7);
        assert!(matches!(moved, Pick::Member { affinity_hit: false, .. }) && member(moved) != index, "{moved:?}");
        // With everyone as busy, the bound grows with the average and it stays again.
        for m in &mut loaded {
            m.outstanding = 4;
        }
        assert_eq!(home(&loaded, 7), Pick::Member { index, affinity_hit: true });
        // A long prefill on it moves the file away, load or not.
        let mut busy = members.clone();
        busy[index].long_prefills = 1;
        assert_ne!(member(home(&busy, 7)), index);
        // Shorter prefills queued on it: the file stays while they are shorter than its own
        // prompt (900 tokens, which another member would prefill whole), and moves past that.
        let mut queued = members.clone();
        queued[index].prefilling_tokens = 800;
        assert_eq!(home(&queued, 7), Pick::Member { index, affinity_hit: true });
        queued[index].prefilling_tokens = 1000;
        assert_ne!(member(home(&queued, 7)), index);
    }

    #[test]
    fn a_member_dropping_out_moves_only_its_own_keys() {
        let members = idle(4);
        let typing = |key: u64| Ask { affinity: Some(key), ..ask(WorkClass::Completion, 900) };
        let before: Vec<usize> =
            (0..200).map(|key| member(pick(Strategy::Aware, &members, &typing(key), &mut first))).collect();
        let mut fewer = members.clone();
        fewer[2].usable = false;
        for (key, was) in before.iter().enumerate() {
            let now = member(pick(Strategy::Aware, &fewer, &typing(key as u64), &mut first));
            if *was != 2 {
                assert_eq!(now, *was, "key {key} moved though its member stayed");
            }
        }
    }

    #[test]
    fn a_server_near_its_kv_cache_limit_is_avoided() {
        let mut members = idle(2);
        members[0].server = Some(ServerLoad { waiting: 0, running: 1, kv_cache_usage: 0.99 });
        members[1].outstanding = 4;
        assert_eq!(member(pick(Strategy::Aware, &members, &ask(WorkClass::Chat, 500), &mut first)), 1);
    }
}
