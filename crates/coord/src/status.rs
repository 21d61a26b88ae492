//! [`CoordStatus`]: what `/health/shared-status` reports, in LiteLLM's terms.
//!
//! Everything local (pod id, mode, availability, TTLs, counters, who checked last) is read at
//! once. What only Redis knows — who holds a lease, whether every endpoint has a cached
//! result and how old the oldest is — is read by a background task on demand: a status read
//! wakes it, it reads once (one script) and then rests a second, so polling the page costs
//! Redis at most one call per second and the request never waits on Redis. The Redis part of
//! an answer is therefore up to about a second old, and left out (false / null) when Redis is
//! unreachable or the last read is older than [`STALE_AFTER`].
//!
//! Meanings where LiteLLM's single lock and single cache entry do not map one to one:
//! - `lock_owner` / `lock_in_progress`: global mode — the holder of the global lease; sharded
//!   mode — a replica holding a round lease right now (a check in flight), else none.
//! - `cache_available`: every configured endpoint has a result in Redis.
//! - `cache_age_seconds`: the age of the *oldest* of those results (how stale the cache can
//!   be), on Redis's clock.
//! - `last_checked_by`: the replica whose result this replica holds for the most recently
//!   checked endpoint.
//! - `checks_performed`: checks this replica ran (coordinated or local fallback);
//!   `checks_skipped`: checks another replica ran whose results this replica adopted.
//! - `last_error` / `errors_total` (Hale's additions, DESIGN §5): the last failed Redis
//!   operation with its error, and how many failed; see [`crate::health`].

use crate::book::Book;
use crate::cache::{RemoteStatus, ResultCache};
use crate::config::CoordMode;
use crate::health::Health;
use crate::lock;
use metrics::Counter;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};

/// The least time between two status reads from Redis.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// A status read older than this is not shown.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// The metric of checks another replica made for this one.
pub const CHECKS_SKIPPED_TOTAL: &str = "hale_coord_checks_skipped_total";

/// `checks_performed` and `checks_skipped`, counted by whoever sees them happen.
#[derive(Debug)]
pub(crate) struct Tally {
    performed: AtomicU64,
    skipped: AtomicU64,
    skipped_metric: Counter,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            performed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            skipped_metric: metrics::counter!(CHECKS_SKIPPED_TOTAL),
        }
    }
}

impl Tally {
    /// This replica runs a check (coordinated or local).
    pub fn performed(&self) {
        self.performed.fetch_add(1, Ordering::Relaxed);
    }

    /// This replica adopted a check another one ran.
    pub fn skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.skipped_metric.increment(1);
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.performed.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
        )
    }
}

/// The last status read from Redis, and the demand for a new one.
#[derive(Debug, Default)]
pub(crate) struct StatusCache {
    remote: Mutex<Option<(Instant, RemoteStatus)>>,
    demand: Notify,
}

/// The status task: reads what only Redis knows when asked to, at most once a second.
#[derive(Debug)]
pub(crate) struct StatusTask {
    pub cache: ResultCache,
    pub health: Arc<Health>,
    pub book: Arc<Book>,
    pub status: Arc<StatusCache>,
}

impl StatusTask {
    pub(crate) async fn run(self) {
        loop {
            self.status.demand.notified().await;
            if self.health.is_available() {
                let roster = self.book.roster();
                match self.cache.status(&roster.order).await {
                    Ok(s) => {
                        self.health.ok();
                        *lock(&self.status.remote) = Some((Instant::now(), s));
                    }
                    Err(e) => {
                        self.health.failed("reading the shared status", &e);
                    }
                }
            }
            sleep(MIN_REFRESH).await;
        }
    }
}

/// The shared-status report of one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordStatus {
    pub pod_id: Arc<str>,
    pub mode: CoordMode,
    pub redis_available: bool,
    pub lock_ttl: Duration,
    pub cache_ttl: Duration,
    pub lock_owner: Option<Arc<str>>,
    pub lock_in_progress: bool,
    pub cache_available: bool,
    pub cache_age: Option<Duration>,
    pub last_checked_by: Option<Arc<str>>,
    pub checks_performed: u64,
    pub checks_skipped: u64,
    /// The last failed Redis operation and its error (no secrets), if any failed yet.
    pub last_error: Option<String>,
    /// Failed Redis operations since start (any kind: unreachable, timeout, script error,
    /// malformed answer).
    pub errors_total: u64,
}

/// What the report is built from, gathered by the coordinator.
pub(crate) struct Inputs<'a> {
    pub pod_id: &'a Arc<str>,
    pub mode: CoordMode,
    pub lock_ttl: Duration,
    pub cache_ttl: Duration,
    pub health: &'a Health,
    pub book: &'a Book,
    pub status: &'a StatusCache,
    pub tally: &'a Tally,
    /// Global mode: the holder of the global lease as last seen.
    pub global_owner: Option<Arc<str>>,
    pub store: Option<Arc<hale_core::HealthStore>>,
}

/// This replica's shared-status report; never waits on Redis (see the module docs).
pub(crate) fn report(i: Inputs<'_>) -> CoordStatus {
    i.status.demand.notify_one();
    let available = i.health.is_available();
    let remote = lock(&i.status.remote)
        .clone()
        .filter(|(at, _)| available && at.elapsed() < STALE_AFTER);
    let lock_owner: Option<Arc<str>> = match i.mode {
        CoordMode::Global => i.global_owner.filter(|_| available),
        CoordMode::Sharded => {
            if i.book.any_lease() {
                Some(i.pod_id.clone())
            } else {
                remote.as_ref().and_then(|(_, r)| {
                    r.endpoints
                        .iter()
                        .find_map(|e| e.lease_owner.as_deref().map(Arc::from))
                })
            }
        }
    };
    let cache_available = remote.as_ref().is_some_and(|(_, r)| {
        !r.endpoints.is_empty() && r.endpoints.iter().all(|e| e.written_at.is_some())
    });
    let cache_age = remote.as_ref().and_then(|(at, r)| {
        let oldest = r.endpoints.iter().filter_map(|e| e.written_at).min()?;
        let age = Duration::from_millis(u64::try_from(r.now_ms - oldest).unwrap_or(0));
        Some(age + at.elapsed())
    });
    let last_checked_by = i.store.and_then(|store| {
        store
            .snapshot()
            .endpoints
            .iter()
            .filter_map(|e| Some((e.health.last_check?, e.health.checked_by.clone()?)))
            .max_by_key(|(at, _)| *at)
            .map(|(_, by)| by)
    });
    let (checks_performed, checks_skipped) = i.tally.counts();
    CoordStatus {
        pod_id: i.pod_id.clone(),
        mode: i.mode,
        redis_available: available,
        lock_ttl: i.lock_ttl,
        cache_ttl: i.cache_ttl,
        lock_in_progress: lock_owner.is_some(),
        lock_owner,
        cache_available,
        cache_age,
        last_checked_by,
        checks_performed,
        checks_skipped,
        last_error: i.health.last_error(),
        errors_total: i.health.errors_total(),
    }
}
