//! Durations too long for a clock never panic core's arithmetic. Config validation bounds
//! every duration at a day, but an `Endpoint` or breaker config built in code is not
//! validated, and a backend's Retry-After is not config at all: each of these, added to a
//! clock reading as it was, would overflow `Instant` or `SystemTime` and panic the task that
//! computes the next check. Here every wait core computes is fed `Duration::MAX` (or
//! `u64::MAX` seconds) and must come back as a (long) wait.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

use hale_core::{
    Breaker, BreakerConfig, CheckOutcome, CheckResult, EndpointConfig, EndpointKind, HealthConfig,
    HealthState, HealthStore, Now,
};
use std::time::Duration;

const HUGE: Duration = Duration::MAX;
const HUGE_SECS: Duration = Duration::from_secs(u64::MAX);

fn store() -> HealthStore {
    let mut endpoint = EndpointConfig::new("e", "http://127.0.0.1:1", EndpointKind::Vllm)
        .resolve("endpoints[0]")
        .unwrap();
    endpoint.check_interval = HUGE;
    endpoint.check_timeout = HUGE_SECS;
    endpoint.startup.period = HUGE_SECS;
    endpoint.startup.initial_delay = HUGE;
    endpoint.startup.success_threshold = 1;
    let health = HealthConfig {
        max_backoff: HUGE,
        jitter: 0.5,
        unhealthy_threshold: 1,
        ..HealthConfig::default()
    };
    HealthStore::new("pod", vec![endpoint], &health, Now::capture())
}

fn outcome(result: CheckResult) -> CheckOutcome {
    CheckOutcome {
        latency: Duration::from_millis(1),
        result,
    }
}

#[test]
fn every_wait_of_the_schedule_survives_huge_durations() {
    let store = store();
    assert_eq!(store.first_delay("e"), Some(HUGE));
    // Startup period.
    let wait = store.schedule_next("e", Now::capture(), 0.99).unwrap();
    assert!(wait >= Duration::from_secs(86_400), "{wait:?}");

    // Running: the interval with jitter, at both ends of the sample.
    store.observe(
        "e",
        &outcome(CheckResult::Ok { models: None }),
        Now::capture(),
    );
    assert_eq!(
        store.snapshot().endpoints[0].health.state,
        HealthState::Healthy
    );
    for u in [0.0, 0.5, 0.999_999] {
        let wait = store.schedule_next("e", Now::capture(), u).unwrap();
        assert!(wait >= Duration::from_secs(86_400), "u={u}: {wait:?}");
    }

    // Unhealthy: backoff on a huge interval and cap.
    store.observe("e", &outcome(CheckResult::ConnectRefused), Now::capture());
    assert_eq!(
        store.snapshot().endpoints[0].health.state,
        HealthState::Unhealthy
    );
    for u in [0.0, 0.999_999] {
        store.schedule_next("e", Now::capture(), u).unwrap();
    }

    // A backend's Retry-After of u64::MAX seconds (it is parsed as whole seconds).
    let limited = CheckResult::Http {
        status: 429,
        retry_after: Some(HUGE_SECS),
        message: "slow down".to_owned(),
    };
    store.observe("e", &outcome(limited), Now::capture());
    let wait = store.schedule_next("e", Now::capture(), 0.5).unwrap();
    assert!(wait >= Duration::from_secs(86_400), "{wait:?}");
    // The status view turns the monotonic deadline into wall time.
    let snapshot = store.snapshot();
    assert!(snapshot.endpoints[0].health.rate_limited_until.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_breaker_open_for_too_long_for_a_clock_opens_without_panicking() {
    let mut breaker = Breaker::new(BreakerConfig {
        failure_threshold: 1,
        open_for: HUGE,
    });
    assert!(breaker.on_failure(tokio::time::Instant::now()));
    tokio::time::advance(Duration::from_secs(86_400)).await;
    assert!(!breaker.would_admit(tokio::time::Instant::now()));
}
