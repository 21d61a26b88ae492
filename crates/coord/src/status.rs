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

use crate::cache::RemoteStatus;
use crate::config::CoordMode;
use crate::coordinator::{Coordinator, Inner, lock};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep};

/// The least time between two status reads from Redis.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// A status read older than this is not shown.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub(crate) struct StatusCache {
    remote: Mutex<Option<(Instant, RemoteStatus)>>,
    demand: Notify,
}

pub(crate) async fn run(inner: Arc<Inner>) {
    loop {
        inner.status.demand.notified().await;
        if inner.is_available() {
            let roster = inner.roster();
            match inner.cache.status(&roster.order).await {
                Ok(s) => {
                    inner.ok();
                    *lock(&inner.status.remote) = Some((Instant::now(), s));
                }
                Err(e) => inner.failed("reading the shared status", &e),
            }
        }
        sleep(MIN_REFRESH).await;
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

impl Coordinator {
    /// This replica's shared-status report; never waits on Redis (see the module docs).
    pub fn status(&self) -> CoordStatus {
        let inner = &self.inner;
        inner.status.demand.notify_one();
        let available = inner.is_available();
        let remote = lock(&inner.status.remote)
            .clone()
            .filter(|(at, _)| available && at.elapsed() < STALE_AFTER);
        let lock_owner: Option<Arc<str>> = match inner.mode {
            CoordMode::Global => lock(&inner.global_owner).clone().filter(|_| available),
            CoordMode::Sharded => {
                let own = inner
                    .roster()
                    .rounds
                    .values()
                    .any(|r| lock(&r.state).lease.is_some());
                if own {
                    Some(inner.pod_id.clone())
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
        let last_checked_by = inner.store.upgrade().and_then(|store| {
            store
                .snapshot()
                .endpoints
                .iter()
                .filter_map(|e| Some((e.health.last_check?, e.health.checked_by.clone()?)))
                .max_by_key(|(at, _)| *at)
                .map(|(_, by)| by)
        });
        CoordStatus {
            pod_id: inner.pod_id.clone(),
            mode: inner.mode,
            redis_available: available,
            lock_ttl: inner.lock_ttl,
            cache_ttl: inner.cache_ttl,
            lock_in_progress: lock_owner.is_some(),
            lock_owner,
            cache_available,
            cache_age,
            last_checked_by,
            checks_performed: inner.checks_performed.load(Ordering::Relaxed),
            checks_skipped: inner.checks_skipped.load(Ordering::Relaxed),
            last_error: inner.health.last_error(),
            errors_total: inner.health.errors_total(),
        }
    }
}
