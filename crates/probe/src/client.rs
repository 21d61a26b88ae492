//! The probe HTTP client: one GET over a fresh connection, with every failure classified.
//!
//! A pooled keep-alive connection can hide exactly what a health check is for (a backend that
//! no longer accepts connections still answers on a socket opened minutes ago), so every check
//! resolves, connects, (for https) handshakes TLS and speaks HTTP/1.1 on a new socket, then
//! closes it. Doing those steps by hand, rather than through a pooled client, also tells each
//! failure apart: DNS, refused, reset, TLS and timeout become distinct [`CheckResult`]s.
//!
//! Requests carry `User-Agent: hale/<version>`, `x-hale-pod: <pod id>` when the client was
//! given one (so a backend's logs, and mockllm's stats, can tell which replica checked it)
//! and, when the endpoint has an `api_key`, `Authorization: Bearer <key>`. Bodies are read up to [`MAX_BODY`]; a larger one is a bad
//! response, not a memory problem. The whole exchange is bounded by the check's timeout.
//!
//! [`port_open`] is not a check: a bare TCP connect (no HTTP, no TLS), closed at once, that
//! the scheduler uses to see a refusing backend's port open again.

use bytes::Bytes;
use hale_core::{CheckResult, Secret};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::error::Error as _;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use url::Url;

/// The largest health or model-list body read (a model list of a big Ollama host is ~100 KiB).
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// A complete answer to a probe request.
#[derive(Debug, Clone)]
pub struct ProbeResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends probe requests. Cheap to clone; holds the TLS configuration and the User-Agent.
#[derive(Clone)]
pub struct ProbeClient {
    tls: TlsConnector,
    user_agent: Arc<str>,
    pod_id: Option<http::HeaderValue>,
}

/// The request header that names the replica sending a check.
pub const POD_HEADER: &str = "x-hale-pod";

impl std::fmt::Debug for ProbeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeClient")
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl Default for ProbeClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ProbeClient {
    /// A client that trusts the Mozilla root set (webpki-roots) and sends
    /// `User-Agent: hale/<crate version>`.
    pub fn new() -> Self {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let config = match config {
            Ok(c) => c,
            // The ring provider supports the safe defaults; this arm is never taken, but a
            // client without TLS is better than a panic.
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        Self {
            tls: TlsConnector::from(Arc::new(config)),
            user_agent: Arc::from(format!("hale/{}", env!("CARGO_PKG_VERSION"))),
            pod_id: None,
        }
    }

    /// Sends `x-hale-pod: <pod_id>` with every check. A pod id that is not a valid header
    /// value (it is validated as one at config load) is left out.
    pub fn with_pod_id(mut self, pod_id: &str) -> Self {
        self.pod_id = http::HeaderValue::from_str(pod_id).ok();
        self
    }

    /// GETs `url` on a fresh connection within `limit`, classifying any failure.
    pub async fn get(
        &self,
        url: &Url,
        api_key: &Secret,
        limit: Duration,
    ) -> Result<ProbeResponse, CheckResult> {
        match timeout(limit, self.exchange(url, api_key)).await {
            Ok(result) => result,
            Err(_) => Err(CheckResult::Timeout),
        }
    }

    async fn exchange(&self, url: &Url, api_key: &Secret) -> Result<ProbeResponse, CheckResult> {
        let host = url.host_str().ok_or_else(|| CheckResult::Other {
            message: format!("URL has no host: {url}"),
        })?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<_> = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| CheckResult::Dns {
                message: format!("{host}: {e}"),
            })?
            .collect();
        let Some(addr) = addrs.first() else {
            return Err(CheckResult::Dns {
                message: format!("{host}: no addresses"),
            });
        };
        let tcp = TcpStream::connect(addr).await.map_err(connect_error)?;
        // Probes are tiny; Nagle would only add latency to the measurement.
        let _ = tcp.set_nodelay(true);

        // Origin form (`GET /health`), as servers expect from a client that is not a proxy.
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let request = Request::get(target)
            .header(header::HOST, host_header(url))
            .header(header::USER_AGENT, self.user_agent.as_ref())
            .header(header::ACCEPT, "application/json, text/plain, */*")
            .header(header::CONNECTION, "close");
        let request = match &self.pod_id {
            Some(pod) => request.header(POD_HEADER, pod.clone()),
            None => request,
        };
        let request = if api_key.is_empty() {
            request
        } else {
            request.header(
                header::AUTHORIZATION,
                format!("Bearer {}", api_key.expose()),
            )
        };
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| CheckResult::Other {
                message: format!("cannot build request: {e}"),
            })?;

        if url.scheme() == "https" {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
                CheckResult::Tls {
                    message: format!("invalid server name {host}: {e}"),
                }
            })?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| classify_io(&e, true))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>) -> Result<ProbeResponse, CheckResult>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| classify_hyper(&e))?;
    // The connection task ends when the response is read (Connection: close) or dropped.
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| classify_hyper(&e))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    CheckResult::BadResponse {
                        message: format!("body larger than {MAX_BODY} bytes"),
                    }
                } else if let Some(h) = e.downcast_ref::<hyper::Error>() {
                    classify_hyper(h)
                } else {
                    CheckResult::ConnectionReset {
                        message: e.to_string(),
                    }
                }
            })?
            .to_bytes();
        Ok(ProbeResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    conn.abort();
    result
}

fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

fn connect_error(e: io::Error) -> CheckResult {
    classify_io(&e, false)
}

/// Maps an I/O error to a check result; `tls` says whether it came out of a TLS handshake.
fn classify_io(e: &io::Error, tls: bool) -> CheckResult {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => CheckResult::ConnectRefused,
        io::ErrorKind::TimedOut => CheckResult::Timeout,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => CheckResult::ConnectionReset {
            message: e.to_string(),
        },
        _ if tls => CheckResult::Tls {
            message: e.to_string(),
        },
        _ => CheckResult::Other {
            message: e.to_string(),
        },
    }
}

fn classify_hyper(e: &hyper::Error) -> CheckResult {
    // The io error, if any, says more than hyper's own wrapping does.
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return classify_io(io, false);
        }
        source = s.source();
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        CheckResult::ConnectionReset {
            message: e.to_string(),
        }
    } else if e.is_parse() || e.is_parse_status() {
        CheckResult::BadResponse {
            message: format!("not HTTP: {e}"),
        }
    } else if e.is_timeout() {
        CheckResult::Timeout
    } else {
        CheckResult::Other {
            message: e.to_string(),
        }
    }
}

/// Whether a bare TCP connection to `url`'s host and port opens within `limit` (it is closed
/// at once; no byte is sent). It tells a refusing backend's port has opened again; it is not
/// a check.
pub async fn port_open(url: &Url, limit: Duration) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let connect = async {
        let mut addrs = tokio::net::lookup_host((host.trim_matches(['[', ']']), port)).await?;
        let addr = addrs
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no addresses"))?;
        TcpStream::connect(addr).await
    };
    matches!(timeout(limit, connect).await, Ok(Ok(_)))
}

/// Measures one probe: runs `f`, returns what it returned and how long it took.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}
