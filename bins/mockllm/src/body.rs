//! The one response body type every route returns, and helpers that build common answers.
//!
//! A body is either a single ready buffer (sent with `content-length`, no boxing, no
//! channel) or a [`ChunkStream`] that produces one chunk per frame on its own schedule (sent
//! chunked). An enum instead of a boxed trait object keeps the hot path free of an extra
//! allocation per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;

use crate::chat::ChunkStream;

/// `application/json`.
pub const JSON: &str = "application/json";
/// Plain text, as Ollama's `/` answers.
pub const TEXT: &str = "text/plain; charset=utf-8";
/// Server-sent events, as OpenAI streams.
pub const SSE: &str = "text/event-stream";
/// Newline-delimited JSON, as Ollama streams.
pub const NDJSON: &str = "application/x-ndjson";

/// A response body; see the module docs.
#[derive(Debug)]
pub enum RespBody {
    /// A complete body, or none (`None` once sent, or for an empty answer).
    Full(Option<Bytes>),
    /// A body produced chunk by chunk.
    Stream(ChunkStream),
    /// Pre-rendered SSE events, one per frame (Responses and Messages streams).
    Events(crate::apis::Events),
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            RespBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RespBody::Stream(stream) => stream.poll_frame(cx),
            RespBody::Events(events) => events.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(bytes) => bytes.is_none(),
            RespBody::Stream(stream) => stream.is_done(),
            RespBody::Events(events) => events.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Stream(_) | RespBody::Events(_) => SizeHint::default(),
        }
    }
}

/// A complete answer with a content type.
pub fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<RespBody> {
    let body = if body.is_empty() { None } else { Some(body) };
    let mut resp = Response::new(RespBody::Full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON answer.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    full(status, JSON, body.into())
}

/// A streamed answer.
pub fn stream(content_type: &'static str, stream: ChunkStream) -> Response<RespBody> {
    let mut resp = Response::new(RespBody::Stream(stream));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if content_type == SSE {
        // Intermediaries must pass events through as they come, not cache or hold them.
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
    }
    resp
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    error: ErrorInner<'a>,
}

#[derive(Serialize)]
struct ErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: u16,
}

/// The error body every mockllm error uses: `{"error":{"message","type","code"}}`.
pub fn error_body(status: u16, message: &str, kind: &str) -> Vec<u8> {
    let out = ErrorOut {
        error: ErrorInner {
            message,
            kind,
            code: status,
        },
    };
    // Serialising three plain fields cannot fail; an empty object is a safe fallback anyway.
    serde_json::to_vec(&out).unwrap_or_else(|_| b"{}".to_vec())
}

/// A JSON error answer.
pub fn error(status: StatusCode, message: &str, kind: &str) -> Response<RespBody> {
    json(status, error_body(status.as_u16(), message, kind))
}

/// The answer of the `status` failure mode: `mock status N`, with `Retry-After` on 429 (or
/// whenever a retry delay was given).
pub fn mock_status(code: u16, retry_after_s: Option<u64>) -> Response<RespBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = error(status, &format!("mock status {code}"), "mock");
    let retry_after = match (code, retry_after_s) {
        (_, Some(s)) => Some(s),
        (429, None) => Some(1),
        _ => None,
    };
    if let Some(s) = retry_after {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}
