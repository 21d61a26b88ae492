//! The live state the proxy keeps per endpoint, next to core's health snapshot: requests in
//! flight, the request-path circuit breaker, the outlier detector, the pool of idle upstream connections, and what
//! is prepared once so the request path does not rebuild it (the upstream request lines per
//! route and `host` value, the `x-hale-endpoint` value, the `Authorization` value of the
//! endpoint's key, the duration histogram handle).
//!
//! A request that picks an endpoint holds a [`Claim`] on it until its response body ends or
//! is dropped. The claim counts the request as outstanding (least-outstanding balancing and
//! the one-in-flight limit of `recovering` endpoints read that count) and carries the
//! breaker's verdict back: [`Claim::success`] or [`Claim::failure`] when the answer (or the
//! transport error) is known; a claim dropped without either — the client went away — frees a
//! half-open breaker's trial slot for another request.
//!
//! Outlier detection: every request's outcome is recorded into the endpoint's
//! [`OutlierDetector`] ([`EndpointRuntime::record_outcome`]) where it is known — a
//! 502/503/504 or a failure after sending when the head is (or is not) there, any other
//! answer when its body ends ([`Watch`]: complete → by its status, cut by the backend or idle
//! → a failure, dropped by the client → nothing). When the detector triggers, the ejection is
//! asked of core's store ([`HealthStore::eject`]), which applies `max_ejection_percent` and
//! shares it (in a shared fleet the consecutive budget is split over the replicas the store
//! knows of, [`HealthStore::fleet_size`]); ejections are counted in `hale_outlier_ejections_total{endpoint,signal}` and
//! logged, withheld ones in `hale_outlier_ejections_withheld_total{endpoint}` and logged at
//! most once per window. The detector sits behind a `std` mutex held for one record (a few
//! additions), and, on the rare trigger, across the store's short writer lock; nothing takes
//! them in the other order.
//!
//! Decisions:
//! - The breaker is core's [`Breaker`] behind a `std` mutex held only for one call, never
//!   across an await. Most requests do not take the lock at all: `dirty` mirrors "the breaker
//!   is not closed with zero failures", and while it is false admission is `Allowed` and a
//!   success has nothing to reset. The mirror is written under the lock after every change,
//!   so a request racing with a change behaves as if it had come just before it.
//! - A passive endpoint (`check: passive`) has no probe to bring it back: the success of a
//!   request claimed while it was `recovering` is reported to core
//!   ([`HealthStore::passive_success`]); no other request costs a store write.
//! - A `recovering` endpoint gets at most one request in flight: the claim takes its
//!   outstanding count from 0 to 1 with one compare-and-swap, or does not take it.
//! - Runtimes are reference-counted: the proxy's routing table holds one `Arc` per endpoint,
//!   and every [`Claim`] holds another, so a runtime retired by a reload stays valid for the
//!   requests still in flight on it and is freed when the last of them ends (nothing about
//!   an endpoint outlives both its place in the table and its last request). The reference
//!   count sits in the `Arc`'s header, which the runtime's 128-byte alignment puts on a cache
//!   line of its own, away from the fields every request reads. Each runtime adds itself to
//!   `hale_proxy_endpoint_runtimes` while it lives, so a leak would show there.

use crate::config::ProxyConfig;
use crate::upstream::{Destination, SendError};
use hale_core::{
    Admission, Breaker, BreakerState, Ejected, Endpoint, HealthStore, Now, Outcome,
    OutlierDetector, OutlierStats, Signal,
};
use http::HeaderValue;
use metrics::{Gauge, Histogram};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

/// One endpoint's live state; see the module docs.
#[derive(Debug)]
pub struct EndpointRuntime {
    /// Unique for the life of the process (never reused, so a request's exclusion set can
    /// never confuse a retired runtime with a new one).
    pub id: usize,
    /// The endpoint as the store holds it; its `Arc` identifies the snapshot entry.
    pub endpoint: Arc<Endpoint>,
    /// The `x-hale-endpoint` value.
    pub name_header: HeaderValue,
    /// `Bearer <api_key>`, when the endpoint has a key.
    pub auth: Option<HeaderValue>,
    /// Where requests go: target, prepared request lines, idle connections.
    pub dest: Destination,
    /// Written by every request: on a cache line of its own, so reading the fields around it
    /// (and the breaker mirror below) does not miss every time another core counted.
    outstanding: Padded<AtomicUsize>,
    breaker: Mutex<Breaker>,
    dirty: AtomicBool,
    outlier: Mutex<OutlierDetector>,
    /// `hale_proxy_request_duration_seconds{endpoint}`.
    pub duration: Histogram,
    /// The status-200 counters of `hale_proxy_requests_total` by model, for this endpoint.
    pub counters: crate::metrics::EndpointCounters,
    /// Where outlier ejections and prompt-check requests go; for a passive endpoint
    /// (`check: passive`) also its trial requests' successes (nothing else moves it from
    /// `recovering` back to `healthy`).
    store: Arc<HealthStore>,
    passive: bool,
    /// `hale_proxy_endpoint_runtimes`: one while this runtime lives.
    live: Gauge,
}

/// A new runtime id: unique for the life of the process.
fn next_id() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl EndpointRuntime {
    /// The state of `endpoint` under `config` (breaker, deadlines), with connection pools for
    /// `workers` serving threads, reporting to `store` (ejections, prompt checks, a passive
    /// endpoint's trial successes). It gets a fresh id.
    pub fn new(
        endpoint: Arc<Endpoint>,
        config: &ProxyConfig,
        workers: usize,
        store: &Arc<HealthStore>,
    ) -> Self {
        // Names are validated (no whitespace or control characters), so this always works;
        // the fallback only keeps the constructor total.
        let name_header = HeaderValue::from_bytes(endpoint.name.as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-name"));
        let duration = metrics::histogram!(
            crate::metrics::REQUEST_DURATION_SECONDS,
            "endpoint" => endpoint.name.clone()
        );
        let live = metrics::gauge!(crate::metrics::ENDPOINT_RUNTIMES);
        live.increment(1.0);
        Self {
            id: next_id(),
            auth: crate::hygiene::bearer(endpoint.api_key.expose()),
            counters: crate::metrics::EndpointCounters::new(endpoint.name.clone()),
            passive: endpoint.check.is_passive(),
            dest: Destination::new(&endpoint, workers, config.deadlines_for(&endpoint)),
            endpoint,
            name_header,
            outstanding: Padded(AtomicUsize::new(0)),
            breaker: Mutex::new(Breaker::new(config.breaker.clone())),
            dirty: AtomicBool::new(false),
            outlier: Mutex::new(OutlierDetector::new(&config.outlier, Instant::now())),
            duration,
            store: store.clone(),
            live,
        }
    }

    pub fn name(&self) -> &str {
        &self.endpoint.name
    }

    /// Requests sent to this endpoint whose response has not ended yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.0.load(Ordering::Relaxed)
    }

    /// Whether requests can be sent to it at all (its URL names an http(s) host).
    pub fn usable(&self) -> bool {
        self.dest.usable()
    }

    fn lock(&self) -> MutexGuard<'_, Breaker> {
        // Every breaker call leaves it in a valid state, so a poisoned lock is still usable.
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the breaker would let a request through now (without taking a trial slot).
    pub fn would_admit(&self, now: Instant) -> bool {
        !self.dirty.load(Ordering::Acquire) || self.lock().would_admit(now)
    }

    /// The breaker's state at `now`.
    pub fn breaker_state(&self, now: Instant) -> BreakerState {
        if self.dirty.load(Ordering::Acquire) {
            self.lock().state(now)
        } else {
            BreakerState::Closed
        }
    }

    fn detector(&self) -> MutexGuard<'_, OutlierDetector> {
        // Every detector call leaves it consistent, so a poisoned lock is still usable.
        self.outlier.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What outlier detection shows for this endpoint now.
    pub fn outlier_stats(&self) -> OutlierStats {
        self.detector().stats(Instant::now())
    }

    /// Records one request's `outcome` on route `path` for outlier detection, and ejects the
    /// endpoint through the store when the detector says so (see the module docs).
    pub fn record_outcome(&self, outcome: Outcome, path: &str) {
        let store = &*self.store;
        let mut d = self.detector();
        let Some(trigger) = d.record_in_fleet(outcome, Instant::now(), store.fleet_size()) else {
            return;
        };
        let now = Now::capture();
        let length = d.ejection_time(now.mono);
        let error = trigger.describe(path);
        let max_percent = d.config().max_ejection_percent;
        match store.eject(self.name(), length, &error, max_percent, now) {
            Ejected::Now(event) => {
                d.ejected(&trigger, length, now.mono);
                drop(d);
                metrics::counter!(
                    crate::metrics::OUTLIER_EJECTIONS_TOTAL,
                    "endpoint" => self.endpoint.name.clone(),
                    "signal" => trigger.label()
                )
                .increment(1);
                metrics::counter!(
                    "hale_state_transitions_total",
                    "endpoint" => self.endpoint.name.to_string(),
                    "from" => event.from.as_str(),
                    "to" => event.to.as_str()
                )
                .increment(1);
                tracing::warn!(
                    endpoint = self.name(),
                    signal = trigger.label(),
                    error = %error,
                    ejected_for = %humantime::format_duration(length),
                    from = %event.from,
                    "outlier detection: endpoint ejected"
                );
            }
            Ejected::Withheld { model, out, total } => {
                let log = d.withheld(&trigger, now.mono);
                drop(d);
                metrics::counter!(
                    crate::metrics::OUTLIER_WITHHELD_TOTAL,
                    "endpoint" => self.endpoint.name.clone()
                )
                .increment(1);
                if log {
                    tracing::warn!(
                        endpoint = self.name(),
                        signal = trigger.label(),
                        error = %error,
                        model = %model,
                        "outlier detection: ejection withheld, it would leave {out} of {total} \
                         endpoints of the model out of rotation (max_ejection_percent {max_percent})"
                    );
                }
            }
            Ejected::NotRoutable => d.start_over(),
        }
    }

    /// Records an answer with `status` on `path` whose head just arrived: a 502/503/504 is a
    /// failure now; anything else is left to the body, through the returned [`Watch`].
    pub fn watch(&self, path: &'static str, status: u16) -> Watch {
        let on_end = match Outcome::of_status(status) {
            failure @ Outcome::Failure(_) => {
                self.record_outcome(failure, path);
                None
            }
            other => Some(other),
        };
        Watch { path, on_end }
    }

    /// Claims the endpoint for one request: counts it outstanding (only if nothing is in
    /// flight, when `exclusive`) and asks the breaker. `None` when either says no.
    pub fn try_claim(self: &Arc<Self>, exclusive: bool, now: Instant) -> Option<Claim> {
        if exclusive {
            self.outstanding
                .0
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Relaxed)
                .ok()?;
        } else {
            self.outstanding.0.fetch_add(1, Ordering::AcqRel);
        }
        // From here on the claim exists, so its Drop undoes the count if the breaker says no.
        let mut claim = Claim {
            rt: self.clone(),
            trial: false,
            reported: false,
            exclusive,
        };
        if self.dirty.load(Ordering::Acquire) {
            match self.lock().admit(now) {
                Admission::Allowed => {}
                Admission::Trial => claim.trial = true,
                Admission::Rejected => {
                    claim.reported = true;
                    return None;
                }
            }
        }
        Some(claim)
    }
}

/// The outlier outcome of a request that was sent and got no usable head: a first-byte
/// timeout, or a drop (closed, reset, malformed head). A connect failure sent nothing and is
/// not the detector's (it marks the endpoint at once); it reads as a drop if it comes here.
pub fn sent_failure(sent: &SendError) -> Outcome {
    Outcome::Failure(match sent {
        SendError::TimedOut(_) => Signal::FirstByteTimeout,
        SendError::Dropped(_) | SendError::Malformed(_) | SendError::Connect(_) => Signal::Dropped,
    })
}

/// What a response body still has to tell outlier detection when it ends; see the module
/// docs.
#[derive(Debug)]
pub struct Watch {
    path: &'static str,
    /// The outcome to record when the body ends in full; `None` once recorded.
    on_end: Option<Outcome>,
}

impl Watch {
    /// The body ended in full.
    pub fn ended(&mut self, rt: &EndpointRuntime) {
        if let Some(outcome) = self.on_end.take() {
            rt.record_outcome(outcome, self.path);
        }
    }

    /// The backend broke the body off (`signal`): a failure, unless the answer already
    /// counted as one, and a prompt probe check is asked for.
    pub fn cut(&mut self, rt: &EndpointRuntime, signal: Signal) {
        if self.on_end.take().is_some() {
            rt.record_outcome(Outcome::Failure(signal), self.path);
        }
        rt.store.request_check(rt.name());
    }
}

/// A value alone on its cache line (two lines, against adjacent-line prefetching).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// One request's hold on an endpoint; see the module docs.
#[derive(Debug)]
pub struct Claim {
    rt: Arc<EndpointRuntime>,
    trial: bool,
    reported: bool,
    /// Claimed as a `recovering` endpoint's one request.
    exclusive: bool,
}

impl Claim {
    pub fn runtime(&self) -> &EndpointRuntime {
        &self.rt
    }

    /// A reference of its own to the claimed runtime (for use after the claim moved on).
    pub fn shared_runtime(&self) -> Arc<EndpointRuntime> {
        self.rt.clone()
    }

    /// Whether this request is the half-open breaker's one trial.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// The backend answered (below 500): the breaker's failure count starts over.
    pub fn success(&mut self) {
        self.reported = true;
        if self.exclusive && self.rt.passive {
            self.rt
                .store
                .passive_success(self.rt.name(), hale_core::Now::capture());
        }
        if self.rt.dirty.load(Ordering::Acquire) {
            let mut b = self.rt.lock();
            b.on_success();
            self.rt.dirty.store(false, Ordering::Release);
        }
    }

    /// A transport failure or a 5xx answer. Returns true when it opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.reported = true;
        let mut b = self.rt.lock();
        let opened = b.on_failure(now);
        self.rt.dirty.store(true, Ordering::Release);
        opened
    }
}

impl Drop for EndpointRuntime {
    fn drop(&mut self) {
        self.live.decrement(1.0);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.trial && !self.reported {
            self.rt.lock().on_abandoned();
        }
        self.rt.outstanding.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;
    use hale_core::{EndpointConfig, EndpointKind, HealthState};
    use std::time::Duration;

    fn runtime() -> Arc<EndpointRuntime> {
        let mut c = EndpointConfig::new("a", "http://127.0.0.1:9/base", EndpointKind::Vllm);
        c.api_key = hale_core::Secret::new("sk-a");
        let store = Arc::new(HealthStore::new(
            "pod-1",
            vec![c.resolve("e").unwrap()],
            &hale_core::HealthConfig::default(),
            Now::capture(),
        ));
        let e = store.snapshot().get("a").unwrap().endpoint.clone();
        Arc::new(EndpointRuntime::new(
            e,
            &ProxyConfig {
                breaker: hale_core::BreakerConfig {
                    failure_threshold: 2,
                    open_for: Duration::from_secs(30),
                },
                ..Default::default()
            },
            1,
            &store,
        ))
    }

    #[test]
    fn prepares_headers() {
        let rt = runtime();
        assert!(rt.usable());
        assert_eq!(rt.name_header, "a");
        assert_eq!(rt.auth.as_ref().unwrap(), "Bearer sk-a");
    }

    #[tokio::test(start_paused = true)]
    async fn claims_count_outstanding_and_carry_the_breaker() {
        let rt = runtime();
        let now = Instant::now();
        let one = rt.try_claim(false, now).unwrap();
        assert_eq!(rt.outstanding(), 1);
        assert!(
            rt.try_claim(true, now).is_none(),
            "exclusive needs nothing in flight"
        );
        assert_eq!(rt.outstanding(), 1);
        drop(one);
        assert_eq!(rt.outstanding(), 0);

        // Two failures open the breaker (threshold 2 here).
        for _ in 0..2 {
            rt.try_claim(false, Instant::now())
                .unwrap()
                .failure(Instant::now());
        }
        assert_eq!(rt.breaker_state(Instant::now()), BreakerState::Open);
        assert!(!rt.would_admit(Instant::now()));
        assert!(rt.try_claim(false, Instant::now()).is_none());
        assert_eq!(rt.outstanding(), 0, "a rejected claim is not outstanding");

        // After open_for, one trial; a dropped trial frees the slot for the next one.
        tokio::time::advance(Duration::from_secs(30)).await;
        let trial = rt.try_claim(false, Instant::now()).unwrap();
        assert!(trial.is_trial());
        assert!(
            rt.try_claim(false, Instant::now()).is_none(),
            "one trial at a time"
        );
        drop(trial);
        let mut trial = rt.try_claim(false, Instant::now()).unwrap();
        assert!(trial.is_trial());
        trial.success();
        drop(trial);
        assert_eq!(rt.breaker_state(Instant::now()), BreakerState::Closed);
        let c = rt.try_claim(false, Instant::now()).unwrap();
        assert!(!c.is_trial());
    }

    fn serving_m(names: &[&str]) -> Arc<HealthStore> {
        let eps = names
            .iter()
            .map(|n| {
                let mut c = EndpointConfig::new(*n, "http://127.0.0.1:9", EndpointKind::Vllm);
                c.models = vec!["m".into()];
                c.resolve("e").unwrap()
            })
            .collect();
        let health = hale_core::HealthConfig {
            background: false,
            ..Default::default()
        };
        Arc::new(HealthStore::new("pod-1", eps, &health, Now::capture()))
    }

    fn runtime_of(store: &Arc<HealthStore>, name: &str) -> Arc<EndpointRuntime> {
        let e = store.snapshot().get(name).unwrap().endpoint.clone();
        Arc::new(EndpointRuntime::new(e, &ProxyConfig::default(), 1, store))
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_failures_eject_through_the_store_but_never_the_last_half() {
        let store = serving_m(&["a", "b"]);
        let (a, b) = (runtime_of(&store, "a"), runtime_of(&store, "b"));
        let path = Route::ChatCompletions.path();
        // 4xx and 500 do not count; four 503 in a row do not eject yet.
        b.record_outcome(Outcome::of_status(429), path);
        b.record_outcome(Outcome::of_status(500), path);
        for _ in 0..4 {
            let mut w = b.watch(path, 503);
            w.ended(&b);
        }
        assert!(
            store
                .snapshot()
                .get("b")
                .unwrap()
                .health
                .is_routable(Instant::now())
        );
        // The fifth: ejected, with the signal named.
        b.watch(path, 503);
        let h = store.snapshot().get("b").unwrap().health.clone();
        assert_eq!(h.state, hale_core::HealthState::Unhealthy);
        assert_eq!(h.reason, Some(hale_core::Reason::Outlier));
        assert_eq!(
            h.error.as_deref(),
            Some("5 consecutive 503 on /v1/chat/completions")
        );
        let stats = b.outlier_stats();
        assert_eq!(stats.ejections, 1);
        assert_eq!(stats.last_signal, Some("consecutive_5xx"));

        // a fails as well: withheld, a stays routable.
        for _ in 0..5 {
            a.record_outcome(sent_failure(&SendError::TimedOut(Duration::ZERO)), path);
        }
        assert!(
            store
                .snapshot()
                .get("a")
                .unwrap()
                .health
                .is_routable(Instant::now())
        );
        assert_eq!(a.outlier_stats().ejections, 0);
        assert_eq!(a.outlier_stats().last_signal, Some("consecutive_timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn stream_cuts_count_and_complete_bodies_reset_the_run() {
        let store = serving_m(&["a", "b", "c", "d"]);
        let b = runtime_of(&store, "b");
        let path = Route::OllamaChat.path();
        for _ in 0..4 {
            let mut w = b.watch(path, 200);
            w.cut(&b, Signal::StreamCut);
            // A second report of the same body changes nothing.
            w.ended(&b);
        }
        let mut w = b.watch(path, 200);
        w.ended(&b);
        for _ in 0..4 {
            b.watch(path, 200).cut(&b, Signal::IdleTimeout);
        }
        assert!(
            store
                .snapshot()
                .get("b")
                .unwrap()
                .health
                .is_routable(Instant::now())
        );
        b.watch(path, 200).cut(&b, Signal::StreamCut);
        let h = store.snapshot().get("b").unwrap().health.clone();
        assert_eq!(h.reason, Some(hale_core::Reason::Outlier));
        assert_eq!(
            h.error.as_deref(),
            Some("5 consecutive failures on /api/chat (last: stream cut)")
        );
        // Each cut asked for a prompt probe check (one permit is kept).
        let signal = store.check_requested("b").unwrap();
        tokio::time::timeout(Duration::from_millis(10), signal.notified())
            .await
            .expect("a check was asked for");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_failure_count() {
        let rt = runtime();
        rt.try_claim(false, Instant::now())
            .unwrap()
            .failure(Instant::now());
        rt.try_claim(false, Instant::now()).unwrap().success();
        rt.try_claim(false, Instant::now())
            .unwrap()
            .failure(Instant::now());
        assert_eq!(rt.breaker_state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_passive_endpoints_successful_trials_reach_the_store() {
        let mut p = EndpointConfig::new("p", "http://127.0.0.1:9", EndpointKind::Openai);
        p.models = vec!["gpt".into()];
        p.check = hale_core::CheckMode::Passive;
        let a = EndpointConfig::new("a", "http://127.0.0.1:9", EndpointKind::Vllm);
        let store = Arc::new(HealthStore::new(
            "pod-1",
            vec![p.resolve("e").unwrap(), a.resolve("e").unwrap()],
            &hale_core::HealthConfig::default(),
            hale_core::Now::capture(),
        ));
        let snap = store.snapshot();
        let rt = |name: &str| -> Arc<EndpointRuntime> {
            let e = snap.get(name).unwrap().endpoint.clone();
            Arc::new(EndpointRuntime::new(e, &ProxyConfig::default(), 1, &store))
        };
        let (p_rt, a_rt) = (rt("p"), rt("a"));
        assert!(p_rt.passive && !a_rt.passive, "passive only");
        let state = || store.snapshot().get("p").unwrap().health.state;
        store.passive_failure(
            "p",
            &hale_core::CheckResult::ConnectRefused,
            hale_core::Now::capture(),
        );
        store.allow_trial("p", hale_core::Now::capture()).unwrap();
        // A request not claimed as the recovering endpoint's one (e.g. claimed just before
        // the change) reports nothing; the trial requests do.
        p_rt.try_claim(false, Instant::now()).unwrap().success();
        assert_eq!(
            store
                .snapshot()
                .get("p")
                .unwrap()
                .health
                .consecutive_successes,
            0
        );
        p_rt.try_claim(true, Instant::now()).unwrap().success();
        assert_eq!(state(), HealthState::Recovering, "1 of healthy_threshold 2");
        p_rt.try_claim(true, Instant::now()).unwrap().success();
        assert_eq!(state(), HealthState::Healthy);
    }
}
