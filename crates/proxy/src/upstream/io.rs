//! One connection to a backend: plain TCP or TLS over TCP, opened within
//! `proxy.connect_timeout`, with `TCP_NODELAY` so a request or a streamed chunk leaves at once.
//!
//! Connect failures come back as core's [`CheckResult`], so a failure on the request path
//! carries the same reason codes as a failed check (`connect_refused`, `timeout`, `dns`,
//! `tls`). The connect timeout covers the DNS lookup, the TCP handshake (every address the
//! name resolves to, in order) and the TLS handshake together.
//!
//! Reading: a connection holds no read buffer while it waits. A read goes into the serving
//! thread's one scratch buffer ([`READ_CHUNK`], 16 KiB) and what arrived is then copied onto
//! the end of the connection's `BytesMut`, which the body hands on and empties again. So a
//! stream waiting 20 ms between chunks holds only the bytes not yet handed on (usually none),
//! not a 16 KiB buffer per connection: at thousands of concurrent streams that was most of
//! the gateway's memory per stream (A/B row in docs/BENCHMARKS.md, streams scenario). The
//! copy is of the bytes read only (a chunk is a few hundred bytes), far cheaper than the
//! syscall that read them.

use bytes::BytesMut;
use hale_core::CheckResult;
use rustls::pki_types::ServerName;
use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use url::{Host, Url};

/// The most one read takes from the socket (the scratch buffer's size).
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The serving thread's scratch buffer every read goes through (see the module docs).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Where an endpoint's connections go, resolved once from its URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// The host name to resolve, or the address itself.
    host: Arc<str>,
    ip: Option<IpAddr>,
    port: u16,
    /// For `https://` endpoints: the name the certificate must carry.
    tls: Option<ServerName<'static>>,
}

impl Target {
    /// The target of an `http://` or `https://` URL; `None` for anything else.
    pub fn from_url(url: &Url) -> Option<Self> {
        let port = url.port_or_known_default()?;
        let (host, ip): (Arc<str>, Option<IpAddr>) = match url.host()? {
            Host::Domain(d) => (Arc::from(d), None),
            Host::Ipv4(ip) => (Arc::from(ip.to_string()), Some(IpAddr::V4(ip))),
            Host::Ipv6(ip) => (Arc::from(ip.to_string()), Some(IpAddr::V6(ip))),
        };
        let tls = match url.scheme() {
            "http" => None,
            "https" => Some(ServerName::try_from(host.to_string()).ok()?),
            _ => return None,
        };
        Some(Self {
            host,
            ip,
            port,
            tls,
        })
    }
}

/// An open connection to a backend.
#[derive(Debug)]
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens a connection to `target` (see the module docs).
pub async fn connect(
    target: &Target,
    tls: &TlsConnector,
    timeout: Duration,
) -> Result<Io, CheckResult> {
    tokio::time::timeout(timeout, open(target, tls))
        .await
        .unwrap_or(Err(CheckResult::Timeout))
}

async fn open(target: &Target, tls: &TlsConnector) -> Result<Io, CheckResult> {
    let addrs: Vec<SocketAddr> = match target.ip {
        Some(ip) => vec![SocketAddr::new(ip, target.port)],
        None => tokio::net::lookup_host((&*target.host, target.port))
            .await
            .map_err(|e| CheckResult::Dns {
                message: format!("resolving {}: {e}", target.host),
            })?
            .collect(),
    };
    let mut last: Option<io::Error> = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                // Without NODELAY a small request or chunk can wait for the peer's delayed ACK.
                let _ = tcp.set_nodelay(true);
                return match &target.tls {
                    None => Ok(Io::Plain(tcp)),
                    Some(name) => tls
                        .connect(name.clone(), tcp)
                        .await
                        .map(|s| Io::Tls(Box::new(s)))
                        .map_err(|e| CheckResult::Tls {
                            message: e.to_string(),
                        }),
                };
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => connect_error(&e),
        None => CheckResult::Dns {
            message: format!("{} resolves to no address", target.host),
        },
    })
}

/// What a failed TCP connect means.
/// How a connect failure that is Hale's own (EMFILE / ENFILE: no descriptor left, whatever
/// the backend's state) begins; see [`is_out_of_descriptors`].
const OUT_OF_DESCRIPTORS: &str = "connect: Hale is out of file descriptors";

/// Whether a connect failure was Hale's own lack of descriptors rather than the backend's.
pub fn is_out_of_descriptors(result: &CheckResult) -> bool {
    matches!(result, CheckResult::Other { message } if message.starts_with(OUT_OF_DESCRIPTORS))
}

fn connect_error(e: &io::Error) -> CheckResult {
    if matches!(e.raw_os_error(), Some(23 | 24)) {
        return CheckResult::Other {
            message: format!("{OUT_OF_DESCRIPTORS} ({e}); raise its open-file limit"),
        };
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => CheckResult::ConnectRefused,
        io::ErrorKind::TimedOut => CheckResult::Timeout,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            CheckResult::ConnectionReset {
                message: e.to_string(),
            }
        }
        _ => CheckResult::Other {
            message: format!("connect: {e}"),
        },
    }
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether an idle connection still looks open: peeking would block, so neither data nor
    /// the peer's FIN has arrived. (Peeking the TCP socket consumes nothing, TLS or not.)
    pub fn looks_alive(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0_u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        self.tcp().poll_peek(&mut cx, &mut buf).is_pending()
    }

    /// Forgets that the socket was readable, without a syscall. Called when a connection goes
    /// back to the pool after its response was read to the end: tokio keeps a socket marked
    /// readable until a read hits `WouldBlock`, so without this the next request's first read
    /// would be a wasted `recv` returning `EAGAIN`. Nothing can be lost: the backend has
    /// nothing more to send, tokio keeps the "read closed" state of a FIN it has already seen,
    /// and a FIN that comes later is a fresh event; either way the next request's first look
    /// after writing finds the end of input and sends it again on a new connection.
    pub fn forget_readable(&self) {
        if let Io::Plain(tcp) = self {
            let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
            });
        }
    }

    /// Reads what is available and appends it to `buf` (through the thread's scratch
    /// buffer, see the module docs); `Ready(Ok(0))` is the end of input.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        SCRATCH.with_borrow_mut(|scratch| {
            let polled = match self {
                // tokio's `poll_read` (unlike `try_read`) takes a read that did not fill the
                // buffer as proof the socket is drained and forgets its readiness, so the next
                // look after a chunk costs no `recv` that could only answer `EAGAIN`.
                Io::Plain(tcp) => {
                    let mut read = ReadBuf::new(scratch);
                    let polled = Pin::new(tcp).poll_read(cx, &mut read);
                    let n = read.filled().len();
                    polled.map_ok(|()| n)
                }
                Io::Tls(tls) => {
                    let mut read = ReadBuf::new(scratch);
                    let polled = Pin::new(tls.as_mut()).poll_read(cx, &mut read);
                    let n = read.filled().len();
                    polled.map_ok(|()| n)
                }
            };
            if let Poll::Ready(Ok(n)) = polled {
                buf.extend_from_slice(&scratch[..n]);
            }
            polled
        })
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_hale_s_own_failure() {
        for errno in [24, 23] {
            let r = connect_error(&io::Error::from_raw_os_error(errno));
            assert!(is_out_of_descriptors(&r), "{r:?}");
        }
        let refused = connect_error(&io::Error::from_raw_os_error(111));
        assert_eq!(refused, CheckResult::ConnectRefused);
        assert!(!is_out_of_descriptors(&refused));
        let other = connect_error(&io::Error::other("boom"));
        assert!(!is_out_of_descriptors(&other), "{other:?}");
    }

    #[test]
    fn targets_from_urls() {
        let t = Target::from_url(&Url::parse("http://127.0.0.1:8000/base").unwrap()).unwrap();
        assert_eq!(
            (t.ip, t.port, t.tls.is_some()),
            (Some("127.0.0.1".parse().unwrap()), 8000, false)
        );
        let t = Target::from_url(&Url::parse("https://api.example.com").unwrap()).unwrap();
        assert_eq!(
            (&*t.host, t.ip, t.port, t.tls.is_some()),
            ("api.example.com", None, 443, true)
        );
        let t = Target::from_url(&Url::parse("http://[::1]:9/").unwrap()).unwrap();
        assert_eq!(t.ip, Some("::1".parse().unwrap()));
        assert!(Target::from_url(&Url::parse("ftp://x/").unwrap()).is_none());
    }

    #[tokio::test]
    async fn refused_and_timed_out_connects_are_told_apart() {
        let tls = TlsConnector::from(Arc::new(crate::upstream::tls_config()));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let e = connect(
            &Target::from_url(&url).unwrap(),
            &tls,
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert_eq!(e, CheckResult::ConnectRefused);

        // A listener whose accept queue is full drops further SYNs: the connect timeout.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = socket.listen(1).unwrap();
        let addr = full.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..4 {
            let attempt =
                tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr));
            if let Ok(Ok(s)) = attempt.await {
                queued.push(s);
            }
        }
        let url = Url::parse(&format!("http://{addr}")).unwrap();
        let e = connect(
            &Target::from_url(&url).unwrap(),
            &tls,
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert_eq!(e, CheckResult::Timeout);
        drop((full, queued));

        let url = Url::parse("http://no-such-host.invalid:80").unwrap();
        let e = connect(
            &Target::from_url(&url).unwrap(),
            &tls,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CheckResult::Dns { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_seen_as_dead() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = Io::Plain(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        assert!(client.looks_alive());
        drop(server);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while client.looks_alive() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the FIN was never seen"
            );
            tokio::task::yield_now().await;
        }
    }
}
