//! Who asks for which round when: per-endpoint round timing, and the hash-based offsets that
//! spread the work over replicas.
//!
//! A *round* of an endpoint starts at its `due_at` (Redis clock, written with each result).
//! Each replica asks for the round `offset` after it starts. In sharded mode the offset
//! comes from a *rank*: every replica draws a hash of (pod id, endpoint, round) for itself and
//! for every replica it knows to be live ([`Members`]: pods whose results or round
//! announcements it saw recently), and ranks itself among them. Rank 0 asks at once (within
//! an eighth of the spread), rank 1 at half the spread, everyone else after the whole
//! spread: the first to ask — who wins — is a fair draw among the live replicas, and the
//! others normally learn the result (or the winner's `taken` announcement) before their turn
//! comes, so a round costs one acquire however many replicas run (with independent uniform
//! offsets, the gap between the first two asks shrinks as 1/N and more and more replicas ask
//! while the round is being checked). Ranks 2 and up ask only as late as the watchdog lets
//! them (about when their deadline comes): they are the fallback for two dead replicas, and
//! on a saturated host, where announcements arrive a few hundred ms late, asking earlier
//! (it was three quarters of the spread) made every round cost several `Busy` answers. A
//! dead rank 0 costs the round half a spread; a replica others do not know yet ranks itself
//! among those it knows, so at worst two ask at once until its first result makes it known.
//! The hash (not a random number) keeps it reproducible.
//!
//! In global mode the lease holder asks at offset 0 and everyone else only after `spread`
//! (plus their own hashed offset): the holder checks every round while it lives, and if it
//! dies the others take the rounds over within `2 × spread`, without waiting for its lease to
//! expire.

use hale_core::Endpoint;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The most a round's start is spread over replicas.
pub const MAX_SPREAD: Duration = Duration::from_secs(2);
/// Added to the longest check timeout to make the per-round lease: time to write the result.
pub const LEASE_MARGIN: Duration = Duration::from_millis(500);

/// The window over which replicas' first asks for a round are spread: a quarter of the
/// interval, at most [`MAX_SPREAD`].
pub fn spread(endpoint: &Endpoint) -> Duration {
    (endpoint.check_interval / 4).min(MAX_SPREAD)
}

/// The lifetime of a per-round lease: the longest a check of this endpoint may take plus
/// [`LEASE_MARGIN`], but never more than `lock_ttl`. A replica that dies mid-check blocks the
/// round for at most this long.
pub fn lease_ttl(endpoint: &Endpoint, lock_ttl: Duration) -> Duration {
    (endpoint.check_timeout.max(endpoint.startup.timeout))
        .saturating_add(LEASE_MARGIN)
        .min(lock_ttl)
}

/// A uniform sample in [0, 1) from (pod, endpoint, round): FNV-1a over the three, finished
/// with the splitmix64 mixer so neighbouring rounds give unrelated samples.
pub fn draw(pod: &str, endpoint: &str, round: i64) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(pod.as_bytes());
    feed(&[0xff]);
    feed(endpoint.as_bytes());
    feed(&[0xff]);
    feed(&round.to_le_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The offset at which `pod` asks for `round` of `endpoint`: sharded (`holder` `None`) by
/// its rank among `members` (see the module docs), global by whether it holds the lease.
pub fn offset(
    pod: &str,
    endpoint: &str,
    round: i64,
    spread: Duration,
    holder: Option<bool>,
    members: &[Arc<str>],
) -> Duration {
    let mine = draw(pod, endpoint, round);
    match holder {
        None => {
            let rank = members
                .iter()
                .filter(|m| m.as_ref() != pod && draw(m, endpoint, round) < mine)
                .take(2)
                .count();
            let base = match rank {
                0 => 0.0,
                1 => 0.5,
                _ => 1.0,
            };
            spread.mul_f64(base + mine / 8.0)
        }
        // Global: the holder first, the others after a spread.
        Some(true) => Duration::ZERO,
        Some(false) => spread + spread.mul_f64(mine),
    }
}

/// The most pods remembered (a hostile channel cannot grow the table past it).
pub const MAX_MEMBERS: usize = 256;
/// A pod not seen for this long is forgotten.
pub const MEMBER_TTL: Duration = Duration::from_secs(60);

/// The replicas known to be live: this one, and every pod whose result or round
/// announcement was seen in the last [`MEMBER_TTL`].
#[derive(Debug)]
pub struct Members {
    me: Arc<str>,
    seen: HashMap<Arc<str>, Instant>,
    list: Arc<[Arc<str>]>,
}

impl Members {
    pub fn new(me: Arc<str>) -> Self {
        Self {
            list: Arc::from(vec![me.clone()]),
            me,
            seen: HashMap::new(),
        }
    }

    /// Notes that `pod` is live.
    pub fn saw(&mut self, pod: &str) {
        if pod == &*self.me || pod.is_empty() || pod.len() > crate::wire::MAX_NAME {
            return;
        }
        let now = Instant::now();
        let known = self.seen.contains_key(pod);
        if !known
            && self.seen.len() >= MAX_MEMBERS
            && let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(p, _)| p.clone())
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(Arc::from(pod), now);
        if !known {
            self.rebuild(now);
        }
    }

    /// The live pods, this one included.
    pub fn list(&mut self) -> Arc<[Arc<str>]> {
        let now = Instant::now();
        if self
            .seen
            .values()
            .any(|at| now.duration_since(*at) > MEMBER_TTL)
        {
            self.rebuild(now);
        }
        self.list.clone()
    }

    fn rebuild(&mut self, now: Instant) {
        self.seen
            .retain(|_, at| now.duration_since(*at) <= MEMBER_TTL);
        let mut list: Vec<Arc<str>> = self.seen.keys().cloned().collect();
        list.push(self.me.clone());
        list.sort();
        self.list = Arc::from(list);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_core::{EndpointConfig, EndpointKind};

    #[test]
    fn draws_are_uniform_and_rounds_independent() {
        let n = 20_000;
        let mean: f64 = (0..n).map(|r| draw("pod-a", "e", r)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((0..n).all(|r| (0.0..1.0).contains(&draw("p", "e", r))));
        assert_ne!(draw("p", "e", 1), draw("p", "e", 2));
        assert_ne!(draw("p", "e", 1), draw("q", "e", 1));
        assert_eq!(draw("p", "e", 1), draw("p", "e", 1), "reproducible");
    }

    /// Three replicas that know each other, 3000 rounds of 4 endpoints: each wins about a
    /// third of them, and the second to ask does so half a spread later, whatever the
    /// number of replicas.
    #[test]
    fn the_first_to_ask_is_a_fair_draw_and_the_second_waits_half_a_spread() {
        for pods in [
            vec!["hale-0-1a2b3c", "hale-1-4d5e6f", "hale-2-778899"],
            (0..20)
                .map(|i| format!("pod-{i}"))
                .map(|p| &*p.leak())
                .collect(),
        ] {
            let members: Vec<Arc<str>> = pods.iter().map(|p| Arc::from(*p)).collect();
            let mut wins = vec![0u32; pods.len()];
            let spread = Duration::from_millis(250);
            for round in 0..3000i64 {
                for ep in ["a", "b", "c", "d"] {
                    let due = 1_718_000_000_000 + round * 1000;
                    let mut asks: Vec<(Duration, usize)> = pods
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (offset(p, ep, due, spread, None, &members), i))
                        .collect();
                    asks.sort();
                    wins[asks[0].1] += 1;
                    assert!(asks[0].0 < spread / 8);
                    assert!(asks[1].0 >= spread / 2, "{asks:?}");
                }
            }
            let fair = 1.0 / pods.len() as f64;
            for w in &wins {
                let share = f64::from(*w) / 12_000.0;
                assert!((share - fair).abs() < fair * 0.2, "wins {wins:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn members_are_bounded_and_expire() {
        let mut m = Members::new(Arc::from("me"));
        assert_eq!(&*m.list(), &[Arc::<str>::from("me")]);
        m.saw("b");
        m.saw("a");
        m.saw("me");
        assert_eq!(m.list().len(), 3);
        for i in 0..1000 {
            m.saw(&format!("fake-{i}"));
        }
        assert_eq!(m.list().len(), MAX_MEMBERS + 1);
        tokio::time::advance(MEMBER_TTL + Duration::from_secs(1)).await;
        m.saw("a");
        assert_eq!(m.list().len(), 2, "only the fresh one and me");
    }

    #[test]
    fn global_holder_goes_first() {
        let s = Duration::from_millis(250);
        assert_eq!(offset("p", "e", 7, s, Some(true), &[]), Duration::ZERO);
        let other = offset("q", "e", 7, s, Some(false), &[]);
        assert!(other >= s && other < 2 * s);
    }

    #[test]
    fn spread_and_lease_follow_the_endpoint() {
        let mut c = EndpointConfig::new("e", "http://127.0.0.1:1", EndpointKind::Vllm);
        c.check_interval = Duration::from_secs(1);
        c.check_timeout = Duration::from_millis(500);
        c.startup.timeout = Duration::from_millis(300);
        let e = c.resolve("e").unwrap();
        assert_eq!(spread(&e), Duration::from_millis(250));
        assert_eq!(
            lease_ttl(&e, Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(
            lease_ttl(&e, Duration::from_millis(700)),
            Duration::from_millis(700)
        );
        c.check_interval = Duration::from_secs(60);
        assert_eq!(spread(&c.resolve("e").unwrap()), MAX_SPREAD);
        // An unvalidated timeout too long to add a margin to: the lease is lock_ttl.
        let mut e = e;
        e.check_timeout = Duration::MAX;
        assert_eq!(
            lease_ttl(&e, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
