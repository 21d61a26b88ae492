//! Retries within a budget, a 429's `Retry-After` on the request path, and the short queue
//! wait (issue 12), over real loopback HTTP: a `Proxy` router served by axum in front of
//! small hyper backends that answer as each test needs and count their connections.
//!
//! Covered: a 503 retried once on the other endpoint (its connection kept, since the small
//! error body was read whole); a request the backend dropped is not retried; the budget
//! refusing a retry (the backend's answer then goes to the client as it was); both endpoints
//! failing gives the last backend answer; a retry that cannot connect gives the answer it
//! replaced; a 429 holds the endpoint out until its `Retry-After`, a hostile one bounded by
//! `max_backoff`; the queue wait wakes on a state change and gives up at `queue_timeout`.
//! The end-to-end suite (`tests/tests/retries.rs`) runs the same through the real binary.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

use bytes::Bytes;
use hale_core::{
    CheckOutcome, CheckResult, EndpointConfig, EndpointKind, HealthConfig, HealthState,
    HealthStore, Now,
};
use hale_proxy::{Proxy, ProxyConfig, RetryBudget, ServerSettings};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

// === a backend ===

/// How a backend answers one request (its body is passed in).
enum Reply {
    Status(
        StatusCode,
        &'static [(&'static str, &'static str)],
        &'static str,
    ),
    /// Close the connection without an answer.
    Close,
    /// Never answer (until the client leaves).
    Hang,
}

struct Backend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl Backend {
    async fn start(answer: impl Fn(&[u8]) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let (r, c) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (answer, r) = (answer.clone(), r.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (answer, r) = (answer.clone(), r.clone());
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            r.fetch_add(1, Ordering::SeqCst);
                            match answer(&body) {
                                Reply::Status(status, headers, text) => {
                                    let mut b = Response::builder()
                                        .status(status)
                                        .header("content-type", "application/json");
                                    for (k, v) in headers {
                                        b = b.header(*k, *v);
                                    }
                                    Ok(b.body(Full::new(Bytes::from_static(text.as_bytes())))
                                        .unwrap())
                                }
                                Reply::Close => Err("close"),
                                Reply::Hang => std::future::pending().await,
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            requests,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn ok(_: &[u8]) -> Reply {
    Reply::Status(StatusCode::OK, &[], OK_BODY)
}

fn unavailable(_: &[u8]) -> Reply {
    Reply::Status(
        StatusCode::SERVICE_UNAVAILABLE,
        &[],
        r#"{"error":"overloaded"}"#,
    )
}

/// A port nothing listens on.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

// === Hale ===

struct Hale {
    addr: SocketAddr,
    store: Arc<HealthStore>,
    proxy: Proxy,
}

/// Endpoints as (name, url, priority), serving `m`; trusted healthy (no background checks).
async fn hale(endpoints: &[(&str, String, i32)], config: ProxyConfig) -> Hale {
    let eps = endpoints
        .iter()
        .map(|(name, url, priority)| {
            let mut c = EndpointConfig::new(*name, url.clone(), EndpointKind::Vllm);
            c.priority = *priority;
            c.models = vec!["m".to_owned()];
            c.resolve("e").unwrap()
        })
        .collect();
    let health = HealthConfig {
        background: false,
        ..Default::default()
    };
    let store = Arc::new(HealthStore::new("pod-test", eps, &health, Now::capture()));
    let proxy = Proxy::new(store.clone(), &config, ServerSettings::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = proxy.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Hale { addr, store, proxy }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    }
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Got {
    fn endpoint(&self) -> &str {
        self.headers
            .get("x-hale-endpoint")
            .map_or("", |v| v.to_str().unwrap())
    }
}

async fn post(addr: SocketAddr, body: &str) -> Got {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", "hale.test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const OK_BODY: &str = r#"{"id":"x","object":"chat.completion","choices":[]}"#;

// === tests ===

#[tokio::test]
async fn a_503_is_retried_once_on_the_other_endpoint() {
    let sick = Backend::start(unavailable).await;
    let well = Backend::start(ok).await;
    let h = hale(
        &[("sick", sick.url(), 200), ("well", well.url(), 100)],
        config(),
    )
    .await;
    for i in 0..3 {
        let got = post(h.addr, CHAT).await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text);
        assert_eq!(got.endpoint(), "well");
        assert_eq!(got.text, OK_BODY);
    }
    assert_eq!(sick.requests(), 3, "each request tried the sick one first");
    assert_eq!(well.requests(), 3);
    assert_eq!(
        sick.connections(),
        1,
        "the small error body was read whole, so its connection was kept"
    );
    let f = h.proxy.retry_figures("m");
    assert_eq!((f.retries, f.budget_exhausted), (3, 0));
    assert_eq!(
        h.store.snapshot().get("sick").unwrap().health.state,
        HealthState::Healthy,
        "a 503 is not a passive failure"
    );
}

#[tokio::test]
async fn a_request_the_backend_dropped_is_not_retried() {
    let closing = Backend::start(|_| Reply::Close).await;
    let well = Backend::start(ok).await;
    let h = hale(
        &[("closing", closing.url(), 200), ("well", well.url(), 100)],
        config(),
    )
    .await;
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    assert!(got.text.contains("endpoint 'closing'"), "{}", got.text);
    assert_eq!(closing.requests(), 1);
    assert_eq!(well.requests(), 0, "never sent anywhere else");
    assert_eq!(h.proxy.retry_figures("m").retries, 0);
}

#[tokio::test]
async fn the_budget_refuses_a_retry_and_the_answer_goes_out_as_it_was() {
    // A retry budget of exactly one retry in flight.
    let sick = Backend::start(|_| {
        Reply::Status(
            StatusCode::SERVICE_UNAVAILABLE,
            &[("x-backend", "sick")],
            r#"{"error":"sick"}"#,
        )
    })
    .await;
    let spare = Backend::start(|body| {
        if body.windows(4).any(|w| w == b"hang") {
            Reply::Hang
        } else {
            ok(body)
        }
    })
    .await;
    let h = hale(
        &[("sick", sick.url(), 200), ("spare", spare.url(), 100)],
        ProxyConfig {
            retry_budget: RetryBudget {
                percent: 0,
                min_concurrent: 1,
            },
            ..config()
        },
    )
    .await;
    // The first request's retry hangs on the spare, holding the only place in the budget.
    let addr = h.addr;
    let hanging = tokio::spawn(async move {
        post(
            addr,
            r#"{"model":"m","messages":[{"role":"user","content":"hang"}]}"#,
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while spare.requests() == 0 {
        assert!(
            Instant::now() < deadline,
            "the retry never reached the spare"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 503, "{}", got.text);
    assert_eq!(got.text, r#"{"error":"sick"}"#, "the backend's own answer");
    assert_eq!(got.headers["x-backend"], "sick");
    assert_eq!(got.endpoint(), "sick");
    assert_eq!(spare.requests(), 1, "no second retry");
    let f = h.proxy.retry_figures("m");
    assert_eq!((f.retries, f.budget_exhausted), (1, 1));
    hanging.abort();

    // A zero budget retries nothing at all.
    let h = hale(
        &[("sick", sick.url(), 200), ("spare", spare.url(), 100)],
        ProxyConfig {
            retry_budget: RetryBudget {
                percent: 0,
                min_concurrent: 0,
            },
            ..config()
        },
    )
    .await;
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 503);
    assert_eq!(h.proxy.retry_figures("m").budget_exhausted, 1);
}

#[tokio::test]
async fn when_the_retry_fails_too_the_client_gets_the_last_backend_answer() {
    let a =
        Backend::start(|_| Reply::Status(StatusCode::BAD_GATEWAY, &[], r#"{"error":"a"}"#)).await;
    let b =
        Backend::start(|_| Reply::Status(StatusCode::SERVICE_UNAVAILABLE, &[], r#"{"error":"b"}"#))
            .await;
    let h = hale(&[("a", a.url(), 200), ("b", b.url(), 100)], config()).await;
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 503, "{}", got.text);
    assert_eq!(got.text, r#"{"error":"b"}"#);
    assert_eq!(got.endpoint(), "b");
    assert_eq!(
        (a.requests(), b.requests()),
        (1, 1),
        "one retry, not a third try"
    );

    // The retry's endpoint refuses the connection and nothing else is left: the answer the
    // retry replaced goes out, whole.
    let sick = Backend::start(unavailable).await;
    let h = hale(
        &[("sick", sick.url(), 200), ("dead", dead_url(), 100)],
        config(),
    )
    .await;
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 503, "{}", got.text);
    assert_eq!(got.text, r#"{"error":"overloaded"}"#);
    assert_eq!(got.endpoint(), "sick");
    assert_eq!(got.headers["content-length"], "22");
    assert_eq!(
        h.store.snapshot().get("dead").unwrap().health.state,
        HealthState::Unhealthy,
        "the refused connection still marks the endpoint"
    );
}

#[tokio::test]
async fn a_429_holds_the_endpoint_out_until_its_retry_after() {
    let limited = Backend::start(|_| {
        Reply::Status(
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", "30")],
            r#"{"error":"slow down"}"#,
        )
    })
    .await;
    let well = Backend::start(ok).await;
    let h = hale(
        &[("limited", limited.url(), 200), ("well", well.url(), 100)],
        config(),
    )
    .await;
    let before = Instant::now();
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 200, "retried: {}", got.text);
    assert_eq!(got.endpoint(), "well");
    let snap = h.store.snapshot();
    let health = &snap.get("limited").unwrap().health;
    let until = health.rate_limited_until.unwrap();
    assert!(
        until >= before + Duration::from_secs(29)
            && until <= Instant::now() + Duration::from_secs(30),
        "held for its Retry-After"
    );
    assert_eq!(health.state, HealthState::Healthy, "not a failure");
    assert_eq!(health.consecutive_failures, 0);
    for _ in 0..3 {
        assert_eq!(post(h.addr, CHAT).await.endpoint(), "well");
    }
    assert_eq!(limited.requests(), 1, "held out: no more requests reach it");

    // Alone, its 429 reaches the client as it was, Retry-After included; a hostile
    // Retry-After holds it for no longer than max_backoff (60 s by default).
    let hostile = Backend::start(|_| {
        Reply::Status(
            StatusCode::TOO_MANY_REQUESTS,
            &[("retry-after", "99999999999")],
            r#"{"error":"go away"}"#,
        )
    })
    .await;
    let h = hale(&[("hostile", hostile.url(), 100)], config()).await;
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 429);
    assert_eq!(got.headers["retry-after"], "99999999999");
    let until = h
        .store
        .snapshot()
        .get("hostile")
        .unwrap()
        .health
        .rate_limited_until
        .unwrap();
    assert!(until <= Instant::now() + Duration::from_secs(60), "bounded");
}

#[tokio::test]
async fn a_request_waits_for_an_endpoint_about_to_recover() {
    let well = Backend::start(ok).await;
    let h = hale(
        &[("only", well.url(), 100)],
        ProxyConfig {
            queue_timeout: Duration::from_secs(5),
            ..config()
        },
    )
    .await;
    // Unhealthy, with its next check due in a moment.
    h.store
        .passive_failure("only", &CheckResult::ConnectRefused, Now::capture());
    h.store
        .note_next_check("only", SystemTime::now() + Duration::from_millis(200));
    let started = Instant::now();
    let addr = h.addr;
    let request = tokio::spawn(async move { post(addr, CHAT).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!request.is_finished(), "waiting, not refused");
    // The check passes: recovering, routable for one request at a time.
    h.store.observe(
        "only",
        &CheckOutcome::ok(Duration::from_millis(1)),
        Now::capture(),
    );
    let got = request.await.unwrap();
    let took = started.elapsed();
    assert_eq!(got.status, 200, "{}", got.text);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "woke on the change, not at the timeout: {took:?}"
    );
    assert_eq!(well.requests(), 1);
}

#[tokio::test]
async fn a_wait_gives_up_at_queue_timeout_and_nothing_worth_waiting_is_refused_at_once() {
    let well = Backend::start(ok).await;
    let h = hale(
        &[("only", well.url(), 100)],
        ProxyConfig {
            queue_timeout: Duration::from_millis(400),
            ..config()
        },
    )
    .await;
    h.store
        .passive_failure("only", &CheckResult::ConnectRefused, Now::capture());
    h.store
        .note_next_check("only", SystemTime::now() + Duration::from_millis(100));
    let started = Instant::now();
    let got = post(h.addr, CHAT).await;
    let took = started.elapsed();
    assert_eq!(got.status, 503, "{}", got.text);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(2),
        "gave up at queue_timeout: {took:?}"
    );

    // Down for longer than the wait (an outage, not a restart): the 503 at once, even with
    // a check due.
    h.store
        .note_next_check("only", SystemTime::now() + Duration::from_millis(50));
    let started = Instant::now();
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 503);
    assert!(started.elapsed() < Duration::from_millis(300));

    // Its next check beyond the wait: nothing to wait for, the 503 at once.
    h.store
        .note_next_check("only", SystemTime::now() + Duration::from_secs(60));
    let started = Instant::now();
    let got = post(h.addr, CHAT).await;
    assert_eq!(got.status, 503);
    assert!(started.elapsed() < Duration::from_millis(300));
    // Drained: never waited for.
    h.store.note_next_check("only", SystemTime::now());
    h.store.set_drained("only", true);
    let started = Instant::now();
    assert_eq!(post(h.addr, CHAT).await.status, 503);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(well.requests(), 0);

    // queue_timeout 0 turns waiting off.
    let h = hale(
        &[("only", well.url(), 100)],
        ProxyConfig {
            queue_timeout: Duration::ZERO,
            ..config()
        },
    )
    .await;
    h.store
        .passive_failure("only", &CheckResult::ConnectRefused, Now::capture());
    h.store.note_next_check("only", SystemTime::now());
    let started = Instant::now();
    assert_eq!(post(h.addr, CHAT).await.status, 503);
    assert!(started.elapsed() < Duration::from_millis(300));
}
