//! Health that does not come from probing, on paused tokio time against real sockets:
//! a `check: passive` endpoint is never sent a request by the scheduler (not by its schedule,
//! not on request), is routable from the start, and after the request path (or an adopted
//! result, even an `unknown` one) marked it down it gets a trial when its hold time (the
//! backoff) ends; and an endpoint backing off after connection refusals is knocked on (bare
//! TCP) every interval, so a backend whose port opens again is checked within one interval,
//! with exactly the HTTP checks the backoff sends while it was closed; never after other
//! failures; and in shared mode too, where the knock's check runs locally while the fleet's
//! round is not due.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on setup errors"
)]

use hale_core::{
    CheckMode, CheckResult, EndpointConfig, EndpointKind, FenceToken, HealthConfig, HealthState,
    HealthStore, Now, Phase, Reason, ResultKind, SharedResult, Source,
};
use hale_probe::{CheckNowError, ProbeClient, Scheduler};
use hale_testkit::{closing_answer, serve_heads};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

const S: Duration = Duration::from_secs(1);

/// Serves `listener` as a vLLM-like backend answering 200 to everything, recording the
/// request line of each request (a bare connection that sends nothing is not recorded).
fn serve(listener: TcpListener, hits: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    serve_heads(listener, move |req| {
        hits.lock()
            .unwrap()
            .push(req.lines().next().unwrap_or("").to_owned());
        let body = if req.starts_with("GET /v1/models") {
            r#"{"object":"list","data":[{"id":"m1"}]}"#
        } else {
            ""
        };
        Some(closing_answer("200 OK", body))
    })
}

fn health(healthy_threshold: u32) -> HealthConfig {
    HealthConfig {
        jitter: 0.0,
        healthy_threshold,
        max_backoff: Duration::from_secs(60),
        ..HealthConfig::default()
    }
}

fn state(store: &HealthStore, name: &str) -> HealthState {
    store.snapshot().get(name).unwrap().health.state
}

/// Polls `f` every 10 ms until it holds, failing after `limit`.
async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_passive_endpoint_is_never_probed_and_gets_trials_after_its_hold() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(Vec::new()));
    let _server = serve(listener, hits.clone());
    let mut c = EndpointConfig::new("p", &url, EndpointKind::Openai);
    c.check = CheckMode::Passive;
    c.models = vec!["gpt".into()];
    c.check_interval = S;
    c.check_timeout = Duration::from_millis(500);
    let store = Arc::new(HealthStore::new(
        "pod-1",
        vec![c.resolve("e").unwrap()],
        &health(2),
        Now::capture(),
    ));
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true).spawn();

    // Serving from the start; readiness does not wait for a check that never comes.
    sleep(Duration::from_millis(1)).await;
    let snap = store.snapshot();
    assert!(snap.ready);
    let p = &snap.get("p").unwrap().health;
    assert_eq!((p.state, p.source), (HealthState::Healthy, Source::Passive));
    assert!(p.is_routable(Instant::now()));
    // A minute of schedule, a check the request path asks for, one an operator asks for:
    // nothing reaches the backend.
    sleep(Duration::from_secs(60)).await;
    store.request_check("p");
    assert_eq!(
        handle.check_now("p").await.unwrap_err(),
        CheckNowError::Passive
    );
    sleep(Duration::from_secs(5)).await;
    assert_eq!(state(&store, "p"), HealthState::Healthy);

    // The request path marks it down: after the 1st backoff step (1 interval), a trial.
    let marked = Instant::now();
    store
        .passive_failure("p", &CheckResult::ConnectRefused, Now::capture())
        .unwrap();
    until(2 * S, "trial allowed", || {
        state(&store, "p") == HealthState::Recovering
    })
    .await;
    let held = marked.elapsed();
    assert!(
        held >= S && held < S + Duration::from_millis(50),
        "{held:?}"
    );
    // The trial fails: unhealthy again, and the next hold is two intervals.
    let marked = Instant::now();
    store
        .passive_failure("p", &CheckResult::ConnectRefused, Now::capture())
        .unwrap();
    until(3 * S, "second trial allowed", || {
        state(&store, "p") == HealthState::Recovering
    })
    .await;
    let held = marked.elapsed();
    assert!(
        held >= 2 * S && held < 2 * S + Duration::from_millis(50),
        "{held:?}"
    );
    // Two successful trial requests (healthy_threshold) bring it back.
    store.passive_success("p", Now::capture());
    assert_eq!(state(&store, "p"), HealthState::Recovering);
    store.passive_success("p", Now::capture());
    assert_eq!(state(&store, "p"), HealthState::Healthy);
    sleep(Duration::from_secs(30)).await;
    assert_eq!(state(&store, "p"), HealthState::Healthy);

    // Another replica's result says `unknown` (it runs the endpoint as an active one, or
    // Redis lies): with no probe to end it, a trial follows after the hold all the same.
    let remote = SharedResult {
        state: HealthState::Unknown,
        phase: Phase::Startup,
        reason: Some(Reason::Loading),
        error: None,
        latency: None,
        checked_at: SystemTime::now(),
        checked_by: Arc::from("pod-x"),
        fence: FenceToken(5),
        models: None,
        consecutive_failures: 0,
        consecutive_successes: 0,
        unhealthy_failures: 0,
        rate_limited_until: None,
        ejected_until: None,
        kind: ResultKind::Check { ok: false },
    };
    store.apply_remote("p", &remote, Now::capture());
    assert_eq!(state(&store, "p"), HealthState::Unknown);
    until(5 * S, "trial after an adopted unknown", || {
        state(&store, "p") == HealthState::Recovering
    })
    .await;

    handle.shutdown().await;
    assert!(
        hits.lock().unwrap().is_empty(),
        "probe traffic reached a passive endpoint: {:?}",
        hits.lock().unwrap()
    );
}

/// The HTTP checks the backoff sends to a backend that refuses from `t = 0` on, within
/// `dead`: the first check at 0 turns it unhealthy (startup failure threshold 1), then the
/// n-th failure waits interval × 1, 2, 4, 8, 12, 12…
fn backoff_checks_within(dead: Duration, interval: Duration) -> u64 {
    let mut at = Duration::ZERO;
    let mut checks = 0;
    let mut n = 1;
    while at < dead {
        checks += 1;
        at += interval * hale_core::Backoff::factor(n);
        n += 1;
    }
    checks
}

#[tokio::test(start_paused = true)]
async fn a_refusing_backend_is_knocked_on_and_checked_as_soon_as_its_port_opens() {
    // A port nobody listens on (for now).
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = EndpointConfig::new("e", format!("http://{addr}"), EndpointKind::Vllm);
    c.check_interval = S;
    c.check_timeout = Duration::from_millis(500);
    c.startup.period = S;
    c.startup.timeout = Duration::from_millis(500);
    c.startup.failure_threshold = 1;
    let store = Arc::new(HealthStore::new(
        "pod-1",
        vec![c.resolve("e").unwrap()],
        &health(2),
        Now::capture(),
    ));
    let started = Instant::now();
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true).spawn();
    let checks = || store.snapshot().get("e").unwrap().health.checks_total;

    // 20.5 s down: the knocks every second change nothing and are not checks; the HTTP
    // checks are exactly the backoff's (at 0, 1, 3, 7, 15 s).
    let dead = Duration::from_millis(20_500);
    sleep(dead).await;
    let h = store.snapshot().get("e").unwrap().health.clone();
    assert_eq!(
        (h.state, h.reason),
        (HealthState::Unhealthy, Some(Reason::ConnectRefused))
    );
    assert_eq!(checks(), backoff_checks_within(dead, S));
    assert_eq!(checks(), 5);

    // The port opens: the full check follows within one interval (the next knock), not at
    // the backoff's 27 s.
    let listener = TcpListener::bind(addr).await.unwrap();
    let opened = Instant::now();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let _server = serve(listener, hits.clone());
    until(2 * S, "checked after the port opened", || {
        state(&store, "e") == HealthState::Recovering
    })
    .await;
    let after = opened.elapsed();
    assert!(after <= S + Duration::from_millis(50), "{after:?}");
    assert_eq!(checks(), 6, "one check, right after the knock");
    assert!(
        hits.lock().unwrap()[0].starts_with("GET /health "),
        "{:?}",
        hits.lock().unwrap()
    );
    // Back to the plain interval: healthy at the next check.
    until(2 * S, "healthy", || {
        state(&store, "e") == HealthState::Healthy
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(23));
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn no_knocking_unless_the_backend_refused() {
    // A backend that answers 503: unhealthy with reason http_503, backing off; its port is
    // open all along, so a knock would end every backoff at once. It must not happen.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(0usize));
    let seen = hits.clone();
    let _server = serve_heads(listener, move |_| {
        *seen.lock().unwrap() += 1;
        Some(closing_answer("503 Service Unavailable", ""))
    });
    let mut c = EndpointConfig::new("e", format!("http://{addr}"), EndpointKind::Vllm);
    c.check_interval = S;
    c.check_timeout = Duration::from_millis(500);
    c.startup.period = S;
    c.startup.timeout = Duration::from_millis(500);
    c.startup.failure_threshold = 1;
    let store = Arc::new(HealthStore::new(
        "pod-1",
        vec![c.resolve("e").unwrap()],
        &health(2),
        Now::capture(),
    ));
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true).spawn();
    let dead = Duration::from_millis(20_500);
    sleep(dead).await;
    let h = store.snapshot().get("e").unwrap().health.clone();
    assert_eq!(
        (h.state, h.reason),
        (HealthState::Unhealthy, Some(Reason::Http(503)))
    );
    assert_eq!(h.checks_total, backoff_checks_within(dead, S));
    assert_eq!(*hits.lock().unwrap() as u64, h.checks_total);
    handle.shutdown().await;
}

/// The fleet covers every round (the coordination always says `Skip`, for 30 s).
#[derive(Debug)]
struct FleetChecks;

impl hale_core::Coordination for FleetChecks {
    fn may_check<'a>(
        &'a self,
        _endpoint: &'a str,
    ) -> hale_core::coordination::BoxFuture<'a, hale_core::Decision> {
        Box::pin(std::future::ready(hale_core::Decision::Skip {
            retry_in: Duration::from_secs(30),
        }))
    }
    fn publish(&self, _result: hale_core::LocalResult) {}
}

#[tokio::test(start_paused = true)]
async fn in_shared_mode_a_refusal_adopted_from_the_fleet_is_knocked_on_and_checked_locally() {
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = EndpointConfig::new("e", format!("http://{addr}"), EndpointKind::Vllm);
    c.check_interval = S;
    c.check_timeout = Duration::from_millis(500);
    let store = Arc::new(HealthStore::new(
        "pod-1",
        vec![c.resolve("e").unwrap()],
        &health(2),
        Now::capture(),
    ));
    // Another replica found it refusing, four failures into its backoff.
    let remote = SharedResult {
        state: HealthState::Unhealthy,
        phase: Phase::Running,
        reason: Some(Reason::ConnectRefused),
        error: Some(Arc::from("connection refused")),
        latency: None,
        checked_at: SystemTime::now(),
        checked_by: Arc::from("pod-2"),
        fence: FenceToken(40),
        models: None,
        consecutive_failures: 7,
        consecutive_successes: 0,
        unhealthy_failures: 4,
        rate_limited_until: None,
        ejected_until: None,
        kind: ResultKind::Check { ok: false },
    };
    store.apply_remote("e", &remote, Now::capture());
    let handle = Scheduler::new(store.clone(), ProbeClient::new(), true)
        .with_coordination(Arc::new(FleetChecks))
        .spawn();
    sleep(Duration::from_secs(5)).await;
    assert_eq!(
        store.snapshot().get("e").unwrap().health.checks_total,
        1,
        "only the adopted result: the fleet's rounds are skipped here"
    );

    let listener = TcpListener::bind(addr).await.unwrap();
    let opened = Instant::now();
    let hits = Arc::new(Mutex::new(Vec::new()));
    let _server = serve(listener, hits.clone());
    until(2 * S, "checked after the port opened", || {
        state(&store, "e") == HealthState::Recovering
    })
    .await;
    assert!(opened.elapsed() <= S + Duration::from_millis(50));
    let h = store.snapshot().get("e").unwrap().health.clone();
    assert_eq!(
        (h.source, h.fence),
        (Source::Local, 0),
        "a local check, no lease"
    );
    // Then the fleet's rounds again: nothing more from here while they are skipped.
    sleep(Duration::from_secs(10)).await;
    let health_hits = hits
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("GET /health "))
        .count();
    assert_eq!(health_hits, 1, "{:?}", hits.lock().unwrap());
    handle.shutdown().await;
}
