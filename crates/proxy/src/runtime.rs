//! The live state the proxy keeps per endpoint, next to core's health snapshot: requests in
//! flight, the request-path circuit breaker, the pool of idle upstream connections, and what
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
//! - Runtimes live as long as the process (they are leaked, as the proxy's shared state is),
//!   so a claim borrows its runtime as `&'static` instead of bumping a shared reference
//!   count on every request; a runtime retired by a reload stays valid for the claims that
//!   still hold it.

use crate::config::ProxyConfig;
use crate::upstream::Destination;
use hale_core::{Admission, Breaker, BreakerState, Endpoint, HealthStore};
use http::HeaderValue;
use metrics::Histogram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::time::Instant;

/// One endpoint's live state; see the module docs.
#[derive(Debug)]
pub struct EndpointRuntime {
    /// Unique for the life of the process (never reused after a reload).
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
    /// `hale_proxy_request_duration_seconds{endpoint}`.
    pub duration: Histogram,
    /// For a passive endpoint (`check: passive`) only: where its trial requests' successes
    /// are reported (nothing else moves it from `recovering` back to `healthy`).
    passive: Option<Arc<HealthStore>>,
}

impl EndpointRuntime {
    /// The state of `endpoint` under `config` (breaker, deadlines), with connection pools for
    /// `workers` serving threads.
    pub fn new(id: usize, endpoint: Arc<Endpoint>, config: &ProxyConfig, workers: usize) -> Self {
        // Names are validated (no whitespace or control characters), so this always works;
        // the fallback only keeps the constructor total.
        let name_header = HeaderValue::from_bytes(endpoint.name.as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid-name"));
        let duration = metrics::histogram!(
            crate::metrics::REQUEST_DURATION_SECONDS,
            "endpoint" => endpoint.name.clone()
        );
        Self {
            id,
            auth: crate::hygiene::bearer(endpoint.api_key.expose()),
            dest: Destination::new(&endpoint, workers, config.deadlines_for(&endpoint)),
            endpoint,
            name_header,
            outstanding: Padded(AtomicUsize::new(0)),
            breaker: Mutex::new(Breaker::new(config.breaker.clone())),
            dirty: AtomicBool::new(false),
            duration,
            passive: None,
        }
    }

    /// Reports this endpoint's successful trial requests to `store` if it is passive.
    pub fn with_store(mut self, store: &Arc<HealthStore>) -> Self {
        if self.endpoint.check.is_passive() {
            self.passive = Some(store.clone());
        }
        self
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

    /// Claims the endpoint for one request: counts it outstanding (only if nothing is in
    /// flight, when `exclusive`) and asks the breaker. `None` when either says no.
    pub fn try_claim(&'static self, exclusive: bool, now: Instant) -> Option<Claim> {
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
            rt: self,
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

/// A value alone on its cache line (two lines, against adjacent-line prefetching).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// One request's hold on an endpoint; see the module docs.
#[derive(Debug)]
pub struct Claim {
    rt: &'static EndpointRuntime,
    trial: bool,
    reported: bool,
    /// Claimed as a `recovering` endpoint's one request.
    exclusive: bool,
}

impl Claim {
    pub fn runtime(&self) -> &'static EndpointRuntime {
        self.rt
    }

    /// Whether this request is the half-open breaker's one trial.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// The backend answered (below 500): the breaker's failure count starts over.
    pub fn success(&mut self) {
        self.reported = true;
        if let (true, Some(store)) = (self.exclusive, &self.rt.passive) {
            store.passive_success(self.rt.name(), hale_core::Now::capture());
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
    use hale_core::{EndpointConfig, EndpointKind, HealthState};
    use std::time::Duration;

    fn runtime() -> &'static EndpointRuntime {
        let mut c = EndpointConfig::new("a", "http://127.0.0.1:9/base", EndpointKind::Vllm);
        c.api_key = hale_core::Secret::new("sk-a");
        let e = Arc::new(c.resolve("e").unwrap());
        Box::leak(Box::new(EndpointRuntime::new(
            0,
            e,
            &ProxyConfig {
                breaker: hale_core::BreakerConfig {
                    failure_threshold: 2,
                    open_for: Duration::from_secs(30),
                },
                ..Default::default()
            },
            1,
        )))
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
        let rt = |name: &str| -> &'static EndpointRuntime {
            let e = snap.get(name).unwrap().endpoint.clone();
            Box::leak(Box::new(
                EndpointRuntime::new(0, e, &ProxyConfig::default(), 1).with_store(&store),
            ))
        };
        let (p_rt, a_rt) = (rt("p"), rt("a"));
        assert!(
            p_rt.passive.is_some() && a_rt.passive.is_none(),
            "passive only"
        );
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
