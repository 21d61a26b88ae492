//! Test harness: spawns the real `mockllm` binary on an ephemeral port and talks HTTP/1.1 to
//! it over loopback with hyper's low-level client, one fresh connection per request (so a
//! failure mode that drops connections cannot leak into the next request).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

/// How long mockllm may take to announce its port.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// How long any one ordinary request may take before the test fails.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// A running mockllm, killed when dropped.
#[derive(Debug)]
pub struct Mock {
    child: Child,
    pub port: u16,
}

impl Mock {
    /// Starts `mockllm --port 0 ARGS…` and reads its listening line.
    pub async fn start(args: &[&str]) -> anyhow::Result<Mock> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mockllm"))
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning mockllm")?;
        let stdout = child.stdout.take().context("mockllm stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = timeout(START_DEADLINE, lines.next_line())
            .await
            .context("mockllm did not announce its port in time")??
            .context("mockllm exited before announcing its port")?;
        let addr = line
            .strip_prefix("mockllm listening on ")
            .with_context(|| format!("unexpected first line {line:?}"))?;
        let port = addr
            .rsplit(':')
            .next()
            .context("no port in the listening line")?
            .parse()?;
        assert!(addr.starts_with("127.0.0.1:"), "{line}");
        Ok(Mock { child, port })
    }

    /// The process id, for sending signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit (at most `limit`).
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        Ok(timeout(limit, self.child.wait()).await??)
    }

    /// Sends a request and returns the response head with its body still streaming.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<http::Response<Incoming>> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection task ends with the response (or with the server dropping it).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))?;
        Ok(sender.send_request(req).await?)
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Reply> {
        timeout(REQUEST_DEADLINE, async {
            let resp = self.send(method, path, body, headers).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        })
        .await
        .with_context(|| format!("request to {path} timed out"))?
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &str) -> anyhow::Result<Reply> {
        self.request(Method::POST, path, Some(body), &[]).await
    }

    /// Sets a mode and insists it was accepted.
    pub async fn set_mode(&self, mode: &str) -> anyhow::Result<serde_json::Value> {
        let reply = self.post("/__mode", mode).await?;
        if reply.status != StatusCode::OK {
            bail!("/__mode {mode} answered {}: {}", reply.status, reply.text());
        }
        reply.json()
    }

    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        self.get("/__stats").await?.json()
    }

    /// Sends a streaming request and records when each body frame arrived; the error is
    /// the body error that ended the stream early, if any.
    pub async fn stream(&self, path: &str, body: &str) -> anyhow::Result<Streamed> {
        timeout(REQUEST_DEADLINE, async {
            let start = Instant::now();
            let resp = self.send(Method::POST, path, Some(body), &[]).await?;
            let status = resp.status();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let mut body = resp.into_body();
            let mut frames = Vec::new();
            let mut error = None;
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            frames.push((start.elapsed(), data));
                        }
                    }
                    Some(Err(e)) => {
                        error = Some(e.to_string());
                        break;
                    }
                    None => break,
                }
            }
            Ok(Streamed {
                status,
                content_type,
                elapsed: start.elapsed(),
                frames,
                error,
            })
        })
        .await
        .context("stream timed out")?
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON ({}): {}", self.status, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A streamed answer, frame by frame.
#[derive(Debug)]
pub struct Streamed {
    pub status: StatusCode,
    pub content_type: String,
    /// From sending the request to the end (or cut) of the body.
    pub elapsed: Duration,
    /// Each data frame with its arrival time since the request was sent.
    pub frames: Vec<(Duration, Bytes)>,
    pub error: Option<String>,
}

impl Streamed {
    /// The whole body as text.
    pub fn text(&self) -> String {
        let all: Vec<u8> = self
            .frames
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        String::from_utf8_lossy(&all).into_owned()
    }

    /// The JSON payloads of the SSE `data:` events, and whether `[DONE]` ended them.
    pub fn sse_events(&self) -> anyhow::Result<(Vec<serde_json::Value>, bool)> {
        let mut events = Vec::new();
        let mut done = false;
        for event in self.text().split("\n\n").filter(|e| !e.is_empty()) {
            let data = event
                .strip_prefix("data: ")
                .with_context(|| format!("not an SSE data event: {event:?}"))?;
            if data == "[DONE]" {
                done = true;
            } else {
                assert!(!done, "an event after [DONE]");
                events.push(serde_json::from_str(data)?);
            }
        }
        Ok((events, done))
    }

    /// The objects of an NDJSON body.
    pub fn ndjson_lines(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let text = self.text();
        assert!(
            text.ends_with('\n'),
            "NDJSON must end with a newline: {text:?}"
        );
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("bad NDJSON line {l:?}")))
            .collect()
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what} did not happen within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
