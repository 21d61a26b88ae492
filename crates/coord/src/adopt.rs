//! [`Adopter`]: how a result read from Redis or received on the channel becomes this
//! replica's — bounded first, then offered to the store, which keeps only newer fences.
//!
//! Bounds (refusals are counted in `hale_coord_rejected_total{kind}`, see [`crate::rejected`]):
//! - a fence above this replica's wall clock in µs plus [`FENCE_SKEW`] (kind `fence`): the
//!   counter is seeded from Redis's clock in µs and grows by one per acquisition, so it
//!   cannot be there (2^53 − 1 is the year 2255); the scripts re-seed a counter that is;
//! - a due time outside `[-cache_ttl, max_plan + spread]` (kind `due`): the result, if
//!   otherwise valid, is adopted without it, and the endpoint stays on this replica's own
//!   schedule.
//!
//! An adopted result is fresh for the watchdog ([`crate::book`]); an adopted check made by
//! another replica counts as a check skipped here.

use crate::book::{Book, Rounds};
use crate::rejected::{Kind, Rejected};
use crate::status::Tally;
use crate::wire::{self, StoredResult};
use hale_core::{Adoption, Event, HealthStore, Now, ResultKind};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// How far a fence may be above this replica's wall clock in µs (clock skew between Redis
/// and this host).
pub const FENCE_SKEW: Duration = Duration::from_secs(3600);

/// Whether `fence` can have come from Redis's counter (see the module docs).
pub fn fence_plausible(fence: u64) -> bool {
    let limit_us = (SystemTime::now() + FENCE_SKEW)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    fence > 0 && fence <= limit_us && fence < wire::FENCE_LIMIT
}

/// Logs and counts a transition adopted from another replica.
pub(crate) fn log_transition(event: &Event) {
    metrics::counter!(
        "hale_state_transitions_total",
        "endpoint" => event.endpoint.to_string(),
        "from" => event.from.as_str(),
        "to" => event.to.as_str()
    )
    .increment(1);
    tracing::info!(
        endpoint = %event.endpoint,
        from = %event.from,
        to = %event.to,
        reason = %event.reason.as_ref().map(|r| r.as_str()).unwrap_or_default(),
        checked_by = %event.pod_id,
        source = "shared",
        "endpoint state changed"
    );
}

/// Applies remote results; see the module docs. Shared by the subscriber, the writer (a
/// refused write returns the stored result) and the coordinator (the watchdog's re-read).
#[derive(Debug)]
pub(crate) struct Adopter {
    pod_id: Arc<str>,
    cache_ttl: Duration,
    store: Weak<HealthStore>,
    book: Arc<Book>,
    rejected: Arc<Rejected>,
    tally: Arc<Tally>,
}

impl Adopter {
    pub fn new(
        pod_id: Arc<str>,
        cache_ttl: Duration,
        store: Weak<HealthStore>,
        book: Arc<Book>,
        rejected: Arc<Rejected>,
        tally: Arc<Tally>,
    ) -> Self {
        Self {
            pod_id,
            cache_ttl,
            store,
            book,
            rejected,
            tally,
        }
    }

    pub fn rejected(&self) -> &Rejected {
        &self.rejected
    }

    /// The delay this replica's own config plans for `r` now (its state as adopted),
    /// bounded by `max_plan`; the interval if the store is gone.
    pub fn own_planned(&self, r: &Rounds) -> Duration {
        self.store
            .upgrade()
            .and_then(|s| s.planned_delay(&r.name, Instant::now()))
            .unwrap_or(r.interval)
            .min(r.max_plan)
    }

    /// Applies a result read or received, after bounding it; returns whether the store
    /// adopted it.
    pub fn apply(&self, stored: StoredResult) -> bool {
        let Some(r) = self.book.rounds_of(&stored.endpoint) else {
            return false;
        };
        let fence = stored.result.fence.get();
        if !fence_plausible(fence) {
            self.rejected
                .reject(Kind::Fence, &stored.endpoint, &format!("fence {fence}"));
            return false;
        }
        let max_ahead = i64::try_from((r.max_plan + r.spread).as_millis()).unwrap_or(i64::MAX);
        let min_behind = -i64::try_from(self.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        let due_ok = (min_behind..=max_ahead).contains(&stored.due_in_ms);
        if !due_ok {
            self.rejected.reject(
                Kind::Due,
                &stored.endpoint,
                &format!("due in {} ms", stored.due_in_ms),
            );
        }
        let Some(store) = self.store.upgrade() else {
            return false;
        };
        let result = &stored.result;
        self.book.saw(&result.checked_by);
        match store.apply_remote(&stored.endpoint, result, Now::capture()) {
            Adoption::Adopted(event) => {
                let due = (due_ok && stored.due_at > 0).then(|| {
                    let due_in =
                        Duration::from_millis(u64::try_from(stored.due_in_ms).unwrap_or(0));
                    (due_in, stored.due_at)
                });
                r.adopted(due, self.own_planned(&r));
                if matches!(result.kind, ResultKind::Check { .. })
                    && result.checked_by != self.pod_id
                {
                    self.tally.skipped();
                }
                if let Some(event) = event {
                    log_transition(&event);
                }
                true
            }
            Adoption::Stale | Adoption::UnknownEndpoint => false,
        }
    }

    /// Another replica announced it took `endpoint`'s round for at most `lease` (bounded by
    /// this replica's own longest lease: a forged announcement delays nothing past that, and
    /// never more than the round lease past the watchdog's deadline).
    pub fn taken(&self, endpoint: &str, owner: &str, lease: Duration) {
        let Some(r) = self.book.rounds_of(endpoint) else {
            return;
        };
        self.book.saw(owner);
        r.taken(lease.min(self.book.lock_ttl().max(r.lease_ttl)));
    }
}
