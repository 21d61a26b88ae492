//! The run-time behaviour switch behind `POST /__mode`: failure modes and stream shape.
//!
//! The current [`Mode`] is a small `Copy` value published through an [`ArcSwap`], so every
//! request reads it without a lock or a shared reference count; the admin path that changes
//! it serialises writers with a mutex, which no request ever touches.
//!
//! A `/__mode` body is one JSON object, every field optional, applied together:
//! - failure fields — `mode` (`healthy`, `status`, `hang`, `slow`, `loading`, `refuse`,
//!   `close`, `drop`, `stall`), `status`, `retry_after_s`, `slow_ms`, `loading_for_s`,
//!   `for_s`, `drop_after_chunks`, `stall_after_chunks`, `close_on` — replace the whole
//!   failure state when any of them is present (and so does `generation_status`): `{"slow_ms":100}` followed by
//!   `{"status":503}` leaves a fast 503, not a slow one. The kind comes from `mode`, or is
//!   implied by `status` or `loading_for_s`; `slow_ms`, `drop_after_chunks`,
//!   `stall_after_chunks` and `close_on` are modifiers that combine with any kind (`slow`,
//!   `drop` and `stall` are names for "healthy plus that modifier");
//! - `drop_after_chunks` cuts a streamed answer after that many chunks (an error: the
//!   connection is aborted); `stall_after_chunks` stops sending after that many chunks and
//!   holds the connection open, never ending the stream (a backend stuck mid-generation);
//! - `generation_only` (with `status` only) applies the status to generation requests alone:
//!   health and model-list paths answer normally, so probes pass while inference fails (the
//!   "healthy but not serving" backend of issue 12);
//! - `close_on` (a marker of 1 to 256 bytes) closes the connection without answering any
//!   generation request whose body contains the marker, and answers every other request
//!   normally: a "query of death". `GET /__stats` counts the marked requests that arrived
//!   (`closed_on_marker`). Markers are kept for the life of the process (at most
//!   [`MAX_MARKERS`] distinct ones), so the mode stays a `Copy` value;
//! - `generation_status` (200 to 599) answers every generation request with that status and a
//!   JSON error body while the health path, model lists and everything else answer
//!   normally: a backend whose `/health` is fine while its inference is broken. It is a
//!   modifier like `close_on` (with the plain healthy kind it reads as mode `generation`);
//! - `chunks` and `chunk_delay_ms` shape streamed answers and persist across mode changes.
//!
//! Contradictions (`{"mode":"hang","status":503}`), parameters without their mode
//! (`for_s` without `refuse`), unknown fields and out-of-range values are refused with 400,
//! so a typo in a test never silently leaves the server healthy. The answer echoes the whole
//! new state in the same field names, so it can be posted back as is.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How long `refuse` keeps the port closed when `for_s` is not given.
const DEFAULT_REFUSE_S: f64 = 5.0;
/// The longest duration any field accepts, in seconds (one day): long enough for any test,
/// short enough that `Instant` arithmetic cannot overflow.
const MAX_SECONDS: f64 = 86_400.0;
/// The most chunks a stream may be asked for.
const MAX_CHUNKS: u32 = 100_000;
/// The longest `close_on` marker, in bytes.
const MAX_MARKER: usize = 256;
/// How many distinct `close_on` markers one process accepts.
pub const MAX_MARKERS: usize = 64;

/// The markers set so far, each leaked once so a [`Mode`] can hold it as `&'static str`.
static MARKERS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// The process-lifetime copy of `marker` (see the module docs).
fn intern(marker: &str) -> Result<&'static str, String> {
    if marker.is_empty() || marker.len() > MAX_MARKER {
        return Err(format!("close_on must be 1 to {MAX_MARKER} bytes"));
    }
    let mut markers = MARKERS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = markers.iter().find(|m| **m == marker) {
        return Ok(known);
    }
    if markers.len() >= MAX_MARKERS {
        return Err(format!(
            "at most {MAX_MARKERS} distinct close_on markers per process"
        ));
    }
    let leaked: &'static str = Box::leak(marker.to_owned().into_boxed_str());
    markers.push(leaked);
    Ok(leaked)
}

/// What every non-admin request runs into before it is answered normally.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Failure {
    /// Answer normally.
    Healthy,
    /// Answer every request with this status and a JSON error body.
    Status {
        code: u16,
        retry_after_s: Option<u64>,
    },
    /// Never answer; hold the request until the client leaves.
    Hang,
    /// Answer 503 "Loading model" until `until`, then behave as healthy.
    Loading { until: Instant },
    /// The listener is closed for `for_s` seconds (requests that still get in are dropped).
    Refuse { for_s: f64 },
    /// Drop the connection after reading the request head.
    Close,
}

/// The whole run-time state; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mode {
    pub failure: Failure,
    /// Wait this long before answering (headers included).
    pub slow_ms: Option<u64>,
    /// Abort streamed answers after this many chunks.
    pub drop_after_chunks: Option<u32>,
    /// Stop streamed answers after this many chunks, holding the connection open.
    pub stall_after_chunks: Option<u32>,
    /// Drop the connection of any generation request whose body contains this.
    pub close_on: Option<&'static str>,
    /// The `status` failure hits generation requests only (see the module docs).
    pub generation_only: bool,
    /// Answer every generation request with this status (health and lists stay fine).
    pub generation_status: Option<u16>,
    /// How many chunks a streamed answer has.
    pub chunks: u32,
    /// The pause between streamed chunks.
    pub chunk_delay_ms: u64,
    /// Bumped on every failure change, so a timed `refuse` ends only the refuse it began.
    generation: u64,
}

impl Mode {
    /// The mode as it applies at `now`: a loading period that has run out reads as healthy.
    pub fn effective(mut self, now: Instant) -> Mode {
        if let Failure::Loading { until } = self.failure
            && now >= until
        {
            self.failure = Failure::Healthy;
        }
        self
    }

    /// The name the echo reports in `mode`.
    fn name(&self) -> &'static str {
        match self.failure {
            Failure::Healthy if self.slow_ms.is_some() => "slow",
            Failure::Healthy if self.drop_after_chunks.is_some() => "drop",
            Failure::Healthy if self.stall_after_chunks.is_some() => "stall",
            Failure::Healthy if self.generation_status.is_some() => "generation",
            Failure::Healthy => "healthy",
            Failure::Status { .. } => "status",
            Failure::Hang => "hang",
            Failure::Loading { .. } => "loading",
            Failure::Refuse { .. } => "refuse",
            Failure::Close => "close",
        }
    }

    /// The echo document, as of `now`.
    pub fn render(&self, now: Instant) -> serde_json::Result<Vec<u8>> {
        let this = self.effective(now);
        let (status, retry_after_s) = match this.failure {
            Failure::Status {
                code,
                retry_after_s,
            } => (Some(code), retry_after_s),
            _ => (None, None),
        };
        let loading_for_s = match this.failure {
            Failure::Loading { until } => Some((until - now).as_millis() as f64 / 1000.0),
            _ => None,
        };
        let for_s = match this.failure {
            Failure::Refuse { for_s } => Some(for_s),
            _ => None,
        };
        serde_json::to_vec(&ModeOut {
            mode: this.name(),
            status,
            retry_after_s,
            slow_ms: this.slow_ms,
            loading_for_s,
            for_s,
            drop_after_chunks: this.drop_after_chunks,
            stall_after_chunks: this.stall_after_chunks,
            close_on: this.close_on,
            generation_only: this.generation_only,
            generation_status: this.generation_status,
            chunks: this.chunks,
            chunk_delay_ms: this.chunk_delay_ms,
        })
    }
}

/// The echo of the mode; the same field names `/__mode` accepts.
#[derive(Serialize)]
struct ModeOut {
    mode: &'static str,
    status: Option<u16>,
    retry_after_s: Option<u64>,
    slow_ms: Option<u64>,
    loading_for_s: Option<f64>,
    for_s: Option<f64>,
    drop_after_chunks: Option<u32>,
    stall_after_chunks: Option<u32>,
    close_on: Option<&'static str>,
    generation_only: bool,
    generation_status: Option<u16>,
    chunks: u32,
    chunk_delay_ms: u64,
}

/// A `/__mode` request body; see the module docs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    pub mode: Option<String>,
    pub status: Option<u16>,
    pub retry_after_s: Option<u64>,
    pub slow_ms: Option<u64>,
    pub loading_for_s: Option<f64>,
    pub for_s: Option<f64>,
    pub drop_after_chunks: Option<u32>,
    pub stall_after_chunks: Option<u32>,
    pub close_on: Option<String>,
    pub generation_only: Option<bool>,
    pub generation_status: Option<u16>,
    pub chunks: Option<u32>,
    pub chunk_delay_ms: Option<u64>,
}

/// An instruction to the accept loop: close the listener now, re-open it at `until`.
#[derive(Clone, Copy, Debug)]
pub struct RefuseOrder {
    pub generation: u64,
    pub until: Instant,
}

/// The published mode and its writer lock.
#[derive(Debug)]
pub struct ModeCell {
    current: ArcSwap<Mode>,
    writer: Mutex<()>,
    initial: Mode,
}

impl ModeCell {
    /// Healthy, with the stream shape given on the command line.
    pub fn new(chunks: u32, chunk_delay_ms: u64) -> Self {
        let initial = Mode {
            failure: Failure::Healthy,
            slow_ms: None,
            drop_after_chunks: None,
            stall_after_chunks: None,
            close_on: None,
            generation_only: false,
            generation_status: None,
            chunks,
            chunk_delay_ms,
            generation: 0,
        };
        ModeCell {
            current: ArcSwap::from_pointee(initial),
            writer: Mutex::new(()),
            initial,
        }
    }

    /// The current mode (a copy; no lock, no reference count).
    pub fn get(&self) -> Mode {
        **self.current.load()
    }

    /// Applies a `/__mode` body at `now`; on success returns the new mode and, for `refuse`,
    /// the order for the accept loop.
    pub fn apply(
        &self,
        req: &ModeRequest,
        now: Instant,
    ) -> Result<(Mode, Option<RefuseOrder>), String> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.get().effective(now);
        let (new, refuse) = next_mode(old, req, now)?;
        self.current.store(std::sync::Arc::new(new));
        Ok((new, refuse))
    }

    /// Starts out loading for `seconds` (`--loading-for-s`): health answers 503 "loading"
    /// until then, as after a restart that loads a model.
    pub fn start_loading(&self, seconds: f64) -> Result<(), String> {
        let req = ModeRequest {
            loading_for_s: Some(seconds),
            ..ModeRequest::default()
        };
        self.apply(&req, Instant::now()).map(|_| ())
    }

    /// Back to the start-up state: healthy, command-line stream shape.
    pub fn reset(&self) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.get().generation + 1;
        self.current.store(std::sync::Arc::new(Mode {
            generation,
            ..self.initial
        }));
    }

    /// Ends the `refuse` that `generation` started, unless the mode changed since.
    pub fn end_refuse(&self, generation: u64) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut mode = self.get();
        if mode.generation == generation {
            mode.failure = Failure::Healthy;
            mode.generation += 1;
            self.current.store(std::sync::Arc::new(mode));
        }
    }
}

/// Checks a duration in seconds from a request.
fn seconds(field: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && (0.0..=MAX_SECONDS).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{field} must be between 0 and {MAX_SECONDS} seconds"
        ))
    }
}

/// Checks a duration in milliseconds from a request.
fn millis(field: &str, value: u64) -> Result<u64, String> {
    if value as f64 <= MAX_SECONDS * 1000.0 {
        Ok(value)
    } else {
        Err(format!(
            "{field} must be at most {} ms",
            MAX_SECONDS * 1000.0
        ))
    }
}

/// The mode that `req` turns `old` into; pure, so the rules are testable without a server.
fn next_mode(
    old: Mode,
    req: &ModeRequest,
    now: Instant,
) -> Result<(Mode, Option<RefuseOrder>), String> {
    let mut new = old;
    if let Some(chunks) = req.chunks {
        if !(1..=MAX_CHUNKS).contains(&chunks) {
            return Err(format!("chunks must be between 1 and {MAX_CHUNKS}"));
        }
        new.chunks = chunks;
    }
    if let Some(ms) = req.chunk_delay_ms {
        new.chunk_delay_ms = millis("chunk_delay_ms", ms)?;
    }

    let touches_failure = req.mode.is_some()
        || req.status.is_some()
        || req.retry_after_s.is_some()
        || req.slow_ms.is_some()
        || req.loading_for_s.is_some()
        || req.for_s.is_some()
        || req.drop_after_chunks.is_some()
        || req.stall_after_chunks.is_some()
        || req.close_on.is_some()
        || req.generation_only.is_some()
        || req.generation_status.is_some();
    if !touches_failure {
        return Ok((new, None));
    }

    #[derive(PartialEq)]
    enum Kind {
        Healthy,
        Status,
        Hang,
        Loading,
        Refuse,
        Close,
    }
    let kind = match req.mode.as_deref() {
        None => match (req.status, req.loading_for_s) {
            (Some(_), Some(_)) => {
                return Err("status and loading_for_s are different modes".into());
            }
            (Some(_), None) => Kind::Status,
            (None, Some(_)) => Kind::Loading,
            (None, None) => Kind::Healthy,
        },
        Some("healthy") => Kind::Healthy,
        Some("slow") if req.slow_ms.is_none() => {
            return Err("mode slow needs slow_ms".into());
        }
        Some("slow") => Kind::Healthy,
        Some("drop") if req.drop_after_chunks.is_none() => {
            return Err("mode drop needs drop_after_chunks".into());
        }
        Some("drop") => Kind::Healthy,
        Some("stall") if req.stall_after_chunks.is_none() => {
            return Err("mode stall needs stall_after_chunks".into());
        }
        Some("stall") => Kind::Healthy,
        Some("generation") if req.generation_status.is_none() => {
            return Err("mode generation needs generation_status".into());
        }
        Some("generation") => Kind::Healthy,
        Some("status") => Kind::Status,
        Some("hang") => Kind::Hang,
        Some("loading") => Kind::Loading,
        Some("refuse") => Kind::Refuse,
        Some("close") => Kind::Close,
        Some(other) => {
            return Err(format!(
                "unknown mode {other:?} (expected healthy, status, hang, slow, loading, \
                 refuse, close, drop, stall or generation)"
            ));
        }
    };
    if req.status.is_some() && kind != Kind::Status {
        return Err("status only goes with mode status".into());
    }
    if req.retry_after_s.is_some() && kind != Kind::Status {
        return Err("retry_after_s only goes with status".into());
    }
    if req.loading_for_s.is_some() && kind != Kind::Loading {
        return Err("loading_for_s only goes with mode loading".into());
    }
    if req.generation_only == Some(true) && kind != Kind::Status {
        return Err("generation_only only goes with mode status".into());
    }
    new.generation_only = req.generation_only.unwrap_or(false);
    if req.for_s.is_some() && kind != Kind::Refuse {
        return Err("for_s only goes with mode refuse".into());
    }

    new.slow_ms = req.slow_ms.map(|ms| millis("slow_ms", ms)).transpose()?;
    if req.drop_after_chunks.is_some() && req.stall_after_chunks.is_some() {
        return Err("drop_after_chunks and stall_after_chunks are different modes".into());
    }
    new.drop_after_chunks = req.drop_after_chunks;
    new.stall_after_chunks = req.stall_after_chunks;
    new.close_on = req.close_on.as_deref().map(intern).transpose()?;
    new.generation_status = match req.generation_status {
        Some(code) if !(200..=599).contains(&code) => {
            return Err("generation_status must be between 200 and 599".into());
        }
        other => other,
    };
    new.generation = old.generation + 1;
    let mut refuse = None;
    new.failure = match kind {
        Kind::Healthy => Failure::Healthy,
        Kind::Status => {
            let code = req.status.ok_or("mode status needs status")?;
            if !(200..=599).contains(&code) {
                return Err("status must be between 200 and 599".into());
            }
            Failure::Status {
                code,
                retry_after_s: req.retry_after_s,
            }
        }
        Kind::Hang => Failure::Hang,
        Kind::Loading => {
            let s = seconds(
                "loading_for_s",
                req.loading_for_s
                    .ok_or("mode loading needs loading_for_s")?,
            )?;
            Failure::Loading {
                until: now + Duration::from_secs_f64(s),
            }
        }
        Kind::Refuse => {
            let for_s = seconds("for_s", req.for_s.unwrap_or(DEFAULT_REFUSE_S))?;
            refuse = Some(RefuseOrder {
                generation: new.generation,
                until: now + Duration::from_secs_f64(for_s),
            });
            Failure::Refuse { for_s }
        }
        Kind::Close => Failure::Close,
    };
    Ok((new, refuse))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ModeRequest {
        serde_json::from_str(json).unwrap()
    }

    fn start() -> Mode {
        ModeCell::new(5, 0).get()
    }

    #[test]
    fn generation_only_goes_with_status_alone() {
        let now = Instant::now();
        let (m, _) = next_mode(
            start(),
            &req(r#"{"status":503,"generation_only":true}"#),
            now,
        )
        .unwrap();
        assert!(m.generation_only);
        let (m, _) = next_mode(m, &req(r#"{"status":502}"#), now).unwrap();
        assert!(!m.generation_only, "replaced with the failure");
        for bad in [
            r#"{"mode":"hang","generation_only":true}"#,
            r#"{"loading_for_s":3,"generation_only":true}"#,
            r#"{"generation_only":true}"#,
        ] {
            assert!(next_mode(start(), &req(bad), now).is_err(), "{bad}");
        }
    }

    #[test]
    fn failure_fields_replace_the_failure_but_stream_shape_persists() {
        let now = Instant::now();
        let (m, _) = next_mode(start(), &req(r#"{"slow_ms":100,"chunks":3}"#), now).unwrap();
        assert_eq!(m.slow_ms, Some(100));
        assert_eq!(m.chunks, 3);
        let (m, _) = next_mode(m, &req(r#"{"status":503}"#), now).unwrap();
        assert_eq!(
            m.failure,
            Failure::Status {
                code: 503,
                retry_after_s: None
            }
        );
        assert_eq!(m.slow_ms, None);
        assert_eq!(m.chunks, 3);
        let (m, _) = next_mode(m, &req(r#"{"chunk_delay_ms":7}"#), now).unwrap();
        assert!(matches!(m.failure, Failure::Status { .. }));
        assert_eq!(m.chunk_delay_ms, 7);
    }

    #[test]
    fn contradictions_and_bad_values_are_refused() {
        let now = Instant::now();
        for bad in [
            r#"{"mode":"hang","status":503}"#,
            r#"{"status":503,"loading_for_s":1}"#,
            r#"{"for_s":1}"#,
            r#"{"retry_after_s":1}"#,
            r#"{"mode":"sideways"}"#,
            r#"{"status":99}"#,
            r#"{"chunks":0}"#,
            r#"{"loading_for_s":-1}"#,
            r#"{"mode":"slow"}"#,
            r#"{"mode":"stall"}"#,
            r#"{"drop_after_chunks":1,"stall_after_chunks":1}"#,
            r#"{"close_on":""}"#,
        ] {
            assert!(next_mode(start(), &req(bad), now).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<ModeRequest>(r#"{"stauts":503}"#).is_err());
    }

    #[test]
    fn loading_expires_and_refuse_orders_the_listener() {
        let now = Instant::now();
        let (m, _) = next_mode(start(), &req(r#"{"loading_for_s":2}"#), now).unwrap();
        assert!(matches!(m.effective(now).failure, Failure::Loading { .. }));
        let later = now + Duration::from_secs(2);
        assert_eq!(m.effective(later).failure, Failure::Healthy);
        let (m, order) = next_mode(m, &req(r#"{"mode":"refuse"}"#), now).unwrap();
        let order = order.unwrap();
        assert_eq!(order.until, now + Duration::from_secs(5));
        assert_eq!(order.generation, m.generation);
    }

    #[test]
    fn stall_and_close_on_are_modifiers_that_a_failure_change_clears() {
        let now = Instant::now();
        let (m, _) = next_mode(
            start(),
            &req(r#"{"mode":"stall","stall_after_chunks":2,"close_on":"QOD"}"#),
            now,
        )
        .unwrap();
        assert_eq!(m.failure, Failure::Healthy);
        assert_eq!((m.stall_after_chunks, m.close_on), (Some(2), Some("QOD")));
        let echo: serde_json::Value = serde_json::from_slice(&m.render(now).unwrap()).unwrap();
        assert_eq!(echo["mode"], "stall");
        assert_eq!(echo["close_on"], "QOD");
        let (again, _) = next_mode(start(), &req(r#"{"close_on":"QOD"}"#), now).unwrap();
        assert!(std::ptr::eq(again.close_on.unwrap(), m.close_on.unwrap()));
        let (m, _) = next_mode(m, &req(r#"{"mode":"healthy"}"#), now).unwrap();
        assert_eq!((m.stall_after_chunks, m.close_on), (None, None));
        let long = format!(r#"{{"close_on":"{}"}}"#, "x".repeat(MAX_MARKER + 1));
        assert!(next_mode(start(), &req(&long), now).is_err());
    }

    #[test]
    fn the_echo_can_be_posted_back() {
        let now = Instant::now();
        let (m, _) = next_mode(
            start(),
            &req(r#"{"status":429,"retry_after_s":3,"slow_ms":10}"#),
            now,
        )
        .unwrap();
        let echo = m.render(now).unwrap();
        let back: ModeRequest = serde_json::from_slice(&echo).unwrap();
        let (again, _) = next_mode(start(), &back, now).unwrap();
        assert_eq!(again.failure, m.failure);
        assert_eq!(again.slow_ms, m.slow_ms);
    }

    #[test]
    fn generation_status_is_a_modifier_that_leaves_the_rest_healthy() {
        let now = Instant::now();
        let (m, _) = next_mode(start(), &req(r#"{"generation_status":503}"#), now).unwrap();
        assert_eq!(m.failure, Failure::Healthy);
        assert_eq!(m.generation_status, Some(503));
        let echo: serde_json::Value = serde_json::from_slice(&m.render(now).unwrap()).unwrap();
        assert_eq!(echo["mode"], "generation");
        assert_eq!(echo["generation_status"], 503);
        let back: ModeRequest = serde_json::from_value(echo).unwrap();
        let (again, _) = next_mode(start(), &back, now).unwrap();
        assert_eq!(again.generation_status, Some(503));
        // Any failure change without it clears it.
        let (m, _) = next_mode(m, &req(r#"{"mode":"healthy"}"#), now).unwrap();
        assert_eq!(m.generation_status, None);
        for bad in [
            r#"{"generation_status":99}"#,
            r#"{"generation_status":600}"#,
            r#"{"mode":"generation"}"#,
        ] {
            assert!(next_mode(start(), &req(bad), now).is_err(), "{bad}");
        }
    }
}
