//! The per-endpoint health state machine: it folds each [`CheckOutcome`] (and each passive
//! failure seen on the request path) into one of five states and says when to check next.
//!
//! The rules, from DESIGN §3:
//! - **Startup phase** (Kubernetes startup-probe semantics): the endpoint is `unknown` until
//!   `startup.success_threshold` good checks; it turns `unhealthy` only after
//!   `startup.failure_threshold` failed ones. Checks run every `startup.period` with
//!   `startup.timeout`, the first one `startup.initial_delay` after start.
//! - **Loading**: a server that says it is loading a model is `unknown` with reason `loading`,
//!   whatever it was before (a restarted backend starts again): back to the startup phase,
//!   checked at the startup cadence without backoff, not counted as a failure.
//! - **Running phase**: `unhealthy_threshold` consecutive failures → `unhealthy`. From
//!   `unhealthy`, one success → `recovering`, `healthy_threshold` consecutive successes →
//!   `healthy` (or `degraded` when slower than `degraded_latency`). A failure while
//!   `recovering` sends it back to `unhealthy`.
//! - **401/403** (`auth_error`) is `unhealthy` at once: retrying will not fix a wrong key.
//! - **429** is neither success nor failure: the endpoint keeps its state but is not routable
//!   until Retry-After (or one interval) has passed, and is not checked before then.
//! - **Passive failure**: a connection failure on the request path makes a routable endpoint
//!   `unhealthy` at once.
//! - **Ejection** (outlier detection, [`crate::outlier`]): traffic that keeps failing makes a
//!   routable endpoint `unhealthy` with reason `outlier` until `ejected_until`. Passing checks
//!   before then do not end it (the probe passing is exactly what an outlier does): they are
//!   counted, keep the plain interval, and leave it `unhealthy`. The first passing check after
//!   that moment brings it back through `recovering`, as from any other failure. An adopted
//!   ejection is bounded by the receiver's own `max_ejection` (the store passes it in).
//! - **Backoff**: while `unhealthy`, the n-th failure waits `interval × min(2^(n-1), 12)`,
//!   capped at `max_backoff` ([`Backoff`]); before that, checks keep the plain interval so
//!   `unhealthy_threshold` failures are seen within `threshold × interval`.
//!
//! - **Passive endpoints** (`check: passive`, no probe): they start `healthy` in the running
//!   phase, like trusted ones, and only the request path marks them down. Nothing probes them
//!   back, so when the hold time the backoff plans for an `unhealthy` one has passed, the
//!   scheduler allows a trial ([`HealthMachine::allow_trial`]: `unhealthy` → `recovering`,
//!   which takes one request at a time); each trial request that succeeds counts
//!   ([`HealthMachine::passive_success`]) and `healthy_threshold` of them make it `healthy`.
//!   A failed trial sends it back to `unhealthy` one backoff step further on (a failure from
//!   `recovering` continues the step count instead of starting over; an active endpoint's
//!   count was already reset by the check that made it `recovering`, so it is unchanged).
//!
//! - **Adoption** (shared mode): a result another replica produced replaces state, phase,
//!   reason and the counters that thresholds and backoff read ([`HealthMachine::adopt`]), so
//!   the fleet counts consecutive failures together and whichever replica checks next
//!   continues the same schedule.
//!
//! Only changes of *state* are transitions; a new reason within a state is not.

use crate::backoff::Backoff;
use crate::config::{HealthConfig, StartupConfig};
use crate::coordination::{ResultKind, SharedResult};
use crate::endpoint::Endpoint;
use crate::outcome::{CheckOutcome, CheckResult, Verdict};
use crate::state::{HealthState, Reason, Transition};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The longest ejection [`HealthMachine::adopt`] accepts from another replica when the caller
/// does not pass its own bound: `proxy.outlier.max_ejection`'s largest valid value (1 day).
pub const MAX_ADOPTED_EJECTION: Duration = crate::config::MAX_DURATION;

/// Which cadence and thresholds apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Startup,
    Running,
}

#[derive(Debug, Clone)]
pub struct HealthMachine {
    // Settings, copied in so the machine stands alone.
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    degraded_latency: Duration,
    interval: Duration,
    check_timeout: Duration,
    startup: StartupConfig,
    backoff: Backoff,

    state: HealthState,
    phase: Phase,
    reason: Option<Reason>,
    error: Option<Arc<str>>,
    consecutive_failures: u32,
    consecutive_successes: u32,
    /// Failures since the endpoint entered `unhealthy` (drives the backoff).
    unhealthy_failures: u32,
    rate_limited_until: Option<Instant>,
    /// Ejected by outlier detection until then (see the module docs).
    ejected_until: Option<Instant>,
    discovery_due: bool,
    discovered: Option<Arc<[Arc<str>]>>,
    last_latency: Option<Duration>,
    checks_total: u64,
    checks_ok: u64,
}

impl HealthMachine {
    /// A machine for `endpoint` in its startup phase, `unknown`.
    pub fn new(endpoint: &Endpoint, health: &HealthConfig) -> Self {
        // The config was validated; clamping keeps this constructor total all the same.
        let backoff = Backoff::try_new(
            health.max_backoff.max(Duration::from_millis(1)),
            health.jitter.clamp(0.0, 0.99),
        )
        .unwrap_or_else(|_| Backoff::fallback());
        Self {
            unhealthy_threshold: health.unhealthy_threshold.max(1),
            healthy_threshold: health.healthy_threshold.max(1),
            degraded_latency: health.degraded_latency,
            interval: endpoint.check_interval,
            check_timeout: endpoint.check_timeout,
            startup: endpoint.startup.clone(),
            backoff,
            state: HealthState::Unknown,
            phase: Phase::Startup,
            reason: None,
            error: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
            unhealthy_failures: 0,
            rate_limited_until: None,
            ejected_until: None,
            discovery_due: true,
            discovered: None,
            last_latency: None,
            checks_total: 0,
            checks_ok: 0,
        }
    }

    /// A machine that starts `healthy` without a check: for `health.background: false`, where
    /// endpoints are trusted until a request fails on them.
    pub fn trusted(endpoint: &Endpoint, health: &HealthConfig) -> Self {
        let mut m = Self::new(endpoint, health);
        m.state = HealthState::Healthy;
        m.phase = Phase::Running;
        m
    }

    /// Takes the endpoint's new cadence and startup settings (a reloaded config for the same
    /// backend); the state and counters stay.
    pub fn reconfigure(&mut self, endpoint: &Endpoint) {
        self.interval = endpoint.check_interval;
        self.check_timeout = endpoint.check_timeout;
        self.startup = endpoint.startup.clone();
    }

    // === reading ===

    pub fn state(&self) -> HealthState {
        self.state
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn reason(&self) -> Option<&Reason> {
        self.reason.as_ref()
    }
    pub fn error(&self) -> Option<&Arc<str>> {
        self.error.as_ref()
    }
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }
    pub fn last_latency(&self) -> Option<Duration> {
        self.last_latency
    }
    pub fn checks_total(&self) -> u64 {
        self.checks_total
    }
    pub fn checks_ok(&self) -> u64 {
        self.checks_ok
    }
    pub fn rate_limited_until(&self) -> Option<Instant> {
        self.rate_limited_until
    }
    /// Until when outlier detection holds it out (a past moment may linger until the next
    /// passing check).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }
    /// Whether an ejection holds it out at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
    /// Failures since the endpoint entered `unhealthy` (the backoff step).
    pub fn unhealthy_failures(&self) -> u32 {
        self.unhealthy_failures
    }
    /// Models the backend reported at its last discovery.
    pub fn discovered(&self) -> Option<&Arc<[Arc<str>]>> {
        self.discovered.as_ref()
    }
    /// Drops `model` (`:latest` implied) from the discovered list: a backend said it does not
    /// serve it. Returns whether it was listed.
    pub fn forget_model(&mut self, model: &str) -> bool {
        let Some(list) = &self.discovered else {
            return false;
        };
        if !list.iter().any(|m| crate::endpoint::same_model(m, model)) {
            return false;
        }
        let kept: Vec<Arc<str>> = list
            .iter()
            .filter(|m| !crate::endpoint::same_model(m, model))
            .cloned()
            .collect();
        self.discovered = Some(kept.into());
        true
    }

    /// Whether the next check should also list models (first success, after recovery).
    pub fn discovery_due(&self) -> bool {
        self.discovery_due
    }

    /// Whether traffic may go to the endpoint at `now`.
    pub fn is_routable(&self, now: Instant) -> bool {
        self.state.is_routable() && self.rate_limited_until.is_none_or(|until| now >= until)
    }

    /// The timeout for the next check.
    pub fn check_timeout(&self) -> Duration {
        match self.phase {
            Phase::Startup => self.startup.timeout,
            Phase::Running => self.check_timeout,
        }
    }

    /// The wait before the very first check.
    pub fn first_delay(&self) -> Duration {
        match self.phase {
            Phase::Startup => self.startup.initial_delay,
            Phase::Running => Duration::ZERO,
        }
    }

    /// The wait from `now` until the next check; `u` ∈ [0, 1) is the jitter sample.
    pub fn next_delay(&self, now: Instant, u: f64) -> Duration {
        let planned = match (self.phase, self.state) {
            // Startup and loading: Kubernetes cadence, exact and without backoff.
            (Phase::Startup, _) => self.startup.period,
            (Phase::Running, HealthState::Unhealthy) => {
                self.backoff
                    .delay(self.interval, self.unhealthy_failures, u)
            }
            (Phase::Running, _) => self.backoff.jittered(self.interval, u),
        };
        match self.rate_limited_until {
            Some(until) if until > now => planned.max(until - now),
            _ => planned,
        }
    }

    // === folding outcomes ===

    /// Folds one check into the state; returns the transition if the state changed.
    pub fn observe(&mut self, outcome: &CheckOutcome, now: Instant) -> Option<Transition> {
        let from = self.state;
        self.checks_total += 1;
        self.last_latency = Some(outcome.latency);
        match outcome.result.verdict() {
            Verdict::Pass if self.is_ejected(now) => self.on_pass_while_ejected(&outcome.result),
            Verdict::Pass => self.on_pass(outcome),
            Verdict::Loading => self.on_loading(&outcome.result),
            Verdict::RateLimited => self.on_rate_limited(&outcome.result, now),
            Verdict::Fail => self.on_fail(&outcome.result),
        }
        self.transition_from(from)
    }

    /// A connection failure seen on the request path: a routable endpoint turns `unhealthy`
    /// at once. Returns the transition, if any.
    pub fn passive_failure(&mut self, result: &CheckResult) -> Option<Transition> {
        if !self.state.is_routable() {
            return None;
        }
        let from = self.state;
        self.consecutive_successes = 0;
        self.consecutive_failures += 1;
        self.reason = result.reason().or(Some(Reason::RequestFailed));
        self.error = result
            .error_text()
            .map(|e| Arc::from(format!("request path: {e}")));
        let step = self.unhealthy_failures;
        self.enter_unhealthy();
        if from == HealthState::Recovering {
            // A failed trial: back off one step further (see the module docs).
            self.unhealthy_failures = step.saturating_add(1);
        }
        self.transition_from(from)
    }

    /// A passive endpoint's hold time is over: `unhealthy` → `recovering`, so one trial
    /// request at a time may go (see the module docs). `unknown` too: a passive endpoint is
    /// only ever `unknown` by adopting another replica's result (one that runs it as an
    /// active endpoint, or a hostile one), and with no probe nothing else would end it.
    /// Nothing for any other state.
    /// While an outlier ejection still holds (`now` before `ejected_until`), nothing: the
    /// trial waits for the ejection's end as an active endpoint's probes do.
    pub fn allow_trial(&mut self, now: Instant) -> Option<Transition> {
        if !matches!(self.state, HealthState::Unhealthy | HealthState::Unknown)
            || self.is_ejected(now)
        {
            return None;
        }
        let from = self.state;
        self.phase = Phase::Running;
        self.consecutive_successes = 0;
        // The error stays shown: it says what took the endpoint out.
        self.set(HealthState::Recovering, None);
        self.transition_from(from)
    }

    /// A request to a `recovering` passive endpoint succeeded: `healthy_threshold` of them
    /// in a row make it `healthy`. Nothing in any other state (a serving endpoint's
    /// successes change nothing, so they cost no write).
    pub fn passive_success(&mut self) -> Option<Transition> {
        if self.state != HealthState::Recovering {
            return None;
        }
        let from = self.state;
        self.consecutive_failures = 0;
        self.consecutive_successes = self.consecutive_successes.saturating_add(1);
        if self.consecutive_successes >= self.healthy_threshold {
            self.unhealthy_failures = 0;
            self.error = None;
            self.set(HealthState::Healthy, None);
        }
        self.transition_from(from)
    }

    /// A 429 answered on the request path, with its `Retry-After` (or none: one interval):
    /// the endpoint is not routable until then, bounded by `max_backoff` as a probe's 429 is.
    /// Not a failure: no counter moves and the state stays. A hold already longer is kept.
    /// Returns whether the hold changed.
    pub fn rate_limited_by_request(&mut self, retry_after: Option<Duration>, now: Instant) -> bool {
        let until = now + self.retry_after_bound(retry_after.unwrap_or(self.interval));
        if self.rate_limited_until.is_some_and(|held| held >= until) {
            return false;
        }
        self.rate_limited_until = Some(until);
        true
    }

    /// Ejects a routable endpoint until `until` (outlier detection): `unhealthy` with reason
    /// `outlier` and `error` naming the signal. Returns the transition; `None` (and no
    /// change) if it was not routable.
    pub fn eject(&mut self, until: Instant, error: Arc<str>) -> Option<Transition> {
        if !self.state.is_routable() {
            return None;
        }
        let from = self.state;
        self.consecutive_successes = 0;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.reason = Some(Reason::Outlier);
        self.error = Some(error);
        self.ejected_until = Some(until);
        self.enter_unhealthy();
        self.transition_from(from)
    }

    /// Adopts a result another replica produced: state, phase, reason, error, the counters
    /// that thresholds and backoff read, the rate limit and any listed models. A check result
    /// also counts towards `checks_total`/`checks_ok`, as a check the fleet made. `now` and
    /// `wall` are this replica's clocks, used to carry a rate limit over. Returns the
    /// transition if the state changed.
    pub fn adopt(
        &mut self,
        result: &SharedResult,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Transition> {
        self.adopt_bounded(result, now, wall, MAX_ADOPTED_EJECTION)
    }

    /// [`HealthMachine::adopt`], holding an adopted ejection for at most `max_ejection` from
    /// now (a value from another replica is input this one did not make).
    pub fn adopt_bounded(
        &mut self,
        result: &SharedResult,
        now: Instant,
        wall: SystemTime,
        max_ejection: Duration,
    ) -> Option<Transition> {
        let from = self.state;
        self.state = result.state;
        self.phase = result.phase;
        self.reason = result.reason.clone();
        self.error = result.error.clone();
        self.consecutive_failures = result.consecutive_failures;
        self.consecutive_successes = result.consecutive_successes;
        self.unhealthy_failures = result.unhealthy_failures;
        if let Some(latency) = result.latency {
            self.last_latency = Some(latency);
        }
        self.rate_limited_until = result
            .rate_limited_until
            .and_then(|until| until.duration_since(wall).ok())
            .map(|left| now + self.retry_after_bound(left));
        self.ejected_until = result
            .ejected_until
            .and_then(|until| until.duration_since(wall).ok())
            .map(|left| now + crate::config::clock_safe(left.min(max_ejection)));
        if let Some(models) = &result.models {
            self.discovered = Some(models.clone());
            self.discovery_due = false;
        }
        if self.state == HealthState::Unhealthy || self.reason == Some(Reason::Loading) {
            // As after a local failure: the model set is read again once it serves.
            self.discovery_due = true;
        }
        if let ResultKind::Check { ok } = result.kind {
            self.checks_total += 1;
            if ok {
                self.checks_ok += 1;
            }
        }
        self.transition_from(from)
    }

    fn on_pass(&mut self, outcome: &CheckOutcome) {
        self.checks_ok += 1;
        if let CheckResult::Ok {
            models: Some(models),
        } = &outcome.result
        {
            self.discovered = Some(models.iter().cloned().collect());
            self.discovery_due = false;
        }
        self.consecutive_failures = 0;
        self.unhealthy_failures = 0;
        self.rate_limited_until = None;
        self.ejected_until = None;
        self.error = None;
        self.consecutive_successes = self.consecutive_successes.saturating_add(1);

        let slow = outcome.latency > self.degraded_latency;
        let serving = if slow {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        };
        let serving_reason = slow.then_some(Reason::Slow);
        match (self.phase, self.state) {
            (Phase::Startup, _) => {
                if self.consecutive_successes >= self.startup.success_threshold {
                    self.phase = Phase::Running;
                    self.set(serving, serving_reason);
                } else {
                    self.reason = None;
                }
            }
            (Phase::Running, HealthState::Unhealthy | HealthState::Recovering) => {
                if self.consecutive_successes >= self.healthy_threshold {
                    self.set(serving, serving_reason);
                } else {
                    self.set(HealthState::Recovering, None);
                }
            }
            (Phase::Running, _) => self.set(serving, serving_reason),
        }
    }

    /// A passing check while ejected: counted, and the endpoint stays out (module docs).
    fn on_pass_while_ejected(&mut self, result: &CheckResult) {
        self.checks_ok += 1;
        if let CheckResult::Ok {
            models: Some(models),
        } = result
        {
            self.discovered = Some(models.iter().cloned().collect());
            self.discovery_due = false;
        }
        self.consecutive_failures = 0;
        self.consecutive_successes = 0;
        // One interval between checks, not a backoff: the backend answers its probe.
        self.unhealthy_failures = 1;
        self.rate_limited_until = None;
    }

    fn on_loading(&mut self, result: &CheckResult) {
        self.phase = Phase::Startup;
        self.consecutive_failures = 0;
        self.consecutive_successes = 0;
        self.unhealthy_failures = 0;
        self.rate_limited_until = None;
        // The model set may change across a reload.
        self.discovery_due = true;
        self.error = result.error_text().map(Arc::from);
        self.set(HealthState::Unknown, Some(Reason::Loading));
    }

    /// A Retry-After (from a backend, or from another replica through Redis) is input Hale
    /// did not make: it holds the endpoint back and delays its next check for at most
    /// `max_backoff`, as a failure's backoff would, so a hostile or confused value cannot
    /// take an endpoint out of rotation, or out of checking, for longer.
    fn retry_after_bound(&self, wait: Duration) -> Duration {
        crate::config::clock_safe(wait.min(self.backoff.max()))
    }

    fn on_rate_limited(&mut self, result: &CheckResult, now: Instant) {
        let wait = match result {
            CheckResult::Http {
                retry_after: Some(ra),
                ..
            } => *ra,
            _ => self.interval,
        };
        self.rate_limited_until = Some(now + self.retry_after_bound(wait));
        self.reason = Some(Reason::RateLimited);
        self.error = result.error_text().map(Arc::from);
    }

    fn on_fail(&mut self, result: &CheckResult) {
        self.consecutive_successes = 0;
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.rate_limited_until = None;
        let reason = result.reason();
        let auth = reason == Some(Reason::AuthError);
        self.reason = reason;
        self.error = result.error_text().map(Arc::from);
        match (self.phase, self.state) {
            (Phase::Startup, _) => {
                if auth || self.consecutive_failures >= self.startup.failure_threshold {
                    self.enter_unhealthy();
                }
            }
            (Phase::Running, HealthState::Unhealthy) => {
                self.unhealthy_failures = self.unhealthy_failures.saturating_add(1);
            }
            (Phase::Running, HealthState::Recovering) => self.enter_unhealthy(),
            (Phase::Running, _) => {
                if auth || self.consecutive_failures >= self.unhealthy_threshold {
                    self.enter_unhealthy();
                }
            }
        }
    }

    fn enter_unhealthy(&mut self) {
        self.phase = Phase::Running;
        self.unhealthy_failures = 1;
        self.discovery_due = true;
        self.state = HealthState::Unhealthy;
    }

    fn set(&mut self, state: HealthState, reason: Option<Reason>) {
        self.state = state;
        self.reason = reason;
    }

    fn transition_from(&self, from: HealthState) -> Option<Transition> {
        (from != self.state).then(|| Transition {
            from,
            to: self.state,
            reason: self.reason.clone(),
        })
    }
}

impl Backoff {
    /// Used only if validated settings were somehow out of range: Olla's 60 s cap, no jitter.
    fn fallback() -> Self {
        match Backoff::try_new(Duration::from_secs(60), 0.0) {
            Ok(b) => b,
            Err(_) => unreachable!("60s without jitter is a valid backoff"),
        }
    }
}

#[cfg(test)]
mod tests;
