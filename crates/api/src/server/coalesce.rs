//! `server.stream_coalesce`: several streamed chunks in one TCP segment, for a bounded delay.
//!
//! Off by default, Hale writes each chunk of a streamed answer the moment it has it, and each
//! write is one segment to the client. With thousands of streams of one token every 20–50 ms,
//! sending those segments is most of the proxy's CPU: on loopback the kernel also delivers
//! each one to the receiving socket on the sender's time. Plain HAProxy writes every chunk but
//! the last with `MSG_MORE`, so the kernel holds it until a segment fills, the client
//! acknowledges earlier data, or its probe timer fires (about 200 ms): a tenth of the segments,
//! tokens in bursts (docs/BENCHMARKS.md, "Proxy overhead: concurrent long streams").
//!
//! [`Coalescer`] does the same, bounded by the configured delay. While a response body is
//! streaming ([`Coalescer::set_streaming`], told by the body: it has delivered a frame before
//! the one being written, so the head and the first chunk always go at once), writes carry
//! `MSG_MORE`. Held bytes are pushed (`TCP_NODELAY` set again, which sends what the socket
//! holds) when the delay has passed since the first of them, when the body ends, or with the
//! next write that is not held. The delay's timer is polled from `poll_flush`, which hyper
//! calls every time it polls the connection, so it wakes the connection's task.
//!
//! One allocation per HTTP/1 connection, shared (`Arc`) by the connection's writer and its
//! response bodies, holds both the body's word and the writer's own state (behind a lock only
//! the connection's task takes, so never contended). Each write reads both, and with
//! thousands of streams whatever a chunk touches is out of the cache by the next one: when
//! they lived apart (the flag in the connection's `ConnState`, the rest boxed in the writer),
//! the two first reads were 2.0 % and 1.9 % of the gateway's CPU samples at 1,000 streams
//! (docs/BENCHMARKS.md, "Sixth pass").
//!
//! The kernel itself sends held bytes when the client acknowledges earlier ones or its probe
//! timer fires (the retransmission timeout, at least 200 ms), so the delay is an upper bound.
//! Below about 200 ms Hale's own push sends each held segment, in its own CPU time; above it
//! the kernel's timer mostly does, as for HAProxy (docs/BENCHMARKS.md: 1.14× plain HAProxy's
//! CPU per chunk at 1,000 streams with 200 ms in the fifth pass; 1.03–1.14× with 1 s over the
//! seven runs of the fifth and sixth passes, 0.96–1.01× at 5,000 streams; in the seventh
//! pass's three runs, once the upstream client stopped polling for answers while streams
//! flow, 0.99–1.03× at 1,000 streams and 0.86–0.95× at 5,000).
//!
//! HTTP/1 only (HTTP/2 multiplexes streams over one socket; h2 batches its own writes), and
//! Linux only (`MSG_MORE`); elsewhere the setting has no effect.

use super::send::poll_send;
use hale_core::config::clock_safe;
use hale_proxy::QuietSleep;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One HTTP/1 connection's held bytes, the clock that bounds them, and whether its response
/// body is streaming.
#[derive(Debug)]
pub(super) struct Coalescer {
    max: Duration,
    /// Set by the response body while it streams past its first frame (see `tracked`).
    streaming: AtomicBool,
    /// Taken only by the connection's task, in its writes and flushes.
    writer: Mutex<Writer>,
}

#[derive(Debug)]
struct Writer {
    /// Bytes were written with `MSG_MORE` since the last push (the kernel may have sent them
    /// since, on an acknowledgement: then the push is a no-op).
    held: bool,
    /// Armed at each first held write (made at the connection's first): the push is due when
    /// it fires. Looked at on every flush of a stream's chunks, it registers the task's waker
    /// once per firing.
    due: Option<QuietSleep>,
}

impl Coalescer {
    /// A coalescer holding bytes at most `max`; `None` when `max` is zero (off) or where
    /// `MSG_MORE` does not exist.
    pub(super) fn new(max: Duration) -> Option<Self> {
        if max.is_zero() || !cfg!(target_os = "linux") {
            return None;
        }
        let max = clock_safe(max);
        Some(Self {
            max,
            streaming: AtomicBool::new(false),
            writer: Mutex::new(Writer {
                held: false,
                due: None,
            }),
        })
    }

    /// The connection's response body is streaming past its first frame (`true`), or has
    /// ended or been dropped (`false`).
    pub(super) fn set_streaming(&self, streaming: bool) {
        self.streaming.store(streaming, Ordering::Relaxed);
    }

    /// Whether chunks written now may be held.
    fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `bufs` to `tcp`: held while the body streams, else sent (with anything held
    /// before).
    pub(super) fn poll_write(
        &self,
        tcp: &mut TcpStream,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.is_streaming() {
            let written = ready!(poll_send(tcp, cx, bufs, false))?;
            // A write without `MSG_MORE` on a `TCP_NODELAY` socket sends all it holds.
            self.writer().held = false;
            return Poll::Ready(Ok(written));
        }
        let written = ready!(poll_send(tcp, cx, bufs, true))?;
        let mut writer = self.writer();
        if !writer.held {
            writer.held = true;
            let at = Instant::now() + self.max;
            match &mut writer.due {
                Some(due) => due.reset(at),
                None => writer.due = Some(QuietSleep::until(at)),
            }
        }
        Poll::Ready(Ok(written))
    }

    /// Pushes held bytes if the stream is over or they have waited their time; otherwise has
    /// the task woken when they have.
    pub(super) fn poll_push(&self, tcp: &TcpStream, cx: &mut Context<'_>) -> io::Result<()> {
        let mut writer = self.writer();
        let waiting = |due: &mut QuietSleep| due.poll_elapsed(Instant::now(), cx).is_pending();
        if !writer.held || (self.is_streaming() && writer.due.as_mut().is_some_and(waiting)) {
            return Ok(());
        }
        // Setting TCP_NODELAY (already set) pushes the socket's pending segments out.
        tcp.set_nodelay(true)?;
        writer.held = false;
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn is_holding(&self) -> bool {
        self.writer().held
    }
}

#[cfg(test)]
mod tests {
    //! Over a real loopback connection: what the kernel holds shows as a client socket with
    //! nothing to read, and loopback delivers a sent segment before the send returns.
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncReadExt as _;
    use tokio::time::timeout;

    const MAX: Duration = Duration::from_millis(50);
    /// Generous: only a push that never comes fails it.
    const DEADLINE: Duration = Duration::from_secs(5);

    async fn pair() -> (TcpStream, TcpStream) {
        let (server, client) = crate::server::send::tests::pair().await;
        server.set_nodelay(true).unwrap();
        (server, client)
    }

    /// Writes `bytes` as a body that is (`streaming`) or is not past its first frame.
    async fn write(c: &Coalescer, tcp: &mut TcpStream, bytes: &[u8], streaming: bool) {
        c.set_streaming(streaming);
        let n = poll_fn(|cx| c.poll_write(tcp, cx, &[IoSlice::new(bytes)]))
            .await
            .unwrap();
        assert_eq!(n, bytes.len());
    }

    /// Below the kernel's own hold (its probe timer, at least 200 ms): bytes readable sooner
    /// after a held write were not held.
    const KERNEL_HOLDS_AT_LEAST: Duration = Duration::from_millis(150);

    /// Asserts that nothing written since `since` has reached the client, unless so much time
    /// has passed (a stalled test thread) that the kernel may have sent it on its own.
    fn assert_held(client: &TcpStream, since: Instant) {
        let waiting = waiting_bytes(client);
        if since.elapsed() < KERNEL_HOLDS_AT_LEAST {
            assert_eq!(waiting, 0, "held bytes reached the client");
        }
    }

    /// How many bytes the client could read now, left in place for later reads.
    fn waiting_bytes(client: &TcpStream) -> usize {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
        match socket2::SockRef::from(client).peek(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    async fn read_exactly(client: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut buf = vec![0_u8; len];
        timeout(DEADLINE, client.read_exact(&mut buf))
            .await
            .expect("the held bytes were never pushed")
            .unwrap();
        buf
    }

    #[test]
    fn zero_is_off() {
        assert!(Coalescer::new(Duration::ZERO).is_none());
    }

    #[tokio::test]
    async fn streaming_writes_are_held_and_pushed_when_the_stream_ends() {
        let (mut server, mut client) = pair().await;
        let c = Coalescer::new(MAX).unwrap();
        write(&c, &mut server, b"head+first", false).await;
        assert_eq!(read_exactly(&mut client, 10).await, b"head+first");

        let since = Instant::now();
        write(&c, &mut server, b"second", true).await;
        write(&c, &mut server, b"third", true).await;
        assert!(c.is_holding());
        // Not due yet, still streaming: nothing moves.
        poll_fn(|cx| Poll::Ready(c.poll_push(&server, cx)))
            .await
            .unwrap();
        assert!(c.is_holding());
        assert_held(&client, since);

        // The body ended: pushed at once, whatever the clock says.
        c.set_streaming(false);
        poll_fn(|cx| Poll::Ready(c.poll_push(&server, cx)))
            .await
            .unwrap();
        assert!(!c.is_holding());
        assert_eq!(read_exactly(&mut client, 11).await, b"secondthird");
    }

    #[tokio::test]
    async fn held_bytes_are_pushed_once_the_delay_has_passed_and_not_before() {
        let (mut server, mut client) = pair().await;
        let c = Coalescer::new(MAX).unwrap();
        let held_at = Instant::now();
        write(&c, &mut server, b"token", true).await;
        wait_for_push(&c, &server).await;
        let pushed_after = held_at.elapsed();
        assert!(pushed_after >= MAX, "pushed after {pushed_after:?}");
        assert_eq!(read_exactly(&mut client, 5).await, b"token");

        // The next held write starts a new delay, timed from it.
        let since = Instant::now();
        write(&c, &mut server, b"again", true).await;
        assert!(c.is_holding());
        assert_held(&client, since);
        wait_for_push(&c, &server).await;
        let pushed_after = since.elapsed();
        assert!(pushed_after >= MAX, "pushed after {pushed_after:?}");
        assert_eq!(read_exactly(&mut client, 5).await, b"again");
    }

    /// Looks at the coalescer as the connection's task does on each wake-up (the task is
    /// woken when the delay is over) until it has pushed.
    async fn wait_for_push(c: &Coalescer, server: &TcpStream) {
        let mut looks = 0;
        let pushed = poll_fn(|cx| {
            looks += 1;
            c.poll_push(server, cx).unwrap();
            if c.is_holding() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        });
        timeout(DEADLINE, pushed)
            .await
            .expect("the task was never woken to push");
        // One look that registered the timer, one when it fired (a spurious wake-up at most).
        assert!(looks <= 3, "{looks} looks");
    }

    #[tokio::test]
    async fn a_write_that_is_not_held_takes_the_held_bytes_with_it() {
        let (mut server, mut client) = pair().await;
        let c = Coalescer::new(Duration::from_secs(1)).unwrap();
        let since = Instant::now();
        write(&c, &mut server, b"held ", true).await;
        assert_held(&client, since);
        write(&c, &mut server, b"0\r\n\r\n", false).await;
        assert!(!c.is_holding());
        assert_eq!(read_exactly(&mut client, 10).await, b"held 0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_makes_held_writes_wait_and_loses_nothing() {
        let (mut server, mut client) = pair().await;
        let c = Coalescer::new(MAX).unwrap();
        // Far more than the socket buffers hold: held writes meet a full socket and wait.
        const CHUNKS: usize = 16_384;
        let chunk: Vec<u8> = (0..1024_u32).map(|i| (i % 251) as u8).collect();
        let sent = chunk.clone();
        c.set_streaming(true);
        let writer = tokio::spawn(async move {
            for _ in 0..CHUNKS {
                let mut rest = &sent[..];
                while !rest.is_empty() {
                    let n = poll_fn(|cx| c.poll_write(&mut server, cx, &[IoSlice::new(rest)]))
                        .await
                        .unwrap();
                    rest = &rest[n..];
                }
            }
            c.set_streaming(false);
            poll_fn(|cx| Poll::Ready(c.poll_push(&server, cx)))
                .await
                .unwrap();
            server
        });
        // The client reads nothing until the writer is stuck on a full socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!writer.is_finished(), "16 MiB fit in the socket buffers");
        let got = read_exactly(&mut client, CHUNKS * chunk.len()).await;
        assert!(got.chunks(chunk.len()).all(|c| c == chunk));
        timeout(DEADLINE, writer).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_is_an_error_not_a_panic() {
        let (mut server, client) = pair().await;
        let c = Coalescer::new(MAX).unwrap();
        drop(client);
        // The first write may still be accepted; the reset makes a later one fail.
        let deadline = Instant::now() + DEADLINE;
        loop {
            c.set_streaming(true);
            let written = poll_fn(|cx| c.poll_write(&mut server, cx, &[IoSlice::new(b"x")])).await;
            if written.is_err() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "writes to a closed peer kept succeeding"
            );
            tokio::task::yield_now().await;
            c.set_streaming(false);
            poll_fn(|cx| Poll::Ready(c.poll_push(&server, cx).ok())).await;
        }
    }
}
