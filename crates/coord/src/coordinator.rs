//! [`Coordinator`]: the shared-mode implementation of core's [`Coordination`], and the state
//! its background tasks share: Redis availability, per-endpoint round bookkeeping, counters.
//!
//! `may_check` answers from local knowledge when it can (the next round's due time learned
//! from the last result written or received), so in steady state a replica touches Redis only
//! to acquire a round it is first to ask for; everything else is a local `Skip`. When Redis is
//! unreachable it answers `Check` with the local fence at once, without trying Redis, until
//! the subscriber task has reconnected. The writer, subscriber, global-lease and status tasks
//! live in their own modules; all Redis I/O happens on those tasks or in `may_check` (the
//! scheduler's task), never on the request path, and no lock is held across an await.

use crate::cache::{ResultCache, RoundAnswer, RoundLease};
use crate::config::{CoordMode, SharedConfig, masked_url};
use crate::pool::RedisFailure;
use crate::rounds;
use hale_core::coordination::BoxFuture;
use hale_core::{Coordination, Decision, Endpoint, FenceToken, HealthStore, LocalResult};
use metrics::{Counter, Gauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The metric names coord records.
pub const REDIS_UP: &str = "hale_coord_redis_up";
pub const CHECKS_SKIPPED_TOTAL: &str = "hale_coord_checks_skipped_total";

/// How long a check waits at start-up for the first attempt to reach Redis.
const FIRST_CONTACT_WAIT: Duration = Duration::from_secs(1);

/// The shortest wait before asking again about a round someone else holds.
const MIN_BUSY_RETRY: Duration = Duration::from_millis(50);

/// Why coord could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("shared.redis_url: {0}")]
    Url(#[source] RedisFailure),
}

/// Shared health state across replicas; see the crate docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Coordinator {
    pub(crate) inner: Arc<Inner>,
}

/// One endpoint's round bookkeeping.
#[derive(Debug)]
pub(crate) struct Rounds {
    pub name: Arc<str>,
    pub interval: Duration,
    pub spread: Duration,
    pub lease_ttl: Duration,
    pub state: Mutex<RoundState>,
}

#[derive(Debug, Default)]
pub(crate) struct RoundState {
    /// When the fleet's next round is due, as this replica knows it.
    pub known_due: Option<Instant>,
    /// That round's id: its `due_at` on the Redis clock.
    pub round: i64,
    /// The round lease this replica holds (acquired, not yet written), and when its anchor
    /// was on this replica's clock.
    pub lease: Option<RoundLease>,
    pub anchor_at: Option<Instant>,
}

/// The endpoints coordinated: their round bookkeeping by name, and the names in
/// configuration order. Replaced whole when the config is reloaded.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    pub rounds: HashMap<Arc<str>, Arc<Rounds>>,
    pub order: Vec<Arc<str>>,
}

impl Roster {
    /// The roster for `endpoints`, keeping the bookkeeping (known due time, a lease held) of
    /// every endpoint in `previous` whose cadence did not change.
    fn build(endpoints: &[Arc<Endpoint>], lock_ttl: Duration, previous: Option<&Roster>) -> Self {
        let mut roster = Roster::default();
        for e in endpoints {
            let fresh = Rounds {
                name: e.name.clone(),
                interval: e.check_interval,
                spread: rounds::spread(e),
                lease_ttl: rounds::lease_ttl(e, lock_ttl),
                state: Mutex::new(RoundState::default()),
            };
            let kept = previous
                .and_then(|p| p.rounds.get(&e.name))
                .filter(|r| {
                    (r.interval, r.spread, r.lease_ttl)
                        == (fresh.interval, fresh.spread, fresh.lease_ttl)
                })
                .cloned();
            roster.order.push(e.name.clone());
            roster
                .rounds
                .insert(e.name.clone(), kept.unwrap_or_else(|| Arc::new(fresh)));
        }
        roster
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub mode: CoordMode,
    pub pod_id: Arc<str>,
    pub namespace: String,
    pub lock_ttl: Duration,
    pub cache_ttl: Duration,
    pub url_shown: String,
    pub cache: ResultCache,
    pub store: Weak<HealthStore>,
    /// The endpoints coordinated, replaced on a config reload.
    pub roster: RwLock<Arc<Roster>>,
    /// Redis answers (as far as this replica knows).
    pub available: AtomicBool,
    /// The outage has been logged (reset when Redis is back): "logs it once".
    pub down_logged: AtomicBool,
    /// Bumped whenever Redis is found unreachable; the subscriber reconnects on it.
    pub outages: watch::Sender<u64>,
    /// Set once the first connection attempt has finished, either way.
    pub contacted: watch::Sender<bool>,
    /// Global mode: whether this replica holds the global lease, and who does.
    pub holder: AtomicBool,
    pub global_owner: Mutex<Option<Arc<str>>>,
    pub writes: mpsc::UnboundedSender<LocalResult>,
    pub checks_performed: AtomicU64,
    pub checks_skipped: AtomicU64,
    pub skipped_metric: Counter,
    pub redis_up: Gauge,
    pub status: crate::status::StatusCache,
    pub summary: Mutex<crate::writer::SummaryLog>,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Coordinator {
    /// Starts coordination for `store`'s endpoints as `pod_id`, attaches itself to the store
    /// (so local results and passive failures are published) and returns at once: Redis is
    /// contacted in the background, and the gateway checks locally until it answers. Must be
    /// called inside a tokio runtime. Fails only for a Redis URL that cannot be used.
    pub fn start(
        config: &SharedConfig,
        pod_id: &str,
        store: &Arc<HealthStore>,
    ) -> Result<Self, CoordError> {
        let cache = ResultCache::new(config, pod_id).map_err(CoordError::Url)?;
        let endpoints: Vec<Arc<Endpoint>> = store
            .snapshot()
            .endpoints
            .iter()
            .map(|s| s.endpoint.clone())
            .collect();
        let roster = Roster::build(&endpoints, config.lock_ttl, None);
        let (writes, write_rx) = mpsc::unbounded_channel();
        let redis_up = metrics::gauge!(REDIS_UP);
        redis_up.set(0.0);
        let inner = Arc::new(Inner {
            mode: config.mode,
            pod_id: Arc::from(pod_id),
            namespace: config.namespace.clone(),
            lock_ttl: config.lock_ttl,
            cache_ttl: config.cache_ttl,
            url_shown: masked_url(&config.redis_url),
            cache,
            store: Arc::downgrade(store),
            roster: RwLock::new(Arc::new(roster)),
            available: AtomicBool::new(false),
            down_logged: AtomicBool::new(false),
            outages: watch::Sender::new(0),
            contacted: watch::Sender::new(false),
            holder: AtomicBool::new(false),
            global_owner: Mutex::new(None),
            writes,
            checks_performed: AtomicU64::new(0),
            checks_skipped: AtomicU64::new(0),
            skipped_metric: metrics::counter!(CHECKS_SKIPPED_TOTAL),
            redis_up,
            status: crate::status::StatusCache::default(),
            summary: Mutex::new(crate::writer::SummaryLog::default()),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![
            tokio::spawn(crate::writer::run(inner.clone(), write_rx)),
            tokio::spawn(crate::subscriber::run(inner.clone())),
            tokio::spawn(crate::status::run(inner.clone())),
        ];
        if inner.mode == CoordMode::Global {
            tasks.push(tokio::spawn(crate::lease::run(inner.clone())));
        }
        *lock(&inner.tasks) = tasks;
        let coordinator = Self { inner };
        store.attach(Arc::new(coordinator.clone()));
        tracing::info!(
            pod_id = %coordinator.inner.pod_id,
            mode = coordinator.mode_str(),
            namespace = %coordinator.inner.namespace,
            redis = %coordinator.inner.url_shown,
            "Initialized shared health check manager"
        );
        Ok(coordinator)
    }

    /// Waits until the first attempt to reach Redis has finished (either way), at most
    /// `limit`. Serving does not need this; it only lets the first sweep be coordinated.
    pub async fn first_contact(&self, limit: Duration) {
        let mut rx = self.inner.contacted.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done)).await;
    }

    /// Whether Redis answers, as far as this replica knows.
    pub fn redis_available(&self) -> bool {
        self.inner.available.load(Ordering::Acquire)
    }

    pub fn pod_id(&self) -> &str {
        &self.inner.pod_id
    }

    pub fn mode(&self) -> CoordMode {
        self.inner.mode
    }

    pub(crate) fn mode_str(&self) -> &'static str {
        match self.inner.mode {
            CoordMode::Global => "global",
            CoordMode::Sharded => "sharded",
        }
    }

    /// Stops the background tasks and gives back what this replica holds: the global lease
    /// (logging its release) and any round lease of a check that did not finish.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        crate::lease::release_all(&self.inner).await;
    }
}

// === impl Inner: availability ===

impl Inner {
    /// Redis did not answer: switch to local checks (logged once per outage).
    pub(crate) fn lost(&self, why: &str) {
        let was_up = self.available.swap(false, Ordering::AcqRel);
        if !self.down_logged.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                pod_id = %self.pod_id,
                redis = %self.url_shown,
                error = why,
                "Redis unreachable: checking every endpoint locally until it is back"
            );
        }
        if was_up {
            self.redis_up.set(0.0);
            for r in self.roster().rounds.values() {
                *lock(&r.state) = RoundState::default();
            }
            if self.holder.swap(false, Ordering::AcqRel) {
                tracing::info!(
                    "Pod {} released health check lock (Redis unreachable)",
                    self.pod_id
                );
            }
            self.outages.send_modify(|n| *n += 1);
        }
    }

    /// Redis answers again (the subscriber re-subscribed and re-read every result).
    pub(crate) fn regained(&self) {
        if !self.available.swap(true, Ordering::AcqRel) {
            self.redis_up.set(1.0);
            if self.down_logged.swap(false, Ordering::AcqRel) {
                tracing::info!(
                    pod_id = %self.pod_id,
                    redis = %self.url_shown,
                    "Redis reachable again: rejoining shared health checks"
                );
            } else {
                tracing::info!(pod_id = %self.pod_id, redis = %self.url_shown, "connected to Redis");
            }
        }
    }

    pub(crate) fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Handles a failed operation: unreachable means fall back, anything else is logged.
    pub(crate) fn failed(&self, what: &str, e: &RedisFailure) {
        if e.is_unreachable() {
            self.lost(&e.to_string());
        } else {
            tracing::warn!(error = %e, "{what} failed");
        }
    }

    /// The holder flag in global mode; `None` in sharded mode.
    pub(crate) fn holder_flag(&self) -> Option<bool> {
        match self.mode {
            CoordMode::Global => Some(self.holder.load(Ordering::Acquire)),
            CoordMode::Sharded => None,
        }
    }

    pub(crate) fn offset(&self, r: &Rounds, round: i64) -> Duration {
        rounds::offset(&self.pod_id, &r.name, round, r.spread, self.holder_flag())
    }

    fn performed(&self) {
        self.checks_performed.fetch_add(1, Ordering::Relaxed);
    }

    // === deciding ===

    async fn decide(&self, name: &str) -> Decision {
        const LOCAL: Decision = Decision::Check {
            fence: FenceToken::LOCAL,
        };
        let Some(r) = self.rounds_of(name) else {
            return LOCAL;
        };
        if !self.is_available() && !*self.contacted.borrow() {
            // Just started: let the first sweep be coordinated if Redis answers soon.
            let mut contacted = self.contacted.subscribe();
            let _ = tokio::time::timeout(FIRST_CONTACT_WAIT, contacted.wait_for(|c| *c)).await;
        }
        if !self.is_available() {
            self.performed();
            return LOCAL;
        }
        let now = Instant::now();
        {
            let st = lock(&r.state);
            if let Some(due) = st.known_due {
                let at = due + self.offset(&r, st.round);
                if now < at {
                    tracing::debug!(endpoint = name, "Using cached health check results");
                    return Decision::Skip { retry_in: at - now };
                }
            }
        }
        let reply = self
            .cache
            .acquire_round(name, r.lease_ttl, r.interval)
            .await;
        let now = Instant::now();
        match reply {
            Err(e) => {
                self.failed("acquiring a round", &e);
                self.performed();
                LOCAL
            }
            // Not due yet fleet-wide: someone checked this round already.
            Ok(RoundAnswer::NotDue { due_in, due_at }) => {
                let due = now + due_in;
                let mut st = lock(&r.state);
                st.known_due = Some(due);
                st.round = due_at;
                tracing::debug!(endpoint = name, "Using cached health check results");
                Decision::Skip {
                    retry_in: (due + self.offset(&r, due_at)).saturating_duration_since(now),
                }
            }
            // Another replica is checking this round; if it dies, its lease runs out.
            Ok(RoundAnswer::Busy { pttl }) => Decision::Skip {
                retry_in: (pttl + Duration::from_millis(5)).min(r.spread.max(MIN_BUSY_RETRY)),
            },
            Ok(RoundAnswer::Granted(lease)) => {
                {
                    let mut st = lock(&r.state);
                    st.lease = Some(lease);
                    st.anchor_at = Some(now.checked_sub(lease.since_anchor).unwrap_or(now));
                    st.known_due = None;
                }
                self.performed();
                // Per round, so DEBUG: at INFO this would be a line per endpoint per interval.
                // The global lease, taken once per tenure, is logged at INFO (see `lease`).
                tracing::debug!(
                    endpoint = name,
                    fence = %lease.fence,
                    "Pod {} acquired health check lock",
                    self.pod_id
                );
                Decision::Check { fence: lease.fence }
            }
        }
    }
}

impl Coordination for Coordinator {
    fn may_check<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(self.inner.decide(endpoint))
    }

    fn publish(&self, result: LocalResult) {
        self.inner.expect_round(&result);
        // The writer task owns all result I/O; if it is gone, the gateway is shutting down.
        let _ = self.inner.writes.send(result);
    }

    fn endpoints_changed(&self, endpoints: &[Arc<Endpoint>]) {
        let mut roster = self
            .inner
            .roster
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *roster = Arc::new(Roster::build(endpoints, self.inner.lock_ttl, Some(&roster)));
    }

    fn next_wait(&self, endpoint: &str, planned: Duration) -> Duration {
        let Some(r) = self.inner.rounds_of(endpoint) else {
            return planned;
        };
        if !self.inner.is_available() {
            return planned;
        }
        let st = lock(&r.state);
        match st.known_due {
            Some(due) => {
                (due + self.inner.offset(&r, st.round)).saturating_duration_since(Instant::now())
            }
            None => planned,
        }
    }
}

impl Inner {
    /// The endpoints coordinated now.
    pub(crate) fn roster(&self) -> Arc<Roster> {
        self.roster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The round bookkeeping of `name`, if it is coordinated.
    pub(crate) fn rounds_of(&self, name: &str) -> Option<Arc<Rounds>> {
        self.roster().rounds.get(name).cloned()
    }

    /// A check made under a round lease plans the next round (`anchor + planned`, as the
    /// write script will): note it now, so the scheduler's next wait lines up with it
    /// without waiting for the write. The write's answer corrects it.
    fn expect_round(&self, local: &LocalResult) {
        if local.result.fence.is_local() {
            return;
        }
        let Some(r) = self.rounds_of(&local.endpoint) else {
            return;
        };
        let mut st = lock(&r.state);
        let (Some(lease), Some(anchor_at)) = (st.lease, st.anchor_at) else {
            return;
        };
        let now = Instant::now();
        let planned = local.planned_next;
        let due = anchor_at + planned;
        st.known_due = Some(if due <= now { now + planned } else { due });
        st.round = lease.anchor + i64::try_from(planned.as_millis()).unwrap_or(0);
    }
}
