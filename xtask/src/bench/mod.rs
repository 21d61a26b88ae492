//! `cargo xtask bench <suite>`: measurements whose figures go into docs/BENCHMARKS.md.
//!
//! Every suite builds the release binaries, starts real processes on loopback, bounds every
//! load loop in time, and rewrites its own section of docs/BENCHMARKS.md (between
//! `<!-- bench:NAME -->` markers) with the figures and the exact command that produced them.
//! The machines are shared and noisy: suites report medians and ratios from one run.
//!
//! Suites: `health` (the cost of active health checking: CPU and memory of the gateway while
//! it checks many endpoints every second), `proxy` (what the gateway adds to a request, next to
//! a direct call, HAProxy and nginx; short answers, and thousands of concurrent long streams), `shared` (fleet-wide health checks, Redis commands per
//! endpoint-round and Redis fallback flapping for fleets of replicas sharing health state, by
//! default 3, 10 and 20 replicas × 1,000 endpoints).

mod child;
mod health;
mod oha;
mod process;
mod procfs;
mod proxy;
mod refs;
mod report;
mod shared;
mod streamload;
mod streams;

use std::path::Path;

use anyhow::bail;

pub(crate) fn run(root: &Path, args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("health") => health::run(root, &args[1..]),
        Some("proxy") => proxy::run(root, &args[1..]),
        Some("shared") => shared::run(root, &args[1..]),
        Some(other) => bail!("unknown bench suite {other:?}; suites: health, proxy, shared"),
        None => bail!("usage: cargo xtask bench <suite> [options]; suites: health, proxy, shared"),
    }
}
