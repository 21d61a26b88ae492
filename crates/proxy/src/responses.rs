//! OpenAI's Responses API: `POST /v1/responses` is routed by model like chat; its follow-ups
//! (`GET`/`DELETE /v1/responses/{id}`, `POST /v1/responses/{id}/cancel`) must reach the
//! endpoint that created the response, since only that backend stores it.
//!
//! Learning the id: the answer of a `POST /v1/responses` that succeeded is passed to the client
//! frame by frame as it arrives ([`Sniffer`] only looks at a copy of each frame; nothing is
//! held back), and its first 64 KiB are read for the id: for an SSE answer, the `data:` lines
//! until one carries `response.id` (the `response.created` event, first in practice); for a
//! plain JSON answer, the top-level `id` (read with a visitor that stops at that key, so a
//! body cut at 64 KiB still yields an id that came early, as OpenAI's and llama.cpp's do).
//! An id must be 1–256 bytes of `A-Z a-z 0-9 - _ . :`; anything else is not remembered.
//!
//! Remembering it: [`ResponseBook`], a map id → endpoint name with a fixed lifetime
//! ([`RESPONSE_TTL`], 7 days; a stored response's own lifetime is the backend's) and a size cap
//! ([`MAX_REMEMBERED`], the oldest forgotten first), and, in shared mode, the attached
//! coordination (`hale:{ns}:resp:<id>` in Redis, written in the background). A follow-up looks
//! in the local map first and asks the coordination only for an id it does not know; whatever
//! comes back must name a configured endpoint, otherwise the id is unknown: 404 in OpenAI's
//! shape, as for an id nobody made. A Redis failure never fails a request: it only makes the
//! id unknown to replicas that did not see it created.
//!
//! A follow-up is sent once, to that endpoint only (no failover: no other backend has the
//! response): 503 when the endpoint cannot take it (breaker open) or cannot be reached, 502/504
//! as for any request it fails after sending. The answer streams through like any other.
//! (Departure: the request path waits on Redis here, for an id this replica does not know, at
//! most [`RECALL_TIMEOUT`].)

use crate::error::ProxyError;
use crate::hygiene::{self, Added, UpstreamFilter, X_HALE_ENDPOINT};
use crate::proxy::Shared;
use crate::route::Route;
use crate::stream::UpstreamBody;
use crate::upstream::{Outgoing, SendError};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// How long a response id is remembered.
pub const RESPONSE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most ids one replica remembers; the oldest go first.
pub const MAX_REMEMBERED: usize = 100_000;
/// The longest a follow-up waits for the shared state to name an endpoint.
pub const RECALL_TIMEOUT: Duration = Duration::from_millis(500);
/// How much of an answer is read for its id.
const SNIFF_LIMIT: usize = 64 * 1024;
/// The longest id accepted.
const MAX_ID: usize = 256;

/// Whether `id` can be a response id (see the module docs).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Response id → the endpoint that made it; see the module docs.
#[derive(Debug, Default)]
pub struct ResponseBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    by_id: HashMap<Box<str>, (Arc<str>, Instant)>,
    /// Ids in the order they were remembered (every entry lives equally long, so this is
    /// also the order they expire in).
    order: VecDeque<(Box<str>, Instant)>,
}

impl ResponseBook {
    /// Remembers `id` → `endpoint` until `now + RESPONSE_TTL`.
    pub fn remember(&self, id: &str, endpoint: Arc<str>, now: Instant) {
        let until = now + RESPONSE_TTL;
        let mut book = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        book.by_id.insert(id.into(), (endpoint, until));
        book.order.push_back((id.into(), until));
        book.trim(now);
    }

    /// The endpoint that made `id`, if it is remembered and not expired.
    pub fn recall(&self, id: &str, now: Instant) -> Option<Arc<str>> {
        let book = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        book.by_id
            .get(id)
            .filter(|(_, until)| *until > now)
            .map(|(endpoint, _)| endpoint.clone())
    }

    /// How many ids are remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .len()
    }
}

impl Book {
    fn trim(&mut self, now: Instant) {
        while let Some((id, until)) = self.order.front() {
            if *until > now && self.order.len() <= MAX_REMEMBERED {
                break;
            }
            // Only the entry this order record made (a re-remembered id has a later one).
            if self.by_id.get(id).is_some_and(|(_, u)| u == until) {
                self.by_id.remove(id);
            }
            self.order.pop_front();
        }
    }
}

/// Wraps a successful `POST /v1/responses` answer so its id is learned as it passes.
pub fn learn(shared: &Arc<Shared>, response: Response) -> Response {
    if !response.status().is_success() {
        return response;
    }
    let Some(endpoint) = response
        .headers()
        .get(&X_HALE_ENDPOINT)
        .and_then(|v| v.to_str().ok())
        .map(Arc::<str>::from)
    else {
        return response;
    };
    let sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    let (parts, body) = response.into_parts();
    let sniffer = Sniffer {
        inner: body,
        reader: IdReader::new(sse),
        shared: shared.clone(),
        endpoint,
    };
    Response::from_parts(parts, Body::new(sniffer))
}

/// A body passed through unchanged while its first bytes are read for the response id.
struct Sniffer {
    inner: Body,
    reader: IdReader,
    shared: Arc<Shared>,
    endpoint: Arc<str>,
}

impl std::fmt::Debug for Sniffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sniffer")
            .field("reader", &self.reader)
            .finish_non_exhaustive()
    }
}

impl Sniffer {
    fn found(&self, id: Option<String>) {
        let Some(id) = id else { return };
        if !valid_id(&id) {
            tracing::debug!("a backend's response id was not remembered: not a plain id");
            return;
        }
        self.shared
            .responses
            .remember(&id, self.endpoint.clone(), Instant::now());
        if let Some(coordination) = self.shared.store.coordination() {
            coordination.remember_response(&id, &self.endpoint, RESPONSE_TTL);
        }
    }
}

/// Reads the id out of the first [`SNIFF_LIMIT`] bytes of an answer, fed frame by frame.
#[derive(Debug)]
struct IdReader {
    buf: BytesMut,
    /// How far an SSE buffer has been scanned for complete lines.
    scanned: usize,
    sse: bool,
    done: bool,
}

impl IdReader {
    fn new(sse: bool) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            sse,
            done: false,
        }
    }

    /// The id, once a frame completes it (at most once).
    fn feed(&mut self, data: &[u8]) -> Option<String> {
        if self.done {
            return None;
        }
        let room = SNIFF_LIMIT.saturating_sub(self.buf.len());
        self.buf
            .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
        if self.sse {
            while let Some(nl) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.scanned..self.scanned + nl];
                self.scanned += nl + 1;
                if let Some(id) = sse_response_id(line) {
                    self.stop();
                    return Some(id);
                }
            }
        }
        if self.buf.len() >= SNIFF_LIMIT {
            return self.finish();
        }
        None
    }

    /// The body ended (or the limit was reached): a JSON answer is read now.
    fn finish(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let id = if self.sse {
            None
        } else {
            json_top_id(&self.buf)
        };
        self.stop();
        id
    }

    fn stop(&mut self) {
        self.done = true;
        self.buf = BytesMut::new();
    }
}

impl http_body::Body for Sniffer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let id = this.reader.feed(data);
                    this.found(id);
                }
                // hyper does not poll again once the body says it has ended.
                if this.inner.is_end_stream() {
                    let id = this.reader.finish();
                    this.found(id);
                }
            }
            Poll::Ready(None) => {
                let id = this.reader.finish();
                this.found(id);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `response.id` of an SSE `data:` line, if it has one.
fn sse_response_id(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Event {
        response: Option<Inner>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        id: Option<String>,
    }
    let data = line.strip_prefix(b"data:")?.trim_ascii();
    let event: Event = serde_json::from_slice(data).ok()?;
    event.response?.id
}

/// The top-level `id` of a JSON object, read up to that key (the rest may be cut off).
fn json_top_id(body: &[u8]) -> Option<String> {
    let mut slot = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    // Stopping at `id` leaves the rest unread, which serde_json reports as an error; the slot
    // says whether the id came first.
    let _ = TopId(&mut slot).deserialize(&mut de);
    slot
}

struct TopId<'a>(&'a mut Option<String>);

impl<'de> DeserializeSeed<'de> for TopId<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopId<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "id" {
                if let Ok(id) = map.next_value::<String>() {
                    *self.0 = Some(id);
                }
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// A follow-up: `method` on `/v1/responses/{id}{suffix}`, sent to the endpoint that made it.
pub async fn follow_up(
    shared: &Arc<Shared>,
    method: Method,
    id: &str,
    suffix: &'static str,
    request: Request,
    request_id: &HeaderValue,
) -> Result<Response, ProxyError> {
    if !shared.keys.admits(request.headers()) {
        return Err(ProxyError::Unauthorized);
    }
    let unknown = || {
        // An absurd id is not echoed whole.
        let shown: String = id.chars().take(64).collect();
        ProxyError::NotFound(format!("No response found with id '{shown}'."))
    };
    if !valid_id(id) {
        return Err(unknown());
    }
    let name = match shared.responses.recall(id, Instant::now()) {
        Some(name) => Some(name),
        None => match shared.store.coordination() {
            Some(c) => tokio::time::timeout(RECALL_TIMEOUT, c.recall_response(id))
                .await
                .ok()
                .flatten(),
            None => None,
        },
    };
    let table = shared.table.load();
    let Some(rt) = name.and_then(|n| table.by_name.get(&n).cloned()) else {
        return Err(unknown());
    };
    drop(table);
    let (parts, body) = request.into_parts();
    let started = Instant::now();
    let read = crate::body::read_limited(&parts.headers, body, shared.max_body);
    let deadline = started + hale_core::config::clock_safe(shared.body_timeout);
    let bytes = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ProxyError::BodyTimeout(shared.body_timeout))??;
    let Some(mut claim) = rt.try_claim(false, Instant::now()) else {
        return Err(ProxyError::Unavailable {
            message: format!(
                "endpoint '{}', which holds response '{id}', cannot take requests right now",
                rt.endpoint.name
            ),
            retry_after: rt.endpoint.check_interval,
        });
    };
    let filter = UpstreamFilter::new(&parts.headers, shared.keys.enabled());
    let endpoint_has_key = rt.auth.is_some();
    let keep = |name: &HeaderName| filter.forwards(name, endpoint_has_key);
    let added = Added::new(request_id, &shared.pod, rt.auth.as_ref());
    let path = format!("/v1/responses/{id}{suffix}");
    let outgoing = Outgoing {
        route: Route::Responses,
        custom: Some((&method, &path)),
        query: parts.uri.query(),
        headers: &parts.headers,
        keep: &keep,
        added: added.as_slice(),
        body: &bytes,
    };
    let name = &rt.endpoint.name;
    match shared.upstream.send(&rt.dest, &outgoing, started).await {
        Ok((head, conn)) => {
            if head.status.is_server_error() {
                claim.failure(Instant::now());
            } else {
                claim.success();
            }
            let watch = rt.watch("/v1/responses/{id}", head.status.as_u16());
            let mut headers = head.headers;
            hygiene::add_downstream(&mut headers, &rt.name_header, request_id);
            let body = UpstreamBody::new(conn, head.framing, head.reusable, claim, started, watch);
            let mut response = Response::new(Body::new(body));
            *response.status_mut() = head.status;
            *response.headers_mut() = headers;
            Ok(response)
        }
        Err(SendError::Connect(_)) => {
            claim.failure(Instant::now());
            Err(ProxyError::Unavailable {
                message: format!(
                    "endpoint '{name}', which holds response '{id}', cannot be reached"
                ),
                retry_after: rt.endpoint.check_interval,
            })
        }
        Err(SendError::TimedOut(after)) => {
            claim.failure(Instant::now());
            Err(ProxyError::GatewayTimeout(format!(
                "endpoint '{name}' sent no response within {} (first_byte_timeout)",
                humantime::format_duration(after)
            )))
        }
        Err(e) => {
            claim.failure(Instant::now());
            shared.store.request_check(name);
            Err(ProxyError::BadGateway(format!(
                "endpoint '{name}' failed the request: {}",
                match e {
                    SendError::Malformed(why) => format!("a malformed response ({why})"),
                    _ => "closed the connection without answering".to_owned(),
                }
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_and_short() {
        assert!(valid_id("resp_67ccd2bed1ec8190b14f964abc054267"));
        assert!(valid_id("resp-1.a:b"));
        for bad in ["", "a/b", "a b", "a\u{0}", "é", "../x", &"r".repeat(257)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn ids_come_from_the_top_of_json_and_from_sse_events() {
        assert_eq!(
            json_top_id(br#"{"id":"resp_1","object":"response","output":[]}"#).as_deref(),
            Some("resp_1")
        );
        // Cut off after the id: still found.
        assert_eq!(
            json_top_id(br#"{"object":"response","id":"resp_2","output":[{"te"#).as_deref(),
            Some("resp_2")
        );
        // A nested id is not the response's.
        assert_eq!(json_top_id(br#"{"output":[{"id":"msg_1"}]}"#), None);
        assert_eq!(json_top_id(br#"{"id":7}"#), None);
        assert_eq!(json_top_id(b"not json"), None);
        assert_eq!(json_top_id(b""), None);
        assert_eq!(
            sse_response_id(
                br#"data: {"type":"response.created","response":{"id":"resp_3","status":"in_progress"}}"#
            )
            .as_deref(),
            Some("resp_3")
        );
        assert_eq!(sse_response_id(b"event: response.created"), None);
        assert_eq!(sse_response_id(b"data: [DONE]"), None);
        assert_eq!(sse_response_id(br#"data: {"response":{"id":5}}"#), None);
    }

    #[test]
    fn ids_are_read_across_frames_and_only_within_the_limit() {
        // SSE: the created event split mid-line over three frames.
        let mut r = IdReader::new(true);
        assert_eq!(
            r.feed(b"event: response.created\ndata: {\"type\":\"response.cr"),
            None
        );
        assert_eq!(r.feed(br#"eated","response":{"id":"resp_s"#), None);
        assert_eq!(r.feed(b"plit\"}}\n\n").as_deref(), Some("resp_split"));
        assert_eq!(
            r.feed(br#"data: {"response":{"id":"resp_other"}}"#),
            None,
            "once"
        );
        assert_eq!(r.finish(), None);
        // JSON: read when the body ends, whatever the frames.
        let mut r = IdReader::new(false);
        assert_eq!(r.feed(br#"{"object":"response","#), None);
        assert_eq!(r.feed(br#""id":"resp_j","output":[]}"#), None);
        assert_eq!(r.finish().as_deref(), Some("resp_j"));
        // Past the limit: what came early still counts, what comes late does not.
        let mut r = IdReader::new(false);
        let early = format!(r#"{{"id":"resp_e","pad":"{}"#, "x".repeat(SNIFF_LIMIT));
        assert_eq!(r.feed(early.as_bytes()).as_deref(), Some("resp_e"));
        let mut r = IdReader::new(true);
        let late = format!("data: {}\n", "x".repeat(SNIFF_LIMIT));
        assert_eq!(r.feed(late.as_bytes()), None);
        assert_eq!(
            r.feed(b"data: {\"response\":{\"id\":\"resp_late\"}}\n"),
            None
        );
        assert!(r.buf.is_empty(), "nothing kept past the limit");
    }

    #[test]
    fn the_book_forgets_by_age_and_by_count() {
        let book = ResponseBook::default();
        let t0 = Instant::now();
        book.remember("a", "e1".into(), t0);
        assert_eq!(book.recall("a", t0).as_deref(), Some("e1"));
        assert_eq!(book.recall("b", t0), None);
        assert_eq!(book.recall("a", t0 + RESPONSE_TTL), None, "expired");
        // Re-remembered: the later entry counts.
        book.remember("a", "e2".into(), t0 + Duration::from_secs(10));
        assert_eq!(book.recall("a", t0 + RESPONSE_TTL).as_deref(), Some("e2"));
        book.remember(
            "later",
            "e".into(),
            t0 + RESPONSE_TTL + Duration::from_secs(11),
        );
        assert_eq!(book.len(), 1, "expired entries went when a new one came");
        for i in 0..MAX_REMEMBERED + 10 {
            book.remember(&format!("r{i}"), "e".into(), t0 + RESPONSE_TTL * 2);
        }
        assert_eq!(book.len(), MAX_REMEMBERED);
        assert_eq!(
            book.recall("r0", t0 + RESPONSE_TTL * 2),
            None,
            "oldest first"
        );
        assert!(book.recall("r100", t0 + RESPONSE_TTL * 2).is_some());
    }
}
