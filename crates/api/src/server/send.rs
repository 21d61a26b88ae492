//! How bytes go to a client's socket: one `sendmsg`, not tokio's `writev`.
//!
//! Both hand the kernel the same gathered slices, but `writev` enters through the file layer
//! (`fdget_pos`, the write-permission and size checks, the `fsnotify` hook) before it reaches
//! the socket, where `sendmsg` goes to the socket directly, as HAProxy's `send` does. With one
//! write per streamed chunk that detour is paid per chunk: perf at 1,000 streams put
//! `vfs_writev` and `fdget_pos` at 6.4 % of the gateway's samples, and `sendmsg` took 2.8 %
//! off its CPU per chunk (docs/BENCHMARKS.md, "Eighth pass").
//! `sendmsg` also takes flags: the coalescer's held writes add `MSG_MORE` (`coalesce`).
//!
//! Linux only; elsewhere tokio's vectored write is used (and `more` is ignored: the
//! coalescer is off there).

use std::io::{self, IoSlice};
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// Sends `bufs` on `tcp` once it is writable, with `MSG_MORE` when `more` (the kernel holds
/// what does not fill a segment). `MSG_NOSIGNAL`: a client gone is an `EPIPE` error, never a
/// signal.
#[cfg(target_os = "linux")]
pub(super) fn poll_send(
    tcp: &mut TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    more: bool,
) -> Poll<io::Result<usize>> {
    let flags = if more {
        libc::MSG_MORE | libc::MSG_NOSIGNAL
    } else {
        libc::MSG_NOSIGNAL
    };
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        // `try_io` clears the socket's write readiness when the send would block, so the loop
        // then waits for the next writable event.
        match tcp.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(&*tcp).send_vectored_with_flags(bufs, flags)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            result => return Poll::Ready(result),
        }
    }
}

/// Elsewhere: tokio's vectored write.
#[cfg(not(target_os = "linux"))]
pub(super) fn poll_send(
    tcp: &mut TcpStream,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    _more: bool,
) -> Poll<io::Result<usize>> {
    use tokio::io::AsyncWrite as _;
    std::pin::Pin::new(tcp).poll_write_vectored(cx, bufs)
}

#[cfg(test)]
pub(super) mod tests {
    //! Over real loopback connections.
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    /// Generous: only a send that never completes fails it.
    const DEADLINE: Duration = Duration::from_secs(10);
    /// More than a loopback socket's send buffer and the client's window take at once.
    const CHUNK: usize = 64 * 1024;

    /// A loopback connection: (the server's side, the client's).
    pub(in crate::server) async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    async fn send(tcp: &mut TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        timeout(DEADLINE, poll_fn(|cx| poll_send(tcp, cx, bufs, false)))
            .await
            .expect("the send never completed")
    }

    #[tokio::test]
    async fn gathered_slices_arrive_in_order() {
        let (mut server, mut client) = pair().await;
        let bufs = [
            IoSlice::new(b"b\r\n"),
            IoSlice::new(b"data: hi\n\n"),
            IoSlice::new(b""),
            IoSlice::new(b"\r\n"),
        ];
        assert_eq!(send(&mut server, &bufs).await.unwrap(), 15);
        let mut got = [0_u8; 15];
        timeout(DEADLINE, client.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"b\r\ndata: hi\n\n\r\n");
    }

    #[tokio::test]
    async fn a_full_socket_waits_until_the_client_reads() {
        let (mut server, mut client) = pair().await;
        let chunk = vec![7_u8; CHUNK];
        // Fill the socket and the client's window: sends return less, then would block.
        let mut sent = 0_usize;
        loop {
            let polled = poll_fn(|cx| {
                Poll::Ready(poll_send(&mut server, cx, &[IoSlice::new(&chunk)], false))
            })
            .await;
            match polled {
                Poll::Ready(n) => sent += n.unwrap(),
                Poll::Pending => break,
            }
        }
        assert!(sent > 0);
        // A reader on the other side frees room; the waiting send then completes.
        let reader = tokio::spawn(async move {
            let mut total = 0_usize;
            let mut buf = vec![0_u8; 64 * 1024];
            while total < sent + CHUNK {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed early");
                total += n;
            }
            total
        });
        let mut rest = CHUNK;
        while rest > 0 {
            rest -= send(&mut server, &[IoSlice::new(&chunk[..rest])])
                .await
                .unwrap();
        }
        let read = timeout(DEADLINE, reader).await.unwrap().unwrap();
        assert_eq!(read, sent + CHUNK);
    }

    #[tokio::test]
    async fn a_client_gone_is_an_error_not_a_signal() {
        let (mut server, client) = pair().await;
        // Linger 0: the close resets the connection.
        socket2::SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(client);
        // Loopback delivers the reset at once; sends keep trying until the deadline.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let e = loop {
            match send(&mut server, &[IoSlice::new(b"data: late\n\n")]).await {
                Err(e) => break e,
                Ok(_) if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
                Ok(_) => panic!("sends to a reset connection kept succeeding"),
            }
        };
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e:?}"
        );
    }
}
