//! `cargo xtask bench shared [--endpoints N] [--seconds S] [--interval-ms MS]`: what shared
//! health state saves and what it costs Redis.
//!
//! For 1, 3 and 5 replicas, each run once without shared state and once with it (sharded mode),
//! it starts N endpoints (default 10, spread over 5 mockllm servers, vLLM flavour) checked
//! every interval (default 1 s), a fresh `redis-server` for the shared runs, and the replicas
//! (release build). Once every replica shows every endpoint healthy and after a 3 s warm-up,
//! it measures over S seconds (default 20): the health-check requests the backends received
//! (`/health` hits from mockllm's `/__stats`) and, for shared runs, the commands Redis executed
//! (deltas of `INFO commandstats`, all commands including those run inside scripts, without
//! the measuring INFO calls), both per interval. Everything runs on loopback and stops by
//! itself.
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
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use super::child::{Proc, http_get, spawn_announcing};
use super::report::write_section;
use crate::steps::cargo;

const MOCKS: usize = 5;
const REPLICAS: [usize; 3] = [1, 3, 5];
const WARMUP: Duration = Duration::from_secs(3);

struct Options {
    endpoints: usize,
    seconds: u64,
    interval_ms: u64,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        endpoints: 10,
        seconds: 20,
        interval_ms: 1000,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--endpoints" => o.endpoints = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--interval-ms" => o.interval_ms = value.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    if o.endpoints == 0 || o.seconds == 0 || o.interval_ms < 100 {
        bail!("--endpoints and --seconds must be > 0, --interval-ms at least 100");
    }
    Ok(o)
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

// === one run ===

struct Measured {
    checks_per_interval: f64,
    redis_per_interval: Option<(f64, BTreeMap<String, f64>)>,
}

fn measure(
    bin: &Path,
    dir: &Path,
    mocks: &[String],
    o: &Options,
    replicas: usize,
    shared: bool,
) -> anyhow::Result<Measured> {
    let redis = if shared { Some(start_redis()?) } else { None };
    let interval = format!("{}ms", o.interval_ms);
    let timeout = format!("{}ms", (o.interval_ms / 2).max(1));
    let mut endpoints = String::new();
    for i in 0..o.endpoints {
        let addr = &mocks[i % mocks.len()];
        endpoints.push_str(&format!(
            "  - {{ name: ep-{i}, url: \"http://{addr}\", type: vllm, check_interval: {interval}, check_timeout: {timeout}, startup: {{ period: {interval}, timeout: {timeout} }} }}\n"
        ));
    }
    let shared_yaml = match &redis {
        Some((_, port)) => format!(
            "shared:\n  enabled: true\n  mode: sharded\n  redis_url: redis://127.0.0.1:{port}\n  namespace: bench\n"
        ),
        None => String::new(),
    };
    let mut gateways = Vec::new();
    let mut addrs = Vec::new();
    for r in 0..replicas {
        let config = dir.join(format!("hale-{replicas}-{shared}-{r}.yaml"));
        std::fs::write(
            &config,
            format!(
                "server:\n  listen: 127.0.0.1:0\npod_id: bench-{r}\n{shared_yaml}endpoints:\n{endpoints}"
            ),
        )?;
        let config = config.to_string_lossy().into_owned();
        let (p, addr) = spawn_announcing(
            &bin.join("hale"),
            &["serve", "--config", &config],
            &[("HALE_LOG", "warn")],
            "hale listening on ",
        )?;
        gateways.push(p);
        addrs.push(addr);
    }
    let ready_by = Instant::now() + Duration::from_secs(60);
    for addr in &addrs {
        loop {
            let body = http_get(addr, "/internal/health")?;
            if number_after(&body, "healthy") == Some(o.endpoints as u64) {
                break;
            }
            if Instant::now() > ready_by {
                bail!(
                    "replica {addr}: not all {} endpoints healthy after 60 s",
                    o.endpoints
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    std::thread::sleep(WARMUP);

    let hits0 = health_hits(mocks)?;
    let calls0 = match &redis {
        Some((_, port)) => Some(command_calls(*port)?),
        None => None,
    };
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(o.seconds));
    let elapsed = t0.elapsed().as_secs_f64();
    let hits = health_hits(mocks)? - hits0;
    let intervals = elapsed * 1000.0 / o.interval_ms as f64;
    let redis_per_interval = match (&redis, calls0) {
        (Some((_, port)), Some(before)) => {
            let after = command_calls(*port)?;
            let per: BTreeMap<String, f64> = after
                .iter()
                .map(|(k, v)| {
                    let delta = v.saturating_sub(before.get(k).copied().unwrap_or(0));
                    (k.clone(), delta as f64 / intervals)
                })
                .filter(|(_, v)| *v > 0.0)
                .collect();
            Some((per.values().sum(), per))
        }
        _ => None,
    };
    drop(gateways);
    drop(redis);
    Ok(Measured {
        checks_per_interval: hits as f64 / intervals,
        redis_per_interval,
    })
}

pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    cargo(&["build", "--release", "-p", "hale", "-p", "mockllm"])?;
    let bin = root.join("target/release");
    let dir = std::env::temp_dir().join(format!("hale-bench-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut mocks = Vec::new();
    let mut mock_addrs = Vec::new();
    for _ in 0..MOCKS.min(o.endpoints) {
        let (p, addr) = spawn_announcing(
            &bin.join("mockllm"),
            &["--port", "0", "--flavor", "vllm", "--models", "bench-model"],
            &[],
            "mockllm listening on ",
        )?;
        mocks.push(p);
        mock_addrs.push(addr);
    }

    let mut rows = String::new();
    let mut breakdown = String::new();
    for replicas in REPLICAS {
        let local = measure(&bin, &dir, &mock_addrs, &o, replicas, false)?;
        let shared = measure(&bin, &dir, &mock_addrs, &o, replicas, true)?;
        let (redis_total, per_command) = shared.redis_per_interval.clone().unwrap_or_default();
        println!(
            "{replicas} replica(s): {:.1} checks/interval alone, {:.1} shared, {redis_total:.1} Redis commands/interval",
            local.checks_per_interval, shared.checks_per_interval
        );
        let evalsha = per_command.get("evalsha").copied().unwrap_or(0.0);
        rows.push_str(&format!(
            "| {replicas} | {:.1} | {:.1} | {:.2} | {redis_total:.1} | {evalsha:.1} | {:.1} |\n",
            local.checks_per_interval,
            shared.checks_per_interval,
            shared.checks_per_interval / o.endpoints as f64,
            redis_total / o.endpoints as f64,
        ));
        let parts: Vec<String> = per_command
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        breakdown.push_str(&format!("- {replicas} replica(s): {}\n", parts.join(", ")));
    }
    drop(mocks);
    let _ = std::fs::remove_dir_all(&dir);

    let command = format!(
        "cargo xtask bench shared --endpoints {} --seconds {} --interval-ms {}",
        o.endpoints, o.seconds, o.interval_ms
    );
    let body = format!(
        "## Shared health state\n\n\
         `{command}` — {n} endpoints (over {mocks} mockllm servers, vLLM flavour) checked every \
         {interval} ms by 1, 3 and 5 replicas, each run once without shared state and once \
         with it (`shared.mode: sharded`, one local `redis-server`); measured over {s} s after \
         every replica showed every endpoint healthy and a 3 s warm-up. Health-check requests \
         are the `/health` hits the backends received; Redis commands are deltas of \
         `INFO commandstats` (every command Redis executed, including those run inside the \
         Lua scripts, without the measuring `INFO`), per interval.\n\n\
         | replicas | checks/interval, not shared | checks/interval, shared | shared, per endpoint | Redis commands/interval | of which EVALSHA | Redis commands/interval per endpoint |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n\
         {rows}\n\
         Redis commands per interval by command (shared runs):\n\n{breakdown}\n\
         Without shared state every replica checks every endpoint (checks grow with the \
         replicas); with it the fleet checks each endpoint once per interval whatever its size. \
         Per endpoint and round the winner runs one acquire and one write script (`EVALSHA`); \
         the commands inside them (`TIME`, `HGET`/`HMGET`, `PTTL`, `SET`, `INCR`, `HSET`, \
         `PEXPIRE`, `GET`, `DEL`, `PUBLISH`) are counted too. Other replicas learn the result from the \
         event and skip without touching Redis, so Redis load does not grow with the replicas \
         either (the `PUBLISH` fan-out to subscribers aside).\n",
        n = o.endpoints,
        mocks = MOCKS.min(o.endpoints),
        interval = o.interval_ms,
        s = o.seconds,
    );
    println!("{body}");
    write_section(root, "shared", &body)
}
