//! [`Coordinator`]: the shared-mode implementation of core's [`Coordination`], and the wiring
//! of its background tasks. Each task gets only the handles it needs, and each piece of state
//! is owned by one module that alone writes it: round bookkeeping and the watchdog by
//! [`crate::book`], Redis availability and error counters by [`crate::health`], refusals by
//! [`crate::rejected`], adoption of remote results by [`crate::adopt`], the global lease by
//! `lease`, the status counters and cache by `status`. None of those modules imports this
//! one.
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
//! A Redis operation that fails (unreachable, script error, an answer of the wrong shape, a
//! timeout past the watchdog's deadline) makes that round local: `Check` with
//! [`FenceToken::LOCAL`], the due time this replica knew is forgotten, and `next_wait` returns
//! the state machine's own `planned` delay — never a wait computed from a due time that has
//! passed. An acquire that *timed out* before the deadline is the one exception: it is a
//! `Skip` until the deadline (never later), because on a starved host the answer is merely
//! late — the round is being checked, maybe under a lease this replica was granted without
//! hearing of it — and a replica that cannot keep up should lean on the fleet's results,
//! not add checks. At the deadline it asks again, and a second failure is a local round.
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
//! Bounds on what Redis says (fences, due times) are applied where results are adopted:
//! see [`crate::adopt`].
//!
//! # Announcements before asks
//!
//! On a host whose CPU the fleet saturates, a replica can be descheduled for a few hundred
//! ms; when it runs again its round timers and the fleet's `taken` announcements and results
//! (waiting in the pub/sub socket) come due together, and the timers' tasks run first. Asking
//! Redis then costs an acquire that answers `Busy` or "not due" (issue #11's 20-replica
//! bench: 2.2 such answers per round). So when the local answer says "ask", `decide` yields
//! once and looks again: tokio resumes a yielded task only after every ready task ran and
//! the driver was polled, so the subscriber has applied what had already arrived. The yield
//! never moves a decision past the watchdog's deadline by more than one turn of the runtime.

use crate::adopt::Adopter;
use crate::book::{Book, Rounds};
use crate::cache::{Bounds, ResultCache, RoundAnswer};
use crate::config::{CoordMode, SharedConfig};
use crate::conn::RedisFailure;
use crate::health::Health;
use crate::lease::{Global, LeaseTask};
use crate::lock;
use crate::rejected::{Kind, Rejected};
use crate::status::{CoordStatus, Inputs, StatusCache, StatusTask, Tally};
use crate::subscriber::Subscriber;
use crate::writer::Writer;
use hale_core::coordination::BoxFuture;
use hale_core::{
    Coordination, Decision, Endpoint, FenceToken, HealthStore, LocalResult, ResultKind,
};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The metric names coord records.
pub const REDIS_UP: &str = "hale_coord_redis_up";
pub use crate::status::CHECKS_SKIPPED_TOTAL;

/// How long a check waits at start-up for the first attempt to reach Redis.
const FIRST_CONTACT_WAIT: Duration = Duration::from_secs(1);

/// The shortest wait before asking again about a round.
const MIN_RETRY: Duration = Duration::from_millis(50);

/// Why coord could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("shared.redis_url: {0}")]
    Url(#[source] RedisFailure),
}

/// Shared health state across replicas; see the crate docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Coordinator {
    inner: Arc<Core>,
}

/// What `may_check`, `next_wait` and `publish` work with; private to this module.
#[derive(Debug)]
struct Core {
    mode: CoordMode,
    pod_id: Arc<str>,
    lock_ttl: Duration,
    cache_ttl: Duration,
    cache: ResultCache,
    store: Weak<HealthStore>,
    book: Arc<Book>,
    health: Arc<Health>,
    rejected: Arc<Rejected>,
    adopter: Arc<Adopter>,
    global: Arc<Global>,
    tally: Arc<Tally>,
    status: Arc<StatusCache>,
    /// Set by the subscriber once the first connection attempt has finished, either way.
    contacted: watch::Receiver<bool>,
    /// To the writer task, which owns all result I/O.
    writes: mpsc::UnboundedSender<LocalResult>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

const LOCAL: Decision = Decision::Check {
    fence: FenceToken::LOCAL,
};

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
        let pod: Arc<str> = Arc::from(pod_id);
        let endpoints: Vec<Arc<Endpoint>> = store
            .snapshot()
            .endpoints
            .iter()
            .map(|s| s.endpoint.clone())
            .collect();
        let url_shown = config.target_shown();
        let book = Arc::new(Book::new(pod.clone(), &endpoints, config.lock_ttl));
        let health = Arc::new(Health::new(pod.clone(), url_shown.clone()));
        let rejected = Arc::new(Rejected::default());
        let tally = Arc::new(Tally::default());
        let adopter = Arc::new(Adopter::new(
            pod.clone(),
            config.cache_ttl,
            Arc::downgrade(store),
            book.clone(),
            rejected.clone(),
            tally.clone(),
        ));
        let global = Arc::new(Global::default());
        let status = Arc::new(StatusCache::default());
        let (writes, write_rx) = mpsc::unbounded_channel();
        let (contacted_tx, contacted) = watch::channel(false);

        let mut tasks = vec![
            tokio::spawn(
                Writer::new(
                    cache.clone(),
                    health.clone(),
                    book.clone(),
                    adopter.clone(),
                    Arc::downgrade(store),
                    pod.clone(),
                )
                .run(write_rx),
            ),
            tokio::spawn(
                Subscriber {
                    cache: cache.clone(),
                    health: health.clone(),
                    book: book.clone(),
                    adopter: adopter.clone(),
                    contacted: contacted_tx,
                }
                .run(),
            ),
            tokio::spawn(
                StatusTask {
                    cache: cache.clone(),
                    health: health.clone(),
                    book: book.clone(),
                    status: status.clone(),
                }
                .run(),
            ),
        ];
        if config.mode == CoordMode::Global {
            tasks.push(tokio::spawn(
                LeaseTask {
                    cache: cache.clone(),
                    health: health.clone(),
                    global: global.clone(),
                    pod_id: pod.clone(),
                    lock_ttl: config.lock_ttl,
                }
                .run(),
            ));
        }
        let coordinator = Self {
            inner: Arc::new(Core {
                mode: config.mode,
                pod_id: pod,
                lock_ttl: config.lock_ttl,
                cache_ttl: config.cache_ttl,
                cache,
                store: Arc::downgrade(store),
                book,
                health,
                rejected,
                adopter,
                global,
                tally,
                status,
                contacted,
                writes,
                tasks: Mutex::new(tasks),
            }),
        };
        store.attach(Arc::new(coordinator.clone()));
        tracing::info!(
            pod_id = %coordinator.inner.pod_id,
            mode = coordinator.mode_str(),
            namespace = %config.namespace,
            redis = %url_shown,
            "Initialized shared health check manager"
        );
        Ok(coordinator)
    }

    /// Waits until the first attempt to reach Redis has finished (either way), at most
    /// `limit`. Serving does not need this; it only lets the first sweep be coordinated.
    pub async fn first_contact(&self, limit: Duration) {
        let mut rx = self.inner.contacted.clone();
        let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done)).await;
    }

    /// Whether Redis answers, as far as this replica knows.
    pub fn redis_available(&self) -> bool {
        self.inner.health.is_available()
    }

    /// How many values from Redis of `kind` this replica refused (what
    /// `hale_coord_rejected_total{kind}` counts).
    pub fn rejected(&self, kind: Kind) -> u64 {
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

    /// This replica's shared-status report; never waits on Redis (see `status`).
    pub fn status(&self) -> CoordStatus {
        let c = &self.inner;
        crate::status::report(Inputs {
            pod_id: &c.pod_id,
            mode: c.mode,
            lock_ttl: c.lock_ttl,
            cache_ttl: c.cache_ttl,
            health: &c.health,
            book: &c.book,
            status: &c.status,
            tally: &c.tally,
            global_owner: c.global.owner(),
            store: c.store.upgrade(),
        })
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
        let c = &self.inner;
        crate::lease::release_all(&c.cache, &c.health, &c.book, &c.global, &c.pod_id).await;
    }
}

impl Core {
    /// The holder flag in global mode; `None` in sharded mode.
    fn holder(&self) -> Option<bool> {
        match self.mode {
            CoordMode::Global => Some(self.global.is_holder()),
            CoordMode::Sharded => None,
        }
    }

    async fn decide(&self, name: &str) -> Decision {
        let Some(r) = self.book.rounds_of(name) else {
            return LOCAL;
        };
        if !self.health.is_available() && !*self.contacted.borrow() {
            // Just started: let the first sweep be coordinated if Redis answers soon.
            let mut contacted = self.contacted.clone();
            let _ = tokio::time::timeout(FIRST_CONTACT_WAIT, contacted.wait_for(|c| *c)).await;
        }
        if !self.health.is_available() {
            return self.local(&r);
        }
        let holder = self.holder();
        if let Ok(retry_in) = self.book.cached(&r, Instant::now(), holder) {
            tracing::debug!(endpoint = name, "Using cached health check results");
            return Decision::Skip { retry_in };
        }
        // Before asking Redis, let what already arrived be read: on a host that descheduled
        // this replica for a while, its timers and the fleet's announcements come due
        // together, and the timers' tasks run first. `yield_now` resumes only after the
        // runtime ran every ready task and polled the driver, so the subscriber has applied
        // the backlog by then (see the module docs, "Announcements before asks").
        tokio::task::yield_now().await;
        let deadline = match self.book.cached(&r, Instant::now(), holder) {
            Ok(retry_in) => {
                tracing::debug!(endpoint = name, "Using cached health check results");
                return Decision::Skip { retry_in };
            }
            Err(deadline) => deadline,
        };
        let bounds = Bounds {
            max_due_in: self.adopter.own_planned(&r) + r.spread,
            max_lease: self.lock_ttl.max(r.lease_ttl),
        };
        let reply = self
            .cache
            .acquire_bounded(name, r.lease_ttl, r.interval, bounds)
            .await;
        let now = Instant::now();
        let watchdog = now >= deadline;
        match reply {
            // A timeout on a host too busy to read the answer in time, before the watchdog's
            // deadline: the round may well be checked (even granted to this replica, the
            // lease then runs out), so lean on the fleet's result until the deadline rather
            // than add a check. Past the deadline, and for every other failure, the round is
            // local.
            Err(e @ RedisFailure::Timeout) if now < deadline => {
                self.health.failed("acquiring a round", &e);
                Decision::Skip {
                    retry_in: deadline.saturating_duration_since(now).max(MIN_RETRY),
                }
            }
            Err(e) => {
                self.health.failed("acquiring a round", &e);
                self.local(&r)
            }
            // Not due yet fleet-wide: someone checked this round already.
            Ok(RoundAnswer::NotDue { due_in, due_at }) => {
                self.health.ok();
                r.not_due(now, due_in, due_at);
                if watchdog && !self.reread(&r).await {
                    tracing::debug!(
                        endpoint = name,
                        "no fresh shared result in time: checking locally"
                    );
                    return self.local(&r);
                }
                tracing::debug!(endpoint = name, "Using cached health check results");
                Decision::Skip {
                    retry_in: self
                        .book
                        .retry(&r, now, due_in, due_at, holder)
                        .max(MIN_RETRY),
                }
            }
            // Another replica is checking this round; if it dies, its lease runs out. Ask
            // again when it does (its result, arriving first, answers locally).
            Ok(RoundAnswer::Busy { pttl }) => {
                self.health.ok();
                if now >= deadline + r.lease_ttl && !self.reread(&r).await {
                    tracing::debug!(
                        endpoint = name,
                        "round held past its deadline: checking locally"
                    );
                    return self.local(&r);
                }
                let limit = (deadline + r.lease_ttl).saturating_duration_since(now);
                Decision::Skip {
                    retry_in: (pttl + Duration::from_millis(5)).min(limit).max(MIN_RETRY),
                }
            }
            Ok(RoundAnswer::Granted(lease)) => {
                self.health.ok();
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
                r.granted(lease, now.checked_sub(lease.since_anchor).unwrap_or(now));
                self.tally.performed();
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

    /// This round is checked locally, at this replica's own cadence.
    fn local(&self, r: &Rounds) -> Decision {
        r.local();
        self.tally.performed();
        LOCAL
    }

    /// The watchdog's re-read of one result: whether a fresh one was adopted.
    async fn reread(&self, r: &Rounds) -> bool {
        let before = r.fresh_at();
        match self.cache.read_all(std::slice::from_ref(&r.name)).await {
            Ok(found) => {
                self.health.ok();
                for (name, parsed) in found {
                    match parsed {
                        Ok(stored) => {
                            self.adopter.apply(stored);
                        }
                        Err(e) => self.rejected.reject(Kind::of(&e), &name, &e.to_string()),
                    }
                }
            }
            Err(e) => {
                self.health.failed("re-reading a shared result", &e);
            }
        }
        r.fresh_at() > before
    }
}

impl Coordination for Coordinator {
    fn may_check<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(self.inner.decide(endpoint))
    }

    fn publish(&self, result: LocalResult) {
        if let Some(r) = self.inner.book.rounds_of(&result.endpoint) {
            if !result.result.fence.is_local() {
                r.expect(&result);
            }
            if result.result.kind != ResultKind::Passive {
                r.fresh(result.planned_next);
            }
        }
        // The writer task owns all result I/O; if it is gone, the gateway is shutting down.
        let _ = self.inner.writes.send(result);
    }

    fn endpoints_changed(&self, endpoints: &[Arc<Endpoint>]) {
        self.inner.book.replace(endpoints);
    }

    fn remember_response(&self, id: &str, endpoint: &str, ttl: Duration) {
        crate::responses::remember(&self.inner.cache, id, endpoint, ttl);
    }

    fn recall_response<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Arc<str>>> {
        Box::pin(crate::responses::recall(
            &self.inner.cache,
            &self.inner.rejected,
            id,
        ))
    }

    fn next_wait(&self, endpoint: &str, planned: Duration) -> Duration {
        let c = &self.inner;
        match c.book.rounds_of(endpoint) {
            Some(r) if c.health.is_available() => c.book.next_wait(&r, planned, c.holder()),
            _ => planned,
        }
    }
}
