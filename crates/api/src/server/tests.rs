//! Tests of the listener over real loopback sockets: raw TCP clients for the clocks and the
//! head limits (so the test sees exactly what reaches the wire and when the server closes),
//! hyper clients for HTTP/1 and h2c, and a route that streams slowly for the drain.
//!
//! Timing bounds leave room for a busy 2-core machine; each test prints what it measured.

use super::{Limits, MAX_HEADER_BYTES, SETTLE, Server, ServerHandle};
use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use bytes::Bytes;
use hale_testkit::eventually;
use http_body::Frame;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep, timeout};

/// Chunks of `/stream` and the pause before each.
const TICKS: u32 = 5;
const TICK: Duration = Duration::from_millis(100);

/// A body of `left` chunks `tick\n`, one every `every`.
struct Ticks {
    left: u32,
    every: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl Ticks {
    fn new(left: u32, every: Duration) -> Self {
        Self {
            left,
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
        }
    }
}

impl http_body::Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        ready!(self.sleep.as_mut().poll(cx));
        self.left -= 1;
        let next = Instant::now() + self.every;
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

fn app() -> Router {
    Router::new()
        .route("/fast", get(|| async { "ok" }))
        .route(
            "/empty",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .route(
            "/stream",
            get(|| async { Body::new(Ticks::new(TICKS, TICK)) }),
        )
        .route("/frames", post(frames))
}

/// Reads the request body and says how it came: `frames=N largest=L total=T`.
async fn frames(body: Body) -> String {
    let mut body = body;
    let (mut frames, mut largest, mut total) = (0_usize, 0_usize, 0_usize);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames += 1;
            largest = largest.max(data.len());
            total += data.len();
        }
    }
    format!("frames={frames} largest={largest} total={total}")
}

fn limits(header_ms: u64, idle_ms: u64) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(header_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        max_header_bytes: MAX_HEADER_BYTES,
        max_headers: super::MAX_HEADERS,
        stream_coalesce: Duration::ZERO,
    }
}

async fn start(limits: Limits) -> (SocketAddr, ServerHandle) {
    let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, Server::new(listener, app(), limits).spawn())
}

/// Reads until the server closes the connection (EOF or reset), at most `limit`; returns what
/// arrived and when the close came.
async fn read_until_closed<R: tokio::io::AsyncRead + Unpin>(
    tcp: &mut R,
    limit: Duration,
) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    let closed = timeout(limit, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server did not close the connection");
    (got, closed)
}

/// One HTTP/1.1 GET on an open connection, read to the end of a `Content-Length` body;
/// returns the head (lowercased) and the body.
async fn get_on(tcp: &mut TcpStream, path: &str) -> (String, String) {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_answer(tcp).await
}

/// Reads one answer with a `Content-Length` body: its head (lowercased) and body.
async fn read_answer(tcp: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return (head, text[end + 4..end + 4 + length].to_owned());
            }
        }
    }
}

fn millis(d: Duration) -> u128 {
    d.as_millis()
}

// === protocols ===

#[tokio::test]
async fn serves_http1_and_h2c_on_one_port() {
    let (addr, _server) = start(limits(2_000, 5_000)).await;

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (head, body) = get_on(&mut tcp, "/fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");
    let (head, _) = get_on(&mut tcp, "/fast").await;
    assert!(head.starts_with("http/1.1 200"), "keep-alive: {head}");

    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}/fast"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

#[tokio::test]
async fn the_listen_backlog_holds_a_burst_of_connections_none_accepted_yet() {
    // A listener nobody accepts on: every connection of the burst must complete its
    // handshake in the backlog. With the 128 of a plain bind, the rest had their SYN dropped
    // and retried a second later (and here would never complete).
    const BURST: usize = 600;
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    assert!(
        somaxconn.is_none_or(|n| n > BURST),
        "this test needs net.core.somaxconn above {BURST}, the machine has {somaxconn:?}"
    );
    let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let began = Instant::now();
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        connects.spawn(TcpStream::connect(addr));
    }
    let mut open = Vec::with_capacity(BURST);
    let all = timeout(Duration::from_secs(10), async {
        while let Some(joined) = connects.join_next().await {
            open.push(joined.unwrap().unwrap());
        }
    })
    .await;
    println!(
        "{} of {BURST} connections established in {} ms, none accepted",
        open.len(),
        millis(began.elapsed())
    );
    assert!(
        all.is_ok(),
        "only {} of {BURST} connections completed",
        open.len()
    );
    drop(listener);
}

#[tokio::test]
async fn long_bodies_reach_the_app_in_reads_under_8_kib_and_the_connection_goes_on() {
    let (addr, _server) = start(limits(5_000, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // A 1 MiB body sent at once (Content-Length), then a chunked one of 3 × 100,000 bytes.
    let body = vec![b'x'; 1 << 20];
    let mut request = format!(
        "POST /frames HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    tcp.write_all(&request).await.unwrap();
    let (head, said) = read_answer(&mut tcp).await;
    println!("content-length body: {said}");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (largest, total) = frame_figures(&said);
    assert_eq!(total, 1 << 20, "{said}");
    assert!(
        largest < 8 * 1024,
        "a read of {largest} bytes: hyper's read buffer would grow past 8 KiB: {said}"
    );

    let mut chunked =
        b"POST /frames HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n", 100_000).as_bytes());
        chunked.extend_from_slice(&[b'y'; 100_000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    tcp.write_all(&chunked).await.unwrap();
    let (head, said) = read_answer(&mut tcp).await;
    println!("chunked body: {said}");
    assert!(
        head.starts_with("http/1.1 200"),
        "keep-alive after a long body: {head}"
    );
    let (largest, total) = frame_figures(&said);
    assert_eq!(total, 300_000, "{said}");
    assert!(largest < 8 * 1024, "{said}");
}

/// hyper (vendor/hyper) lets its read buffer go when a read finds nothing and nothing is left
/// unparsed: a head that stops mid-way, a body that pauses, and a second head sent behind the
/// first must all keep their bytes across those waits.
#[tokio::test]
async fn heads_and_bodies_split_by_pauses_or_pipelined_lose_no_byte() {
    let (addr, _server) = start(limits(5_000, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let pause = || tokio::time::sleep(Duration::from_millis(50));

    // A head cut mid-line, the rest after the server has found nothing more to read.
    tcp.write_all(b"GET /fast HTTP/1.1\r\nho").await.unwrap();
    pause().await;
    tcp.write_all(b"st: t\r\n\r\n").await.unwrap();
    let (head, body) = read_answer(&mut tcp).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");

    // A body that pauses after its head and again mid-way.
    tcp.write_all(b"POST /frames HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n")
        .await
        .unwrap();
    pause().await;
    tcp.write_all(b"01234").await.unwrap();
    pause().await;
    tcp.write_all(b"56789").await.unwrap();
    let (head, said) = read_answer(&mut tcp).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(frame_figures(&said).1, 10, "{said}");

    // Idle (the buffer let go), then two heads in one write: both answered, in order.
    pause().await;
    tcp.write_all(b"GET /fast HTTP/1.1\r\nhost: t\r\n\r\nGET /fast HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    timeout(Duration::from_secs(5), async {
        while String::from_utf8_lossy(&got).matches("\r\n\r\nok").count() < 2 {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("both pipelined requests answered");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert!(text.ends_with("ok"), "{text}");

    // And the connection goes on.
    let (head, body) = get_on(&mut tcp, "/fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");
}

/// `largest` and `total` of a `/frames` answer.
fn frame_figures(said: &str) -> (usize, usize) {
    let field = |name: &str| {
        said.split(' ')
            .find_map(|kv| kv.strip_prefix(name))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("no {name} in {said:?}"))
    };
    (field("largest="), field("total="))
}

// === clocks ===

#[tokio::test]
async fn a_head_trickled_a_byte_at_a_time_is_cut_at_the_header_timeout() {
    let (addr, _server) = start(limits(400, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let head = b"GET /fast HTTP/1.1\r\nhost: t\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let (got, cut) = trickle_until_cut(&mut tcp, head).await;
    eprintln!("trickled head cut {} ms after its first byte", millis(cut));
    assert!(got.is_empty(), "no answer to a cut head: {got:?}");
    assert!(
        cut >= Duration::from_millis(350) && cut < Duration::from_millis(800),
        "cut after {cut:?}"
    );
}

#[tokio::test]
async fn a_trickled_http2_preface_is_cut_at_the_header_timeout_too() {
    let (addr, _server) = start(limits(400, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (_, cut) = trickle_until_cut(&mut tcp, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    eprintln!(
        "trickled preface cut {} ms after its first byte",
        millis(cut)
    );
    assert!(cut < Duration::from_millis(800), "cut after {cut:?}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_cut_at_the_header_timeout() {
    let (addr, _server) = start(limits(400, 5_000)).await;
    let connected = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let cut = closed - connected;
    eprintln!("silent connection cut after {} ms", millis(cut));
    assert!(got.is_empty());
    assert!(
        cut >= Duration::from_millis(350) && cut < Duration::from_millis(800),
        "cut after {cut:?}"
    );
}

#[tokio::test]
async fn keep_alive_idles_past_the_header_timeout_and_the_next_head_has_its_own_clock() {
    let (addr, _server) = start(limits(300, 3_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (head, _) = get_on(&mut tcp, "/fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // Idle for twice the header timeout: hyper's own header timer would have closed it.
    let mut probe = [0_u8; 1];
    let idle = timeout(Duration::from_millis(600), tcp.read(&mut probe)).await;
    assert!(idle.is_err(), "closed while idle: {idle:?}");
    let (head, body) = get_on(&mut tcp, "/fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");

    // Idle again, then a trickled head: cut a header timeout after its first byte.
    let idle = timeout(Duration::from_millis(600), tcp.read(&mut probe)).await;
    assert!(idle.is_err(), "closed while idle: {idle:?}");
    let head = b"GET /fast HTTP/1.1\r\nhost: t\r\nx-slow: aaaaaaaaaaaaaaaa\r\n\r\n";
    let (got, cut) = trickle_until_cut(&mut tcp, head).await;
    eprintln!("second head cut {} ms after its first byte", millis(cut));
    assert!(got.is_empty(), "{got:?}");
    assert!(
        cut >= Duration::from_millis(250) && cut < Duration::from_millis(700),
        "cut after {cut:?}"
    );
}

#[tokio::test]
async fn clocks_too_long_for_an_instant_never_panic_the_connection() {
    // Validation bounds both at a day; limits built in code are not validated, and a clock
    // read plus either of these would overflow `Instant` and panic the connection's task.
    let huge = Limits {
        header_timeout: Duration::MAX,
        idle_timeout: Duration::from_secs(u64::MAX),
        stream_coalesce: Duration::MAX,
        ..limits(0, 0)
    };
    let (addr, _server) = start(huge).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // Head clock at accept, idle clock after each response, head clock at the next bytes.
    for _ in 0..3 {
        let (head, body) = get_on(&mut tcp, "/fast").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "ok");
    }
    // A stream of several chunks holds them for the longest delay there is.
    tcp.write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until_ends_with(&mut tcp, &mut got, b"0\r\n\r\n").await;
    assert_eq!(String::from_utf8_lossy(&got).matches("tick").count(), 5);
    let mut probe = [0_u8; 1];
    let idle = timeout(Duration::from_millis(200), tcp.read(&mut probe)).await;
    assert!(idle.is_err(), "closed while idle: {idle:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (addr, _server) = start(limits(300, 800)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (head, _) = get_on(&mut tcp, "/fast").await;
    let answered = Instant::now();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let idle = closed - answered;
    eprintln!(
        "idle keep-alive connection closed after {} ms",
        millis(idle)
    );
    assert!(got.is_empty());
    assert!(
        idle >= Duration::from_millis(700) && idle < Duration::from_millis(1_300),
        "closed after {idle:?}"
    );
}

#[tokio::test]
async fn an_idle_h2_connection_gets_goaway_after_the_idle_timeout() {
    let (addr, _server) = start(limits(300, 800)).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}/fast"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);
    let answered = Instant::now();
    let ended = timeout(Duration::from_secs(5), conn).await;
    let idle = answered.elapsed();
    eprintln!("idle h2 connection ended after {} ms", millis(idle));
    assert!(ended.is_ok(), "the h2 connection did not end");
    assert!(
        idle >= Duration::from_millis(700) && idle < Duration::from_millis(1_500),
        "ended after {idle:?}"
    );
}

// === head size ===

/// A GET whose head carries `extra` header lines.
fn head_with(extra: &str) -> Vec<u8> {
    format!("GET /fast HTTP/1.1\r\nhost: t\r\n{extra}\r\n").into_bytes()
}

#[tokio::test]
async fn heads_over_64_kib_or_100_fields_get_431_and_the_server_goes_on() {
    let (addr, _server) = start(limits(2_000, 5_000)).await;

    // Just under the limit is served.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let under = format!("x-big: {}\r\n", "a".repeat(MAX_HEADER_BYTES - 200));
    tcp.write_all(&head_with(&under)).await.unwrap();
    let mut buf = [0_u8; 64];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let over = format!("x-big: {}\r\n", "a".repeat(MAX_HEADER_BYTES + 10));
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (what, extra) in [("64 KiB + 10", over), ("150 fields", many)] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&head_with(&extra)).await.unwrap();
        let (got, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        let text = String::from_utf8_lossy(&got);
        eprintln!("{what}: {:?}", text.lines().next());
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
            "{what}: {text}"
        );
    }

    // HTTP/2: a header list over the advertised limit gets 431 too.
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{addr}/fast"))
        .header("x-big", "a".repeat(MAX_HEADER_BYTES + 10))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    eprintln!("h2 64 KiB + 10: {}", resp.status());
    assert_eq!(resp.status(), 431);

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (head, body) = get_on(&mut tcp, "/fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");
}

// === drain ===

/// An HTTP/1 client on its own connection.
async fn h1_client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

/// `GET /stream` on a new HTTP/1 connection, up to its response head.
async fn start_stream(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    hyper::Response<hyper::body::Incoming>,
) {
    let mut client = h1_client(addr).await;
    let resp = client.send_request(get_req(addr, "/stream")).await.unwrap();
    assert_eq!(resp.status(), 200);
    (client, resp)
}

fn get_req(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .header("host", "t")
        .body(Empty::<Bytes>::new())
        .unwrap()
}

#[tokio::test]
async fn drain_waits_for_the_stream_and_closes_connections_as_they_finish() {
    let (addr, server) = start(limits(2_000, 5_000)).await;

    // A keep-alive connection that is idle when the drain starts.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    get_on(&mut idle, "/fast").await;

    let (streaming, resp) = start_stream(addr).await;
    assert_eq!(server.in_flight(), 1);
    let mut body = resp.into_body();

    let in_flight = server.start_draining();
    let drain_started = Instant::now();
    assert_eq!(in_flight, 1);

    // The idle keep-alive connection is closed at once.
    let (got, closed) = read_until_closed(&mut idle, Duration::from_secs(2)).await;
    assert!(got.is_empty());
    eprintln!(
        "idle keep-alive connection closed {} ms into the drain",
        millis(closed - drain_started)
    );

    // New connections are still served, told to close, and closed.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    let (head, body_text) = get_on(&mut fresh, "/fast").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body_text, "ok");
    let (rest, _) = read_until_closed(&mut fresh, Duration::from_secs(2)).await;
    assert!(rest.is_empty());

    // The drain is not over while the stream runs, and is over shortly after it ends.
    let drained = tokio::spawn(async move {
        server.drained().await;
        (Instant::now(), server)
    });
    let mut chunks = 0;
    while let Some(frame) = body.frame().await {
        if frame.unwrap().is_data() {
            chunks += 1;
        }
    }
    let stream_end = Instant::now();
    assert_eq!(chunks, TICKS);
    let (drained_at, server) = timeout(Duration::from_secs(2), drained)
        .await
        .expect("drained() did not resolve")
        .unwrap();
    let after = drained_at - stream_end;
    eprintln!("drained {} ms after the stream ended", millis(after));
    assert!(drained_at >= stream_end, "drained before the stream ended");
    assert!(after < SETTLE + Duration::from_millis(300), "{after:?}");
    assert_eq!(server.in_flight(), 0);

    // The streaming connection is closed once its response is done.
    eventually(Duration::from_secs(2), Duration::from_millis(20), || {
        let closed = streaming.is_closed();
        async move { closed.then_some(()) }
    })
    .await
    .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn h2_drain_sends_goaway_and_the_open_stream_finishes() {
    let (addr, server) = start(limits(2_000, 5_000)).await;
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let resp = h2.send_request(get_req(addr, "/stream")).await.unwrap();
    server.start_draining();

    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), "tick\n".len() * TICKS as usize);
    // GOAWAY: the connection ends once its stream is done; no new stream is taken.
    timeout(Duration::from_secs(2), conn)
        .await
        .expect("the h2 connection did not end after GOAWAY")
        .unwrap()
        .unwrap();
    assert!(h2.send_request(get_req(addr, "/fast")).await.is_err());
    timeout(Duration::from_secs(1), server.drained())
        .await
        .unwrap();
}

#[tokio::test]
async fn drain_with_nothing_in_flight_settles_at_once() {
    let (addr, server) = start(limits(2_000, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    get_on(&mut tcp, "/fast").await;
    assert_eq!(server.start_draining(), 0);
    let started = Instant::now();
    server.drained().await;
    let took = started.elapsed();
    eprintln!("idle drain took {} ms", millis(took));
    assert!(took >= SETTLE && took < SETTLE + Duration::from_millis(200));
}

#[tokio::test]
async fn a_stream_the_client_abandons_leaves_the_count() {
    let (addr, server) = start(limits(2_000, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /stream HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0_u8; 256];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(server.in_flight(), 1);
    drop(tcp);
    eventually(Duration::from_secs(2), Duration::from_millis(10), || {
        let n = server.in_flight();
        async move { (n == 0).then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn responses_without_a_body_leave_the_count_at_once() {
    let (addr, server) = start(limits(2_000, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (head, _) = get_on(&mut tcp, "/empty").await;
    assert!(head.starts_with("http/1.1 204"), "{head}");
    tcp.write_all(b"HEAD /fast HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0_u8; 512];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = h2.send_request(get_req(addr, "/empty")).await.unwrap();
    assert_eq!(resp.status(), 204);

    // The connections stay open; only the requests must be gone from the count.
    server.start_draining();
    timeout(SETTLE + Duration::from_millis(500), server.drained())
        .await
        .expect("a bodiless response is still counted in flight");
}

#[tokio::test]
async fn stop_closes_the_listener_and_every_connection() {
    let (addr, server) = start(limits(2_000, 5_000)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    get_on(&mut tcp, "/fast").await;
    server.stop().await;
    let (got, _) = read_until_closed(&mut tcp, Duration::from_secs(2)).await;
    assert!(got.is_empty());
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

// === split-stream helpers ===

/// Sends `head` a byte every 50 ms while reading until the server closes (at most 5 s);
/// returns what arrived and how long after the first byte the close came.
async fn trickle_until_cut(tcp: &mut TcpStream, head: &[u8]) -> (Vec<u8>, Duration) {
    let (mut reader, mut writer) = tcp.split();
    let (first, (got, closed)) = tokio::join!(
        trickle_half(&mut writer, head, Duration::from_millis(50)),
        read_until_closed(&mut reader, Duration::from_secs(5)),
    );
    (got, closed - first)
}

async fn trickle_half(
    writer: &mut tokio::net::tcp::WriteHalf<'_>,
    head: &[u8],
    every: Duration,
) -> Instant {
    let mut first = None;
    let mut ticks = tokio::time::interval(every);
    for byte in head {
        ticks.tick().await;
        first.get_or_insert_with(Instant::now);
        if writer.write_all(&[*byte]).await.is_err() {
            break;
        }
    }
    first.unwrap()
}

// === serving threads ===

/// A current-thread runtime on a thread of its own, as the binary's serving threads are.
struct TestWorker {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestWorker {
    fn start(name: &str) -> Self {
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                ready.send(rt.handle().clone()).unwrap();
                let _ = rt.block_on(stopped);
            })
            .unwrap();
        Self {
            handle: handle.recv_timeout(Duration::from_secs(10)).unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(std::thread::JoinHandle::join);
    }
}

#[tokio::test]
async fn connections_are_spread_over_the_serving_threads_and_the_drain_counts_them_all() {
    let workers = [
        TestWorker::start("serving-1"),
        TestWorker::start("serving-2"),
    ];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app().route(
        "/thread",
        get(|| async { std::thread::current().name().unwrap_or("?").to_owned() }),
    );
    let server = Server::new(listener, app, limits(2_000, 5_000))
        .with_workers(workers.iter().map(|w| w.handle.clone()).collect())
        .spawn();

    // Each new connection goes to the thread with the fewest open ones, the lowest first on a
    // tie: this thread (0), then serving-1, then serving-2, then this thread again.
    let here = std::thread::current().name().unwrap_or("?").to_owned();
    let mut conns = Vec::new();
    let mut served_on = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let (head, thread) = get_on(&mut tcp, "/thread").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        served_on.push(thread);
        conns.push(tcp);
    }
    eprintln!("4 connections served on {served_on:?}");
    assert_eq!(
        served_on,
        [here.as_str(), "serving-1", "serving-2", here.as_str()]
    );

    // A connection that closes frees its place: once the server has seen it go, the next one
    // goes where it was.
    drop(conns.remove(1));
    eventually(Duration::from_secs(2), Duration::from_millis(10), || {
        let open: Vec<usize> = server
            .shared
            .connections
            .iter()
            .map(|n| n.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        async move { (open == [2, 0, 1]).then_some(()) }
    })
    .await
    .unwrap();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    assert_eq!(get_on(&mut tcp, "/thread").await.1, "serving-1");
    conns.push(tcp);

    // A stream on another thread counts in flight, and the drain waits for it.
    let (_streaming, resp) = start_stream(addr).await;
    assert_eq!(server.in_flight(), 1);
    assert_eq!(server.start_draining(), 1);
    let drained = tokio::spawn(async move {
        server.drained().await;
        (Instant::now(), server)
    });
    let chunks = resp.into_body().collect().await.unwrap().to_bytes();
    let stream_end = Instant::now();
    assert_eq!(chunks.len(), 5 * TICKS as usize);
    let (drained_at, server) = timeout(Duration::from_secs(2), drained)
        .await
        .expect("drained() did not resolve")
        .unwrap();
    assert!(drained_at >= stream_end, "drained before the stream ended");
    assert_eq!(server.in_flight(), 0);
    server.stop().await;
    drop(workers);
}

/// Reads until `got` ends with `end`, within a generous deadline.
async fn read_until_ends_with(tcp: &mut TcpStream, got: &mut Vec<u8>, end: &[u8]) {
    let mut buf = [0_u8; 4096];
    timeout(Duration::from_secs(10), async {
        while !got.ends_with(end) {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never ended: {}", String::from_utf8_lossy(got)));
}

#[tokio::test]
async fn coalesced_streams_lose_no_byte_and_the_connection_goes_on() {
    use futures_util::stream;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    // Each `/chan` answer streams what the test sends down its channel, and ends when the
    // sender is dropped.
    let bodies = Arc::new(Mutex::new(VecDeque::new()));
    let taken = bodies.clone();
    let app = Router::new().route("/fast", get(|| async { "ok" })).route(
        "/chan",
        get(move || {
            let rx: mpsc::Receiver<Bytes> = taken.lock().unwrap().pop_front().unwrap();
            async move {
                Body::from_stream(stream::unfold(rx, |mut rx| async move {
                    let chunk = rx.recv().await?;
                    Some((Ok::<_, Infallible>(chunk), rx))
                }))
            }
        }),
    );
    let limits = Limits {
        stream_coalesce: Duration::from_millis(100),
        ..limits(10_000, 10_000)
    };
    let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = Server::new(listener, app, limits).spawn();
    let mut tcp = TcpStream::connect(addr).await.unwrap();

    for round in 0..2 {
        let (tx, rx) = mpsc::channel(64);
        bodies.lock().unwrap().push_back(rx);
        tcp.write_all(b"GET /chan HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        // The head and the first chunk are not held: the test waits for them before it sends
        // the second.
        tx.send(Bytes::from_static(b"first;")).await.unwrap();
        let mut got = Vec::new();
        read_until_ends_with(&mut tcp, &mut got, b"first;\r\n").await;
        let sent: Vec<String> = (2..=40).map(|i| format!("chunk{round}-{i};")).collect();
        for chunk in &sent {
            tx.send(Bytes::from(chunk.clone())).await.unwrap();
            tokio::task::yield_now().await;
        }
        let ended = Instant::now();
        drop(tx);
        read_until_ends_with(&mut tcp, &mut got, b"0\r\n\r\n").await;
        println!(
            "round {round}: the end arrived {:?} after the body ended",
            ended.elapsed()
        );
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // Every chunk, in order, each once.
        let mut rest = &text[..];
        for chunk in &sent {
            let at = rest
                .find(chunk.as_str())
                .unwrap_or_else(|| panic!("{chunk} missing: {text}"));
            rest = &rest[at + chunk.len()..];
        }
        // The next answer on the same connection is whole.
        let (head, body) = get_on(&mut tcp, "/fast").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "ok");
    }
}
