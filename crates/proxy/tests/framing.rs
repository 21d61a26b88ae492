//! How the proxy frames backend answers (RFC 9112 §6.3), over real loopback HTTP: a `Proxy`
//! served by axum in front of a raw TCP backend that writes exactly the bytes a test gives it,
//! answering every request on a connection with the same bytes and counting its connections.
//!
//! The reproduction of issue #11 is here: a backend answer with both `Content-Length: 3` and
//! `Transfer-Encoding: chunked` around the chunked body `hello` reached HTTP/1 clients as a
//! complete-looking `200` with `content-length: 3` and `hel` (and HTTP/2 clients as a protocol
//! error). The parser's and decoder's cases are covered in depth by their unit tests and the
//! differential property test against hyper's client (`src/upstream/differential.rs`); these
//! tests show the answers a client actually gets.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

use bytes::Bytes;
use hale_core::{EndpointConfig, EndpointKind, HealthConfig, HealthStore, Now};
use hale_proxy::{Proxy, ProxyConfig, ServerSettings};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// A backend answering every request with `answer`, keeping the connection open afterwards
/// (`close`: closing it after the answer instead).
struct RawBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl RawBackend {
    async fn start(answer: &'static [u8], close: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    while read_request(&mut stream).await {
                        if stream.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request (head and `content-length` body); false at the end of the connection.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut byte = [0_u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return false,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = vec![0_u8; len];
    stream.read_exact(&mut body).await.is_ok()
}

async fn hale(backend: SocketAddr) -> SocketAddr {
    let mut c = EndpointConfig::new("a", format!("http://{backend}"), EndpointKind::Vllm);
    c.models = vec!["m".into()];
    let endpoints = vec![c.resolve("e").unwrap()];
    let health = HealthConfig {
        background: false,
        ..Default::default()
    };
    let store = Arc::new(HealthStore::new(
        "pod-test",
        endpoints,
        &health,
        Now::capture(),
    ));
    let config = ProxyConfig {
        connect_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let proxy = Proxy::new(store, &config, ServerSettings::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = proxy.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// The issue's backend answer: a length of 3 around the chunked `hello`.
const BOTH: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

/// What a client got: the status, its `content-length` if any, the body, and whether the body
/// ended cleanly (false: the connection was cut).
#[derive(Debug)]
struct Got {
    status: StatusCode,
    content_length: Option<String>,
    body: Bytes,
    complete: bool,
}

async fn got(resp: http::Response<hyper::body::Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    // Ends or breaks off well within 10 s (a timeout fails the test).
    let collected = timeout(Duration::from_secs(10), body.collect()).await;
    let (body, complete) = match collected.unwrap() {
        Ok(b) => (b.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    Got {
        status: parts.status,
        content_length: parts
            .headers
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_owned()),
        body,
        complete,
    }
}

fn chat() -> Request<Full<Bytes>> {
    Request::post("/v1/chat/completions")
        .header("host", "hale.test")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn content_length_with_chunked_reaches_http1_clients_whole_on_a_kept_alive_connection() {
    let backend = RawBackend::start(BOTH, false).await;
    let addr = hale(backend.addr).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Twice on the same client connection: the first answer must not leave the client's or
    // the backend's connection out of step.
    for round in 0..2 {
        sender.ready().await.unwrap();
        let resp = sender.send_request(chat()).await.unwrap();
        let g = got(resp).await;
        assert_eq!(g.status, StatusCode::OK, "round {round}: {g:?}");
        assert!(g.complete, "round {round}: {g:?}");
        assert_eq!(&g.body[..], b"hello", "round {round}: {g:?}");
        assert_ne!(
            g.content_length.as_deref(),
            Some("3"),
            "round {round}: the backend's length must not be forwarded"
        );
    }
    assert_eq!(
        backend.connections(),
        1,
        "the chunked answer was read to its end, so its connection was reused"
    );
}

#[tokio::test]
async fn content_length_with_chunked_reaches_http2_clients_whole() {
    let backend = RawBackend::start(BOTH, false).await;
    let addr = hale(backend.addr).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = chat();
    *req.uri_mut() = "http://hale.test/v1/chat/completions".parse().unwrap();
    req.headers_mut().remove("host");
    let g = got(sender.send_request(req).await.unwrap()).await;
    assert_eq!(g.status, StatusCode::OK, "{g:?}");
    assert!(g.complete, "{g:?}");
    assert_eq!(&g.body[..], b"hello", "{g:?}");
    assert_ne!(g.content_length.as_deref(), Some("3"));
}

/// Sends one request on a new connection; `None` when the connection was cut before a
/// response head arrived.
async fn post_once(addr: SocketAddr) -> Option<Got> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    match sender.send_request(chat()).await {
        Ok(resp) => Some(got(resp).await),
        Err(_) => None,
    }
}

#[tokio::test]
async fn malformed_lengths_never_reach_the_client_as_an_answer() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 3, 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551616\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let backend = RawBackend::start(answer, false).await;
        let addr = hale(backend.addr).await;
        let g = post_once(addr).await.unwrap();
        let shown = String::from_utf8_lossy(answer);
        // The proxy's mapping makes it a 502 (issue #11); what matters here is that the
        // backend's answer is refused, not relayed.
        assert!(g.status.is_server_error(), "{shown:?}: {g:?}");
        assert!(
            !g.body.windows(3).any(|w| w == b"hel"),
            "{shown:?}: the backend's bytes leaked: {g:?}"
        );
    }
}

#[tokio::test]
async fn a_body_shorter_than_announced_is_cut_not_completed() {
    for answer in [
        // Length 10, five bytes, then the backend closes.
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello"[..],
        // A chunk of 10 announced, five bytes sent.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\nhello",
        // Both, the length matching what arrived: the chunked coding says it is short.
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\na\r\nhello",
        // No last chunk.
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ] {
        let backend = RawBackend::start(answer, true).await;
        let addr = hale(backend.addr).await;
        let g = post_once(addr).await;
        let shown = String::from_utf8_lossy(answer);
        // Cut before or after the head reached the client: either way never complete.
        assert!(
            g.as_ref().is_none_or(|g| !g.complete),
            "{shown:?}: a truncated answer looked complete: {g:?}"
        );
    }
}

#[tokio::test]
async fn an_answer_read_until_close_is_complete_and_its_connection_not_reused() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 3\r\n\r\nhello",
    ] {
        let backend = RawBackend::start(answer, true).await;
        let addr = hale(backend.addr).await;
        for round in 0..2 {
            let g = post_once(addr).await.unwrap();
            let shown = String::from_utf8_lossy(answer);
            assert_eq!(g.status, StatusCode::OK, "{shown:?} round {round}: {g:?}");
            assert!(g.complete, "{shown:?} round {round}: {g:?}");
            assert_eq!(&g.body[..], b"hello", "{shown:?} round {round}: {g:?}");
            assert_eq!(g.content_length, None, "{shown:?} round {round}");
        }
        assert_eq!(backend.connections(), 2, "one connection per answer");
    }
}
