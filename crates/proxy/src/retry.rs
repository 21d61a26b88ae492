//! The retry budget (`proxy.retry_budget`, Envoy's): retries in flight on this replica may be
//! at most `max(min_concurrent, percent % of the requests in flight)`, so a sick fleet is not
//! hit twice as hard — once most requests fail, most of them are not retried.
//!
//! "Requests in flight" is the sum of the endpoints' outstanding counts (claims held, streams
//! included), read only when a retry is considered: the common request pays nothing for the
//! budget. "Retries in flight" is one atomic counter, taken by a [`RetryToken`] from the
//! moment a retry is decided until the retried request has its answer's head (or its own
//! failure), and given back when the token drops. Taking a token is an increment followed by
//! a check, undone when over the limit, so concurrent retries can never together exceed it.

use crate::config::RetryBudget;
use crate::runtime::Padded;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The budget and the retries in flight; see the module docs.
#[derive(Debug)]
pub struct Budget {
    percent: usize,
    min_concurrent: usize,
    active: Padded<AtomicUsize>,
}

impl Budget {
    pub fn new(config: RetryBudget) -> Self {
        Self {
            percent: config.percent.min(100) as usize,
            min_concurrent: config.min_concurrent as usize,
            active: Padded(AtomicUsize::new(0)),
        }
    }

    /// How many retries may be in flight while `in_flight` requests are.
    pub fn limit(&self, in_flight: usize) -> usize {
        self.min_concurrent
            .max(in_flight.saturating_mul(self.percent) / 100)
    }

    /// A token for one retry, or `None` when the budget is spent.
    pub fn try_acquire(&self, in_flight: usize) -> Option<RetryToken<'_>> {
        let limit = self.limit(in_flight);
        let before = self.active.0.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            self.active.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(RetryToken { budget: self })
    }

    /// Retries in flight now.
    #[cfg(test)]
    fn active(&self) -> usize {
        self.active.0.load(Ordering::Relaxed)
    }
}

/// One retry in flight; gives its place back when dropped.
#[derive(Debug)]
pub struct RetryToken<'b> {
    budget: &'b Budget,
}

impl Drop for RetryToken<'_> {
    fn drop(&mut self) {
        self.budget.active.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_concurrent: u32) -> Budget {
        Budget::new(RetryBudget {
            percent,
            min_concurrent,
        })
    }

    #[test]
    fn the_minimum_holds_when_few_requests_fly() {
        let b = budget(20, 3);
        let held: Vec<_> = (0..3).filter_map(|_| b.try_acquire(1)).collect();
        assert_eq!(held.len(), 3);
        assert!(b.try_acquire(1).is_none(), "a fourth is over the minimum");
        assert_eq!(b.active(), 3);
        drop(held);
        assert_eq!(b.active(), 0);
        assert!(b.try_acquire(1).is_some());
    }

    #[test]
    fn the_percentage_holds_under_load() {
        let b = budget(20, 3);
        assert_eq!(b.limit(128), 25);
        let held: Vec<_> = (0..100).filter_map(|_| b.try_acquire(128)).collect();
        assert_eq!(held.len(), 25);
        assert_eq!(b.limit(usize::MAX), usize::MAX / 100, "no overflow");
        let none = budget(0, 0);
        assert!(
            none.try_acquire(1000).is_none(),
            "a zero budget retries nothing"
        );
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let b = std::sync::Arc::new(budget(10, 2));
        let peak = std::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (b, peak) = (b.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Some(t) = b.try_acquire(50) {
                            peak.fetch_max(b.active(), Ordering::Relaxed);
                            drop(t);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(
            peak.load(Ordering::Relaxed) <= 5,
            "limit is max(2, 10% of 50) = 5"
        );
        assert_eq!(b.active(), 0);
    }
}
