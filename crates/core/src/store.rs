//! The health store: every endpoint's state machine behind one writer lock, published as an
//! immutable [`Snapshot`] that the proxy and the api read lock-free (`ArcSwap`), plus a change
//! signal (`watch`) and the log of recent transitions.
//!
//! Writers are the scheduler (check outcomes), the proxy (passive failures) and, in shared
//! mode, coord (results from other replicas). Each write takes the lock for a few microseconds
//! (no I/O, no await under it), updates one endpoint and publishes a new snapshot that shares
//! every other endpoint's `Arc` with the previous one, so a write costs O(endpoints) pointer
//! copies and a read costs one atomic load.

use crate::config::HealthConfig;
use crate::endpoint::{Endpoint, same_model};
use crate::machine::{HealthMachine, Phase};
use crate::outcome::{CheckOutcome, CheckResult};
use crate::state::{HealthState, Reason, Transition};
use arc_swap::ArcSwap;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// How many transitions `/internal/events` keeps.
pub const EVENT_LOG_CAPACITY: usize = 1024;

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
}

impl EndpointHealth {
    /// Whether traffic may go to the endpoint at `now` (state and rate limit).
    pub fn is_routable(&self, now: Instant) -> bool {
        self.state.is_routable() && self.rate_limited_until.is_none_or(|until| now >= until)
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

/// A state transition of one endpoint, as listed by `/internal/events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
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
}

impl Slot {
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
            },
        })
    }
}

struct Writer {
    slots: Vec<Slot>,
    index: Arc<HashMap<Arc<str>, usize>>,
    version: u64,
    ready: bool,
    events: VecDeque<Event>,
}

/// The owner of every endpoint's health; see the module docs.
pub struct HealthStore {
    pod_id: Arc<str>,
    writer: Mutex<Writer>,
    snapshot: ArcSwap<Snapshot>,
    changes: watch::Sender<u64>,
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
            .map(|e| {
                let machine = if health.background {
                    HealthMachine::new(&e, health)
                } else {
                    HealthMachine::trusted(&e, health)
                };
                Slot {
                    endpoint: Arc::new(e),
                    machine,
                    since: now.wall,
                    last_check: None,
                    next_check_at: None,
                    checked_by: None,
                    source: Source::None,
                    fence: 0,
                }
            })
            .collect();
        let index: Arc<HashMap<Arc<str>, usize>> = Arc::new(
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.endpoint.name.clone(), i))
                .collect(),
        );
        let writer = Writer {
            index: index.clone(),
            version: 0,
            ready: !health.background || slots.is_empty(),
            events: VecDeque::with_capacity(64),
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
        }
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

    /// Computes and records when `name` is next checked; `u` ∈ [0, 1) is the jitter sample.
    pub fn schedule_next(&self, name: &str, now: Now, u: f64) -> Option<Duration> {
        self.with_slot(name, now.wall, |slot| {
            let delay = slot.machine.next_delay(now.mono, u);
            slot.next_check_at = Some(now.wall + delay);
            (delay, None)
        })
        .map(|(delay, _)| delay)
    }

    /// Folds a check this replica ran into `name`'s state. Returns the event if it changed.
    pub fn observe(&self, name: &str, outcome: &CheckOutcome, now: Now) -> Option<Event> {
        let pod = self.pod_id.clone();
        self.with_slot(name, now.wall, |slot| {
            let t = slot.machine.observe(outcome, now.mono);
            slot.last_check = Some(now.wall);
            slot.checked_by = Some(pod);
            slot.source = Source::Local;
            slot.fence = 0;
            ((), t.map(|t| (t, Source::Local)))
        })
        .and_then(|(_, e)| e)
    }

    /// A connection failure on the request path: `name` turns unhealthy at once if it was
    /// routable. Returns the event if it changed.
    pub fn passive_failure(&self, name: &str, result: &CheckResult, now: Now) -> Option<Event> {
        let pod = self.pod_id.clone();
        self.with_slot(name, now.wall, |slot| {
            let t = slot.machine.passive_failure(result);
            if t.is_some() {
                slot.checked_by = Some(pod);
                slot.source = Source::Passive;
            }
            ((), t.map(|t| (t, Source::Passive)))
        })
        .and_then(|(_, e)| e)
    }

    /// Marks the store ready (the first sweep is in). Idempotent.
    pub fn mark_ready(&self) {
        let mut w = self.lock();
        if !w.ready {
            w.ready = true;
            self.publish(&mut w);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic under this lock cannot leave a slot half-written in a way that matters more
        // than losing health checking altogether, so poisoning is ignored.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the slot of `name`, records the transition it reports as an event at
    /// `at`, republishes, and returns what `f` returned plus the event.
    fn with_slot<R>(
        &self,
        name: &str,
        at: SystemTime,
        f: impl FnOnce(&mut Slot) -> (R, Option<(Transition, Source)>),
    ) -> Option<(R, Option<Event>)> {
        let mut w = self.lock();
        let i = *w.index.get(name)?;
        let slot = w.slots.get_mut(i)?;
        let (r, t) = f(slot);
        let event = t.map(|(t, source)| {
            slot.since = at;
            Event {
                endpoint: slot.endpoint.name.clone(),
                from: t.from,
                to: t.to,
                reason: t.reason,
                error: slot.machine.error().cloned(),
                at,
                pod_id: self.pod_id.clone(),
                source,
            }
        });
        let status = slot.status();
        if let Some(e) = &event {
            if w.events.len() == EVENT_LOG_CAPACITY {
                w.events.pop_front();
            }
            w.events.push_back(e.clone());
        }
        self.publish_one(&mut w, i, status);
        Some((r, event))
    }

    fn publish_one(&self, w: &mut Writer, i: usize, status: Arc<EndpointStatus>) {
        let current = self.snapshot.load();
        let mut endpoints = current.endpoints.clone();
        if let Some(e) = endpoints.get_mut(i) {
            *e = status;
        }
        w.version += 1;
        self.snapshot.store(Arc::new(Snapshot {
            version: w.version,
            endpoints,
            index: w.index.clone(),
            ready: w.ready,
        }));
        self.changes.send_replace(w.version);
    }

    fn publish(&self, w: &mut Writer) {
        w.version += 1;
        self.snapshot.store(Arc::new(Snapshot {
            version: w.version,
            endpoints: w.slots.iter().map(Slot::status).collect(),
            index: w.index.clone(),
            ready: w.ready,
        }));
        self.changes.send_replace(w.version);
    }
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

    #[test]
    fn event_log_is_bounded() {
        let s = store();
        for _ in 0..(EVENT_LOG_CAPACITY + 10) {
            s.observe("a", &CheckOutcome::ok(Duration::ZERO), Now::capture());
            s.passive_failure("a", &CheckResult::ConnectRefused, Now::capture());
        }
        assert_eq!(s.events().len(), EVENT_LOG_CAPACITY);
    }
}
