//! A minimal HTTP/1.1 client for tests: one fresh connection per request, JSON in, JSON (or
//! text) out, and a timeout so that a hanging server fails the test instead of hanging it.
//!
//! A fresh connection per request is deliberate: a pooled connection would hide exactly the
//! events end-to-end tests provoke (a server killed and restarted, a port closed), and test
//! traffic is too small for connection reuse to matter. Only plain `http://` is supported.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// The longest a request (connect, send, receive the whole body) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A complete response.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code, for example `200`.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Value::String` holding the raw text when the body is not
    /// JSON; `Value::Null` when it is empty.
    pub body: Value,
    /// The raw body, lossily decoded as UTF-8.
    pub text: String,
}

impl HttpReply {
    /// A header's value, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET url`.
pub async fn http_get_json(url: &str) -> anyhow::Result<HttpReply> {
    http_request(Method::GET, url, &[], None).await
}

/// `POST url` with a JSON body.
pub async fn http_post_json(url: &str, body: &Value) -> anyhow::Result<HttpReply> {
    http_request(Method::POST, url, &[], Some(body)).await
}

/// Any request: extra `headers` (for example `("authorization", "Bearer t")`) and an
/// optional JSON body. Transport failures are errors; any HTTP status is a reply.
pub async fn http_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> anyhow::Result<HttpReply> {
    let what = format!("{method} {url}");
    tokio::time::timeout(REQUEST_TIMEOUT, send(method, url, headers, body))
        .await
        .map_err(|_| anyhow!("no complete response within {}s", REQUEST_TIMEOUT.as_secs()))
        .and_then(|reply| reply)
        .context(what)
}

async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> anyhow::Result<HttpReply> {
    let uri: Uri = url.parse().context("parsing the URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported");
    }
    let authority = uri.authority().context("the URL has no host")?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host(), port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // The connection task ends by itself once the response is read and `sender` is dropped.
    tokio::spawn(connection);

    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority.as_str());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let payload = match body {
        Some(json) => {
            request = request.header(CONTENT_TYPE, "application/json");
            Bytes::from(serde_json::to_vec(json)?)
        }
        None => Bytes::new(),
    };
    let response = sender
        .send_request(request.body(Full::new(payload))?)
        .await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
    };
    Ok(HttpReply {
        status,
        headers,
        body,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// Serves one connection with a canned response and returns the raw request it read.
    async fn serve_once(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0_u8; 4096];
            // Reads the headers and then exactly the announced body: closing a socket with
            // unread input would send a reset that could cut off the response.
            while complete_len(&request).is_none_or(|len| request.len() < len) {
                let n = socket.read(&mut buf).await.unwrap();
                assert_ne!(n, 0, "the client closed before sending the whole request");
                request.extend_from_slice(&buf[..n]);
            }
            socket.write_all(response.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            String::from_utf8(request).unwrap()
        });
        (url, task)
    }

    /// The total length of a request once its headers are in: headers plus content-length.
    fn complete_len(request: &[u8]) -> Option<usize> {
        let end = request.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
        let body = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        Some(end + body)
    }

    #[tokio::test]
    async fn get_parses_a_json_body() {
        let (url, server) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}",
        )
        .await;
        let reply = http_get_json(&format!("{url}/health?x=1")).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, serde_json::json!({"ok": true}));
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let request = server.await.unwrap();
        assert!(
            request.starts_with("GET /health?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn post_sends_json_and_keeps_a_text_body_as_text() {
        let (url, server) =
            serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 7\r\n\r\nloading")
                .await;
        let reply = http_post_json(
            &format!("{url}/__mode"),
            &serde_json::json!({"status": 503}),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 503);
        assert!(!reply.is_success());
        assert_eq!(reply.body, Value::String("loading".into()));
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /__mode HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("content-type: application/json"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_error_naming_the_request() {
        let url = format!("http://127.0.0.1:{}/x", crate::free_port());
        let err = http_get_json(&url).await.unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("GET {url}: ")),
            "{err:#}"
        );
    }
}
