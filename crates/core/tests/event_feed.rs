//! The store's event numbering, its follow-the-log feed (backlog + live receiver, gaps, lag)
//! and the bounded ring of recent checks per endpoint, through the public API.

#![expect(clippy::unwrap_used, reason = "tests fail loudly on setup errors")]

use hale_core::store::{EVENT_LOG_CAPACITY, EVENT_STREAM_BUFFER};
use hale_core::{
    CHECK_HISTORY, CheckOutcome, CheckResult, EndpointConfig, EndpointKind, FenceToken, Gap,
    HealthConfig, HealthState, HealthStore, Now, Phase, ResultKind, Resume, SharedResult,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast::error::TryRecvError;

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

/// One transition of `a` per call: healthy, then unhealthy, then healthy again...
fn flip(s: &HealthStore, n: usize) {
    for _ in 0..n {
        let up = s.snapshot().get("a").unwrap().health.state == HealthState::Healthy;
        let event = if up {
            s.passive_failure("a", &CheckResult::ConnectRefused, Now::capture())
        } else {
            s.observe("a", &CheckOutcome::ok(Duration::ZERO), Now::capture())
        };
        assert!(event.is_some());
    }
}

fn seqs(events: &[hale_core::Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn events_are_numbered_from_one_and_sent_live() {
    let s = store();
    let mut follow = s.follow_events(Resume::Live);
    assert!(follow.backlog.is_empty());
    assert_eq!(follow.gap, Gap::None);
    assert_eq!(follow.newest, 0);
    flip(&s, 3);
    assert_eq!(seqs(&s.events()), vec![1, 2, 3]);
    for expected in 1..=3 {
        let e = follow.live.try_recv().unwrap();
        assert_eq!(e.seq, expected);
        // The snapshot already shows the state the event announces.
        let last = s.events().last().unwrap().to;
        assert_eq!(s.snapshot().get("a").unwrap().health.state, last);
    }
    assert_eq!(follow.live.try_recv(), Err(TryRecvError::Empty));
}

#[tokio::test]
async fn resume_sends_what_follows_without_gap_or_repeat() {
    let s = store();
    flip(&s, 5);
    let mut follow = s.follow_events(Resume::After(2));
    assert_eq!(seqs(&follow.backlog), vec![3, 4, 5]);
    assert_eq!(follow.gap, Gap::None);
    assert_eq!(follow.newest, 5);
    flip(&s, 1);
    assert_eq!(follow.live.try_recv().unwrap().seq, 6);

    // Up to date: nothing in the backlog. At 0: everything.
    let follow = s.follow_events(Resume::After(6));
    assert!(follow.backlog.is_empty());
    assert_eq!(follow.gap, Gap::None);
    let follow = s.follow_events(Resume::After(0));
    assert_eq!(seqs(&follow.backlog), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(follow.gap, Gap::None);
}

#[tokio::test]
async fn resume_from_before_the_log_or_from_another_run_says_so() {
    let s = store();
    flip(&s, EVENT_LOG_CAPACITY + 10);
    let oldest = s.events().first().unwrap().seq;
    assert_eq!(oldest, 11);

    let follow = s.follow_events(Resume::After(3));
    assert_eq!(follow.gap, Gap::Lost { missed: 7 });
    assert_eq!(follow.backlog.len(), EVENT_LOG_CAPACITY);
    assert_eq!(follow.backlog.first().unwrap().seq, 11);

    // Exactly the one before the oldest held: nothing lost.
    let follow = s.follow_events(Resume::After(10));
    assert_eq!(follow.gap, Gap::None);
    assert_eq!(follow.backlog.len(), EVENT_LOG_CAPACITY);

    // Ids this process never issued, up to the largest there is.
    for id in [(EVENT_LOG_CAPACITY + 11) as u64, u64::MAX] {
        let follow = s.follow_events(Resume::After(id));
        assert_eq!(follow.gap, Gap::Unknown, "{id}");
        assert_eq!(follow.backlog.len(), EVENT_LOG_CAPACITY);
    }
}

#[tokio::test]
async fn a_slow_follower_lags_instead_of_growing() {
    let s = store();
    let mut follow = s.follow_events(Resume::Live);
    flip(&s, EVENT_STREAM_BUFFER + 5);
    match follow.live.try_recv() {
        Err(TryRecvError::Lagged(n)) => assert_eq!(n, 5),
        other => unreachable!("expected a lag, got {other:?}"),
    }
    // It can pick up from the log where it stands.
    let next = follow.live.try_recv().unwrap();
    assert_eq!(next.seq, 6);
}

#[tokio::test]
async fn checks_are_kept_per_endpoint_bounded() {
    let s = store();
    for i in 0..(CHECK_HISTORY as u64 + 15) {
        let outcome = if i.is_multiple_of(3) {
            CheckOutcome::failed(Duration::from_millis(i), CheckResult::Timeout)
        } else {
            CheckOutcome::ok(Duration::from_millis(i))
        };
        s.observe("a", &outcome, Now::capture());
    }
    // Passive failures are not checks.
    s.passive_failure("a", &CheckResult::ConnectRefused, Now::capture());
    let snap = s.snapshot();
    let checks: Vec<_> = snap
        .get("a")
        .unwrap()
        .health
        .checks
        .iter()
        .copied()
        .collect();
    assert_eq!(checks.len(), CHECK_HISTORY);
    let first = CHECK_HISTORY as u64 + 15 - CHECK_HISTORY as u64;
    for (i, c) in (first..).zip(&checks) {
        assert_eq!(c.latency, Some(Duration::from_millis(i)));
        assert_eq!(c.ok, !i.is_multiple_of(3), "check {i}");
    }
    assert!(snap.get("b").unwrap().health.checks.is_empty());
}

#[tokio::test]
async fn adopted_remote_checks_are_kept_too() {
    let s = store();
    let result = |fence: u64, kind: ResultKind| SharedResult {
        state: HealthState::Healthy,
        phase: Phase::Running,
        reason: None,
        error: None,
        latency: Some(Duration::from_millis(7)),
        checked_at: SystemTime::now(),
        checked_by: Arc::from("pod-2"),
        fence: FenceToken(fence),
        models: None,
        consecutive_failures: 0,
        consecutive_successes: 1,
        unhealthy_failures: 0,
        rate_limited_until: None,
        ejected_until: None,
        kind,
    };
    s.apply_remote(
        "a",
        &result(10, ResultKind::Check { ok: true }),
        Now::capture(),
    );
    // A passive result is not a check; a stale one is not adopted.
    s.apply_remote("a", &result(11, ResultKind::Passive), Now::capture());
    s.apply_remote(
        "a",
        &result(5, ResultKind::Check { ok: false }),
        Now::capture(),
    );
    let snap = s.snapshot();
    let checks: Vec<_> = snap
        .get("a")
        .unwrap()
        .health
        .checks
        .iter()
        .copied()
        .collect();
    assert_eq!(checks.len(), 1);
    assert!(checks[0].ok);
    assert_eq!(checks[0].latency, Some(Duration::from_millis(7)));
}
