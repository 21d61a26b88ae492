//! Tests of the health state machine: scenarios on paused tokio time, and property tests of
//! the invariants DESIGN §3 promises (routability, recovery threshold).

use super::*;
use crate::endpoint::{EndpointConfig, EndpointKind};
use proptest::prelude::*;

const FAST: Duration = Duration::from_millis(5);
const S: Duration = Duration::from_secs(1);

fn endpoint(startup_failures: u32) -> Endpoint {
    let mut c = EndpointConfig::new("e", "http://127.0.0.1:9", EndpointKind::Vllm);
    c.check_interval = S;
    c.check_timeout = Duration::from_millis(500);
    c.startup.period = Duration::from_millis(500);
    c.startup.timeout = Duration::from_millis(400);
    c.startup.failure_threshold = startup_failures;
    c.resolve("e").unwrap()
}

fn health(unhealthy: u32, healthy: u32) -> HealthConfig {
    HealthConfig {
        unhealthy_threshold: unhealthy,
        healthy_threshold: healthy,
        jitter: 0.0,
        ..HealthConfig::default()
    }
}

fn ok() -> CheckOutcome {
    CheckOutcome::ok(FAST)
}
fn slow() -> CheckOutcome {
    CheckOutcome::ok(Duration::from_secs(3))
}
fn http(status: u16) -> CheckOutcome {
    CheckOutcome::failed(
        FAST,
        CheckResult::Http {
            status,
            retry_after: None,
            message: String::new(),
        },
    )
}
fn refused() -> CheckOutcome {
    CheckOutcome::failed(FAST, CheckResult::ConnectRefused)
}
fn loading() -> CheckOutcome {
    CheckOutcome::failed(
        FAST,
        CheckResult::Loading {
            message: "Loading model".into(),
        },
    )
}

fn running(unhealthy: u32, healthy: u32) -> HealthMachine {
    let mut m = HealthMachine::new(&endpoint(3), &health(unhealthy, healthy));
    m.observe(&ok(), Instant::now());
    assert_eq!(m.state(), HealthState::Healthy);
    m
}

#[test]
fn starts_unknown_and_not_routable() {
    let m = HealthMachine::new(&endpoint(3), &health(3, 2));
    assert_eq!(
        (m.state(), m.phase()),
        (HealthState::Unknown, Phase::Startup)
    );
    assert!(!m.is_routable(Instant::now()));
    assert!(m.discovery_due());
}

#[test]
fn startup_tolerates_failures_up_to_threshold() {
    let mut m = HealthMachine::new(&endpoint(3), &health(3, 2));
    let now = Instant::now();
    assert_eq!(m.observe(&refused(), now), None);
    assert_eq!(m.observe(&refused(), now), None);
    assert_eq!(m.state(), HealthState::Unknown);
    assert_eq!(m.reason(), Some(&Reason::ConnectRefused));
    assert_eq!(
        m.next_delay(now, 0.5),
        Duration::from_millis(500),
        "startup period"
    );
    assert_eq!(
        m.check_timeout(),
        Duration::from_millis(400),
        "startup timeout"
    );
    let t = m.observe(&refused(), now).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthState::Unknown, HealthState::Unhealthy)
    );
    assert_eq!(m.phase(), Phase::Running);
}

#[test]
fn first_success_ends_startup() {
    let mut m = HealthMachine::new(&endpoint(3), &health(3, 2));
    m.observe(&refused(), Instant::now());
    let t = m.observe(&ok(), Instant::now()).unwrap();
    assert_eq!((t.from, t.to), (HealthState::Unknown, HealthState::Healthy));
    assert_eq!(m.check_timeout(), Duration::from_millis(500));
}

#[test]
fn startup_success_threshold() {
    let mut e = endpoint(3);
    e.startup.success_threshold = 3;
    let mut m = HealthMachine::new(&e, &health(3, 2));
    assert_eq!(m.observe(&ok(), Instant::now()), None);
    assert_eq!(m.observe(&ok(), Instant::now()), None);
    assert!(m.observe(&ok(), Instant::now()).is_some());
}

#[test]
fn loading_is_unknown_from_any_state_without_backoff() {
    let mut m = running(3, 2);
    let now = Instant::now();
    let t = m.observe(&loading(), now).unwrap();
    assert_eq!(
        (t.to, t.reason),
        (HealthState::Unknown, Some(Reason::Loading))
    );
    // Loading does not count as a failure, however long it lasts.
    for _ in 0..100 {
        m.observe(&loading(), now);
        assert_eq!(m.next_delay(now, 0.9), Duration::from_millis(500));
    }
    assert_eq!(m.state(), HealthState::Unknown);
    assert_eq!(m.consecutive_failures(), 0);
    let t = m.observe(&ok(), now).unwrap();
    assert_eq!(t.to, HealthState::Healthy);
}

#[test]
fn running_failures_need_the_threshold() {
    let mut m = running(3, 2);
    let now = Instant::now();
    assert_eq!(m.observe(&http(503), now), None);
    assert_eq!(m.next_delay(now, 0.0), S, "no backoff before unhealthy");
    assert_eq!(m.observe(&http(503), now), None);
    assert!(m.is_routable(now));
    let t = m.observe(&http(503), now).unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            HealthState::Healthy,
            HealthState::Unhealthy,
            Some(Reason::Http(503))
        )
    );
}

#[test]
fn backs_off_while_unhealthy_then_recovers_through_recovering() {
    let mut m = running(1, 2);
    let now = Instant::now();
    m.observe(&refused(), now);
    let waits: Vec<u64> = (0..7)
        .map(|i| {
            if i > 0 {
                m.observe(&refused(), now);
            }
            m.next_delay(now, 0.5).as_secs()
        })
        .collect();
    assert_eq!(waits, [1, 2, 4, 8, 12, 12, 12]);
    let t = m.observe(&ok(), now).unwrap();
    assert_eq!(t.to, HealthState::Recovering);
    assert!(m.is_routable(now), "recovering gets trial traffic");
    assert_eq!(
        m.next_delay(now, 0.5),
        S,
        "backoff ends with the first success"
    );
    let t = m.observe(&ok(), now).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthState::Recovering, HealthState::Healthy)
    );
}

#[test]
fn failure_while_recovering_goes_back_to_unhealthy() {
    let mut m = running(1, 3);
    m.observe(&refused(), Instant::now());
    m.observe(&ok(), Instant::now());
    let t = m.observe(&http(500), Instant::now()).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthState::Recovering, HealthState::Unhealthy)
    );
}

#[test]
fn slow_success_is_degraded_and_routable() {
    let mut m = running(3, 2);
    let t = m.observe(&slow(), Instant::now()).unwrap();
    assert_eq!(
        (t.to, t.reason),
        (HealthState::Degraded, Some(Reason::Slow))
    );
    assert!(m.is_routable(Instant::now()));
    let t = m.observe(&ok(), Instant::now()).unwrap();
    assert_eq!(t.to, HealthState::Healthy);
}

#[test]
fn auth_errors_are_unhealthy_at_once() {
    let mut m = running(3, 2);
    let t = m.observe(&http(401), Instant::now()).unwrap();
    assert_eq!(
        (t.to, t.reason),
        (HealthState::Unhealthy, Some(Reason::AuthError))
    );
    let mut m = HealthMachine::new(&endpoint(30), &health(3, 2));
    let t = m.observe(&http(403), Instant::now()).unwrap();
    assert_eq!(t.to, HealthState::Unhealthy, "even during startup");
}

#[tokio::test(start_paused = true)]
async fn rate_limited_until_retry_after_without_failing() {
    let mut m = running(1, 2);
    let limited = CheckOutcome::failed(
        FAST,
        CheckResult::Http {
            status: 429,
            retry_after: Some(Duration::from_secs(7)),
            message: String::new(),
        },
    );
    assert_eq!(m.observe(&limited, Instant::now()), None);
    assert_eq!(m.state(), HealthState::Healthy);
    assert_eq!(m.reason(), Some(&Reason::RateLimited));
    assert_eq!(m.consecutive_failures(), 0);
    assert!(!m.is_routable(Instant::now()));
    assert_eq!(m.next_delay(Instant::now(), 0.5), Duration::from_secs(7));
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(!m.is_routable(Instant::now()));
    assert_eq!(m.next_delay(Instant::now(), 0.5), S);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(m.is_routable(Instant::now()));
}

/// A Retry-After is input Hale did not make: ten years from a backend, or a rate limit ten
/// years ahead adopted from another replica through Redis, holds the endpoint back for
/// `max_backoff` at most, and its next check is never planned later than that.
#[tokio::test(start_paused = true)]
async fn a_hostile_retry_after_is_bounded_by_max_backoff() {
    let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
    let max_backoff = HealthConfig::default().max_backoff;
    let mut m = running(1, 2);
    let limited = CheckOutcome::failed(
        FAST,
        CheckResult::Http {
            status: 429,
            retry_after: Some(ten_years),
            message: String::new(),
        },
    );
    m.observe(&limited, Instant::now());
    assert_eq!(m.next_delay(Instant::now(), 0.5), max_backoff);
    tokio::time::advance(max_backoff).await;
    assert!(m.is_routable(Instant::now()));

    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    let mut forged = shared_of(&running(1, 2), now, wall);
    forged.rate_limited_until = Some(wall + ten_years);
    let mut here = running(1, 2);
    here.adopt(&forged, now, wall);
    assert!(!here.is_routable(now));
    assert_eq!(here.next_delay(now, 0.5), max_backoff);
    tokio::time::advance(max_backoff).await;
    assert!(here.is_routable(Instant::now()));
}

/// A 429 answered to a request: held out until its Retry-After (one interval without one),
/// bounded by max_backoff, never a failure, and a shorter hold never shortens a longer one.
#[tokio::test(start_paused = true)]
async fn a_request_path_429_holds_without_failing_and_is_bounded() {
    let max_backoff = HealthConfig::default().max_backoff;
    let mut m = running(1, 2);
    assert!(m.rate_limited_by_request(Some(Duration::from_secs(7)), Instant::now()));
    assert_eq!(m.state(), HealthState::Healthy);
    assert_eq!(m.consecutive_failures(), 0);
    assert!(!m.is_routable(Instant::now()));
    assert!(
        !m.rate_limited_by_request(Some(Duration::from_secs(2)), Instant::now()),
        "a shorter hold leaves the longer one"
    );
    tokio::time::advance(Duration::from_secs(7)).await;
    assert!(m.is_routable(Instant::now()));

    assert!(m.rate_limited_by_request(None, Instant::now()));
    tokio::time::advance(S).await;
    assert!(
        m.is_routable(Instant::now()),
        "one interval without a Retry-After"
    );

    let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
    assert!(m.rate_limited_by_request(Some(ten_years), Instant::now()));
    assert_eq!(m.next_delay(Instant::now(), 0.5), max_backoff);
    tokio::time::advance(max_backoff).await;
    assert!(m.is_routable(Instant::now()));
}

#[test]
fn passive_failure_marks_unhealthy_at_once() {
    let mut m = running(3, 2);
    let t = m.passive_failure(&CheckResult::ConnectRefused).unwrap();
    assert_eq!(
        (t.from, t.to, t.reason),
        (
            HealthState::Healthy,
            HealthState::Unhealthy,
            Some(Reason::ConnectRefused)
        )
    );
    assert!(m.error().unwrap().starts_with("request path"));
    assert_eq!(
        m.passive_failure(&CheckResult::ConnectRefused),
        None,
        "already down"
    );
    // Passive failures do not touch endpoints that get no traffic anyway.
    let mut fresh = HealthMachine::new(&endpoint(3), &health(3, 2));
    assert_eq!(fresh.passive_failure(&CheckResult::ConnectRefused), None);
    assert_eq!(fresh.state(), HealthState::Unknown);
}

#[test]
fn discovery_is_due_at_first_success_and_after_recovery() {
    let mut m = HealthMachine::new(&endpoint(3), &health(1, 1));
    assert!(m.discovery_due());
    m.observe(
        &CheckOutcome {
            latency: FAST,
            result: CheckResult::Ok {
                models: Some(vec![Arc::from("m1")]),
            },
        },
        Instant::now(),
    );
    assert!(!m.discovery_due());
    assert_eq!(m.discovered().unwrap().len(), 1);
    m.observe(&refused(), Instant::now());
    assert!(m.discovery_due(), "recovery triggers rediscovery");
}

#[test]
fn trusted_machines_start_routable() {
    let m = HealthMachine::trusted(&endpoint(3), &health(3, 2));
    assert!(m.is_routable(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn initial_delay_defers_the_first_check() {
    let mut e = endpoint(3);
    e.startup.initial_delay = Duration::from_secs(60);
    let m = HealthMachine::new(&e, &health(3, 2));
    assert_eq!(m.first_delay(), Duration::from_secs(60));
}

// === properties ===

#[derive(Debug, Clone)]
enum Step {
    Pass,
    Slow,
    Fail(u16),
    Refused,
    Loading,
    Limited,
    Passive,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Pass),
        1 => Just(Step::Slow),
        2 => (500u16..504).prop_map(Step::Fail),
        2 => Just(Step::Refused),
        1 => Just(Step::Loading),
        1 => Just(Step::Limited),
        1 => Just(Step::Passive),
    ]
}

fn apply(m: &mut HealthMachine, s: &Step, now: Instant) -> Option<Transition> {
    match s {
        Step::Pass => m.observe(&ok(), now),
        Step::Slow => m.observe(&slow(), now),
        Step::Fail(code) => m.observe(&http(*code), now),
        Step::Refused => m.observe(&refused(), now),
        Step::Loading => m.observe(&loading(), now),
        Step::Limited => m.observe(
            &CheckOutcome::failed(
                FAST,
                CheckResult::Http {
                    status: 429,
                    retry_after: None,
                    message: String::new(),
                },
            ),
            now,
        ),
        Step::Passive => m.passive_failure(&CheckResult::ConnectRefused),
    }
}

proptest! {
    /// `unknown` and `unhealthy` are never routable, whatever happened before.
    #[test]
    fn unknown_and_unhealthy_never_routable(
        steps in proptest::collection::vec(step(), 0..80),
        unhealthy in 1u32..5,
        healthy in 1u32..5,
        startup_failures in 1u32..5,
    ) {
        let mut m = HealthMachine::new(&endpoint(startup_failures), &health(unhealthy, healthy));
        let now = Instant::now();
        for s in &steps {
            apply(&mut m, s, now);
            if matches!(m.state(), HealthState::Unknown | HealthState::Unhealthy) {
                prop_assert!(!m.is_routable(now), "{:?} routable after {:?}", m.state(), s);
                prop_assert!(!m.is_routable(now + Duration::from_secs(3600)));
            }
        }
    }

    /// After `unhealthy`, exactly `healthy_threshold` consecutive good checks make the endpoint
    /// `healthy`: one fewer leaves it `recovering`.
    #[test]
    fn recovery_needs_exactly_healthy_threshold(
        prefix in proptest::collection::vec(step(), 0..40),
        unhealthy in 1u32..5,
        healthy in 1u32..6,
    ) {
        let mut m = HealthMachine::new(&endpoint(2), &health(unhealthy, healthy));
        let now = Instant::now();
        for s in &prefix {
            apply(&mut m, s, now);
        }
        // Drive it to unhealthy from wherever the prefix left it.
        while m.state() != HealthState::Unhealthy {
            m.observe(&refused(), now);
        }
        for i in 1..healthy {
            m.observe(&ok(), now);
            prop_assert_eq!(m.state(), HealthState::Recovering, "after {} of {} passes", i, healthy);
        }
        m.observe(&ok(), now);
        prop_assert_eq!(m.state(), HealthState::Healthy);
    }

    /// In any history, every step from `recovering` (or `unhealthy`) to `healthy` comes after
    /// exactly `healthy_threshold` passes since the endpoint was last unhealthy.
    #[test]
    fn every_recovery_counts_its_passes(
        steps in proptest::collection::vec(step(), 0..120),
        healthy in 1u32..5,
    ) {
        let mut m = HealthMachine::new(&endpoint(2), &health(2, healthy));
        let now = Instant::now();
        let mut passes_since_unhealthy: Option<u32> = None;
        for s in &steps {
            let t = apply(&mut m, s, now);
            if m.state() == HealthState::Unhealthy {
                passes_since_unhealthy = Some(0);
            } else if matches!(s, Step::Loading) {
                passes_since_unhealthy = None; // a restart: the startup rules apply
            } else if matches!(s, Step::Pass | Step::Slow) {
                passes_since_unhealthy = passes_since_unhealthy.map(|p| p + 1);
            }
            if let (Some(t), Some(p)) = (t, passes_since_unhealthy)
                && matches!(t.to, HealthState::Healthy | HealthState::Degraded)
                && matches!(t.from, HealthState::Recovering | HealthState::Unhealthy)
            {
                prop_assert_eq!(p, healthy);
            }
        }
    }

    /// While failures continue, the scheduled wait never shrinks and never passes the cap.
    #[test]
    fn next_delay_grows_to_cap_while_failing(fails in 1usize..40, u in 0.0f64..1.0) {
        let mut m = running(1, 2);
        let now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..fails {
            m.observe(&refused(), now);
            let d = m.next_delay(now, u);
            prop_assert!(d >= last);
            prop_assert!(d <= Duration::from_secs(60));
            last = d;
        }
    }
}

/// What a peer would publish of `m` after a step (as the store builds it).
fn shared_of(m: &HealthMachine, now: Instant, wall: std::time::SystemTime) -> SharedResult {
    SharedResult {
        state: m.state(),
        phase: m.phase(),
        reason: m.reason().cloned(),
        error: m.error().cloned(),
        latency: m.last_latency(),
        checked_at: wall,
        checked_by: Arc::from("peer"),
        fence: crate::FenceToken(1),
        models: m.discovered().cloned(),
        consecutive_failures: m.consecutive_failures(),
        consecutive_successes: m.consecutive_successes(),
        unhealthy_failures: m.unhealthy_failures(),
        rate_limited_until: m
            .rate_limited_until()
            .filter(|u| *u > now)
            .map(|u| wall + (u - now)),
        ejected_until: m
            .ejected_until()
            .filter(|u| *u > now)
            .map(|u| wall + (u - now)),
        kind: ResultKind::Check { ok: true },
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejection_outlasts_passing_checks_and_returns_through_recovering() {
    let mut m = running(3, 2);
    let until = Instant::now() + Duration::from_secs(3);
    let t = m
        .eject(
            until,
            Arc::from("5 consecutive 503 on /v1/chat/completions"),
        )
        .unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthState::Healthy, HealthState::Unhealthy)
    );
    assert_eq!(t.reason, Some(Reason::Outlier));
    assert!(m.eject(until, Arc::from("again")).is_none(), "already out");
    // The probe passes (it is an outlier: health fine, traffic failing): it stays out, and
    // is checked at the plain interval.
    for _ in 0..3 {
        assert!(m.observe(&ok(), Instant::now()).is_none());
        assert_eq!(m.state(), HealthState::Unhealthy);
        assert_eq!(m.reason(), Some(&Reason::Outlier));
        assert!(m.is_ejected(Instant::now()));
        assert_eq!(m.next_delay(Instant::now(), 0.5), S);
        tokio::time::advance(S).await;
    }
    assert!(!m.is_ejected(Instant::now()));
    // After the ejection: through recovering, as from any failure.
    let t = m.observe(&ok(), Instant::now()).unwrap();
    assert_eq!(t.to, HealthState::Recovering);
    assert_eq!(m.ejected_until(), None);
    assert_eq!(
        m.observe(&ok(), Instant::now()).unwrap().to,
        HealthState::Healthy
    );
}

#[tokio::test(start_paused = true)]
async fn an_adopted_ejection_is_bounded_by_the_receivers_max() {
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    let mut peer = running(3, 2);
    peer.eject(now + Duration::from_secs(30), Arc::from("x"));
    let mut here = running(3, 2);
    here.adopt_bounded(
        &shared_of(&peer, now, wall),
        now,
        wall,
        Duration::from_secs(300),
    );
    assert_eq!(here.ejected_until(), Some(now + Duration::from_secs(30)));
    assert_eq!(here.reason(), Some(&Reason::Outlier));
    // A hostile peer says a year: held for this replica's max_ejection at most.
    let mut forged = shared_of(&peer, now, wall);
    forged.ejected_until = Some(wall + Duration::from_secs(365 * 86_400));
    here.adopt_bounded(&forged, now, wall, Duration::from_secs(300));
    assert_eq!(here.ejected_until(), Some(now + Duration::from_secs(300)));
    forged.ejected_until = Some(std::time::SystemTime::UNIX_EPOCH);
    here.adopt(&forged, now, wall);
    assert_eq!(here.ejected_until(), None, "a past moment holds nothing");
}

#[test]
fn adopting_carries_state_counters_and_models() {
    let mut peer = running(3, 2);
    peer.observe(&refused(), Instant::now());
    peer.observe(&refused(), Instant::now());
    let mut here = HealthMachine::new(&endpoint(3), &health(3, 2));
    let t = here
        .adopt(
            &shared_of(&peer, Instant::now(), std::time::SystemTime::now()),
            Instant::now(),
            std::time::SystemTime::now(),
        )
        .unwrap();
    assert_eq!((t.from, t.to), (HealthState::Unknown, HealthState::Healthy));
    assert_eq!(here.phase(), Phase::Running);
    assert_eq!(here.consecutive_failures(), 2);
    // The third failure, seen here, crosses the fleet's threshold.
    let t = here.observe(&refused(), Instant::now()).unwrap();
    assert_eq!(t.to, HealthState::Unhealthy);
}

proptest! {
    /// Adoption carries everything that decides the future: a machine that adopts its peer's
    /// result after any history then behaves exactly like the peer for any further outcomes
    /// (state, reason, routability and the next wait).
    #[test]
    fn an_adopted_machine_continues_like_its_peer(
        history in proptest::collection::vec(step(), 0..40),
        future in proptest::collection::vec(step(), 1..40),
        own in proptest::collection::vec(step(), 0..10),
        unhealthy in 1u32..5,
        healthy in 1u32..5,
        u in 0.0f64..1.0,
    ) {
        let now = Instant::now();
        let wall = std::time::SystemTime::now();
        let mut peer = HealthMachine::new(&endpoint(3), &health(unhealthy, healthy));
        for s in &history {
            apply(&mut peer, s, now);
        }
        // This replica had its own, different history before adopting.
        let mut here = HealthMachine::new(&endpoint(3), &health(unhealthy, healthy));
        for s in &own {
            apply(&mut here, s, now);
        }
        here.adopt(&shared_of(&peer, now, wall), now, wall);
        for s in &future {
            let a = apply(&mut peer, s, now);
            let b = apply(&mut here, s, now);
            prop_assert_eq!(a, b, "after {:?}", s);
            prop_assert_eq!(peer.state(), here.state());
            prop_assert_eq!(peer.reason(), here.reason());
            prop_assert_eq!(peer.is_routable(now), here.is_routable(now));
            prop_assert_eq!(peer.next_delay(now, u), here.next_delay(now, u));
        }
    }
}

/// A passive endpoint: serving from the start, marked down by the request path, let back
/// in for trials by the scheduler, made healthy by successful trial requests; failed trials
/// back off further each time.
#[tokio::test(start_paused = true)]
async fn passive_endpoints_return_through_trials() {
    let mut m = HealthMachine::trusted(&endpoint(3), &health(3, 2));
    assert_eq!(
        (m.state(), m.phase()),
        (HealthState::Healthy, Phase::Running)
    );
    assert!(
        m.allow_trial(Instant::now()).is_none(),
        "nothing to allow while serving"
    );
    assert!(
        m.passive_success().is_none(),
        "serving successes change nothing"
    );

    let t = m.passive_failure(&CheckResult::ConnectRefused).unwrap();
    assert_eq!(t.to, HealthState::Unhealthy);
    assert_eq!(m.next_delay(Instant::now(), 0.5), S, "first hold: 1x");

    let t = m.allow_trial(Instant::now()).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthState::Unhealthy, HealthState::Recovering)
    );
    assert!(m.is_routable(Instant::now()));
    assert!(m.error().is_some(), "what took it out stays shown");
    // A failed trial: unhealthy again, one backoff step further; again: further still.
    m.passive_failure(&CheckResult::ConnectRefused).unwrap();
    assert_eq!(m.next_delay(Instant::now(), 0.5), 2 * S);
    m.allow_trial(Instant::now()).unwrap();
    m.passive_failure(&CheckResult::ConnectRefused).unwrap();
    assert_eq!(m.next_delay(Instant::now(), 0.5), 4 * S);

    // Successful trials: healthy_threshold (2) of them make it healthy, backoff forgotten.
    m.allow_trial(Instant::now()).unwrap();
    assert!(m.passive_success().is_none(), "one of two");
    assert_eq!(m.state(), HealthState::Recovering);
    let t = m.passive_success().unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthState::Recovering, HealthState::Healthy)
    );
    assert_eq!((m.reason(), m.error()), (None, None));
    m.passive_failure(&CheckResult::ConnectRefused).unwrap();
    assert_eq!(m.next_delay(Instant::now(), 0.5), S, "starts over at 1x");
}

/// A passive endpoint made `unknown` by another replica's result (nothing local makes it
/// so) is let back in through a trial too: with no probe, nothing else would end it.
#[tokio::test(start_paused = true)]
async fn a_passive_endpoint_adopted_as_unknown_gets_a_trial() {
    let mut m = HealthMachine::trusted(&endpoint(3), &health(3, 2));
    let remote = SharedResult {
        state: HealthState::Unknown,
        phase: Phase::Startup,
        reason: Some(Reason::Loading),
        error: None,
        latency: None,
        checked_at: SystemTime::now(),
        checked_by: Arc::from("pod-x"),
        fence: crate::coordination::FenceToken(9),
        models: None,
        consecutive_failures: 0,
        consecutive_successes: 0,
        unhealthy_failures: 0,
        rate_limited_until: None,
        ejected_until: None,
        kind: ResultKind::Check { ok: false },
    };
    m.adopt(&remote, Instant::now(), SystemTime::now());
    assert_eq!(m.state(), HealthState::Unknown);
    let t = m.allow_trial(Instant::now()).unwrap();
    assert_eq!(
        (t.from, t.to),
        (HealthState::Unknown, HealthState::Recovering)
    );
    assert_eq!(m.phase(), Phase::Running);
    m.passive_success();
    m.passive_success();
    assert_eq!(m.state(), HealthState::Healthy);
}

/// An active endpoint that fails again while recovering starts its backoff over, as before
/// passive trials existed.
#[tokio::test(start_paused = true)]
async fn an_active_recovering_failure_still_starts_backoff_over() {
    let mut m = running(1, 3);
    m.observe(&refused(), Instant::now());
    m.observe(&refused(), Instant::now());
    m.observe(&refused(), Instant::now());
    assert_eq!(m.unhealthy_failures(), 3);
    m.observe(&ok(), Instant::now());
    assert_eq!(m.state(), HealthState::Recovering);
    m.passive_failure(&CheckResult::ConnectRefused).unwrap();
    assert_eq!(m.unhealthy_failures(), 1);
}

/// A passive endpoint ejected by outlier detection gets its trial only once the ejection is
/// over: its scheduler's hold is the backoff, which can end sooner.
#[tokio::test(start_paused = true)]
async fn a_passive_endpoints_trial_waits_for_the_end_of_its_ejection() {
    let mut m = HealthMachine::trusted(&endpoint(3), &health(3, 2));
    let until = Instant::now() + Duration::from_secs(3);
    m.eject(until, Arc::from("5 consecutive 503")).unwrap();
    assert_eq!(m.state(), HealthState::Unhealthy);
    assert!(m.allow_trial(Instant::now()).is_none());
    tokio::time::advance(Duration::from_millis(2999)).await;
    assert!(m.allow_trial(Instant::now()).is_none());
    tokio::time::advance(Duration::from_millis(1)).await;
    let t = m.allow_trial(Instant::now()).unwrap();
    assert_eq!(t.to, HealthState::Recovering);
}
