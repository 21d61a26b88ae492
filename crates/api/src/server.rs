//! [`Server`]: Hale's one HTTP listener — its own accept loop over hyper, the limits it puts on
//! clients, and the drain on shutdown. The binary builds the axum `Router` (the routes of this
//! crate merged with the proxy's), binds the listener with [`bind`], and hands both to
//! [`Server::spawn`].
//!
//! The listen backlog is [`LISTEN_BACKLOG`] (the kernel caps it at `net.core.somaxconn`,
//! 4,096 on current Linux), not the 128 a plain `TcpListener::bind` asks for: when a thousand
//! clients connect at once, the connections past a full backlog have their SYN dropped and
//! retry it after a second, so a burst of 1,000 new streams through a 128 backlog had 608 of
//! 2,000 streams finish a whole second late (HAProxy, listening with its `maxconn`, none).
//!
//! Threads: one accept loop, on the runtime that spawned the server, hands each accepted
//! connection to one of the serving threads given with [`Server::with_workers`] (each a
//! single-threaded tokio runtime; the spawning runtime is one of them): the one serving the
//! fewest open connections, the lowest-numbered on a tie. The connection is served on that
//! thread's runtime for its whole life. Accepting on one socket and handing over keeps the
//! spread even whatever the clients' addresses (a `SO_REUSEPORT` group spreads by a hash of
//! them, so 32 connections can land 20 and 12) and keeps one listener to drain and close; a
//! hand-over costs two `epoll_ctl` calls per connection, not per request.
//!
//! Protocols: HTTP/1.1 (and 1.0) and cleartext HTTP/2 with prior knowledge (h2c), told apart
//! by the first bytes of the connection (the HTTP/2 preface). TCP_NODELAY is set on every
//! accepted socket so streamed chunks never wait for Nagle.
//!
//! Limits, from `server:` (see [`Limits`]):
//! - `header_timeout` (10 s): a request head must arrive whole within this time. For a
//!   connection's first request the clock starts at accept, so a client that connects and
//!   sends nothing, or trickles its head a byte at a time, is cut at `header_timeout` after
//!   it connected. For a later request on a keep-alive HTTP/1 connection the clock starts at
//!   the first byte of that request. A cut connection is closed without an answer (no 408:
//!   a client that slow is not reading one), logged at DEBUG.
//! - `idle_timeout` (75 s, a departure from DESIGN §5, which lists no such key): how long a
//!   keep-alive connection may sit between requests. HTTP/1 connections are closed, HTTP/2
//!   connections get GOAWAY. It is separate from `header_timeout` because hyper's own header
//!   timer starts when the previous response ends, which would make the idle limit equal the
//!   header limit (10 s): shorter than the 60 s idle timeout of common L7 balancers (AWS ALB,
//!   nginx's upstream keep-alive), which would then race Hale's close with a request on the
//!   same connection. 75 s (nginx's `keepalive_timeout`) lets the balancer close first. So
//!   Hale keeps its own clocks (the `connection` module) and turns hyper's header timer off.
//! - Request head size: at most [`MAX_HEADER_BYTES`] (64 KiB) and [`MAX_HEADERS`] (100)
//!   header fields on HTTP/1; a larger head is answered `431 Request Header Fields Too Large`
//!   by hyper and the connection closed. HTTP/2 advertises the same 64 KiB as
//!   `SETTINGS_MAX_HEADER_LIST_SIZE`; the h2 crate answers a larger header list with 431.
//! - HTTP/2: keep-alive pings every 20 s, the connection closed when one is not answered
//!   within 20 s; at most 200 concurrent streams (hyper's default).
//! - `stream_coalesce` (`0s`, off; a departure from DESIGN §5, which lists no such key): on
//!   HTTP/1, the chunks of a streamed answer after the first may be held up to this long so
//!   that several leave in one TCP segment, as plain HAProxy holds them. It trades token
//!   latency for CPU with thousands of streams; see the `coalesce` module.
//! - A bad or failed connection (reset, garbage, timeout, oversize head) is logged at DEBUG
//!   only, so a scanner cannot flood the log. Accept errors that are about the process (out
//!   of file descriptors) are logged at WARN at most once a minute, with a 100 ms pause
//!   between attempts so the loop does not spin.
//!
//! Drain (SIGTERM), see [`ServerHandle`]: [`start_draining`](ServerHandle::start_draining)
//! keeps the listener open and every connection served, but from then on every HTTP/1
//! response carries `Connection: close` and the connection closes after it; a keep-alive
//! connection idle at that moment is closed at once; HTTP/2 connections get GOAWAY and their
//! open streams finish. A connection accepted during the drain is served the same way (one
//! request, then closed). [`drained`](ServerHandle::drained) resolves once no request has been
//! in flight for [`SETTLE`] (100 ms). A request is in flight from the moment its head has been
//! read until its response body has ended or been dropped, so a stream counts until its last
//! chunk. The settle window is there for the request that arrives just as the last one
//! finishes: it is served instead of meeting a closed port. It cannot cover a request whose
//! head is still on its way when the window closes; that client sees the connection close (or
//! refused, once the process is gone) and retries elsewhere, as it would for any other replica
//! that went away. [`stop`](ServerHandle::stop) then closes the listener and every connection.

mod coalesce;
mod connection;
mod gate;
mod send;
mod tracked;

#[cfg(test)]
mod tests;

use crate::ServerConfig;
use axum::Router;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// The largest request head accepted (request line and header fields), in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header fields accepted in one HTTP/1 request head.
pub const MAX_HEADERS: usize = 100;
/// How long the in-flight count must stay at zero before a drain counts as done.
pub const SETTLE: Duration = Duration::from_millis(100);

/// HTTP/2 keep-alive: a PING this often, and the connection closed when one goes unanswered
/// this long.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The pause after an accept error that is about the process, not the connection.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Such errors are logged at WARN at most this often.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// What the listener enforces on clients; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `server.header_timeout`.
    pub header_timeout: Duration,
    /// `server.idle_timeout`.
    pub idle_timeout: Duration,
    /// The largest request head in bytes (HTTP/1) or header list (HTTP/2).
    pub max_header_bytes: usize,
    /// The most header fields in one HTTP/1 request head.
    pub max_headers: usize,
    /// `server.stream_coalesce`: zero sends every streamed chunk at once.
    pub stream_coalesce: Duration,
}

impl Limits {
    /// The limits of `server:`, with [`MAX_HEADER_BYTES`] and [`MAX_HEADERS`].
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_timeout: server.header_timeout,
            idle_timeout: server.idle_timeout,
            max_header_bytes: MAX_HEADER_BYTES,
            max_headers: MAX_HEADERS,
            stream_coalesce: server.stream_coalesce,
        }
    }
}

/// The listen backlog [`bind`] asks for; see the module docs.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` for [`Server`]: `SO_REUSEADDR` (as `TcpListener::bind` sets it on Unix) and a
/// listen backlog of [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A bound listener and the app it serves, not yet running; see the module docs.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    app: Router,
    limits: Limits,
    workers: Vec<Handle>,
}

impl Server {
    /// A server whose connections are all served on the runtime that spawns it.
    pub fn new(listener: TcpListener, app: Router, limits: Limits) -> Self {
        Self {
            listener,
            app,
            limits,
            workers: Vec::new(),
        }
    }

    /// Also serves connections on these runtimes, besides the one that spawns the server
    /// (see the module docs). Each should be a current-thread runtime on a thread of its own
    /// that lives until [`ServerHandle::stop`] has returned.
    #[must_use]
    pub fn with_workers(mut self, workers: Vec<Handle>) -> Self {
        self.workers = workers;
        self
    }

    /// Starts the accept loop on its own task. Dropping the handle stops the server.
    pub fn spawn(self) -> ServerHandle {
        let (drain_signal, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            requests: (0..=self.workers.len())
                .map(|_| Requests::default())
                .collect(),
            connections: (0..=self.workers.len())
                .map(|_| AtomicUsize::new(0))
                .collect(),
            draining: AtomicBool::new(false),
            drain_signal,
            quiet: Notify::new(),
        });
        let (stop, stopped) = oneshot::channel();
        let ctx = Arc::new(connection::Ctx::new(self.app, self.limits, shared.clone()));
        let threads = Threads {
            others: self.workers,
        };
        let task = tokio::spawn(accept_loop(self.listener, ctx, threads, stopped));
        ServerHandle {
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// Controls a running [`Server`]: drain, wait for the drain, stop.
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// Starts the drain (see the module docs) and returns how many requests were in flight at
    /// that moment. Calling it again changes nothing.
    pub fn start_draining(&self) -> usize {
        self.shared.draining.store(true, Ordering::SeqCst);
        self.shared.drain_signal.send_replace(true);
        self.in_flight()
    }

    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// Requests whose head has been read and whose response body has not yet ended.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Resolves once the drain has started and no request has been in flight for [`SETTLE`].
    /// Bound it with a timeout (`server.shutdown_grace`): a stream that never ends keeps it
    /// pending.
    pub async fn drained(&self) {
        let mut draining = self.shared.drain_signal.subscribe();
        // The sender lives in `shared`, which this handle holds: the wait cannot fail.
        let _ = draining.wait_for(|d| *d).await;
        loop {
            loop {
                let quiet = self.shared.quiet.notified();
                tokio::pin!(quiet);
                // Registered before the count is read, so a request ending in between still
                // wakes this wait.
                quiet.as_mut().enable();
                if self.in_flight() == 0 {
                    break;
                }
                quiet.await;
            }
            let started = self.shared.started();
            tokio::time::sleep(SETTLE).await;
            if self.in_flight() == 0 && self.shared.started() == started {
                return;
            }
        }
    }

    /// Closes the listener and every open connection (requests still in flight are cut), and
    /// waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// What the accept loop, the connections and the handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The request counts, one per serving thread (see [`Requests`]).
    requests: Box<[Requests]>,
    /// Open connections per serving thread, for the accept loop's choice.
    connections: Box<[AtomicUsize]>,
    /// The drain flag, read on every response; `drain_signal` wakes the connection tasks.
    draining: AtomicBool,
    drain_signal: watch::Sender<bool>,
    /// Woken when a thread's in-flight count drops to zero during a drain.
    quiet: Notify,
}

/// One serving thread's request counts, written by every request of that thread only: on
/// cache lines of their own, so the threads never bounce a line between cores per request.
/// The handle reads the sums, rarely.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Requests {
    in_flight: AtomicUsize,
    /// Requests started since the server started; the settle window watches the sum.
    started: AtomicU64,
}

impl Shared {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn in_flight(&self) -> usize {
        self.requests
            .iter()
            .map(|r| r.in_flight.load(Ordering::SeqCst))
            .sum()
    }

    fn started(&self) -> u64 {
        self.requests
            .iter()
            .map(|r| r.started.load(Ordering::SeqCst))
            .sum()
    }

    /// A request started on serving thread `thread`.
    fn request_started(&self, thread: usize) {
        if let Some(r) = self.requests.get(thread) {
            r.started.fetch_add(1, Ordering::SeqCst);
            r.in_flight.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A request of serving thread `thread` ended.
    fn request_ended(&self, thread: usize) {
        // SeqCst on both sides pairs with `start_draining` then `drained` reading the counts:
        // either the drain sees this decrement, or this sees the drain flag and wakes it. The
        // last request to end overall takes its own thread's count to zero, so it is among
        // those that wake the drain, which then sums the counts again.
        if let Some(r) = self.requests.get(thread)
            && r.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.draining.load(Ordering::SeqCst)
        {
            self.quiet.notify_waiters();
        }
    }

    fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_signal.subscribe()
    }
}

/// The serving threads the accept loop hands connections to; see the module docs.
#[derive(Debug)]
struct Threads {
    /// The other runtimes: thread 0 is the accept loop's own, `others[i]` is thread `i + 1`.
    others: Vec<Handle>,
}

impl Threads {
    /// Spawns `serve` for `tcp` on the thread with the fewest open connections.
    fn spawn(
        &self,
        connections: &mut JoinSet<()>,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        ctx: Arc<connection::Ctx>,
    ) {
        let shared = ctx.shared();
        let thread = shared
            .connections
            .iter()
            .enumerate()
            .min_by_key(|(i, n)| (n.load(Ordering::Relaxed), *i))
            .map_or(0, |(i, _)| i);
        let open = Open::count(shared.clone(), thread);
        let Some(handle) = thread.checked_sub(1).and_then(|i| self.others.get(i)) else {
            connections.spawn(async move {
                let _open = open;
                connection::serve(tcp, peer, ctx, 0).await;
            });
            return;
        };
        // The socket is registered with this runtime's event loop: take it out, and register it
        // with the serving thread's when its task starts there.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "handing a connection over failed");
                return;
            }
        };
        connections.spawn_on(
            async move {
                let _open = open;
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => connection::serve(tcp, peer, ctx, thread).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "taking a connection over failed"),
                }
            },
            handle,
        );
    }
}

/// One open connection, counted against its serving thread until dropped.
struct Open {
    shared: Arc<Shared>,
    thread: usize,
}

impl Open {
    fn count(shared: Arc<Shared>, thread: usize) -> Self {
        if let Some(n) = shared.connections.get(thread) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Self { shared, thread }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(n) = self.shared.connections.get(self.thread) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Accepts until `stop` fires (or its sender is dropped), then closes every connection.
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<connection::Ctx>,
    threads: Threads,
    mut stop: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    let mut errors = AcceptErrors::default();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // TCP_NODELAY: streamed chunks must not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    threads.spawn(&mut connections, tcp, peer, ctx.clone());
                }
                Err(e) => errors.pause(e).await,
            },
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    tracing::debug!(error = %e, "connection task failed");
                }
            }
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Accept errors: per-connection ones are ignored, the others paused on and logged sparingly.
#[derive(Debug, Default)]
struct AcceptErrors {
    last_warned: Option<Instant>,
}

impl AcceptErrors {
    async fn pause(&mut self, e: io::Error) {
        if is_connection_error(&e) {
            tracing::debug!(error = %e, "accepting a connection failed");
            return;
        }
        let now = Instant::now();
        if self
            .last_warned
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_ERROR_LOG_EVERY)
        {
            if crate::fds::is_exhausted(&e) {
                // Say what ran out and by how much, not only the errno (see `fds`).
                let (open, limit) = crate::fds::usage();
                let figure = |n: Option<String>| n.unwrap_or_else(|| "?".into());
                tracing::warn!(
                    error = %e,
                    "out of file descriptors: {} open, limit {}; new connections wait in the \
                     listen backlog, accepting again every 100 ms (logged once a minute)",
                    figure(open.map(|n| n.to_string())),
                    figure(limit.map(|n| n.to_string())),
                );
            } else {
                tracing::warn!(
                    error = %e,
                    "accepting connections failed; retrying every 100 ms (logged once a minute)"
                );
            }
            self.last_warned = Some(now);
        } else {
            tracing::debug!(error = %e, "accepting connections failed");
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

/// Errors that concern one connection (the peer gave up before the accept completed).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
