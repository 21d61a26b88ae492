//! A keep-alive HTTP/1.1 client for tests that measure a gateway rather than poke at it:
//! load loops and time-to-first-byte comparisons, where a new TCP connection per request would
//! measure the kernel's handshake instead of the thing under test.
//!
//! [`PooledClient::post`] returns the whole answer like [`http_request`](crate::http_request);
//! [`PooledClient::post_streamed`] returns the body as the chunks it arrived in, each stamped
//! with the time since the request was sent, so a test can tell a stream passed through chunk
//! by chunk from one that was buffered, and read the time to the first chunk.
//! [`PooledClient::post_streaming`] returns as soon as the response head is in, with the body
//! still arriving ([`OpenStream`]), for tests that act in the middle of a stream (a signal to
//! the gateway, a backend killed). Every call has a deadline, so a hanging server fails the
//! test instead of hanging it.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::{Instant, timeout};

use crate::http::HttpReply;

/// The longest one request (until its last byte) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One piece of a streamed body and when it arrived.
#[derive(Debug, Clone)]
pub struct TimedChunk {
    /// Time from sending the request to receiving this chunk.
    pub at: Duration,
    pub data: Bytes,
}

/// A response whose body was read chunk by chunk.
#[derive(Debug, Clone)]
pub struct StreamedReply {
    pub status: u16,
    pub headers: HeaderMap,
    /// Time from sending the request to having the response head.
    pub head_at: Duration,
    pub chunks: Vec<TimedChunk>,
}

impl StreamedReply {
    /// The whole body, lossily decoded as UTF-8.
    pub fn text(&self) -> String {
        let bytes: Vec<u8> = self
            .chunks
            .iter()
            .flat_map(|c| c.data.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A header's value, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// When the first non-empty chunk arrived.
    pub fn first_chunk_at(&self) -> Option<Duration> {
        self.chunks
            .iter()
            .find(|c| !c.data.is_empty())
            .map(|c| c.at)
    }
}

/// A pooled keep-alive client (plain `http://` only); cheap to clone, clones share the pool.
#[derive(Debug, Clone)]
pub struct PooledClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for PooledClient {
    fn default() -> Self {
        Self::new()
    }
}

impl PooledClient {
    pub fn new() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(256)
                .build(http),
        }
    }

    fn request(
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(http::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request
            .body(Full::new(body))
            .context("building the request")
    }

    /// `POST url` with a JSON body (already serialised: a `&'static str` costs no copy) and
    /// extra headers; the whole answer.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<HttpReply> {
        let request = Self::request(url, headers, body.into())?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, headers, bytes))
        };
        let (status, headers, bytes) = timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no complete response within {}s", REQUEST_TIMEOUT.as_secs()))?
            .with_context(|| format!("POST {url}"))?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Ok(HttpReply {
            status,
            headers,
            body: json,
            text,
        })
    }

    /// `POST url` and read the body as it streams in, each chunk time-stamped.
    pub async fn post_streamed(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<StreamedReply> {
        let exchange = async {
            let open = self.post_streaming(url, headers, body).await?;
            let (status, headers, head_at) = (open.status, open.headers.clone(), open.head_at);
            let chunks = open.rest().await?;
            anyhow::Ok(StreamedReply {
                status,
                headers,
                head_at,
                chunks,
            })
        };
        timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no complete response within {}s", REQUEST_TIMEOUT.as_secs()))?
            .with_context(|| format!("POST {url} (streamed)"))
    }

    /// `POST url` and return once the response head is in; the body is read from the
    /// [`OpenStream`] as it arrives.
    pub async fn post_streaming(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<OpenStream> {
        let request = Self::request(url, headers, body.into())?;
        let sent = Instant::now();
        let response = timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| anyhow!("no response head within {}s", REQUEST_TIMEOUT.as_secs()))?
            .with_context(|| format!("POST {url} (streaming)"))?;
        Ok(OpenStream {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            head_at: sent.elapsed(),
            sent,
            body: response.into_body(),
        })
    }
}

/// A response whose body is still arriving; see [`PooledClient::post_streaming`].
#[derive(Debug)]
pub struct OpenStream {
    pub status: u16,
    pub headers: HeaderMap,
    /// Time from sending the request to having the response head.
    pub head_at: Duration,
    sent: Instant,
    body: Incoming,
}

impl OpenStream {
    /// The next data chunk, time-stamped from when the request was sent; `None` at the end
    /// of the body. An error if the body fails or nothing arrives for 30 s.
    pub async fn next_chunk(&mut self) -> anyhow::Result<Option<TimedChunk>> {
        loop {
            let frame = timeout(REQUEST_TIMEOUT, self.body.frame())
                .await
                .map_err(|_| anyhow!("no chunk within {}s", REQUEST_TIMEOUT.as_secs()))?;
            let Some(frame) = frame else {
                return Ok(None);
            };
            if let Ok(data) = frame.context("reading the streamed body")?.into_data() {
                return Ok(Some(TimedChunk {
                    at: self.sent.elapsed(),
                    data,
                }));
            }
        }
    }

    /// Every remaining chunk, to the end of the body.
    pub async fn rest(mut self) -> anyhow::Result<Vec<TimedChunk>> {
        let mut chunks = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            chunks.push(chunk);
        }
        Ok(chunks)
    }
}
