//! The health store: every endpoint's state machine behind one writer lock, published as an
//! immutable [`Snapshot`] that the proxy and the api read lock-free (`ArcSwap`), plus a change
//! signal (`watch`) and the log of recent transitions.
//!
//! Writers are the scheduler (check outcomes, passive endpoints' trials), the proxy (passive
//! failures, passive endpoints' successful trials, and the hold of a 429's `Retry-After`
//! answered to a request: [`HealthStore::rate_limited`]) and, in shared mode, coord (results
//! from other replicas). Each write takes the lock for a few microseconds
//! (no I/O, no await under it), updates one endpoint and publishes a new snapshot that shares
//! every other endpoint's `Arc` with the previous one, so a write costs O(endpoints) pointer
//! copies and a read costs one atomic load.
//!
//! Shared mode: a [`Coordination`] attached with [`HealthStore::attach`] is told about every
//! result this replica produces — each check ([`HealthStore::observe_fenced`]) and each passive
//! failure that changed the state — right after the lock is released, so the proxy reports
//! passive failures here and needs no coord code. Results of other replicas come back through
//! [`HealthStore::apply_remote`], which adopts one only if its fencing token is newer than the
//! one the endpoint holds; its event is stamped with the time *this* replica applied it
//! (`source: shared`, `pod_id`: the replica that produced it), while `last_check` keeps the
//! producer's `checked_at`, never re-stamped. Against a result this replica made without a
//! lease (Redis away), tokens cannot order anything, so a remote result is adopted only if it
//! was checked no more than [`UNFENCED_SKEW`] before it: stale cache entries read back when
//! Redis returns do not overwrite fresher local knowledge.
//!
//! Passive endpoints (`check: passive`) start `healthy` with `source: passive` and have no
//! checks: the scheduler moves them from `unhealthy` to `recovering` when their hold time is
//! over ([`HealthStore::allow_trial`]) and the proxy reports a successful trial request
//! ([`HealthStore::passive_success`]); both are recorded and shared like a passive failure.
//!
//! Ejections (outlier detection, [`crate::outlier`]): the proxy's detector says when traffic
//! condemns an endpoint and [`HealthStore::eject`] decides, under the writer lock so that two
//! ejections cannot both pass the check: it refuses (`Withheld`) an ejection that would leave
//! more than `max_ejection_percent` of any model's endpoints out of rotation (drained, not
//! routable, or ejected), counted over the endpoints serving that model, this one included;
//! otherwise the endpoint turns `unhealthy` (reason `outlier`) through the same path as a
//! passive failure, so in shared mode it is written and published like one and every replica
//! holds it until `ejected_until` — bounded on adoption by this replica's own `max_ejection`
//! ([`HealthStore::set_max_ejection`]). The ejecting replica shows it as `source: passive`,
//! the others as `source: shared` with `checked_by` naming the ejecting replica, as for any
//! passive result.
//!
//! Fleet size: every result another replica produced that reaches
//! [`HealthStore::apply_remote`] (adopted or not) names its replica; those seen with a result
//! checked within [`FLEET_MEMORY`] count as live, and [`HealthStore::fleet_size`] (one atomic
//! load) is them plus this one. Outlier detection shares its consecutive budget over them
//! ([`crate::outlier`]). The set is bounded ([`MAX_PEERS`]); a replica that stops publishing
//! drops out after [`FLEET_MEMORY`].
//!
//! Check requests: the proxy cannot reach the scheduler, so a request-path failure that does
//! not change the state by itself (a request dropped after it was sent, a first-byte timeout)
//! asks for a prompt check through [`HealthStore::request_check`]; the endpoint's check task
//! waits on [`HealthStore::check_requested`] next to its timer and decides (rate limit
//! included) whether to check early. A request made while no task waits is kept (one
//! `Notify` permit), so it is not lost between two waits.
//!
//! Following the event log: every event carries `seq`, a number that grows by one per event
//! of this process (from 1; it starts over when the process does), and is also sent on a
//! bounded `broadcast` channel as it is recorded, under the writer lock, so order and numbers
//! agree. [`HealthStore::follow_events`] hands out the log after a given `seq` and a live
//! receiver taken under the same lock, so nothing falls between the two; a receiver that
//! falls more than [`EVENT_STREAM_BUFFER`] events behind is told so by the channel and
//! follows again from the log. Each endpoint also keeps its last checks
//! ([`crate::history`]), published in the snapshot as `checks`.
//!
//! Model lists: the proxy asks for a rediscovery ([`HealthStore::request_discovery`], rate
//! limited per `discovery_interval`, see [`crate::discovery`]) when a request names a model
//! no endpoint serves, and waits for it with its own deadline; when a backend answers a
//! routed request "model not found", [`HealthStore::forget_model`] drops that model from the
//! endpoint's discovered list at once (the next request goes elsewhere) before the
//! rediscovery says what the backend serves now.

use crate::config::HealthConfig;
use crate::coordination::{Coordination, FenceToken, LocalResult, ResultKind, SharedResult};
use crate::discovery::{DiscoveryWait, Rediscovery};
use crate::endpoint::{Endpoint, same_model};
use crate::history::{CheckHistory, CheckSample};
use crate::machine::{HealthMachine, Phase};
use crate::outcome::{CheckOutcome, CheckResult, Verdict};
use crate::outlier::OutlierConfig;
use crate::state::{HealthState, Reason, Transition};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::Instant;

/// How many transitions `/internal/events` keeps.
pub const EVENT_LOG_CAPACITY: usize = 1024;

/// How many events a follower of the log ([`HealthStore::follow_events`]) may fall behind
/// before its receiver reports a lag.
pub const EVENT_STREAM_BUFFER: usize = 256;

/// How much older than this replica's own unfenced result a remote result may be and still be
/// adopted: the clock skew tolerated between replicas.
pub const UNFENCED_SKEW: Duration = Duration::from_secs(1);

/// How long a replica counts towards [`HealthStore::fleet_size`] after the check time of
/// its last result seen here.
pub const FLEET_MEMORY: Duration = Duration::from_secs(60);

/// The most other replicas [`HealthStore::fleet_size`] keeps track of.
pub const MAX_PEERS: usize = 1024;

/// A moment, as both clocks see it: `mono` decides, `wall` is shown to people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    /// Reads both clocks. Core never calls this itself; callers pass the result in.
    pub fn capture() -> Self {
        Self {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Who produced the latest result shown for an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Nothing yet.
    None,
    /// This replica's own check.
    Local,
    /// Another replica's check, received through the shared state.
    Shared,
    /// A failure seen on the request path.
    Passive,
}

/// What the snapshot says of one endpoint's health.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointHealth {
    pub state: HealthState,
    pub phase: Phase,
    pub reason: Option<Reason>,
    pub error: Option<Arc<str>>,
    pub since: SystemTime,
    pub last_check: Option<SystemTime>,
    pub last_latency: Option<Duration>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub checks_total: u64,
    pub checks_ok: u64,
    pub next_check_at: Option<SystemTime>,
    /// Models the backend reported at its last discovery.
    pub discovered: Option<Arc<[Arc<str>]>>,
    pub checked_by: Option<Arc<str>>,
    pub source: Source,
    /// Fencing token of the shared result this came from (0 for local results).
    pub fence: u64,
    pub rate_limited_until: Option<Instant>,
    /// Outlier detection holds it out until then (see [`crate::outlier`]); may lie in the
    /// past until the next passing check clears it.
    pub ejected_until: Option<Instant>,
    /// An operator drained it (`POST /internal/endpoints/{name}/drain`): it is still checked
    /// but gets no new requests until enabled again.
    pub drained: bool,
    /// The last checks of this endpoint (see [`crate::history`]), oldest first.
    pub checks: Arc<CheckHistory>,
}

impl EndpointHealth {
    /// Whether the backend can take requests at `now` by its health alone (state and rate
    /// limit), whether or not it is drained.
    pub fn is_up(&self, now: Instant) -> bool {
        self.state.is_routable() && self.rate_limited_until.is_none_or(|until| now >= until)
    }

    /// Whether traffic may go to the endpoint at `now`: up and not drained.
    pub fn is_routable(&self, now: Instant) -> bool {
        !self.drained && self.is_up(now)
    }

    /// Share of good checks, in percent (100 before any check).
    pub fn uptime_percentage(&self) -> f64 {
        if self.checks_total == 0 {
            100.0
        } else {
            self.checks_ok as f64 * 100.0 / self.checks_total as f64
        }
    }
}

/// One endpoint in a snapshot: its configuration and its health.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    pub endpoint: Arc<Endpoint>,
    pub health: EndpointHealth,
}

impl EndpointStatus {
    /// The models this endpoint is routed for: the static list if configured, else the
    /// discovered one.
    pub fn models(&self) -> Vec<Arc<str>> {
        if !self.endpoint.models.is_empty() {
            return self.endpoint.models.clone();
        }
        self.health
            .discovered
            .as_deref()
            .map(<[Arc<str>]>::to_vec)
            .unwrap_or_default()
    }

    pub fn serves(&self, model: &str) -> bool {
        if !self.endpoint.models.is_empty() {
            return self.endpoint.models.iter().any(|m| same_model(m, model));
        }
        self.health
            .discovered
            .as_deref()
            .is_some_and(|ms| ms.iter().any(|m| same_model(m, model)))
    }
}

/// An immutable view of every endpoint's health at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Bumped on every published change.
    pub version: u64,
    /// In configuration order.
    pub endpoints: Vec<Arc<EndpointStatus>>,
    index: Arc<HashMap<Arc<str>, usize>>,
    /// The first sweep of checks (or the shared state) is in: `/readyz` may say ready.
    pub ready: bool,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&Arc<EndpointStatus>> {
        self.index.get(name).and_then(|&i| self.endpoints.get(i))
    }

    pub fn count(&self, state: HealthState) -> usize {
        self.endpoints
            .iter()
            .filter(|e| e.health.state == state)
            .count()
    }
}

/// A state transition of one endpoint, as listed by `/internal/events`. `pod_id` is the
/// replica whose result caused it (this one, except for `source: shared`); `at` is when this
/// replica recorded it; `seq` numbers the events of this process, from 1 (see the module
/// docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub seq: u64,
    pub endpoint: Arc<str>,
    pub from: HealthState,
    pub to: HealthState,
    pub reason: Option<Reason>,
    pub error: Option<Arc<str>>,
    #[serde(serialize_with = "serialize_rfc3339")]
    pub at: SystemTime,
    pub pod_id: Arc<str>,
    pub source: Source,
}

fn serialize_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

struct Slot {
    endpoint: Arc<Endpoint>,
    machine: HealthMachine,
    since: SystemTime,
    last_check: Option<SystemTime>,
    next_check_at: Option<SystemTime>,
    checked_by: Option<Arc<str>>,
    source: Source,
    fence: u64,
    /// When this replica last recorded a result of its own made without a lease; cleared by
    /// any fenced result.
    unfenced_at: Option<SystemTime>,
    drained: bool,
    checks: Arc<CheckHistory>,
}

impl Slot {
    /// Records that this replica's traffic (not a check) just changed the state: the verdict
    /// is `pod`'s own, `source: passive`, fresher than any fenced result; and, when results
    /// are shared, the passive result to publish.
    fn took_passive(&mut self, pod: Arc<str>, share: bool, now: Now) -> Option<LocalResult> {
        self.checked_by = Some(pod);
        self.source = Source::Passive;
        self.unfenced_at = Some(now.wall);
        share.then(|| LocalResult {
            endpoint: self.endpoint.name.clone(),
            result: SharedResult {
                checked_at: now.wall,
                ..self.shared_result(ResultKind::Passive, FenceToken::LOCAL, now)
            },
            planned_next: self.machine.next_delay(now.mono, 0.5),
            discovery: false,
        })
    }

    /// The slot's health in the form replicas exchange.
    fn shared_result(&self, kind: ResultKind, fence: FenceToken, now: Now) -> SharedResult {
        let m = &self.machine;
        SharedResult {
            state: m.state(),
            phase: m.phase(),
            reason: m.reason().cloned(),
            error: m.error().cloned(),
            latency: m.last_latency(),
            checked_at: self.last_check.unwrap_or(now.wall),
            checked_by: self.checked_by.clone().unwrap_or_else(|| Arc::from("")),
            fence,
            models: m.discovered().cloned(),
            consecutive_failures: m.consecutive_failures(),
            consecutive_successes: m.consecutive_successes(),
            unhealthy_failures: m.unhealthy_failures(),
            rate_limited_until: m
                .rate_limited_until()
                .filter(|until| *until > now.mono)
                .map(|until| now.wall + (until - now.mono)),
            ejected_until: m
                .ejected_until()
                .filter(|until| *until > now.mono)
                .map(|until| now.wall + (until - now.mono)),
            kind,
        }
    }

    fn status(&self) -> Arc<EndpointStatus> {
        let m = &self.machine;
        Arc::new(EndpointStatus {
            endpoint: self.endpoint.clone(),
            health: EndpointHealth {
                state: m.state(),
                phase: m.phase(),
                reason: m.reason().cloned(),
                error: m.error().cloned(),
                since: self.since,
                last_check: self.last_check,
                last_latency: m.last_latency(),
                consecutive_failures: m.consecutive_failures(),
                consecutive_successes: m.consecutive_successes(),
                checks_total: m.checks_total(),
                checks_ok: m.checks_ok(),
                next_check_at: self.next_check_at,
                discovered: m.discovered().cloned(),
                checked_by: self.checked_by.clone(),
                source: self.source,
                fence: self.fence,
                rate_limited_until: m.rate_limited_until(),
                ejected_until: m.ejected_until(),
                drained: self.drained,
                checks: self.checks.clone(),
            },
        })
    }

    /// A new endpoint's slot: `unknown` in its startup phase (or trusted `healthy` when
    /// background checks are off, and for a passive endpoint, shown as `source: passive`).
    fn fresh(endpoint: Arc<Endpoint>, health: &HealthConfig, now: Now) -> Self {
        let passive = endpoint.check.is_passive();
        let machine = if health.background && !passive {
            HealthMachine::new(&endpoint, health)
        } else {
            HealthMachine::trusted(&endpoint, health)
        };
        Slot {
            endpoint,
            machine,
            since: now.wall,
            last_check: None,
            next_check_at: None,
            checked_by: None,
            source: if passive {
                Source::Passive
            } else {
                Source::None
            },
            fence: 0,
            unfenced_at: None,
            drained: false,
            checks: Arc::default(),
        }
    }

    /// Adds a check to the endpoint's recent checks.
    fn record_check(&mut self, sample: CheckSample) {
        Arc::make_mut(&mut self.checks).record(sample);
    }
}

/// Whether `a` and `b` are the same backend, probed the same way: the health a check of one
/// found holds for the other (a switch between `check: active` and `passive` starts over
/// too). Everything else (priority, weight, cadence, timeouts, the
/// static model list, the startup settings) can change without resetting health.
fn same_backend(a: &Endpoint, b: &Endpoint) -> bool {
    a.url == b.url
        && a.kind == b.kind
        && a.health_url == b.health_url
        && a.model_url == b.model_url
        && a.api_key == b.api_key
        && a.check == b.check
}

/// What [`HealthStore::reconcile`] did with a new list of endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Names that were not configured before: they start `unknown`.
    pub added: Vec<Arc<str>>,
    /// Names no longer configured: gone from the snapshot.
    pub removed: Vec<Arc<str>>,
    /// The same backend with new settings: health, counters and drain kept.
    pub updated: Vec<Arc<str>>,
    /// A different backend under a known name (URL, type, health or model URL, or key
    /// changed): it starts over as `unknown`; a drain is kept.
    pub replaced: Vec<Arc<str>>,
    /// How many endpoints were left exactly as they were.
    pub unchanged: usize,
}

impl Reconciled {
    /// Whether the endpoint set changed at all.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.updated.is_empty()
            && self.replaced.is_empty()
    }
}

struct Writer {
    /// `health:` as loaded at start (it is not reloaded), for endpoints added later.
    health: HealthConfig,
    slots: Vec<Slot>,
    index: Arc<HashMap<Arc<str>, usize>>,
    version: u64,
    ready: bool,
    events: VecDeque<Event>,
    /// The `seq` of the next event.
    next_seq: u64,
}

/// Where [`HealthStore::follow_events`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Only events recorded from now on.
    Live,
    /// The events after the one numbered `seq` that the log still holds, then live ones.
    After(u64),
}

/// What [`HealthStore::follow_events`] found in the log for a [`Resume::After`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Every event after the requested one is in the backlog (or it was [`Resume::Live`]).
    None,
    /// Events after the requested one have left the log: `missed` of them are not in the
    /// backlog, which starts with the oldest one held.
    Lost { missed: u64 },
    /// The requested `seq` was never issued by this process (it is from an earlier run, or
    /// made up): the backlog is the whole log.
    Unknown,
}

/// The log after a point, and a receiver of the events recorded after it.
#[derive(Debug)]
pub struct EventFollow {
    pub backlog: Vec<Event>,
    pub gap: Gap,
    /// The `seq` of the newest event recorded before `live` was taken (0 for none): `live`
    /// starts with the one after it.
    pub newest: u64,
    pub live: broadcast::Receiver<Event>,
}

/// The owner of every endpoint's health; see the module docs.
pub struct HealthStore {
    pod_id: Arc<str>,
    writer: Mutex<Writer>,
    snapshot: ArcSwap<Snapshot>,
    changes: watch::Sender<u64>,
    coordination: OnceLock<Arc<dyn Coordination>>,
    /// Per endpoint name, the signal [`HealthStore::request_check`] raises (see the module
    /// docs); made on first use.
    check_requests: Mutex<HashMap<Arc<str>, Arc<Notify>>>,
    /// Per endpoint name, its rediscovery requests (see [`crate::discovery`]); made on first
    /// use, dropped with the endpoint.
    discoveries: Mutex<HashMap<Arc<str>, Arc<Rediscovery>>>,
    /// `health.discovery_interval` (not reloaded, like the rest of `health:`).
    default_discovery: Duration,
    /// The longest ejection adopted from another replica, in ms (`proxy.outlier.max_ejection`).
    max_ejection_ms: AtomicU64,
    /// Other replicas by pod id, with when their last result was checked (see the module
    /// docs), and the fleet size they make.
    peers: Mutex<HashMap<Arc<str>, SystemTime>>,
    fleet: AtomicUsize,
    /// Every event as it is recorded, for [`HealthStore::follow_events`].
    event_feed: broadcast::Sender<Event>,
}

/// What [`HealthStore::eject`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Ejected {
    /// The endpoint is out until the given time; the event records it.
    Now(Event),
    /// Ejecting it would leave too few of `model`'s endpoints: `out` of `total` would be out
    /// of rotation, more than `max_ejection_percent` allows. Nothing changed.
    Withheld {
        model: Arc<str>,
        out: usize,
        total: usize,
    },
    /// It was not routable anyway (or is not configured): nothing changed.
    NotRoutable,
}

/// What [`HealthStore::apply_remote`] did with a result from another replica.
#[derive(Debug, Clone, PartialEq)]
pub enum Adoption {
    /// Adopted; the event if the state changed.
    Adopted(Option<Event>),
    /// Not newer than what the endpoint holds: ignored.
    Stale,
    /// No endpoint of that name is configured here.
    UnknownEndpoint,
}

impl std::fmt::Debug for HealthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthStore")
            .field("pod_id", &self.pod_id)
            .field("version", &self.snapshot.load().version)
            .finish_non_exhaustive()
    }
}

/// What the scheduler needs to run one check.
#[derive(Debug, Clone)]
pub struct CheckPlan {
    pub endpoint: Arc<Endpoint>,
    pub timeout: Duration,
    pub discover: bool,
}

impl HealthStore {
    /// A store for `endpoints`, all `unknown` (or trusted `healthy` when background checks
    /// are off).
    pub fn new(
        pod_id: impl Into<Arc<str>>,
        endpoints: Vec<Endpoint>,
        health: &HealthConfig,
        now: Now,
    ) -> Self {
        let slots: Vec<Slot> = endpoints
            .into_iter()
            .map(|e| Slot::fresh(Arc::new(e), health, now))
            .collect();
        let index = index_of(&slots);
        let writer = Writer {
            health: health.clone(),
            index: index.clone(),
            version: 0,
            ready: !health.background || slots.is_empty(),
            events: VecDeque::with_capacity(64),
            next_seq: 1,
            slots,
        };
        let snapshot = Snapshot {
            version: 0,
            endpoints: writer.slots.iter().map(Slot::status).collect(),
            index,
            ready: writer.ready,
        };
        Self {
            pod_id: pod_id.into(),
            writer: Mutex::new(writer),
            snapshot: ArcSwap::from_pointee(snapshot),
            changes: watch::Sender::new(0),
            coordination: OnceLock::new(),
            check_requests: Mutex::new(HashMap::new()),
            discoveries: Mutex::new(HashMap::new()),
            default_discovery: health.discovery_interval,
            max_ejection_ms: AtomicU64::new(millis_of(OutlierConfig::default().max_ejection)),
            peers: Mutex::new(HashMap::new()),
            fleet: AtomicUsize::new(1),
            event_feed: broadcast::Sender::new(EVENT_STREAM_BUFFER),
        }
    }

    /// The replicas known to be live, this one included (see the module docs); 1 alone.
    pub fn fleet_size(&self) -> usize {
        self.fleet.load(Ordering::Relaxed).max(1)
    }

    /// Notes that `pod` produced a result checked at `checked_at`, as of `now`.
    fn saw_peer(&self, pod: &Arc<str>, checked_at: SystemTime, now: SystemTime) {
        if pod.is_empty() || **pod == *self.pod_id {
            return;
        }
        let fresh = |at: SystemTime| {
            now.duration_since(at)
                .map_or(true, |age| age < FLEET_MEMORY)
        };
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.retain(|_, at| fresh(*at));
        if fresh(checked_at) && (peers.len() < MAX_PEERS || peers.contains_key(pod)) {
            let at = peers.entry(pod.clone()).or_insert(checked_at);
            *at = (*at).max(checked_at);
        }
        self.fleet.store(peers.len() + 1, Ordering::Relaxed);
    }

    /// The longest ejection this replica holds when another replica's result says one:
    /// its own `proxy.outlier.max_ejection`.
    pub fn set_max_ejection(&self, max: Duration) {
        self.max_ejection_ms
            .store(millis_of(max), Ordering::Relaxed);
    }

    fn max_ejection(&self) -> Duration {
        Duration::from_millis(self.max_ejection_ms.load(Ordering::Relaxed))
    }

    /// Ejects `name` for `length` from `now` (outlier detection), with `error` naming the
    /// signal, unless that would leave more than `max_percent` of one of its models'
    /// endpoints out of rotation (see the module docs). An ejection is told to the attached
    /// coordination as a passive result.
    pub fn eject(
        &self,
        name: &str,
        length: Duration,
        error: &str,
        max_percent: u32,
        now: Now,
    ) -> Ejected {
        let pod = self.pod_id.clone();
        let share = self.coordination.get().is_some();
        let mut w = self.lock();
        let Some(&i) = w.index.get(name) else {
            return Ejected::NotRoutable;
        };
        let Some(slot) = w.slots.get(i) else {
            return Ejected::NotRoutable;
        };
        if !slot.machine.state().is_routable() {
            return Ejected::NotRoutable;
        }
        if let Some(withheld) = too_many_out(&w.slots, i, max_percent, now.mono) {
            return withheld;
        }
        let Some(slot) = w.slots.get_mut(i) else {
            return Ejected::NotRoutable;
        };
        let until = now.mono + crate::config::clock_safe(length);
        let Some(t) = slot.machine.eject(until, Arc::from(error)) else {
            return Ejected::NotRoutable;
        };
        let local = slot.took_passive(pod, share, now);
        let event = self.commit(&mut w, i, now.wall, Some((t, Source::Passive)));
        drop(w);
        self.forward(local);
        match event {
            Some(e) => Ejected::Now(e),
            None => Ejected::NotRoutable,
        }
    }

    /// Asks for a prompt check of `name` (see the module docs); nothing for an unknown name.
    pub fn request_check(&self, name: &str) {
        if let Some(signal) = self.check_signal(name) {
            signal.notify_one();
        }
    }

    /// The signal the check task of `name` waits on for [`HealthStore::request_check`];
    /// `None` for an unknown name.
    pub fn check_requested(&self, name: &str) -> Option<Arc<Notify>> {
        self.check_signal(name)
    }

    fn check_signal(&self, name: &str) -> Option<Arc<Notify>> {
        let entry = self
            .snapshot
            .load()
            .get(name)
            .map(|e| e.endpoint.name.clone())?;
        let mut signals = self
            .check_requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(signals.entry(entry).or_default().clone())
    }

    /// `name`'s `discovery_interval` (its own, else `health.discovery_interval`); `None` for
    /// an unknown name.
    pub fn discovery_interval(&self, name: &str) -> Option<Duration> {
        self.snapshot().get(name).map(|e| {
            e.endpoint
                .discovery_interval
                .unwrap_or(self.default_discovery)
        })
    }

    /// Asks `name`'s check task to re-read its model list now (see [`crate::discovery`]):
    /// what to wait for, or `None` when there is nothing to wait for (one ran within its
    /// `discovery_interval`, the endpoint has a static list or no model URL, or no such
    /// endpoint).
    pub fn request_discovery(&self, name: &str, now: Instant) -> Option<DiscoveryWait> {
        let (interval, signal) = self.discovery_signal(name)?;
        signal.request(interval, now)
    }

    /// The rediscovery requests of `name` that its check task serves; `None` for an unknown
    /// name or one whose models are not discovered.
    pub fn discovery_requests(&self, name: &str) -> Option<Arc<Rediscovery>> {
        self.discovery_signal(name).map(|(_, signal)| signal)
    }

    fn discovery_signal(&self, name: &str) -> Option<(Duration, Arc<Rediscovery>)> {
        let (key, interval) = {
            let snapshot = self.snapshot.load();
            let e = &snapshot.get(name)?.endpoint;
            if !e.discovers() {
                return None;
            }
            (
                e.name.clone(),
                e.discovery_interval.unwrap_or(self.default_discovery),
            )
        };
        let mut signals = self
            .discoveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some((interval, signals.entry(key).or_default().clone()))
    }

    /// A backend answered a request for `model` "model not found": `name` is no longer routed
    /// for it until a discovery lists it again. Only discovered lists change (a static list
    /// is the operator's; its checks report `model_missing`). Local to this replica, like the
    /// rediscovery that follows. Returns whether the list changed.
    pub fn forget_model(&self, name: &str, model: &str, now: Now) -> bool {
        self.with_slot(name, now.wall, |slot| {
            if !slot.endpoint.models.is_empty() {
                return None;
            }
            slot.machine.forget_model(model).then_some(((), None))
        })
        .is_some()
    }

    /// The attached coordination, if any (the proxy shares response ids through it).
    pub fn coordination(&self) -> Option<&Arc<dyn Coordination>> {
        self.coordination.get()
    }

    /// Attaches the coordination that is told about every local result from now on. Only the
    /// first call takes effect; returns whether this one did.
    pub fn attach(&self, coordination: Arc<dyn Coordination>) -> bool {
        self.coordination.set(coordination).is_ok()
    }

    pub fn pod_id(&self) -> &Arc<str> {
        &self.pod_id
    }

    /// The current snapshot: one atomic load, never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A receiver that wakes on every published change (its value is the snapshot version).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The recent transitions, oldest first.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().cloned().collect()
    }

    /// The log from `from` on and a receiver of every event recorded after it, taken under one
    /// lock so that nothing is missed or repeated between the two (see [`Gap`]).
    pub fn follow_events(&self, from: Resume) -> EventFollow {
        let w = self.lock();
        let live = self.event_feed.subscribe();
        let newest = w.next_seq.saturating_sub(1);
        let after = match from {
            Resume::Live => {
                return EventFollow {
                    backlog: Vec::new(),
                    gap: Gap::None,
                    newest,
                    live,
                };
            }
            Resume::After(seq) => seq,
        };
        let oldest = w.events.front().map_or(w.next_seq, |e| e.seq);
        let (gap, skip) = if after > newest {
            (Gap::Unknown, 0)
        } else if after.saturating_add(1) < oldest {
            (
                Gap::Lost {
                    missed: oldest - after - 1,
                },
                0,
            )
        } else {
            (Gap::None, after.saturating_add(1) - oldest)
        };
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        EventFollow {
            backlog: w.events.iter().skip(skip).cloned().collect(),
            gap,
            newest,
            live,
        }
    }

    /// How many followers ([`HealthStore::follow_events`]) are live now.
    pub fn event_followers(&self) -> usize {
        self.event_feed.receiver_count()
    }

    /// The names of all endpoints, in configuration order.
    pub fn endpoint_names(&self) -> Vec<Arc<str>> {
        self.snapshot()
            .endpoints
            .iter()
            .map(|e| e.endpoint.name.clone())
            .collect()
    }

    /// What the next check of `name` needs, or `None` if there is no such endpoint.
    pub fn plan(&self, name: &str) -> Option<CheckPlan> {
        let w = self.lock();
        let slot = w.index.get(name).and_then(|&i| w.slots.get(i))?;
        Some(CheckPlan {
            endpoint: slot.endpoint.clone(),
            timeout: slot.machine.check_timeout(),
            discover: slot.machine.discovery_due(),
        })
    }

    /// The wait before the first check of `name`.
    pub fn first_delay(&self, name: &str) -> Option<Duration> {
        let w = self.lock();
        w.index
            .get(name)
            .and_then(|&i| w.slots.get(i))
            .map(|s| s.machine.first_delay())
    }

    /// The wait the state machine plans after `name`'s current state, without jitter and
    /// without recording it: what this replica's own config would wait (interval, startup
    /// period, backoff or Retry-After). Shared coordination bounds what Redis tells it by this.
    pub fn planned_delay(&self, name: &str, now: Instant) -> Option<Duration> {
        let w = self.lock();
        w.index
            .get(name)
            .and_then(|&i| w.slots.get(i))
            .map(|s| s.machine.next_delay(now, 0.5))
    }

    /// Computes and records when `name` is next checked; `u` ∈ [0, 1) is the jitter sample.
    pub fn schedule_next(&self, name: &str, now: Now, u: f64) -> Option<Duration> {
        self.with_slot(name, now.wall, |slot| {
            let delay = slot.machine.next_delay(now.mono, u);
            slot.next_check_at = Some(now.wall + crate::config::clock_safe(delay));
            Some((delay, None))
        })
        .map(|(delay, _)| delay)
    }

    /// Records when `name` will next be looked at, when the coordination (not the state
    /// machine) decided the wait.
    pub fn note_next_check(&self, name: &str, at: SystemTime) {
        let mut w = self.lock();
        let Some(&i) = w.index.get(name) else {
            return;
        };
        let Some(slot) = w.slots.get_mut(i) else {
            return;
        };
        if slot.next_check_at == Some(at) {
            return;
        }
        slot.next_check_at = Some(at);
        let status = slot.status();
        self.publish_one(&mut w, i, status);
    }

    /// Folds a check this replica ran without a lease into `name`'s state. Returns the event
    /// if it changed.
    pub fn observe(&self, name: &str, outcome: &CheckOutcome, now: Now) -> Option<Event> {
        self.observe_fenced(name, outcome, now, FenceToken::LOCAL)
    }

    /// Folds a check this replica ran under `fence` into `name`'s state and tells the attached
    /// coordination. Returns the event if the state changed.
    pub fn observe_fenced(
        &self,
        name: &str,
        outcome: &CheckOutcome,
        now: Now,
        fence: FenceToken,
    ) -> Option<Event> {
        self.observe_as(name, outcome, now, fence, false)
    }

    /// Folds a check this replica ran without a lease to re-read `name`'s models (the request
    /// path asked) and tells the attached coordination it is a discovery, which the fleet
    /// adopts (see [`LocalResult::discovery`]). Returns the event if the state changed.
    pub fn observe_discovery(&self, name: &str, outcome: &CheckOutcome, now: Now) -> Option<Event> {
        self.observe_as(name, outcome, now, FenceToken::LOCAL, true)
    }

    fn observe_as(
        &self,
        name: &str,
        outcome: &CheckOutcome,
        now: Now,
        fence: FenceToken,
        discovery: bool,
    ) -> Option<Event> {
        let pod = self.pod_id.clone();
        let share = self.coordination.get().is_some();
        let ok = outcome.result.verdict() == Verdict::Pass;
        let (local, event) = self.with_slot(name, now.wall, |slot| {
            let t = slot.machine.observe(outcome, now.mono);
            slot.record_check(CheckSample {
                at: now.wall,
                latency: Some(outcome.latency),
                ok,
            });
            slot.last_check = Some(now.wall);
            slot.checked_by = Some(pod);
            slot.source = Source::Local;
            slot.fence = fence.get();
            slot.unfenced_at = fence.is_local().then_some(now.wall);
            let local = share.then(|| LocalResult {
                endpoint: slot.endpoint.name.clone(),
                result: slot.shared_result(ResultKind::Check { ok }, fence, now),
                planned_next: slot.machine.next_delay(now.mono, 0.5),
                discovery,
            });
            Some((local, t.map(|t| (t, Source::Local))))
        })?;
        self.forward(local);
        event
    }

    /// A connection failure on the request path: `name` turns unhealthy at once if it was
    /// routable, and the attached coordination is told. Returns the event if it changed.
    pub fn passive_failure(&self, name: &str, result: &CheckResult, now: Now) -> Option<Event> {
        self.traffic_step(name, now, false, |m| m.passive_failure(result))
    }

    /// A 429 answered to a request (not a probe): `name` is not routable until its
    /// `Retry-After` has passed (bounded by `max_backoff`; one check interval when the answer
    /// named none), without counting a failure or changing the state. Local to this replica.
    /// Returns whether the hold changed (a longer one already held is kept).
    pub fn rate_limited(&self, name: &str, retry_after: Option<Duration>, now: Now) -> bool {
        self.with_slot(name, now.wall, |slot| {
            slot.machine
                .rate_limited_by_request(retry_after, now.mono)
                .then_some(((), None))
        })
        .is_some()
    }

    /// A passive endpoint's hold time is over (the scheduler says so): `unhealthy` →
    /// `recovering`, one trial request at a time. Shared like a passive failure. Returns the
    /// event if it changed; nothing for an active endpoint or another state.
    pub fn allow_trial(&self, name: &str, now: Now) -> Option<Event> {
        self.traffic_step(name, now, true, |m| m.allow_trial(now.mono))
    }

    /// A request to a `recovering` passive endpoint succeeded (the proxy says so);
    /// `healthy_threshold` of them make it `healthy`. Shared like a passive failure once it
    /// changes the state. Returns the event if it changed; nothing for an active endpoint
    /// (its checks decide) or another state.
    pub fn passive_success(&self, name: &str, now: Now) -> Option<Event> {
        self.traffic_step(name, now, true, |m| m.passive_success())
    }

    /// Applies `step`, something traffic told about `name` (only for `check: passive`
    /// endpoints when `passive_only`), to its machine; records and shares it as a passive
    /// result when it changed the state.
    fn traffic_step(
        &self,
        name: &str,
        now: Now,
        passive_only: bool,
        step: impl FnOnce(&mut HealthMachine) -> Option<Transition>,
    ) -> Option<Event> {
        let pod = self.pod_id.clone();
        let share = self.coordination.get().is_some();
        let (local, event) = self.with_slot(name, now.wall, |slot| {
            if passive_only && !slot.endpoint.check.is_passive() {
                return None;
            }
            let t = step(&mut slot.machine)?;
            let local = slot.took_passive(pod, share, now);
            Some((local, Some((t, Source::Passive))))
        })?;
        self.forward(local);
        event
    }

    /// Applies a result another replica produced, if its fence is newer than the one `name`
    /// holds (see the module docs). `now` is when this replica applies it.
    pub fn apply_remote(&self, name: &str, result: &SharedResult, now: Now) -> Adoption {
        let own = result.checked_by.as_ref() == &*self.pod_id;
        let max_ejection = self.max_ejection();
        self.saw_peer(&result.checked_by, result.checked_at, now.wall);
        let applied = self.with_slot(name, now.wall, |slot| {
            if result.fence.get() <= slot.fence {
                return None;
            }
            if let Some(local) = slot.unfenced_at
                && result.checked_at + UNFENCED_SKEW < local
            {
                return None;
            }
            let t = slot
                .machine
                .adopt_bounded(result, now.mono, now.wall, max_ejection);
            slot.fence = result.fence.get();
            slot.unfenced_at = None;
            if let ResultKind::Check { ok } = result.kind {
                slot.record_check(CheckSample {
                    at: result.checked_at,
                    latency: result.latency,
                    ok,
                });
            }
            slot.last_check = Some(result.checked_at);
            slot.checked_by = Some(result.checked_by.clone());
            // Our own passive failure (or rediscovery) coming back through Redis keeps its
            // name.
            let source = match (own, result.kind) {
                (true, ResultKind::Passive) => Source::Passive,
                (true, _) => Source::Local,
                (false, _) => Source::Shared,
            };
            slot.source = source;
            Some(((), t.map(|t| (t, source))))
        });
        match applied {
            Some(((), event)) => Adoption::Adopted(event),
            None if self.snapshot().get(name).is_none() => Adoption::UnknownEndpoint,
            None => Adoption::Stale,
        }
    }

    /// The fence `name` holds (0 for none, or a local result).
    pub fn fence(&self, name: &str) -> Option<FenceToken> {
        self.snapshot()
            .get(name)
            .map(|e| FenceToken(e.health.fence))
    }

    /// Marks the store ready (the first sweep is in). Idempotent.
    pub fn mark_ready(&self) {
        let mut w = self.lock();
        if !w.ready {
            w.ready = true;
            self.publish(&mut w);
        }
    }

    /// Sets whether `name` is drained (no new requests; checks go on). Returns whether it was
    /// drained before, or `None` if there is no such endpoint.
    pub fn set_drained(&self, name: &str, drained: bool) -> Option<bool> {
        let mut w = self.lock();
        let i = *w.index.get(name)?;
        let slot = w.slots.get_mut(i)?;
        let before = std::mem::replace(&mut slot.drained, drained);
        if before != drained {
            let status = slot.status();
            self.publish_one(&mut w, i, status);
        }
        Some(before)
    }

    /// Replaces the configured endpoints with `endpoints` (a reloaded config), in their new
    /// order, keeping what is known of the ones that stay: an unchanged endpoint keeps its
    /// very entry (same `Arc`s), one with new settings for the same backend keeps its health,
    /// a different backend under an old name starts over, new names start `unknown`, and
    /// removed names leave the snapshot. The attached coordination is told the new set. The
    /// event log keeps its history; readiness, once reached, stays.
    pub fn reconcile(&self, endpoints: Vec<Endpoint>, now: Now) -> Reconciled {
        let mut report = Reconciled::default();
        let current: Vec<Arc<Endpoint>> = {
            let mut w = self.lock();
            let mut old: HashMap<Arc<str>, Slot> = w
                .slots
                .drain(..)
                .map(|s| (s.endpoint.name.clone(), s))
                .collect();
            let shown = self.snapshot.load_full();
            let mut slots = Vec::with_capacity(endpoints.len());
            let mut statuses = Vec::with_capacity(endpoints.len());
            for e in endpoints {
                let slot = match old.remove(&e.name) {
                    Some(slot) if *slot.endpoint == e => {
                        report.unchanged += 1;
                        // Its snapshot entry is shared too, as after any write.
                        statuses.push(shown.get(&e.name).cloned());
                        slots.push(slot);
                        continue;
                    }
                    Some(mut slot) if same_backend(&slot.endpoint, &e) => {
                        report.updated.push(e.name.clone());
                        slot.machine.reconfigure(&e);
                        slot.endpoint = Arc::new(e);
                        slot
                    }
                    Some(slot) => {
                        report.replaced.push(e.name.clone());
                        let mut fresh = Slot::fresh(Arc::new(e), &w.health, now);
                        fresh.drained = slot.drained;
                        fresh
                    }
                    None => {
                        report.added.push(e.name.clone());
                        Slot::fresh(Arc::new(e), &w.health, now)
                    }
                };
                statuses.push(None);
                slots.push(slot);
            }
            report.removed = old.into_keys().collect();
            report.removed.sort();
            w.index = index_of(&slots);
            // A removed endpoint's check-request signal goes with it (its task has ended), so
            // years of reloads with changing names keep the map at the configured size.
            let index = w.index.clone();
            self.check_requests
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|name, _| index.contains_key(name));
            self.discoveries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|name, _| index.contains_key(name));
            if slots.is_empty() {
                w.ready = true;
            }
            let endpoints = slots
                .iter()
                .zip(statuses)
                .map(|(slot, shown)| shown.unwrap_or_else(|| slot.status()))
                .collect();
            w.slots = slots;
            self.publish_endpoints(&mut w, endpoints);
            w.slots.iter().map(|s| s.endpoint.clone()).collect()
        };
        if let Some(c) = self.coordination.get() {
            c.endpoints_changed(&current);
        }
        report
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic under this lock cannot leave a slot half-written in a way that matters more
        // than losing health checking altogether, so poisoning is ignored.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the slot of `name`; if it reports a change (`Some`), records the transition
    /// it returns as an event at `at`, republishes, and returns what `f` returned plus the
    /// event. `None` when there is no such endpoint or `f` changed nothing.
    fn with_slot<R>(
        &self,
        name: &str,
        at: SystemTime,
        f: impl FnOnce(&mut Slot) -> Option<(R, Option<(Transition, Source)>)>,
    ) -> Option<(R, Option<Event>)> {
        let mut w = self.lock();
        let i = *w.index.get(name)?;
        let slot = w.slots.get_mut(i)?;
        let (r, t) = f(slot)?;
        let event = self.commit(&mut w, i, at, t);
        Some((r, event))
    }

    /// After slot `i` changed: records transition `t` (if any) as an event at `at` and
    /// republishes; returns the event.
    fn commit(
        &self,
        w: &mut Writer,
        i: usize,
        at: SystemTime,
        t: Option<(Transition, Source)>,
    ) -> Option<Event> {
        let slot = w.slots.get_mut(i)?;
        let event = t.map(|(t, source)| {
            slot.since = at;
            let pod_id = match (source, &slot.checked_by) {
                (Source::Shared, Some(by)) => by.clone(),
                _ => self.pod_id.clone(),
            };
            Event {
                seq: 0,
                endpoint: slot.endpoint.name.clone(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                error: slot.machine.error().cloned(),
                at,
                pod_id,
                source,
            }
        });
        let status = slot.status();
        let event = event.map(|mut e| {
            e.seq = w.next_seq;
            w.next_seq = w.next_seq.saturating_add(1);
            if w.events.len() == EVENT_LOG_CAPACITY {
                w.events.pop_front();
            }
            w.events.push_back(e.clone());
            e
        });
        self.publish_one(w, i, status);
        if let Some(e) = &event {
            // Sent after the snapshot that shows it, so a follower that reads the status on
            // an event sees the new state. No follower is no error: the log keeps the event.
            let _ = self.event_feed.send(e.clone());
        }
        event
    }

    /// Hands a local result to the attached coordination, outside the writer lock.
    fn forward(&self, local: Option<LocalResult>) {
        if let (Some(local), Some(c)) = (local, self.coordination.get()) {
            c.publish(local);
        }
    }

    fn publish_one(&self, w: &mut Writer, i: usize, status: Arc<EndpointStatus>) {
        let current = self.snapshot.load();
        let mut endpoints = current.endpoints.clone();
        if let Some(e) = endpoints.get_mut(i) {
            *e = status;
        }
        self.publish_endpoints(w, endpoints);
    }

    fn publish(&self, w: &mut Writer) {
        let endpoints = w.slots.iter().map(Slot::status).collect();
        self.publish_endpoints(w, endpoints);
    }

    /// Publishes `endpoints` (the entries of `w.slots`, in order) as the next snapshot.
    fn publish_endpoints(&self, w: &mut Writer, endpoints: Vec<Arc<EndpointStatus>>) {
        w.version += 1;
        self.snapshot.store(Arc::new(Snapshot {
            version: w.version,
            endpoints,
            index: w.index.clone(),
            ready: w.ready,
        }));
        self.changes.send_replace(w.version);
    }
}

/// Whether ejecting slot `i` would leave more than `max_percent` of one of its models'
/// endpoints out of rotation at `now` (see the module docs); the refusal if so. An endpoint
/// that lists no model protects no pool and may go.
fn too_many_out(slots: &[Slot], i: usize, max_percent: u32, now: Instant) -> Option<Ejected> {
    let me = slots.get(i)?;
    let models: Vec<Arc<str>> = if me.endpoint.models.is_empty() {
        me.machine
            .discovered()
            .map(|ms| ms.to_vec())
            .unwrap_or_default()
    } else {
        me.endpoint.models.clone()
    };
    for model in models {
        let serving = slots.iter().enumerate().filter(|(_, s)| serves(s, &model));
        let (mut total, mut out) = (0usize, 0usize);
        for (j, s) in serving {
            total += 1;
            if j == i || s.drained || !s.machine.is_routable(now) || s.machine.is_ejected(now) {
                out += 1;
            }
        }
        if out.saturating_mul(100) > total.saturating_mul(max_percent as usize) {
            return Some(Ejected::Withheld { model, out, total });
        }
    }
    None
}

fn serves(slot: &Slot, model: &str) -> bool {
    if !slot.endpoint.models.is_empty() {
        return slot.endpoint.models.iter().any(|m| same_model(m, model));
    }
    slot.machine
        .discovered()
        .is_some_and(|ms| ms.iter().any(|m| same_model(m, model)))
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Position of every endpoint by name.
fn index_of(slots: &[Slot]) -> Arc<HashMap<Arc<str>, usize>> {
    Arc::new(
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.endpoint.name.clone(), i))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{EndpointConfig, EndpointKind};

    fn store() -> HealthStore {
        let eps = ["a", "b"]
            .iter()
            .map(|n| {
                let mut c = EndpointConfig::new(*n, "http://127.0.0.1:9", EndpointKind::Vllm);
                c.models = vec!["m1".into()];
                c.resolve("e").unwrap()
            })
            .collect();
        let health = HealthConfig {
            unhealthy_threshold: 1,
            jitter: 0.0,
            ..Default::default()
        };
        HealthStore::new("pod-1", eps, &health, Now::capture())
    }

    #[tokio::test]
    async fn publishes_changes_and_events() {
        let s = store();
        let mut rx = s.subscribe();
        let before = s.snapshot();
        let e = s
            .observe(
                "a",
                &CheckOutcome::ok(Duration::from_millis(3)),
                Now::capture(),
            )
            .unwrap();
        assert_eq!((e.from, e.to), (HealthState::Unknown, HealthState::Healthy));
        assert_eq!(&*e.pod_id, "pod-1");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        let after = s.snapshot();
        assert!(after.version > before.version);
        assert_eq!(after.get("a").unwrap().health.state, HealthState::Healthy);
        assert_eq!(after.get("a").unwrap().health.source, Source::Local);
        // The endpoint that did not change is shared, not copied.
        assert!(Arc::ptr_eq(&before.endpoints[1], &after.endpoints[1]));
        // The old snapshot is untouched: readers holding it see a consistent view.
        assert_eq!(before.get("a").unwrap().health.state, HealthState::Unknown);

        let e = s
            .passive_failure("a", &CheckResult::ConnectRefused, Now::capture())
            .unwrap();
        assert_eq!(e.to, HealthState::Unhealthy);
        assert_eq!(e.source, Source::Passive);
        assert_eq!(s.events().len(), 2);
        assert!(
            s.observe("nope", &CheckOutcome::ok(Duration::ZERO), Now::capture())
                .is_none()
        );
    }

    #[tokio::test]
    async fn ready_and_routing_helpers() {
        let s = store();
        assert!(!s.snapshot().ready);
        s.mark_ready();
        assert!(s.snapshot().ready);
        let snap = s.snapshot();
        let a = snap.get("a").unwrap();
        assert!(a.serves("m1") && !a.serves("m2"));
        assert_eq!(a.health.uptime_percentage(), 100.0);
        let plan = s.plan("a").unwrap();
        assert!(plan.discover);
        let d = s.schedule_next("a", Now::capture(), 0.5).unwrap();
        assert_eq!(d, Duration::from_secs(2), "startup period");
        assert!(
            s.snapshot()
                .get("a")
                .unwrap()
                .health
                .next_check_at
                .is_some()
        );
    }

    /// Records what the store forwards.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<LocalResult>>);

    impl Coordination for Recorder {
        fn may_check<'a>(
            &'a self,
            _endpoint: &'a str,
        ) -> crate::coordination::BoxFuture<'a, crate::Decision> {
            Box::pin(std::future::ready(crate::Decision::Check {
                fence: FenceToken::LOCAL,
            }))
        }
        fn publish(&self, result: LocalResult) {
            self.0.lock().unwrap().push(result);
        }
    }

    fn store_with(unhealthy_threshold: u32) -> HealthStore {
        let eps = ["a", "b"]
            .iter()
            .map(|n| {
                let mut c = EndpointConfig::new(*n, "http://127.0.0.1:9", EndpointKind::Vllm);
                c.check_interval = Duration::from_secs(1);
                c.check_timeout = Duration::from_millis(500);
                c.startup.period = Duration::from_secs(1);
                c.startup.timeout = Duration::from_millis(500);
                c.resolve("e").unwrap()
            })
            .collect();
        let health = HealthConfig {
            unhealthy_threshold,
            jitter: 0.0,
            max_backoff: Duration::from_secs(60),
            ..Default::default()
        };
        HealthStore::new("pod-1", eps, &health, Now::capture())
    }

    fn remote(fence: u64, state: HealthState, checked_at: SystemTime) -> SharedResult {
        SharedResult {
            state,
            phase: Phase::Running,
            reason: (state == HealthState::Unhealthy).then_some(Reason::Http(503)),
            error: None,
            latency: Some(Duration::from_millis(4)),
            checked_at,
            checked_by: Arc::from("pod-2"),
            fence: FenceToken(fence),
            models: Some(Arc::from(vec![Arc::<str>::from("m9")])),
            consecutive_failures: u32::from(state == HealthState::Unhealthy),
            consecutive_successes: u32::from(state != HealthState::Unhealthy),
            unhealthy_failures: u32::from(state == HealthState::Unhealthy),
            rate_limited_until: None,
            ejected_until: None,
            kind: ResultKind::Check {
                ok: state != HealthState::Unhealthy,
            },
        }
    }

    fn fail() -> CheckOutcome {
        CheckOutcome::failed(
            Duration::from_millis(2),
            CheckResult::Http {
                status: 503,
                retry_after: None,
                message: String::new(),
            },
        )
    }

    #[tokio::test]
    async fn local_results_are_forwarded_to_the_coordination() {
        let s = store_with(3);
        let rec = Arc::new(Recorder::default());
        assert!(s.attach(rec.clone()));
        assert!(!s.attach(Arc::new(Recorder::default())), "only once");

        s.observe_fenced(
            "a",
            &CheckOutcome::ok(Duration::from_millis(3)),
            Now::capture(),
            FenceToken(41),
        );
        s.observe_fenced("a", &fail(), Now::capture(), FenceToken(42));
        // A passive failure that changes nothing is not forwarded; one that does is.
        s.passive_failure("b", &CheckResult::ConnectRefused, Now::capture());
        s.observe("b", &CheckOutcome::ok(Duration::ZERO), Now::capture());
        s.passive_failure("b", &CheckResult::ConnectRefused, Now::capture());

        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 4, "{got:#?}");
        assert_eq!(&*got[0].endpoint, "a");
        assert_eq!(got[0].result.fence, FenceToken(41));
        assert_eq!(got[0].result.kind, ResultKind::Check { ok: true });
        assert_eq!(got[0].result.state, HealthState::Healthy);
        assert_eq!(got[0].planned_next, Duration::from_secs(1));
        assert_eq!(got[1].result.kind, ResultKind::Check { ok: false });
        assert_eq!(got[1].result.consecutive_failures, 1);
        assert_eq!(got[1].result.state, HealthState::Healthy, "threshold 3");
        assert_eq!(got[2].result.fence, FenceToken::LOCAL);
        assert_eq!(got[3].result.kind, ResultKind::Passive);
        assert_eq!(got[3].result.state, HealthState::Unhealthy);
        assert_eq!(&*got[3].result.checked_by, "pod-1");
        assert_eq!(s.fence("a"), Some(FenceToken(42)));
    }

    #[tokio::test]
    async fn remote_results_are_adopted_only_when_newer() {
        let s = store_with(3);
        let checked_at = SystemTime::now() - Duration::from_millis(700);
        let applied_at = Now::capture();
        let Adoption::Adopted(Some(e)) = s.apply_remote(
            "a",
            &remote(10, HealthState::Healthy, checked_at),
            applied_at,
        ) else {
            panic!("expected an adoption with an event");
        };
        assert_eq!((e.from, e.to), (HealthState::Unknown, HealthState::Healthy));
        assert_eq!(e.source, Source::Shared);
        assert_eq!(&*e.pod_id, "pod-2", "the replica that produced it");
        assert_eq!(e.at, applied_at.wall, "stamped when applied here");
        let h = s.snapshot().get("a").unwrap().health.clone();
        assert_eq!(h.last_check, Some(checked_at), "never re-stamped");
        assert_eq!(h.fence, 10);
        assert_eq!(h.source, Source::Shared);
        assert_eq!(h.checked_by.as_deref(), Some("pod-2"));
        assert_eq!(h.discovered.as_deref().map(<[_]>::len), Some(1));
        assert_eq!(h.checks_total, 1);

        // Equal and older fences are ignored, whatever they say.
        for fence in [10, 9, 1] {
            assert_eq!(
                s.apply_remote(
                    "a",
                    &remote(fence, HealthState::Unhealthy, SystemTime::now()),
                    Now::capture()
                ),
                Adoption::Stale
            );
        }
        assert_eq!(
            s.snapshot().get("a").unwrap().health.state,
            HealthState::Healthy
        );
        assert_eq!(
            s.apply_remote(
                "zz",
                &remote(99, HealthState::Healthy, checked_at),
                Now::capture()
            ),
            Adoption::UnknownEndpoint
        );
        // A newer one that does not change the state is adopted without an event.
        assert_eq!(
            s.apply_remote(
                "a",
                &remote(11, HealthState::Healthy, SystemTime::now()),
                Now::capture()
            ),
            Adoption::Adopted(None)
        );
        assert_eq!(s.events().len(), 1);
    }

    #[tokio::test]
    async fn the_fleet_counts_failures_together() {
        let s = store_with(3);
        s.observe("a", &CheckOutcome::ok(Duration::ZERO), Now::capture());
        // Two failures seen by another replica...
        let mut r = remote(5, HealthState::Healthy, SystemTime::now());
        r.consecutive_failures = 2;
        r.consecutive_successes = 0;
        r.reason = Some(Reason::Http(503));
        r.kind = ResultKind::Check { ok: false };
        assert!(matches!(
            s.apply_remote("a", &r, Now::capture()),
            Adoption::Adopted(None)
        ));
        // ...and the third one here crosses the threshold.
        let e = s
            .observe_fenced("a", &fail(), Now::capture(), FenceToken(6))
            .unwrap();
        assert_eq!(e.to, HealthState::Unhealthy);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_continues_from_adopted_counters() {
        let s = store_with(1);
        let mut r = remote(7, HealthState::Unhealthy, SystemTime::now());
        r.unhealthy_failures = 3;
        r.consecutive_failures = 5;
        s.apply_remote("a", &r, Now::capture());
        let wait = s.schedule_next("a", Now::capture(), 0.5).unwrap();
        assert_eq!(wait, Duration::from_secs(4), "the 4th failure waits 4x");
        // One more failure here continues the schedule: 8x.
        s.observe_fenced("a", &fail(), Now::capture(), FenceToken(8));
        let wait = s.schedule_next("a", Now::capture(), 0.5).unwrap();
        assert_eq!(wait, Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_rate_limit_holds_until_its_time() {
        let s = store_with(1);
        let now = Now::capture();
        let mut r = remote(3, HealthState::Healthy, now.wall);
        r.rate_limited_until = Some(now.wall + Duration::from_secs(5));
        r.reason = Some(Reason::RateLimited);
        s.apply_remote("a", &r, now);
        let h = s.snapshot().get("a").unwrap().health.clone();
        assert!(!h.is_routable(Instant::now()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(h.is_routable(Instant::now()));
    }

    #[tokio::test]
    async fn stale_cache_does_not_override_a_fresher_unfenced_local_check() {
        let s = store_with(1);
        // Redis was away: this replica checked locally (fence 0) and saw a failure.
        s.observe("a", &fail(), Now::capture());
        let h = s.snapshot().get("a").unwrap().health.clone();
        assert_eq!(h.state, HealthState::Unknown, "startup tolerates failures");
        // Redis is back with a result written long before that check: ignored.
        let old = SystemTime::now() - Duration::from_secs(30);
        assert_eq!(
            s.apply_remote("a", &remote(900, HealthState::Healthy, old), Now::capture()),
            Adoption::Stale
        );
        // A result checked after it (within the skew allowance) is adopted.
        let recent = SystemTime::now() - Duration::from_millis(200);
        assert!(matches!(
            s.apply_remote(
                "a",
                &remote(901, HealthState::Healthy, recent),
                Now::capture()
            ),
            Adoption::Adopted(Some(_))
        ));
    }

    #[tokio::test]
    async fn own_passive_failure_echo_keeps_its_source() {
        let s = store_with(1);
        s.observe("a", &CheckOutcome::ok(Duration::ZERO), Now::capture());
        s.passive_failure("a", &CheckResult::ConnectRefused, Now::capture());
        let mut echo = remote(50, HealthState::Unhealthy, SystemTime::now());
        echo.checked_by = Arc::from("pod-1");
        echo.kind = ResultKind::Passive;
        assert_eq!(
            s.apply_remote("a", &echo, Now::capture()),
            Adoption::Adopted(None)
        );
        let h = s.snapshot().get("a").unwrap().health.clone();
        assert_eq!((h.source, h.fence), (Source::Passive, 50));
    }

    #[tokio::test]
    async fn next_check_can_be_noted() {
        let s = store_with(1);
        let at = SystemTime::now() + Duration::from_secs(3);
        let v = s.snapshot().version;
        s.note_next_check("a", at);
        assert_eq!(
            s.snapshot().get("a").unwrap().health.next_check_at,
            Some(at)
        );
        s.note_next_check("a", at);
        assert_eq!(
            s.snapshot().version,
            v + 1,
            "an unchanged time publishes nothing"
        );
        s.note_next_check("nope", at);
    }

    #[test]
    fn event_log_is_bounded() {
        let s = store();
        for _ in 0..(EVENT_LOG_CAPACITY + 10) {
            s.observe("a", &CheckOutcome::ok(Duration::ZERO), Now::capture());
            s.passive_failure("a", &CheckResult::ConnectRefused, Now::capture());
        }
        assert_eq!(s.events().len(), EVENT_LOG_CAPACITY);
    }

    fn endpoint(name: &str, url: &str, weight: f64) -> Endpoint {
        let mut c = EndpointConfig::new(name, url, EndpointKind::Vllm);
        c.models = vec!["m1".into()];
        c.weight = weight;
        c.resolve("e").unwrap()
    }

    #[derive(Debug, Default)]
    struct Told(Mutex<Vec<Vec<Arc<str>>>>);
    impl Coordination for Told {
        fn may_check<'a>(
            &'a self,
            _: &'a str,
        ) -> crate::coordination::BoxFuture<'a, crate::Decision> {
            Box::pin(std::future::ready(crate::Decision::Check {
                fence: FenceToken::LOCAL,
            }))
        }
        fn publish(&self, _: LocalResult) {}
        fn endpoints_changed(&self, endpoints: &[Arc<Endpoint>]) {
            let names = endpoints.iter().map(|e| e.name.clone()).collect();
            self.0.lock().unwrap().push(names);
        }
    }

    #[tokio::test]
    async fn reconcile_keeps_what_stays_and_resets_what_changed() {
        let s = store();
        let told = Arc::new(Told::default());
        s.attach(told.clone());
        let ok = CheckOutcome::ok(Duration::from_millis(2));
        for name in ["a", "b"] {
            s.observe(name, &ok, Now::capture());
        }
        s.set_drained("b", true);
        s.mark_ready();
        let before = s.snapshot();
        let a_before = before.get("a").unwrap().clone();

        // a unchanged; b gets a new weight (same backend); c is new; then a second round
        // where b moves to another URL and a is removed.
        let report = s.reconcile(
            vec![
                endpoint("c", "http://127.0.0.1:11", 1.0),
                endpoint("a", "http://127.0.0.1:9", 1.0),
                endpoint("b", "http://127.0.0.1:9", 3.0),
            ],
            Now::capture(),
        );
        assert_eq!(report.added, vec![Arc::<str>::from("c")]);
        assert_eq!(report.updated, vec![Arc::<str>::from("b")]);
        assert!(report.removed.is_empty() && report.replaced.is_empty());
        assert_eq!(report.unchanged, 1);
        let snap = s.snapshot();
        let names: Vec<&str> = snap.endpoints.iter().map(|e| &*e.endpoint.name).collect();
        assert_eq!(names, ["c", "a", "b"], "the new order");
        assert!(
            Arc::ptr_eq(snap.get("a").unwrap(), &a_before),
            "an unchanged endpoint keeps its very entry"
        );
        let b = snap.get("b").unwrap();
        assert_eq!(b.endpoint.weight, 3.0);
        assert_eq!(
            b.health.state,
            HealthState::Healthy,
            "same backend: health kept"
        );
        assert!(b.health.drained, "a drain survives a reload");
        assert_eq!(snap.get("c").unwrap().health.state, HealthState::Unknown);
        assert!(snap.ready, "readiness, once reached, stays");
        assert_eq!(s.plan("c").unwrap().endpoint.name.as_ref(), "c");

        let report = s.reconcile(
            vec![
                endpoint("c", "http://127.0.0.1:11", 1.0),
                endpoint("b", "http://127.0.0.1:10", 3.0),
            ],
            Now::capture(),
        );
        assert_eq!(report.removed, vec![Arc::<str>::from("a")]);
        assert_eq!(report.replaced, vec![Arc::<str>::from("b")]);
        assert_eq!(report.unchanged, 1);
        let snap = s.snapshot();
        assert!(snap.get("a").is_none());
        let b = snap.get("b").unwrap();
        assert_eq!(
            b.health.state,
            HealthState::Unknown,
            "another backend: starts over"
        );
        assert!(b.health.drained);
        assert!(s.observe("a", &ok, Now::capture()).is_none(), "a is gone");
        assert_eq!(
            s.observe("b", &ok, Now::capture()).unwrap().to,
            HealthState::Healthy
        );
        {
            let told = told.0.lock().unwrap();
            assert_eq!(told.len(), 2, "the coordination hears of every reload");
            assert_eq!(told[1], vec![Arc::<str>::from("c"), Arc::from("b")]);
        }

        let same = s.reconcile(
            vec![
                endpoint("c", "http://127.0.0.1:11", 1.0),
                endpoint("b", "http://127.0.0.1:10", 3.0),
            ],
            Now::capture(),
        );
        assert!(same.is_empty());
        assert_eq!(same.unchanged, 2);
    }

    #[test]
    fn drained_endpoints_are_up_but_not_routable() {
        let s = store();
        s.observe("a", &CheckOutcome::ok(Duration::ZERO), Now::capture());
        let now = Instant::now();
        assert_eq!(s.set_drained("a", true), Some(false));
        let a = s.snapshot().get("a").unwrap().clone();
        assert!(a.health.is_up(now) && !a.health.is_routable(now));
        let v = s.snapshot().version;
        assert_eq!(s.set_drained("a", true), Some(true));
        assert_eq!(s.snapshot().version, v, "no change, nothing published");
        assert_eq!(s.set_drained("a", false), Some(true));
        assert!(s.snapshot().get("a").unwrap().health.is_routable(now));
        assert_eq!(s.set_drained("nope", true), None);
    }

    fn serving(names: &[&str], model: &str) -> HealthStore {
        let eps = names
            .iter()
            .map(|n| {
                let mut c = EndpointConfig::new(*n, "http://127.0.0.1:9", EndpointKind::Vllm);
                c.models = vec![model.into()];
                c.resolve("e").unwrap()
            })
            .collect();
        let health = HealthConfig {
            background: false,
            ..Default::default()
        };
        HealthStore::new("pod-1", eps, &health, Now::capture())
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_keep_at_least_half_of_a_models_endpoints() {
        let s = serving(&["a", "b"], "m");
        let rec = Arc::new(Recorder::default());
        s.attach(rec.clone());
        let len = Duration::from_secs(3);
        let Ejected::Now(e) = s.eject(
            "b",
            len,
            "5 consecutive 503 on /v1/chat/completions",
            50,
            Now::capture(),
        ) else {
            panic!("b should go");
        };
        assert_eq!(
            (e.to, e.reason.clone(), e.source),
            (
                HealthState::Unhealthy,
                Some(Reason::Outlier),
                Source::Passive
            )
        );
        assert_eq!(
            e.error.as_deref(),
            Some("5 consecutive 503 on /v1/chat/completions")
        );
        // Ejecting a as well would leave none of m's two endpoints.
        assert_eq!(
            s.eject("a", len, "x", 50, Now::capture()),
            Ejected::Withheld {
                model: Arc::from("m"),
                out: 2,
                total: 2
            }
        );
        assert!(
            s.snapshot()
                .get("a")
                .unwrap()
                .health
                .is_routable(Instant::now())
        );
        assert_eq!(
            s.eject("b", len, "x", 50, Now::capture()),
            Ejected::NotRoutable
        );
        assert_eq!(
            s.eject("nope", len, "x", 50, Now::capture()),
            Ejected::NotRoutable
        );
        // At 100 % both may go.
        assert!(matches!(
            s.eject("a", len, "x", 100, Now::capture()),
            Ejected::Now(_)
        ));
        // The ejection went to the coordination as a passive result with its end.
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].result.kind, ResultKind::Passive);
        assert_eq!(got[0].result.reason, Some(Reason::Outlier));
        let until = got[0].result.ejected_until.unwrap();
        let left = until.duration_since(got[0].result.checked_at).unwrap();
        assert!(
            left <= len && left > len - Duration::from_millis(50),
            "{left:?}"
        );

        // A sole endpoint is never ejected at 50 %; a drained one counts as out.
        let s = serving(&["a", "b", "c", "d"], "m");
        s.set_drained("c", true);
        assert!(matches!(
            s.eject("a", len, "x", 50, Now::capture()),
            Ejected::Now(_)
        ));
        assert!(matches!(
            s.eject("b", len, "x", 50, Now::capture()),
            Ejected::Withheld {
                out: 3,
                total: 4,
                ..
            }
        ));
        let one = serving(&["a"], "m");
        assert!(matches!(
            one.eject("a", len, "x", 50, Now::capture()),
            Ejected::Withheld { .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_stays_out_while_its_probe_passes() {
        let s = store_with(3);
        let ok = CheckOutcome::ok(Duration::ZERO);
        s.observe("a", &ok, Now::capture());
        assert!(matches!(
            s.eject("a", Duration::from_secs(3), "x", 100, Now::capture()),
            Ejected::Now(_)
        ));
        s.observe("a", &ok, Now::capture());
        let h = s.snapshot().get("a").unwrap().health.clone();
        assert_eq!(
            (h.state, h.reason),
            (HealthState::Unhealthy, Some(Reason::Outlier))
        );
        assert!(h.ejected_until.is_some());
        tokio::time::advance(Duration::from_secs(3)).await;
        let e = s.observe("a", &ok, Now::capture()).unwrap();
        assert_eq!(e.to, HealthState::Recovering);
    }

    proptest::proptest! {
        /// Whatever endpoints try to go, in whatever order, no model ever has more than
        /// `max_percent` of its endpoints ejected, and an ejection is withheld only when it
        /// would break that.
        #[test]
        fn no_model_loses_more_than_its_share(
            serves in proptest::collection::vec(1u8..8, 1..8),
            attempts in proptest::collection::vec(0usize..8, 0..24),
            max_percent in 0u32..=100,
        ) {
            let models = |mask: u8| -> Vec<String> {
                (0..3).filter(|b| mask & (1 << b) != 0).map(|b| format!("m{b}")).collect()
            };
            let eps = serves
                .iter()
                .enumerate()
                .map(|(i, mask)| {
                    let mut c = EndpointConfig::new(format!("e{i}"), "http://127.0.0.1:9", EndpointKind::Vllm);
                    c.models = models(*mask);
                    c.resolve("e").unwrap()
                })
                .collect();
            let health = HealthConfig { background: false, ..Default::default() };
            let s = HealthStore::new("pod-1", eps, &health, Now::capture());
            let mut out = vec![false; serves.len()];
            for a in attempts {
                let i = a % serves.len();
                let before = out.clone();
                match s.eject(&format!("e{i}"), Duration::from_secs(30), "x", max_percent, Now::capture()) {
                    Ejected::Now(_) => {
                        proptest::prop_assert!(!before[i]);
                        out[i] = true;
                    }
                    Ejected::NotRoutable => proptest::prop_assert!(before[i]),
                    Ejected::Withheld { .. } => {
                        proptest::prop_assert!(!before[i]);
                        // Going would have broken the limit for some model of it.
                        let mut after = before.clone();
                        after[i] = true;
                        let broken = models(serves[i]).iter().any(|m| {
                            let of: Vec<usize> = (0..serves.len()).filter(|j| models(serves[*j]).contains(m)).collect();
                            let n = of.iter().filter(|j| after[**j]).count();
                            n * 100 > of.len() * max_percent as usize
                        });
                        proptest::prop_assert!(broken);
                    }
                }
                for m in ["m0", "m1", "m2"] {
                    let of: Vec<usize> = (0..serves.len()).filter(|j| models(serves[*j]).iter().any(|x| x == m)).collect();
                    let n = of.iter().filter(|j| out[**j]).count();
                    proptest::prop_assert!(n * 100 <= of.len() * max_percent as usize, "{m}: {n} of {}", of.len());
                }
            }
        }
    }

    #[test]
    fn the_fleet_is_the_replicas_heard_from_lately() {
        let s = store_with(3);
        assert_eq!(s.fleet_size(), 1, "alone");
        let now = SystemTime::now();
        let mut fence = 10;
        let mut from = |pod: &str, checked_at: SystemTime| {
            let mut r = remote(fence, HealthState::Healthy, checked_at);
            r.checked_by = Arc::from(pod);
            fence += 1;
            s.apply_remote(
                "a",
                &r,
                Now {
                    mono: Instant::now(),
                    wall: now,
                },
            );
        };
        from("pod-2", now);
        from("pod-3", now);
        from("pod-2", now);
        assert_eq!(s.fleet_size(), 3);
        from("pod-1", now);
        assert_eq!(s.fleet_size(), 3, "our own echo is not a peer");
        from("pod-old", now - FLEET_MEMORY - Duration::from_secs(1));
        assert_eq!(
            s.fleet_size(),
            3,
            "a result from long ago names no live replica"
        );
        // A minute later, with nothing heard from pod-3, only pod-2 (heard from now) counts.
        let later = now + FLEET_MEMORY - Duration::from_millis(1);
        let mut r = remote(100, HealthState::Healthy, later);
        r.checked_by = Arc::from("pod-2");
        s.apply_remote(
            "a",
            &r,
            Now {
                mono: Instant::now(),
                wall: now + FLEET_MEMORY + Duration::from_secs(1),
            },
        );
        assert_eq!(s.fleet_size(), 2);
        // A flood of made-up names is bounded.
        for i in 0..(MAX_PEERS + 50) {
            let mut r = remote(200 + i as u64, HealthState::Healthy, later);
            r.checked_by = Arc::from(format!("fake-{i}"));
            s.apply_remote(
                "a",
                &r,
                Now {
                    mono: Instant::now(),
                    wall: later,
                },
            );
        }
        assert_eq!(s.fleet_size(), MAX_PEERS + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_remote_ejection_is_held_for_this_replicas_max_at_most() {
        let s = store_with(3);
        s.set_max_ejection(Duration::from_secs(10));
        let now = Now::capture();
        let mut r = remote(5, HealthState::Unhealthy, now.wall);
        r.reason = Some(Reason::Outlier);
        r.kind = ResultKind::Passive;
        r.ejected_until = Some(now.wall + Duration::from_secs(3600));
        s.apply_remote("a", &r, now);
        let h = s.snapshot().get("a").unwrap().health.clone();
        assert_eq!(h.ejected_until, Some(now.mono + Duration::from_secs(10)));
        assert_eq!(
            (h.source, h.checked_by.as_deref()),
            (Source::Shared, Some("pod-2"))
        );
    }

    /// Reloads that remove endpoints drop their check-request signals: the map holds the
    /// configured endpoints only, however many names came and went.
    #[test]
    fn removed_endpoints_leave_no_check_request_signal_behind() {
        let url = "http://127.0.0.1:9";
        let s = store();
        s.request_check("a");
        s.request_check("b");
        for round in 0..100 {
            let name = format!("gone-{round}");
            s.reconcile(
                vec![endpoint("a", url, 1.0), endpoint(&name, url, 1.0)],
                Now::capture(),
            );
            s.request_check(&name);
        }
        s.reconcile(vec![endpoint("a", url, 1.0)], Now::capture());
        let names: Vec<Arc<str>> = s.check_requests.lock().unwrap().keys().cloned().collect();
        assert_eq!(names, [Arc::<str>::from("a")]);
    }
    /// A store of two endpoints whose models are discovered: `d` (own interval 10 s) and
    /// `e` (the default), plus `s` with a static list.
    fn discovering_store() -> HealthStore {
        let url = "http://127.0.0.1:9";
        let mut d = EndpointConfig::new("d", url, EndpointKind::Vllm);
        d.discovery_interval = Some(Duration::from_secs(10));
        let e = EndpointConfig::new("e", url, EndpointKind::Ollama);
        let mut st = EndpointConfig::new("s", url, EndpointKind::Vllm);
        st.models = vec!["m1".into()];
        let eps = [d, e, st].iter().map(|c| c.resolve("x").unwrap()).collect();
        HealthStore::new("pod-1", eps, &HealthConfig::default(), Now::capture())
    }

    #[tokio::test(start_paused = true)]
    async fn rediscovery_follows_each_endpoints_interval() {
        let s = discovering_store();
        assert_eq!(s.discovery_interval("d"), Some(Duration::from_secs(10)));
        assert_eq!(s.discovery_interval("e"), Some(Duration::from_secs(30)));
        assert!(
            s.request_discovery("s", Instant::now()).is_none(),
            "static list"
        );
        assert!(s.request_discovery("nope", Instant::now()).is_none());
        for name in ["d", "e"] {
            let w = s.request_discovery(name, Instant::now()).expect("asked");
            let r = s.discovery_requests(name).expect("the task's side");
            r.requested().await;
            r.finished();
            w.done().await;
            assert!(s.request_discovery(name, Instant::now()).is_none());
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(s.request_discovery("d", Instant::now()).is_some());
        assert!(s.request_discovery("e", Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(s.request_discovery("e", Instant::now()).is_some());
        // Removed endpoints take their signal with them.
        s.reconcile(
            vec![
                EndpointConfig::new("d", "http://127.0.0.1:9", EndpointKind::Vllm)
                    .resolve("x")
                    .unwrap(),
            ],
            Now::capture(),
        );
        let names: Vec<Arc<str>> = s.discoveries.lock().unwrap().keys().cloned().collect();
        assert_eq!(names, [Arc::<str>::from("d")]);
    }

    #[test]
    fn a_model_the_backend_disowns_is_dropped_from_the_discovered_list() {
        let s = discovering_store();
        let found = CheckOutcome {
            latency: Duration::from_millis(1),
            result: CheckResult::Ok {
                models: Some(vec![Arc::from("m1:latest"), Arc::from("m2")]),
            },
        };
        s.observe("e", &found, Now::capture());
        assert!(s.snapshot().get("e").unwrap().serves("m1"));
        assert!(s.forget_model("e", "m1", Now::capture()));
        assert!(!s.forget_model("e", "m1", Now::capture()), "already gone");
        let snap = s.snapshot();
        let e = snap.get("e").unwrap();
        assert!(!e.serves("m1") && e.serves("m2"));
        // A static list is the operator's.
        assert!(!s.forget_model("s", "m1", Now::capture()));
        assert!(s.snapshot().get("s").unwrap().serves("m1"));
        assert!(!s.forget_model("nope", "m1", Now::capture()));
    }

    #[tokio::test(start_paused = true)]
    async fn check_requests_reach_the_waiting_task_and_are_kept_until_then() {
        let s = store();
        assert!(s.check_requested("nope").is_none());
        s.request_check("nope");
        let signal = s.check_requested("a").unwrap();
        // Asked before anyone waits: the permit is kept for the next wait.
        s.request_check("a");
        s.request_check("a");
        tokio::time::timeout(Duration::from_secs(1), signal.notified())
            .await
            .expect("the request was lost");
        // Two requests leave one permit, not two.
        let again = tokio::time::timeout(Duration::from_millis(50), signal.notified()).await;
        assert!(again.is_err(), "a second check was owed");
        assert!(Arc::ptr_eq(&signal, &s.check_requested("a").unwrap()));
    }

    #[tokio::test]
    async fn passive_endpoints_start_serving_and_return_through_trials() {
        let mut p = EndpointConfig::new("p", "http://127.0.0.1:9", EndpointKind::Openai);
        p.models = vec!["gpt".into()];
        p.check = crate::endpoint::CheckMode::Passive;
        let mut a = EndpointConfig::new("a", "http://127.0.0.1:9", EndpointKind::Vllm);
        a.models = vec!["m1".into()];
        let s = HealthStore::new(
            "pod-1",
            vec![p.resolve("e").unwrap(), a.resolve("e").unwrap()],
            &HealthConfig::default(),
            Now::capture(),
        );
        let rec = Arc::new(Recorder::default());
        s.attach(rec.clone());
        let h = s.snapshot().get("p").unwrap().health.clone();
        assert_eq!(
            (h.state, h.reason.clone(), h.source),
            (HealthState::Healthy, None, Source::Passive)
        );
        assert!(h.is_routable(Instant::now()), "routable from the start");
        assert!(s.allow_trial("p", Now::capture()).is_none());
        assert!(s.passive_success("p", Now::capture()).is_none());

        s.passive_failure("p", &CheckResult::ConnectRefused, Now::capture())
            .unwrap();
        let e = s.allow_trial("p", Now::capture()).unwrap();
        assert_eq!((e.to, e.source), (HealthState::Recovering, Source::Passive));
        assert!(s.passive_success("p", Now::capture()).is_none(), "1 of 2");
        let e = s.passive_success("p", Now::capture()).unwrap();
        assert_eq!(
            (e.from, e.to),
            (HealthState::Recovering, HealthState::Healthy)
        );
        let kinds: Vec<_> = rec
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|l| (l.result.kind, l.result.state))
            .collect();
        assert_eq!(
            kinds,
            [
                (ResultKind::Passive, HealthState::Unhealthy),
                (ResultKind::Passive, HealthState::Recovering),
                (ResultKind::Passive, HealthState::Healthy),
            ],
            "every change is shared; a success that changes nothing is not"
        );

        // An active endpoint is moved by its checks only.
        assert_eq!(
            s.snapshot().get("a").unwrap().health.state,
            HealthState::Unknown
        );
        s.observe("a", &CheckOutcome::ok(Duration::ZERO), Now::capture());
        s.passive_failure("a", &CheckResult::ConnectRefused, Now::capture())
            .unwrap();
        assert!(s.allow_trial("a", Now::capture()).is_none());
        assert!(s.passive_success("a", Now::capture()).is_none());
        assert!(s.allow_trial("nope", Now::capture()).is_none());
        assert_eq!(
            s.snapshot().get("a").unwrap().health.state,
            HealthState::Unhealthy
        );
    }

    #[tokio::test]
    async fn switching_check_mode_on_reload_starts_the_endpoint_over() {
        let s = store();
        s.observe("a", &fail(), Now::capture());
        assert_eq!(
            s.snapshot().get("a").unwrap().health.state,
            HealthState::Unknown
        );
        let mut a = EndpointConfig::new("a", "http://127.0.0.1:9", EndpointKind::Vllm);
        a.models = vec!["m1".into()];
        a.check = crate::endpoint::CheckMode::Passive;
        let mut b = EndpointConfig::new("b", "http://127.0.0.1:9", EndpointKind::Vllm);
        b.models = vec!["m1".into()];
        let report = s.reconcile(
            vec![a.resolve("e").unwrap(), b.resolve("e").unwrap()],
            Now::capture(),
        );
        assert_eq!(report.replaced, vec![Arc::<str>::from("a")]);
        let h = s.snapshot().get("a").unwrap().health.clone();
        assert_eq!(
            (h.state, h.source),
            (HealthState::Healthy, Source::Passive),
            "not left unknown with no probe to end it"
        );
    }
}
