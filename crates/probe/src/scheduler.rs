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
//! Fast recovery without hammering: while an endpoint is `unhealthy` because its backend
//! refused connections (reason `connect_refused`, found here or adopted from the fleet) and
//! the planned wait is a backoff longer than `check_interval`, the task knocks on the port
//! every interval with a bare TCP connect ([`port_open`], bounded by `check_timeout`, closed
//! at once, no HTTP) and, as soon as one opens, runs the full check at once instead of
//! sleeping out the backoff. That check runs like one the request path asks for: locally,
//! under no lease, whatever the coordination says (in shared mode the fleet's round is not
//! due until the backoff ends, so asking would only be told to wait): each replica learns
//! the backend is back within one interval, at the cost of one check per replica per
//! outage, and the fleet's rounds carry on as before. A knock is not a check: it changes no
//! state, is not folded, and is not counted in `hale_health_checks_total`; the HTTP checks a
//! dead backend gets are exactly the backoff's. Only a refusal starts knocking: a backend
//! that times out or answers an error keeps its plain backoff (its port is open, or a knock
//! would tell nothing). While a knock is in flight (at most `check_timeout`) a manual check
//! waits for it.
//!
//! Passive endpoints (`check: passive`) are never checked: no health request, no model
//! discovery, no coordination round, and a check on request is refused
//! ([`CheckNowError::Passive`]); a check the request path asks for is dropped. They are
//! trusted from the start, so readiness does not wait for them. Their task only waits for
//! the request path to mark them `unhealthy`, sleeps the hold time core plans (the backoff
//! of `unhealthy` endpoints, so failed trials wait longer each time), and then allows a
//! trial ([`HealthStore::allow_trial`]: `recovering`, one request at a time); the proxy's
//! successful trial requests bring it back to `healthy`.
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
//!
//! Live reload: [`SchedulerHandle::apply`] follows a [`Reconciled`] endpoint set — tasks of
//! removed endpoints stop, added ones start, and endpoints with new settings or a new backend
//! get a fresh task (so a shorter interval or a new URL takes effect at once, not after the
//! old wait). Tasks of unchanged endpoints are left alone. [`SchedulerHandle::check_now`] asks
//! an endpoint's task to check at once (the admin `/check`): the check runs on the task, so it
//! never overlaps a scheduled one, is folded in like any other, and the schedule restarts
//! from it. It runs locally whatever the coordination says (an operator asked for it), under
//! no lease, so in shared mode its result stays on this replica.
//!
//! Checks the request path asks for: a request-path failure that does not mark the endpoint
//! by itself (a request dropped after it was sent, a first-byte timeout) asks for a prompt
//! check through [`HealthStore::request_check`]. The endpoint's task waits on that signal next
//! to its timer (and, with `health.background: false`, next to the store's changes) and runs
//! one check at once, like `check_now` but with no one to answer: locally, under no lease,
//! without model discovery; its result decides whether the endpoint stays in rotation. At
//! most one such check runs per `check_interval`: a request within one interval of the last
//! requested check is dropped (the endpoint was checked moments ago, and the next scheduled
//! check follows anyway), so a burst of failures costs one check, not one per failure.
//!
//! Model discovery: a scheduled check also re-reads the model list when core says it is due
//! (the first success, after a recovery or a loading phase) or when the task's last
//! discovery is `discovery_interval` old (the endpoint's own, else
//! `health.discovery_interval`, default 30 s; in shared mode a replica whose list came from
//! the fleet before its own first discovery counts that as one, so a joining replica does
//! not re-read what the fleet just told it). The request path asks for a rediscovery at
//! once through [`HealthStore::request_discovery`] (a request naming a model no endpoint
//! serves, a backend's "model not found"; rate limited there, see
//! [`hale_core::discovery`]): the task waits on that signal next to its timer, runs a check
//! with discovery like a requested check (locally, under no lease) and then ends the wait
//! of every request that asked ([`hale_core::discovery::Rediscovery::finished`]), whatever
//! it found. In shared mode that result is handed to the coordination marked as a
//! discovery, which writes it under a fresh fence like a passive result, so the other
//! replicas adopt the new model list without a discovery of their own.

use crate::check::run_check;
use crate::client::{ProbeClient, port_open};
use crate::kinds::{Probe, probe_for};
use hale_core::config::clock_safe;
use hale_core::discovery::Rediscovery;
use hale_core::store::EndpointStatus;
use hale_core::{
    CheckOutcome, Coordination, Decision, Event, FenceToken, HealthStore, LocalOnly, Now, Reason,
    Reconciled,
};
use metrics::{Counter, Histogram};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

/// What a check run because the request path asked for a rediscovery logs.
const DISCOVERY_ASKED: &str = "check with discovery run on request of the request path";

/// How many first checks may run at once at start-up.
pub const FIRST_SWEEP_CONCURRENCY: usize = 64;

/// Runs the health checks of every endpoint in a [`HealthStore`].
#[derive(Debug)]
pub struct Scheduler {
    store: Arc<HealthStore>,
    client: ProbeClient,
    background: bool,
    coordination: Arc<dyn Coordination>,
}

/// What a check asked for with [`SchedulerHandle::check_now`] found.
#[derive(Debug, Clone)]
pub struct ManualCheck {
    pub outcome: CheckOutcome,
    /// The transition it caused, if any.
    pub event: Option<Event>,
    /// The endpoint as the store shows it after the check.
    pub status: Option<Arc<EndpointStatus>>,
}

/// Why [`SchedulerHandle::check_now`] has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckNowError {
    #[error("no endpoint of that name is configured")]
    UnknownEndpoint,
    #[error("the endpoint's checks are stopping")]
    Stopped,
    #[error("the endpoint is passive (check: passive): it has no probe")]
    Passive,
}

enum Command {
    CheckNow(oneshot::Sender<ManualCheck>),
}

/// One running endpoint task.
struct Running {
    join: JoinHandle<()>,
    commands: mpsc::Sender<Command>,
}

/// What every endpoint task shares.
struct Common {
    store: Arc<HealthStore>,
    client: ProbeClient,
    background: bool,
    coordination: Arc<dyn Coordination>,
    sweep: Semaphore,
    /// Endpoints whose first result readiness still waits for (empty once ready).
    pending: Mutex<HashSet<Arc<str>>>,
}

impl Common {
    /// `name` has its first result, or no longer counts: once none is pending, the first
    /// sweep is complete.
    fn first_result_in(&self, name: &str) {
        let mut pending = lock(&self.pending);
        if pending.remove(name) && pending.is_empty() {
            drop(pending);
            self.store.mark_ready();
            tracing::info!("first health-check sweep complete");
        }
    }
}

/// The running checks; dropping it (or calling `shutdown`) stops them.
pub struct SchedulerHandle {
    common: Arc<Common>,
    tasks: Mutex<HashMap<Arc<str>, Running>>,
}

impl std::fmt::Debug for SchedulerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerHandle")
            .field("tasks", &lock(&self.tasks).len())
            .finish_non_exhaustive()
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        for (_, task) in lock(&self.tasks).drain() {
            task.join.abort();
        }
    }
}

impl SchedulerHandle {
    /// Stops every check and waits for the tasks to end.
    pub async fn shutdown(&self) {
        let tasks: Vec<Running> = lock(&self.tasks).drain().map(|(_, t)| t).collect();
        for task in &tasks {
            task.join.abort();
        }
        for task in tasks {
            let _ = task.join.await;
        }
    }

    /// Follows a reloaded endpoint set (see the module docs); call it right after
    /// [`HealthStore::reconcile`] returned `change`.
    pub fn apply(&self, change: &Reconciled) {
        let mut tasks = lock(&self.tasks);
        let gone = change
            .removed
            .iter()
            .chain(&change.updated)
            .chain(&change.replaced);
        for name in gone {
            if let Some(task) = tasks.remove(name) {
                task.join.abort();
            }
        }
        for name in &change.removed {
            self.common.first_result_in(name);
        }
        let start = change
            .added
            .iter()
            .chain(&change.updated)
            .chain(&change.replaced);
        for name in start {
            tasks.insert(name.clone(), spawn_task(&self.common, name.clone(), false));
        }
    }

    /// Checks `name` now and returns what the check found; see the module docs.
    pub async fn check_now(&self, name: &str) -> Result<ManualCheck, CheckNowError> {
        if self
            .common
            .store
            .snapshot()
            .get(name)
            .is_some_and(|e| e.endpoint.check.is_passive())
        {
            return Err(CheckNowError::Passive);
        }
        let commands = lock(&self.tasks)
            .get(name)
            .map(|t| t.commands.clone())
            .ok_or(CheckNowError::UnknownEndpoint)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::CheckNow(reply))
            .await
            .map_err(|_| CheckNowError::Stopped)?;
        answer.await.map_err(|_| CheckNowError::Stopped)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
        let snapshot = self.store.snapshot();
        let pending: HashSet<Arc<str>> = names
            .iter()
            .filter(|n| self.store.first_delay(n).is_some_and(|d| d.is_zero()))
            .filter(|n| {
                !snapshot
                    .get(n)
                    .is_some_and(|e| e.endpoint.check.is_passive())
            })
            .cloned()
            .collect();
        if pending.is_empty() {
            self.store.mark_ready();
        }
        let common = Arc::new(Common {
            store: self.store,
            client: self.client,
            background: self.background,
            coordination: self.coordination,
            sweep: Semaphore::new(FIRST_SWEEP_CONCURRENCY),
            pending: Mutex::new(pending),
        });
        let tasks = names
            .into_iter()
            .map(|name| (name.clone(), spawn_task(&common, name, true)))
            .collect();
        SchedulerHandle {
            common,
            tasks: Mutex::new(tasks),
        }
    }
}

/// Starts the task of `name`; `first_sweep` for the tasks started with the scheduler.
fn spawn_task(common: &Arc<Common>, name: Arc<str>, first_sweep: bool) -> Running {
    let (commands, rx) = mpsc::channel(4);
    let task = EndpointTask {
        name,
        common: common.clone(),
        first_sweep,
        commands: rx,
        counters: HashMap::new(),
        last_logged: None,
        last_discovery: None,
        last_requested: None,
    };
    Running {
        join: tokio::spawn(task.run()),
        commands,
    }
}

struct EndpointTask {
    name: Arc<str>,
    common: Arc<Common>,
    first_sweep: bool,
    commands: mpsc::Receiver<Command>,
    counters: HashMap<String, Counter>,
    last_logged: Option<Reason>,
    last_discovery: Option<Instant>,
    /// When the last check the request path asked for ran.
    last_requested: Option<Instant>,
}

/// What ended a wait.
enum Woken {
    Due,
    Command(Command),
    /// The request path asked for a check, and the rate limit lets it run.
    Requested,
    /// The port of a backend that refused connections accepts one again.
    PortOpen,
    /// The request path asked for a rediscovery of the models.
    Discover,
    /// The handle is gone: the task ends.
    Stop,
}

/// Where and how often a backing-off task knocks (a bare TCP connect) on a refusing port.
struct PortWatch {
    url: url::Url,
    interval: Duration,
    timeout: Duration,
}

/// Sleeps until `at`; never without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a rediscovery is asked for; never without a signal (the endpoint's models
/// are static).
async fn asked(signal: Option<&Rediscovery>) {
    match signal {
        Some(signal) => signal.requested().await,
        None => std::future::pending().await,
    }
}

/// Resolves when `signal` is raised; never without one.
async fn raised(signal: Option<&Notify>) {
    match signal {
        Some(signal) => signal.notified().await,
        None => std::future::pending().await,
    }
}

impl EndpointTask {
    async fn run(mut self) {
        let store = self.common.store.clone();
        let Some(first) = store.first_delay(&self.name) else {
            return;
        };
        let mut awaiting_first_result = self.first_sweep && first.is_zero();
        let Some(plan) = store.plan(&self.name) else {
            return;
        };
        if plan.endpoint.check.is_passive() {
            return self.run_passive().await;
        }
        let probe = probe_for(plan.endpoint.kind);
        let duration: Histogram = metrics::histogram!(
            "hale_health_check_duration_seconds",
            "endpoint" => self.name.to_string()
        );
        let mut first_check = true;
        let mut changes = store.subscribe();
        let requests = store.check_requested(&self.name);
        let requests = requests.as_deref();
        let discoveries = store.discovery_requests(&self.name);
        let discoveries = discoveries.as_deref();
        let mut wait = first;

        loop {
            // Wait until due, answering manual and requested checks meanwhile.
            loop {
                let (reply, why) = match self.wait(wait, requests, discoveries).await {
                    Woken::Due => break,
                    Woken::Stop => return,
                    Woken::Command(Command::CheckNow(reply)) => {
                        (Some(reply), "check run on request")
                    }
                    Woken::Requested => (None, "check run after a request-path failure"),
                    Woken::PortOpen => (None, "check run as the port opened again"),
                    Woken::Discover => (None, DISCOVERY_ASKED),
                };
                let Some(delay) = self
                    .manual(probe.as_ref(), &duration, reply, first_check, why)
                    .await
                else {
                    return;
                };
                if why == DISCOVERY_ASKED
                    && let Some(d) = discoveries
                {
                    d.finished();
                }
                first_check = false;
                wait = delay;
            }
            if !self.common.background && !first_check {
                // Trusted mode: wait until the request path marks this endpoint down (or
                // asks for a check).
                while self.is_up() {
                    let reply = tokio::select! {
                        changed = changes.changed() => if changed.is_err() { return } else { continue },
                        command = self.commands.recv() => match command {
                            Some(Command::CheckNow(reply)) => Some(reply),
                            None => return,
                        },
                        () = raised(requests) => {
                            if !self.take_requested() {
                                continue;
                            }
                            None
                        }
                        () = asked(discoveries) => {
                            if self
                                .manual(probe.as_ref(), &duration, None, false, DISCOVERY_ASKED)
                                .await
                                .is_none()
                            {
                                return;
                            }
                            if let Some(d) = discoveries {
                                d.finished();
                            }
                            continue;
                        }
                    };
                    let why = if reply.is_some() {
                        "check run on request"
                    } else {
                        "check run after a request-path failure"
                    };
                    if self
                        .manual(probe.as_ref(), &duration, reply, false, why)
                        .await
                        .is_none()
                    {
                        return;
                    }
                }
            }
            wait = match self.common.coordination.may_check(&self.name).await {
                Decision::Skip { retry_in } => {
                    store.note_next_check(&self.name, SystemTime::now() + clock_safe(retry_in));
                    retry_in
                }
                Decision::Check { fence } => {
                    let Some(mut plan) = store.plan(&self.name) else {
                        return;
                    };
                    let every = store
                        .discovery_interval(&self.name)
                        .unwrap_or(Duration::MAX);
                    if self.last_discovery.is_none() && self.has_adopted_models() {
                        // The fleet's list is in: this replica's own re-reads start from
                        // now, not with a discovery of its own.
                        self.last_discovery = Some(Instant::now());
                    }
                    if self.last_discovery.is_none_or(|t| t.elapsed() >= every) {
                        plan.discover = true;
                    }
                    let outcome = if first_check {
                        let _permit = self.common.sweep.acquire().await;
                        run_check(&self.common.client, probe.as_ref(), &plan).await
                    } else {
                        run_check(&self.common.client, probe.as_ref(), &plan).await
                    };
                    first_check = false;
                    self.fold(&outcome, &duration, fence);
                    let now = Now::capture();
                    let Some(delay) = store.schedule_next(&self.name, now, rand::random::<f64>())
                    else {
                        return;
                    };
                    let wait = self.common.coordination.next_wait(&self.name, delay);
                    if wait != delay {
                        store.note_next_check(&self.name, now.wall + clock_safe(wait));
                    }
                    wait
                }
            };

            if awaiting_first_result && self.has_result() {
                awaiting_first_result = false;
                self.common.first_result_in(&self.name);
            }
        }
    }

    /// The task of a passive endpoint (see the module docs): it never checks; once the
    /// request path marked the endpoint `unhealthy`, it waits the hold time core plans and
    /// then allows a trial (`recovering`).
    async fn run_passive(mut self) {
        let store = self.common.store.clone();
        let mut changes = store.subscribe();
        let requests = store.check_requested(&self.name);
        let requests = requests.as_deref();
        loop {
            // Serving (or already on trial): wait for the request path (or the fleet) to mark
            // it down.
            while !self.is_down() {
                if !self.idle_passive(&mut changes, requests).await {
                    return;
                }
            }
            let Some(hold) = store.schedule_next(&self.name, Now::capture(), rand::random::<f64>())
            else {
                return;
            };
            let due = Instant::now() + clock_safe(hold);
            let mut held = true;
            while held && self.is_down() {
                tokio::select! {
                    () = sleep_until(due) => held = false,
                    alive = self.idle_passive(&mut changes, requests) => if !alive { return },
                }
            }
            if held {
                // Someone else (another replica's result) moved it on meanwhile.
                continue;
            }
            if let Some(event) = store.allow_trial(&self.name, Now::capture()) {
                self.note_transition(&event);
            }
        }
    }

    /// One wake-up of an idle passive task: a store change, a command (a check on request is
    /// refused before it gets here; one racing with a reload gets no answer) or a check
    /// request (there is nothing to probe: dropped). Returns false when the task must end.
    async fn idle_passive(
        &mut self,
        changes: &mut tokio::sync::watch::Receiver<u64>,
        requests: Option<&Notify>,
    ) -> bool {
        tokio::select! {
            changed = changes.changed() => changed.is_ok(),
            command = self.commands.recv() => command.is_some(),
            () = raised(requests) => {
                tracing::debug!(endpoint = %self.name, "check request dropped: the endpoint is passive");
                true
            }
        }
    }

    /// Whether a passive endpoint is out of rotation by its state: `unhealthy`, or `unknown`
    /// (only by adopting another replica's result; with no probe, a trial ends it too).
    fn is_down(&self) -> bool {
        self.common
            .store
            .snapshot()
            .get(&self.name)
            .is_some_and(|e| {
                matches!(
                    e.health.state,
                    hale_core::HealthState::Unhealthy | hale_core::HealthState::Unknown
                )
            })
    }

    /// Counts and logs a transition this task caused.
    fn note_transition(&mut self, event: &Event) {
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
        self.last_logged = event.reason.clone();
    }

    /// Sleeps `wait`, unless a command or an allowed check request (see the module docs)
    /// comes first. While backing off from a refusing backend, knocks on its port every
    /// interval and ends the wait as soon as it opens (see the module docs).
    async fn wait(
        &mut self,
        wait: Duration,
        requests: Option<&Notify>,
        discoveries: Option<&Rediscovery>,
    ) -> Woken {
        let start = Instant::now();
        let due = start + clock_safe(wait);
        let watch = self.port_watch(wait);
        let mut knock = watch.as_ref().map(|w| start + w.interval);
        loop {
            let knock_at = knock.filter(|at| *at < due);
            tokio::select! {
                () = sleep_until(due) => return Woken::Due,
                () = sleep_until_some(knock_at) => {
                    let Some(w) = &watch else { return Woken::Due };
                    knock = Some(Instant::now() + w.interval);
                    if port_open(&w.url, w.timeout).await {
                        return Woken::PortOpen;
                    }
                    tracing::trace!(endpoint = %self.name, "port still closed");
                }
                command = self.commands.recv() => return command.map_or(Woken::Stop, Woken::Command),
                () = raised(requests) => if self.take_requested() {
                    return Woken::Requested;
                },
                () = asked(discoveries) => return Woken::Discover,
            }
        }
    }

    /// What to knock on while waiting `wait`: only when the endpoint is `unhealthy` because
    /// its backend refused connections and the wait is a backoff longer than the interval.
    fn port_watch(&self, wait: Duration) -> Option<PortWatch> {
        let snapshot = self.common.store.snapshot();
        let e = snapshot.get(&self.name)?;
        let refused = e.health.state == hale_core::HealthState::Unhealthy
            && e.health.reason == Some(Reason::ConnectRefused);
        let interval = e.endpoint.check_interval;
        (refused && wait > interval && !interval.is_zero()).then(|| PortWatch {
            url: e.endpoint.health_url.clone(),
            interval,
            timeout: e.endpoint.check_timeout,
        })
    }

    /// Whether a check the request path asked for may run now (at most one per
    /// `check_interval`); if so, it counts from now.
    fn take_requested(&mut self) -> bool {
        let interval = self
            .common
            .store
            .snapshot()
            .get(&self.name)
            .map_or(Duration::ZERO, |e| e.endpoint.check_interval);
        let now = Instant::now();
        if self
            .last_requested
            .is_some_and(|last| now.saturating_duration_since(last) < interval)
        {
            tracing::debug!(endpoint = %self.name, "check request dropped: one ran within the interval");
            return false;
        }
        self.last_requested = Some(now);
        true
    }

    /// Runs a check out of schedule — one an operator asked for (`reply`: its answer goes
    /// there), one the request path asked for or one a knock on a refusing port called for
    /// (`None`; `why` says which, for the log) — folds it in and returns the wait until the
    /// next scheduled check (`None`: the endpoint is gone).
    async fn manual(
        &mut self,
        probe: &dyn Probe,
        duration: &Histogram,
        reply: Option<oneshot::Sender<ManualCheck>>,
        first_check: bool,
        why: &str,
    ) -> Option<Duration> {
        let store = self.common.store.clone();
        let mut plan = store.plan(&self.name)?;
        // An operator's check re-reads the models too, and so does one run for a
        // rediscovery; one run after a request-path failure is about health.
        let discovery = why == DISCOVERY_ASKED;
        plan.discover |= reply.is_some() || discovery;
        let outcome = if first_check {
            let _permit = self.common.sweep.acquire().await;
            run_check(&self.common.client, probe, &plan).await
        } else {
            run_check(&self.common.client, probe, &plan).await
        };
        tracing::info!(endpoint = %self.name, outcome = outcome.result.reason().map_or_else(|| "ok".into(), |r| r.as_str().into_owned()), "{why}");
        let event = if discovery {
            self.fold_discovery(&outcome, duration)
        } else {
            self.fold(&outcome, duration, FenceToken::LOCAL)
        };
        let delay = store.schedule_next(&self.name, Now::capture(), rand::random::<f64>())?;
        if let Some(reply) = reply {
            let status = store.snapshot().get(&self.name).cloned();
            let _ = reply.send(ManualCheck {
                outcome,
                event,
                status,
            });
        }
        Some(delay)
    }

    /// Records a check's metrics, folds it into the store under `fence` and logs it.
    fn fold(
        &mut self,
        outcome: &CheckOutcome,
        duration: &Histogram,
        fence: FenceToken,
    ) -> Option<Event> {
        self.fold_as(outcome, duration, fence, false)
    }

    /// [`Self::fold`] for a check run for a rediscovery: shared with the fleet (see the module
    /// docs).
    fn fold_discovery(&mut self, outcome: &CheckOutcome, duration: &Histogram) -> Option<Event> {
        self.fold_as(outcome, duration, FenceToken::LOCAL, true)
    }

    fn fold_as(
        &mut self,
        outcome: &CheckOutcome,
        duration: &Histogram,
        fence: FenceToken,
        discovery: bool,
    ) -> Option<Event> {
        if matches!(
            &outcome.result,
            hale_core::CheckResult::Ok { models: Some(_) }
        ) {
            self.last_discovery = Some(Instant::now());
        }
        duration.record(outcome.latency.as_secs_f64());
        self.count(outcome);
        let store = &self.common.store;
        let event = if discovery {
            store.observe_discovery(&self.name, outcome, Now::capture())
        } else {
            store.observe_fenced(&self.name, outcome, Now::capture(), fence)
        };
        match &event {
            Some(event) => self.note_transition(event),
            None => self.log_check(outcome),
        }
        event
    }

    /// Whether the endpoint's model list came from another replica's result.
    fn has_adopted_models(&self) -> bool {
        self.common
            .store
            .snapshot()
            .get(&self.name)
            .is_some_and(|e| {
                e.health.source == hale_core::Source::Shared && e.health.discovered.is_some()
            })
    }

    /// Whether the endpoint has a result yet: a check of ours or one adopted from the fleet.
    fn has_result(&self) -> bool {
        self.common
            .store
            .snapshot()
            .get(&self.name)
            .is_some_and(|e| e.health.last_check.is_some())
    }

    /// Whether the endpoint is up by its health (a drain does not count: it is checked as
    /// usual).
    fn is_up(&self) -> bool {
        self.common
            .store
            .snapshot()
            .get(&self.name)
            .is_some_and(|e| e.health.is_up(Instant::now()))
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
    fn log_check(&mut self, outcome: &CheckOutcome) {
        let last_logged = &mut self.last_logged;
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
