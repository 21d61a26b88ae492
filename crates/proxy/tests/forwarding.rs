//! The proxy over real loopback HTTP: a `Proxy` router served by axum, in front of small
//! hyper servers that record what reaches them and answer as each test needs (JSON, a stream
//! fed chunk by chunk from the test, a 5xx, a connection closed without an answer).
//!
//! These cover what needs a finger on the backend's side of the wire: the exact headers and
//! body a backend receives, failover on connect failures and the passive marking in core, no
//! replay of a request a backend dropped (502) except on a stale keep-alive connection, a
//! malformed answer (502), the first-byte (504) and idle (cut) deadlines, the breaker
//! counting 5xx answers, chunks forwarded one by one, and a client's disconnect reaching the
//! backend. A few backends are raw TCP (`RawBackend`) where the exact bytes or the moment a
//! connection closes matter. The end-to-end suite (`tests/tests/proxy.rs`)
//! runs the same paths through the real binary and mockllm.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

use bytes::Bytes;
use hale_core::{
    BreakerState, EndpointConfig, EndpointKind, HealthConfig, HealthState, HealthStore, Now,
    Reason, Secret, Source,
};
use hale_proxy::{Proxy, ProxyConfig, ServerSettings};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

// === a backend ===

/// What a backend saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// How a backend answers.
enum Reply {
    Json(StatusCode, &'static str),
    /// A streamed body; the test feeds it through the sender it got back.
    Stream(mpsc::Receiver<Bytes>),
    /// Close the connection without an answer.
    Close,
    /// Never answer (until the client leaves).
    Hang,
}

type Answer = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Backend {
    async fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer: Answer = Arc::new(answer);
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, log) = (answer.clone(), log.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (answer, log) = (answer.clone(), log.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let seen = Seen {
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                body,
                            };
                            log.lock().unwrap().push(seen.clone());
                            match answer(&seen) {
                                Reply::Json(status, text) => Ok(Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .header("connection", "keep-alive")
                                    .header("keep-alive", "timeout=5")
                                    .body(Out::Full(Some(Bytes::from_static(text.as_bytes()))))
                                    .unwrap()),
                                Reply::Stream(rx) => Ok(Response::builder()
                                    .header("content-type", "text/event-stream")
                                    .body(Out::Channel(rx))
                                    .unwrap()),
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
        Self { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A backend's response body: whole, or fed by the test.
enum Out {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Out {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut *self {
            Out::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Out::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }
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

/// An endpoint: (name, url, kind, priority, models, api_key).
type Ep<'a> = (&'a str, String, EndpointKind, i32, &'a [&'a str], &'a str);

async fn hale(endpoints: &[Ep<'_>], server: ServerSettings) -> Hale {
    let config = ProxyConfig {
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    hale_with(resolve_all(endpoints), server, &config).await
}

fn resolve_all(endpoints: &[Ep<'_>]) -> Vec<hale_core::Endpoint> {
    endpoints
        .iter()
        .map(|(name, url, kind, priority, models, key)| {
            let mut c = EndpointConfig::new(*name, url.clone(), *kind);
            c.priority = *priority;
            c.models = models.iter().map(|m| (*m).to_owned()).collect();
            c.api_key = Secret::new(*key);
            c.resolve("e").unwrap()
        })
        .collect()
}

async fn hale_with(
    eps: Vec<hale_core::Endpoint>,
    server: ServerSettings,
    config: &ProxyConfig,
) -> Hale {
    // Background checks off: endpoints are trusted healthy until a request fails on them.
    let health = HealthConfig {
        background: false,
        ..Default::default()
    };
    let store = Arc::new(HealthStore::new("pod-test", eps, &health, Now::capture()));
    let proxy = Proxy::new(store.clone(), config, server);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = proxy.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Hale { addr, store, proxy }
}

impl Hale {
    fn state(&self, name: &str) -> (HealthState, Option<Reason>, Source) {
        let snap = self.store.snapshot();
        let h = &snap.get(name).unwrap().health;
        (h.state, h.reason.clone(), h.source)
    }
}

/// A whole answer from Hale.
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: serde_json::Value,
    text: String,
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Got {
    request("POST", addr, path, headers, body).await
}

async fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Got {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "hale.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    }
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const OK_BODY: &str = r#"{"id":"x","object":"chat.completion","choices":[]}"#;

fn ok(_: &Seen) -> Reply {
    Reply::Json(StatusCode::OK, OK_BODY)
}

// === tests ===

#[tokio::test]
async fn forwards_the_body_and_cleans_the_headers() {
    let backend = Backend::start(|_| Reply::Json(StatusCode::OK, OK_BODY)).await;
    let h = hale(
        &[(
            "a",
            backend.url(),
            EndpointKind::Vllm,
            100,
            &["m"],
            "sk-backend",
        )],
        ServerSettings::default(),
    )
    .await;
    let got = post(
        h.addr,
        "/v1/chat/completions?trace=1",
        &[
            ("authorization", "Bearer client-key"),
            ("connection", "x-secret-hop"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic x"),
            ("x-custom", "kept"),
            ("x-request-id", "client-id-1"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.text, OK_BODY);
    assert_eq!(got.headers["x-hale-endpoint"], "a");
    assert_eq!(got.headers["x-request-id"], "client-id-1");
    assert!(
        got.headers.get("keep-alive").is_none(),
        "hop-by-hop from the backend"
    );

    let seen = backend.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/v1/chat/completions");
    assert_eq!(&s.body[..], CHAT.as_bytes(), "the body goes byte for byte");
    assert_eq!(s.headers["authorization"], "Bearer sk-backend");
    assert_eq!(s.headers["host"], backend.addr.to_string());
    assert_eq!(s.headers["x-request-id"], "client-id-1");
    assert_eq!(s.headers["x-hale-pod"], "pod-test");
    assert_eq!(s.headers["x-custom"], "kept");
    for gone in ["x-secret-hop", "proxy-authorization"] {
        assert!(s.headers.get(gone).is_none(), "{gone} reached the backend");
    }

    // Without an id of its own the client gets a generated one, the backend the same.
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    let id = got.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(backend.seen()[1].headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn client_authorization_passes_only_when_nobody_else_owns_it() {
    let backend = Backend::start(ok).await;
    let open = hale(
        &[("a", backend.url(), EndpointKind::Openai, 100, &["m"], "")],
        ServerSettings::default(),
    )
    .await;
    post(
        open.addr,
        "/v1/chat/completions",
        &[("authorization", "Bearer user-key")],
        CHAT,
    )
    .await;
    assert_eq!(
        backend.seen()[0].headers["authorization"],
        "Bearer user-key"
    );

    // With gateway keys, the client's header held Hale's key: it never reaches a backend.
    let guarded = hale(
        &[("a", backend.url(), EndpointKind::Openai, 100, &["m"], "")],
        ServerSettings {
            api_keys: vec![Secret::new("sk-hale")],
            ..Default::default()
        },
    )
    .await;
    let got = post(
        guarded.addr,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-hale")],
        CHAT,
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(backend.seen()[1].headers.get("authorization").is_none());
    for auth in [None, Some("Bearer sk-wrong")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let got = post(guarded.addr, "/v1/chat/completions", &headers, CHAT).await;
        assert_eq!(got.status, 401);
        assert_eq!(got.headers["www-authenticate"], "Bearer");
        assert_eq!(got.body["error"]["type"], "authentication_error");
        let got = request("GET", guarded.addr, "/v1/models", &headers, "").await;
        assert_eq!(got.status, 401, "the catalog is guarded too");
    }
    assert_eq!(backend.seen().len(), 2, "refused requests reach no backend");
}

#[tokio::test]
async fn a_refused_connection_fails_over_and_marks_the_endpoint() {
    let live = Backend::start(ok).await;
    let h = hale(
        &[
            ("dead", dead_url(), EndpointKind::Vllm, 200, &["m"], ""),
            ("live", live.url(), EndpointKind::Vllm, 100, &["m"], ""),
        ],
        ServerSettings::default(),
    )
    .await;
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.headers["x-hale-endpoint"], "live");
    assert_eq!(
        h.state("dead"),
        (
            HealthState::Unhealthy,
            Some(Reason::ConnectRefused),
            Source::Passive
        )
    );
    assert_eq!(h.state("live").0, HealthState::Healthy);
    // Marked once: the next requests go straight to the live one.
    for _ in 0..3 {
        let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
        assert_eq!(got.headers["x-hale-endpoint"], "live");
    }
    assert_eq!(live.seen().len(), 4);
    let events = h.store.events();
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test]
async fn a_request_the_backend_dropped_is_not_sent_again() {
    let closing = Backend::start(|_| Reply::Close).await;
    let live = Backend::start(ok).await;
    let h = hale(
        &[
            (
                "closing",
                closing.url(),
                EndpointKind::Vllm,
                200,
                &["m"],
                "",
            ),
            ("live", live.url(), EndpointKind::Vllm, 100, &["m"], ""),
        ],
        ServerSettings::default(),
    )
    .await;
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    assert_eq!(got.body["error"]["type"], "bad_gateway_error");
    assert_eq!(got.body["error"]["code"], 502);
    let message = got.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("endpoint 'closing'"), "{message}");
    assert_eq!(got.headers["content-type"], "application/json");
    assert_eq!(
        closing.seen().len(),
        1,
        "sent once, on a new connection: not again"
    );
    assert!(live.seen().is_empty(), "not sent to another endpoint");
    // One dropped request does not mark the endpoint: it stays in rotation.
    assert_eq!(h.state("closing").0, HealthState::Healthy);
    assert!(h.store.events().is_empty());
    assert_eq!(h.proxy.breaker_state("closing"), BreakerState::Closed);

    // A connect failure still moves on (and marks); a drop after that still ends it.
    let closing2 = Backend::start(|_| Reply::Close).await;
    let h = hale(
        &[
            ("dead", dead_url(), EndpointKind::Vllm, 200, &["m"], ""),
            (
                "closing",
                closing2.url(),
                EndpointKind::Vllm,
                100,
                &["m"],
                "",
            ),
        ],
        ServerSettings::default(),
    )
    .await;
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    assert_eq!(closing2.seen().len(), 1);
    assert_eq!(h.state("dead").0, HealthState::Unhealthy);
    assert_eq!(h.state("closing").0, HealthState::Healthy);

    // Every candidate unreachable: 503 with Retry-After, each tried once.
    let h = hale(
        &[
            ("dead", dead_url(), EndpointKind::Vllm, 200, &["m"], ""),
            ("dead2", dead_url(), EndpointKind::Vllm, 100, &["m"], ""),
        ],
        ServerSettings::default(),
    )
    .await;
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, 503, "{}", got.text);
    assert_eq!(got.headers["retry-after"], "5");
    assert_eq!(got.body["error"]["type"], "service_unavailable_error");
    assert_eq!(got.body["error"]["code"], 503);
    assert_eq!(h.state("dead").0, HealthState::Unhealthy);
    assert_eq!(h.state("dead2").0, HealthState::Unhealthy);
}

#[tokio::test]
async fn repeated_drops_open_the_breaker_and_the_next_endpoint_takes_over() {
    let closing = Backend::start(|_| Reply::Close).await;
    let live = Backend::start(ok).await;
    let h = hale(
        &[
            (
                "closing",
                closing.url(),
                EndpointKind::Vllm,
                200,
                &["m"],
                "",
            ),
            ("live", live.url(), EndpointKind::Vllm, 100, &["m"], ""),
        ],
        ServerSettings::default(),
    )
    .await;
    // The default breaker opens after 5 consecutive failures.
    for i in 0..5 {
        let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "request {i}");
    }
    assert_eq!(h.proxy.breaker_state("closing"), BreakerState::Open);
    assert_eq!(closing.seen().len(), 5, "each request sent once");
    // One drop does not mark the endpoint; five in a row are an outlier (proxy.outlier
    // defaults), ejected since "live" keeps the model served.
    let (state, reason, _) = h.state("closing");
    assert_eq!(
        (state, reason),
        (HealthState::Unhealthy, Some(Reason::Outlier))
    );
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(served_by(&got), "live");
}

#[tokio::test]
async fn five_server_errors_pass_through_then_open_the_breaker() {
    let failing =
        Backend::start(|_| Reply::Json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"boom"}"#))
            .await;
    let spare = Backend::start(ok).await;
    let h = hale(
        &[
            (
                "failing",
                failing.url(),
                EndpointKind::Vllm,
                200,
                &["m"],
                "",
            ),
            ("spare", spare.url(), EndpointKind::Vllm, 100, &["m"], ""),
        ],
        ServerSettings::default(),
    )
    .await;
    for i in 0..5 {
        let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
        assert_eq!(got.status, 500, "request {i}: the 5xx passes through");
        assert_eq!(got.text, r#"{"error":"boom"}"#);
        assert_eq!(got.headers["x-hale-endpoint"], "failing");
    }
    assert_eq!(h.proxy.breaker_state("failing"), BreakerState::Open);
    assert_eq!(
        h.state("failing").0,
        HealthState::Healthy,
        "5xx is not a passive failure"
    );
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.headers["x-hale-endpoint"], "spare");
    assert_eq!(failing.seen().len(), 5);
    assert_eq!(h.proxy.breaker_state("spare"), BreakerState::Closed);
    assert_eq!(h.proxy.requests_total("m"), 6);
}

#[tokio::test]
async fn streams_chunk_by_chunk_and_a_gone_client_cancels_upstream() {
    let (senders_tx, mut senders_rx) = mpsc::unbounded_channel::<mpsc::Sender<Bytes>>();
    let backend = Backend::start(move |_| {
        let (tx, rx) = mpsc::channel(1);
        senders_tx.send(tx).unwrap();
        Reply::Stream(rx)
    })
    .await;
    let h = hale(
        &[("a", backend.url(), EndpointKind::Vllm, 100, &["m"], "")],
        ServerSettings::default(),
    )
    .await;

    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::post("/v1/chat/completions")
        .header("host", "hale.test")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true}"#,
        )))
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    let upstream = senders_rx.recv().await.unwrap();
    upstream
        .send(Bytes::from_static(b"data: one\n\n"))
        .await
        .unwrap();
    let resp = pending.await.unwrap().unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();

    // Each chunk reaches the client before the backend sends the next one.
    for chunk in ["data: one\n\n", "data: two\n\n", "data: three\n\n"] {
        if chunk != "data: one\n\n" {
            upstream.send(Bytes::from(chunk)).await.unwrap();
        }
        let frame = timeout(Duration::from_secs(2), body.frame())
            .await
            .expect("the chunk was held back")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    assert_eq!(h.proxy.outstanding("a"), 1, "a stream counts while it runs");

    // The client leaves mid-stream: the backend's body is dropped soon after.
    drop(body);
    conn.abort();
    timeout(Duration::from_secs(2), upstream.closed())
        .await
        .expect("the backend never saw the client go");
    let deadline = Instant::now() + Duration::from_secs(2);
    while h.proxy.outstanding("a") != 0 {
        assert!(Instant::now() < deadline, "the claim outlived the stream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let backend = Backend::start(ok).await;
    let h = hale(
        &[
            ("v", backend.url(), EndpointKind::Vllm, 100, &["m"], ""),
            (
                "o",
                dead_url(),
                EndpointKind::Ollama,
                100,
                &["llama3:latest"],
                "",
            ),
        ],
        ServerSettings {
            max_body: 256,
            ..Default::default()
        },
    )
    .await;
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        (
            "/v1/chat/completions",
            "{not json",
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[]}"#,
            StatusCode::BAD_REQUEST,
            "has no `model`",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"nope"}"#,
            StatusCode::NOT_FOUND,
            "model 'nope' is not served",
        ),
        (
            "/api/chat",
            r#"{"model":"m"}"#,
            StatusCode::NOT_FOUND,
            "on an ollama endpoint",
        ),
    ];
    for (path, body, status, message) in cases {
        let got = post(h.addr, path, &[], body).await;
        assert_eq!(got.status, *status, "{path} {body}: {}", got.text);
        if path.starts_with("/api/") {
            // Ollama's clients expect `{"error":"<message>"}`.
            let m = got.body["error"].as_str().unwrap();
            assert!(m.contains(message), "{m}");
        } else {
            let m = got.body["error"]["message"].as_str().unwrap();
            assert!(m.contains(message), "{m}");
            assert_eq!(got.body["error"]["code"], status.as_u16());
        }
        assert_eq!(got.headers["content-type"], "application/json");
        assert_eq!(got.headers["x-request-id"].len(), 32);
    }
    let big = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(300));
    let got = post(h.addr, "/v1/chat/completions", &[], &big).await;
    assert_eq!(got.status, 413);
    assert_eq!(got.body["error"]["type"], "invalid_request_error");

    let got = request("GET", h.addr, "/v1/chat/completions", &[], "").await;
    assert_eq!(got.status, 405);
    assert_eq!(got.headers["allow"], "POST");
    let got = request("GET", h.addr, "/v2/nothing", &[], "").await;
    assert_eq!(got.status, 404);
    assert_eq!(got.body["error"]["message"], "no route for GET /v2/nothing");
    assert!(backend.seen().is_empty(), "none of these reached a backend");
}

#[tokio::test]
async fn absolute_uris_and_host_headers_cannot_choose_the_backend() {
    let configured = Backend::start(ok).await;
    let elsewhere = Backend::start(ok).await;
    let h = hale(
        &[("a", configured.url(), EndpointKind::Vllm, 100, &["m"], "")],
        ServerSettings::default(),
    )
    .await;
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let target = elsewhere.addr;
    let raw = format!(
        "POST http://{target}/v1/chat/completions HTTP/1.1\r\nhost: {target}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CHAT}",
        CHAT.len()
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = String::new();
    timeout(Duration::from_secs(5), s.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-hale-endpoint: a"), "{answer}");
    assert_eq!(configured.seen().len(), 1);
    assert!(elsewhere.seen().is_empty());
    assert_eq!(
        configured.seen()[0].headers["host"],
        configured.addr.to_string()
    );
}

#[tokio::test]
async fn catalogs_list_routable_models_only() {
    let h = hale(
        &[
            (
                "v",
                dead_url(),
                EndpointKind::Vllm,
                100,
                &["m-v", "shared"],
                "",
            ),
            (
                "o1",
                dead_url(),
                EndpointKind::Ollama,
                100,
                &["llama3:latest", "shared"],
                "",
            ),
            (
                "o2",
                dead_url(),
                EndpointKind::Ollama,
                100,
                &["llama3", "qwen"],
                "",
            ),
        ],
        ServerSettings::default(),
    )
    .await;
    let got = request("GET", h.addr, "/v1/models", &[], "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["object"], "list");
    let ids: Vec<&str> = got.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama3:latest", "m-v", "qwen", "shared"]);
    assert_eq!(got.body["data"][0]["object"], "model");

    let got = request("GET", h.addr, "/api/tags", &[], "").await;
    let names: Vec<&str> = got.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["llama3:latest", "qwen", "shared"],
        "ollama endpoints only"
    );

    // An endpoint out of rotation takes its models out of the catalog.
    h.store.passive_failure(
        "o2",
        &hale_core::CheckResult::ConnectRefused,
        Now::capture(),
    );
    let got = request("GET", h.addr, "/api/tags", &[], "").await;
    let names: Vec<&str> = got.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["llama3:latest", "shared"]);
}

fn resolved(name: &str, url: &str, priority: i32) -> hale_core::Endpoint {
    let mut c = EndpointConfig::new(name, url, EndpointKind::Vllm);
    c.priority = priority;
    c.models = vec!["m".to_owned()];
    c.resolve("e").unwrap()
}

fn served_by(got: &Got) -> String {
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    got.headers["x-hale-endpoint"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_reload_adds_changes_and_removes_endpoints_and_drains_hold() {
    let one = Backend::start(ok).await;
    let two = Backend::start(ok).await;
    let h = hale(
        &[("a", one.url(), EndpointKind::Vllm, 100, &["m"], "")],
        ServerSettings::default(),
    )
    .await;
    assert_eq!(
        served_by(&post(h.addr, "/v1/chat/completions", &[], CHAT).await),
        "a"
    );

    // b added at a higher priority: it takes the traffic at once (trusted, no checks here).
    let change = h.store.reconcile(
        vec![
            resolved("a", &one.url(), 100),
            resolved("b", &two.url(), 200),
        ],
        Now::capture(),
    );
    assert_eq!(change.added.len(), 1);
    assert_eq!(h.proxy.reload(), 1, "only b needs a new runtime");
    assert_eq!(
        served_by(&post(h.addr, "/v1/chat/completions", &[], CHAT).await),
        "b"
    );

    // Drained, b gets nothing new; the model stays listed through a.
    h.store.set_drained("b", true);
    for _ in 0..5 {
        assert_eq!(
            served_by(&post(h.addr, "/v1/chat/completions", &[], CHAT).await),
            "a"
        );
    }
    h.store.set_drained("b", false);
    assert_eq!(
        served_by(&post(h.addr, "/v1/chat/completions", &[], CHAT).await),
        "b"
    );

    // a removed: gone from the table; b keeps its runtime.
    h.store
        .reconcile(vec![resolved("b", &two.url(), 200)], Now::capture());
    assert_eq!(h.proxy.reload(), 0);
    assert_eq!(h.proxy.outstanding("a"), 0);
    let before = one.seen().len();
    // b moves to the other backend: a new runtime, and requests follow it there.
    h.store
        .reconcile(vec![resolved("b", &one.url(), 200)], Now::capture());
    assert_eq!(h.proxy.reload(), 1);
    assert_eq!(
        served_by(&post(h.addr, "/v1/chat/completions", &[], CHAT).await),
        "b"
    );
    assert_eq!(one.seen().len(), before + 1, "served by the new URL");

    // Removing every endpoint leaves a 404 for the model, not a panic.
    h.store.reconcile(Vec::new(), Now::capture());
    h.proxy.reload();
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND, "{}", got.text);
}

#[tokio::test]
async fn a_body_timeout_too_long_for_a_clock_still_serves() {
    // Config bounds server.header_timeout at a day; settings built in code are not
    // validated, and the request's arrival plus this would overflow `Instant` and panic.
    let backend = Backend::start(ok).await;
    let h = hale(
        &[("a", backend.url(), EndpointKind::Vllm, 100, &["m"], "")],
        ServerSettings {
            body_timeout: Duration::MAX,
            ..Default::default()
        },
    )
    .await;
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
}

#[tokio::test]
async fn a_body_slower_than_the_limit_gets_408_and_never_reaches_a_backend() {
    let backend = Backend::start(ok).await;
    let h = hale(
        &[("a", backend.url(), EndpointKind::Vllm, 100, &["m"], "")],
        ServerSettings {
            body_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    let mut tcp = TcpStream::connect(h.addr).await.unwrap();
    let sent = Instant::now();
    tcp.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let read = timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 5 s");
    let waited = sent.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "answered after {waited:?}"
    );
    assert!(backend.seen().is_empty());
    // A normal request on a new connection is unaffected.
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
}

// === raw backends: exact bytes, and connections closed on the test's word ===

/// What a raw backend does with one request body: write these bytes (and keep the connection
/// for the next request), or close the connection without a word.
type RawAnswer = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

/// A TCP backend that speaks just enough HTTP/1.1 by hand, records which connection carried
/// each request body, and closes its idle connections when told.
struct RawBackend {
    addr: SocketAddr,
    /// (connection number, body) per request, in arrival order.
    seen: Arc<Mutex<Vec<(usize, String)>>>,
    close_idle: Arc<tokio::sync::Notify>,
    closed: tokio::sync::Mutex<mpsc::UnboundedReceiver<usize>>,
}

impl RawBackend {
    async fn start(answer: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let close_idle = Arc::new(tokio::sync::Notify::new());
        let (closed_tx, closed_rx) = mpsc::unbounded_channel();
        let answer: RawAnswer = Arc::new(answer);
        let (log, close) = (seen.clone(), close_idle.clone());
        tokio::spawn(async move {
            for id in 0.. {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, log, close, closed_tx) = (
                    answer.clone(),
                    log.clone(),
                    close.clone(),
                    closed_tx.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let body = tokio::select! {
                            body = read_request(&mut stream) => body,
                            () = close.notified() => None,
                        };
                        let Some(body) = body else { break };
                        log.lock().unwrap().push((id, body.clone()));
                        match answer(&body) {
                            // An answer ending in `CLOSE`: written without it, then closed.
                            Some(bytes) if bytes.ends_with(b"CLOSE") => {
                                let _ = stream.write_all(&bytes[..bytes.len() - 5]).await;
                                break;
                            }
                            Some(bytes) => {
                                if stream.write_all(&bytes).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        }
                    }
                    drop(stream);
                    let _ = closed_tx.send(id);
                });
            }
        });
        Self {
            addr,
            seen,
            close_idle,
            closed: tokio::sync::Mutex::new(closed_rx),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<(usize, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// Closes every idle connection (as a keep-alive timeout would) and waits until one has
    /// closed.
    async fn close_idle_connections(&self) -> usize {
        self.close_idle.notify_waiters();
        // Fails the test if none closes within 2 s.
        timeout(Duration::from_secs(2), self.closed.lock().await.recv())
            .await
            .unwrap()
            .unwrap()
    }
}

/// Reads one request (head, then a `content-length` body); `None` at the end of input.
async fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if data.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&data[end + 4..end + 4 + len]).into_owned());
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

fn json_answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chat_with(content: &str) -> String {
    format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{content}"}}]}}"#)
}

#[tokio::test]
async fn a_stale_keep_alive_connection_is_retried_once_and_a_read_request_is_not() {
    let backend = RawBackend::start(|body| {
        if body.contains("query-of-death") {
            None
        } else {
            Some(json_answer(OK_BODY))
        }
    })
    .await;
    let h = hale(
        &[("a", backend.url(), EndpointKind::Vllm, 100, &["m"], "")],
        ServerSettings::default(),
    )
    .await;
    let got = post(h.addr, "/v1/chat/completions", &[], &chat_with("one")).await;
    assert_eq!(got.status, 200, "{}", got.text);

    // The backend closes the idle connection just before Hale reuses it: the request goes
    // out on it, meets the end of input at once, and is sent again on a new connection.
    assert_eq!(backend.close_idle_connections().await, 0);
    let got = post(h.addr, "/v1/chat/completions", &[], &chat_with("two")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let seen = backend.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].0, 1, "the second request came on a new connection");
    assert_eq!(h.state("a").0, HealthState::Healthy);
    assert_eq!(h.proxy.breaker_state("a"), BreakerState::Closed);

    // A request the backend read and then dropped, on a reused connection: not again.
    let got = post(
        h.addr,
        "/v1/chat/completions",
        &[],
        &chat_with("query-of-death"),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    let deaths = backend
        .seen()
        .iter()
        .filter(|(_, b)| b.contains("query-of-death"))
        .count();
    assert_eq!(deaths, 1, "the dropped request was sent once");
    assert_eq!(h.state("a").0, HealthState::Healthy);
    let got = post(h.addr, "/v1/chat/completions", &[], &chat_with("three")).await;
    assert_eq!(got.status, 200, "{}", got.text);
}

#[tokio::test]
async fn a_malformed_answer_is_a_502_and_goes_nowhere_else() {
    let bad = RawBackend::start(|_| Some(b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec())).await;
    let live = Backend::start(ok).await;
    let h = hale(
        &[
            ("bad", bad.url(), EndpointKind::Vllm, 200, &["m"], ""),
            ("live", live.url(), EndpointKind::Vllm, 100, &["m"], ""),
        ],
        ServerSettings::default(),
    )
    .await;
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text);
    let message = got.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("endpoint 'bad' sent a malformed response"),
        "{message}"
    );
    assert_eq!(bad.seen().len(), 1);
    assert!(live.seen().is_empty());
    assert_eq!(h.state("bad").0, HealthState::Healthy, "the probe decides");
}

#[tokio::test]
async fn no_response_head_within_first_byte_timeout_is_a_504() {
    let hanging = Backend::start(|_| Reply::Hang).await;
    let live = Backend::start(ok).await;
    let eps = resolve_all(&[
        ("hang", hanging.url(), EndpointKind::Vllm, 200, &["m"], ""),
        ("live", live.url(), EndpointKind::Vllm, 100, &["m"], ""),
    ]);
    let config = ProxyConfig {
        first_byte_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let h = hale_with(eps, ServerSettings::default(), &config).await;
    let sent = Instant::now();
    let got = post(h.addr, "/v1/chat/completions", &[], CHAT).await;
    let waited = sent.elapsed();
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT, "{}", got.text);
    assert_eq!(got.body["error"]["type"], "gateway_timeout_error");
    let message = got.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("endpoint 'hang'") && message.contains("300ms"),
        "{message}"
    );
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
        "answered after {waited:?}"
    );
    assert_eq!(hanging.seen().len(), 1);
    assert!(
        live.seen().is_empty(),
        "a sent request is not sent elsewhere"
    );
    assert_eq!(h.state("hang").0, HealthState::Healthy);
}

/// Sends a streamed chat request over raw TCP (`connection: close`) and returns everything
/// the client receives until Hale closes the connection, and how long that took.
async fn raw_exchange(addr: SocketAddr, body: &str) -> (String, Duration) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let sent = Instant::now();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0_u8; 4096];
    let read = timeout(Duration::from_secs(5), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was never closed");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        sent.elapsed(),
    )
}

/// A backend whose every answer is a stream fed through the sender it hands out.
async fn streaming_backend() -> (Backend, mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>) {
    let (senders_tx, senders_rx) = mpsc::unbounded_channel::<mpsc::Sender<Bytes>>();
    let backend = Backend::start(move |_| {
        let (tx, rx) = mpsc::channel(1);
        senders_tx.send(tx).unwrap();
        Reply::Stream(rx)
    })
    .await;
    (backend, senders_rx)
}

/// The stream `text` was cut (never ended cleanly) no sooner than `at_least` after it was
/// sent, and the cut closed the backend's side (the `feeder` waiting for that ends).
async fn assert_cut(
    text: &str,
    took: Duration,
    at_least: Duration,
    feeder: tokio::task::JoinHandle<()>,
) {
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the stream must not end cleanly: {text:?}"
    );
    assert!(
        took >= at_least && took < at_least + Duration::from_secs(3),
        "cut after {took:?}"
    );
    let ended = timeout(Duration::from_secs(2), feeder).await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the backend connection stayed open, or its feeder failed: {ended:?}"
    );
}

#[tokio::test]
async fn a_body_idle_past_idle_timeout_is_cut_never_ended() {
    // A chunked stream that stops after one event.
    let (streaming, mut senders_rx) = streaming_backend().await;
    // A content-length answer that stops after 8 of its 100 bytes.
    let partial = RawBackend::start(|_| {
        Some(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":1,"
                .to_vec(),
        )
    })
    .await;
    let mut eps = resolve_all(&[
        (
            "stream",
            streaming.url(),
            EndpointKind::Vllm,
            100,
            &["m"],
            "",
        ),
        (
            "partial",
            partial.url(),
            EndpointKind::Vllm,
            100,
            &["p"],
            "",
        ),
    ]);
    // The endpoint's own idle_timeout overrides the proxy's (2 minutes by default).
    for e in &mut eps {
        e.idle_timeout = Some(Duration::from_millis(300));
    }
    let h = hale_with(eps, ServerSettings::default(), &ProxyConfig::default()).await;

    let feeder = tokio::spawn(async move {
        let upstream = senders_rx.recv().await.unwrap();
        upstream
            .send(Bytes::from_static(b"data: one\n\n"))
            .await
            .unwrap();
        // Keep the backend's side open (stalled, not closed) until Hale gives up.
        upstream.closed().await;
    });
    let (text, took) = raw_exchange(h.addr, r#"{"model":"m","stream":true}"#).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("data: one"), "{text}");
    assert_cut(&text, took, Duration::from_millis(290), feeder).await;

    let (text, took) = raw_exchange(h.addr, r#"{"model":"p"}"#).await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: 100"), "{head}");
    assert_eq!(
        body, r#"{"id":1,"#,
        "fewer bytes than declared: visibly cut"
    );
    assert!(took < Duration::from_secs(3), "cut after {took:?}");

    // The cut counts on the breaker; the endpoint stays in rotation.
    assert_eq!(h.state("partial").0, HealthState::Healthy);
    assert_eq!(h.proxy.outstanding("stream"), 0);
}

#[tokio::test]
async fn a_stream_that_keeps_flowing_outlives_idle_timeout_and_a_stall_is_cut_after_its_last_chunk()
{
    // Events 100 ms apart, for far longer than the 300 ms idle_timeout: never idle.
    let (streaming, mut senders_rx) = streaming_backend().await;
    let mut eps = resolve_all(&[(
        "stream",
        streaming.url(),
        EndpointKind::Vllm,
        100,
        &["m"],
        "",
    )]);
    eps[0].idle_timeout = Some(Duration::from_millis(300));
    let h = hale_with(eps, ServerSettings::default(), &ProxyConfig::default()).await;

    // 12 events over 1.1 s, then the backend ends the body.
    let feeder = tokio::spawn(async move {
        let upstream = senders_rx.recv().await.unwrap();
        for i in 0..12 {
            let event = format!("data: {i}\n\n");
            upstream.send(Bytes::from(event)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(upstream);
        // The second stream: 4 events 100 ms apart, then a stall with the backend open.
        let upstream = senders_rx.recv().await.unwrap();
        for i in 0..4 {
            let event = format!("data: {i}\n\n");
            upstream.send(Bytes::from(event)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        upstream.closed().await;
    });
    let (text, took) = raw_exchange(h.addr, r#"{"model":"m","stream":true}"#).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("data: 11"), "every event arrives: {text}");
    assert!(text.ends_with("0\r\n\r\n"), "ended cleanly: {text:?}");
    assert!(took >= Duration::from_millis(1100), "took {took:?}");

    let (text, took) = raw_exchange(h.addr, r#"{"model":"m","stream":true}"#).await;
    assert!(text.contains("data: 3"), "{text}");
    // The last event came after about 300 ms; the cut comes idle_timeout after it.
    assert_cut(&text, took, Duration::from_millis(590), feeder).await;
    assert_eq!(h.proxy.outstanding("stream"), 0);
}

#[tokio::test]
async fn a_backend_closing_right_after_each_answer_costs_no_request() {
    // Answers, then closes at once, without `connection: close`: every reused connection is
    // already closed when Hale sends on it.
    let backend = RawBackend::start(|_| {
        let mut answer = json_answer(OK_BODY);
        answer.extend_from_slice(b"CLOSE");
        Some(answer)
    })
    .await;
    let h = hale(
        &[("a", backend.url(), EndpointKind::Vllm, 100, &["m"], "")],
        ServerSettings::default(),
    )
    .await;
    for i in 0..20 {
        let got = post(
            h.addr,
            "/v1/chat/completions",
            &[],
            &chat_with(&i.to_string()),
        )
        .await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text);
    }
    let seen = backend.seen();
    assert_eq!(seen.len(), 20, "each request arrived once: {seen:?}");
}
