//! HTTP/1.1 heads on the upstream side: the request head Hale writes, and the response head it
//! reads back (RFC 9112), parsed with `httparse`.
//!
//! The request head is written in one go into one buffer: request line (method, the route's
//! path on the endpoint's base path, the client's query string), `host` (the endpoint's own
//! authority, never the client's), the client's cleaned headers, the endpoint's
//! `authorization` when it has a key (replacing the client's), and `content-length` of the
//! buffered body. Together with the body it leaves in a single `writev`.
//!
//! The response head is parsed from the connection's read buffer without copying: header
//! values are slices of the received bytes. Interim `1xx` heads are skipped; a `101` (Hale
//! never asks for an upgrade) is refused. The body framing follows RFC 9112 §6.3, in its order:
//! - 204 and 304 have no body (Hale only sends `POST`, so there are no `HEAD` answers);
//! - a `Transfer-Encoding` wins over any `Content-Length`, which is then neither read nor
//!   forwarded (§6.1: an intermediary removes it, or the client would frame the re-encoded body
//!   by a length the backend never meant — the truncated `hel` of `hello` of issue #11). The
//!   final coding decides: `chunked` is decoded (`chunked.rs`); anything else runs until the
//!   backend closes. A `Transfer-Encoding` in an HTTP/1.0 answer is faulty framing (§6.1);
//! - otherwise `Content-Length`: every value of every field line must be the same run of
//!   digits (`3, 3` is `3`; a sign, a space inside, a second different value or an overflow is
//!   not); the client gets it back as one plain value;
//! - otherwise the body runs until the backend closes.
//!
//! Faulty framing is a [`HeadError::Framing`], distinct from a head that does not parse at all
//! ([`HeadError::Syntax`]): either way the answer is malformed and must not reach the client.
//! `Content-Length` is forwarded only with a body of that length, so a client can never be
//! handed a length that differs from the bytes it will get. A connection is reused only for
//! HTTP/1.1 answers with a known length (never one read until close) and no
//! `Connection: close`. Heads over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers are refused as
//! malformed, like anything `httparse` rejects. `tests` and the differential property test
//! (`differential.rs`, against hyper's client on the same bytes) hold the parser to this.

use bytes::{BufMut as _, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::mem::MaybeUninit;

/// The largest response head accepted (offsets into it fit in a `u16`).
pub const MAX_HEAD: usize = 60 * 1024;
/// The most response headers accepted.
pub const MAX_HEADERS: usize = 96;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the backend closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection can carry another request once the body is read.
    pub reusable: bool,
}

/// What a request head is written from.
pub struct RequestHead<'a> {
    /// `POST <path>`, without the query.
    pub request_line: &'a [u8],
    pub query: Option<&'a str>,
    /// The `host` value: the endpoint's authority.
    pub host: &'a [u8],
    /// The client's headers, of which those `keep` accepts are written.
    pub headers: &'a HeaderMap,
    pub keep: &'a (dyn Fn(&HeaderName) -> bool + Sync),
    /// Headers Hale adds (request id, pod, the endpoint's `authorization`).
    pub added: &'a [(&'a HeaderName, &'a HeaderValue)],
}

impl std::fmt::Debug for RequestHead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHead")
            .field("request_line", &String::from_utf8_lossy(self.request_line))
            .finish_non_exhaustive()
    }
}

/// Writes a request head for a body of `body_len` bytes (see the module docs).
pub fn encode_request(out: &mut BytesMut, head: &RequestHead<'_>, body_len: usize) {
    out.reserve(256 + head.headers.len() * 48);
    out.put_slice(head.request_line);
    if let Some(q) = head.query.filter(|q| !q.is_empty()) {
        out.put_u8(b'?');
        out.put_slice(q.as_bytes());
    }
    out.put_slice(b" HTTP/1.1\r\nhost: ");
    out.put_slice(head.host);
    out.put_slice(b"\r\n");
    for (name, value) in head.headers {
        if (head.keep)(name) {
            put_header(out, name, value);
        }
    }
    for (name, value) in head.added {
        put_header(out, name, value);
    }
    out.put_slice(b"content-length: ");
    out.put_slice(decimal(body_len).as_bytes());
    out.put_slice(b"\r\n\r\n");
}

fn put_header(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// A decimal rendering of a `usize` on the stack.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn decimal(mut n: usize) -> Digits {
    let mut buf = [0_u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start: i }
}

/// Why a response head was refused: either way the answer is malformed and goes no further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a response head Hale can read: refused by `httparse`, too long, a bad status code,
    /// header name or value.
    #[error("malformed response head: {0}")]
    Syntax(String),
    /// The head parses, but its body cannot be delimited safely (RFC 9112 §6.1, §6.3).
    #[error("malformed response framing: {0}")]
    Framing(#[from] FramingError),
}

/// Framing a response head announces that Hale refuses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A `Content-Length` value that is not a plain run of digits fitting a `u64`.
    #[error("invalid content-length")]
    InvalidContentLength,
    /// `Content-Length` values that disagree.
    #[error("conflicting content-length values")]
    ConflictingContentLength,
    /// `Transfer-Encoding` in an HTTP/1.0 answer (RFC 9112 §6.1: faulty framing).
    #[error("transfer-encoding in an HTTP/1.0 response")]
    TransferEncodingInHttp10,
    /// `101 Switching Protocols`, which Hale never asks for.
    #[error("unexpected 101 Switching Protocols")]
    SwitchingProtocols,
}

/// Parses a response head from the front of `buf`, removing it (and any interim `1xx` heads)
/// from the buffer; headers `keep` refuses are left out (their framing meaning is read
/// first). `Ok(None)` when more bytes are needed.
pub fn parse_response(
    buf: &mut BytesMut,
    keep: impl Fn(&HeaderName) -> bool,
) -> Result<Option<ResponseHead>, HeadError> {
    loop {
        // Where each header's name and value sit in the buffer, so the head can be split off
        // and frozen once the parser (which borrows the buffer) is done with it.
        let mut spans = [[0_u16; 4]; MAX_HEADERS];
        let (len, code, http11, count) =
            {
                let mut storage =
                    [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut []);
                let looked = &buf[..buf.len().min(MAX_HEAD + 1)];
                let len = match httparse::ParserConfig::default()
                    .parse_response_with_uninit_headers(&mut parsed, looked, &mut storage)
                {
                    Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
                    Ok(_) if buf.len() > MAX_HEAD => {
                        return Err(HeadError::Syntax(format!("longer than {MAX_HEAD} bytes")));
                    }
                    Ok(_) => return Ok(None),
                    Err(e) => return Err(HeadError::Syntax(e.to_string())),
                };
                let base = looked.as_ptr() as usize;
                let offset = |p: *const u8| u16::try_from(p as usize - base).unwrap_or(u16::MAX);
                for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
                    let name = offset(h.name.as_ptr());
                    let value = offset(h.value.as_ptr());
                    // Both lie within the head, which is at most MAX_HEAD (< u16::MAX) long.
                    *span = [
                        name,
                        name.saturating_add(h.name.len() as u16),
                        value,
                        value.saturating_add(h.value.len() as u16),
                    ];
                }
                (
                    len,
                    parsed.code.unwrap_or(0),
                    parsed.version == Some(1),
                    parsed.headers.len(),
                )
            };
        let status = StatusCode::from_u16(code)
            .map_err(|_| HeadError::Syntax(format!("status code {code}")))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(FramingError::SwitchingProtocols.into());
            }
            // 100 Continue, 103 Early Hints: the real head follows.
            let _ = buf.split_to(len);
            continue;
        }
        let head = buf.split_to(len).freeze();
        let mut framing = FramingHeaders::default();
        let mut connection_named = Vec::new();
        // Room for the headers Hale adds (`x-hale-endpoint`, `x-request-id`): no regrowth.
        let mut headers = HeaderMap::with_capacity(count + 2);
        for &[ns, ne, vs, ve] in spans.iter().take(count) {
            let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
            let raw_name = head.get(ns..ne).unwrap_or_default();
            let name = HeaderName::from_bytes(raw_name).map_err(|_| {
                HeadError::Syntax(format!(
                    "header name {:?}",
                    String::from_utf8_lossy(raw_name)
                ))
            })?;
            if vs > ve || ve > head.len() {
                return Err(HeadError::Syntax(format!("value of header {name}")));
            }
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| HeadError::Syntax(format!("value of header {name}")))?;
            if name == TRANSFER_ENCODING {
                framing.transfer_encoding(&value);
            } else if name == CONTENT_LENGTH {
                // Forwarded only as the length of the body, once it is known to be one.
                framing.content_length(value);
                continue;
            } else if name == CONNECTION {
                framing.close |= has_token(&value, "close");
                connection_named.extend(crate::hygiene::connection_named([&value]));
            }
            if keep(&name) {
                headers.append(name, value);
            }
        }
        for name in connection_named {
            headers.remove(name);
        }
        let framing_kind = framing.framing(status, http11)?;
        if let Framing::Length(n) = framing_kind
            && keep(&CONTENT_LENGTH)
        {
            headers.insert(CONTENT_LENGTH, framing.length_value(n));
        }
        let reusable = http11 && !framing.close && framing_kind != Framing::UntilClose;
        return Ok(Some(ResponseHead {
            status,
            headers,
            framing: framing_kind,
            reusable,
        }));
    }
}

/// What the headers say about the body's framing, gathered while they are read; whether it
/// matters is decided once all of them are in (a `Transfer-Encoding` after a broken
/// `Content-Length` still wins).
#[derive(Debug)]
struct FramingHeaders {
    /// `Some(chunked is the final coding)` once a `Transfer-Encoding` was seen.
    chunked_last: Option<bool>,
    /// The `Content-Length` all values so far agree on, or the first fault found in them.
    length: Result<Option<u64>, FramingError>,
    /// The only `Content-Length` field line, when it was a plain number: forwarded as it came.
    length_line: Option<HeaderValue>,
    length_lines: usize,
    close: bool,
}

impl Default for FramingHeaders {
    fn default() -> Self {
        Self {
            chunked_last: None,
            length: Ok(None),
            length_line: None,
            length_lines: 0,
            close: false,
        }
    }
}

impl FramingHeaders {
    /// One `Transfer-Encoding` field line: the final coding of the last line that names one
    /// decides (RFC 9110 §5.6.1: empty list elements do not count). A value that is not text
    /// names no coding Hale knows.
    fn transfer_encoding(&mut self, value: &HeaderValue) {
        let Ok(text) = value.to_str() else {
            self.chunked_last = Some(false);
            return;
        };
        match text.split(',').map(str::trim).rfind(|t| !t.is_empty()) {
            Some(t) => self.chunked_last = Some(t.eq_ignore_ascii_case("chunked")),
            None => self.chunked_last = Some(self.chunked_last.unwrap_or(false)),
        }
    }

    /// One `Content-Length` field line: a comma-separated list of equal runs of digits.
    fn content_length(&mut self, value: HeaderValue) {
        self.length_lines += 1;
        if self.length_lines == 1
            && let Some(n) = digits(value.as_bytes())
        {
            // The usual case: one line, one plain number.
            self.length = Ok(Some(n));
            self.length_line = Some(value);
            return;
        }
        let Ok(text) = value.to_str() else {
            self.length = self.length.and(Err(FramingError::InvalidContentLength));
            return;
        };
        for part in text.split(',') {
            let Ok(agreed) = self.length else { return };
            self.length = match (agreed, digits(part.trim().as_bytes())) {
                (_, None) => Err(FramingError::InvalidContentLength),
                (Some(l), Some(n)) if l != n => Err(FramingError::ConflictingContentLength),
                (_, Some(n)) => Ok(Some(n)),
            };
        }
    }

    /// RFC 9112 §6.3, for an answer that is not `1xx`.
    fn framing(&self, status: StatusCode, http11: bool) -> Result<Framing, FramingError> {
        if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok(Framing::Empty);
        }
        if let Some(chunked) = self.chunked_last {
            if !http11 {
                return Err(FramingError::TransferEncodingInHttp10);
            }
            return Ok(if chunked {
                Framing::Chunked
            } else {
                Framing::UntilClose
            });
        }
        Ok(match self.length? {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }

    /// The `Content-Length` value the client gets for a body of `n` bytes: the backend's own
    /// when it sent one plain number (no copy), else `n` written out.
    fn length_value(&mut self, n: u64) -> HeaderValue {
        match self.length_line.take() {
            Some(v) if self.length_lines == 1 => v,
            _ => HeaderValue::from(n),
        }
    }
}

/// A run of ASCII digits as a `u64` (no sign, no spaces, no overflow: RFC 9110 §8.6).
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0_u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

#[cfg(test)]
#[path = "differential.rs"]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AUTHORIZATION;

    fn parse(text: impl AsRef<[u8]>) -> Result<Option<ResponseHead>, HeadError> {
        let mut buf = BytesMut::from(text.as_ref());
        parse_response(&mut buf, |_| true)
    }

    #[test]
    fn encodes_one_request_head() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer client"));
        headers.insert("x-dropped", HeaderValue::from_static("1"));
        let key = HeaderValue::from_static("Bearer sk-backend");
        let id = HeaderValue::from_static("r1");
        let x_request_id = HeaderName::from_static("x-request-id");
        let keep = |n: &HeaderName| n != AUTHORIZATION && n != "x-dropped";
        let mut out = BytesMut::new();
        encode_request(
            &mut out,
            &RequestHead {
                request_line: b"POST /base/v1/chat/completions",
                query: Some("a=1"),
                host: b"h:8000",
                headers: &headers,
                keep: &keep,
                added: &[(&x_request_id, &id), (&AUTHORIZATION, &key)],
            },
            1234,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "POST /base/v1/chat/completions?a=1 HTTP/1.1\r\nhost: h:8000\r\ncontent-type: application/json\r\nx-request-id: r1\r\nauthorization: Bearer sk-backend\r\ncontent-length: 1234\r\n\r\n"
        );
    }

    #[test]
    fn leaves_out_what_keep_refuses_but_reads_its_framing() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: x-private\r\nx-private: 1\r\ncontent-type: text/event-stream\r\n\r\n"[..],
        );
        let h = parse_response(&mut buf, crate::hygiene::forwards_downstream)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let names: Vec<&str> = h.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn framing_by_rfc_9112() {
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.framing, h.reusable),
            (StatusCode::OK, Framing::Length(5), true)
        );
        let h = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked, "transfer-encoding wins");
        let h = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = parse("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = parse("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h =
            parse("HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(!h.reusable);
        let h = parse("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.reusable, "HTTP/1.0 closes");
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert!(
            parse("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n").is_err()
        );
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
    }

    fn framing_error(text: impl AsRef<[u8]>) -> Option<FramingError> {
        match parse(text) {
            Err(HeadError::Framing(e)) => Some(e),
            _ => None,
        }
    }

    fn lengths(h: &ResponseHead) -> Vec<&str> {
        h.headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn transfer_encoding_wins_and_content_length_is_dropped() {
        // Issue #11: forwarded with the length, `hello` reached clients as `hel`.
        for text in [
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            // A broken or conflicting length does not matter once the coding decides.
            "HTTP/1.1 200 OK\r\ncontent-length: x\r\ncontent-length: 4, 5\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            let h = parse(text).unwrap().unwrap();
            assert_eq!(
                (h.framing, h.reusable),
                (Framing::Chunked, true),
                "{text:?}"
            );
            assert!(lengths(&h).is_empty(), "{text:?}");
        }
        // A final coding other than chunked: read until close, never reused, no length.
        let h = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        assert!(lengths(&h).is_empty());
        // The last line naming a coding decides; an empty element names none.
        let h = parse(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: CHUNKED ,\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = parse(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \xff\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            h.framing,
            Framing::UntilClose,
            "not text: no coding Hale knows"
        );
        assert_eq!(
            framing_error("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            Some(FramingError::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn content_length_is_plain_digits_that_agree() {
        for (text, n, forwarded) in [
            ("content-length: 5", 5, "5"),
            ("content-length: 3, 3", 3, "3"),
            ("content-length: 3\r\ncontent-length: 3", 3, "3"),
            ("content-length: 3,3\r\ncontent-length: 3", 3, "3"),
            ("content-length: 007", 7, "007"),
            (
                "content-length: 18446744073709551615",
                u64::MAX,
                "18446744073709551615",
            ),
        ] {
            let h = parse(format!("HTTP/1.1 200 OK\r\n{text}\r\n\r\n"))
                .unwrap()
                .unwrap();
            assert_eq!(h.framing, Framing::Length(n), "{text:?}");
            assert_eq!(lengths(&h), [forwarded], "one plain value: {text:?}");
        }
        assert_eq!(
            framing_error(b"HTTP/1.1 200 OK\r\ncontent-length: \xd9\xa3\r\n\r\n"),
            Some(FramingError::InvalidContentLength),
            "not text"
        );
        for (text, error) in [
            (
                "content-length: 3\r\ncontent-length: 4",
                FramingError::ConflictingContentLength,
            ),
            (
                "content-length: 3, 4",
                FramingError::ConflictingContentLength,
            ),
            ("content-length: -1", FramingError::InvalidContentLength),
            ("content-length: +3", FramingError::InvalidContentLength),
            ("content-length: 3 3", FramingError::InvalidContentLength),
            ("content-length: 0x3", FramingError::InvalidContentLength),
            ("content-length: 3,", FramingError::InvalidContentLength),
            ("content-length: ", FramingError::InvalidContentLength),
            (
                "content-length: 18446744073709551616",
                FramingError::InvalidContentLength,
            ),
            (
                "content-length: 3\r\ncontent-length: x",
                FramingError::InvalidContentLength,
            ),
        ] {
            assert_eq!(
                framing_error(format!("HTTP/1.1 200 OK\r\n{text}\r\n\r\n")),
                Some(error),
                "{text:?}"
            );
        }
    }

    #[test]
    fn bodiless_answers_carry_no_length() {
        for status in ["204 No Content", "304 Not Modified"] {
            let h = parse(format!(
                "HTTP/1.1 {status}\r\ncontent-length: 7\r\ntransfer-encoding: chunked\r\n\r\n"
            ))
            .unwrap()
            .unwrap();
            assert_eq!((h.framing, h.reusable), (Framing::Empty, true), "{status}");
            assert!(lengths(&h).is_empty(), "{status}");
            // Nothing about the length is read for them.
            let h = parse(format!("HTTP/1.1 {status}\r\ncontent-length: x\r\n\r\n"))
                .unwrap()
                .unwrap();
            assert_eq!(h.framing, Framing::Empty);
        }
        assert_eq!(
            framing_error("HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n"),
            Some(FramingError::SwitchingProtocols)
        );
    }

    #[test]
    fn interim_heads_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nx-a: b\r\n\r\nhi"[..]);
        let h = parse_response(&mut buf, |_| true).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(&buf[..], b"hi", "the body stays in the buffer");
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        assert!(parse("HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
        assert!(matches!(
            parse("garbage\r\n\r\n"),
            Err(HeadError::Syntax(_))
        ));
        let long = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert!(parse(&long).is_err());
    }
}
