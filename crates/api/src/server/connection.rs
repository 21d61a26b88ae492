//! One accepted connection: which protocol it speaks, the clocks that cut slow and idle
//! clients, and what the drain does to it.
//!
//! The protocol is read off the first bytes (the HTTP/2 preface or not) under the header
//! clock, then hyper's HTTP/1 or HTTP/2 connection serves it. The bytes read to decide are
//! handed back to hyper first by [`WatchedIo`], which also tells [`ConnState`] when bytes
//! arrive on an HTTP/1 connection that was idle: that is the first byte of the next request
//! head, and it starts the header clock. [`ConnState`] learns the rest from the requests
//! themselves ([`tracked`](super::tracked)): a request started (its head is complete), a
//! response body ended. The task serving the connection sleeps until the earliest deadline
//! that applies:
//! - no request yet: `header_timeout` after accept, then the connection is dropped;
//! - HTTP/1 between requests, bytes of the next head seen: `header_timeout` after the first
//!   of them, then dropped;
//! - nothing in flight: `idle_timeout` after the last response ended, then a graceful
//!   shutdown (HTTP/1: closed; HTTP/2: GOAWAY), and `header_timeout` more to finish it;
//! - a request in flight: no deadline (the proxy bounds its upstream; the drain bounds the
//!   rest).
//!
//! Bytes of a pipelined head that arrived while the previous request was still in flight are
//! already read when it ends, so an incomplete pipelined head runs on the idle clock, not the
//! header clock: still bounded, only later.
//!
//! On drain, a connection that has served a request is shut down gracefully at once (HTTP/1:
//! closed if idle, `Connection: close` on the response in progress; HTTP/2: GOAWAY). One that
//! has not is left to send its request, which is answered with `Connection: close`: a
//! graceful shutdown before the first request would drop a request that is on its way.

use super::coalesce::Coalescer;
use super::gate::Gate;
use super::send::poll_send;
use super::tracked::ConnService;
use super::{H2_KEEP_ALIVE_INTERVAL, H2_KEEP_ALIVE_TIMEOUT, Limits, Shared};
use axum::Router;
use axum::http::Version;
use bytes::Bytes;
use hale_core::config::clock_safe;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

/// The first bytes an HTTP/2 client with prior knowledge sends.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most an HTTP/1 connection reads from its socket at once: one byte less than hyper's
/// initial read buffer (8 KiB). hyper doubles its read-size target whenever a read fills it,
/// and the buffer, once grown, stays with the connection for its life: a 60 KB prompt read
/// in full-size reads left a 64–330 KiB buffer behind, held through the whole streamed answer
/// and every later keep-alive request (147 KiB per stream at 1,000 streams of 64 KiB prompts,
/// against HAProxy's 8; 23 KiB with the cap: docs/BENCHMARKS.md, "Third pass"). Reads that
/// never fill the target keep it at 8 KiB; a long body costs a few more `recv` calls instead.
/// HTTP/2 (h2's own buffers) is not capped.
const HTTP1_READ_MAX: u64 = 8 * 1024 - 1;

/// A deadline far enough away to mean "none".
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything a connection task needs, shared by all of them.
pub(super) struct Ctx {
    app: Router,
    limits: Limits,
    shared: Arc<Shared>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Ctx {
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(super) fn new(app: Router, limits: Limits, shared: Arc<Shared>) -> Self {
        let mut h1 = http1::Builder::new();
        // Hale keeps the header clock itself (see the module docs); hyper's would also close
        // keep-alive connections after `header_timeout` of idleness.
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(limits.max_header_bytes)
            .max_headers(limits.max_headers);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            app,
            limits,
            shared,
            http1: h1,
            http2: h2,
        }
    }
}

/// Serves one connection, on serving thread `thread`, until it closes, is cut, or the task is
/// aborted (server stop).
pub(super) async fn serve(mut tcp: TcpStream, peer: SocketAddr, ctx: Arc<Ctx>, thread: usize) {
    let accepted = Instant::now();
    let sniffed = tokio::select! {
        sniffed = sniff(&mut tcp) => sniffed,
        () = sleep_until(accepted + clock_safe(ctx.limits.header_timeout)) => {
            tracing::debug!(%peer, "no request within server.header_timeout: connection closed");
            return;
        }
    };
    let (protocol, prefix) = match sniffed {
        Ok(Some(sniffed)) => sniffed,
        Ok(None) => {
            tracing::debug!(%peer, "connection closed before a request");
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "reading from the connection failed");
            return;
        }
    };
    let (read_max, coalesce) = match protocol {
        Protocol::Http1 => (
            HTTP1_READ_MAX,
            Coalescer::new(ctx.limits.stream_coalesce).map(Arc::new),
        ),
        Protocol::Http2 => (u64::MAX, None),
    };
    let state = Arc::new(ConnState::new(
        accepted,
        ctx.shared.clone(),
        thread,
        ctx.limits,
        coalesce.clone(),
    ));
    let io = TokioIo::new(WatchedIo {
        tcp,
        prefix,
        state: state.clone(),
        read_max,
        coalesce,
    });
    let service = ConnService::new(ctx.app.clone(), state.clone());
    match protocol {
        Protocol::Http1 => {
            let conn = pin!(ctx.http1.serve_connection(io, service));
            drive(conn, &state, &ctx, peer).await;
        }
        Protocol::Http2 => {
            // Boxed: an HTTP/2 connection's state is twice an HTTP/1 one's, and inline it
            // would size every connection's task, HTTP/1 ones too, to fit it.
            let mut conn = Box::pin(ctx.http2.serve_connection(io, service));
            drive(conn.as_mut(), &state, &ctx, peer).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Reads until the bytes either leave the HTTP/2 preface (HTTP/1) or complete it (HTTP/2);
/// returns them to be replayed. `None` when the peer closes first.
async fn sniff(tcp: &mut TcpStream) -> io::Result<Option<(Protocol, Bytes)>> {
    let mut buf = [0_u8; H2_PREFACE.len()];
    let mut filled = 0;
    loop {
        let n = tcp.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(None);
        }
        filled += n;
        let seen = &buf[..filled];
        if seen != &H2_PREFACE[..filled] {
            return Ok(Some((Protocol::Http1, Bytes::copy_from_slice(seen))));
        }
        if filled == H2_PREFACE.len() {
            return Ok(Some((Protocol::Http2, Bytes::copy_from_slice(seen))));
        }
    }
}

// === driving a connection ===

/// hyper's HTTP/1 and HTTP/2 connections, as far as [`drive`] needs them.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

type Io = TokioIo<WatchedIo>;

impl Graceful for http1::Connection<Io, ConnService> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

impl Graceful for http2::Connection<Io, ConnService, TokioExecutor> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

/// Polls `conn` to the end while enforcing the deadlines and the drain (module docs).
///
/// `conn` comes pinned by the caller, not by value: an `async fn` keeps its arguments in
/// their own slots for its whole life, so a connection passed by value and pinned here was
/// held twice in the task (704 bytes each for HTTP/1; 0.7 KiB more per open connection).
///
/// The timer is armed lazily: it is moved only to an earlier deadline, never to a later one,
/// and when it fires the deadline is read again and the timer re-armed if it is not due yet.
/// Requests move the deadline later on every request (the idle clock restarts when a response
/// ends, the header clock when the next head begins), so resetting the timer each time would
/// cost two timer-wheel updates and two wake-ups of this task per request; this way a busy
/// keep-alive connection costs one timer turn per `header_timeout`. [`ConnState`] wakes the
/// task only when a deadline comes earlier than the one armed.
async fn drive<C: Graceful>(mut conn: Pin<&mut C>, state: &ConnState, ctx: &Ctx, peer: SocketAddr) {
    let mut drain_signal = ctx.shared.drain_signal();
    let drain = drain_signal.wait_for(|d| *d);
    let mut drain = pin!(drain);
    let mut drain_heard = false;
    let changed = state.changed.notified();
    let mut changed = pin!(changed);
    let mut shut_down = false;
    // Set once the idle deadline has shut the connection down: it must be gone by then.
    let mut closing_until: Option<Instant> = None;
    let timer = sleep_until(Instant::now() + NEVER);
    let mut timer = pin!(timer);
    // The side futures (`changed`, `drain`, `timer`) are polled only when one of them woke
    // the task, not on each of the connection's own wake-ups (see `gate`).
    let mut gate = Gate::new();
    loop {
        if !shut_down && ctx.shared.is_draining() && state.has_served() {
            conn.as_mut().graceful_shutdown();
            shut_down = true;
        }
        if let Some(at) = state.arm(closing_until) {
            timer.as_mut().reset(at);
        }
        // A side future may have been replaced or reset since it was last polled.
        gate.force();
        let event = poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            let Some(mut side) = gate.open(cx.waker()) else {
                return Poll::Pending;
            };
            if changed.as_mut().poll(&mut side).is_ready() {
                return Poll::Ready(Event::Changed);
            }
            // Heard (or the sender is gone): either way the flag is read above from now on.
            if !drain_heard && drain.as_mut().poll(&mut side).is_ready() {
                return Poll::Ready(Event::DrainHeard);
            }
            if timer.as_mut().poll(&mut side).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(result) => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            Event::Changed => changed.set(state.changed.notified()),
            Event::DrainHeard => drain_heard = true,
            Event::Timer => {
                let now = Instant::now();
                // Read the state again: the deadline may have moved since the timer was armed.
                match state.fired(closing_until) {
                    Some((at, Expiry::Head)) if at <= now => {
                        tracing::debug!(
                            %peer,
                            "request head not complete within server.header_timeout: connection closed"
                        );
                        return;
                    }
                    Some((at, Expiry::Idle)) if at <= now => {
                        tracing::debug!(%peer, "idle for server.idle_timeout: closing the connection");
                        if !shut_down {
                            conn.as_mut().graceful_shutdown();
                            shut_down = true;
                        }
                        closing_until = Some(now + clock_safe(ctx.limits.header_timeout));
                    }
                    Some((at, Expiry::Closing)) if at <= now => {
                        tracing::debug!(%peer, "connection did not close in time after shutdown: dropped");
                        return;
                    }
                    _ => {}
                }
                // A fired timer would fire again at once: park it until the next turn arms it.
                timer.as_mut().reset(now + NEVER);
            }
        }
    }
}

/// What woke [`drive`]'s loop.
enum Event {
    /// The connection is done.
    Ended(hyper::Result<()>),
    /// [`ConnState`] asked for a look (an earlier deadline, or a request during a drain).
    Changed,
    /// The drain began.
    DrainHeard,
    /// The armed deadline passed.
    Timer,
}

/// What happens when the armed deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head did not arrive in time: drop the connection.
    Head,
    /// Idle too long: shut down gracefully.
    Idle,
    /// A graceful shutdown did not finish in time: drop the connection.
    Closing,
}

// === impl ConnState ===

/// A connection's request bookkeeping, updated by its requests and its reads, read by the
/// task that drives it. It also holds the connection's place in the server's request counts
/// (its serving thread's).
#[derive(Debug)]
pub(super) struct ConnState {
    times: Mutex<Times>,
    /// Set while an HTTP/1 connection waits between requests, so that a read can start the
    /// header clock. Checked on every read, hence an atomic outside the lock.
    awaiting_head: AtomicBool,
    /// Wakes the driving task when a deadline came earlier than the one its timer is set to,
    /// or a request started during a drain.
    changed: Notify,
    /// An HTTP/1 connection's coalescer when `server.stream_coalesce` is on, for its response
    /// bodies to say when they stream (the connection's writer holds it too).
    coalesce: Option<Arc<Coalescer>>,
    shared: Arc<Shared>,
    /// The serving thread the connection lives on.
    thread: usize,
    limits: Limits,
}

#[derive(Debug)]
struct Times {
    /// Requests in flight on this connection (more than one only on HTTP/2).
    active: usize,
    /// Requests started on this connection so far.
    served: u64,
    http2: bool,
    wait: Wait,
    /// The deadline the driving task's timer is set to, if any.
    armed: Option<Instant>,
}

/// What the connection is waiting for while nothing is in flight, and since when.
#[derive(Debug, Clone, Copy)]
enum Wait {
    Head(Instant),
    Idle(Instant),
    Busy,
}

impl Times {
    /// The next deadline and what it means, if any applies now.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        if self.active > 0 {
            return None;
        }
        match self.wait {
            Wait::Head(since) => Some((since + clock_safe(limits.header_timeout), Expiry::Head)),
            Wait::Idle(since) => Some((since + clock_safe(limits.idle_timeout), Expiry::Idle)),
            Wait::Busy => None,
        }
    }

    /// Whether the driving task must be woken to arm its timer for the deadline now.
    fn needs_arming(&self, limits: &Limits) -> bool {
        match (self.deadline(limits), self.armed) {
            (Some((at, _)), Some(armed)) => at < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl ConnState {
    fn new(
        accepted: Instant,
        shared: Arc<Shared>,
        thread: usize,
        limits: Limits,
        coalesce: Option<Arc<Coalescer>>,
    ) -> Self {
        Self {
            times: Mutex::new(Times {
                active: 0,
                served: 0,
                http2: false,
                wait: Wait::Head(accepted),
                armed: None,
            }),
            awaiting_head: AtomicBool::new(false),
            changed: Notify::new(),
            coalesce,
            shared,
            thread,
            limits,
        }
    }

    fn times(&self) -> MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// The coalescer of an HTTP/1 connection whose streamed chunks may be held.
    pub(super) fn coalescer(&self) -> Option<&Arc<Coalescer>> {
        self.coalesce.as_ref()
    }

    /// A request head was read and handed to the app. The driving task is woken only during
    /// a drain (to shut the connection down gracefully): otherwise the deadline it sleeps on
    /// is simply found obsolete when it passes.
    pub(super) fn request_started(&self, version: Version) {
        self.shared.request_started(self.thread);
        {
            let mut t = self.times();
            t.active += 1;
            t.served += 1;
            t.http2 = version == Version::HTTP_2;
            t.wait = Wait::Busy;
        }
        self.awaiting_head.store(false, Ordering::Relaxed);
        if self.shared.is_draining() {
            self.changed.notify_one();
        }
    }

    /// A response body ended or was dropped (or the request was abandoned before it had one).
    /// The last one to end starts the idle clock.
    pub(super) fn request_ended(&self) {
        let wake = {
            let mut t = self.times();
            t.active = t.active.saturating_sub(1);
            if t.active == 0 {
                t.wait = Wait::Idle(Instant::now());
                if !t.http2 {
                    self.awaiting_head.store(true, Ordering::Relaxed);
                }
            }
            t.needs_arming(&self.limits)
        };
        self.shared.request_ended(self.thread);
        if wake {
            self.changed.notify_one();
        }
    }

    /// Bytes were read from the socket: on an idle HTTP/1 connection, the next head begins.
    fn bytes_arrived(&self) {
        if !self.awaiting_head.load(Ordering::Relaxed)
            || !self.awaiting_head.swap(false, Ordering::Relaxed)
        {
            return;
        }
        let wake = {
            let mut t = self.times();
            if t.active == 0 && matches!(t.wait, Wait::Idle(_)) {
                t.wait = Wait::Head(Instant::now());
            }
            t.needs_arming(&self.limits)
        };
        if wake {
            self.changed.notify_one();
        }
    }

    fn has_served(&self) -> bool {
        self.times().served > 0
    }

    /// The deadline to move the timer to, if it must move: the deadline now (or
    /// `closing_until`) when it is earlier than the armed one or none is armed. Recorded as
    /// armed under the same lock the requests update the clocks under, so a request that moves
    /// a deadline earlier afterwards sees it and wakes the task.
    fn arm(&self, closing_until: Option<Instant>) -> Option<Instant> {
        let mut t = self.times();
        let next = closing_until.or_else(|| t.deadline(&self.limits).map(|(at, _)| at))?;
        if t.armed.is_some_and(|armed| armed <= next) {
            return None;
        }
        t.armed = Some(next);
        Some(next)
    }

    /// The timer fired: nothing is armed any more. Returns the deadline that applies now (or
    /// `closing_until`), for the task to act on if it is due.
    fn fired(&self, closing_until: Option<Instant>) -> Option<(Instant, Expiry)> {
        let mut t = self.times();
        t.armed = None;
        match closing_until {
            Some(at) => Some((at, Expiry::Closing)),
            None => t.deadline(&self.limits),
        }
    }
}

// === impl WatchedIo ===

/// The TCP stream as hyper reads it: first the bytes [`sniff`] took, then the socket, at most
/// `read_max` bytes per read ([`HTTP1_READ_MAX`] on HTTP/1), telling [`ConnState`] whenever
/// bytes arrive. Writes are `sendmsg` calls ([`poll_send`]), through the [`Coalescer`] when
/// `server.stream_coalesce` is on.
#[derive(Debug)]
pub(super) struct WatchedIo {
    tcp: TcpStream,
    prefix: Bytes,
    state: Arc<ConnState>,
    read_max: u64,
    /// Shared with the connection's response bodies (see `coalesce`); off, one pointer.
    coalesce: Option<Arc<Coalescer>>,
}

impl WatchedIo {
    /// Reads from the socket into `buf`, at most `limit` bytes.
    fn poll_socket(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        limit: u64,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        // `Take` is the safe way to hand the socket a shorter view of hyper's buffer.
        let mut limited = (&mut self.tcp).take(limit);
        let polled = Pin::new(&mut limited).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.bytes_arrived();
        }
        polled
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            if this.prefix.is_empty() && buf.remaining() > 0 {
                // The rest of the head, if it is there, in the same read: handed over alone,
                // the sniffed bytes would be all hyper's first read got, and its second read,
                // wanting a full 8 KiB of room behind them, would double its read buffer to
                // 16 KiB for the life of the connection. An error or the end of input is left
                // for hyper's next read to find; the sniffed bytes are delivered either way.
                let limit = this.read_max.saturating_sub(n as u64);
                let _ = this.poll_socket(cx, buf, limit);
            }
            return Poll::Ready(Ok(()));
        }
        let limit = this.read_max;
        this.poll_socket(cx, buf, limit)
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &this.coalesce {
            Some(c) => c.poll_write(&mut this.tcp, cx, bufs),
            None => poll_send(&mut this.tcp, cx, bufs, false),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(c) = &this.coalesce {
            c.poll_push(&this.tcp, cx)?;
        }
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
