//! Waits too long for a clock never panic an endpoint's task. Config validation bounds every
//! duration at a day, but an `Endpoint` built in code is not validated, and a coordination's
//! `retry_in` or `next_wait` comes from the fleet: added to a clock reading as they were,
//! they overflowed `SystemTime` and panicked the task, after which that endpoint was silently
//! never checked again. Here one endpoint checks with intervals of `Duration::MAX` and a
//! fleet pace just below it, another is told to skip for `Duration::MAX`; both tasks must
//! stay alive (a check on request is answered) and show a next check far ahead.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on setup errors"
)]

use hale_core::coordination::BoxFuture;
use hale_core::{
    Coordination, Decision, EndpointConfig, EndpointKind, FenceToken, HealthConfig, HealthStore,
    LocalResult, Now,
};
use hale_probe::{ProbeClient, Scheduler};
use hale_testkit::{closing_answer, serve_heads};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};

/// A vLLM-like backend answering every request 200 (a model list on `/v1/models`); counts
/// the requests.
async fn backend() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    serve_heads(listener, move |req| {
        seen.fetch_add(1, Ordering::SeqCst);
        let body = if req.starts_with("GET /v1/models") {
            r#"{"object":"list","data":[{"id":"m1"}]}"#
        } else {
            ""
        };
        Some(closing_answer("200 OK", body))
    });
    (url, hits)
}

/// An endpoint whose every wait is `Duration::MAX`, as no validated config can have.
fn endpoint(name: &str, url: &str) -> hale_core::Endpoint {
    let mut e = EndpointConfig::new(name, url, EndpointKind::Vllm)
        .resolve("e")
        .unwrap();
    e.check_interval = Duration::MAX;
    e.startup.period = Duration::MAX;
    e
}

/// `skip` is told to skip for `Duration::MAX`; anything else checks, and is paced just below
/// what it planned (so the pace differs from the plan and is noted in the store).
#[derive(Debug)]
struct Extreme;

impl Coordination for Extreme {
    fn may_check<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(if endpoint == "skip" {
            Decision::Skip {
                retry_in: Duration::MAX,
            }
        } else {
            Decision::Check {
                fence: FenceToken(1),
            }
        }))
    }

    fn publish(&self, _result: LocalResult) {}

    fn next_wait(&self, _endpoint: &str, planned: Duration) -> Duration {
        planned.saturating_sub(Duration::from_nanos(1))
    }
}

/// Polls `f` every 10 ms until it holds, failing after `limit`.
async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn tasks_with_waits_too_long_for_a_clock_stay_alive() {
    let (url, hits) = backend().await;
    let health = HealthConfig {
        jitter: 0.5,
        max_backoff: Duration::MAX,
        ..HealthConfig::default()
    };
    let store = Arc::new(HealthStore::new(
        "pod-1",
        vec![endpoint("check", &url), endpoint("skip", &url)],
        &health,
        Now::capture(),
    ));
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true)
        .with_coordination(Arc::new(Extreme))
        .spawn();
    let far = SystemTime::now() + Duration::from_secs(86_400);
    let noted = |name: &str| {
        store
            .snapshot()
            .get(name)
            .and_then(|e| e.health.next_check_at)
            .is_some_and(|at| at > far)
    };
    until(
        Duration::from_secs(5),
        "both next checks noted far ahead",
        || noted("check") && noted("skip"),
    )
    .await;
    let checked = hits.load(Ordering::SeqCst);
    assert!(checked >= 1, "the first check of `check` ran");

    // Both tasks are alive: a check on request is answered, runs, and reschedules.
    for name in ["check", "skip"] {
        let manual = timeout(Duration::from_secs(5), handle.check_now(name))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer to a check on request"))
            .unwrap_or_else(|e| panic!("{name}: the task is gone: {e:?}"));
        assert!(manual.outcome.result.reason().is_none(), "{manual:?}");
        assert!(
            noted(name),
            "{name}: next check not noted after the manual one"
        );
    }
    assert!(hits.load(Ordering::SeqCst) >= checked + 2);
    handle.shutdown().await;
}
