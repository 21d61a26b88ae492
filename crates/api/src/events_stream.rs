//! `GET /internal/events/stream`: the event log's transitions as Server-Sent Events, pushed as
//! the store records them (the status page reads it; so can `curl -N`).
//!
//! Each transition is one SSE message (the default `message` type) with `id:` its `seq` and
//! `data:` the same JSON object `/internal/events` lists. The stream opens with a comment
//! line (`: newest <seq>`) so a client knows it is connected, and a `: keep-alive` comment
//! follows every [`KEEP_ALIVE`] without events.
//!
//! Resume: a `Last-Event-ID` header (what `EventSource` sends on reconnect; the page's
//! `fetch()` reader sends it too) replays the events after that id that the log still holds,
//! then goes on live; none, or an empty one, starts live. When the log no longer holds every
//! event after the id (more than 1024 happened since), an `event: gap` message with
//! `data: {"missed": N}` comes first and then what remains; an id this process never issued
//! (ids start over at 1 when Hale restarts, so it is usually one from an earlier run) gets
//! `event: gap` with `data: {"missed": null}` and then the whole log. An id that is not a
//! decimal number is a 400 in the usual error shape.
//!
//! Bounded: each subscriber reads from a broadcast ring of [`EVENT_STREAM_BUFFER`] events
//! shared by all (no per-subscriber queue grows); the response body is produced only as fast
//! as the client reads it. A subscriber that falls behind by more than the ring resumes from
//! the log where it stood (no event lost while the log holds it), or gets a gap marker for
//! what the log no longer has. The stream ends within [`DRAIN_CHECK`] of the process starting
//! to drain, so an open page never holds a shutdown up to `shutdown_grace`. At most
//! [`MAX_STREAMS`] streams are open at once per process; one more is a 503 with
//! `Retry-After`, so open streams cannot add up without bound either.

use crate::ApiState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use hale_core::store::EVENT_STREAM_BUFFER;
use hale_core::{Event, EventFollow, Gap, Resume};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

/// How long the stream may go without sending anything before a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The most event streams open at once.
pub const MAX_STREAMS: usize = 256;

/// How often an idle stream looks whether the process is draining.
pub const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// `GET /internal/events/stream` (see the module docs).
pub(crate) async fn stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let from = resume_point(&headers)?;
    if state.store().event_followers() >= MAX_STREAMS {
        let busy = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_error",
            format!("{MAX_STREAMS} event streams are open already; try again later"),
        );
        let mut response = busy.into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(response);
    }
    let follow = state.store().follow_events(from);
    let opening = SseEvent::default().comment(format!("newest {}", follow.newest));
    let follower = Follower::new(state, follow, opening);
    Ok(Sse::new(follower.into_stream())
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

/// Where the client wants to start, from `Last-Event-ID`.
fn resume_point(headers: &HeaderMap) -> Result<Resume, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(Resume::Live);
    };
    let text = value.to_str().unwrap_or("\u{0}").trim();
    if text.is_empty() {
        return Ok(Resume::Live);
    }
    // Digits only: `u64::from_str` would also take a leading `+`.
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "Last-Event-ID must be the decimal id of an event",
        ));
    }
    text.parse::<u64>()
        .map(Resume::After)
        .map_err(|_| ApiError::bad_request("Last-Event-ID is larger than any event id"))
}

/// One subscriber: what is queued to send, the live receiver, and the last id sent.
struct Follower {
    state: ApiState,
    queued: VecDeque<SseEvent>,
    live: Receiver<Event>,
    /// Every event up to this `seq` has been sent or reported missing.
    last: u64,
}

impl Follower {
    fn new(state: ApiState, follow: EventFollow, opening: SseEvent) -> Self {
        let mut f = Self {
            state,
            queued: VecDeque::from([opening]),
            live: follow.live,
            last: follow.newest,
        };
        f.queue(follow.backlog, follow.gap);
        f
    }

    fn queue(&mut self, backlog: Vec<Event>, gap: Gap) {
        match gap {
            Gap::None => {}
            Gap::Lost { missed } => self.queued.push_back(gap_marker(Some(missed))),
            Gap::Unknown => self.queued.push_back(gap_marker(None)),
        }
        self.queued.extend(backlog.iter().map(message));
    }

    /// The next message, or `None` when the stream should end.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(queued) = self.queued.pop_front() {
                return Some(queued);
            }
            match tokio::time::timeout(DRAIN_CHECK, self.live.recv()).await {
                Ok(Ok(event)) => {
                    // A late receiver can see an event its backlog already held.
                    if event.seq <= self.last {
                        continue;
                    }
                    self.last = event.seq;
                    return Some(message(&event));
                }
                Ok(Err(RecvError::Lagged(_))) => {
                    let follow = self.state.store().follow_events(Resume::After(self.last));
                    self.live = follow.live;
                    self.last = follow.newest;
                    self.queue(follow.backlog, follow.gap);
                }
                Ok(Err(RecvError::Closed)) => return None,
                Err(_) if self.state.is_draining() => return None,
                Err(_) => {}
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
        stream::unfold(self, |mut f| async move {
            let next = f.next().await?;
            Some((Ok(next), f))
        })
    }
}

/// One transition as an SSE message.
fn message(event: &Event) -> SseEvent {
    let data = serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned());
    SseEvent::default().id(event.seq.to_string()).data(data)
}

/// The marker for events the log no longer holds (`None`: how many is unknown).
fn gap_marker(missed: Option<u64>) -> SseEvent {
    SseEvent::default()
        .event("gap")
        .data(serde_json::json!({ "missed": missed }).to_string())
}

const _: () = assert!(EVENT_STREAM_BUFFER >= 16);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use axum::body::{Body, BodyDataStream};
    use axum::http::{Request, StatusCode};
    use futures_util::StreamExt;
    use hale_core::store::EVENT_LOG_CAPACITY;
    use hale_core::{CheckOutcome, CheckResult, HealthState, Now};

    /// Reads SSE blocks (separated by a blank line) from a response body.
    struct Reader {
        body: BodyDataStream,
        buf: String,
    }

    impl Reader {
        fn new(body: Body) -> Self {
            Self {
                body: body.into_data_stream(),
                buf: String::new(),
            }
        }

        async fn block(&mut self) -> String {
            loop {
                if let Some(end) = self.buf.find("\n\n") {
                    let block = self.buf[..end].to_owned();
                    self.buf.drain(..end + 2);
                    return block;
                }
                let chunk = tokio::time::timeout(Duration::from_secs(60), self.body.next())
                    .await
                    .expect("an SSE block within 60 s")
                    .expect("the stream is open")
                    .unwrap();
                self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        }

        /// The next block that is not a comment.
        async fn message(&mut self) -> String {
            loop {
                let block = self.block().await;
                if !block.starts_with(':') {
                    return block;
                }
            }
        }
    }

    /// Makes `n` transitions of `a` (up, down, up...).
    fn transitions(f: &Fixture, n: usize) {
        for _ in 0..n {
            let up = f.store.snapshot().get("a").unwrap().health.state == HealthState::Healthy;
            let event = if up {
                f.store
                    .passive_failure("a", &CheckResult::ConnectRefused, Now::capture())
            } else {
                let ok = CheckOutcome::ok(Duration::from_millis(3));
                f.store.observe("a", &ok, Now::capture())
            };
            assert!(event.is_some());
        }
    }

    async fn open(f: &Fixture, last_event_id: Option<&str>) -> (StatusCode, Reader) {
        open_bytes(f, last_event_id.map(str::as_bytes)).await
    }

    /// Opens the stream, with a `Last-Event-ID` of exactly these bytes if given.
    async fn open_bytes(f: &Fixture, last_event_id: Option<&[u8]>) -> (StatusCode, Reader) {
        let mut request = Request::get("/internal/events/stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", HeaderValue::from_bytes(id).unwrap());
        }
        let response = f.raw_request(request.body(Body::empty()).unwrap()).await;
        let status = response.status();
        (status, Reader::new(response.into_body()))
    }

    #[tokio::test]
    async fn pushes_transitions_as_they_happen() {
        let f = Fixture::new("");
        let mut request = Request::get("/internal/events/stream");
        request = request.header("accept", "text/event-stream");
        let response = f.raw_request(request.body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let mut r = Reader::new(response.into_body());
        assert_eq!(r.block().await, ": newest 0");
        f.ok("a");
        let block = r.message().await;
        let mut lines = block.lines();
        assert_eq!(lines.next(), Some("id: 1"));
        let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
        let event: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["seq"], 1);
        assert_eq!(event["endpoint"], "a");
        assert_eq!(event["to"], "healthy");
        f.store
            .passive_failure("a", &CheckResult::ConnectRefused, Now::capture());
        assert!(r.message().await.starts_with("id: 2\ndata: {"));
    }

    #[tokio::test]
    async fn resumes_after_last_event_id() {
        let f = Fixture::new("");
        transitions(&f, 4);
        let (status, mut r) = open(&f, Some("2")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(r.block().await, ": newest 4");
        assert!(r.message().await.starts_with("id: 3\n"));
        assert!(r.message().await.starts_with("id: 4\n"));
        transitions(&f, 1);
        assert!(r.message().await.starts_with("id: 5\n"));
        // Up to date and empty ids start live.
        for id in ["5", "", "  "] {
            let (_, mut r) = open(&f, Some(id)).await;
            r.block().await;
            transitions(&f, 1);
            let first = r.message().await;
            assert!(!first.starts_with("event: gap"), "{id:?}: {first}");
        }
    }

    #[tokio::test]
    async fn marks_what_the_log_no_longer_holds() {
        let f = Fixture::new("");
        transitions(&f, EVENT_LOG_CAPACITY + 5);
        let (_, mut r) = open(&f, Some("1")).await;
        r.block().await;
        assert_eq!(r.message().await, "event: gap\ndata: {\"missed\":4}");
        assert!(r.message().await.starts_with("id: 6\n"));

        // An id from another run: unknown gap, then the whole log.
        for id in ["999999", "18446744073709551615"] {
            let (_, mut r) = open(&f, Some(id)).await;
            r.block().await;
            assert_eq!(r.message().await, "event: gap\ndata: {\"missed\":null}");
            assert!(r.message().await.starts_with("id: 6\n"));
        }
    }

    #[tokio::test]
    async fn refuses_ids_that_are_not_numbers() {
        let f = Fixture::new("");
        for id in ["abc", "-1", "+3", "1.5", "18446744073709551616", "1 2"] {
            let (status, _) = open(&f, Some(id)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{id:?}");
        }
        let (status, _) = open_bytes(&f, Some(b"\xff\xfe")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "not UTF-8");
        let r = f
            .request(
                Request::get("/internal/events/stream")
                    .header("last-event-id", "x")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.json()["error"]["code"], 400);
        assert_eq!(
            r.json()["error"]["message"],
            "Last-Event-ID must be the decimal id of an event"
        );
    }

    #[tokio::test]
    async fn open_streams_are_bounded() {
        let f = Fixture::new("");
        let mut open_now = Vec::new();
        for _ in 0..MAX_STREAMS {
            let (status, r) = open(&f, None).await;
            assert_eq!(status, StatusCode::OK);
            open_now.push(r);
        }
        let r = f.get("/internal/events/stream", None).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.header("retry-after"), "5");
        assert_eq!(r.json()["error"]["code"], 503);
        // A closed one makes room.
        open_now.pop();
        let (status, _r) = open(&f, None).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn needs_the_admin_token_when_one_is_set() {
        let f = Fixture::new("t0ken");
        let r = f.get("/internal/events/stream", None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let response = f
            .raw_request(
                Request::get("/internal/events/stream")
                    .header("authorization", "Bearer t0ken")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_slow_reader_resumes_from_the_log_without_losing_events() {
        let f = Fixture::new("");
        let (_, mut r) = open(&f, None).await;
        r.block().await;
        // Far more than the ring holds, and fewer than the log does, before reading.
        let flips = EVENT_STREAM_BUFFER * 3;
        transitions(&f, flips);
        for seq in 1..=(flips as u64) {
            let block = r.message().await;
            assert!(block.starts_with(&format!("id: {seq}\n")), "{seq}: {block}");
        }
    }

    #[tokio::test]
    async fn a_reader_too_slow_for_the_log_gets_a_marker() {
        let f = Fixture::new("");
        let (_, mut r) = open(&f, None).await;
        r.block().await;
        transitions(&f, EVENT_LOG_CAPACITY + 7);
        assert_eq!(r.message().await, "event: gap\ndata: {\"missed\":7}");
        let block = r.message().await;
        assert!(block.starts_with("id: 8\n"), "{block}");
    }

    #[tokio::test(start_paused = true)]
    async fn ends_when_the_process_drains_and_keeps_alive_until_then() {
        let f = Fixture::new("");
        let (_, mut r) = open(&f, None).await;
        r.block().await;
        assert_eq!(r.block().await, ": keep-alive");
        f.state.start_draining();
        let end = tokio::time::timeout(Duration::from_secs(5), r.body.next()).await;
        assert!(matches!(end, Ok(None)), "the stream ends: {end:?}");
    }
}
