//! The short wait instead of an instant 503 (`proxy.queue_timeout`): when no endpoint serving
//! a request's model is routable now but one of them is about to be — `unknown` while loading
//! (or not checked at all yet), `recovering` (its one trial slot busy), `unhealthy` for less
//! than `queue_timeout` with its next check due within the wait (a restart, a blip),
//! rate-limited until a time within the wait, or its request-path breaker half-opening within
//! the wait (or its trial out) — the request waits up to `queue_timeout` for the health store
//! to publish a change, then selects again. A drained endpoint, one `unknown` because its
//! startup checks fail, one unhealthy for longer than the wait (an outage, not a restart) or
//! in a long backoff, or none at all is not waited for: the 503 goes out at once as before,
//! so a model whose backend is down keeps getting fast answers.
//!
//! Waking: on the store's change signal ([`HealthStore::subscribe`](hale_core::HealthStore)),
//! not by polling the snapshot. Two things turn an endpoint routable without a new snapshot —
//! a rate limit running out and a breaker half-opening or a recovering endpoint's trial
//! ending — so the wait also wakes at the soonest rate-limit end, and re-selects every
//! [`RECHECK`] only while the reason to wait is a breaker or a busy trial slot.
//!
//! At most `max_waiting` requests (10,000 per replica) wait at once; beyond that the 503 goes
//! out at once, so a flood cannot hold unbounded memory. A client that disconnects drops the
//! request's future, and with it its place ([`Place`]).

use crate::route::Route;
use crate::runtime::EndpointRuntime;
use crate::select::Excluded;
use hale_core::{BreakerState, HealthState, Reason, Snapshot};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The default bound on waiting requests, per replica.
pub const MAX_WAITING: usize = 10_000;

/// How often a wait re-selects while what it waits for changes without a new snapshot (an
/// open breaker, a recovering endpoint's trial in flight).
pub const RECHECK: Duration = Duration::from_millis(100);

/// The waiting room; see the module docs.
#[derive(Debug)]
pub struct Queue {
    timeout: Duration,
    max_waiting: usize,
    waiting: AtomicUsize,
}

/// Why a request may wait: what it waits for, and when (if known) it turns routable without
/// a new snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prospect {
    /// Some endpoint is worth waiting for.
    pub worth: bool,
    /// The soonest end of a rate limit among them.
    pub wake_at: Option<Instant>,
    /// Some of them change without a snapshot (breaker, busy trial): re-select now and then.
    pub recheck: bool,
}

/// A request's place in the waiting room, given back on drop.
#[derive(Debug)]
pub struct Place<'a> {
    queue: &'a Queue,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Queue {
    pub fn new(timeout: Duration, max_waiting: usize) -> Self {
        Self {
            timeout: hale_core::config::clock_safe(timeout),
            max_waiting,
            waiting: AtomicUsize::new(0),
        }
    }

    /// `queue_timeout`; zero when waiting is off.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A place, or `None` when waiting is off or the room is full.
    pub fn enter(&self) -> Option<Place<'_>> {
        if self.timeout.is_zero() {
            return None;
        }
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        let place = Place { queue: self };
        (before < self.max_waiting).then_some(place)
    }

    /// Whether some endpoint serving `model` on `route`, not yet sent this request
    /// (`sent`), is about to become routable (see the module docs).
    pub fn prospect(
        &self,
        snapshot: &Snapshot,
        runtimes: &[Arc<EndpointRuntime>],
        model: &str,
        route: Route,
        sent: &Excluded,
        now: Instant,
    ) -> Prospect {
        let mut p = Prospect::default();
        let horizon = now + self.timeout;
        let wall_now = SystemTime::now();
        let wall_horizon = wall_now + self.timeout;
        for status in snapshot.endpoints.iter() {
            let endpoint = &status.endpoint;
            if route.ollama_only() && !endpoint.kind.speaks_ollama() {
                continue;
            }
            let Some(rt) = runtimes
                .iter()
                .find(|rt| Arc::ptr_eq(&rt.endpoint, endpoint))
            else {
                continue;
            };
            let health = &status.health;
            if sent.contains(rt.id) || !rt.usable() || health.drained || !status.serves(model) {
                continue;
            }
            match health.state {
                HealthState::Unknown => {
                    if matches!(health.reason, None | Some(Reason::Loading)) {
                        p.worth = true;
                    }
                }
                HealthState::Recovering => {
                    p.worth = true;
                    p.recheck = true;
                }
                HealthState::Unhealthy => {
                    // Just failed, with a check due within the wait that may bring it back
                    // (one down for longer, or not checked before the wait ends, will not).
                    let fresh = health.since + self.timeout >= wall_now;
                    if fresh && health.next_check_at.is_some_and(|at| at <= wall_horizon) {
                        p.worth = true;
                    }
                }
                HealthState::Healthy | HealthState::Degraded => {
                    if let Some(until) = health.rate_limited_until
                        && until > now
                    {
                        if until <= horizon {
                            p.worth = true;
                            p.wake_at = Some(p.wake_at.map_or(until, |w| w.min(until)));
                        }
                    } else if !rt.would_admit(now)
                        && (rt.would_admit(horizon)
                            || rt.breaker_state(now) == BreakerState::HalfOpen)
                    {
                        // The breaker half-opens within the wait, or its trial is out.
                        p.worth = true;
                        p.recheck = true;
                    }
                }
            }
        }
        p
    }
}

/// Waits until the store publishes a change (`changes`), the prospect's own wake time, the
/// recheck tick, or `deadline`, whichever comes first. Returns false at the deadline.
pub async fn wake(
    changes: &mut tokio::sync::watch::Receiver<u64>,
    prospect: Prospect,
    deadline: Instant,
) -> bool {
    let mut until = deadline;
    if let Some(at) = prospect.wake_at {
        until = until.min(at);
    }
    if prospect.recheck {
        until = until.min(Instant::now() + RECHECK);
    }
    tokio::select! {
        changed = changes.changed() => {
            if changed.is_err() {
                // The store is gone (shutdown): nothing will change any more.
                tokio::time::sleep_until(deadline).await;
                return false;
            }
            true
        }
        () = tokio::time::sleep_until(until) => until < deadline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_is_bounded_and_places_are_given_back() {
        let q = Queue::new(Duration::from_secs(1), 2);
        let a = q.enter().unwrap();
        let b = q.enter().unwrap();
        assert!(q.enter().is_none(), "full");
        assert_eq!(
            q.waiting.load(Ordering::Relaxed),
            2,
            "a refused entry leaves no trace"
        );
        drop(a);
        let c = q.enter();
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(q.waiting.load(Ordering::Relaxed), 0);
        assert!(
            Queue::new(Duration::ZERO, 2).enter().is_none(),
            "0 disables"
        );
    }
}
