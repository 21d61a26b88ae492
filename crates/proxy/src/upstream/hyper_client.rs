//! The A/B variant of the upstream client for issue 14 part 3: `hyper::client::conn::http1`
//! in place of the hand-written HTTP/1.1 client, built only with the cargo feature
//! `hyper-upstream` (`cargo build --release -p hale --features hyper-upstream`). It exists to
//! measure, in `cargo xtask bench proxy --ab`, whether hyper's client connection *driven in
//! the request's own task* matches the hand-written one; the default build does not contain it.
//!
//! How the connection is driven: no task is spawned for it. A connection is a pair of hyper's
//! [`SendRequest`](http1::SendRequest) and [`Connection`](http1::Connection) (the future that
//! does the connection's I/O). [`Upstream::send`] hands the request to the `SendRequest` and
//! then polls the `Connection` and the response future together, in the request's task, until
//! the response head is there (within the endpoint's `first_byte_timeout`). The pair then
//! travels inside the response body ([`UpstreamBody`]), whose `poll_frame` polls hyper's
//! [`Incoming`] body first (which tells the connection it wants more) and the `Connection`
//! after, so the chunk the connection reads is handed on in the same poll. When the body
//! ends, the connection is polled once more (so hyper can see a `Connection: close` or the
//! end of a body read until close) and, if it is still open, the pair goes back into the
//! endpoint's [`Pool`]: per serving thread, newest first, used for at most the hand-written
//! pool's `IDLE_TIMEOUT` (4 s), at most its `MAX_IDLE` per endpoint, and checked before
//! every reuse by polling its `Connection` once without a waker (an idle connection the
//! backend closed is ready: it is dropped).
//!
//! The same surface as the hand-written client: [`Upstream::send`] returns a
//! [`ResponseHead`] (headers cleaned by `hygiene::forwards_downstream`, `Content-Length`
//! only for a body of that length) and a [`Conn`]; [`UpstreamBody`] records the request's
//! `Watch` and `Claim` like `stream.rs` does, with the same lazy `idle_timeout` timer.
//! Failures map to [`SendError`] as far as hyper lets them be told apart:
//! - `Connect`: the TCP/TLS connect of `io.rs` failed (the same code as the hand-written one).
//! - `Malformed`: hyper's parse errors (`is_parse`, `is_parse_too_large`, `is_parse_status`).
//! - `TimedOut`: no response head within `first_byte_timeout`.
//! - `Dropped`: anything else after the request was handed over.
//!
//! Where it differs from the hand-written client:
//! - Stale keep-alive replay: a request is sent once more on a new connection only when hyper
//!   gives it back unsent (the pooled connection turned out closed), or when a reused
//!   connection is reset before a response head. An end of input right after the write on a
//!   reused connection (the backend's FIN on its way while Hale sent) is a 502, where the
//!   hand-written client replays it when the FIN was already there at its first look; the
//!   check of every pooled connection before reuse catches a FIN that had arrived earlier.
//! - hyper frames the request body by its `Content-Length` (omitted for an empty `GET`), adds
//!   no `host` of its own (Hale sets it), accepts up to 96 response headers like Hale and
//!   hyper's own head-size limit; its parser is hyper's, not `head.rs` (the differential test
//!   holds the two to the same answers on framing).
//! - No polling for the answer before sleeping (the hand-written `ANSWER_SPIN`).
//! - Memory: hyper keeps a read buffer per connection (from 8 KiB, adaptive) for as long as
//!   the connection lives, where the hand-written client reads through one per-thread buffer.

use super::head::{Framing, MAX_HEADERS, ResponseHead};
use super::io::{Io, connect};
use super::pool::{IDLE_TIMEOUT, MAX_IDLE};
use super::{Attempt, Destination, Outgoing, SendError, Upstream};
use crate::runtime::{Claim, Padded, Watch};
use crate::tally::Tally;
use bytes::Bytes;
use hale_core::{CheckResult, Signal};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::Future as _;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

type Driver = http1::Connection<TokioIo<Io>, Full<Bytes>>;

/// One connection: hyper's sender and the connection future, which whoever holds this polls.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Driver,
    /// The connection future has completed (the connection is closed): never poll it again.
    finished: bool,
    /// The response body being read on it, between the head and the body's end.
    incoming: Option<Incoming>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Polls the connection future unless it has completed; `Some` once it completes.
    fn drive(&mut self, cx: &mut Context<'_>) -> Option<Result<(), hyper::Error>> {
        if self.finished {
            return Some(Ok(()));
        }
        match Pin::new(&mut self.driver).poll(cx) {
            Poll::Pending => None,
            Poll::Ready(done) => {
                self.finished = true;
                Some(done)
            }
        }
    }

    /// Whether an idle connection can carry another request: polled once without a waker,
    /// it is still open.
    fn still_open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()))
            .is_none()
            && !self.sender.is_closed()
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One endpoint's idle connections, per serving thread; see the module docs.
pub struct Pool {
    idle: Box<[Padded<Mutex<Vec<Idle>>>]>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

fn lock(idle: &Padded<Mutex<Vec<Idle>>>) -> MutexGuard<'_, Vec<Idle>> {
    idle.0.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    /// A pool for `workers` serving threads (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            idle: (0..workers.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    /// The most recently used connection of this thread that is still open, if any.
    fn take(&self, now: Instant) -> Option<Conn> {
        let slot = crate::worker::slot(&self.idle);
        loop {
            let mut idle = lock(slot).pop()?;
            if now.saturating_duration_since(idle.since) >= IDLE_TIMEOUT {
                // The newest has expired, so have all the others.
                let expired = std::mem::take(&mut *lock(slot));
                drop(expired);
                return None;
            }
            if idle.conn.still_open() {
                return Some(idle.conn);
            }
        }
    }

    fn put(&self, conn: Conn, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut idle = lock(crate::worker::slot(&self.idle));
            take_expired(&mut idle, now, &mut expired);
            if idle.len() < MAX_IDLE {
                idle.push(Idle { conn, since: now });
            }
        }
        drop(expired);
    }

    /// Closes the connections idle past `IDLE_TIMEOUT`.
    pub fn close_expired(&self, now: Instant) {
        for idle in &self.idle {
            let mut expired = Vec::new();
            take_expired(&mut lock(idle), now, &mut expired);
            drop(expired);
        }
    }

    /// Closes every idle connection of every thread.
    pub fn clear(&self) {
        for idle in &self.idle {
            let all = std::mem::take(&mut *lock(idle));
            drop(all);
        }
    }

    /// How many connections are idle now, on every thread.
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|i| lock(i).len()).sum()
    }
}

fn take_expired(idle: &mut Vec<Idle>, now: Instant, into: &mut Vec<Idle>) {
    let fresh = idle
        .iter()
        .position(|i| now.saturating_duration_since(i.since) < IDLE_TIMEOUT)
        .unwrap_or(idle.len());
    into.extend(idle.drain(..fresh));
}

impl Upstream {
    /// Sends the request to `dest` with hyper and reads the response head; see the module docs.
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
        let first_byte = dest.deadlines.first_byte;
        if let Some(conn) = dest.pool.take(now) {
            match exchange_within(first_byte, conn, request(dest, req)?, true).await {
                Ok(done) => return Ok(done),
                Err(Attempt::Stale(message)) => {
                    tracing::debug!(error = %message, "stale keep-alive connection; sending again on a new one");
                }
                Err(other) => return Err(other.into()),
            }
        }
        let io = connect(target, &self.tls, self.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        let (sender, driver) = http1::Builder::new()
            .max_headers(MAX_HEADERS)
            .writev(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| {
                SendError::Connect(CheckResult::Other {
                    message: format!("HTTP/1.1 handshake: {e}"),
                })
            })?;
        let conn = Conn {
            sender,
            driver,
            finished: false,
            incoming: None,
        };
        exchange_within(first_byte, conn, request(dest, req)?, false)
            .await
            .map_err(SendError::from)
    }
}

/// The request for hyper: method and path, `host`, the client's kept headers, Hale's own.
fn request(dest: &Destination, req: &Outgoing<'_>) -> Result<Request<Full<Bytes>>, SendError> {
    let (method, mut target) = match req.custom {
        Some((method, path)) => (method.clone(), format!("{}{path}", dest.base)),
        None => {
            let line = dest
                .request_lines
                .get(req.route.index())
                .map_or(&b"POST /"[..], |l| &l[..]);
            let path = line.strip_prefix(b"POST ").unwrap_or(b"/");
            (
                http::Method::POST,
                String::from_utf8_lossy(path).into_owned(),
            )
        }
    };
    if let Some(q) = req.query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(q);
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len() + req.added.len() + 1);
    let host = HeaderValue::from_maybe_shared(dest.host.clone())
        .map_err(|_| SendError::Malformed("the endpoint's host is no header value".into()))?;
    headers.insert(HOST, host);
    for (name, value) in req.headers {
        if (req.keep)(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in req.added {
        headers.append((*name).clone(), (*value).clone());
    }
    let mut request = Request::new(Full::new(req.body.clone()));
    *request.method_mut() = method;
    *request.uri_mut() = http::Uri::try_from(target)
        .map_err(|e| SendError::Malformed(format!("the request target: {e}")))?;
    *request.headers_mut() = headers;
    Ok(request)
}

async fn exchange_within(
    first_byte: Duration,
    conn: Conn,
    request: Request<Full<Bytes>>,
    reused: bool,
) -> Result<(ResponseHead, Conn), Attempt> {
    tokio::time::timeout(first_byte, exchange(conn, request, reused))
        .await
        .unwrap_or(Err(Attempt::TimedOut(first_byte)))
}

/// Hands the request to hyper and drives the connection in this task until the response head.
async fn exchange(
    mut conn: Conn,
    request: Request<Full<Bytes>>,
    reused: bool,
) -> Result<(ResponseHead, Conn), Attempt> {
    let ready = std::future::poll_fn(|cx| {
        if let Some(done) = conn.drive(cx) {
            return Poll::Ready(Err(match done {
                Ok(()) => "the connection was closed".to_owned(),
                Err(e) => e.to_string(),
            }));
        }
        conn.sender.poll_ready(cx).map_err(|e| e.to_string())
    })
    .await;
    if let Err(message) = ready {
        return Err(Attempt::Stale(format!("before sending: {message}")));
    }
    let answer = {
        let Conn {
            sender,
            driver,
            finished,
            ..
        } = &mut conn;
        let mut response = pin!(sender.try_send_request(request));
        std::future::poll_fn(|cx| {
            if !*finished && let Poll::Ready(done) = Pin::new(&mut *driver).poll(cx) {
                *finished = true;
                if let Err(e) = done {
                    tracing::trace!(error = %e, "upstream connection ended with an error");
                }
            }
            match response.as_mut().poll(cx) {
                // hyper answers every request it took before its connection ends; should it
                // not, the request does not wait for its first-byte timeout.
                Poll::Pending if *finished => Poll::Ready(Err(None)),
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(r)) => Poll::Ready(Ok(r)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(Some(e))),
            }
        })
        .await
    };
    let response = match answer {
        Ok(response) => response,
        Err(None) => {
            return Err(Attempt::Dropped(CheckResult::ConnectionReset {
                message: "the backend closed the connection without answering".into(),
            }));
        }
        Err(Some(mut failed)) => return Err(classify(&mut failed, reused)),
    };
    let (parts, incoming) = response.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Hale never asks for an upgrade (as `head::parse_response` refuses it too).
        return Err(Attempt::Malformed(
            "unexpected 101 Switching Protocols".into(),
        ));
    }
    let framing = match (parts.status, incoming.size_hint().exact()) {
        (StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED, _) => Framing::Empty,
        (_, Some(n)) => Framing::Length(n),
        (_, None) => Framing::Chunked,
    };
    let mut headers = parts.headers;
    for name in crate::hygiene::connection_named(headers.get_all(CONNECTION)) {
        headers.remove(name);
    }
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    let mut kept = HeaderMap::with_capacity(headers.len() + 3);
    let mut last = None;
    for (name, value) in headers {
        // `None` repeats the previous name.
        if let Some(name) = name {
            last = Some(name);
        }
        if let Some(name) = &last
            && crate::hygiene::forwards_downstream(name)
        {
            kept.append(name.clone(), value);
        }
    }
    if let Framing::Length(n) = framing {
        kept.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
    conn.incoming = Some(incoming);
    Ok((
        ResponseHead {
            status: parts.status,
            headers: kept,
            framing,
            // hyper decides on reuse itself (see `UpstreamBody::release`).
            reusable: true,
        },
        conn,
    ))
}

/// What a failed exchange means; see the module docs.
fn classify(
    failed: &mut hyper::client::conn::TrySendError<Request<Full<Bytes>>>,
    reused: bool,
) -> Attempt {
    let unsent = failed.take_message().is_some();
    let error = failed.error();
    if unsent {
        return Attempt::Stale(format!("the request was not sent: {error}"));
    }
    if error.is_parse() || error.is_parse_too_large() || error.is_parse_status() {
        return Attempt::Malformed(error.to_string());
    }
    let mut reset = false;
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::ConnectionReset)
        {
            reset = true;
            break;
        }
        source = e.source();
    }
    if reused && reset {
        return Attempt::Stale(format!("reading the response: {error}"));
    }
    Attempt::Dropped(CheckResult::ConnectionReset {
        message: format!("the backend dropped the request: {error}"),
    })
}

/// A backend's body on its way to the client, read through hyper; see the module docs (its
/// bookkeeping is `stream.rs`'s, [`Tally`]).
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<Conn>,
    tally: Tally,
}

impl UpstreamBody {
    /// The body of the answer `conn` carries (`framing` and `reusable` are hyper's business).
    pub fn new(
        conn: Conn,
        _framing: Framing,
        _reusable: bool,
        claim: Claim,
        started: Instant,
        watch: Watch,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            tally: Tally::new(claim, started, watch),
        };
        if body
            .conn
            .as_ref()
            .and_then(|c| c.incoming.as_ref())
            .is_none_or(Body::is_end_stream)
        {
            body.release();
        }
        body
    }

    /// The body has ended: the connection goes back to the pool if hyper keeps it open.
    fn release(&mut self) {
        self.tally.ended();
        let now = Instant::now();
        if let Some(mut conn) = self.conn.take() {
            conn.incoming = None;
            if conn.still_open()
                && let Some(claim) = self.tally.claim()
            {
                claim.runtime().dest.pool.put(conn, now);
            }
        }
        self.tally.finish_at(now);
    }

    fn fail(
        &mut self,
        signal: Signal,
        message: String,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.tally.cut(signal, &message);
        self.conn = None;
        Poll::Ready(Some(Err(io::Error::other(message))))
    }

    /// Nothing to hand on: wait, failing once `idle_timeout` has passed with nothing new.
    fn wait_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.tally.poll_idle(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(message) => self.fail(Signal::IdleTimeout, message),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        // The body first (it tells the connection it wants more), then the connection, then
        // the body again for what the connection just read.
        let mut driven = false;
        let mut ended = None;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                this.tally.finish();
                return Poll::Ready(None);
            };
            let Some(incoming) = conn.incoming.as_mut() else {
                this.release();
                return Poll::Ready(None);
            };
            match Pin::new(incoming).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.tally.progressed();
                        if conn.incoming.as_ref().is_some_and(Body::is_end_stream) {
                            this.release();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // Trailers are not passed on (nor are they by the hand-written client).
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    return this.fail(Signal::StreamCut, format!("reading the body: {e}"));
                }
                Poll::Ready(None) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Poll::Pending => {}
            }
            if driven {
                if conn.finished {
                    // The connection has ended and hyper's body did not end with it.
                    let why = ended.unwrap_or_else(|| {
                        "the backend closed the connection before the end of the body".into()
                    });
                    return this.fail(Signal::StreamCut, why);
                }
                return this.wait_idle(cx);
            }
            driven = true;
            // A connection that fails after the body's last byte (garbage after the answer)
            // has still delivered the body: what hyper's body holds decides.
            if let Some(Err(e)) = conn.drive(cx) {
                ended = Some(format!("reading the body: {e}"));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn
            .as_ref()
            .and_then(|c| c.incoming.as_ref())
            .is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.conn
            .as_ref()
            .and_then(|c| c.incoming.as_ref())
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.tally.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Route;
    use crate::runtime::EndpointRuntime;
    use http::HeaderName;
    use http_body_util::BodyExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// A runtime for an endpoint at `addr`, and a client.
    fn client(addr: std::net::SocketAddr) -> (Upstream, Arc<EndpointRuntime>) {
        let endpoint = hale_core::EndpointConfig::new(
            "hyper",
            format!("http://{addr}"),
            hale_core::EndpointKind::Vllm,
        )
        .resolve("e")
        .unwrap();
        let store = Arc::new(hale_core::HealthStore::new(
            "hyper",
            vec![endpoint.clone()],
            &hale_core::HealthConfig::default(),
            hale_core::Now::capture(),
        ));
        let rt = Arc::new(EndpointRuntime::new(
            Arc::new(endpoint),
            &crate::config::ProxyConfig::default(),
            1,
            &store,
        ));
        (Upstream::new(Duration::from_secs(2), 1), rt)
    }

    /// Sends one chat and reads its answer whole: the body (or how it broke off), or the
    /// send error.
    async fn chat(
        upstream: &Upstream,
        rt: &Arc<EndpointRuntime>,
    ) -> Result<Result<Bytes, io::Error>, SendError> {
        let headers = HeaderMap::new();
        let keep = |_: &HeaderName| true;
        let body = Bytes::from_static(b"{}");
        let outgoing = Outgoing {
            route: Route::ChatCompletions,
            custom: None,
            query: None,
            headers: &headers,
            keep: &keep,
            added: &[],
            body: &body,
        };
        let now = Instant::now();
        let claim = rt.try_claim(false, now).unwrap();
        let (head, conn) = upstream.send(&rt.dest, &outgoing, now).await?;
        let watch = rt.watch(Route::ChatCompletions.path(), head.status.as_u16());
        let body = UpstreamBody::new(conn, head.framing, head.reusable, claim, now, watch);
        Ok(body.collect().await.map(|b| b.to_bytes()))
    }

    /// Reads one request head and its two-byte body.
    async fn read_request(stream: &mut TcpStream) -> bool {
        let mut got = Vec::new();
        let mut buf = [0_u8; 1024];
        while !got.ends_with(b"\r\n\r\n{}") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    #[tokio::test]
    async fn keep_alive_reuse_and_a_connection_the_backend_closed_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (upstream, rt) = client(listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let close = Arc::new(tokio::sync::Notify::new());
        let closing = Arc::clone(&close);
        // Each connection answers two requests, then the backend closes it (when told to)
        // while it idles.
        let backend = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                for _ in 0..2 {
                    if !read_request(&mut stream).await {
                        break;
                    }
                    stream.write_all(OK).await.unwrap();
                }
                closing.notified().await;
            }
        });
        for _ in 0..2 {
            assert_eq!(&chat(&upstream, &rt).await.unwrap().unwrap()[..], b"ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the second request reused it"
        );
        assert_eq!(rt.dest.pool.idle_count(), 1);
        // Once the backend's FIN is in, the pooled connection is seen closed and a new one
        // carries the request.
        close.notify_one();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(&rt.dest.pool.idle[0])
            .iter_mut()
            .all(|i| !i.conn.still_open())
        {
            assert!(Instant::now() < deadline, "the FIN was never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(&chat(&upstream, &rt).await.unwrap().unwrap()[..], b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        backend.abort();
    }

    #[tokio::test]
    async fn a_request_the_backend_read_and_dropped_is_not_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (upstream, rt) = client(listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&requests);
        let backend = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                if read_request(&mut stream).await {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                // Closed without an answer.
            }
        });
        let failed = chat(&upstream, &rt).await.unwrap_err();
        assert!(matches!(failed, SendError::Dropped(_)), "{failed:?}");
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(rt.dest.pool.idle_count(), 0);
        backend.abort();
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_told_apart_from_a_whole_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (upstream, rt) = client(listener.local_addr().unwrap());
        let answers: [&[u8]; 3] = [
            // Whole, then bytes nobody asked for: the body still arrives, nothing is pooled.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/9",
            // Cut short of its length.
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok",
            // Not HTTP.
            b"SMTP ready\r\n\r\n",
        ];
        let backend = tokio::spawn(async move {
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                read_request(&mut stream).await;
                stream.write_all(answer).await.unwrap();
            }
        });
        assert_eq!(&chat(&upstream, &rt).await.unwrap().unwrap()[..], b"ok");
        assert_eq!(rt.dest.pool.idle_count(), 0);
        let cut = chat(&upstream, &rt).await.unwrap();
        assert!(cut.is_err(), "a truncated body ends in an error: {cut:?}");
        let malformed = chat(&upstream, &rt).await.unwrap_err();
        assert!(
            matches!(malformed, SendError::Malformed(_)),
            "{malformed:?}"
        );
        backend.await.unwrap();
    }
}
