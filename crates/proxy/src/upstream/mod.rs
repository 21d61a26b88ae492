//! The upstream client: HTTP/1.1 to the backends over pooled keep-alive connections, driven
//! inside the request's own task.
//!
//! Why not hyper's client: a hyper client connection runs in a task of its own and hands the
//! response over through channels, one decoded chunk per wake-up. Measured behind oha at
//! concurrency 32 (`cargo xtask bench proxy`), that cost a task hand-off per chunk and — since
//! hyper's server side writes whenever the body it forwards is momentarily empty — one
//! `writev` to the client per chunk: eight writes for a five-chunk stream that arrived in one
//! segment, about 40 µs of CPU per streamed request against HAProxy's 10. Here the request
//! task itself writes the request, reads the answer and decodes it straight from the
//! connection's buffer, so whatever arrived in one read leaves in one write
//! (see `stream.rs`), and no other task or channel is involved.
//!
//! Nor hyper's client connection driven in the request's own task (no task hand-off): the
//! cargo feature `hyper-upstream` builds that variant (`hyper_client`) for the A/B row in
//! docs/BENCHMARKS.md ("Upstream client: hyper's client connection against this one"). In
//! one interleaved `cargo xtask bench proxy` run it served 0.86× this client's requests per
//! second on short answers and 0.79× on streamed ones (CPU per request 1.23× and 1.33×), and
//! held 40.7 KiB per concurrent stream against 15.4 (hyper keeps a read buffer per
//! connection for its whole life), with CPU per relayed chunk within the run's noise. It
//! meets neither the short-answer targets within 10 % nor the memory one, so this client
//! stays; the variant stays buildable (`cargo xtask test` lints and unit-tests it) so the
//! row can be measured again.
//!
//! The client is deliberately small, because Hale only ever sends one kind of request: a
//! `POST` with a buffered body, to a backend it was configured with. It writes the request
//! head and body with one `writev` ([`head::encode_request`]), parses the response head with
//! `httparse` ([`head::parse_response`]), and leaves the body to the response body type,
//! which puts the connection back into the endpoint's [`Pool`] once the body has been read to
//! its end.
//!
//! Failures, as [`SendError`] tells them apart for the failover loop (see `forward`):
//! - [`SendError::Connect`]: nothing was sent — connect refused or timed out, DNS, TLS, a URL
//!   that names no host. The request may go elsewhere.
//! - [`SendError::Dropped`]: the request was written and the connection closed or reset
//!   before a complete response head. The backend may have read it and acted on it (a POST
//!   that generates, bills, calls tools), so it is never sent again — with one exception,
//!   the stale keep-alive race: on a *reused* connection the backend may have closed the idle
//!   connection just as Hale sent on it, which it cannot have read. That is recognised by
//!   the write failing, by the end of input being there already at the first look after the
//!   write (before waiting at all: the backend's FIN came before the request could reach
//!   it), or by a reset before any answer (the backend's kernel threw the unread request
//!   away). Then, and only then, the request is sent once more, on a new connection. A
//!   failure on a new connection is never retried. (tokio keeps a socket's "read closed"
//!   state once its event loop has seen the FIN, even through [`io::Io::forget_readable`],
//!   so the first look finds a FIN that arrived at any time before the request was written.
//!   Only a FIN still on its way then — the backend closing at that very moment — comes
//!   later and costs that request a 502 rather than a replay; the pool's 4 s idle limit,
//!   under the 5 s keep-alive of common servers, keeps that rare.)
//! - [`SendError::Malformed`]: the answer is not an HTTP/1.1 response head.
//! - [`SendError::TimedOut`]: no complete response head within the endpoint's
//!   `first_byte_timeout` (counted from the start of the write; default 600 s, since a
//!   non-streamed generation can take minutes before its first byte). The connection is
//!   closed, which tells the backend to stop.
//!
//! Waiting for the answer: when the request is the only one of its serving thread waiting for
//! a response head, the task does not go to sleep on the socket at once but keeps yielding to
//! the runtime for up to [`ANSWER_SPIN`] (100 µs), trying its read again after each of the
//! runtime's looks at the event queue (a zero-timeout `epoll_wait` when nothing else is ready
//! to run). A backend on the same host or in the same rack answers a small request within
//! that time, and on a virtual machine a thread that sleeps, even that briefly, lets its vCPU
//! halt and pays tens of microseconds to be woken again: polling took 30–40 µs off the median
//! of every request at 100 requests/s in `cargo xtask bench proxy`. It costs at most those
//! 100 µs of CPU per request, and it holds up no other task, since each round is a yield.
//! It is done only while the thread would otherwise sleep: no other request of the thread
//! waits for a backend (under load some other request nearly always does) and no answer's
//! body is being read on it ([`Reading`]). A thread relaying streams is woken for their
//! chunks anyway, and polling there turned its sleep between them into one zero-timeout look
//! at the event queue per round: with 1,000 streams of 20 ms chunks and 500 new requests a
//! second, 1.2 events per `epoll_wait` against 4.3 without (HAProxy's 4.2), and the wasted
//! rounds were half of Hale's CPU per chunk above HAProxy's (docs/BENCHMARKS.md, "Seventh
//! pass"). An LLM's first token takes milliseconds, far longer than the polling lasts, so
//! there it could only ever have cost. It needs a runtime that looks at its event queue
//! whenever a task yields, which tokio's current-thread runtime (each of the gateway's
//! serving threads runs one) does; on a multi-threaded one the event queue may be another
//! worker's, asleep, and the client does not poll there.

pub mod chunked;
pub mod head;
#[cfg(feature = "hyper-upstream")]
pub mod hyper_client;
pub mod io;
pub mod pool;

use crate::config::Deadlines;
use crate::route::Route;
use crate::runtime::Padded;
use bytes::{Buf as _, Bytes, BytesMut};
use hale_core::{CheckResult, Endpoint};
use head::{RequestHead, ResponseHead, encode_request, parse_response};
use http::{HeaderMap, HeaderName, HeaderValue};
use io::{Target, connect};
pub use pool::{Conn, Pool};
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The pool each endpoint keeps: the hand-written client's, or with the `hyper-upstream`
/// feature (an A/B variant, see `hyper_client`) the one of hyper's connections.
#[cfg(not(feature = "hyper-upstream"))]
type EndpointPool = Pool;
#[cfg(feature = "hyper-upstream")]
type EndpointPool = hyper_client::Pool;

/// The size a new request-head buffer starts with.
const INITIAL_WRITE_BUFFER: usize = 1024;
/// Request-head buffers kept per serving thread for the next request, and the largest kept.
const KEPT_HEAD_BUFFERS: usize = 8;
const MAX_KEPT_HEAD_BUFFER: usize = 4 * INITIAL_WRITE_BUFFER;

thread_local! {
    /// Request-head buffers between requests, per serving thread. A request takes one for the
    /// write of its head and gives it back when the head has left, so no connection holds
    /// one while its answer streams (each held 1 KiB for its life before); the thread keeps a
    /// few (bounded in number and size), so a request allocates none in the usual case.
    static HEAD_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A request-head buffer from this thread's spares, or a new one.
fn take_head_buffer() -> BytesMut {
    HEAD_BUFFERS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(INITIAL_WRITE_BUFFER))
}

/// Keeps `buf` for the next request on this thread, unless enough are kept or it grew large.
fn give_back_head_buffer(mut buf: BytesMut) {
    if buf.capacity() > MAX_KEPT_HEAD_BUFFER {
        return;
    }
    buf.clear();
    HEAD_BUFFERS.with_borrow_mut(|kept| {
        if kept.len() < KEPT_HEAD_BUFFERS {
            kept.push(buf);
        }
    });
}

thread_local! {
    /// Answers whose bodies are being read on this thread (see [`Reading`]).
    static READING: Arc<Padded<AtomicUsize>> = Arc::new(Padded::default());
}

/// An answer's body being read: counted from its head to the body's end or drop, on the
/// thread that read the head, for a request there not to poll for its own answer meanwhile
/// (see the module docs). The response body's bookkeeping (`tally`) holds it. A
/// thread-local rather than a slot per serving thread as `Upstream::waiting` has: the body
/// outlives any borrow of the client, and it still uncounts the right thread if it is
/// dropped on another.
#[derive(Debug)]
pub(crate) struct Reading(Option<Arc<Padded<AtomicUsize>>>);

impl Reading {
    pub(crate) fn start() -> Self {
        // (No count once the thread's locals are gone, at its very end: nothing polls then.)
        Self(
            READING
                .try_with(|count| {
                    count.0.fetch_add(1, Ordering::Relaxed);
                    count.clone()
                })
                .ok(),
        )
    }

    /// Answers being read on this thread.
    pub(crate) fn on_this_thread() -> usize {
        READING
            .try_with(|count| count.0.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

impl Drop for Reading {
    /// Uncounted on the thread that counted it, wherever the body is dropped.
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether a request that `waiting` counts polls for its answer before it sleeps: it is the
/// only one of its thread waiting for a backend, no answer is being read there, and the
/// runtime looks at its event queue when a task yields (see the module docs).
fn polls_for_answer(waiting: &Waiting<'_>) -> bool {
    waiting.alone && Reading::on_this_thread() == 0 && polls_on_yield()
}

/// How long the only request waiting for an answer polls for it before it sleeps (see the
/// module docs).
pub const ANSWER_SPIN: Duration = Duration::from_micros(100);
/// The most polling rounds of one wait, whatever the clock says (a paused test clock never
/// moves).
const ANSWER_SPIN_ROUNDS: u32 = 256;

/// What the client keeps per endpoint: where it is, the prepared request lines, its pool.
#[derive(Debug)]
pub struct Destination {
    target: Option<Target>,
    /// The `host` header value: the endpoint URL's authority.
    host: Bytes,
    /// `POST <base path><route path>`, by [`Route::index`].
    request_lines: Vec<Bytes>,
    /// The endpoint URL's path without its trailing `/`, for a request's own path.
    base: String,
    pub pool: EndpointPool,
    /// The endpoint's `first_byte_timeout` and `idle_timeout`.
    pub deadlines: Deadlines,
}

impl Destination {
    /// The destination of `endpoint`, with a pool for `workers` serving threads.
    pub fn new(endpoint: &Endpoint, workers: usize, deadlines: Deadlines) -> Self {
        let url = &endpoint.url;
        let authority = &url[url::Position::BeforeHost..url::Position::AfterPort];
        let base = url.path().trim_end_matches('/');
        Self {
            target: Target::from_url(url),
            host: Bytes::copy_from_slice(authority.as_bytes()),
            request_lines: Route::ALL
                .iter()
                .map(|r| Bytes::from(format!("POST {base}{}", r.path())))
                .collect(),
            base: base.to_owned(),
            pool: EndpointPool::new(workers),
            deadlines,
        }
    }

    /// Whether requests can be sent at all (the URL names an http(s) host).
    pub fn usable(&self) -> bool {
        self.target.is_some()
    }
}

/// What one request sends.
pub struct Outgoing<'a> {
    pub route: Route,
    /// A method and path (already checked, see `generic`) instead of the route's `POST`:
    /// [`Route::Generic`] and the follow-ups of a stored response.
    pub custom: Option<(&'a http::Method, &'a str)>,
    pub query: Option<&'a str>,
    /// The client's headers, of which those `keep` accepts are sent (see `hygiene`).
    pub headers: &'a HeaderMap,
    pub keep: &'a (dyn Fn(&HeaderName) -> bool + Sync),
    /// Headers Hale adds: request id, pod, the endpoint's `authorization`.
    pub added: &'a [(&'a HeaderName, &'a HeaderValue)],
    pub body: &'a Bytes,
}

impl std::fmt::Debug for Outgoing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("route", &self.route)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

/// The upstream client; see the module docs.
pub struct Upstream {
    tls: TlsConnector,
    connect_timeout: Duration,
    /// Requests between sending and their response head (or failure), per serving thread.
    waiting: Box<[Padded<AtomicUsize>]>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// A client for `workers` serving threads (see [`crate::worker`]).
    pub fn new(connect_timeout: Duration, workers: usize) -> Self {
        Self {
            tls: TlsConnector::from(Arc::new(tls_config())),
            connect_timeout,
            waiting: (0..workers.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    /// Sends the request to `dest` and reads the response head. On success the connection
    /// (with any body bytes already read) goes with the head, for the body to finish reading.
    /// `now` is when the attempt starts (it decides which idle connections are too old).
    #[cfg(not(feature = "hyper-upstream"))]
    pub async fn send(
        &self,
        dest: &Destination,
        req: &Outgoing<'_>,
        now: Instant,
    ) -> Result<(ResponseHead, Conn), SendError> {
        let Some(target) = &dest.target else {
            return Err(SendError::Connect(CheckResult::Other {
                message: "the endpoint URL names no http(s) host".into(),
            }));
        };
        let custom_line = req
            .custom
            .map(|(method, path)| format!("{method} {}{path}", dest.base));
        let head = RequestHead {
            request_line: match &custom_line {
                Some(line) => line.as_bytes(),
                None => dest
                    .request_lines
                    .get(req.route.index())
                    .map_or(&b"POST /"[..], |l| &l[..]),
            },
            query: req.query,
            host: &dest.host,
            headers: req.headers,
            keep: req.keep,
            added: req.added,
        };
        let first_byte = dest.deadlines.first_byte;
        let waiting = Waiting::enter(&crate::worker::slot(&self.waiting).0);
        let spin = polls_for_answer(&waiting);
        if let Some(conn) = dest.pool.take(now) {
            match exchange_within(first_byte, conn, &head, req.body, spin).await {
                Ok(done) => return Ok(done),
                // The backend cannot have read it: once more on a new connection.
                Err(Attempt::Stale(message)) => {
                    tracing::debug!(error = %message, "stale keep-alive connection; sending again on a new one");
                }
                Err(other) => return Err(other.into()),
            }
        }
        let io = connect(target, &self.tls, self.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        let conn = Conn {
            io,
            buf: BytesMut::new(),
        };
        exchange_within(first_byte, conn, &head, req.body, spin)
            .await
            .map_err(SendError::from)
    }
}

/// Why a request got no response head; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub enum SendError {
    /// The endpoint could not be reached; nothing was sent.
    Connect(CheckResult),
    /// The request was sent, and the connection closed or reset before a complete answer.
    Dropped(CheckResult),
    /// The backend's answer is not a valid response head (why).
    Malformed(String),
    /// No response head within this `first_byte_timeout`.
    TimedOut(Duration),
}

impl From<Attempt> for SendError {
    fn from(attempt: Attempt) -> Self {
        match attempt {
            Attempt::Stale(message) => Self::Dropped(CheckResult::ConnectionReset { message }),
            Attempt::Dropped(result) => Self::Dropped(result),
            Attempt::Malformed(why) => Self::Malformed(why),
            Attempt::TimedOut(after) => Self::TimedOut(after),
        }
    }
}

/// One request counted in [`Upstream::waiting`] while it waits for its response head.
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// No other request was waiting when this one started to.
    alone: bool,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let before = count.fetch_add(1, Ordering::Relaxed);
        Self {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one attempt on one connection went wrong.
#[derive(Debug)]
enum Attempt {
    /// The backend cannot have read the request (see the module docs): the write failed,
    /// the end of input was there at the first look, or a reset came before any answer.
    Stale(String),
    /// The connection ended (or broke) after the request was sent, before a complete head.
    Dropped(CheckResult),
    /// Not an HTTP/1.1 response head (why).
    Malformed(String),
    /// No complete head within the first-byte timeout.
    TimedOut(Duration),
}

/// [`exchange`] within `first_byte`.
async fn exchange_within(
    first_byte: Duration,
    conn: Conn,
    head: &RequestHead<'_>,
    body: &Bytes,
    spin: bool,
) -> Result<(ResponseHead, Conn), Attempt> {
    tokio::time::timeout(first_byte, exchange(conn, head, body, spin))
        .await
        .unwrap_or(Err(Attempt::TimedOut(first_byte)))
}

/// Writes the request and reads the response head on `conn`; `spin`: poll for the first bytes
/// of the answer before sleeping on the socket (see the module docs).
async fn exchange(
    mut conn: Conn,
    head: &RequestHead<'_>,
    body: &Bytes,
    spin: bool,
) -> Result<(ResponseHead, Conn), Attempt> {
    let mut wbuf = take_head_buffer();
    encode_request(&mut wbuf, head, body.len());
    let written = async {
        // Head and body leave together, in one writev.
        let mut out = (&wbuf[..]).chain(&body[..]);
        conn.io.write_all_buf(&mut out).await?;
        conn.io.flush().await
    };
    let written = written.await;
    give_back_head_buffer(wbuf);
    if let Err(e) = written {
        return Err(Attempt::Stale(format!("sending the request: {e}")));
    }
    // The first look, without waiting: an end of input here was on its way before the
    // request could have reached the backend.
    let mut received = false;
    match conn
        .io
        .poll_read_into(&mut Context::from_waker(Waker::noop()), &mut conn.buf)
    {
        Poll::Ready(Ok(0)) => {
            return Err(Attempt::Stale(
                "the backend had closed the connection before the request reached it".into(),
            ));
        }
        Poll::Ready(Err(e)) => {
            return Err(Attempt::Stale(format!("reading the response: {e}")));
        }
        Poll::Ready(Ok(_)) => received = true,
        Poll::Pending => {}
    }
    let mut spin_until = spin.then(|| Instant::now() + ANSWER_SPIN);
    loop {
        match parse_response(&mut conn.buf, crate::hygiene::forwards_downstream) {
            Ok(Some(head)) => return Ok((head, conn)),
            Ok(None) => {}
            Err(e) => {
                return Err(Attempt::Malformed(e.to_string()));
            }
        }
        let read = match spin_until.take() {
            Some(until) => read_spinning(&mut conn, until).await,
            None => std::future::poll_fn(|cx| conn.io.poll_read_into(cx, &mut conn.buf)).await,
        };
        match read {
            Ok(0) if !received => {
                return Err(Attempt::Dropped(CheckResult::ConnectionReset {
                    message: "the backend closed the connection without answering".into(),
                }));
            }
            Ok(0) => {
                return Err(Attempt::Dropped(CheckResult::ConnectionReset {
                    message: "the backend closed the connection in the middle of the response head"
                        .into(),
                }));
            }
            Ok(_) => received = true,
            // A reset before any answer: the backend's kernel discarded a request its server
            // had not read.
            Err(e) if !received && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Attempt::Stale(format!("reading the response: {e}")));
            }
            Err(e) => {
                return Err(Attempt::Dropped(CheckResult::ConnectionReset {
                    message: format!("reading the response head: {e}"),
                }));
            }
        }
    }
}

/// Whether the runtime looks at the event queue whenever the running task yields and nothing
/// else is ready, which makes polling for an answer work: tokio's current-thread runtime does.
/// (In the multi-threaded one another worker may be asleep on the queue, and polling there
/// only burns CPU.)
fn polls_on_yield() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Reads into the connection's buffer, yielding to the runtime between attempts until
/// `until` (or [`ANSWER_SPIN_ROUNDS`] rounds), then waiting for readiness as usual.
async fn read_spinning(conn: &mut Conn, until: Instant) -> std::io::Result<usize> {
    for _ in 0..ANSWER_SPIN_ROUNDS {
        // The attempt registers no waker: until it sleeps, the task is woken by its yield.
        let attempt = conn
            .io
            .poll_read_into(&mut Context::from_waker(Waker::noop()), &mut conn.buf);
        if let Poll::Ready(read) = attempt {
            return read;
        }
        if Instant::now() >= until {
            break;
        }
        // tokio runs a yielded task again after its next look at the event queue, so the
        // answer's readiness is seen without anyone sleeping or being woken.
        tokio::task::yield_now().await;
    }
    std::future::poll_fn(|cx| conn.io.poll_read_into(cx, &mut conn.buf)).await
}

/// rustls with the ring provider and the Mozilla root set (as the probe client uses), ALPN
/// `http/1.1`.
pub fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
        // The ring provider supports the safe defaults, so this arm is never taken; a client
        // that verifies against no roots (every https request fails, visibly) beats a panic.
        Err(_) => rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn a_thread_keeps_a_few_small_head_buffers_and_hands_them_out_empty() {
        // A thread of its own: the spares are per thread.
        std::thread::spawn(|| {
            let mut grown = take_head_buffer();
            grown.reserve(64 * 1024);
            give_back_head_buffer(grown);
            let taken: Vec<BytesMut> = (0..20).map(|_| take_head_buffer()).collect();
            for mut buf in taken {
                buf.extend_from_slice(b"POST / HTTP/1.1\r\n");
                give_back_head_buffer(buf);
            }
            let kept = HEAD_BUFFERS.with_borrow(|kept| {
                kept.iter()
                    .map(|b| (b.len(), b.capacity()))
                    .collect::<Vec<_>>()
            });
            println!("kept after one grown and 20 given back: {kept:?}");
            assert_eq!(kept.len(), KEPT_HEAD_BUFFERS, "{kept:?}");
            assert!(
                kept.iter()
                    .all(|&(len, cap)| len == 0 && cap <= MAX_KEPT_HEAD_BUFFER),
                "{kept:?}"
            );
            assert!(take_head_buffer().is_empty());
        })
        .join()
        .unwrap();
    }

    async fn conn_and_server() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let conn = Conn {
            io: io::Io::Plain(client),
            buf: BytesMut::new(),
        };
        (conn, server)
    }

    #[tokio::test]
    async fn an_answer_is_read_whether_it_comes_while_polling_or_later() {
        let (mut conn, mut server) = conn_and_server().await;
        // Already there: the first attempt reads it.
        server.write_all(b"early").await.unwrap();
        let n = read_spinning(&mut conn, Instant::now() + ANSWER_SPIN)
            .await
            .unwrap();
        assert_eq!(&conn.buf[..n], b"early");
        conn.buf.clear();

        // Long after the polling gave up: the read sleeps on readiness and still gets it.
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            server.write_all(b"late").await.unwrap();
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
        });
        let started = Instant::now();
        let n = read_spinning(&mut conn, Instant::now() + ANSWER_SPIN)
            .await
            .unwrap();
        assert_eq!(&conn.buf[..n], b"late");
        assert!(started.elapsed() >= Duration::from_millis(25));
        drop(conn);
        late.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn polling_ends_even_when_the_clock_stands_still() {
        let (mut conn, mut server) = conn_and_server().await;
        let answer = tokio::spawn(async move {
            // Real time passes for the socket, none for the paused clock.
            for _ in 0..2 * ANSWER_SPIN_ROUNDS {
                tokio::task::yield_now().await;
            }
            server.write_all(b"x").await.unwrap();
            server
        });
        let n = read_spinning(&mut conn, Instant::now() + ANSWER_SPIN)
            .await
            .unwrap();
        assert_eq!(&conn.buf[..n], b"x");
        drop(answer.await.unwrap());
    }

    #[test]
    fn only_a_request_waiting_alone_polls() {
        let count = AtomicUsize::new(0);
        let first = Waiting::enter(&count);
        let second = Waiting::enter(&count);
        assert!(first.alone && !second.alone);
        drop(first);
        let third = Waiting::enter(&count);
        assert!(!third.alone, "the second is still waiting");
        drop((second, third));
        assert_eq!(count.load(Ordering::Relaxed), 0);
        assert!(Waiting::enter(&count).alone);
    }

    /// Runs `f` inside a current-thread runtime on a thread of its own: the count of answers
    /// being read is per thread, so no other test's bodies are counted there.
    fn on_a_serving_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let _in_runtime = runtime.enter();
            f();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_request_polls_only_while_no_answer_is_read_on_its_thread() {
        on_a_serving_thread(|| {
            let count = AtomicUsize::new(0);
            let lone = Waiting::enter(&count);
            assert!(polls_for_answer(&lone), "alone, nothing read: it polls");

            let first = Reading::start();
            let second = Reading::start();
            assert!(!polls_for_answer(&lone), "answers are streaming here");
            drop(first);
            assert!(!polls_for_answer(&lone), "one still is");
            // Dropped on another thread, a body is still uncounted on this one's count.
            std::thread::spawn(move || drop(second)).join().unwrap();
            assert!(polls_for_answer(&lone), "the last one ended elsewhere");

            let other = Waiting::enter(&count);
            assert!(!polls_for_answer(&other), "another request waits");
        });
    }

    #[test]
    fn a_body_read_on_another_thread_is_not_counted_here() {
        on_a_serving_thread(|| {
            let elsewhere = std::thread::spawn(Reading::start).join().unwrap();
            let count = AtomicUsize::new(0);
            assert!(polls_for_answer(&Waiting::enter(&count)));
            drop(elsewhere);
            assert!(polls_for_answer(&Waiting::enter(&count)));
        });
    }

    #[test]
    fn polls_on_the_current_thread_runtime_only() {
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(current.block_on(async { polls_on_yield() }));
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert!(!multi.block_on(async { polls_on_yield() }));
        assert!(!polls_on_yield(), "no runtime at all");
    }
}
