//! Model discovery against a real backend socket whose model list changes, on paused time:
//! the scheduled re-read follows the endpoint's `discovery_interval`, a rediscovery the
//! request path asks for runs at once and ends the wait of everyone who asked, at most one
//! per interval however many ask (also in trusted mode), and in shared mode its result is
//! handed to the coordination marked as a discovery.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
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

/// A vLLM-like backend listing `models` at `/v1/models` (counted in `lists`).
struct Backend {
    url: String,
    models: Arc<Mutex<Vec<String>>>,
    lists: Arc<AtomicUsize>,
}

async fn backend(models: &[&str]) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let list = Arc::new(Mutex::new(
        models.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>(),
    ));
    let lists = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (list.clone(), lists.clone());
    serve_heads(listener, move |req| {
        let body = if req.starts_with("GET /v1/models") {
            counted.fetch_add(1, Ordering::SeqCst);
            let data: Vec<serde_json::Value> = served
                .lock()
                .unwrap()
                .iter()
                .map(|m| serde_json::json!({ "id": m }))
                .collect();
            serde_json::json!({ "object": "list", "data": data }).to_string()
        } else {
            String::new()
        };
        Some(closing_answer("200 OK", &body))
    });
    Backend {
        url,
        models: list,
        lists,
    }
}

impl Backend {
    fn lists(&self) -> usize {
        self.lists.load(Ordering::SeqCst)
    }

    fn serve(&self, models: &[&str]) {
        *self.models.lock().unwrap() = models.iter().map(|m| (*m).to_owned()).collect();
    }
}

fn store(url: &str, background: bool) -> Arc<HealthStore> {
    let mut c = EndpointConfig::new("e", url, EndpointKind::Vllm);
    c.check_interval = Duration::from_secs(5);
    c.check_timeout = Duration::from_secs(1);
    c.discovery_interval = Some(Duration::from_secs(20));
    let health = HealthConfig {
        jitter: 0.0,
        background,
        ..HealthConfig::default()
    };
    Arc::new(HealthStore::new(
        "pod-9",
        vec![c.resolve("e").unwrap()],
        &health,
        Now::capture(),
    ))
}

/// Polls `f` every 10 ms until it holds, failing after `limit`.
async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

fn serves(store: &HealthStore, model: &str) -> bool {
    store.snapshot().get("e").unwrap().serves(model)
}

/// Asks for a rediscovery and waits for it (bounded); whether there was one to wait for.
async fn rediscover(store: &HealthStore) -> bool {
    match store.request_discovery("e", Instant::now()) {
        Some(wait) => {
            tokio::time::timeout(Duration::from_secs(2), wait.done())
                .await
                .expect("the rediscovery ends within the check timeout");
            true
        }
        None => false,
    }
}

#[tokio::test(start_paused = true)]
async fn the_model_list_follows_the_discovery_interval_and_requests() {
    let b = backend(&["m1"]).await;
    let store = store(&b.url, true);
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true).spawn();
    until(Duration::from_secs(5), "first discovery", || {
        serves(&store, "m1")
    })
    .await;
    assert_eq!(b.lists(), 1);

    // Scheduled: checks every 5 s, the list re-read every 20 s (at the first check at
    // least 20 s after the last read).
    sleep(Duration::from_secs(61)).await;
    assert_eq!(
        b.lists(),
        1 + 3,
        "re-read every discovery_interval, not every check"
    );

    // A model pulled onto the backend: a request's rediscovery sees it at once.
    b.serve(&["m1", "m2"]);
    assert!(!serves(&store, "m2"));
    let before = b.lists();
    assert!(rediscover(&store).await);
    assert!(serves(&store, "m2"), "the rediscovery waited for found it");
    assert_eq!(b.lists(), before + 1);

    // A flood of requests naming made-up models within the interval: no rediscovery.
    for _ in 0..1000 {
        assert!(!rediscover(&store).await);
    }
    sleep(Duration::from_secs(1)).await;
    assert_eq!(b.lists(), before + 1, "one rediscovery per interval");

    // Removed on the backend, dropped on the answer's word, rediscovered a full interval on.
    b.serve(&["m2"]);
    assert!(store.forget_model("e", "m1", Now::capture()));
    assert!(!serves(&store, "m1"));
    sleep(Duration::from_secs(20)).await;
    assert!(rediscover(&store).await);
    assert!(!serves(&store, "m1") && serves(&store, "m2"));
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn rediscovery_runs_in_trusted_mode_too() {
    let b = backend(&["m1"]).await;
    let store = store(&b.url, false);
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), false).spawn();
    sleep(Duration::from_secs(60)).await;
    assert_eq!(
        b.lists(),
        1,
        "trusted: the first check only, then no schedule"
    );
    b.serve(&["m1", "m2"]);
    assert!(rediscover(&store).await);
    assert!(serves(&store, "m2"));
    assert_eq!(b.lists(), 2);
    assert!(!rediscover(&store).await);
    handle.shutdown().await;
}

/// Always says `Check` (fence 7); records what it is told.
#[derive(Debug, Default)]
struct Recorder {
    published: Mutex<Vec<LocalResult>>,
}

impl Coordination for Recorder {
    fn may_check<'a>(&'a self, _endpoint: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Check {
            fence: FenceToken(7),
        }))
    }

    fn publish(&self, result: LocalResult) {
        self.published.lock().unwrap().push(result);
    }

    fn next_wait(&self, _endpoint: &str, planned: Duration) -> Duration {
        planned
    }
}

#[tokio::test(start_paused = true)]
async fn a_rediscovery_is_handed_to_the_fleet_as_one() {
    let b = backend(&["m1"]).await;
    let store = store(&b.url, true);
    let fleet = Arc::new(Recorder::default());
    store.attach(fleet.clone());
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true)
        .with_coordination(fleet.clone())
        .spawn();
    until(Duration::from_secs(5), "first discovery", || {
        serves(&store, "m1")
    })
    .await;
    {
        let published = fleet.published.lock().unwrap();
        assert!(
            published.iter().all(|r| !r.discovery),
            "scheduled checks are rounds"
        );
    }
    b.serve(&["m1", "m2"]);
    assert!(rediscover(&store).await);
    let last = fleet.published.lock().unwrap().last().cloned().unwrap();
    assert!(last.discovery);
    assert!(last.result.fence.is_local());
    let models: Vec<&str> = last
        .result
        .models
        .as_deref()
        .unwrap()
        .iter()
        .map(|m| &**m)
        .collect();
    assert_eq!(models, ["m1", "m2"]);
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_list_adopted_from_the_fleet_is_not_read_again_at_once() {
    let b = backend(&["m1"]).await;
    let store = store(&b.url, true);
    let fleet = Arc::new(Recorder::default());
    store.attach(fleet.clone());
    // Another replica's result, with its discovery, arrives before this replica checks.
    let remote = SharedResult {
        state: HealthState::Healthy,
        phase: Phase::Running,
        reason: None,
        error: None,
        latency: Some(Duration::from_millis(1)),
        checked_at: SystemTime::now(),
        checked_by: Arc::from("pod-1"),
        fence: FenceToken(3),
        models: Some(Arc::from(vec![Arc::<str>::from("m1")])),
        consecutive_failures: 0,
        consecutive_successes: 1,
        unhealthy_failures: 0,
        rate_limited_until: None,
        ejected_until: None,
        kind: ResultKind::Check { ok: true },
    };
    store.apply_remote("e", &remote, Now::capture());
    assert!(serves(&store, "m1"));
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true)
        .with_coordination(fleet.clone())
        .spawn();
    // Checks every 5 s; the list is this replica's to re-read only 20 s on.
    sleep(Duration::from_secs(16)).await;
    assert!(fleet.published.lock().unwrap().len() >= 3, "checked");
    assert_eq!(b.lists(), 0, "the fleet's list is not read again at once");
    sleep(Duration::from_secs(10)).await;
    assert_eq!(b.lists(), 1, "then at the endpoint's own interval");
    handle.shutdown().await;
}
