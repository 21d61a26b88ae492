//! [`Coordinator`]: the shared-mode implementation of core's [`Coordination`], and the state
//! its background tasks share: per-endpoint round bookkeeping and its watchdog, counters.
//! Redis availability and error counters live in [`crate::health`], refusals in
//! [`crate::rejected`].
//!
//! `may_check` answers from local knowledge when it can (the next round's due time learned
//! from the last result written or received), so in steady state a replica touches Redis only
//! to acquire a round it is first to ask for; everything else is a local `Skip`. When Redis is
//! unreachable it answers `Check` with the local fence at once, without trying Redis, until
//! the subscriber task has reconnected. The writer, subscriber, global-lease and status tasks
//! live in their own modules; all Redis I/O happens on those tasks or in `may_check` (the
//! scheduler's task), never on the request path, and no lock is held across an await.
//!
//! # Errors never speed a replica up
//!
//! A Redis operation that fails for any reason (unreachable, timeout, script error, an answer
//! of the wrong shape) makes that round local: `Check` with [`FenceToken::LOCAL`], the due
//! time this replica knew is forgotten, and `next_wait` returns the state machine's own
//! `planned` delay — never a wait computed from a due time that has passed.
//!
//! # The watchdog
//!
//! Per endpoint this replica remembers when it last saw a *fresh* result (its own check, or a
//! remote result its store adopted) and the delay its own config planned after it. Nothing
//! read from Redis can push its next look at the endpoint past `fresh + planned + spread`:
//! `Skip` waits and `next_wait` are cut there. Past that deadline it asks Redis (acquire, with
//! `max_due_in` = its own planned delay + spread, so a poisoned due time in the hash counts as
//! due); if Redis says the round is not due or is busy, it re-reads the result and adopts it
//! if it can, and otherwise checks locally. A local check also resets the fence its store
//! holds (core's `observe_fenced` keeps this replica's own result), so a plausible but forged
//! fence adopted earlier cannot lock later results out for more than one such round.
//!
//! # Bounds on what Redis says
//!
//! - A fence above this replica's wall clock in µs plus [`FENCE_SKEW`] is refused (kind
//!   `fence`): the counter is seeded from Redis's clock in µs and grows by one per
//!   acquisition, so it cannot be there (2^53 − 1 is the year 2255). The scripts re-seed a
//!   counter that is.
//! - A due time outside `[-cache_ttl, max_plan + spread]` is refused (kind `due`) and the
//!   result, if otherwise valid, adopted without it; `max_plan` is the most this replica's
//!   config can plan for the endpoint: 24 intervals (backoff ≤ 12× with jitter < 1), twice
//!   the startup period plus the initial delay, or the Retry-After cap.

use crate::cache::{Bounds, ResultCache, RoundAnswer, RoundLease};
use crate::config::{CoordMode, SharedConfig, masked_url};
use crate::conn::RedisFailure;
use crate::health::Health;
use crate::rejected::{Kind, Rejected};
use crate::rounds;
use crate::wire::{self, StoredResult};
use hale_core::coordination::BoxFuture;
use hale_core::{
    Adoption, Coordination, Decision, Endpoint, FenceToken, HealthStore, LocalResult, Now,
    ResultKind,
};
use metrics::Counter;
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

/// How far a fence may be above this replica's wall clock in µs (clock skew between Redis
/// and this host); see the module docs.
pub const FENCE_SKEW: Duration = Duration::from_secs(3600);

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
    /// The most this replica's config can plan for the endpoint (see the module docs).
    pub max_plan: Duration,
    pub state: Mutex<RoundState>,
}

#[derive(Debug)]
pub(crate) struct RoundState {
    /// The watchdog: when this replica last saw a fresh result, and the delay its own config
    /// planned after it.
    pub fresh_at: Instant,
    pub planned: Duration,
    /// When the fleet's next round is due, as this replica knows it.
    pub known_due: Option<Instant>,
    /// That round's id: its `due_at` on the Redis clock.
    pub round: i64,
    /// The round lease this replica holds (acquired, not yet written), and when its anchor
    /// was on this replica's clock.
    pub lease: Option<RoundLease>,
    pub anchor_at: Option<Instant>,
    /// Another replica announced it took the current round: its result is expected by then.
    pub held_until: Option<Instant>,
}

impl RoundState {
    fn new(planned: Duration) -> Self {
        Self {
            fresh_at: Instant::now(),
            planned,
            known_due: None,
            round: 0,
            lease: None,
            anchor_at: None,
            held_until: None,
        }
    }

    /// Forgets what Redis said about rounds (an outage); keeps the watchdog.
    fn forget(&mut self) {
        self.known_due = None;
        self.round = 0;
        self.lease = None;
        self.anchor_at = None;
        self.held_until = None;
    }

    /// This replica's next look at the endpoint is due by then, whatever Redis says.
    fn deadline(&self, spread: Duration) -> Instant {
        self.fresh_at + self.planned + spread
    }

    fn fresh(&mut self, planned: Duration) {
        self.fresh_at = Instant::now();
        self.planned = planned;
    }
}

/// The most `e`'s config can plan between two checks; see the module docs.
pub(crate) fn max_plan(e: &Endpoint) -> Duration {
    e.check_interval
        .saturating_mul(24)
        .max(e.startup.period.saturating_mul(2) + e.startup.initial_delay)
        .max(wire::RETRY_AFTER_CAP)
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
            let first = e
                .check_interval
                .max(e.startup.period)
                .max(e.startup.initial_delay + e.startup.period);
            let fresh = Rounds {
                name: e.name.clone(),
                interval: e.check_interval,
                spread: rounds::spread(e),
                lease_ttl: rounds::lease_ttl(e, lock_ttl),
                max_plan: max_plan(e),
                state: Mutex::new(RoundState::new(first)),
            };
            let kept = previous
                .and_then(|p| p.rounds.get(&e.name))
                .filter(|r| {
                    (r.interval, r.spread, r.lease_ttl, r.max_plan)
                        == (
                            fresh.interval,
                            fresh.spread,
                            fresh.lease_ttl,
                            fresh.max_plan,
                        )
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
    /// Whether Redis is usable, and the error counters.
    pub health: Health,
    pub rejected: Rejected,
    /// The replicas known to be live, for the order in which they ask (see `rounds`).
    pub members: Mutex<rounds::Members>,
    /// Set once the first connection attempt has finished, either way.
    pub contacted: watch::Sender<bool>,
    /// Global mode: whether this replica holds the global lease, and who does.
    pub holder: AtomicBool,
    pub global_owner: Mutex<Option<Arc<str>>>,
    pub writes: mpsc::UnboundedSender<LocalResult>,
    pub checks_performed: AtomicU64,
    pub checks_skipped: AtomicU64,
    pub skipped_metric: Counter,
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
            health: Health::new(Arc::from(pod_id), masked_url(&config.redis_url)),
            rejected: Rejected::default(),
            members: Mutex::new(rounds::Members::new(Arc::from(pod_id))),
            contacted: watch::Sender::new(false),
            holder: AtomicBool::new(false),
            global_owner: Mutex::new(None),
            writes,
            checks_performed: AtomicU64::new(0),
            checks_skipped: AtomicU64::new(0),
            skipped_metric: metrics::counter!(CHECKS_SKIPPED_TOTAL),
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
        self.inner.health.is_available()
    }

    /// How many values from Redis of `kind` this replica refused (what
    /// `hale_coord_rejected_total{kind}` counts).
    pub fn rejected(&self, kind: crate::rejected::Kind) -> u64 {
        self.inner.rejected.count(kind)
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
    /// An operation succeeded.
    pub(crate) fn ok(&self) {
        self.health.ok();
    }

    /// An operation (`what`) failed: counted, and if that makes an outage, every round is
    /// forgotten and the global lease given up locally. See [`crate::health`].
    pub(crate) fn failed(&self, what: &'static str, e: &RedisFailure) {
        if self.health.failed(what, e) {
            for r in self.roster().rounds.values() {
                lock(&r.state).forget();
            }
            if self.holder.swap(false, Ordering::AcqRel) {
                tracing::info!(
                    "Pod {} released health check lock (Redis unreachable)",
                    self.pod_id
                );
            }
        }
    }

    pub(crate) fn is_available(&self) -> bool {
        self.health.is_available()
    }

    /// The holder flag in global mode; `None` in sharded mode.
    pub(crate) fn holder_flag(&self) -> Option<bool> {
        match self.mode {
            CoordMode::Global => Some(self.holder.load(Ordering::Acquire)),
            CoordMode::Sharded => None,
        }
    }

    pub(crate) fn offset(&self, r: &Rounds, round: i64) -> Duration {
        let members = lock(&self.members).list();
        rounds::offset(
            &self.pod_id,
            &r.name,
            round,
            r.spread,
            self.holder_flag(),
            &members,
        )
    }

    fn performed(&self) {
        self.checks_performed.fetch_add(1, Ordering::Relaxed);
    }

    // === deciding ===

    /// The delay this replica's own config plans for `name` now (its state as adopted),
    /// bounded by `max_plan`; the interval if the store is gone.
    pub(crate) fn own_planned(&self, r: &Rounds) -> Duration {
        self.store
            .upgrade()
            .and_then(|s| s.planned_delay(&r.name, Instant::now()))
            .unwrap_or(r.interval)
            .min(r.max_plan)
    }

    /// Notes that `r` has a fresh result (its own or adopted), after which this replica's
    /// config plans `planned`.
    pub(crate) fn fresh(&self, r: &Rounds, planned: Duration) {
        lock(&r.state).fresh(planned.min(r.max_plan));
    }

    /// Whether `fence` can have come from Redis's counter (see the module docs).
    pub(crate) fn fence_plausible(fence: u64) -> bool {
        let limit = std::time::SystemTime::now() + FENCE_SKEW;
        let limit_us = limit
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        fence > 0 && fence <= limit_us && fence < wire::FENCE_LIMIT
    }

    async fn decide(&self, name: &str) -> Decision {
        let Some(r) = self.rounds_of(name) else {
            return LOCAL;
        };
        if !self.is_available() && !*self.contacted.borrow() {
            // Just started: let the first sweep be coordinated if Redis answers soon.
            let mut contacted = self.contacted.subscribe();
            let _ = tokio::time::timeout(FIRST_CONTACT_WAIT, contacted.wait_for(|c| *c)).await;
        }
        if !self.is_available() {
            return self.local(&r);
        }
        let now = Instant::now();
        let deadline = {
            let st = lock(&r.state);
            let deadline = st.deadline(r.spread);
            if let Some(due) = st.known_due {
                let at = due + self.offset(&r, st.round);
                if now < at && now < deadline {
                    tracing::debug!(endpoint = name, "Using cached health check results");
                    return Decision::Skip {
                        retry_in: at.min(deadline) - now,
                    };
                }
            }
            // Someone announced they are checking this round: wait for their result (or
            // their lease to run out) instead of asking.
            if let Some(until) = st.held_until
                && now < until
                && now < deadline
            {
                return Decision::Skip {
                    retry_in: until.min(deadline) - now,
                };
            }
            deadline
        };
        let bounds = Bounds {
            max_due_in: self.own_planned(&r) + r.spread,
            max_lease: self.lock_ttl.max(r.lease_ttl),
        };
        let reply = self
            .cache
            .acquire_bounded(name, r.lease_ttl, r.interval, bounds)
            .await;
        let now = Instant::now();
        let watchdog = now >= deadline;
        match reply {
            Err(e) => {
                self.failed("acquiring a round", &e);
                self.local(&r)
            }
            // Not due yet fleet-wide: someone checked this round already.
            Ok(RoundAnswer::NotDue { due_in, due_at }) => {
                self.ok();
                {
                    let mut st = lock(&r.state);
                    st.known_due = Some(now + due_in);
                    st.round = due_at;
                }
                if watchdog && !self.reread(&r).await {
                    tracing::debug!(
                        endpoint = name,
                        "no fresh shared result in time: checking locally"
                    );
                    return self.local(&r);
                }
                tracing::debug!(endpoint = name, "Using cached health check results");
                let st = lock(&r.state);
                let at = (now + due_in + self.offset(&r, due_at)).min(st.deadline(r.spread));
                Decision::Skip {
                    retry_in: at.saturating_duration_since(now).max(MIN_BUSY_RETRY),
                }
            }
            // Another replica is checking this round; if it dies, its lease runs out. Ask
            // again when it does (its result, arriving first, answers locally).
            Ok(RoundAnswer::Busy { pttl }) => {
                self.ok();
                if now >= deadline + r.lease_ttl && !self.reread(&r).await {
                    tracing::debug!(
                        endpoint = name,
                        "round held past its deadline: checking locally"
                    );
                    return self.local(&r);
                }
                let limit = (deadline + r.lease_ttl).saturating_duration_since(now);
                Decision::Skip {
                    retry_in: (pttl + Duration::from_millis(5))
                        .min(limit)
                        .max(MIN_BUSY_RETRY),
                }
            }
            Ok(RoundAnswer::Granted(lease)) => {
                self.ok();
                match lease.repaired {
                    0 => {}
                    1 => self
                        .rejected
                        .reject(Kind::Due, name, "stored due_at overridden"),
                    _ => self.rejected.reject(
                        Kind::Malformed,
                        name,
                        "result or lease key of the wrong type or lifetime overridden",
                    ),
                }
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

    /// This round is checked locally: whatever due time was known is forgotten, so the next
    /// wait is the state machine's own.
    fn local(&self, r: &Rounds) -> Decision {
        lock(&r.state).known_due = None;
        self.performed();
        LOCAL
    }

    /// Another replica announced it took `endpoint`'s round for at most `lease` (bounded by
    /// this replica's own longest lease: a forged announcement delays nothing past that, and
    /// never past the watchdog's deadline).
    pub(crate) fn taken(&self, endpoint: &str, owner: &str, lease: Duration) {
        let Some(r) = self.rounds_of(endpoint) else {
            return;
        };
        lock(&self.members).saw(owner);
        let mut st = lock(&r.state);
        if st.lease.is_none() {
            st.held_until = Some(Instant::now() + lease.min(self.lock_ttl.max(r.lease_ttl)));
        }
    }

    /// The watchdog's re-read of one result: whether a fresh one was adopted.
    async fn reread(&self, r: &Rounds) -> bool {
        let before = lock(&r.state).fresh_at;
        match self.cache.read_all(std::slice::from_ref(&r.name)).await {
            Ok(found) => {
                self.ok();
                for (name, parsed) in found {
                    match parsed {
                        Ok(stored) => {
                            self.apply(stored);
                        }
                        Err(e) => self.rejected.reject(Kind::of(&e), &name, &e.to_string()),
                    }
                }
            }
            Err(e) => self.failed("re-reading a shared result", &e),
        }
        lock(&r.state).fresh_at > before
    }

    /// Applies a result read or received, after bounding it; returns whether the store
    /// adopted it (then it is fresh for the watchdog).
    pub(crate) fn apply(&self, stored: StoredResult) -> bool {
        let Some(r) = self.rounds_of(&stored.endpoint) else {
            return false;
        };
        let fence = stored.result.fence.get();
        if !Self::fence_plausible(fence) {
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
        lock(&self.members).saw(&result.checked_by);
        match store.apply_remote(&stored.endpoint, result, Now::capture()) {
            Adoption::Adopted(event) => {
                {
                    let mut st = lock(&r.state);
                    st.held_until = None;
                    if due_ok && stored.due_at > 0 {
                        let due_in =
                            Duration::from_millis(u64::try_from(stored.due_in_ms).unwrap_or(0));
                        st.known_due = Some(Instant::now() + due_in);
                        st.round = stored.due_at;
                    }
                }
                self.fresh(&r, self.own_planned(&r));
                if matches!(result.kind, ResultKind::Check { .. })
                    && result.checked_by != self.pod_id
                {
                    self.checks_skipped.fetch_add(1, Ordering::Relaxed);
                    self.skipped_metric.increment(1);
                }
                if let Some(event) = event {
                    crate::subscriber::log_transition(&event);
                }
                true
            }
            Adoption::Stale | Adoption::UnknownEndpoint => false,
        }
    }
}

const LOCAL: Decision = Decision::Check {
    fence: FenceToken::LOCAL,
};

impl Coordination for Coordinator {
    fn may_check<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(self.inner.decide(endpoint))
    }

    fn publish(&self, result: LocalResult) {
        self.inner.expect_round(&result);
        if result.result.kind != ResultKind::Passive
            && let Some(r) = self.inner.rounds_of(&result.endpoint)
        {
            self.inner.fresh(&r, result.planned_next);
        }
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
        let now = Instant::now();
        let st = lock(&r.state);
        let deadline = st.deadline(r.spread);
        match st.known_due {
            // Aligned to the fleet's next round, never past the watchdog's deadline.
            Some(due) if due + self.inner.offset(&r, st.round) > now => {
                (due + self.inner.offset(&r, st.round)).min(deadline) - now
            }
            // No due time, or one that has passed (stale): this replica's own cadence.
            _ => planned,
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
