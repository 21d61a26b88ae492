//! `cargo xtask bench proxy [--seconds D] [--rounds R] [--quick] [--only short|streams]
//! [--streams N,N…] [--streams-long N,N…|none] [--streams-seconds D] [--streams-rounds R]
//! [--streams-coalesce D|none] [--ab LABEL=HALE_BINARY]…`: what the gateway adds to a request,
//! next to a direct call and to two reference proxies.
//!
//! Two parts, each writing its own section of docs/BENCHMARKS.md: the short-answer scenarios
//! below (section `proxy`), and the `streams` scenario — thousands of concurrent 2-second
//! streams, with its own mock, load client and fresh proxies per run (section
//! `proxy-streams`; see `streams.rs`). `--only` runs one part; `--ab` adds other Hale
//! binaries to both parts, a row `Hale (LABEL)` each, measured in the same interleaved runs
//! (A/B rows for a code change); the targets' checks are of the default Hale only (and, in
//! `streams`, of the default Hale with `server.stream_coalesce` set, `--streams-coalesce`,
//! default 1s). The bench raises its open-file limit to the hard limit first; every target
//! inherits it.
//!
//! One mockllm (OpenAI flavour, release build, `--chunks 5 --chunk-delay-ms 0`) is the backend
//! of every target; the streamed and the non-streamed chat both go to it, so every target
//! sees the very same backend. The targets are the mock itself (`direct`), `hale serve` with
//! that one endpoint, and HAProxy and nginx configured as plain keep-alive reverse proxies
//! (see `refs.rs` for their settings and why). oha drives three scenarios:
//!
//! - `chat, closed loop`: a small non-streaming chat, 32 connections each sending its next
//!   request as soon as the answer is in — throughput;
//! - `chat at 100 req/s`: the same chat at a fixed rate with latency correction, on up to 8
//!   connections — the latency a proxy adds when it is not saturated;
//! - `streamed chat, closed loop`: the chat with `"stream": true`, 32 connections.
//!
//! Within a scenario the targets run interleaved — round after round of one run each, the
//! order rotated every round — and the median of the rounds is reported, so that drift on
//! the shared machine hits every target alike. Each target is warmed up first (connection
//! pools filled). During a proxy's runs its CPU time (user + system, master and workers) is
//! read from /proc and divided by the requests answered, and its resident memory is sampled;
//! the peak (VmHWM) is read at the end. Everything — load generator, mock and proxy — shares
//! the machine's cores, so only ratios within one run mean anything.
//!
//! The section written to docs/BENCHMARKS.md carries one table per scenario, the target
//! checks from the issue with PASS/FAIL, the tool versions and the exact command. `--quick`
//! (1 round of 2 s) is a sanity run: it prints the section but leaves the file alone. A target
//! that cannot be measured (Hale without proxy routes, say) gets a row saying why and fails
//! its checks, and the command then exits non-zero after writing the figures it has.
#![expect(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "xtask has no tokio runtime: std Instant and thread::sleep pace the runs"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::oha::{self, Load, Outcome};
use super::process::{Server, TempDir, http_post};
use super::procfs::memory_mib;
use super::refs::{self, UPSTREAM_IDLE};
use super::report::write_section;
use super::streams::{self, StreamsOptions};
use crate::setup;
use crate::steps::{cargo, first_line_of};

pub(super) const CHAT_PATH: &str = "/v1/chat/completions";
const CHAT: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}"#;
pub(super) const STREAMED_CHAT: &str =
    r#"{"model":"bench-model","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
/// Chunks per answer (words in a non-streamed one); no delay between them.
const CHUNKS: u32 = 5;
/// Connections of the closed-loop scenarios.
const CLOSED_CONNECTIONS: u32 = 32;
/// The fixed rate of the latency scenario, and the connections it may use.
const RATE: u32 = 100;
const RATE_CONNECTIONS: u32 = 8;
/// How long the gateway may take to route its first chat after start (first health sweep).
const HALE_READY: Duration = Duration::from_secs(30);

// Targets from the issue (#4): the gateway against HAProxy and against a direct call.
const MIN_THROUGHPUT_VS_HAPROXY: f64 = 0.8;
const MAX_ADDED_P50_MS: f64 = 0.1;
const MAX_CPU_VS_HAPROXY: f64 = 2.0;
const MAX_RSS_MIB: f64 = 32.0;

struct Options {
    seconds: f64,
    rounds: usize,
    warmup: f64,
    quick: bool,
    /// Run the short-answer scenarios (oha).
    short: bool,
    /// The streams scenario, if it runs.
    streams: Option<StreamsOptions>,
    /// Other Hale binaries measured beside the default one (`--ab LABEL=PATH`).
    ab: Vec<(String, PathBuf)>,
}

const USAGE: &str = "options: --seconds D, --rounds R, --quick, --only short|streams, \
                     --streams N[,N...], --streams-long N[,N...]|none, --streams-seconds D, --streams-rounds R, \
                     --streams-coalesce D|none, --ab LABEL=HALE_BINARY";

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut quick = false;
    let mut seconds = None;
    let mut rounds = None;
    let mut only = None;
    let mut counts = None;
    let mut long_prompt = None;
    let mut streams_seconds = None;
    let mut streams_rounds = None;
    let mut coalesce = None;
    let mut ab = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => quick = true,
            "--seconds" => seconds = Some(value()?.parse::<f64>().context("--seconds")?),
            "--rounds" => rounds = Some(value()?.parse::<usize>().context("--rounds")?),
            "--only" => match value()?.as_str() {
                v @ ("short" | "streams") => only = Some(v.to_owned()),
                other => bail!("--only {other}: must be short or streams"),
            },
            "--streams" => {
                counts = Some(
                    value()?
                        .split(',')
                        .map(|n| n.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .context("--streams: a list of stream counts like 1000,5000")?,
                );
            }
            "--streams-long" => {
                let v = value()?;
                long_prompt = Some(if v == "none" {
                    Vec::new()
                } else {
                    v.split(',')
                        .map(|n| n.trim().parse::<usize>())
                        .collect::<Result<Vec<_>, _>>()
                        .context("--streams-long: a list of stream counts like 1000, or none")?
                });
            }
            "--streams-seconds" => {
                streams_seconds = Some(value()?.parse::<f64>().context("--streams-seconds")?);
            }
            "--streams-rounds" => {
                streams_rounds = Some(value()?.parse::<usize>().context("--streams-rounds")?);
            }
            "--streams-coalesce" => {
                coalesce = Some(parse_coalesce(value()?).context("--streams-coalesce")?);
            }
            "--ab" => {
                let v = value()?;
                let (label, path) = v
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--ab {v}: must be LABEL=PATH"))?;
                ab.push((label.to_owned(), PathBuf::from(path)));
            }
            other => bail!("unknown option {other}; {USAGE}"),
        }
    }
    let streams = StreamsOptions {
        counts: counts.unwrap_or_else(|| if quick { vec![200] } else { vec![1000, 5000] }),
        long_prompt: long_prompt.unwrap_or_else(|| if quick { vec![200] } else { vec![1000] }),
        seconds: streams_seconds.unwrap_or(if quick { 3.0 } else { 10.0 }),
        rounds: streams_rounds.unwrap_or(if quick { 1 } else { 2 }),
        coalesce: coalesce.unwrap_or(Some(DEFAULT_STREAM_COALESCE)),
        ab,
    };
    let o = Options {
        seconds: seconds.unwrap_or(if quick { 2.0 } else { 10.0 }),
        rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        warmup: if quick { 0.5 } else { 2.0 },
        quick,
        short: only.as_deref() != Some("streams"),
        streams: (only.as_deref() != Some("short")).then_some(streams.clone()),
        ab: streams.ab.clone(),
    };
    if !(o.seconds >= 0.5 && o.seconds <= 600.0) || o.rounds == 0 || o.rounds > 100 {
        bail!("--seconds must be within 0.5..=600 and --rounds within 1..=100");
    }
    if !(streams.seconds >= 0.5 && streams.seconds <= 600.0)
        || streams.rounds == 0
        || streams.rounds > 100
        || streams.counts.is_empty()
        || streams
            .counts
            .iter()
            .chain(&streams.long_prompt)
            .any(|&n| n == 0 || n > 100_000)
    {
        bail!(
            "--streams-seconds must be within 0.5..=600, --streams-rounds within 1..=100 and \
             every --streams count within 1..=100000"
        );
    }
    Ok(o)
}

/// The `server.stream_coalesce` of the streams scenario's coalescing Hale by default: longer
/// than the kernel's own hold (it sends bytes held with `MSG_MORE` on the client's ACK or after
/// about 200 ms), so Hale holds chunks exactly as plain HAProxy does, and its own push is
/// only the backstop.
const DEFAULT_STREAM_COALESCE: Duration = Duration::from_secs(1);
/// The longest `server.stream_coalesce` Hale accepts (`MAX_STREAM_COALESCE` in
/// crates/api/src/config.rs); a longer one would only make that target fail to start.
const MAX_STREAM_COALESCE: Duration = Duration::from_secs(1);

/// `--streams-coalesce`: `none`, or whole milliseconds or seconds (`200ms`, `1s`) within
/// 1 ms..=1 s.
fn parse_coalesce(v: &str) -> anyhow::Result<Option<Duration>> {
    if v == "none" {
        return Ok(None);
    }
    let bad = || anyhow!("{v:?}: must be a duration like 200ms or 1s, or none");
    let (digits, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map(|at| v.split_at(at))
        .ok_or_else(bad)?;
    let n = digits.parse::<u64>().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        bail!("{v:?}: 0 turns coalescing off; say none");
    }
    if d > MAX_STREAM_COALESCE {
        bail!("{v:?}: Hale accepts at most 1s");
    }
    Ok(Some(d))
}

/// A whole number of milliseconds as Hale's config (humantime) reads it and the report
/// prints it: `200ms`, `1s`.
pub(super) fn spell_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

// === targets ===

/// What a load goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Direct,
    Hale,
    HaProxy,
    Nginx,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Direct, Kind::Hale, Kind::HaProxy, Kind::Nginx];

    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Hale => "Hale",
            Kind::HaProxy => "HAProxy",
            Kind::Nginx => "nginx",
        }
    }
}

/// One target: where it listens, the process that serves it (none for `direct`: the mock is
/// measured by every target alike) and, if it cannot be measured, why.
struct Target {
    kind: Kind,
    /// The `--ab` label of an extra Hale binary.
    label: Option<String>,
    addr: String,
    server: Option<Server>,
    unavailable: Option<String>,
    /// Highest VmRSS seen while it was under load, in MiB.
    sampled_rss_mib: f64,
    /// VmHWM at the end of the run, in MiB (summed over nginx's processes).
    peak_rss_mib: f64,
}

impl Target {
    /// The row's name: the kind's, with the `--ab` label if any.
    fn name(&self) -> String {
        match &self.label {
            Some(label) => format!("{} ({label})", self.kind.name()),
            None => self.kind.name().to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("http://{}{CHAT_PATH}", self.addr)
    }

    /// The processes whose CPU and memory count for this target.
    fn pids(&self) -> Vec<u32> {
        self.server.as_ref().map_or_else(Vec::new, Server::pids)
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.server.as_ref().map_or(Ok(0.0), Server::cpu_seconds)
    }
}

/// Fails unless `addr` answers the chat and the streamed chat as mockllm does.
pub(super) fn verify(addr: &str) -> anyhow::Result<()> {
    let (status, body) = http_post(addr, CHAT_PATH, CHAT)?;
    if status != 200 || !body.contains("\"chat.completion\"") {
        bail!("POST {CHAT_PATH} answered {status}: {}", snippet(&body));
    }
    let (status, body) = http_post(addr, CHAT_PATH, STREAMED_CHAT)?;
    if status != 200 || !body.contains("[DONE]") {
        bail!(
            "streamed POST {CHAT_PATH} answered {status}: {}",
            snippet(&body)
        );
    }
    Ok(())
}

fn snippet(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.chars().take(160).collect()
}

/// The gateway's config: the one endpoint `backend`, and `server.stream_coalesce` if given.
fn hale_config(backend: &str, stream_coalesce: Option<Duration>) -> String {
    let coalesce = stream_coalesce
        .map(|d| format!("  stream_coalesce: {}\n", spell_duration(d)))
        .unwrap_or_default();
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\n{coalesce}endpoints:\n  - name: mock\n    \
         url: \"http://{backend}\"\n    type: openai\n    check_interval: 5s\n"
    )
}

/// Starts the gateway in front of `backend` (with `server.stream_coalesce` if given) and
/// waits (bounded) until it routes a chat. Any failure is returned as the reason the Hale
/// rows stay empty, not as an error: the reference figures are worth having while the
/// gateway's proxy routes are being built.
pub(super) fn start_hale(
    hale: &Path,
    dir: &Path,
    backend: &str,
    stream_coalesce: Option<Duration>,
) -> (Option<Server>, String, Option<String>) {
    let config = dir.join("hale.yaml");
    let yaml = hale_config(backend, stream_coalesce);
    if let Err(err) = std::fs::write(&config, yaml) {
        return (
            None,
            String::new(),
            Some(format!("writing its config: {err}")),
        );
    }
    let mut command = Command::new(hale);
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("HALE_LOG", "warn")
        // Its default, said explicitly so the run is what the report says whatever the
        // caller's environment: one serving thread per core, as the reference proxies get.
        .env("HALE_WORKER_THREADS", refs::workers().to_string());
    let (mut server, addr) = match Server::spawn_announcing(
        "hale",
        command,
        &dir.join("hale.log"),
        "hale listening on ",
    ) {
        Ok(started) => started,
        Err(err) => return (None, String::new(), Some(format!("{err:#}"))),
    };
    let deadline = Instant::now() + HALE_READY;
    let reason = loop {
        if let Err(err) = server.ensure_running() {
            break Some(format!("{err:#}"));
        }
        match verify(&addr) {
            Ok(()) => break None,
            Err(err) if Instant::now() > deadline => {
                break Some(format!(
                    "no chat routed within {} s: {err:#}",
                    HALE_READY.as_secs()
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    (Some(server), addr, reason)
}

// === scenarios and measurement ===

struct Scenario {
    title: &'static str,
    load: Load,
}

fn scenarios(o: &Options) -> [Scenario; 3] {
    [
        Scenario {
            title: "Non-streaming chat, closed loop (32 connections)",
            load: Load {
                connections: CLOSED_CONNECTIONS,
                rate: None,
                seconds: o.seconds,
                body: CHAT.to_owned(),
            },
        },
        Scenario {
            title: "Non-streaming chat at 100 req/s (fixed rate, latency-corrected, up to 8 connections)",
            load: Load {
                connections: RATE_CONNECTIONS,
                rate: Some(RATE),
                seconds: o.seconds,
                body: CHAT.to_owned(),
            },
        },
        Scenario {
            title: "Streamed chat, closed loop (32 connections, 5 chunks per answer)",
            load: Load {
                connections: CLOSED_CONNECTIONS,
                rate: None,
                seconds: o.seconds,
                body: STREAMED_CHAT.to_owned(),
            },
        },
    ]
}

/// One target's runs in one scenario.
#[derive(Clone, Default)]
struct Tally {
    runs: Vec<Outcome>,
    cpu_seconds: f64,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.runs.iter().map(|r| r.ok).sum()
    }

    fn failed(&self) -> u64 {
        self.runs.iter().map(|r| r.failed).sum()
    }

    fn median(&self, field: fn(&Outcome) -> f64) -> f64 {
        median(self.runs.iter().map(field).collect())
    }

    fn rps(&self) -> f64 {
        self.median(|r| r.rps)
    }

    fn p50(&self) -> f64 {
        self.median(|r| r.p50_ms)
    }

    fn p99(&self) -> f64 {
        self.median(|r| r.p99_ms)
    }

    /// CPU µs per answered request over all rounds.
    fn cpu_us_per_request(&self) -> f64 {
        let ok = self.ok();
        if ok == 0 {
            f64::NAN
        } else {
            self.cpu_seconds / ok as f64 * 1e6
        }
    }
}

/// The median of `v` (NaN for none).
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Samples the summed VmRSS of `pids` every 50 ms until told to stop (or, as a bound, until
/// `limit` has passed); returns the highest value in MiB.
pub(super) fn sample_rss(
    pids: Vec<u32>,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> JoinHandle<f64> {
    std::thread::spawn(move || {
        let until = Instant::now() + limit;
        let mut max: f64 = 0.0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            let rss: f64 = pids
                .iter()
                .filter_map(|&p| memory_mib(p).ok())
                .map(|(rss, _)| rss)
                .sum();
            max = max.max(rss);
            std::thread::sleep(Duration::from_millis(50));
        }
        max
    })
}

/// One oha run against one target, with its CPU and memory measured around it.
fn measure(target: &mut Target, load: &Load) -> anyhow::Result<(Outcome, f64)> {
    let pids = target.pids();
    let cpu_before = target.cpu_seconds()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(
        pids,
        Arc::clone(&stop),
        Duration::from_secs_f64(load.seconds + 60.0),
    );
    let outcome = oha::run(&target.url(), load);
    stop.store(true, Ordering::Relaxed);
    let rss = sampler.join().unwrap_or(0.0);
    target.sampled_rss_mib = target.sampled_rss_mib.max(rss);
    if let Some(server) = target.server.as_mut() {
        server
            .ensure_running()
            .with_context(|| format!("{} died under load", target.name()))?;
    }
    let cpu = target.cpu_seconds()? - cpu_before;
    Ok((outcome?, cpu))
}

/// Runs one scenario over every measurable target: a warm-up each, then `rounds` rounds.
fn run_scenario(targets: &mut [Target], scenario: &Scenario, o: &Options) -> Vec<Tally> {
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    println!("--- {}", scenario.title);
    let warmup = Load {
        seconds: o.warmup,
        ..scenario.load.clone()
    };
    for target in targets.iter_mut() {
        if target.unavailable.is_none()
            && let Err(err) = measure(target, &warmup)
        {
            target.unavailable = Some(format!("warm-up failed: {err:#}"));
        }
    }
    for round in 0..o.rounds {
        for i in 0..targets.len() {
            // Rotate the order each round so no target always follows the same one.
            let index = (i + round) % targets.len();
            let target = &mut targets[index];
            if target.unavailable.is_some() {
                continue;
            }
            match measure(target, &scenario.load) {
                Ok((outcome, cpu)) => {
                    println!(
                        "    round {}: {:<8} {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  failed {}",
                        round + 1,
                        target.name(),
                        outcome.rps,
                        outcome.p50_ms,
                        outcome.p99_ms,
                        outcome.failed
                    );
                    tallies[index].runs.push(outcome);
                    tallies[index].cpu_seconds += cpu;
                }
                Err(err) => {
                    println!("    round {}: {} failed: {err:#}", round + 1, target.name());
                    target.unavailable = Some(format!("{err:#}"));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    tallies
}

// === the suite ===

pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    setup::ensure_bench()?;
    let nofile = raise_nofile();
    cargo(&["build", "--release", "-p", "mockllm"])?;
    // A gateway that does not build is one that cannot be measured: the reference figures
    // are still taken, and the run still fails at the end.
    let hale_built = cargo(&["build", "--release", "-p", "hale"]).map_err(|e| format!("{e:#}"));
    let bin = root.join("target/release");
    let dir = TempDir::new("hale-bench-proxy")?;
    let versions = Versions::read()?;
    let command = std::iter::once("cargo xtask bench proxy".to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut hale_unmeasured = None;
    if o.short {
        hale_unmeasured = run_short(root, &o, &bin, dir.path(), &versions, &command, &hale_built)?;
    }
    if let Some(so) = &o.streams {
        let hale = hale_built.as_ref().ok().map(|()| bin.join("hale"));
        let why = run_streams(
            root,
            &o,
            so,
            &bin,
            hale.as_deref(),
            dir.path(),
            &versions,
            &command,
            nofile,
        )?;
        hale_unmeasured = hale_unmeasured.or(why).or(hale_built.err());
    }
    // The figures of the other targets are out; a gateway that could not be measured still
    // makes the run fail, so nobody mistakes it for a complete one.
    if let Some(reason) = hale_unmeasured {
        bail!("Hale could not be measured (fully): {reason}");
    }
    Ok(())
}

/// Starts the backend: mockllm streaming `chunks` chunks `delay_ms` apart; fails unless it
/// answers the chat.
fn start_mock(
    bin: &Path,
    log: &Path,
    chunks: u32,
    delay_ms: u64,
) -> anyhow::Result<(Server, String)> {
    let mut command = Command::new(bin.join("mockllm"));
    command.args([
        "--port",
        "0",
        "--flavor",
        "openai",
        "--models",
        "bench-model",
    ]);
    command.args(["--chunks", &chunks.to_string()]);
    command.args(["--chunk-delay-ms", &delay_ms.to_string()]);
    let (mock, backend) =
        Server::spawn_announcing("mockllm", command, log, "mockllm listening on ")?;
    verify(&backend).context("mockllm does not answer the chat")?;
    Ok((mock, backend))
}

/// Raises this process's open-file soft limit to its hard limit (every target inherits
/// it); returns the limit now in force.
fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            println!("note: cannot raise the open-file limit: {err}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// The streams scenario with its own mock; writes the `proxy-streams` section. Returns why
/// Hale could not be measured, if it could not.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site, each argument named there"
)]
fn run_streams(
    root: &Path,
    o: &Options,
    so: &StreamsOptions,
    bin: &Path,
    hale: Option<&Path>,
    dir: &Path,
    versions: &Versions,
    command: &str,
    nofile: u64,
) -> anyhow::Result<Option<String>> {
    let (mut mock, backend) = start_mock(
        bin,
        &dir.join("mockllm-streams.log"),
        streams::CHUNKS,
        streams::CHUNK_DELAY_MS,
    )?;
    let load_before = load_average();
    let results = streams::run(hale, dir, &backend, so);
    mock.ensure_running()
        .context("the backend died under load")?;
    let load_after = load_average();
    drop(mock);
    if let Some(err) = results.references_error() {
        bail!("a reference could not be measured: {err}");
    }
    let workers = refs::workers();
    let mut body = format!(
        "## Proxy overhead: concurrent long streams\n\n\
         `{command}` — the `streams` scenario. One mockllm (OpenAI flavour, release build, \
         `--chunks {chunks} --chunk-delay-ms {delay}`) behind every target; Hale, HAProxy and \
         nginx configured as in the short-answer section ({workers} serving threads or workers \
         each); load client, mock and proxy share the machine's {workers} cores, so only ratios \
         within this run mean anything. Open-file limit of the bench and its targets: {nofile}. \
         Versions: {haproxy}, {nginx}, {hale}. Load average (1 min) before: {load_before}, \
         after: {load_after} — other work on the machine shows here.\n",
        chunks = streams::CHUNKS,
        delay = streams::CHUNK_DELAY_MS,
        haproxy = versions.haproxy,
        nginx = versions.nginx,
        hale = versions.hale,
    );
    body.push_str(&streams::render(so, &results));
    println!("{body}");
    if o.quick {
        println!("--quick: docs/BENCHMARKS.md left unchanged");
    } else {
        write_section(root, "proxy-streams", &body)?;
    }
    Ok(results.hale_error())
}

/// The short-answer scenarios (oha); writes the `proxy` section. Returns why Hale could not
/// be measured, if it could not.
fn run_short(
    root: &Path,
    o: &Options,
    bin: &Path,
    dir: &Path,
    versions: &Versions,
    command: &str,
    hale_built: &Result<(), String>,
) -> anyhow::Result<Option<String>> {
    let (mut mock, backend) = start_mock(bin, &dir.join("mockllm.log"), CHUNKS, 0)?;

    let (hale, hale_addr, hale_unavailable) = match hale_built {
        Ok(()) => start_hale(&bin.join("hale"), dir, &backend, None),
        Err(err) => (None, String::new(), Some(err.clone())),
    };
    if let Some(reason) = &hale_unavailable {
        println!("note: Hale cannot be measured: {reason}");
    }
    let (haproxy, haproxy_addr) = refs::start_haproxy(dir, &backend, 0, refs::Haproxy::Plain)?;
    let (nginx, nginx_addr) = refs::start_nginx(dir, &backend, 0)?;
    for (name, addr) in [("HAProxy", &haproxy_addr), ("nginx", &nginx_addr)] {
        verify(&addr.to_string())
            .with_context(|| format!("{name} does not pass the chat through"))?;
    }

    let mut targets: Vec<Target> = Kind::ALL
        .into_iter()
        .map(|kind| Target {
            kind,
            label: None,
            addr: String::new(),
            server: None,
            unavailable: None,
            sampled_rss_mib: 0.0,
            peak_rss_mib: 0.0,
        })
        .collect();
    targets[0].addr = backend.clone();
    targets[1].addr = hale_addr;
    targets[1].server = hale;
    targets[1].unavailable = hale_unavailable;
    targets[2].addr = haproxy_addr.to_string();
    targets[2].server = Some(haproxy);
    targets[3].addr = nginx_addr.to_string();
    targets[3].server = Some(nginx);
    // The `--ab` binaries after the four (whose places the report relies on), each in a
    // directory of its own for its config and log.
    for (label, path) in &o.ab {
        let own = dir.join(format!("ab-{}", targets.len()));
        let (server, addr, unavailable) = match std::fs::create_dir_all(&own) {
            Ok(()) => start_hale(path, &own, &backend, None),
            Err(err) => (None, String::new(), Some(format!("{err}"))),
        };
        if let Some(reason) = &unavailable {
            println!("note: Hale ({label}) cannot be measured: {reason}");
        }
        targets.push(Target {
            kind: Kind::Hale,
            label: Some(label.clone()),
            addr,
            server,
            unavailable,
            sampled_rss_mib: 0.0,
            peak_rss_mib: 0.0,
        });
    }

    let scenarios = scenarios(o);
    let load_before = load_average();
    let mut results = Vec::new();
    for scenario in &scenarios {
        results.push(run_scenario(&mut targets, scenario, o));
        mock.ensure_running()
            .context("the backend died under load")?;
    }
    let machine = Machine {
        load_before,
        load_after: load_average(),
    };
    for target in &mut targets {
        target.peak_rss_mib = target
            .pids()
            .into_iter()
            .filter_map(|p| memory_mib(p).ok())
            .map(|(_, hwm)| hwm)
            .sum();
    }
    for target in &targets {
        if target.kind != Kind::Hale && target.unavailable.is_some() {
            bail!(
                "{} could not be measured: {}",
                target.kind.name(),
                target.unavailable.as_deref().unwrap_or_default()
            );
        }
    }

    let body = render(
        command, o, versions, &machine, &targets, &scenarios, &results,
    );
    let hale_unmeasured = targets[1].unavailable.clone();
    drop(targets);
    drop(mock);
    println!("{body}");
    if o.quick {
        println!("--quick: docs/BENCHMARKS.md left unchanged");
    } else {
        write_section(root, "proxy", &body)?;
    }
    Ok(hale_unmeasured)
}

// === the report ===

/// The tools' versions, for the report.
struct Versions {
    oha: String,
    haproxy: String,
    nginx: String,
    hale: String,
}

impl Versions {
    fn read() -> anyhow::Result<Self> {
        let haproxy = first_line_of(Command::new("haproxy").arg("-v"))
            .ok_or_else(|| anyhow!("haproxy -v failed"))?;
        let nginx = first_line_of(Command::new("sh").args(["-c", "nginx -v 2>&1"]))
            .ok_or_else(|| anyhow!("nginx -v failed"))?;
        let commit = first_line_of(Command::new("git").args(["rev-parse", "--short", "HEAD"]))
            .unwrap_or_else(|| "unknown commit".to_owned());
        let dirty = first_line_of(Command::new("git").args(["status", "--porcelain"]))
            .is_some_and(|l| !l.is_empty());
        Ok(Self {
            oha: oha::version()?,
            haproxy: haproxy
                .split(" - ")
                .next()
                .unwrap_or(&haproxy)
                .trim()
                .to_owned(),
            nginx: nginx
                .trim_start_matches("nginx version: ")
                .trim()
                .to_owned(),
            hale: format!(
                "hale at {commit}{}",
                if dirty { " with local changes" } else { "" }
            ),
        })
    }
}

/// How busy the machine was around the measured runs.
struct Machine {
    load_before: String,
    load_after: String,
}

/// The 1-minute load average from /proc/loadavg, as printed there.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "—".to_owned()
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".to_owned()
    }
}

fn render(
    command: &str,
    o: &Options,
    versions: &Versions,
    machine: &Machine,
    targets: &[Target],
    scenarios: &[Scenario],
    results: &[Vec<Tally>],
) -> String {
    let workers = refs::workers();
    let mut out = String::new();
    let _ = write!(
        out,
        "## Proxy overhead\n\n\
         `{command}` — oha against mockllm directly, through Hale, and through HAProxy and nginx \
         as reference proxies; {rounds} interleaved round(s) of {secs} s per target and scenario \
         (order rotated each round, after a {warm} s warm-up), medians reported. One mockllm \
         (OpenAI flavour, release build, `--chunks {CHUNKS} --chunk-delay-ms 0`) is the backend \
         of every target. Hale: `hale serve` with that one endpoint (`type: openai`, \
         `check_interval: 5s`, log level warn), which serves on one thread per core ({workers}), \
         each with a tokio current-thread runtime. HAProxy: `mode http`, `option http-keep-alive`, \
         `http-reuse always`, \
         `nbthread {workers}`, `pool-max-conn {UPSTREAM_IDLE}`, `tune.idle-pool.shared off` \
         (with shared pools 2.6 burns CPU at low load; see xtask/src/bench/refs.rs). nginx: `worker_processes {workers}`, upstream \
         `keepalive {UPSTREAM_IDLE}`, `proxy_http_version 1.1`, `Connection \"\"`, \
         `proxy_buffering off`, `keepalive_requests` lifted on both sides. Each reference proxy \
         gets one thread or worker per core ({workers}), its own default. oha, the mock and the \
         proxy share the machine's {workers} cores, so only ratios within this run mean anything. \
         CPU µs/req: the proxy's CPU time (user + system, summed over its threads' \
         schedstat, nanosecond resolution; nginx: master and workers) during its measured \
         runs over the requests answered. Peak RSS: VmHWM at the end of the run \
         (nginx: summed over its processes); for Hale also the highest VmRSS sampled under \
         load. Latencies are of whole answers (a stream's last chunk); the 100 req/s scenario \
         corrects for coordinated omission.\n\n\
         Versions: {oha}, {haproxy}, {nginx}, {hale}. Load average (1 min) before the \
         measured runs: {before}, after: {after} — other work on the machine shows here.\n",
        rounds = o.rounds,
        secs = o.seconds,
        warm = o.warmup,
        oha = versions.oha,
        haproxy = versions.haproxy,
        nginx = versions.nginx,
        hale = versions.hale,
        before = machine.load_before,
        after = machine.load_after,
    );

    for (scenario, tallies) in scenarios.iter().zip(results) {
        let direct = &tallies[0];
        let haproxy = &tallies[2];
        let _ = write!(
            out,
            "\n### {}\n\n\
             | target | req/s | p50 ms | p99 ms | added p50 vs direct | ×direct | ×HAProxy | CPU µs/req | peak RSS | failed |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            scenario.title
        );
        for (target, tally) in targets.iter().zip(tallies) {
            let name = target.name();
            if tally.runs.is_empty() {
                let why = target.unavailable.as_deref().unwrap_or("no runs");
                let _ = writeln!(
                    out,
                    "| {name} | not measured: {} | | | | | | | | |",
                    snippet(&why.replace('|', "/"))
                );
                continue;
            }
            let added = if target.kind == Kind::Direct {
                "—".to_owned()
            } else {
                format!("{:+.3} ms", tally.p50() - direct.p50())
            };
            let cpu = if target.kind == Kind::Direct {
                "—".to_owned()
            } else {
                format!("{:.1}", tally.cpu_us_per_request())
            };
            let rss = match target.kind {
                Kind::Direct => "—".to_owned(),
                Kind::Hale => format!(
                    "{:.1} MiB (sampled {:.1})",
                    target.peak_rss_mib, target.sampled_rss_mib
                ),
                _ => format!("{:.1} MiB", target.peak_rss_mib),
            };
            let _ = writeln!(
                out,
                "| {name} | {:.0} | {} | {} | {added} | {} | {} | {cpu} | {rss} | {} |",
                tally.rps(),
                ms(tally.p50()),
                ms(tally.p99()),
                ratio(tally.rps(), direct.rps()),
                ratio(tally.rps(), haproxy.rps()),
                tally.failed(),
            );
        }
    }

    out.push_str("\n### Targets (issue #4)\n\n");
    for check in checks(targets, results) {
        let _ = writeln!(out, "- {check}");
    }
    out
}

/// The issue's targets for the gateway, each as one `PASS`/`FAIL` line with the figure.
fn checks(targets: &[Target], results: &[Vec<Tally>]) -> Vec<String> {
    let line = |pass: bool, text: String| format!("{} {text}", if pass { "PASS" } else { "FAIL" });
    let hale = &targets[1];
    let unmeasured = |tally: &Tally| -> Option<String> {
        if tally.runs.is_empty() {
            Some(format!(
                "not measured ({})",
                snippet(hale.unavailable.as_deref().unwrap_or("no runs"))
            ))
        } else if tally.failed() > 0 {
            Some(format!("{} failed requests", tally.failed()))
        } else {
            None
        }
    };
    let mut lines = Vec::new();
    for (index, label) in [(0, "non-streaming chat"), (2, "streamed chat")] {
        let tallies = &results[index];
        let (hale_t, haproxy_t) = (&tallies[1], &tallies[2]);
        let text = format!(
            "Hale closed-loop throughput, {label}: ≥ {MIN_THROUGHPUT_VS_HAPROXY}× HAProxy's"
        );
        lines.push(match unmeasured(hale_t) {
            Some(why) => line(false, format!("{text} — {why}")),
            None => {
                let r = hale_t.rps() / haproxy_t.rps();
                line(
                    r >= MIN_THROUGHPUT_VS_HAPROXY,
                    format!(
                        "{text} — {r:.2}× ({:.0} vs {:.0} req/s)",
                        hale_t.rps(),
                        haproxy_t.rps()
                    ),
                )
            }
        });
    }
    {
        let tallies = &results[1];
        let text = format!("Hale added p50 at {RATE} req/s: ≤ {MAX_ADDED_P50_MS} ms over direct");
        lines.push(match unmeasured(&tallies[1]) {
            Some(why) => line(false, format!("{text} — {why}")),
            None => {
                let added = |t: &Tally| t.p50() - tallies[0].p50();
                // The references' figures say how much of it the machine's own floor is.
                line(
                    added(&tallies[1]) <= MAX_ADDED_P50_MS,
                    format!(
                        "{text} — {:+.3} ms ({} vs {} ms; HAProxy {:+.3} ms, nginx {:+.3} ms)",
                        added(&tallies[1]),
                        ms(tallies[1].p50()),
                        ms(tallies[0].p50()),
                        added(&tallies[2]),
                        added(&tallies[3]),
                    ),
                )
            }
        });
    }
    for (index, label) in [(0, "non-streaming chat"), (2, "streamed chat")] {
        let tallies = &results[index];
        let (hale_t, haproxy_t) = (&tallies[1], &tallies[2]);
        let text = format!("Hale CPU per request, {label}: ≤ {MAX_CPU_VS_HAPROXY}× HAProxy's");
        lines.push(match unmeasured(hale_t) {
            Some(why) => line(false, format!("{text} — {why}")),
            None => {
                let (h, p) = (hale_t.cpu_us_per_request(), haproxy_t.cpu_us_per_request());
                let r = h / p;
                line(
                    r <= MAX_CPU_VS_HAPROXY,
                    format!("{text} — {r:.2}× ({h:.1} vs {p:.1} µs)"),
                )
            }
        });
    }
    {
        let text = format!("Hale RSS during load: < {MAX_RSS_MIB} MiB");
        let measured = results.iter().any(|t| !t[1].runs.is_empty());
        lines.push(if measured {
            let peak = hale.peak_rss_mib.max(hale.sampled_rss_mib);
            line(
                peak < MAX_RSS_MIB,
                format!(
                    "{text} — peak {:.1} MiB (VmHWM; highest sampled VmRSS {:.1} MiB)",
                    hale.peak_rss_mib, hale.sampled_rss_mib
                ),
            )
        } else {
            line(
                false,
                format!(
                    "{text} — not measured ({})",
                    snippet(hale.unavailable.as_deref().unwrap_or("no runs"))
                ),
            )
        });
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: Kind, unavailable: Option<&str>) -> Target {
        Target {
            kind,
            label: None,
            addr: String::new(),
            server: None,
            unavailable: unavailable.map(str::to_owned),
            sampled_rss_mib: 10.0,
            peak_rss_mib: 12.0,
        }
    }

    fn tally(rps: f64, p50_ms: f64, cpu_seconds: f64) -> Tally {
        let run = Outcome {
            ok: 1000,
            failed: 0,
            rps,
            p50_ms,
            p99_ms: p50_ms * 3.0,
        };
        Tally {
            runs: vec![run, run, run],
            cpu_seconds,
        }
    }

    fn options() -> Options {
        Options {
            seconds: 1.0,
            rounds: 3,
            warmup: 0.5,
            quick: false,
            short: true,
            streams: None,
            ab: Vec::new(),
        }
    }

    fn machine() -> Machine {
        Machine {
            load_before: "1.0".to_owned(),
            load_after: "1.0".to_owned(),
        }
    }

    fn versions() -> Versions {
        Versions {
            oha: "oha 1".to_owned(),
            haproxy: "HAProxy 2".to_owned(),
            nginx: "nginx/1".to_owned(),
            hale: "hale".to_owned(),
        }
    }

    #[test]
    fn a_gateway_that_cannot_be_measured_fails_every_check_and_says_why() {
        let targets = [
            target(Kind::Direct, None),
            target(Kind::Hale, Some("POST /v1/chat/completions answered 404")),
            target(Kind::HaProxy, None),
            target(Kind::Nginx, None),
        ];
        let scenario = || {
            vec![
                tally(1000.0, 0.1, 0.0),
                Tally::default(),
                tally(500.0, 0.2, 0.03),
                tally(450.0, 0.2, 0.03),
            ]
        };
        let results = vec![scenario(), scenario(), scenario()];
        let lines = checks(&targets, &results);
        assert_eq!(lines.len(), 6);
        assert!(lines.iter().all(|l| l.starts_with("FAIL ")), "{lines:#?}");
        assert!(
            lines.iter().all(|l| l.contains("answered 404")),
            "{lines:#?}"
        );
        let machine = machine();
        let scenarios = scenarios(&options());
        let body = render(
            "cargo xtask bench proxy",
            &options(),
            &versions(),
            &machine,
            &targets,
            &scenarios,
            &results,
        );
        assert_eq!(body.matches("| Hale | not measured: ").count(), 3, "{body}");
    }

    /// The four targets with figures that pass every check: throughput 0.9× HAProxy's, CPU
    /// 1.5× (0.015 s vs 0.01 s over 3000 requests), added p50 0.05 ms; RSS 12 MiB.
    fn passing() -> (Vec<Target>, Vec<Vec<Tally>>) {
        let targets = vec![
            target(Kind::Direct, None),
            target(Kind::Hale, None),
            target(Kind::HaProxy, None),
            target(Kind::Nginx, None),
        ];
        let scenario = || {
            vec![
                tally(1000.0, 0.10, 0.0),
                tally(450.0, 0.15, 0.015),
                tally(500.0, 0.14, 0.01),
                tally(480.0, 0.14, 0.01),
            ]
        };
        (targets, vec![scenario(), scenario(), scenario()])
    }

    #[test]
    fn checks_compare_the_gateway_with_haproxy_and_direct() {
        let (targets, results) = passing();
        let lines = checks(&targets, &results);
        assert!(lines.iter().all(|l| l.starts_with("PASS ")), "{lines:#?}");
        assert!(lines[0].contains("0.90×"), "{}", lines[0]);
        assert!(lines[3].contains("1.50×"), "{}", lines[3]);

        let mut slow = results.clone();
        slow[0][1] = tally(350.0, 0.15, 0.05);
        let lines = checks(&targets, &slow);
        assert!(lines[0].starts_with("FAIL ") && lines[3].starts_with("FAIL "));
    }

    #[test]
    fn an_ab_binary_gets_a_row_of_its_own_in_every_scenario() {
        let (mut targets, mut results) = passing();
        let mut ab = target(Kind::Hale, None);
        ab.label = Some("hyper".to_owned());
        targets.push(ab);
        // The A/B binary is far slower: the checks are of the default Hale only.
        for scenario in &mut results {
            scenario.push(tally(100.0, 0.90, 0.3));
        }
        assert!(
            checks(&targets, &results)
                .iter()
                .all(|l| l.starts_with("PASS "))
        );
        let machine = machine();
        let body = render(
            "cargo xtask bench proxy --ab hyper=/tmp/hale",
            &options(),
            &versions(),
            &machine,
            &targets,
            &scenarios(&options()),
            &results,
        );
        assert_eq!(
            body.matches("| Hale (hyper) | 100 | 0.900 |").count(),
            3,
            "{body}"
        );
        assert_eq!(body.matches("| Hale | 450 | 0.150 |").count(), 3, "{body}");
    }

    #[test]
    fn options_default_quick_and_explicit() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.seconds, o.rounds, o.quick, o.short),
            (10.0, 3, false, true)
        );
        let streams = o.streams.unwrap();
        assert_eq!((streams.counts, streams.rounds), (vec![1000, 5000], 2));
        let args: Vec<String> = [
            "--only",
            "streams",
            "--streams",
            "1000,5000,200",
            "--ab",
            "old=/tmp/hale",
        ]
        .map(str::to_owned)
        .into();
        let o = parse(&args).unwrap();
        assert!(!o.short);
        assert_eq!(o.ab, vec![("old".to_owned(), PathBuf::from("/tmp/hale"))]);
        let streams = o.streams.unwrap();
        assert_eq!(streams.counts, vec![1000, 5000, 200]);
        assert_eq!(
            streams.ab,
            vec![("old".to_owned(), PathBuf::from("/tmp/hale"))]
        );
        assert!(parse(&["--streams".to_owned(), "0".to_owned()]).is_err());
        assert!(parse(&["--only".to_owned(), "long".to_owned()]).is_err());
        let o = parse(&["--quick".to_owned()]).unwrap();
        assert_eq!((o.seconds, o.rounds, o.quick), (2.0, 1, true));
        let args: Vec<String> = ["--seconds", "5", "--quick", "--rounds", "2"]
            .map(str::to_owned)
            .into();
        let o = parse(&args).unwrap();
        assert_eq!((o.seconds, o.rounds, o.quick), (5.0, 2, true));
        assert!(parse(&["--rounds".to_owned(), "0".to_owned()]).is_err());
        assert!(parse(&["--fast".to_owned()]).is_err());
    }

    #[test]
    fn streams_coalesce_is_a_duration_or_none() {
        let coalesce = |args: &[&str]| -> anyhow::Result<Option<Duration>> {
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            Ok(parse(&args)?.streams.unwrap().coalesce)
        };
        // On by default, at 1 s; in --quick runs too.
        assert_eq!(coalesce(&[]).unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(
            coalesce(&["--quick"]).unwrap(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            coalesce(&["--streams-coalesce", "200ms"]).unwrap(),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            coalesce(&["--streams-coalesce", "1s"]).unwrap(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(coalesce(&["--streams-coalesce", "none"]).unwrap(), None);
        let error = |args: &[&str]| format!("{:#}", coalesce(args).unwrap_err());
        assert_eq!(
            error(&["--streams-coalesce", "200"]),
            "--streams-coalesce: \"200\": must be a duration like 200ms or 1s, or none"
        );
        assert_eq!(
            error(&["--streams-coalesce", "fast"]),
            "--streams-coalesce: \"fast\": must be a duration like 200ms or 1s, or none"
        );
        assert_eq!(
            error(&["--streams-coalesce", "0ms"]),
            "--streams-coalesce: \"0ms\": 0 turns coalescing off; say none"
        );
        assert_eq!(
            error(&["--streams-coalesce", "2s"]),
            "--streams-coalesce: \"2s\": Hale accepts at most 1s"
        );
        assert_eq!(
            error(&["--streams-coalesce"]),
            "--streams-coalesce needs a value"
        );
        // And the name and config spell it as given.
        assert_eq!(spell_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(spell_duration(Duration::from_millis(1000)), "1s");
    }

    #[test]
    fn the_hale_config_sets_stream_coalesce_in_its_server_section_if_asked() {
        let config = |coalesce| -> serde_yaml::Value {
            serde_yaml::from_str(&hale_config("127.0.0.1:9", coalesce)).unwrap()
        };
        let plain = config(None);
        assert_eq!(plain["server"]["listen"].as_str(), Some("127.0.0.1:0"));
        assert!(
            plain["server"].get("stream_coalesce").is_none(),
            "{plain:?}"
        );
        let coalescing = config(Some(Duration::from_millis(200)));
        assert_eq!(
            coalescing["server"]["stream_coalesce"].as_str(),
            Some("200ms")
        );
        assert_eq!(coalescing["server"]["listen"], plain["server"]["listen"]);
        assert_eq!(coalescing["endpoints"], plain["endpoints"]);
    }
}
