//! The scheduler: one timer per endpoint that runs its checks and folds them into core.
//!
//! Each endpoint gets its own task, so a hung or slow backend only ever delays its own checks
//! (every check is bounded by its timeout). The task waits `startup.initial_delay`, then
//! checks at the cadence core computes after every outcome: the startup period until the first
//! success (and while a model loads), `check_interval` with jitter while serving, exponential
//! backoff while unhealthy, Retry-After while rate limited.
//!
//! The first sweep runs every endpoint's first check at once, bounded by a semaphore
//! ([`FIRST_SWEEP_CONCURRENCY`]) so a config of hundreds of endpoints does not open hundreds
//! of sockets in the same millisecond; when every endpoint without an initial delay has had
//! its first check, the store is marked ready (`/readyz`).
//!
//! Logs: one INFO line per state transition (endpoint, from, to, reason). A failed check is
//! logged at WARN the first time its reason appears and at DEBUG while it repeats, so a long
//! outage does not flood the log. Metrics: `hale_health_checks_total{endpoint,outcome}`,
//! `hale_health_check_duration_seconds{endpoint}`, `hale_state_transitions_total{endpoint,from,to}`.
//!
//! With `health.background: false` endpoints start trusted and only those the request path
//! marked unhealthy are checked, until they are healthy again.
//!
//! Shared mode: before each check the task asks the [`Coordination`] (`may_check`). `Check`
//! runs it under the fence given, and the store forwards the result to the coordination,
//! which may align the next wait to the fleet's next round; `Skip` means another replica
//! covers this round, and the task asks again when told. The
//! local default ([`LocalOnly`]) always says `Check`, so the cadence above is unchanged.
//! Readiness counts an endpoint once it has a result, its own or one adopted from the fleet.

use crate::check::run_check;
use crate::client::ProbeClient;
use crate::kinds::probe_for;
use hale_core::{CheckOutcome, Coordination, Decision, HealthStore, LocalOnly, Now, Reason};
use metrics::{Counter, Histogram};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

/// How many first checks may run at once at start-up.
pub const FIRST_SWEEP_CONCURRENCY: usize = 64;

/// Model lists are re-read at least this often, so a model pulled onto a healthy backend is
/// routed to without waiting for an outage.
pub const MODEL_REFRESH: Duration = Duration::from_secs(300);

/// Runs the health checks of every endpoint in a [`HealthStore`].
#[derive(Debug)]
pub struct Scheduler {
    store: Arc<HealthStore>,
    client: ProbeClient,
    background: bool,
    coordination: Arc<dyn Coordination>,
}

/// The running checks; dropping it (or calling `shutdown`) stops them.
#[derive(Debug)]
pub struct SchedulerHandle {
    tasks: JoinSet<()>,
}

impl SchedulerHandle {
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

impl Scheduler {
    /// `background` is `health.background`: with `false`, only endpoints the request path
    /// marked unhealthy are checked.
    pub fn new(store: Arc<HealthStore>, client: ProbeClient, background: bool) -> Self {
        Self {
            store,
            client,
            background,
            coordination: Arc::new(LocalOnly),
        }
    }

    /// Asks `coordination` before every check (shared mode); the default is [`LocalOnly`].
    pub fn with_coordination(mut self, coordination: Arc<dyn Coordination>) -> Self {
        self.coordination = coordination;
        self
    }

    /// Starts one task per endpoint.
    pub fn spawn(self) -> SchedulerHandle {
        let names = self.store.endpoint_names();
        let sweep = Arc::new(Semaphore::new(FIRST_SWEEP_CONCURRENCY));
        let pending_first = names
            .iter()
            .filter(|n| self.store.first_delay(n).is_some_and(|d| d.is_zero()))
            .count();
        let pending = Arc::new(AtomicUsize::new(pending_first));
        if pending_first == 0 {
            self.store.mark_ready();
        }
        let mut tasks = JoinSet::new();
        for name in names {
            let task = EndpointTask {
                name,
                store: self.store.clone(),
                client: self.client.clone(),
                background: self.background,
                coordination: self.coordination.clone(),
                sweep: sweep.clone(),
                pending: pending.clone(),
                counters: HashMap::new(),
            };
            tasks.spawn(task.run());
        }
        SchedulerHandle { tasks }
    }
}

struct EndpointTask {
    name: Arc<str>,
    store: Arc<HealthStore>,
    client: ProbeClient,
    background: bool,
    coordination: Arc<dyn Coordination>,
    sweep: Arc<Semaphore>,
    pending: Arc<AtomicUsize>,
    counters: HashMap<String, Counter>,
}

impl EndpointTask {
    async fn run(mut self) {
        let Some(first) = self.store.first_delay(&self.name) else {
            return;
        };
        let counts_for_ready = first.is_zero();
        sleep(first).await;
        let Some(plan) = self.store.plan(&self.name) else {
            return;
        };
        let probe = probe_for(plan.endpoint.kind);
        let duration: Histogram = metrics::histogram!(
            "hale_health_check_duration_seconds",
            "endpoint" => self.name.to_string()
        );
        let mut first_check = true;
        let mut awaiting_first_result = counts_for_ready;
        let mut last_logged: Option<Reason> = None;
        let mut last_discovery: Option<Instant> = None;
        let mut changes = self.store.subscribe();

        loop {
            if !self.background && !first_check {
                // Trusted mode: wait until the request path marks this endpoint down.
                while self.is_routable() {
                    if changes.changed().await.is_err() {
                        return;
                    }
                }
            }
            let wait = match self.coordination.may_check(&self.name).await {
                Decision::Skip { retry_in } => {
                    self.store
                        .note_next_check(&self.name, SystemTime::now() + retry_in);
                    retry_in
                }
                Decision::Check { fence } => {
                    let Some(mut plan) = self.store.plan(&self.name) else {
                        return;
                    };
                    if last_discovery.is_none_or(|t| t.elapsed() >= MODEL_REFRESH) {
                        plan.discover = true;
                    }
                    let outcome = if first_check {
                        let _permit = self.sweep.acquire().await;
                        run_check(&self.client, probe.as_ref(), &plan).await
                    } else {
                        run_check(&self.client, probe.as_ref(), &plan).await
                    };
                    first_check = false;
                    if matches!(
                        &outcome.result,
                        hale_core::CheckResult::Ok { models: Some(_) }
                    ) {
                        last_discovery = Some(Instant::now());
                    }

                    duration.record(outcome.latency.as_secs_f64());
                    self.count(&outcome);
                    let now = Now::capture();
                    match self.store.observe_fenced(&self.name, &outcome, now, fence) {
                        Some(event) => {
                            metrics::counter!(
                                "hale_state_transitions_total",
                                "endpoint" => self.name.to_string(),
                                "from" => event.from.as_str(),
                                "to" => event.to.as_str()
                            )
                            .increment(1);
                            tracing::info!(
                                endpoint = %self.name,
                                from = %event.from,
                                to = %event.to,
                                reason = %event.reason.as_ref().map(|r| r.as_str()).unwrap_or_default(),
                                error = event.error.as_deref().unwrap_or(""),
                                "endpoint state changed"
                            );
                            last_logged = event.reason.clone();
                        }
                        None => self.log_check(&outcome, &mut last_logged),
                    }
                    let now = Now::capture();
                    let Some(delay) =
                        self.store
                            .schedule_next(&self.name, now, rand::random::<f64>())
                    else {
                        return;
                    };
                    let wait = self.coordination.next_wait(&self.name, delay);
                    if wait != delay {
                        self.store.note_next_check(&self.name, now.wall + wait);
                    }
                    wait
                }
            };

            if awaiting_first_result && self.has_result() {
                awaiting_first_result = false;
                if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.store.mark_ready();
                    tracing::info!("first health-check sweep complete");
                }
            }
            sleep(wait).await;
        }
    }

    /// Whether the endpoint has a result yet: a check of ours or one adopted from the fleet.
    fn has_result(&self) -> bool {
        self.store
            .snapshot()
            .get(&self.name)
            .is_some_and(|e| e.health.last_check.is_some())
    }

    fn is_routable(&self) -> bool {
        self.store
            .snapshot()
            .get(&self.name)
            .is_some_and(|e| e.health.is_routable(Instant::now()))
    }

    fn count(&mut self, outcome: &CheckOutcome) {
        let label = outcome
            .result
            .reason()
            .map_or_else(|| "ok".to_owned(), |r| r.as_str().into_owned());
        let name = &self.name;
        self.counters
            .entry(label)
            .or_insert_with_key(|label| {
                metrics::counter!(
                    "hale_health_checks_total",
                    "endpoint" => name.to_string(),
                    "outcome" => label.clone()
                )
            })
            .increment(1);
    }

    /// Logs a check that did not change the state: a new failure reason at WARN, a repeat of
    /// the last one at DEBUG, a success after failures at DEBUG.
    fn log_check(&self, outcome: &CheckOutcome, last_logged: &mut Option<Reason>) {
        let reason = outcome.result.reason();
        match &reason {
            None => {
                tracing::debug!(endpoint = %self.name, latency_ms = outcome.latency.as_secs_f64() * 1e3, "health check ok");
                *last_logged = None;
            }
            Some(r) if Some(r) == last_logged.as_ref() => {
                tracing::debug!(endpoint = %self.name, reason = %r, "health check failed again");
            }
            Some(r) => {
                tracing::warn!(
                    endpoint = %self.name,
                    reason = %r,
                    error = outcome.result.error_text().unwrap_or_default(),
                    "health check failed"
                );
                *last_logged = reason;
            }
        }
    }
}
