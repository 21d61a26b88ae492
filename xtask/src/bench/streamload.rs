//! The load client of the `streams` scenario: N concurrent long streamed chats against one
//! target, each chunk timestamped as the client sees it.
//!
//! oha reports a stream only when it ends, so it cannot say how evenly the chunks of a stream
//! arrive; this client can. It runs on its own tokio runtime (two worker threads, as many as
//! the machine's cores) with hyper's HTTP/1.1 client connection, one keep-alive connection per
//! stream slot. The N connections are opened first (at most [`CONNECT_CONCURRENCY`] at a
//! time, so the listen backlog never drops a SYN and adds a second to a connect), then slot
//! `i` starts its first stream at `i / N` of one stream's length, so the load is a steady
//! N concurrent streams rather than N streams whose chunks all fall due at the same instant;
//! every slot then sends its next stream as soon as the previous one ended. No stream starts
//! after `seconds`; the streams in flight then run to their end, so that every started stream
//! counts (no survivorship: a proxy's slowest streams are not cut off its figures). The whole
//! run is bounded: a stream not done [`GRACE`] after the deadline is counted failed.
//!
//! Per stream it records the time from sending the request to the end of the body, and per
//! SSE event (`\n\n`-terminated) the gap since the previous one (the first: since the
//! response head). Events that arrive in one read get a gap of 0 after the first.
#![expect(
    clippy::disallowed_types,
    reason = "the load client runs its own runtime with real time; std Instant stamps chunks"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Connections opened at the same time before the run.
const CONNECT_CONCURRENCY: usize = 128;
/// How long after the deadline the streams in flight may take to end.
const GRACE: Duration = Duration::from_secs(60);
/// Bound on opening the N connections.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// One run: `streams` concurrent streams for `seconds`.
#[derive(Clone, Debug)]
pub(crate) struct StreamLoad {
    pub(crate) addr: String,
    pub(crate) path: String,
    pub(crate) body: String,
    pub(crate) streams: usize,
    pub(crate) seconds: f64,
    /// The nominal length of one stream (chunks × delay), over which the first streams of
    /// the slots are spread.
    pub(crate) stream_length: Duration,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamOutcome {
    /// Streams answered 200 and read to their end with a `[DONE]` event.
    pub(crate) completed: u64,
    /// Streams that failed: connect or transport errors, non-200, cut or unfinished.
    pub(crate) failed: u64,
    /// The first error seen, for the report.
    pub(crate) first_error: Option<String>,
    /// SSE events received in completed streams.
    pub(crate) events: u64,
    /// From the first stream's start to the last one's end, seconds.
    pub(crate) elapsed: f64,
    /// Whole-stream times of the completed streams, sorted, in ms.
    pub(crate) stream_ms: Vec<f64>,
    /// Gaps between consecutive events, sorted, in µs.
    pub(crate) gaps_us: Vec<u32>,
}

impl StreamOutcome {
    pub(crate) fn streams_per_second(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.completed as f64 / self.elapsed
        } else {
            f64::NAN
        }
    }

    /// The `q` quantile (0..=1) of the whole-stream times, ms.
    pub(crate) fn stream_quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.stream_ms, q).unwrap_or(f64::NAN)
    }

    /// The `q` quantile of the gaps between events, ms.
    pub(crate) fn gap_quantile_ms(&self, q: f64) -> f64 {
        quantile(&self.gaps_us, q).map_or(f64::NAN, |us| f64::from(us) / 1000.0)
    }
}

fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted.get(index).copied()
}

/// Per slot: what its streams measured.
#[derive(Default)]
struct Slot {
    completed: u64,
    failed: u64,
    first_error: Option<String>,
    events: u64,
    last_end: Option<Instant>,
    stream_ms: Vec<f64>,
    gaps_us: Vec<u32>,
}

impl Slot {
    fn fail(&mut self, err: impl std::fmt::Display) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(err.to_string());
        }
    }
}

/// Runs `load` to its end (bounded by its deadline plus [`GRACE`]).
pub(crate) fn run(load: &StreamLoad) -> anyhow::Result<StreamOutcome> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the load client's runtime")?;
    runtime.block_on(run_async(load))
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn run_async(load: &StreamLoad) -> anyhow::Result<StreamOutcome> {
    let load = Arc::new(load.clone());
    // Open every connection first, a bounded number at a time.
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut connecting = Vec::with_capacity(load.streams);
    for _ in 0..load.streams {
        let gate = Arc::clone(&gate);
        let addr = load.addr.clone();
        connecting.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            connect(&addr).await
        }));
    }
    let mut senders = Vec::with_capacity(load.streams);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        for task in connecting {
            senders.push(task.await.map_err(|e| anyhow!("{e}")).and_then(|r| r));
        }
    })
    .await;
    if connected.is_err() {
        return Err(anyhow!(
            "opening {} connections to {} took over {} s",
            load.streams,
            load.addr,
            CONNECT_TIMEOUT.as_secs()
        ));
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(load.seconds);
    let hard_deadline = deadline + GRACE;
    let n = load.streams.max(1) as f64;
    let mut slots = Vec::with_capacity(load.streams);
    for (i, sender) in senders.into_iter().enumerate() {
        let load = Arc::clone(&load);
        let offset = load.stream_length.mul_f64(i as f64 / n);
        slots.push(tokio::spawn(async move {
            let mut slot = Slot::default();
            tokio::time::sleep_until((start + offset).into()).await;
            let run = slot_loop(&load, sender, &mut slot, deadline);
            if tokio::time::timeout_at(hard_deadline.into(), run)
                .await
                .is_err()
            {
                slot.fail("a stream still unfinished 60 s after the deadline");
            }
            slot
        }));
    }
    let mut out = StreamOutcome::default();
    let mut last_end = start;
    for task in slots {
        let slot = task
            .await
            .map_err(|e| anyhow!("a stream slot ended: {e}"))?;
        out.completed += slot.completed;
        out.failed += slot.failed;
        out.events += slot.events;
        if out.first_error.is_none() {
            out.first_error = slot.first_error;
        }
        if let Some(end) = slot.last_end {
            last_end = last_end.max(end);
        }
        out.stream_ms.extend(slot.stream_ms);
        out.gaps_us.extend(slot.gaps_us);
    }
    out.elapsed = last_end.duration_since(start).as_secs_f64();
    out.stream_ms.sort_by(f64::total_cmp);
    out.gaps_us.sort_unstable();
    Ok(out)
}

/// One slot: stream after stream on its connection until the deadline, reconnecting after
/// an error.
async fn slot_loop(
    load: &StreamLoad,
    sender: anyhow::Result<Sender>,
    slot: &mut Slot,
    deadline: Instant,
) {
    let mut sender = match sender {
        Ok(s) => Some(s),
        Err(err) => {
            slot.fail(format!("{err:#}"));
            None
        }
    };
    while Instant::now() < deadline {
        let mut current = match sender.take() {
            Some(s) => s,
            None => match connect(&load.addr).await {
                Ok(s) => s,
                Err(err) => {
                    slot.fail(format!("{err:#}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if current.ready().await.is_err() {
            // The server closed the idle connection; open another.
            continue;
        }
        match one_stream(load, &mut current, slot).await {
            Ok(()) => sender = Some(current),
            Err(err) => slot.fail(format!("{err:#}")),
        }
    }
}

async fn one_stream(load: &StreamLoad, sender: &mut Sender, slot: &mut Slot) -> anyhow::Result<()> {
    let request = Request::post(load.path.as_str())
        .header("host", load.addr.as_str())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(load.body.clone())))?;
    let sent = Instant::now();
    let response = sender.send_request(request).await?;
    if response.status() != 200 {
        return Err(anyhow!("answered {}", response.status()));
    }
    let mut body = response.into_body();
    let mut previous = Instant::now();
    let mut events: u64 = 0;
    let mut gaps = Vec::with_capacity(128);
    // The last bytes of the previous frame, so an event boundary split across frames counts.
    let mut tail_newline = false;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        let mut first_in_frame = true;
        let mut prev_byte_newline = tail_newline;
        for &b in data.iter() {
            if b == b'\n' && prev_byte_newline {
                events += 1;
                let gap = if first_in_frame {
                    now.duration_since(previous)
                } else {
                    Duration::ZERO
                };
                gaps.push(u32::try_from(gap.as_micros()).unwrap_or(u32::MAX));
                first_in_frame = false;
                prev_byte_newline = false;
            } else {
                prev_byte_newline = b == b'\n';
            }
        }
        tail_newline = prev_byte_newline;
        if !first_in_frame {
            previous = now;
        }
        if data.windows(6).any(|w| w == b"[DONE]") {
            done = true;
        }
    }
    if !done {
        return Err(anyhow!("the stream ended without [DONE]"));
    }
    let end = Instant::now();
    slot.completed += 1;
    slot.events += events;
    slot.last_end = Some(end);
    slot.stream_ms
        .push(end.duration_since(sent).as_secs_f64() * 1000.0);
    slot.gaps_us.extend(gaps);
    Ok(())
}
