//! Who asks for which round when: per-endpoint round timing, and the hash-based offsets that
//! spread the work over replicas.
//!
//! A *round* of an endpoint starts at its `due_at` (Redis clock, written with each result).
//! Each replica asks for the round `offset` after it starts, where the offset is a hash of
//! (pod id, endpoint, round) scaled to `[0, spread)`: per round every replica draws an
//! independent, uniformly distributed offset, so the first to ask — the winner — is a fair
//! draw among the live replicas, round after round, with no membership list to maintain. A
//! replica that died simply stops drawing. The hash (not a random number) keeps it
//! reproducible in tests.
//!
//! In global mode the lease holder asks at offset 0 and everyone else only after `spread`
//! (plus their own hashed offset): the holder checks every round while it lives, and if it
//! dies the others take the rounds over within `2 × spread`, without waiting for its lease to
//! expire.

use hale_core::Endpoint;
use std::time::Duration;

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

/// The offset at which `pod` asks for `round` of `endpoint`.
pub fn offset(
    pod: &str,
    endpoint: &str,
    round: i64,
    spread: Duration,
    holder: Option<bool>,
) -> Duration {
    let own = spread.mul_f64(draw(pod, endpoint, round));
    match holder {
        // Sharded: everyone draws.
        None => own,
        // Global: the holder first, the others after a spread.
        Some(true) => Duration::ZERO,
        Some(false) => spread + own,
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

    /// Three replicas, 3000 rounds of 4 endpoints: each wins about a third of them.
    #[test]
    fn the_first_to_ask_is_a_fair_draw() {
        let pods = ["hale-0-1a2b3c", "hale-1-4d5e6f", "hale-2-778899"];
        let mut wins = [0u32; 3];
        let spread = Duration::from_millis(250);
        for round in 0..3000i64 {
            for ep in ["a", "b", "c", "d"] {
                let due = 1_718_000_000_000 + round * 1000;
                let (i, _) = pods
                    .iter()
                    .map(|p| offset(p, ep, due, spread, None))
                    .enumerate()
                    .min_by_key(|(_, o)| *o)
                    .unwrap();
                wins[i] += 1;
            }
        }
        for w in wins {
            let share = f64::from(w) / 12_000.0;
            assert!((share - 1.0 / 3.0).abs() < 0.02, "wins {wins:?}");
        }
    }

    #[test]
    fn global_holder_goes_first() {
        let s = Duration::from_millis(250);
        assert_eq!(offset("p", "e", 7, s, Some(true)), Duration::ZERO);
        let other = offset("q", "e", 7, s, Some(false));
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
