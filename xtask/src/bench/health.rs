//! `cargo xtask bench health [--endpoints N] [--seconds S] [--interval-ms MS]`: what active
//! health checking costs the gateway.
//!
//! Starts 10 mockllm servers (vLLM flavour, release build) and one `hale serve` whose config
//! spreads N endpoints (default 500) over them, every one checked each interval (default 1 s,
//! jitter 0.1). After all endpoints are healthy and a warm-up, it measures over S seconds
//! (default 30): the gateway's CPU time from /proc (as a share of one core), its resident
//! memory (median of 1 s samples, and peak VmHWM), and the checks the mocks actually received
//! per second. Everything runs on loopback and stops by itself.
#![expect(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "xtask has no tokio runtime: std Instant and thread::sleep pace the measurement"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

use super::child::{http_get, spawn_announcing};
use super::procfs::{cpu_seconds, memory_mib};
use super::report::write_section;
use crate::steps::cargo;

const MOCKS: usize = 10;

struct Options {
    endpoints: usize,
    seconds: u64,
    interval_ms: u64,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        endpoints: 500,
        seconds: 30,
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
    if o.endpoints == 0 || o.seconds == 0 || o.interval_ms == 0 {
        bail!("--endpoints, --seconds and --interval-ms must be > 0");
    }
    Ok(o)
}

fn total_hits(mocks: &[String]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for m in mocks {
        let body = http_get(m, "/__stats")?;
        let total = body
            .split("\"total\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("no total in /__stats of {m}"))?;
        sum += total;
    }
    Ok(sum)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    cargo(&["build", "--release", "-p", "hale", "-p", "mockllm"])?;
    let bin = root.join("target/release");

    let mut mocks = Vec::new();
    let mut mock_addrs = Vec::new();
    for _ in 0..MOCKS {
        let (p, addr) = spawn_announcing(
            &bin.join("mockllm"),
            &["--port", "0", "--flavor", "vllm", "--models", "bench-model"],
            &[],
            "mockllm listening on ",
        )?;
        mocks.push(p);
        mock_addrs.push(addr);
    }

    let interval = format!("{}ms", o.interval_ms);
    let timeout = format!("{}ms", (o.interval_ms / 2).max(1));
    let mut yaml =
        String::from("server:\n  listen: 127.0.0.1:0\nhealth:\n  jitter: 0.1\nendpoints:\n");
    for i in 0..o.endpoints {
        let addr = &mock_addrs[i % MOCKS];
        yaml.push_str(&format!(
            "  - {{ name: ep-{i}, url: \"http://{addr}\", type: vllm, check_interval: {interval}, check_timeout: {timeout}, startup: {{ period: {interval}, timeout: {timeout} }} }}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("hale-bench-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("hale.yaml");
    std::fs::write(&config, yaml)?;
    let config_arg = config.to_string_lossy().into_owned();
    let (gateway, addr) = spawn_announcing(
        &bin.join("hale"),
        &["serve", "--config", &config_arg],
        &[("HALE_LOG", "warn")],
        "hale listening on ",
    )?;
    let pid = gateway.0.id();

    // Wait (bounded) until every endpoint is healthy.
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let body = http_get(&addr, "/internal/health")?;
        let healthy = body
            .split("\"healthy\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        if healthy == o.endpoints {
            break;
        }
        if Instant::now() > ready_by {
            bail!(
                "only {healthy} of {} endpoints healthy after 60 s",
                o.endpoints
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("all {} endpoints healthy; warming up 5 s", o.endpoints);
    std::thread::sleep(Duration::from_secs(5));

    let cpu0 = cpu_seconds(pid)?;
    let hits0 = total_hits(&mock_addrs)?;
    let t0 = Instant::now();
    let mut rss = Vec::new();
    while t0.elapsed() < Duration::from_secs(o.seconds) {
        std::thread::sleep(Duration::from_secs(1));
        rss.push(memory_mib(pid)?.0);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu0;
    let hits = total_hits(&mock_addrs)? - hits0;
    let (_, peak) = memory_mib(pid)?;
    let core_share = cpu / elapsed * 100.0;
    let checks_per_s = hits as f64 / elapsed;
    let us_per_check = if hits > 0 {
        cpu / hits as f64 * 1e6
    } else {
        0.0
    };
    let rss_median = median(&mut rss);
    drop(gateway);
    drop(mocks);
    let _ = std::fs::remove_dir_all(&dir);

    let command = format!(
        "cargo xtask bench health --endpoints {} --seconds {} --interval-ms {}",
        o.endpoints, o.seconds, o.interval_ms
    );
    let body = format!(
        "## Active health checking\n\n\
         `{command}` — {n} endpoints (over {MOCKS} mockllm servers, vLLM flavour) checked every \
         {interval} with jitter 0.1, each check a fresh TCP connection and `GET /health`; \
         measured over {elapsed:.0} s after all were healthy and a 5 s warm-up. The gateway's \
         CPU is read from /proc (user + system), memory from VmRSS/VmHWM.\n\n\
         | endpoints | checks/s received | gateway CPU (% of one core) | CPU µs per check | RSS median | RSS peak |\n\
         |---:|---:|---:|---:|---:|---:|\n\
         | {n} | {checks_per_s:.0} | {core_share:.1} % | {us_per_check:.0} | {rss_median:.1} MiB | {peak:.1} MiB |\n\n\
         Target (issue: active health): under 10 % of one core and under 60 MB RSS for 500 \
         endpoints at 1 s.\n",
        n = o.endpoints,
    );
    println!("{body}");
    write_section(root, "health", &body)
}
