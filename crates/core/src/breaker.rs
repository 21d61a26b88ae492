//! The request-path circuit breaker: closed → open after `failure_threshold` consecutive
//! transport failures → after `open_for`, half-open with exactly one trial request → closed on
//! its success, open again on its failure.
//!
//! It guards against hammering a backend that the last few requests could not reach, between
//! health checks. The proxy holds one per endpoint behind a short mutex (no I/O under it); the
//! decision functions take `now` so the rules are tested on paused time.

use crate::config::BreakerConfig;
use serde::Serialize;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: this request is the one trial; report its result.
    Trial,
    /// Open, or half-open with the trial still out: pick another endpoint.
    Rejected,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Inner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_out: bool },
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Inner::Closed { failures: 0 },
        }
    }

    /// The state as it stands at `now` (an open breaker whose time is up reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if now >= until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go now; a `Trial` must be followed by `on_success`/`on_failure`.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.inner {
            Inner::Closed { .. } => Admission::Allowed,
            Inner::Open { until } if now < until => Admission::Rejected,
            Inner::Open { .. } | Inner::HalfOpen { trial_out: false } => {
                self.inner = Inner::HalfOpen { trial_out: true };
                Admission::Trial
            }
            Inner::HalfOpen { trial_out: true } => Admission::Rejected,
        }
    }

    /// Whether a request could go now, without taking the trial slot (for selection filters).
    pub fn would_admit(&self, now: Instant) -> bool {
        match self.inner {
            Inner::Closed { .. } | Inner::HalfOpen { trial_out: false } => true,
            Inner::Open { until } => now >= until,
            Inner::HalfOpen { trial_out: true } => false,
        }
    }

    pub fn on_success(&mut self) {
        self.inner = Inner::Closed { failures: 0 };
    }

    /// A transport failure. Returns true when this failure opened the breaker.
    pub fn on_failure(&mut self, now: Instant) -> bool {
        match self.inner {
            Inner::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold {
                    self.inner = Inner::Open {
                        until: now + crate::config::clock_safe(self.config.open_for),
                    };
                    true
                } else {
                    self.inner = Inner::Closed { failures };
                    false
                }
            }
            Inner::HalfOpen { .. } => {
                self.inner = Inner::Open {
                    until: now + crate::config::clock_safe(self.config.open_for),
                };
                true
            }
            // A request admitted before the breaker opened failed late: it stays open as is.
            Inner::Open { .. } => false,
        }
    }

    /// A trial that ended with neither success nor failure (the client went away): free the
    /// slot so another request can be the trial.
    pub fn on_abandoned(&mut self) {
        if let Inner::HalfOpen { trial_out: true } = self.inner {
            self.inner = Inner::HalfOpen { trial_out: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_then_admits_one_trial() {
        let mut b = Breaker::new(cfg());
        for i in 0..4 {
            assert!(!b.on_failure(Instant::now()), "failure {i} opened it early");
            assert_eq!(b.admit(Instant::now()), Admission::Allowed);
        }
        assert!(b.on_failure(Instant::now()));
        assert_eq!(b.admit(Instant::now()), Admission::Rejected);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        assert_eq!(b.admit(Instant::now()), Admission::Rejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
        assert_eq!(b.admit(Instant::now()), Admission::Trial);
        assert_eq!(b.admit(Instant::now()), Admission::Rejected);
        b.on_success();
        assert_eq!(b.admit(Instant::now()), Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_trial_reopens_for_full_period() {
        let mut b = Breaker::new(cfg());
        for _ in 0..5 {
            b.on_failure(Instant::now());
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Trial);
        assert!(b.on_failure(Instant::now()));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Rejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Trial);
    }

    #[test]
    fn success_resets_the_count() {
        let now = Instant::now();
        let mut b = Breaker::new(cfg());
        for _ in 0..4 {
            b.on_failure(now);
        }
        b.on_success();
        for _ in 0..4 {
            assert!(!b.on_failure(now));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit,
        Success,
        Failure,
        Abandon,
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Admit),
            1 => Just(Op::Success),
            2 => Just(Op::Failure),
            1 => Just(Op::Abandon),
            2 => (0u64..40_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Whatever happens, at most one half-open trial is ever out at a time: a second trial
        /// is only admitted after the first one's result (or abandonment) came back.
        #[test]
        fn breaker_never_admits_two_trials(ops in proptest::collection::vec(op(), 1..200)) {
            let start = Instant::now();
            let mut now = start;
            let mut b = Breaker::new(cfg());
            let mut trial_out = false;
            for op in ops {
                match op {
                    Op::Admit => {
                        if b.admit(now) == Admission::Trial {
                            prop_assert!(!trial_out, "second trial admitted");
                            trial_out = true;
                        }
                    }
                    Op::Success => { b.on_success(); trial_out = false; }
                    Op::Failure => { b.on_failure(now); trial_out = false; }
                    Op::Abandon => { b.on_abandoned(); trial_out = false; }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
            }
        }
    }
}
