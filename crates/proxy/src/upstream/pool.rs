//! The idle keep-alive connections of one endpoint.
//!
//! A connection goes back into the pool when a response has been read to its end on it and
//! the backend did not ask to close it; the next request to that endpoint takes the most
//! recently used one (its TCP window and the backend's worker are warm), and a request finding
//! the pool empty opens a new connection. The pool never holds a connection for a request in
//! flight, so its mutex is held for a push or a pop, never across I/O.
//!
//! Decisions:
//! - Idle connections are used for at most [`IDLE_TIMEOUT`] (4 s), just under the 5 s
//!   keep-alive timeout of uvicorn-based servers (vLLM, SGLang): Hale never sends a request on
//!   a connection the backend may be closing at that very moment. Older ones are closed when
//!   the pool is next touched.
//! - A connection that has idled for [`CHECK_AFTER`] (1 s) or more is checked with a
//!   non-blocking peek before it is used: if the backend has closed it (or sent something
//!   unasked), it is dropped and the next is tried. One idle for less is used without the
//!   extra syscall — servers close idle connections after seconds, not milliseconds — and in
//!   the rare case it was closed anyway, the request is sent again on a new connection, since
//!   the backend cannot have read it (see `upstream` for how that is told apart from a
//!   request the backend read and then dropped, which is never sent again).
//! - Up to [`MAX_IDLE`] idle connections are kept per endpoint, enough for any realistic
//!   concurrency; more are closed as they come back.
//! - A connection keeps its request-head buffer while idle; its read buffer is empty and
//!   holds no memory between reads (see `io`).
//! - The idle connections are kept per serving thread ([`crate::worker`]): a request takes
//!   and returns connections of its own thread only, because a socket is registered with the
//!   event loop of the thread that opened it. Each thread's list has its own mutex on its own
//!   cache line, so the threads never contend for it; only the sweeper and [`Pool::clear`]
//!   visit all of them.

use super::io::Io;
use crate::runtime::Padded;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long an idle connection may be reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections older than this are checked with a peek before use.
pub const CHECK_AFTER: Duration = Duration::from_secs(1);
/// How many idle connections are kept per endpoint.
pub const MAX_IDLE: usize = 512;

/// An open connection and its read buffer (what was read and not yet handed on; no memory
/// while empty). Request heads are written from buffers the serving thread keeps
/// (`take_head_buffer` in the parent module), not the connection's.
#[derive(Debug)]
pub struct Conn {
    pub io: Io,
    pub buf: BytesMut,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// One endpoint's idle connections; see the module docs.
#[derive(Debug)]
pub struct Pool {
    /// One list per serving thread, each taken by every request of its thread: on cache lines
    /// of their own.
    idle: Box<[Padded<Mutex<VecDeque<Idle>>>]>,
}

impl Default for Pool {
    /// A pool for one serving thread.
    fn default() -> Self {
        Self::new(1)
    }
}

impl Pool {
    /// A pool for `workers` serving threads (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            idle: (0..workers.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    /// The calling thread's idle connections.
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        lock(crate::worker::slot(&self.idle))
    }

    /// The most recently used live connection, if any.
    pub fn take(&self, now: Instant) -> Option<Conn> {
        loop {
            let idle = self.lock().pop_back()?;
            let idled = now.saturating_duration_since(idle.since);
            if idled >= IDLE_TIMEOUT {
                // This was the newest; everything older has timed out too.
                let expired: Vec<Idle> = self.lock().drain(..).collect();
                drop(expired);
                return None;
            }
            if idled < CHECK_AFTER || idle.conn.io.looks_alive() {
                return Some(idle.conn);
            }
        }
    }

    /// Puts a connection whose response was read to the end back for reuse.
    pub fn put(&self, conn: Conn, now: Instant) {
        conn.io.forget_readable();
        let mut expired = Vec::new();
        {
            let mut idle = self.lock();
            Self::take_expired(&mut idle, now, &mut expired);
            if idle.len() < MAX_IDLE {
                idle.push_back(Idle { conn, since: now });
            }
        }
        // Closing sockets happens outside the lock.
        drop(expired);
    }

    /// Closes the connections that have idled past [`IDLE_TIMEOUT`], so an endpoint that no
    /// longer gets traffic does not keep sockets open (run periodically by the proxy).
    pub fn close_expired(&self, now: Instant) {
        for idle in &self.idle {
            let mut expired = Vec::new();
            Self::take_expired(&mut lock(idle), now, &mut expired);
            drop(expired);
        }
    }

    /// Closes every idle connection of every thread (the endpoint just failed, or was removed:
    /// they are of no further use).
    pub fn clear(&self) {
        for idle in &self.idle {
            let all: Vec<Idle> = lock(idle).drain(..).collect();
            drop(all);
        }
    }

    fn take_expired(idle: &mut VecDeque<Idle>, now: Instant, into: &mut Vec<Idle>) {
        while idle
            .front()
            .is_some_and(|i| now.saturating_duration_since(i.since) >= IDLE_TIMEOUT)
        {
            into.extend(idle.pop_front());
        }
    }

    /// How many connections are idle now, on every thread.
    #[cfg(test)]
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|i| lock(i).len()).sum()
    }
}

fn lock(idle: &Padded<Mutex<VecDeque<Idle>>>) -> MutexGuard<'_, VecDeque<Idle>> {
    // A push or a pop cannot leave the queue inconsistent, so a poisoned lock is usable.
    idle.0.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair(listener: &TcpListener) -> (Conn, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (
            Conn {
                io: Io::Plain(client),
                buf: BytesMut::new(),
            },
            server,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn newest_first_and_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let (a, _sa) = pair(&listener).await;
        let (b, _sb) = pair(&listener).await;
        let a_port = match &a.io {
            Io::Plain(s) => s.local_addr().unwrap().port(),
            Io::Tls(_) => unreachable!(),
        };
        pool.put(a, Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        pool.put(b, Instant::now());
        assert_eq!(pool.idle_count(), 2);
        // 2 s later `a` has idled 5 s: `b` is taken, `a` is closed on the next put.
        tokio::time::advance(Duration::from_secs(2)).await;
        let got = pool.take(Instant::now()).unwrap();
        match &got.io {
            Io::Plain(s) => assert_ne!(s.local_addr().unwrap().port(), a_port),
            Io::Tls(_) => unreachable!(),
        }
        pool.put(got, Instant::now());
        assert_eq!(pool.idle_count(), 1, "the expired one was dropped");
        tokio::time::advance(IDLE_TIMEOUT).await;
        assert!(pool.take(Instant::now()).is_none());
        assert_eq!(pool.idle_count(), 0);

        // The periodic sweep and a clear close idle connections without a request.
        let (c, _sc) = pair(&listener).await;
        let (d, _sd) = pair(&listener).await;
        pool.put(c, Instant::now());
        tokio::time::advance(Duration::from_secs(2)).await;
        pool.put(d, Instant::now());
        tokio::time::advance(Duration::from_secs(3)).await;
        pool.close_expired(Instant::now());
        assert_eq!(pool.idle_count(), 1, "only the older one had expired");
        pool.clear();
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn connections_the_backend_closed_are_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::default();
        let (dead, server) = pair(&listener).await;
        let (live, _keep) = pair(&listener).await;
        // Both idle long enough to be checked before use.
        let earlier = Instant::now() - CHECK_AFTER;
        pool.put(live, earlier);
        pool.put(dead, earlier);
        drop(server);
        // Wait until the FIN is visible, then the dead one (newest) is skipped for the live one.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let seen = pool.lock().back().is_some_and(|i| !i.conn.io.looks_alive());
            if seen {
                break;
            }
            assert!(Instant::now() < deadline, "the FIN was never seen");
            tokio::task::yield_now().await;
        }
        assert!(pool.take(Instant::now()).is_some());
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn each_serving_thread_reuses_only_its_own_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::new(2);
        let (a, _sa) = pair(&listener).await;
        crate::worker::set_index(1);
        pool.put(a, Instant::now());
        crate::worker::set_index(0);
        assert!(
            pool.take(Instant::now()).is_none(),
            "thread 0 does not take thread 1's connection"
        );
        assert_eq!(pool.idle_count(), 1);
        crate::worker::set_index(1);
        assert!(pool.take(Instant::now()).is_some());
        let (b, _sb) = pair(&listener).await;
        pool.put(b, Instant::now());
        crate::worker::set_index(0);
        pool.clear();
        assert_eq!(pool.idle_count(), 0, "clear empties every thread's list");
    }
}
