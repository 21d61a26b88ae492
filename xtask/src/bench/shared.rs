//! `cargo xtask bench shared`: what shared health state saves and what it costs Redis, at
//! fleet scale on one machine.
//!
//! Options: `--endpoints N` (default 1000), `--replicas 3,10,20` (the fleet sizes, run one
//! after the other), `--seconds S` (measured window, default 20), `--interval-ms MS` (check
//! interval, default 1000), `--mocks M` (mockllm servers the endpoints share: names differ,
//! URLs repeat; default N/100 within 5..=10), `--unshared-max C` (run the baseline without
//! shared state only for fleets with replicas × endpoints ≤ C, default 5000: above that the
//! unshared fleet alone saturates a 2-core machine and says nothing new) and `--note TEXT` (a
//! paragraph put under the section heading, e.g. which code was measured). `--keep-logs`
//! leaves the replicas' configs and logs in the temporary directory (its path is printed)
//! instead of removing them. The old small run is `--endpoints 10 --replicas 1,3,5`.
//!
//! For each fleet size it starts the replicas (release build, `HALE_WORKER_THREADS=1`, log
//! filter `warn,hale_coord=info`, each one's stderr in a log file), in sharded mode against a
//! fresh `redis-server`, every endpoint checked each interval. Once every replica shows every
//! endpoint healthy — or after 60 s: an overloaded fleet whose checks time out never gets
//! there, and is measured anyway with the fewest endpoints a replica shows healthy at the
//! start and end of the window — and after a 3 s warm-up, it measures over S seconds:
//! - fleet-wide checks per endpoint per interval: the `/health` hits the mocks received
//!   (`/__stats`), the ideal being 1.00; per replica the checks it ran
//!   (`hale_health_checks_total` from its `/metrics`);
//! - Redis commands per endpoint-round: deltas of `INFO commandstats` (every command Redis
//!   executed, including those inside scripts, without the measuring `INFO`) / endpoints /
//!   intervals, by command, and the script outcomes they imply (acquire granted, busy or not
//!   due; write stored or refused; result re-reads on re-subscribe) — inferred from the
//!   commands each script of crates/coord/src/scripts.rs runs, so only as true as that match;
//! - per replica, the "Redis unreachable" and "Redis reachable again" lines it logged during
//!   the window (and since it started), the share of the window between the first and the
//!   next of the second (local fallback, by the log's timestamps), its "health check failed"
//!   lines, and its CPU time (/proc); the fleet's reasons for going unreachable; Redis's CPU
//!   and how busy the whole machine was (/proc/stat).
//!
//! It then checks issue #11's targets (checks within ±10 % of ideal, no replica logging more
//! than one unreachable/rejoin pair, Redis commands per endpoint-round flat in the number of
//! replicas) and rewrites its section of docs/BENCHMARKS.md. Everything runs on loopback,
//! every wait has a deadline, and every process it starts is stopped on every path (servers
//! are dropped, which kills them).
#![expect(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "xtask has no tokio runtime: std Instant and thread::sleep pace the measurement"
)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};

use super::child::{Proc, http_get, spawn_announcing};
use super::process::{Server, TempDir};
use super::procfs::cpu_seconds;
use super::report::write_section;
use crate::steps::cargo;

const WARMUP: Duration = Duration::from_secs(3);
/// How long a whole fleet may take to show every endpoint healthy on every replica. A fleet
/// that does not get there (an overloaded one whose checks time out) is measured anyway, and
/// the report says so: that state is what the suite is there to show.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The replicas' log filter: coord's INFO lines (rejoin) and everyone's warnings.
const LOG_FILTER: &str = "warn,hale_coord=info";
/// The log lines counted (crates/coord/src/coordinator.rs).
const UNREACHABLE: &str = "Redis unreachable: checking every endpoint locally";
const REJOINED: &str = "Redis reachable again";
/// A failed health check (crates/probe/src/scheduler.rs, WARN): on an overloaded machine, a
/// check that timed out.
const CHECK_FAILED: &str = "health check failed";
/// Bounds on the options, so a typo cannot start a thousand processes.
const MAX_REPLICAS: usize = 64;
const MAX_ENDPOINTS: usize = 10_000;
const MAX_MOCKS: usize = 50;
const MAX_SECONDS: u64 = 600;
/// Issue #11's targets.
const CHECKS_TOLERANCE: f64 = 0.10;
const FLAT_TOLERANCE: f64 = 0.10;

struct Options {
    endpoints: usize,
    replicas: Vec<usize>,
    seconds: u64,
    interval_ms: u64,
    mocks: usize,
    unshared_max: usize,
    note: Option<String>,
    keep_logs: bool,
}

impl Options {
    /// The command line that reproduces this run, every option spelled out.
    fn command(&self) -> String {
        let replicas: Vec<String> = self.replicas.iter().map(usize::to_string).collect();
        let mut c = format!(
            "cargo xtask bench shared --endpoints {} --replicas {} --seconds {} --interval-ms {} \
             --mocks {} --unshared-max {}",
            self.endpoints,
            replicas.join(","),
            self.seconds,
            self.interval_ms,
            self.mocks,
            self.unshared_max
        );
        if let Some(note) = &self.note {
            c.push_str(&format!(" --note '{}'", note.replace('\'', "'\\''")));
        }
        c
    }

    fn unshared(&self, replicas: usize) -> bool {
        replicas.saturating_mul(self.endpoints) <= self.unshared_max
    }
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut endpoints = 1000;
    let mut replicas = vec![3, 10, 20];
    let mut seconds = 20;
    let mut interval_ms = 1000;
    let mut mocks = None;
    let mut unshared_max = 5000;
    let mut note = None;
    let mut keep_logs = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--keep-logs" {
            keep_logs = true;
            continue;
        }
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value:?}: {what}");
        match flag.as_str() {
            "--endpoints" => endpoints = value.parse().with_context(|| bad("not a number"))?,
            "--replicas" => {
                replicas = value
                    .split(',')
                    .map(|r| r.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| bad("not a comma-separated list of numbers"))?;
            }
            "--seconds" => seconds = value.parse().with_context(|| bad("not a number"))?,
            "--interval-ms" => interval_ms = value.parse().with_context(|| bad("not a number"))?,
            "--mocks" => mocks = Some(value.parse().with_context(|| bad("not a number"))?),
            "--unshared-max" => {
                unshared_max = value.parse().with_context(|| bad("not a number"))?;
            }
            "--note" => note = Some(value.clone()),
            other => bail!(
                "unknown option {other}; options: --endpoints N --replicas A,B,C --seconds S \
                 --interval-ms MS --mocks M --unshared-max C --note TEXT --keep-logs"
            ),
        }
    }
    if !(1..=MAX_ENDPOINTS).contains(&endpoints) {
        bail!("--endpoints must be within 1..={MAX_ENDPOINTS}");
    }
    if replicas.is_empty() || replicas.iter().any(|r| !(1..=MAX_REPLICAS).contains(r)) {
        bail!("--replicas: each fleet size must be within 1..={MAX_REPLICAS}");
    }
    if !(1..=MAX_SECONDS).contains(&seconds) {
        bail!("--seconds must be within 1..={MAX_SECONDS}");
    }
    if !(100..=60_000).contains(&interval_ms) {
        bail!("--interval-ms must be within 100..=60000");
    }
    let mocks = mocks.unwrap_or_else(|| endpoints.div_ceil(100).clamp(5, 10).min(endpoints));
    if !(1..=MAX_MOCKS).contains(&mocks) {
        bail!("--mocks must be within 1..={MAX_MOCKS}");
    }
    Ok(Options {
        endpoints,
        replicas,
        seconds,
        interval_ms,
        mocks,
        unshared_max,
        note,
        keep_logs,
    })
}

/// The number after `"key":` in a JSON text (first occurrence).
fn number_after(text: &str, key: &str) -> Option<u64> {
    text.split(&format!("\"{key}\":"))
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// `/health` requests the mocks received so far.
fn health_hits(mocks: &[String]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for m in mocks {
        let body = http_get(m, "/__stats")?;
        sum += number_after(&body, "/health").unwrap_or(0);
    }
    Ok(sum)
}

/// Checks a replica has run so far: the sum of its `hale_health_checks_total` series.
fn checks_run(addr: &str) -> anyhow::Result<f64> {
    let body = http_get(addr, "/metrics")?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("hale_health_checks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Busy and total CPU ticks of the whole machine, from /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The 1-minute load average from /proc/loadavg, as printed there.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn git_revision() -> String {
    let out = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = out(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty = out(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    format!(
        "hale at {commit}{}",
        if dirty { " with local changes" } else { "" }
    )
}

// === redis ===

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One RESP command over a fresh connection; returns the raw reply.
fn redis_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut reader = BufReader::new(s);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    match first.as_bytes().first() {
        Some(b'$') => {
            let len: usize = first[1..].trim().parse()?;
            let mut body = vec![0u8; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Some(b'+') => Ok(first[1..].trim().to_owned()),
        _ => bail!("unexpected Redis reply {first:?}"),
    }
}

fn start_redis() -> anyhow::Result<(Proc, u16)> {
    let program = find_on_path("redis-server")
        .ok_or_else(|| anyhow!("redis-server not found on PATH (cargo xtask setup installs it)"))?;
    let port = free_port()?;
    let dir = std::env::temp_dir();
    let child = Command::new(program)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning redis-server")?;
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_command(port, &["PING"]).ok().as_deref() != Some("PONG") {
        if Instant::now() > deadline {
            bail!("redis-server on port {port} did not answer PING within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((proc, port))
}

/// `INFO commandstats` as calls per command, without `info` itself.
fn command_calls(port: u16) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = redis_command(port, &["INFO", "commandstats"])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (name != "info").then(|| (name.to_owned(), calls))
        })
        .collect())
}

// === replicas' logs ===

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The unreachable and rejoin lines in bytes `from..to` of a log (to the end for `None`),
/// and the reasons given for the first.
#[derive(Default)]
struct LogLines {
    unreachable: usize,
    rejoined: usize,
    failed_checks: usize,
    reasons: BTreeMap<String, usize>,
}

fn log_lines(path: &Path, from: u64, to: Option<u64>) -> LogLines {
    let bytes = std::fs::read(path).unwrap_or_default();
    let end = to.map_or(bytes.len(), |t| usize::try_from(t).unwrap_or(usize::MAX));
    let start = usize::try_from(from).unwrap_or(usize::MAX);
    let text = String::from_utf8_lossy(bytes.get(start..end.min(bytes.len())).unwrap_or(&[]));
    let mut out = LogLines::default();
    for line in text.lines() {
        if line.contains(UNREACHABLE) {
            out.unreachable += 1;
            let reason = line
                .split_once("error=")
                .map(|(_, r)| r.trim().trim_matches('"'))
                .unwrap_or("(no error field)");
            let reason: String = reason.chars().take(120).collect();
            *out.reasons.entry(reason).or_default() += 1;
        } else if line.contains(REJOINED) {
            out.rejoined += 1;
        } else if line.contains(CHECK_FAILED) {
            out.failed_checks += 1;
        }
    }
    out
}

/// Seconds since midnight UTC of a log line's timestamp (`2026-12-05T16:21:21.236225Z …`).
fn line_time(line: &str) -> Option<f64> {
    let clock = line.get(11..)?.split(['Z', ' ']).next()?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Now, in seconds since midnight UTC (the clock of the replicas' log timestamps).
fn clock_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
}

/// The share of the window `from..to` (seconds since midnight UTC) a replica spent checking
/// locally: from each unreachable line to the next rejoin line, by the log's timestamps. A
/// window across midnight is not worth the arithmetic: it reads as NaN.
fn fallback_share(path: &Path, from: f64, to: f64) -> f64 {
    if to <= from {
        return f64::NAN;
    }
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut down_since: Option<f64> = None;
    let mut down = 0.0;
    for line in text.lines() {
        let Some(t) = line_time(line) else { continue };
        if line.contains(UNREACHABLE) {
            down_since.get_or_insert(t);
        } else if line.contains(REJOINED)
            && let Some(since) = down_since.take()
        {
            down += (t.min(to) - since.max(from)).max(0.0);
        }
    }
    if let Some(since) = down_since {
        down += (to - since.max(from)).max(0.0);
    }
    down / (to - from)
}

// === one run ===

struct Replica {
    server: Server,
    addr: String,
    log: PathBuf,
}

/// Stops every replica at once (each waits up to 3 s for its own exit).
fn stop_all(replicas: Vec<Replica>) {
    std::thread::scope(|s| {
        for r in replicas {
            s.spawn(move || drop(r.server));
        }
    });
}

struct ReplicaFigures {
    pod: String,
    /// Share of the window spent checking locally (Redis deemed unreachable).
    fallback: f64,
    /// Share of one core over the window.
    cpu: f64,
    checks_per_interval: f64,
    window: LogLines,
    since_start: LogLines,
}

struct RedisFigures {
    /// Commands per interval, all and by command.
    total: f64,
    by_command: BTreeMap<String, f64>,
    /// Share of one core over the window.
    cpu: f64,
}

struct Measured {
    replicas: usize,
    checks_per_interval: f64,
    redis: Option<RedisFigures>,
    per_replica: Vec<ReplicaFigures>,
    /// Share of the whole machine busy over the window.
    machine_busy: f64,
    mocks_cpu: f64,
    /// When every replica first showed every endpoint healthy, if within [`READY_TIMEOUT`].
    ready_after: Option<Duration>,
    /// The fewest endpoints any replica showed healthy at the start and the end of the window.
    healthy_min: (u64, u64),
}

impl Measured {
    fn max_unreachable(&self) -> usize {
        self.per_replica
            .iter()
            .map(|r| r.window.unreachable)
            .max()
            .unwrap_or(0)
    }

    fn max_rejoined(&self) -> usize {
        self.per_replica
            .iter()
            .map(|r| r.window.rejoined)
            .max()
            .unwrap_or(0)
    }

    /// Failed-check log lines of the whole fleet per interval, over the window.
    fn failed_per_interval(&self, o: &Options) -> f64 {
        let failed: usize = self
            .per_replica
            .iter()
            .map(|r| r.window.failed_checks)
            .sum();
        failed as f64 / (o.seconds as f64 * 1000.0 / o.interval_ms as f64)
    }

    fn flapping(&self) -> usize {
        self.per_replica
            .iter()
            .filter(|r| r.window.unreachable > 0 || r.window.rejoined > 0)
            .count()
    }

    fn reasons(&self) -> BTreeMap<String, usize> {
        let mut all = BTreeMap::new();
        for r in &self.per_replica {
            for (reason, n) in &r.window.reasons {
                *all.entry(reason.clone()).or_default() += n;
            }
        }
        all
    }

    /// Mean and max share of the window the replicas spent checking locally.
    fn fallback(&self) -> (f64, f64) {
        let v: Vec<f64> = self.per_replica.iter().map(|r| r.fallback).collect();
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        (mean, v.iter().copied().fold(0.0, f64::max))
    }

    /// Median and max replica CPU, as a share of one core.
    fn replica_cpu(&self) -> (f64, f64) {
        let mut v: Vec<f64> = self.per_replica.iter().map(|r| r.cpu).collect();
        v.sort_by(f64::total_cmp);
        (
            v.get(v.len() / 2).copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0),
        )
    }
}

fn endpoints_yaml(mocks: &[String], o: &Options) -> String {
    let interval = format!("{}ms", o.interval_ms);
    let timeout = format!("{}ms", (o.interval_ms / 2).max(1));
    let mut endpoints = String::new();
    for i in 0..o.endpoints {
        let addr = &mocks[i % mocks.len()];
        endpoints.push_str(&format!(
            "  - {{ name: ep-{i}, url: \"http://{addr}\", type: vllm, check_interval: {interval}, check_timeout: {timeout}, startup: {{ period: {interval}, timeout: {timeout} }} }}\n"
        ));
    }
    endpoints
}

fn start_replica(
    bin: &Path,
    dir: &Path,
    name: &str,
    body: &str,
) -> anyhow::Result<(Server, String, PathBuf)> {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, body)?;
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(bin.join("hale"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        // Nothing from this shell (REDIS_URL, HALE_SHARED__…) may change the config.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HALE_LOG", LOG_FILTER)
        .env("HALE_WORKER_THREADS", "1");
    let (server, addr) = Server::spawn_announcing(name, cmd, &log, "hale listening on ")?;
    Ok((server, addr, log))
}

fn measure(
    bin: &Path,
    dir: &Path,
    mocks: &[(Proc, String)],
    o: &Options,
    replicas: usize,
    shared: bool,
) -> anyhow::Result<Measured> {
    let mock_addrs: Vec<String> = mocks.iter().map(|(_, a)| a.clone()).collect();
    let redis = if shared { Some(start_redis()?) } else { None };
    let endpoints = endpoints_yaml(&mock_addrs, o);
    let shared_yaml = match &redis {
        Some((_, port)) => format!(
            "shared:\n  enabled: true\n  mode: sharded\n  redis_url: redis://127.0.0.1:{port}\n  namespace: bench\n"
        ),
        None => String::new(),
    };
    let kind = if shared { "shared" } else { "alone" };
    let mut fleet = Vec::new();
    let started = Instant::now();
    for r in 0..replicas {
        let body = format!(
            "server:\n  listen: 127.0.0.1:0\npod_id: bench-{r}\n{shared_yaml}endpoints:\n{endpoints}"
        );
        let name = format!("hale-{replicas}-{kind}-{r}");
        // On an error the replicas started so far are dropped, which stops them.
        let (server, addr, log) = start_replica(bin, dir, &name, &body)?;
        fleet.push(Replica { server, addr, log });
    }
    let ready_by = Instant::now() + READY_TIMEOUT;
    let mut ready_after = None;
    loop {
        if healthy_min(&mut fleet)? == o.endpoints as u64 {
            ready_after = Some(started.elapsed());
            break;
        }
        if Instant::now() > ready_by {
            println!(
                "{replicas} replica(s), {kind}: not every endpoint healthy on every replica after \
                 {} s; measuring anyway",
                READY_TIMEOUT.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(WARMUP);
    let healthy_start = healthy_min(&mut fleet)?;

    // Fast /proc and file-size snapshots first, then the counters, then the slower scrapes.
    let pids: Vec<u32> = fleet.iter().map(|r| r.server.pid()).collect();
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    let mocks_cpu0: f64 = mocks
        .iter()
        .map(|(p, _)| cpu_seconds(p.0.id()).unwrap_or(0.0))
        .sum();
    let redis_cpu0 = match &redis {
        Some((p, _)) => cpu_seconds(p.0.id())?,
        None => 0.0,
    };
    let machine0 = machine_ticks();
    let logs0: Vec<u64> = fleet.iter().map(|r| log_len(&r.log)).collect();
    let hits0 = health_hits(&mock_addrs)?;
    let calls0 = match &redis {
        Some((_, port)) => Some(command_calls(*port)?),
        None => None,
    };
    let t0 = Instant::now();
    let clock0 = clock_now();
    let mut checks0 = Vec::new();
    for r in &fleet {
        checks0.push((Instant::now(), checks_run(&r.addr)?));
    }
    let window = Duration::from_secs(o.seconds);
    std::thread::sleep(window.saturating_sub(t0.elapsed()));
    let hits = health_hits(&mock_addrs)?.saturating_sub(hits0);
    let calls1 = match &redis {
        Some((_, port)) => Some(command_calls(*port)?),
        None => None,
    };
    let elapsed = t0.elapsed().as_secs_f64();
    let clock1 = clock_now();
    let cpu1: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    let mocks_cpu1: f64 = mocks
        .iter()
        .map(|(p, _)| cpu_seconds(p.0.id()).unwrap_or(0.0))
        .sum();
    let redis_cpu1 = match &redis {
        Some((p, _)) => cpu_seconds(p.0.id())?,
        None => 0.0,
    };
    let machine1 = machine_ticks();
    let logs1: Vec<u64> = fleet.iter().map(|r| log_len(&r.log)).collect();
    let healthy_end = healthy_min(&mut fleet)?;
    let interval_s = o.interval_ms as f64 / 1000.0;
    let mut per_replica = Vec::new();
    for (i, r) in fleet.iter_mut().enumerate() {
        r.server.ensure_running()?;
        let (at0, c0) = checks0[i];
        let c1 = checks_run(&r.addr)?;
        let secs = at0.elapsed().as_secs_f64();
        per_replica.push(ReplicaFigures {
            pod: format!("bench-{i}"),
            fallback: fallback_share(&r.log, clock0, clock1),
            cpu: (cpu1[i] - cpu0[i]) / elapsed,
            checks_per_interval: (c1 - c0) / secs * interval_s,
            window: log_lines(&r.log, logs0[i], Some(logs1[i])),
            since_start: LogLines::default(),
        });
    }
    let intervals = elapsed / interval_s;
    let redis_figures = match (&redis, calls0, calls1) {
        (Some(_), Some(before), Some(after)) => {
            let by_command: BTreeMap<String, f64> = after
                .iter()
                .map(|(k, v)| {
                    let delta = v.saturating_sub(before.get(k).copied().unwrap_or(0));
                    (k.clone(), delta as f64 / intervals)
                })
                .filter(|(_, v)| *v > 0.0)
                .collect();
            Some(RedisFigures {
                total: by_command.values().sum(),
                by_command,
                cpu: (redis_cpu1 - redis_cpu0) / elapsed,
            })
        }
        _ => None,
    };
    let machine_busy = match (machine0, machine1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    let logs: Vec<PathBuf> = fleet.iter().map(|r| r.log.clone()).collect();
    stop_all(fleet);
    drop(redis);
    for (figures, log) in per_replica.iter_mut().zip(&logs) {
        figures.since_start = log_lines(log, 0, None);
    }
    Ok(Measured {
        replicas,
        checks_per_interval: hits as f64 / intervals,
        redis: redis_figures,
        per_replica,
        machine_busy,
        mocks_cpu: (mocks_cpu1 - mocks_cpu0) / elapsed,
        ready_after,
        healthy_min: (healthy_start, healthy_end),
    })
}

/// The fewest endpoints any replica shows healthy (`/internal/health`); fails if a replica
/// has exited.
fn healthy_min(fleet: &mut [Replica]) -> anyhow::Result<u64> {
    let mut min = u64::MAX;
    for r in fleet {
        r.server.ensure_running()?;
        let body = http_get(&r.addr, "/internal/health")?;
        min = min.min(number_after(&body, "healthy").unwrap_or(0));
    }
    Ok(min)
}

// === report ===

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.0} %", v * 100.0)
    } else {
        "—".to_owned()
    }
}

/// Per endpoint-round: commands per interval / endpoints.
fn per_round(v: f64, o: &Options) -> f64 {
    v / o.endpoints as f64
}

/// What the commands imply about the scripts' outcomes, per endpoint-round; see the module
/// docs. ACQUIRE runs HGET always, PTTL once past "not due", and two SETs only when it
/// grants (the fence counter, `max(counter + 1, clock)`, and the round lease); WRITE runs
/// HMGET always, HSET only when it stores, and
/// HGETALL when it refuses; the re-read on every (re)subscribe is one HGETALL per endpoint.
fn inferred(by: &BTreeMap<String, f64>, o: &Options) -> String {
    let get = |k: &str| per_round(by.get(k).copied().unwrap_or(0.0), o);
    let acquires = get("hget");
    let granted = get("set") / 2.0;
    let busy = (get("pttl") - granted).max(0.0);
    let not_due = (acquires - get("pttl")).max(0.0);
    let writes = get("hmget");
    let refused = (writes - get("hset")).max(0.0);
    let rereads = (get("hgetall") - refused).max(0.0);
    format!(
        "acquire scripts {acquires:.2} (granted {granted:.2}, busy {busy:.2}, not due \
         {not_due:.2}); write scripts {writes:.2} (refused {refused:.2}); result re-reads on \
         re-subscribe {rereads:.2}; SUBSCRIBE {:.3}; PING {:.3}",
        get("subscribe"),
        get("ping"),
    )
}

fn report(
    o: &Options,
    runs: &[(Option<Measured>, Measured)],
    revision: &str,
    load: (&str, &str),
) -> String {
    let mut rows = String::new();
    let mut breakdown = String::new();
    let mut outcomes = String::new();
    let mut reasons = String::new();
    let mut details = String::new();
    for (alone, shared) in runs {
        let n = shared.replicas;
        let alone_cell = alone.as_ref().map_or("skipped".to_owned(), |a| {
            format!("{:.0}", a.checks_per_interval)
        });
        let (redis_total, evalsha, redis_cpu) =
            shared.redis.as_ref().map_or((0.0, 0.0, 0.0), |r| {
                (
                    r.total,
                    r.by_command.get("evalsha").copied().unwrap_or(0.0),
                    r.cpu,
                )
            });
        let (cpu_median, cpu_max) = shared.replica_cpu();
        let (fallback_mean, fallback_max) = shared.fallback();
        let ready = shared.ready_after.map_or_else(
            || format!("not within {} s", READY_TIMEOUT.as_secs()),
            |d| format!("{:.0} s", d.as_secs_f64()),
        );
        rows.push_str(&format!(
            "| {n} | {alone_cell} | {:.0} | {:.3} | {:.1} | {:.2} | {}/{n} | {} / {} | {} ({}) | {:.1} | {} ({}) | {} | {} | {ready} | {} / {} |\n",
            shared.checks_per_interval,
            shared.checks_per_interval / o.endpoints as f64,
            per_round(redis_total, o),
            per_round(evalsha, o),
            shared.flapping(),
            shared.max_unreachable(),
            shared.max_rejoined(),
            pct(fallback_mean),
            pct(fallback_max),
            shared.failed_per_interval(o),
            pct(cpu_median),
            pct(cpu_max),
            pct(redis_cpu),
            pct(shared.machine_busy),
            shared.healthy_min.0,
            shared.healthy_min.1,
        ));
        if let Some(r) = &shared.redis {
            let parts: Vec<String> = r
                .by_command
                .iter()
                .map(|(k, v)| format!("{k} {:.2}", per_round(*v, o)))
                .collect();
            breakdown.push_str(&format!("- {n} replicas: {}\n", parts.join(", ")));
            outcomes.push_str(&format!("- {n} replicas: {}\n", inferred(&r.by_command, o)));
        }
        let why = shared.reasons();
        if why.is_empty() {
            reasons.push_str(&format!("- {n} replicas: none\n"));
        } else {
            let parts: Vec<String> = why.iter().map(|(k, v)| format!("{v}× `{k}`")).collect();
            reasons.push_str(&format!("- {n} replicas: {}\n", parts.join("; ")));
        }
        details.push_str(&format!(
            "\n<details><summary>{n} replicas, per replica</summary>\n\n\
             | replica | checks/interval | failed-check lines | CPU (share of a core) | unreachable lines (since start) | rejoin lines (since start) | time in local fallback |\n\
             |---|---:|---:|---:|---:|---:|---:|\n"
        ));
        for r in &shared.per_replica {
            details.push_str(&format!(
                "| {} | {:.1} | {} | {} | {} ({}) | {} ({}) | {} |\n",
                r.pod,
                r.checks_per_interval,
                r.window.failed_checks,
                pct(r.cpu),
                r.window.unreachable,
                r.since_start.unreachable,
                r.window.rejoined,
                r.since_start.rejoined,
                pct(r.fallback),
            ));
        }
        details.push_str(&format!(
            "\nmockllm servers together: {} of a core.\n\n</details>\n",
            pct(shared.mocks_cpu)
        ));
    }
    let targets = targets(o, runs);
    let note = o
        .note
        .as_ref()
        .map_or(String::new(), |n| format!("**{n}**\n\n"));
    let replicas: Vec<String> = o.replicas.iter().map(usize::to_string).collect();
    format!(
        "## Shared health state\n\n{note}\
         `{command}` — {revision}. {n} endpoints (names differ, URLs spread over {mocks} mockllm \
         servers, vLLM flavour) checked every {interval} ms by fleets of {fleets} replicas \
         (release build, `HALE_WORKER_THREADS=1`, log filter `{LOG_FILTER}`), all on this one \
         machine with one local `redis-server`, `shared.mode: sharded`. Each fleet is measured \
         over {s} s after every replica showed every endpoint healthy and a 3 s warm-up; the \
         baseline without shared state runs only for fleets with replicas × endpoints ≤ \
         {unshared_max}. Checks are the `/health` hits the backends received, per interval \
         (ideal: one per endpoint). Redis commands are deltas of `INFO commandstats` (every \
         command Redis executed, including those inside the Lua scripts, without the measuring \
         `INFO`) per endpoint-round (/ endpoints / intervals). Unreachable / rejoin lines are \
         the replicas' `{UNREACHABLE}…` (WARN) and `{REJOINED}…` (INFO) log lines during the \
         window, and the time in local fallback the share of the window from each of the first to \
         the next of the second, by the log's timestamps; failed checks are the `{CHECK_FAILED}` (WARN) lines, here all check timeouts \
         ({timeout} ms) of an overloaded machine. A fleet that does not show every endpoint \
         healthy on every replica within {ready_s} s is measured anyway. CPU from /proc over \
         the window; machine busy is all cores together. Load \
         average (1 min) before the first fleet: {load_before}, after the last: {load_after} \
         — other work on the machine shows here.\n\n\
         | replicas | checks/interval, not shared | checks/interval, shared | per endpoint | Redis commands per endpoint-round | of which EVALSHA | replicas flapping | max unreachable / rejoin lines per replica | time in local fallback, mean (max) | failed checks (timeouts) per interval | replica CPU, median (max) | Redis CPU | machine busy | all healthy after | fewest healthy on a replica, window start / end |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         {rows}\n\
         Redis commands per endpoint-round, by command:\n\n{breakdown}\n\
         Script outcomes per endpoint-round, inferred from those commands (ACQUIRE runs `HGET` \
         always, `PTTL` once past \"not due\", `SET` only when it grants; WRITE runs `HMGET` \
         always, `HSET` when it stores, `HGETALL` when it refuses; a re-subscribe re-reads \
         every result with `HGETALL`; only as true as crates/coord/src/scripts.rs still \
         matches this):\n\n{outcomes}\n\
         Reasons given in the unreachable lines during the window (whole fleet):\n\n{reasons}\n\
         ### Targets (issue #11)\n\n{targets}{details}",
        command = o.command(),
        n = o.endpoints,
        mocks = o.mocks,
        interval = o.interval_ms,
        fleets = replicas.join(", "),
        s = o.seconds,
        unshared_max = o.unshared_max,
        timeout = (o.interval_ms / 2).max(1),
        ready_s = READY_TIMEOUT.as_secs(),
        load_before = load.0,
        load_after = load.1,
    )
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn targets(o: &Options, runs: &[(Option<Measured>, Measured)]) -> String {
    let mut out = String::new();
    for (_, m) in runs {
        let per = m.checks_per_interval / o.endpoints as f64;
        out.push_str(&format!(
            "- {} {} replicas: fleet-wide checks within ±{:.0} % of one per endpoint per \
             interval — {per:.3}\n",
            pass((per - 1.0).abs() <= CHECKS_TOLERANCE),
            m.replicas,
            CHECKS_TOLERANCE * 100.0,
        ));
        out.push_str(&format!(
            "- {} {} replicas: no replica logs more than one unreachable/rejoin pair — at most \
             {} unreachable and {} rejoin lines per replica ({} of {} replicas logged any)\n",
            pass(m.max_unreachable() <= 1 && m.max_rejoined() <= 1),
            m.replicas,
            m.max_unreachable(),
            m.max_rejoined(),
            m.flapping(),
            m.replicas,
        ));
    }
    let per_round: Vec<(usize, f64)> = runs
        .iter()
        .filter_map(|(_, m)| Some((m.replicas, m.redis.as_ref()?.total / o.endpoints as f64)))
        .collect();
    if per_round.len() > 1 {
        let min = per_round
            .iter()
            .map(|(_, v)| *v)
            .fold(f64::INFINITY, f64::min);
        let max = per_round.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        let parts: Vec<String> = per_round
            .iter()
            .map(|(n, v)| format!("{v:.1} at {n}"))
            .collect();
        out.push_str(&format!(
            "- {} Redis commands per endpoint-round flat in the number of replicas (largest at \
             most {:.0} % over the smallest) — {} ({:.2}×)\n",
            pass(min > 0.0 && max <= min * (1.0 + FLAT_TOLERANCE)),
            FLAT_TOLERANCE * 100.0,
            parts.join(", "),
            if min > 0.0 { max / min } else { f64::NAN },
        ));
    }
    out
}

pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    cargo(&["build", "--release", "-p", "hale", "-p", "mockllm"])?;
    let bin = root.join("target/release");
    let revision = git_revision();
    let load_before = load_average();
    let dir = TempDir::new("hale-bench-shared")?;

    let mut mocks = Vec::new();
    for _ in 0..o.mocks {
        mocks.push(spawn_announcing(
            &bin.join("mockllm"),
            &["--port", "0", "--flavor", "vllm", "--models", "bench-model"],
            &[],
            "mockllm listening on ",
        )?);
    }

    let mut runs = Vec::new();
    for &replicas in &o.replicas {
        let alone = if o.unshared(replicas) {
            let m = measure(&bin, dir.path(), &mocks, &o, replicas, false)?;
            println!(
                "{replicas} replica(s), not shared: {:.1} checks/interval",
                m.checks_per_interval
            );
            Some(m)
        } else {
            println!(
                "{replicas} replica(s), not shared: skipped ({replicas} × {} endpoints > --unshared-max {})",
                o.endpoints, o.unshared_max
            );
            None
        };
        let shared = measure(&bin, dir.path(), &mocks, &o, replicas, true)?;
        let redis_total = shared.redis.as_ref().map_or(0.0, |r| r.total);
        println!(
            "{replicas} replica(s), shared: {:.1} checks/interval ({:.3} per endpoint), {:.1} Redis \
             commands per endpoint-round, {} replicas flapping (max {} unreachable / {} rejoin \
             lines), {:.1} failed checks/interval, fewest healthy {} / {}, machine busy {}",
            shared.checks_per_interval,
            shared.checks_per_interval / o.endpoints as f64,
            per_round(redis_total, &o),
            shared.flapping(),
            shared.max_unreachable(),
            shared.max_rejoined(),
            shared.failed_per_interval(&o),
            shared.healthy_min.0,
            shared.healthy_min.1,
            pct(shared.machine_busy),
        );
        runs.push((alone, shared));
    }
    drop(mocks);
    let load_after = load_average();
    if o.keep_logs {
        println!(
            "replicas' configs and logs kept in {}",
            dir.keep().display()
        );
    }

    let body = report(&o, &runs, &revision, (&load_before, &load_after));
    println!("{body}");
    write_section(root, "shared", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_are_the_fleet_scale_run() {
        let o = parse(&[]).unwrap();
        assert_eq!((o.endpoints, o.seconds, o.interval_ms), (1000, 20, 1000));
        assert_eq!(o.replicas, vec![3, 10, 20]);
        assert_eq!(o.mocks, 10);
        assert!(o.unshared(3) && !o.unshared(10));
    }

    #[test]
    fn options_are_bounded() {
        let small = parse(&args(&["--endpoints", "10", "--replicas", "1,3,5"])).unwrap();
        assert_eq!(small.replicas, vec![1, 3, 5]);
        assert_eq!(small.mocks, 5);
        for bad in [
            &["--replicas", "3,,5"][..],
            &["--replicas", "0"],
            &["--replicas", "1000"],
            &["--endpoints", "0"],
            &["--endpoints", "-1"],
            &["--interval-ms", "5"],
            &["--mocks", "0"],
            &["--seconds"],
            &["--bogus", "1"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_line_reproduces_the_run() {
        let o = parse(&args(&["--replicas", "2", "--note", "it's before"])).unwrap();
        assert_eq!(
            o.command(),
            "cargo xtask bench shared --endpoints 1000 --replicas 2 --seconds 20 \
             --interval-ms 1000 --mocks 10 --unshared-max 5000 --note 'it'\\''s before'"
        );
    }

    #[test]
    fn log_lines_count_only_the_window_and_keep_reasons() {
        let dir = TempDir::new("hale-bench-shared-test").unwrap();
        let log = dir.path().join("r.log");
        let first = "x WARN Redis unreachable: checking every endpoint locally until it is back \
                     pod_id=bench-0 error=Redis unreachable: no connection within the connect \
                     timeout\n";
        let rest = "x INFO Redis reachable again: rejoining shared health checks pod_id=bench-0\n\
                    x WARN health check failed endpoint=ep-1 reason=timeout\n\
                    x WARN Redis unreachable: checking every endpoint locally until it is back \
                    pod_id=bench-0 error=\"the pub/sub connection closed\"\n";
        std::fs::write(&log, format!("{first}{rest}")).unwrap();
        let window = log_lines(&log, first.len() as u64, None);
        assert_eq!(
            (window.unreachable, window.rejoined, window.failed_checks),
            (1, 1, 1)
        );
        assert_eq!(
            window.reasons.keys().collect::<Vec<_>>(),
            ["the pub/sub connection closed"]
        );
        let all = log_lines(&log, 0, Some(log_len(&log)));
        assert_eq!((all.unreachable, all.rejoined), (2, 1));
        // A window past the end of the file (or reversed) counts nothing instead of failing.
        let none = log_lines(&log, 10_000, Some(20_000));
        assert_eq!((none.unreachable, none.rejoined), (0, 0));
    }

    #[test]
    fn time_in_fallback_is_clipped_to_the_window() {
        let dir = TempDir::new("hale-bench-shared-fallback").unwrap();
        let log = dir.path().join("r.log");
        let down = "WARN Redis unreachable: checking every endpoint locally until it is back";
        let up = "INFO Redis reachable again: rejoining shared health checks";
        std::fs::write(
            &log,
            format!(
                "2026-12-05T10:00:00.000000Z {down}\n\
                 2026-12-05T10:00:04.000000Z {up}\n\
                 2026-12-05T10:00:06.000000Z  INFO something else\n\
                 2026-12-05T10:00:08.000000Z {down}\n\
                 2026-12-05T10:00:09.000000Z {down}\n"
            ),
        )
        .unwrap();
        let at = |s: f64| 36_000.0 + s;
        // Down 2..4 and 8..10 of the window 2..10.
        assert!((fallback_share(&log, at(2.0), at(10.0)) - 0.5).abs() < 1e-9);
        assert!(fallback_share(&log, at(4.0), at(8.0)).abs() < 1e-9);
        assert!(fallback_share(&log, at(5.0), at(5.0)).is_nan());
        assert_eq!(line_time("garbage"), None);
    }

    #[test]
    fn inferred_outcomes_follow_the_script_commands() {
        let o = parse(&args(&["--endpoints", "10"])).unwrap();
        let by: BTreeMap<String, f64> = [
            ("hget", 30.0),
            ("pttl", 20.0),
            ("set", 20.0),
            ("hmget", 10.0),
            ("hset", 10.0),
            ("hgetall", 5.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let text = inferred(&by, &o);
        assert!(
            text.starts_with(
                "acquire scripts 3.00 (granted 1.00, busy 1.00, not due 1.00); write scripts \
                 1.00 (refused 0.00); result re-reads on re-subscribe 0.50"
            ),
            "{text}"
        );
    }
}
