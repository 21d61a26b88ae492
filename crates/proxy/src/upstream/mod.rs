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
//! The client is deliberately small, because Hale only ever sends one kind of request: a
//! `POST` with a buffered body, to a backend it was configured with. It writes the request
//! head and body with one `writev` ([`head::encode_request`]), parses the response head with
//! `httparse` ([`head::parse_response`]), and leaves the body to the response body type,
//! which puts the connection back into the endpoint's [`Pool`] once the body has been read to
//! its end.
//!
//! Failures:
//! - A request on a pooled connection that the backend closed before answering anything (a
//!   write error, or end of input before the first byte of a response) is sent again once on
//!   a new connection: the backend may simply have closed an idle connection as Hale reused
//!   it, which says nothing about its health.
//! - Anything else before the response head is complete — connect refused or timed out, DNS,
//!   TLS, reset or closed on a new connection, a malformed head — is a failure of the
//!   endpoint, returned as core's [`CheckResult`] for the failover loop.
//! - There is no timeout on waiting for the response head: a non-streaming generation can
//!   take minutes before its first byte.

pub mod chunked;
pub mod head;
pub mod io;
pub mod pool;

use crate::route::Route;
use bytes::{Buf as _, Bytes, BytesMut};
use hale_core::{CheckResult, Endpoint};
use head::{RequestHead, ResponseHead, encode_request, parse_response};
use http::{HeaderMap, HeaderName, HeaderValue};
use io::{Target, connect};
pub use pool::{Conn, Pool};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt as _;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The read buffer a new connection starts with.
const INITIAL_BUFFER: usize = 8 * 1024;
/// The request-head buffer a new connection starts with.
const INITIAL_WRITE_BUFFER: usize = 1024;

/// What the client keeps per endpoint: where it is, the prepared request lines, its pool.
#[derive(Debug)]
pub struct Destination {
    target: Option<Target>,
    /// The `host` header value: the endpoint URL's authority.
    host: Bytes,
    /// `POST <base path><route path>`, by [`Route::index`].
    request_lines: Vec<Bytes>,
    pub pool: Pool,
}

impl Destination {
    pub fn new(endpoint: &Endpoint) -> Self {
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
            pool: Pool::default(),
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
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            tls: TlsConnector::from(Arc::new(tls_config())),
            connect_timeout,
        }
    }

    /// Sends the request to `dest` and reads the response head. On success the connection
    /// (with any body bytes already read) goes with the head, for the body to finish reading.
    /// `now` is when the attempt starts (it decides which idle connections are too old).
    pub async fn send(
        &self,
        dest: &Destination,
        req: &Outgoing<'_>,
        now: Instant,
    ) -> Result<(ResponseHead, Conn), CheckResult> {
        let Some(target) = &dest.target else {
            return Err(CheckResult::Other {
                message: "the endpoint URL names no http(s) host".into(),
            });
        };
        let head = RequestHead {
            request_line: dest
                .request_lines
                .get(req.route.index())
                .map_or(&b"POST /"[..], |l| &l[..]),
            query: req.query,
            host: &dest.host,
            headers: req.headers,
            keep: req.keep,
            added: req.added,
        };
        if let Some(conn) = dest.pool.take(now) {
            match exchange(conn, &head, req.body).await {
                Ok(done) => return Ok(done),
                Err(Attempt::Failed(result)) => return Err(result),
                // Closed before answering anything: try once more on a new connection.
                Err(Attempt::Unanswered(_)) => {}
            }
        }
        let io = connect(target, &self.tls, self.connect_timeout).await?;
        let conn = Conn {
            io,
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            wbuf: BytesMut::with_capacity(INITIAL_WRITE_BUFFER),
        };
        match exchange(conn, &head, req.body).await {
            Ok(done) => Ok(done),
            Err(Attempt::Failed(result)) => Err(result),
            Err(Attempt::Unanswered(message)) => Err(CheckResult::ConnectionReset { message }),
        }
    }
}

/// How one attempt on one connection went wrong.
enum Attempt {
    /// Nothing came back: the write failed, or the connection ended before a byte arrived.
    Unanswered(String),
    /// Something definite: a reset mid-head, a malformed head.
    Failed(CheckResult),
}

/// Writes the request and reads the response head on `conn`.
async fn exchange(
    mut conn: Conn,
    head: &RequestHead<'_>,
    body: &Bytes,
) -> Result<(ResponseHead, Conn), Attempt> {
    conn.wbuf.clear();
    encode_request(&mut conn.wbuf, head, body.len());
    let written = async {
        let Conn { io, wbuf, .. } = &mut conn;
        // Head and body leave together, in one writev.
        let mut out = (&wbuf[..]).chain(&body[..]);
        io.write_all_buf(&mut out).await?;
        io.flush().await
    };
    if let Err(e) = written.await {
        return Err(Attempt::Unanswered(format!("sending the request: {e}")));
    }
    let mut received = false;
    loop {
        match parse_response(&mut conn.buf, crate::hygiene::forwards_downstream) {
            Ok(Some(head)) => return Ok((head, conn)),
            Ok(None) => {}
            Err(e) => {
                return Err(Attempt::Failed(CheckResult::BadResponse {
                    message: e.to_string(),
                }));
            }
        }
        let read = std::future::poll_fn(|cx| conn.io.poll_read_into(cx, &mut conn.buf)).await;
        match read {
            Ok(0) if !received => {
                return Err(Attempt::Unanswered(
                    "the backend closed the connection without answering".into(),
                ));
            }
            Ok(0) => {
                return Err(Attempt::Failed(CheckResult::ConnectionReset {
                    message: "the backend closed the connection in the middle of the response head"
                        .into(),
                }));
            }
            Ok(_) => received = true,
            Err(e) if !received => {
                return Err(Attempt::Unanswered(format!("reading the response: {e}")));
            }
            Err(e) => {
                return Err(Attempt::Failed(CheckResult::ConnectionReset {
                    message: format!("reading the response head: {e}"),
                }));
            }
        }
    }
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
