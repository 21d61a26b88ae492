//! The scheduler with a coordination plugged in, against a real backend socket: a `Skip`
//! keeps the backend untouched and notes when the endpoint is looked at next, a `Check` runs
//! under the fence given and its result reaches the coordination, `next_wait` sets the pace
//! after a check, and an endpoint whose result comes from the fleet counts for readiness.
//! Checks the request path asks for (`HealthStore::request_check`) run at once, at most one
//! per interval, also in trusted mode (paused time).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on setup errors"
)]

use hale_core::coordination::BoxFuture;
use hale_core::{
    Coordination, Decision, EndpointConfig, EndpointKind, FenceToken, HealthConfig, HealthState,
    HealthStore, LocalResult, Now, Phase, ResultKind, SharedResult,
};
use hale_probe::{ProbeClient, Scheduler};
use hale_testkit::{closing_answer, serve_heads};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};

/// A vLLM-like backend that counts `/health` hits and names the replica that sent them.
async fn backend() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(Vec::new()));
    let seen = hits.clone();
    serve_heads(listener, move |req| {
        let body = if req.starts_with("GET /v1/models") {
            r#"{"object":"list","data":[{"id":"m1"}]}"#
        } else {
            let pod = req
                .lines()
                .find_map(|l| l.strip_prefix("x-hale-pod: "))
                .unwrap_or("")
                .to_owned();
            seen.lock().unwrap().push(pod);
            ""
        };
        Some(closing_answer("200 OK", body))
    });
    (url, hits)
}

fn store(url: &str) -> Arc<HealthStore> {
    let mut c = EndpointConfig::new("e", url, EndpointKind::Vllm);
    c.check_interval = Duration::from_millis(300);
    c.check_timeout = Duration::from_millis(200);
    c.startup.period = Duration::from_millis(300);
    c.startup.timeout = Duration::from_millis(200);
    let health = HealthConfig {
        jitter: 0.0,
        ..HealthConfig::default()
    };
    Arc::new(HealthStore::new(
        "pod-9",
        vec![c.resolve("e").unwrap()],
        &health,
        Now::capture(),
    ))
}

/// Says `Skip` for the first `skips` asks, then `Check` under fence 7; records what it is
/// told and paces the next ask after a check at `pace`.
#[derive(Debug)]
struct Scripted {
    skips: usize,
    asked: AtomicUsize,
    published: Mutex<Vec<LocalResult>>,
    pace: Duration,
}

impl Coordination for Scripted {
    fn may_check<'a>(&'a self, _endpoint: &'a str) -> BoxFuture<'a, Decision> {
        let n = self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(if n < self.skips {
            Decision::Skip {
                retry_in: Duration::from_millis(40),
            }
        } else {
            Decision::Check {
                fence: FenceToken(7),
            }
        }))
    }

    fn publish(&self, result: LocalResult) {
        self.published.lock().unwrap().push(result);
    }

    fn next_wait(&self, _endpoint: &str, _planned: Duration) -> Duration {
        self.pace
    }
}

#[tokio::test]
async fn skips_touch_nothing_and_checks_run_under_the_fence_given() {
    let (url, hits) = backend().await;
    let store = store(&url);
    let coordination = Arc::new(Scripted {
        skips: 5,
        asked: AtomicUsize::new(0),
        published: Mutex::new(Vec::new()),
        pace: Duration::from_millis(50),
    });
    store.attach(coordination.clone());
    let started = Instant::now();
    let handle = Scheduler::new(store.clone(), ProbeClient::new().with_pod_id("pod-9"), true)
        .with_coordination(coordination.clone())
        .spawn();

    // Five skips 40 ms apart: nothing reaches the backend meanwhile.
    sleep(Duration::from_millis(150)).await;
    assert!(hits.lock().unwrap().is_empty());
    let next = store.snapshot().get("e").unwrap().health.next_check_at;
    assert!(next.is_some_and(|t| t > SystemTime::now() - Duration::from_millis(100)));
    assert!(!store.snapshot().ready, "no result yet");

    // Then checks, paced by the coordination (50 ms) rather than the 300 ms interval.
    sleep(Duration::from_millis(400)).await;
    handle.shutdown().await;
    let hits = hits.lock().unwrap().clone();
    assert!(
        hits.len() >= 4,
        "{} checks in {:?}",
        hits.len(),
        started.elapsed()
    );
    assert!(hits.iter().all(|p| p == "pod-9"));
    let snap = store.snapshot();
    assert!(snap.ready);
    assert_eq!(snap.get("e").unwrap().health.fence, 7);
    let published = coordination.published.lock().unwrap();
    assert_eq!(published.len(), hits.len());
    assert_eq!(published[0].result.fence, FenceToken(7));
    assert_eq!(published[0].result.kind, ResultKind::Check { ok: true });
}

/// Always skips: the fleet checks this endpoint.
#[derive(Debug)]
struct AlwaysSkip;

impl Coordination for AlwaysSkip {
    fn may_check<'a>(&'a self, _endpoint: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Skip {
            retry_in: Duration::from_millis(30),
        }))
    }
    fn publish(&self, _result: LocalResult) {}
}

#[tokio::test]
async fn a_result_from_the_fleet_makes_the_replica_ready() {
    let (url, hits) = backend().await;
    let store = store(&url);
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true)
        .with_coordination(Arc::new(AlwaysSkip))
        .spawn();
    sleep(Duration::from_millis(100)).await;
    assert!(!store.snapshot().ready);
    let remote = SharedResult {
        state: HealthState::Healthy,
        phase: Phase::Running,
        reason: None,
        error: None,
        latency: Some(Duration::from_millis(1)),
        checked_at: SystemTime::now(),
        checked_by: Arc::from("pod-1"),
        fence: FenceToken(3),
        models: None,
        consecutive_failures: 0,
        consecutive_successes: 1,
        unhealthy_failures: 0,
        rate_limited_until: None,
        ejected_until: None,
        kind: ResultKind::Check { ok: true },
    };
    store.apply_remote("e", &remote, Now::capture());
    sleep(Duration::from_millis(100)).await;
    assert!(store.snapshot().ready);
    assert!(hits.lock().unwrap().is_empty(), "never checked here");
    handle.shutdown().await;
}

/// Polls `f` every 10 ms until it holds, failing after `limit`.
async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

fn endpoint(name: &str, url: &str) -> hale_core::Endpoint {
    let mut c = EndpointConfig::new(name, url, EndpointKind::Vllm);
    c.check_interval = Duration::from_secs(30);
    c.startup.period = Duration::from_secs(30);
    c.resolve("e").unwrap()
}

#[tokio::test]
async fn checks_on_request_and_follows_a_reloaded_endpoint_set() {
    let (url_a, hits_a) = backend().await;
    let (url_b, hits_b) = backend().await;
    let store = Arc::new(HealthStore::new(
        "pod-9",
        vec![endpoint("a", &url_a)],
        &HealthConfig::default(),
        Now::capture(),
    ));
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true).spawn();
    until(Duration::from_secs(5), "first sweep", || {
        store.snapshot().ready
    })
    .await;
    assert_eq!(hits_a.lock().unwrap().len(), 1);

    // A check on request runs at once (the interval is 30 s) and reports what it found.
    let manual = handle.check_now("a").await.unwrap();
    assert!(manual.outcome.result.reason().is_none(), "{manual:?}");
    assert_eq!(hits_a.lock().unwrap().len(), 2);
    let status = manual.status.unwrap();
    assert_eq!(status.health.checks_total, 2);
    assert_eq!(
        handle.check_now("nope").await.unwrap_err(),
        hale_probe::CheckNowError::UnknownEndpoint
    );

    // Reload: b added, a kept. b is checked at once; a's schedule is untouched.
    let change = store.reconcile(
        vec![endpoint("a", &url_a), endpoint("b", &url_b)],
        Now::capture(),
    );
    handle.apply(&change);
    until(Duration::from_secs(5), "b checked", || {
        store
            .snapshot()
            .get("b")
            .is_some_and(|b| b.health.state == HealthState::Healthy)
    })
    .await;
    assert_eq!(hits_b.lock().unwrap().len(), 1);
    assert_eq!(hits_a.lock().unwrap().len(), 2, "a was left alone");

    // Reload: a removed. Its task is gone.
    let change = store.reconcile(vec![endpoint("b", &url_b)], Now::capture());
    assert_eq!(change.removed, vec![Arc::<str>::from("a")]);
    handle.apply(&change);
    assert_eq!(
        handle.check_now("a").await.unwrap_err(),
        hale_probe::CheckNowError::UnknownEndpoint
    );
    handle.check_now("b").await.unwrap();
    assert_eq!(hits_b.lock().unwrap().len(), 2);
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_check_the_request_path_asks_for_runs_at_once_at_most_once_per_interval() {
    let (url, hits) = backend().await;
    let mut c = EndpointConfig::new("e", &url, EndpointKind::Vllm);
    c.check_interval = Duration::from_secs(10);
    c.check_timeout = Duration::from_secs(1);
    let health = HealthConfig {
        jitter: 0.0,
        ..HealthConfig::default()
    };
    let store = Arc::new(HealthStore::new(
        "pod-9",
        vec![c.resolve("e").unwrap()],
        &health,
        Now::capture(),
    ));
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true).spawn();
    let count = || hits.lock().unwrap().len();
    until(Duration::from_secs(5), "first check", || count() == 1).await;
    let started = Instant::now();

    // Asked for: checked at once, not at the 10 s interval.
    store.request_check("e");
    until(Duration::from_millis(500), "requested check", || {
        count() == 2
    })
    .await;
    // Asked again within the interval (a burst of failures): dropped.
    store.request_check("e");
    store.request_check("e");
    sleep(Duration::from_secs(5)).await;
    assert_eq!(count(), 2, "one requested check per interval");
    // The schedule goes on: the next check 10 s after the requested one.
    until(Duration::from_secs(6), "scheduled check", || count() == 3).await;
    assert!(started.elapsed() >= Duration::from_secs(10));
    // A full interval after the last requested check, the next request runs at once.
    store.request_check("e");
    until(Duration::from_millis(500), "second requested check", || {
        count() == 4
    })
    .await;
    handle.shutdown().await;

    // Trusted mode (no background checks): the endpoint is up and never checked by the
    // schedule, but a request-path failure still gets its check.
    let (url, hits) = backend().await;
    let health = HealthConfig {
        background: false,
        ..health
    };
    let store = Arc::new(HealthStore::new(
        "pod-9",
        vec![endpoint("t", &url)],
        &health,
        Now::capture(),
    ));
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), false).spawn();
    sleep(Duration::from_secs(60)).await;
    let trusted_before = hits.lock().unwrap().len();
    store.request_check("t");
    until(
        Duration::from_millis(500),
        "requested check, trusted mode",
        || hits.lock().unwrap().len() == trusted_before + 1,
    )
    .await;
    assert_eq!(
        store.snapshot().get("t").unwrap().health.state,
        HealthState::Healthy
    );
    handle.shutdown().await;
}
