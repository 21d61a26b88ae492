//! The `streams` scenario of `cargo xtask bench proxy`: many concurrent long streams, the
//! load an LLM gateway really carries (issue #14).
//!
//! Its own mockllm streams [`CHUNKS`] chunks [`CHUNK_DELAY_MS`] ms apart (a 2 s answer). For
//! each stream count (`--streams`, default 1,000 and 5,000, with a short chat;
//! `--streams-long`, default 1,000, with a [`LONG_PROMPT_BYTES`] prompt, as real conversations
//! send) and round, every target — the mock itself (`direct`), Hale, HAProxy, HAProxy with
//! `option http-no-delay` ("HAProxy (http-no-delay)": plain HAProxy holds each chunk with
//! `MSG_MORE` until the client's ACK, see `refs.rs`), nginx, any extra Hale binary given
//! with `--ab LABEL=PATH` (for A/B rows of a code change in the same run), and, unless
//! `--streams-coalesce none`, the default Hale again with `server.stream_coalesce` set to
//! that duration (default 1s: "Hale (stream_coalesce 1s)", which holds chunks after the
//! first with `MSG_MORE` as plain HAProxy does, the kernel sending them on the client's ACK or
//! after about 200 ms, and pushes itself only what is still held after that duration) — runs once, the order rotated every round.
//! Each proxy is started fresh for each run, so its idle RSS is measured after one verified
//! stream and before the load, and neither memory nor CPU carry over from an earlier run. The
//! load client is [`super::streamload`] (see there for how streams are paced, counted and
//! cut).
//!
//! Per target it reports: completed streams/s (×direct), the whole stream's p50/p90/p99 and
//! what the proxy added over direct, the p99 gap between chunks as the client sees it (and
//! added over direct), the proxy's CPU time (user + system from /proc, all its threads and
//! processes) per relayed chunk, and memory per concurrent stream ((highest VmRSS sampled
//! under load − idle VmRSS) / N). CPU per chunk is all rounds' CPU over all their chunks, and
//! each round's own figure is listed under the table so that the spread between rounds (this
//! run's noise) can be read beside the differences between targets; the other figures are
//! medians over the rounds. Neither reference proxy is capped
//! below N: HAProxy gets `maxconn` above N and no per-server limit, nginx gets
//! `worker_connections` and `worker_rlimit_nofile` for both sides of N streams in one
//! worker, and the bench raises its own (inherited) open-file limit to the hard limit.
//!
//! The targets' checks hold Hale to plain HAProxy (the issue's targets) and, in the same
//! form, to HAProxy (http-no-delay), which gives the same token-by-token service Hale does;
//! and the coalescing Hale to plain HAProxy, like for like (both hold chunks).
#![expect(
    clippy::disallowed_methods,
    reason = "xtask has no tokio runtime outside the load client: thread::sleep paces the runs"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};

use super::process::Server;
use super::procfs::memory_mib;
use super::proxy::{
    CHAT_PATH, STREAMED_CHAT, median, sample_rss, spell_duration, start_hale, verify,
};
use super::refs::{self, Haproxy};
use super::streamload::{self, StreamLoad, StreamOutcome};

/// The prompt of the long-prompt runs (`--streams-long`): a chat message of this many bytes,
/// the size of a long conversation or a document to summarise.
pub(crate) const LONG_PROMPT_BYTES: usize = 64 * 1024;

/// Chunks per streamed answer, and the pause between them.
pub(crate) const CHUNKS: u32 = 100;
pub(crate) const CHUNK_DELAY_MS: u64 = 20;

/// What the streams scenario runs.
#[derive(Clone, Debug)]
pub(crate) struct StreamsOptions {
    pub(crate) counts: Vec<usize>,
    /// Stream counts run again with a [`LONG_PROMPT_BYTES`] prompt.
    pub(crate) long_prompt: Vec<usize>,
    pub(crate) seconds: f64,
    pub(crate) rounds: usize,
    /// The `server.stream_coalesce` of one more target, the default Hale binary with it set
    /// (`--streams-coalesce`); none without it.
    pub(crate) coalesce: Option<Duration>,
    /// Extra Hale binaries measured alongside, by label.
    pub(crate) ab: Vec<(String, PathBuf)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Direct,
    /// A Hale binary: the default one (no label) or an `--ab` one, by its label; with
    /// `server.stream_coalesce` set in its config, or not.
    Hale {
        label: Option<String>,
        coalesce: Option<Duration>,
    },
    /// HAProxy as configured (`option http-no-delay` or not).
    HaProxy(Haproxy),
    Nginx,
}

impl Kind {
    /// The default Hale binary as configured by default.
    const HALE: Kind = Kind::Hale {
        label: None,
        coalesce: None,
    };

    fn name(&self) -> String {
        match self {
            Kind::Direct => "direct".to_owned(),
            Kind::Hale { label, coalesce } => {
                let notes: Vec<String> = label
                    .iter()
                    .cloned()
                    .chain(coalesce.map(|d| format!("stream_coalesce {}", spell_duration(d))))
                    .collect();
                if notes.is_empty() {
                    "Hale".to_owned()
                } else {
                    format!("Hale ({})", notes.join(", "))
                }
            }
            Kind::HaProxy(Haproxy::Plain) => "HAProxy".to_owned(),
            Kind::HaProxy(Haproxy::NoDelay) => "HAProxy (http-no-delay)".to_owned(),
            Kind::Nginx => "nginx".to_owned(),
        }
    }
}

/// One run's figures for one target.
#[derive(Clone, Debug)]
struct Run {
    outcome: StreamOutcome,
    cpu_seconds: f64,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
}

/// One target's runs at one stream count.
#[derive(Clone, Debug, Default)]
struct Tally {
    runs: Vec<Run>,
    /// Why it could not be measured, if it could not.
    error: Option<String>,
}

/// `cpu_seconds` over `chunks`, in µs per chunk; NaN (shown as "—") for no chunk.
fn us_per_chunk(cpu_seconds: f64, chunks: u64) -> f64 {
    if chunks == 0 {
        f64::NAN
    } else {
        cpu_seconds / chunks as f64 * 1e6
    }
}

impl Tally {
    fn median(&self, field: impl Fn(&Run) -> f64) -> f64 {
        median(
            self.runs
                .iter()
                .map(field)
                .filter(|x| x.is_finite())
                .collect(),
        )
    }

    fn completed(&self) -> u64 {
        self.runs.iter().map(|r| r.outcome.completed).sum()
    }

    fn failed(&self) -> u64 {
        self.runs.iter().map(|r| r.outcome.failed).sum()
    }

    fn streams_per_second(&self) -> f64 {
        self.median(|r| r.outcome.streams_per_second())
    }

    fn stream_ms(&self, q: f64) -> f64 {
        self.median(|r| r.outcome.stream_quantile_ms(q))
    }

    fn gap_ms(&self, q: f64) -> f64 {
        self.median(|r| r.outcome.gap_quantile_ms(q))
    }

    /// CPU µs per relayed chunk over all runs.
    fn cpu_us_per_chunk(&self) -> f64 {
        let events: u64 = self.runs.iter().map(|r| r.outcome.events).sum();
        let cpu: f64 = self.runs.iter().map(|r| r.cpu_seconds).sum();
        us_per_chunk(cpu, events)
    }

    /// CPU per relayed chunk (µs) of each round, in the order the rounds ran: how far apart
    /// the rounds were says how much of a difference between targets is noise.
    fn cpu_us_per_chunk_by_round(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|r| us_per_chunk(r.cpu_seconds, r.outcome.events))
            .collect()
    }

    /// KiB per concurrent stream.
    fn kib_per_stream(&self, streams: usize) -> f64 {
        self.median(|r| (r.peak_rss_mib - r.idle_rss_mib) * 1024.0 / streams.max(1) as f64)
    }

    fn peak_rss_mib(&self) -> f64 {
        self.median(|r| r.peak_rss_mib)
    }
}

/// A started proxy and where it listens.
struct Started {
    server: Option<Server>,
    addr: String,
}

impl Started {
    fn pids(&self) -> Vec<u32> {
        self.server.as_ref().map_or_else(Vec::new, Server::pids)
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.server.as_ref().map_or(Ok(0.0), Server::cpu_seconds)
    }

    fn rss_mib(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(|p| memory_mib(p).ok())
            .map(|(rss, _)| rss)
            .sum()
    }
}

fn start(
    kind: &Kind,
    hale_bins: &[(Option<String>, PathBuf)],
    dir: &Path,
    backend: &str,
    max_streams: usize,
) -> anyhow::Result<Started> {
    match kind {
        Kind::Direct => Ok(Started {
            server: None,
            addr: backend.to_owned(),
        }),
        Kind::Hale { label, coalesce } => {
            let bin = hale_bins
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| anyhow!("no binary for {}", kind.name()))?;
            let (server, addr, unavailable) = start_hale(&bin, dir, backend, *coalesce);
            if let Some(why) = unavailable {
                bail!("{why}");
            }
            Ok(Started { server, addr })
        }
        Kind::HaProxy(variant) => {
            let (server, addr) = refs::start_haproxy(dir, backend, max_streams, *variant)?;
            verify(&addr.to_string())?;
            Ok(Started {
                server: Some(server),
                addr: addr.to_string(),
            })
        }
        Kind::Nginx => {
            let (server, addr) = refs::start_nginx(dir, backend, max_streams)?;
            verify(&addr.to_string())?;
            Ok(Started {
                server: Some(server),
                addr: addr.to_string(),
            })
        }
    }
}

/// One case of the scenario: a stream count, with the short chat or a long prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Case {
    streams: usize,
    long_prompt: bool,
}

impl Case {
    fn name(self) -> String {
        format!("{} streams{}", self.streams, self.prompts())
    }

    /// What the case's name says of its prompts: nothing for the short chat.
    fn prompts(self) -> String {
        if self.long_prompt {
            format!(", {} KiB prompts", LONG_PROMPT_BYTES / 1024)
        } else {
            String::new()
        }
    }

    /// The request body every stream of the case sends.
    fn body(self) -> String {
        if self.long_prompt {
            let prompt = "lorem ipsum ".repeat(LONG_PROMPT_BYTES / 12);
            format!(
                r#"{{"model":"bench-model","stream":true,"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
            )
        } else {
            STREAMED_CHAT.to_owned()
        }
    }
}

/// One run against one freshly started target.
fn measure(
    kind: &Kind,
    hale_bins: &[(Option<String>, PathBuf)],
    dir: &Path,
    backend: &str,
    case: Case,
    o: &StreamsOptions,
) -> anyhow::Result<Run> {
    let streams = case.streams;
    let mut started = start(kind, hale_bins, dir, backend, streams)?;
    // Settle after the start and the verifying stream, then take the idle figures.
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss_mib = started.rss_mib();
    let cpu_before = started.cpu_seconds()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(
        started.pids(),
        Arc::clone(&stop),
        Duration::from_secs_f64(o.seconds + 120.0),
    );
    let load = StreamLoad {
        addr: started.addr.clone(),
        path: CHAT_PATH.to_owned(),
        body: case.body(),
        streams,
        seconds: o.seconds,
        stream_length: Duration::from_millis(u64::from(CHUNKS) * CHUNK_DELAY_MS),
    };
    let outcome = streamload::run(&load);
    stop.store(true, Ordering::Relaxed);
    let peak_rss_mib = sampler.join().unwrap_or(0.0);
    if let Some(server) = started.server.as_mut() {
        server
            .ensure_running()
            .with_context(|| format!("{} died under load", kind.name()))?;
    }
    let cpu_seconds = started.cpu_seconds()? - cpu_before;
    drop(started);
    Ok(Run {
        outcome: outcome?,
        cpu_seconds,
        idle_rss_mib,
        peak_rss_mib,
    })
}

/// The scenario's results: per stream count, per target.
pub(crate) struct StreamsResults {
    kinds: Vec<Kind>,
    by_case: Vec<(Case, Vec<Tally>)>,
}

/// The targets, in the order of the report: direct, the default Hale (whose place, second,
/// the report relies on), the coalescing one, the `--ab` ones, then the references.
fn kinds(o: &StreamsOptions) -> Vec<Kind> {
    let mut kinds = vec![Kind::Direct, Kind::HALE];
    if let Some(d) = o.coalesce {
        kinds.push(Kind::Hale {
            label: None,
            coalesce: Some(d),
        });
    }
    for (label, _) in &o.ab {
        kinds.push(Kind::Hale {
            label: Some(label.clone()),
            coalesce: None,
        });
    }
    kinds.extend([
        Kind::HaProxy(Haproxy::Plain),
        Kind::HaProxy(Haproxy::NoDelay),
        Kind::Nginx,
    ]);
    kinds
}

/// Runs the scenario against `backend` (a mockllm streaming [`CHUNKS`] chunks
/// [`CHUNK_DELAY_MS`] apart). `hale` is the gateway's binary; a Hale that cannot be measured
/// gets rows saying why.
pub(crate) fn run(
    hale: Option<&Path>,
    dir: &Path,
    backend: &str,
    o: &StreamsOptions,
) -> StreamsResults {
    let hale_bins: Vec<(Option<String>, PathBuf)> = hale
        .map(|bin| (None, bin.to_owned()))
        .into_iter()
        .chain(
            o.ab.iter()
                .map(|(label, bin)| (Some(label.clone()), bin.clone())),
        )
        .collect();
    let kinds = kinds(o);
    // Room for the longest name in the per-run lines.
    let width = kinds
        .iter()
        .map(|k| k.name().chars().count())
        .max()
        .unwrap_or(0);

    let cases = o
        .counts
        .iter()
        .map(|&streams| Case {
            streams,
            long_prompt: false,
        })
        .chain(o.long_prompt.iter().map(|&streams| Case {
            streams,
            long_prompt: true,
        }));
    let mut by_case = Vec::new();
    for case in cases {
        println!(
            "--- streams: {}, {CHUNKS} chunks {CHUNK_DELAY_MS} ms apart",
            case.name()
        );
        let mut tallies: Vec<Tally> = kinds.iter().map(|_| Tally::default()).collect();
        for round in 0..o.rounds {
            for i in 0..kinds.len() {
                let index = (i + round) % kinds.len();
                let kind = &kinds[index];
                if tallies[index].error.is_some() {
                    continue;
                }
                match measure(kind, &hale_bins, dir, backend, case, o) {
                    Ok(run) => {
                        println!(
                            "    round {}: {:<width$} {:>7.1} streams/s  p50 {:>7.0} ms  p99 {:>7.0} ms  gap p99 {:>6.1} ms  CPU {:>5.2} s  RSS {:.1} → {:.1} MiB  failed {}{}",
                            round + 1,
                            kind.name(),
                            run.outcome.streams_per_second(),
                            run.outcome.stream_quantile_ms(0.5),
                            run.outcome.stream_quantile_ms(0.99),
                            run.outcome.gap_quantile_ms(0.99),
                            run.cpu_seconds,
                            run.idle_rss_mib,
                            run.peak_rss_mib,
                            run.outcome.failed,
                            run.outcome
                                .first_error
                                .as_deref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default(),
                        );
                        tallies[index].runs.push(run);
                    }
                    Err(err) => {
                        println!("    round {}: {} failed: {err:#}", round + 1, kind.name());
                        tallies[index].error = Some(format!("{err:#}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        by_case.push((case, tallies));
    }
    StreamsResults { kinds, by_case }
}

impl StreamsResults {
    /// True if every target other than Hale was measured at every count.
    pub(crate) fn references_error(&self) -> Option<String> {
        for (_, tallies) in &self.by_case {
            for (kind, tally) in self.kinds.iter().zip(tallies) {
                if !matches!(kind, Kind::Hale { .. })
                    && let Some(err) = &tally.error
                {
                    return Some(format!("{}: {err}", kind.name()));
                }
            }
        }
        None
    }

    /// Why Hale (the default binary, as configured by default or coalescing) could not be
    /// measured, if it could not.
    pub(crate) fn hale_error(&self) -> Option<String> {
        self.by_case.iter().find_map(|(_, tallies)| {
            self.kinds
                .iter()
                .zip(tallies)
                .find_map(|(kind, tally)| match kind {
                    Kind::Hale { label: None, .. } => tally.error.as_ref().map(|err| {
                        if *kind == Kind::HALE {
                            err.clone()
                        } else {
                            format!("{}: {err}", kind.name())
                        }
                    }),
                    _ => None,
                })
        })
    }

    /// The coalescing Hale's place in the tallies, if it ran.
    fn coalescing(&self) -> Option<usize> {
        self.kinds.iter().position(|kind| {
            matches!(
                kind,
                Kind::Hale {
                    label: None,
                    coalesce: Some(_)
                }
            )
        })
    }
}

fn cell(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "—".to_owned()
    }
}

fn added(v: f64, base: f64, decimals: usize) -> String {
    if v.is_finite() && base.is_finite() {
        format!("{:+.decimals$}", v - base)
    } else {
        "—".to_owned()
    }
}

/// The scenario's tables and its target checks, in Markdown.
pub(crate) fn render(o: &StreamsOptions, results: &StreamsResults) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "\n### Concurrent long streams ({CHUNKS} chunks {CHUNK_DELAY_MS} ms apart, {rounds} round(s) of {secs} s per target and count)\n\n\
         Own load client (xtask/src/bench/streamload.rs: tokio + hyper, 2 threads): N keep-alive \
         connections opened first, stream starts spread over one stream's length, each \
         connection sends its next stream when the previous ends, no new stream after {secs} s, \
         the streams in flight then run to their end and count. Each proxy is started fresh \
         for each run. Stream times are from the request to the last byte; gaps are between \
         consecutive SSE events as the client receives them. CPU µs/chunk: the proxy's CPU \
         time over the chunks it relayed, all rounds together (each round's figure is listed \
         under the table). KiB/stream: (highest VmRSS sampled every 50 ms under load − idle \
         VmRSS before it) / N. The other columns are medians over the rounds; \
         \"+\" columns are added over direct in the same run. HAProxy: global `maxconn` N + 1000, \
         no per-server `maxconn`; nginx: `worker_connections` and `worker_rlimit_nofile` ≥ 2N + 1000 \
         per worker; the bench's open-file limit raised to the hard limit (inherited by every \
         target). HAProxy (http-no-delay): the same HAProxy with `option http-no-delay` in \
         `defaults`, which sends each chunk to the client at once where plain HAProxy sends it \
         with `MSG_MORE` (held until the client's ACK).",
        rounds = o.rounds,
        secs = o.seconds,
    );
    if let Some(index) = results.coalescing()
        && let Kind::Hale {
            coalesce: Some(d), ..
        } = &results.kinds[index]
    {
        let _ = write!(
            out,
            " {name}: the same Hale binary with `server.stream_coalesce: {d}`, which sends \
             every chunk after the first with `MSG_MORE` (the kernel sends held bytes on the \
             client's ACK or after about 200 ms) and pushes what it still holds {d} after the \
             first of it — it holds chunks as plain HAProxy does, and is checked against plain \
             HAProxy like for like.",
            name = results.kinds[index].name(),
            d = spell_duration(*d),
        );
    }
    out.push('\n');
    for (case, tallies) in &results.by_case {
        let direct = &tallies[0];
        let streams = &case.streams;
        let _ = write!(
            out,
            "\n#### {streams} concurrent streams{prompts}\n\n\
             | target | streams/s | ×direct | p50 ms | p90 ms | p99 ms | added p50 | added p90 | added p99 | gap p99 ms | added gap p99 | CPU µs/chunk | KiB/stream | peak RSS MiB | failed |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            prompts = case.prompts(),
        );
        for (kind, tally) in results.kinds.iter().zip(tallies) {
            let name = kind.name();
            if tally.runs.is_empty() {
                let why = tally.error.as_deref().unwrap_or("no runs");
                let why: String = why.replace('|', "/").chars().take(160).collect();
                let _ = writeln!(out, "| {name} | not measured: {why} |||||||||||||");
                continue;
            }
            let is_direct = *kind == Kind::Direct;
            let proxy_only = |s: String| if is_direct { "—".to_owned() } else { s };
            let sps = tally.streams_per_second();
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(sps, 1),
                cell(sps / direct.streams_per_second(), 3),
                cell(tally.stream_ms(0.5), 0),
                cell(tally.stream_ms(0.9), 0),
                cell(tally.stream_ms(0.99), 0),
                proxy_only(added(tally.stream_ms(0.5), direct.stream_ms(0.5), 0)),
                proxy_only(added(tally.stream_ms(0.9), direct.stream_ms(0.9), 0)),
                proxy_only(added(tally.stream_ms(0.99), direct.stream_ms(0.99), 0)),
                cell(tally.gap_ms(0.99), 1),
                proxy_only(added(tally.gap_ms(0.99), direct.gap_ms(0.99), 1)),
                proxy_only(cell(tally.cpu_us_per_chunk(), 2)),
                proxy_only(cell(tally.kib_per_stream(*streams), 1)),
                proxy_only(cell(tally.peak_rss_mib(), 1)),
                tally.failed(),
            );
        }
        let _ = writeln!(
            out,
            "\nStreams completed per target over the rounds: {}.",
            results
                .kinds
                .iter()
                .zip(tallies)
                .map(|(k, t)| format!("{} {}", k.name(), t.completed()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let by_round: Vec<String> = results
            .kinds
            .iter()
            .zip(tallies)
            .filter(|(k, t)| **k != Kind::Direct && !t.runs.is_empty())
            .map(|(k, t)| {
                let rounds: Vec<String> = t
                    .cpu_us_per_chunk_by_round()
                    .into_iter()
                    .map(|v| cell(v, 2))
                    .collect();
                format!("{} {}", k.name(), rounds.join(" / "))
            })
            .collect();
        if !by_round.is_empty() {
            let _ = writeln!(
                out,
                "CPU µs/chunk of each round, in the order run (the spread is this run's noise): {}.",
                by_round.join(", ")
            );
        }
    }
    out.push_str("\n### Targets (issue #14)\n\n");
    for line in checks(results) {
        let _ = writeln!(out, "- {line}");
    }
    out
}

/// What the coalescing Hale's checks against plain HAProxy say they are.
const LIKE_FOR_LIKE: &str = ", like for like (both hold chunks)";

/// Hale against HAProxy at every count: CPU per chunk, memory per stream, added p99 — and
/// the same three against HAProxy (http-no-delay) when it was measured, and of the coalescing
/// Hale against plain HAProxy (like for like: both hold chunks) when both were.
fn checks(results: &StreamsResults) -> Vec<String> {
    let mut lines = Vec::new();
    let position = |kind: &Kind| results.kinds.iter().position(|k| k == kind);
    let plain = position(&Kind::HaProxy(Haproxy::Plain));
    let no_delay = position(&Kind::HaProxy(Haproxy::NoDelay));
    let coalescing = results.coalescing();
    // Who is held to whom (places in the tallies), and how the lines qualify it.
    let mut pairs: Vec<(usize, usize, &str)> = Vec::new();
    if let Some(hale) = position(&Kind::HALE) {
        for reference in [plain, no_delay].into_iter().flatten() {
            pairs.push((hale, reference, ""));
        }
    }
    if let (Some(coalescing), Some(plain)) = (coalescing, plain) {
        pairs.push((coalescing, plain, LIKE_FOR_LIKE));
    }
    for (case, tallies) in &results.by_case {
        let streams = &case.streams;
        let direct = &tallies[0];
        let line = |pass: bool, text: String| {
            format!(
                "{} {}: {text}",
                if pass { "PASS" } else { "FAIL" },
                case.name()
            )
        };
        for &(index, reference, how) in &pairs {
            let (hale, name) = (&tallies[index], results.kinds[reference].name());
            let hale_name = results.kinds[index].name();
            // The default Hale's lines leave it unnamed; any other Hale's say which it is.
            let who = if results.kinds[index] == Kind::HALE {
                String::new()
            } else {
                format!("{hale_name} ")
            };
            if hale.runs.is_empty() || hale.failed() > 0 {
                let why = match &hale.error {
                    Some(e) => e.chars().take(160).collect::<String>(),
                    None => format!("{} failed streams", hale.failed()),
                };
                lines.push(line(
                    false,
                    format!("{hale_name} ≤ {name}{how} — not met: {why}"),
                ));
                continue;
            }
            let reference = &tallies[reference];
            let (h, p) = (hale.cpu_us_per_chunk(), reference.cpu_us_per_chunk());
            lines.push(line(
                h <= p,
                format!(
                    "{who}CPU per chunk ≤ {name}'s{how} — {h:.2} vs {p:.2} µs ({:.2}×)",
                    h / p
                ),
            ));
            let (h, p) = (
                hale.kib_per_stream(*streams),
                reference.kib_per_stream(*streams),
            );
            lines.push(line(
                h <= p,
                format!("{who}memory per stream ≤ {name}'s{how} — {h:.1} vs {p:.1} KiB"),
            ));
            let base = direct.stream_ms(0.99);
            let (h, p) = (
                hale.stream_ms(0.99) - base,
                reference.stream_ms(0.99) - base,
            );
            lines.push(line(
                h <= p,
                format!("{who}added p99 ≤ {name}'s{how} — {h:+.0} vs {p:+.0} ms"),
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cpu: f64, idle: f64, peak: f64, p99_ms: f64) -> Run {
        // 95 streams of about 2 s and a slow tail of 6 at `p99_ms`.
        let mut stream_ms: Vec<f64> = (0..95).map(|i| 2000.0 + f64::from(i)).collect();
        stream_ms.extend([p99_ms; 6]);
        stream_ms.sort_by(f64::total_cmp);
        Run {
            outcome: StreamOutcome {
                completed: 101,
                failed: 0,
                first_error: None,
                events: 10_000,
                elapsed: 10.0,
                stream_ms,
                gaps_us: vec![20_000; 100],
            },
            cpu_seconds: cpu,
            idle_rss_mib: idle,
            peak_rss_mib: peak,
        }
    }

    /// Plain HAProxy: 10 µs/chunk, 10.2 KiB/stream, +200 ms added p99.
    fn haproxy() -> Run {
        run(0.1, 10.0, 20.0, 2300.0)
    }

    /// HAProxy (http-no-delay): 13 µs/chunk, 11.3 KiB/stream, +150 ms added p99.
    fn haproxy_no_delay() -> Run {
        run(0.13, 10.0, 21.0, 2250.0)
    }

    fn results(hale: Run, no_delay: Run) -> StreamsResults {
        let tally = |r: Run| Tally {
            runs: vec![r],
            error: None,
        };
        StreamsResults {
            kinds: vec![
                Kind::Direct,
                Kind::HALE,
                Kind::HaProxy(Haproxy::Plain),
                Kind::HaProxy(Haproxy::NoDelay),
                Kind::Nginx,
            ],
            by_case: vec![(
                Case {
                    streams: 1000,
                    long_prompt: false,
                },
                vec![
                    tally(run(0.0, 0.0, 0.0, 2100.0)),
                    tally(hale),
                    tally(haproxy()),
                    tally(no_delay),
                    tally(run(0.2, 10.0, 30.0, 2400.0)),
                ],
            )],
        }
    }

    /// The same results without the no-delay HAProxy, as before it was measured.
    fn without_no_delay(mut results: StreamsResults) -> StreamsResults {
        let index = results
            .kinds
            .iter()
            .position(|k| *k == Kind::HaProxy(Haproxy::NoDelay))
            .unwrap();
        results.kinds.remove(index);
        for (_, tallies) in &mut results.by_case {
            tallies.remove(index);
        }
        results
    }

    /// The same results with the coalescing Hale (`server.stream_coalesce: 200ms`) measured
    /// too, in its place after the default Hale, as `--streams-coalesce 200ms` runs it.
    fn with_coalescing(mut results: StreamsResults, coalescing: Run) -> StreamsResults {
        results.kinds.insert(
            2,
            Kind::Hale {
                label: None,
                coalesce: Some(Duration::from_millis(200)),
            },
        );
        for (_, tallies) in &mut results.by_case {
            tallies.insert(
                2,
                Tally {
                    runs: vec![coalescing.clone()],
                    error: None,
                },
            );
        }
        results
    }

    /// The first cell of every table row of a rendered report, header rows left out.
    fn row_names(body: &str) -> Vec<&str> {
        body.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| target"))
            .map(|l| l.split(" | ").next().unwrap())
            .collect()
    }

    fn options(coalesce: Option<Duration>, ab: &[&str]) -> StreamsOptions {
        StreamsOptions {
            counts: vec![1000],
            long_prompt: Vec::new(),
            seconds: 10.0,
            rounds: 1,
            coalesce,
            ab: ab
                .iter()
                .map(|l| ((*l).to_owned(), PathBuf::from("/tmp/hale")))
                .collect(),
        }
    }

    #[test]
    fn the_targets_are_direct_hale_coalescing_hale_ab_binaries_then_references() {
        let names = |o: &StreamsOptions| kinds(o).iter().map(Kind::name).collect::<Vec<_>>();
        assert_eq!(
            names(&options(Some(Duration::from_millis(200)), &["old"])),
            [
                "direct",
                "Hale",
                "Hale (stream_coalesce 200ms)",
                "Hale (old)",
                "HAProxy",
                "HAProxy (http-no-delay)",
                "nginx",
            ]
        );
        // `--streams-coalesce none`: the targets as before it, an `--ab` binary never coalesces.
        assert_eq!(
            names(&options(None, &["old"])),
            [
                "direct",
                "Hale",
                "Hale (old)",
                "HAProxy",
                "HAProxy (http-no-delay)",
                "nginx",
            ]
        );
        assert_eq!(
            kinds(&options(Some(Duration::from_secs(1)), &[]))[2].name(),
            "Hale (stream_coalesce 1s)"
        );
        assert_eq!(kinds(&options(None, &[]))[1], Kind::HALE);
    }

    #[test]
    fn hale_is_held_to_haproxy_on_cpu_memory_and_added_p99() {
        let good = results(run(0.08, 5.0, 14.0, 2200.0), haproxy_no_delay());
        let lines = checks(&good);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines.iter().all(|l| l.starts_with("PASS ")), "{lines:#?}");
        assert_eq!(
            lines,
            [
                "PASS 1000 streams: CPU per chunk ≤ HAProxy's — 8.00 vs 10.00 µs (0.80×)",
                "PASS 1000 streams: memory per stream ≤ HAProxy's — 9.2 vs 10.2 KiB",
                "PASS 1000 streams: added p99 ≤ HAProxy's — +100 vs +200 ms",
                "PASS 1000 streams: CPU per chunk ≤ HAProxy (http-no-delay)'s — 8.00 vs 13.00 µs (0.62×)",
                "PASS 1000 streams: memory per stream ≤ HAProxy (http-no-delay)'s — 9.2 vs 11.3 KiB",
                "PASS 1000 streams: added p99 ≤ HAProxy (http-no-delay)'s — +100 vs +150 ms",
            ]
        );

        let bad = results(run(0.2, 5.0, 40.0, 2500.0), haproxy_no_delay());
        let lines = checks(&bad);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert!(lines.iter().all(|l| l.starts_with("FAIL ")), "{lines:#?}");
        assert!(
            lines[3].contains("HAProxy (http-no-delay)'s — 20.00 vs 13.00 µs"),
            "{}",
            lines[3]
        );
        let o = StreamsOptions {
            counts: vec![1000],
            long_prompt: Vec::new(),
            seconds: 10.0,
            rounds: 1,
            coalesce: None,
            ab: Vec::new(),
        };
        let body = render(&o, &bad);
        assert!(body.contains("| Hale | 10.1 | 1.000 |"), "{body}");
        // Its own row, between plain HAProxy's and nginx's, and its count of streams.
        let rows = row_names(&body);
        assert_eq!(
            rows,
            [
                "| direct",
                "| Hale",
                "| HAProxy",
                "| HAProxy (http-no-delay)",
                "| nginx"
            ],
            "{body}"
        );
        assert!(
            body.contains("| HAProxy (http-no-delay) | 10.1 | 1.000 | 2050 |"),
            "{body}"
        );
        assert!(
            body.contains("HAProxy 101, HAProxy (http-no-delay) 101, nginx 101."),
            "{body}"
        );
        assert!(
            body.contains(
                "- FAIL 1000 streams: added p99 ≤ HAProxy (http-no-delay)'s — +400 vs +150 ms"
            ),
            "{body}"
        );
    }

    #[test]
    fn each_rounds_cpu_per_chunk_is_listed_for_every_proxy_in_the_order_run() {
        let mut two_rounds = results(run(0.08, 5.0, 14.0, 2200.0), haproxy_no_delay());
        two_rounds.by_case[0].1[1]
            .runs
            .push(run(0.09, 5.0, 14.0, 2200.0));
        // A round that relayed nothing has no figure, and says so.
        let mut empty = run(0.0, 10.0, 20.0, 2300.0);
        empty.outcome.events = 0;
        two_rounds.by_case[0].1[2].runs.push(empty);
        let body = render(&options(None, &[]), &two_rounds);
        assert!(
            body.contains(
                "CPU µs/chunk of each round, in the order run (the spread is this run's noise): \
                 Hale 8.00 / 9.00, HAProxy 10.00 / —, HAProxy (http-no-delay) 13.00, nginx 20.00."
            ),
            "{body}"
        );
        // The checks use all rounds' CPU over all their chunks: Hale's 0.17 s over 20,000.
        assert!(
            body.contains("- PASS 1000 streams: CPU per chunk ≤ HAProxy's — 8.50 vs 10.00 µs"),
            "{body}"
        );
    }

    #[test]
    fn hale_can_pass_against_one_haproxy_and_fail_against_the_other() {
        // 12 µs/chunk: above plain HAProxy's 10, below the no-delay HAProxy's 13.
        let mixed = results(run(0.12, 5.0, 14.0, 2200.0), haproxy_no_delay());
        let lines = checks(&mixed);
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert_eq!(
            lines[0],
            "FAIL 1000 streams: CPU per chunk ≤ HAProxy's — 12.00 vs 10.00 µs (1.20×)"
        );
        assert_eq!(
            lines[3],
            "PASS 1000 streams: CPU per chunk ≤ HAProxy (http-no-delay)'s — 12.00 vs 13.00 µs (0.92×)"
        );
        assert!(
            [1, 2, 4, 5].iter().all(|&i| lines[i].starts_with("PASS ")),
            "{lines:#?}"
        );

        // The other way round on added p99: +100 ms beats plain HAProxy's +200 but not a
        // no-delay HAProxy at +50.
        let mixed = results(run(0.08, 5.0, 14.0, 2200.0), run(0.13, 10.0, 21.0, 2150.0));
        let lines = checks(&mixed);
        assert_eq!(
            lines[2],
            "PASS 1000 streams: added p99 ≤ HAProxy's — +100 vs +200 ms"
        );
        assert_eq!(
            lines[5],
            "FAIL 1000 streams: added p99 ≤ HAProxy (http-no-delay)'s — +100 vs +50 ms"
        );
    }

    #[test]
    fn without_the_no_delay_haproxy_only_plain_haproxy_is_checked() {
        let lines = checks(&without_no_delay(results(
            run(0.12, 5.0, 14.0, 2200.0),
            haproxy_no_delay(),
        )));
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines.iter().all(|l| !l.contains("http-no-delay")),
            "{lines:#?}"
        );
        assert!(lines[0].starts_with("FAIL ") && lines[0].contains("HAProxy's — 12.00 vs 10.00"));
    }

    #[test]
    fn a_hale_that_fails_streams_fails_its_checks() {
        let mut failing = results(run(0.01, 5.0, 6.0, 2000.0), haproxy_no_delay());
        failing.by_case[0].1[1].runs[0].outcome.failed = 3;
        let lines = checks(&failing);
        assert_eq!(
            lines,
            [
                "FAIL 1000 streams: Hale ≤ HAProxy — not met: 3 failed streams",
                "FAIL 1000 streams: Hale ≤ HAProxy (http-no-delay) — not met: 3 failed streams",
            ]
        );
        assert_eq!(checks(&without_no_delay(failing)).len(), 1);
    }

    /// The coalescing Hale: 9 µs/chunk, 8.2 KiB/stream, +150 ms added p99, gap p99 60 ms.
    fn coalescing() -> Run {
        let mut run = run(0.09, 5.0, 13.0, 2250.0);
        run.outcome.gaps_us = vec![60_000; 100];
        run
    }

    #[test]
    fn the_coalescing_hale_is_held_to_plain_haproxy_like_for_like() {
        let hale = || run(0.08, 5.0, 14.0, 2200.0);
        let without = checks(&results(hale(), haproxy_no_delay()));
        let good = with_coalescing(results(hale(), haproxy_no_delay()), coalescing());
        let lines = checks(&good);
        assert_eq!(lines.len(), 9, "{lines:#?}");
        // The default Hale's six lines as they were, then the coalescing Hale's three.
        assert_eq!(lines[..6], without[..], "{lines:#?}");
        assert_eq!(
            lines[6..],
            [
                "PASS 1000 streams: Hale (stream_coalesce 200ms) CPU per chunk ≤ HAProxy's, like for like (both hold chunks) — 9.00 vs 10.00 µs (0.90×)",
                "PASS 1000 streams: Hale (stream_coalesce 200ms) memory per stream ≤ HAProxy's, like for like (both hold chunks) — 8.2 vs 10.2 KiB",
                "PASS 1000 streams: Hale (stream_coalesce 200ms) added p99 ≤ HAProxy's, like for like (both hold chunks) — +150 vs +200 ms",
            ]
        );

        // Worse than plain HAProxy on each: 11 µs/chunk, 12.3 KiB/stream, +300 ms.
        let bad = with_coalescing(
            results(hale(), haproxy_no_delay()),
            run(0.11, 5.0, 17.0, 2400.0),
        );
        let lines = checks(&bad);
        assert!(
            lines[..6].iter().all(|l| l.starts_with("PASS ")),
            "{lines:#?}"
        );
        assert_eq!(
            lines[6],
            "FAIL 1000 streams: Hale (stream_coalesce 200ms) CPU per chunk ≤ HAProxy's, like for like (both hold chunks) — 11.00 vs 10.00 µs (1.10×)"
        );
        assert!(
            lines[7].starts_with("FAIL ") && lines[7].ends_with("— 12.3 vs 10.2 KiB"),
            "{}",
            lines[7]
        );
        assert!(
            lines[8].starts_with("FAIL ") && lines[8].ends_with("— +300 vs +200 ms"),
            "{}",
            lines[8]
        );

        // Its row between the default Hale's and plain HAProxy's, with its gap p99 (60 ms,
        // +40 over direct's 20) beside the others', and what it is in the description.
        let o = options(Some(Duration::from_millis(200)), &[]);
        let body = render(&o, &good);
        let rows = row_names(&body);
        assert_eq!(
            rows,
            [
                "| direct",
                "| Hale",
                "| Hale (stream_coalesce 200ms)",
                "| HAProxy",
                "| HAProxy (http-no-delay)",
                "| nginx"
            ],
            "{body}"
        );
        let row = body
            .lines()
            .find(|l| l.starts_with("| Hale (stream_coalesce 200ms) |"))
            .unwrap();
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!((cells[9], cells[10]), ("60.0", "+40.0"), "{row}");
        assert!(
            body.contains(
                "Hale (stream_coalesce 200ms): the same Hale binary with \
                 `server.stream_coalesce: 200ms`"
            ),
            "{body}"
        );
        assert!(
            body.contains("Hale 101, Hale (stream_coalesce 200ms) 101, HAProxy 101"),
            "{body}"
        );
        assert!(
            body.contains(
                "- PASS 1000 streams: Hale (stream_coalesce 200ms) added p99 ≤ HAProxy's, \
                 like for like (both hold chunks) — +150 vs +200 ms"
            ),
            "{body}"
        );
        // Without it, no word of it.
        let body = render(&options(None, &[]), &results(hale(), haproxy_no_delay()));
        assert!(!body.contains("stream_coalesce"), "{body}");
    }

    #[test]
    fn a_coalescing_hale_that_fails_streams_fails_its_checks_alone() {
        let mut failing = with_coalescing(
            results(run(0.08, 5.0, 14.0, 2200.0), haproxy_no_delay()),
            coalescing(),
        );
        failing.by_case[0].1[2].runs[0].outcome.failed = 3;
        let lines = checks(&failing);
        assert_eq!(lines.len(), 7, "{lines:#?}");
        assert!(
            lines[..6].iter().all(|l| l.starts_with("PASS ")),
            "{lines:#?}"
        );
        assert_eq!(
            lines[6],
            "FAIL 1000 streams: Hale (stream_coalesce 200ms) ≤ HAProxy, like for like (both hold chunks) — not met: 3 failed streams"
        );

        // One that could not start says why, and makes the run's Hale unmeasured.
        failing.by_case[0].1[2] = Tally {
            runs: Vec::new(),
            error: Some("unknown field `stream_coalesce`".to_owned()),
        };
        assert_eq!(
            checks(&failing)[6],
            "FAIL 1000 streams: Hale (stream_coalesce 200ms) ≤ HAProxy, like for like (both hold chunks) — not met: unknown field `stream_coalesce`"
        );
        assert_eq!(
            failing.hale_error().as_deref(),
            Some("Hale (stream_coalesce 200ms): unknown field `stream_coalesce`")
        );
        assert_eq!(failing.references_error(), None);
        // The default Hale's own reason comes first, as it is.
        failing.by_case[0].1[1].error = Some("answered 404".to_owned());
        assert_eq!(failing.hale_error().as_deref(), Some("answered 404"));
    }

    #[test]
    fn without_plain_haproxy_the_coalescing_hale_is_not_checked() {
        let mut results = with_coalescing(
            results(run(0.08, 5.0, 14.0, 2200.0), haproxy_no_delay()),
            coalescing(),
        );
        let index = results
            .kinds
            .iter()
            .position(|k| *k == Kind::HaProxy(Haproxy::Plain))
            .unwrap();
        results.kinds.remove(index);
        for (_, tallies) in &mut results.by_case {
            tallies.remove(index);
        }
        let lines = checks(&results);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(
            lines.iter().all(|l| !l.contains("stream_coalesce")),
            "{lines:#?}"
        );
    }
}
