//! The reference proxies the gateway is measured against: HAProxy and nginx, each configured
//! as a plain HTTP/1.1 reverse proxy in front of one backend, with keep-alive on both sides,
//! nothing else in the request path (no logging, no buffering of streams), and run in the
//! foreground from a config file in the run's temporary directory.
//!
//! Threads on the 2-core machines: each reference proxy gets one thread or worker per core —
//! `nbthread` threads for HAProxy, that many `worker_processes` for nginx — which is what each
//! does by default (`auto`). Hale runs on one thread (see `bins/hale/src/main.rs` for why);
//! the references keep their defaults, which favours them if anything. Connection
//! reuse to the backend is on for all three: HAProxy `http-reuse always` with an idle pool of
//! [`UPSTREAM_IDLE`] connections, nginx `keepalive` with the same number; nginx's
//! per-connection request cap (1000 by default, both sides) is lifted so it does not reconnect
//! mid-run where the others would not.
//!
//! HAProxy shares its idle server connections between threads by default; here each thread
//! keeps its own (`tune.idle-pool.shared off`). With the shared pool and two threads, HAProxy
//! 2.6.12 burns CPU at low load once a busy phase has filled and then purged the pool —
//! measured here at 100 req/s after a closed-loop phase: 7–8 % of a core and p99 4–6 ms,
//! against under 1 % and p99 under 1 ms with per-thread pools, with `http-reuse always`
//! even p50 1.2–3.2 ms from a fresh start; closed-loop throughput is the same either way.
//! Left shared, it would be a strawman in the latency scenario.
//!
//! Neither is capped below the concurrency it is measured at: HAProxy's global `maxconn`
//! and nginx's `worker_connections` / `worker_rlimit_nofile` grow with the streams
//! scenario's stream count, and the HAProxy server line has no `maxconn` (no queue).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use super::process::{Server, free_port};

/// Idle keep-alive connections each reference proxy keeps to the backend.
pub(crate) const UPSTREAM_IDLE: u32 = 64;

/// Threads (HAProxy) or worker processes (nginx): one per core, their default.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// Starts HAProxy in front of `backend`; returns it and the address it listens on.
/// `max_streams`: the most concurrent streams it must carry uncapped (0 for a few).
pub(crate) fn start_haproxy(
    dir: &Path,
    backend: &str,
    max_streams: usize,
) -> anyhow::Result<(Server, SocketAddr)> {
    let listen = free_port()?;
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        haproxy_config(listen, backend, workers(), max_streams),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let mut command = Command::new("haproxy");
    // -db: stay in the foreground, no daemon and no master process, so the pid we hold is
    // the one process that serves.
    command.arg("-db").arg("-f").arg(&config);
    let mut server = Server::spawn("haproxy", command, &dir.join("haproxy.log"))?;
    server.wait_for_port(listen)?;
    Ok((server, listen))
}

/// Starts nginx (master and workers) in front of `backend`; returns it and its address.
pub(crate) fn start_nginx(
    dir: &Path,
    backend: &str,
    max_streams: usize,
) -> anyhow::Result<(Server, SocketAddr)> {
    let listen = free_port()?;
    let config = dir.join("nginx.conf");
    std::fs::write(
        &config,
        nginx_config(dir, listen, backend, workers(), max_streams),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let error_log = dir.join("nginx-error.log");
    let mut command = Command::new("nginx");
    // -p/-e keep every path nginx opens before reading its config (prefix, error log) inside
    // our directory instead of /var/log/nginx.
    command
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&error_log)
        .arg("-c")
        .arg(&config);
    let mut server = Server::spawn("nginx", command, &dir.join("nginx.log"))?;
    server.wait_for_port(listen)?;
    Ok((server, listen))
}

/// HAProxy's global `maxconn` (client-side connections; it sizes its own open-file limit
/// from it): never below `max_streams` plus room. The server line has no `maxconn`, so
/// no queueing in front of the backend.
fn haproxy_maxconn(max_streams: usize) -> usize {
    (max_streams + 1000).max(4096)
}

/// nginx's `worker_connections` per worker: both sides of every stream could land on one
/// worker. `worker_rlimit_nofile` is set to the same.
fn nginx_connections(max_streams: usize) -> usize {
    (2 * max_streams + 1000).max(4096)
}

fn haproxy_config(listen: SocketAddr, backend: &str, threads: usize, max_streams: usize) -> String {
    let maxconn = haproxy_maxconn(max_streams);
    format!(
        "global\n\
         \x20   nbthread {threads}\n\
         \x20   maxconn {maxconn}\n\
         \x20   tune.idle-pool.shared off\n\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   option http-keep-alive\n\
         \x20   http-reuse always\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n\
         \x20   timeout http-keep-alive 60s\n\
         \n\
         frontend bench\n\
         \x20   bind {listen}\n\
         \x20   default_backend mock\n\
         \n\
         backend mock\n\
         \x20   server mock {backend} pool-max-conn {UPSTREAM_IDLE}\n"
    )
}

fn nginx_config(
    dir: &Path,
    listen: SocketAddr,
    backend: &str,
    workers: usize,
    max_streams: usize,
) -> String {
    let dir = dir.display();
    let connections = nginx_connections(max_streams);
    format!(
        "daemon off;\n\
         master_process on;\n\
         worker_processes {workers};\n\
         worker_rlimit_nofile {connections};\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/nginx-error.log warn;\n\
         \n\
         events {{\n\
         \x20   worker_connections {connections};\n\
         }}\n\
         \n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {dir}/client_body;\n\
         \x20   proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/uwsgi;\n\
         \x20   scgi_temp_path {dir}/scgi;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   keepalive_timeout 60s;\n\
         \n\
         \x20   upstream mock {{\n\
         \x20       server {backend};\n\
         \x20       keepalive {UPSTREAM_IDLE};\n\
         \x20       keepalive_requests 1000000;\n\
         \x20   }}\n\
         \n\
         \x20   server {{\n\
         \x20       listen {listen};\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://mock;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_buffering off;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n"
    )
}
