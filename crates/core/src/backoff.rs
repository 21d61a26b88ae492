//! The wait between checks of a failing endpoint.
//!
//! The n-th consecutive failure while unhealthy waits `interval × min(2^(n-1), 12)`, never more
//! than `max_backoff`: 1×, 2×, 4×, 8×, 12×, 12×… (Olla's schedule). The first failure is not
//! backed off, so recovery of a briefly failing backend is still seen quickly.
//!
//! Jitter spreads each wait by ± `jitter` of itself so a fleet of gateways does not probe in
//! lock step. The random sample is passed in (`u` in [0, 1)), which keeps this pure: for one
//! sample the schedule never shrinks while failures continue, and no wait ever exceeds the cap
//! (jitter is applied before the cap). With `jitter = 0` schedules are exact, as tests want.

use std::time::Duration;

/// The growth factors, in units of the interval.
const FACTORS: [u32; 5] = [1, 2, 4, 8, 12];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    max: Duration,
    jitter: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("max_backoff must be greater than 0")]
    ZeroMax,
    #[error("jitter must be in [0, 1)")]
    Jitter,
}

impl Backoff {
    /// Refuses nonsense at construction: a zero cap or a jitter outside [0, 1).
    pub fn try_new(max: Duration, jitter: f64) -> Result<Self, BackoffError> {
        if max.is_zero() {
            return Err(BackoffError::ZeroMax);
        }
        if !(0.0..1.0).contains(&jitter) {
            return Err(BackoffError::Jitter);
        }
        Ok(Self { max, jitter })
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The factor for the n-th consecutive failure (n ≥ 1; 0 is treated as 1).
    pub fn factor(failures: u32) -> u32 {
        let i = failures.saturating_sub(1).min(FACTORS.len() as u32 - 1) as usize;
        FACTORS[i]
    }

    /// The wait after the n-th consecutive failure, unjittered and capped.
    pub fn base_delay(&self, interval: Duration, failures: u32) -> Duration {
        interval
            .saturating_mul(Self::factor(failures))
            .min(self.max)
    }

    /// The wait after the n-th consecutive failure, with jitter from `u` ∈ [0, 1), capped.
    pub fn delay(&self, interval: Duration, failures: u32, u: f64) -> Duration {
        self.jittered(interval.saturating_mul(Self::factor(failures)), u)
            .min(self.max)
    }

    /// Spreads `d` by ± jitter using the sample `u` ∈ [0, 1) (no cap).
    pub fn jittered(&self, d: Duration, u: f64) -> Duration {
        if self.jitter == 0.0 {
            return d;
        }
        let u = if u.is_finite() {
            u.clamp(0.0, 1.0)
        } else {
            0.5
        };
        // As `Duration::mul_f64`, but a product too large for a Duration saturates instead
        // of panicking (an interval that did not come through config validation).
        let factor = 1.0 + self.jitter * (2.0 * u - 1.0);
        Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn olla_schedule() {
        let b = Backoff::try_new(Duration::from_secs(60), 0.0).unwrap();
        let waits: Vec<u64> = (1..=7).map(|n| b.delay(S, n, 0.3).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 12, 12, 12]);
        let capped: Vec<u64> = (1..=6)
            .map(|n| b.delay(Duration::from_secs(10), n, 0.0).as_secs())
            .collect();
        assert_eq!(capped, [10, 20, 40, 60, 60, 60]);
    }

    #[test]
    fn refuses_nonsense() {
        assert_eq!(
            Backoff::try_new(Duration::ZERO, 0.1),
            Err(BackoffError::ZeroMax)
        );
        assert_eq!(Backoff::try_new(S, 1.0), Err(BackoffError::Jitter));
        assert_eq!(Backoff::try_new(S, -0.1), Err(BackoffError::Jitter));
    }

    proptest! {
        /// No wait ever exceeds the cap, whatever the interval, failure count and jitter.
        #[test]
        fn backoff_never_exceeds_cap(
            interval_ms in 1u64..120_000,
            max_ms in 1u64..600_000,
            jitter in 0.0f64..0.99,
            failures in 0u32..10_000,
            u in 0.0f64..1.0,
        ) {
            let b = Backoff::try_new(Duration::from_millis(max_ms), jitter).unwrap();
            prop_assert!(b.delay(Duration::from_millis(interval_ms), failures, u) <= b.max());
        }

        /// For one jitter sample, waits never shrink while failures continue.
        #[test]
        fn backoff_never_shrinks_while_failing(
            interval_ms in 1u64..120_000,
            max_ms in 1u64..600_000,
            jitter in 0.0f64..0.99,
            u in 0.0f64..1.0,
            run in 1u32..64,
        ) {
            let b = Backoff::try_new(Duration::from_millis(max_ms), jitter).unwrap();
            let i = Duration::from_millis(interval_ms);
            let mut last = Duration::ZERO;
            for n in 1..=run {
                let d = b.delay(i, n, u);
                prop_assert!(d >= last, "failure {n}: {d:?} < {last:?}");
                last = d;
            }
        }
    }
}
