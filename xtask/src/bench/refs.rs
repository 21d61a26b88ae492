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
//!
//! HAProxy also comes in a second variant, [`Haproxy::NoDelay`]: the same config with
//! `option http-no-delay` in `defaults`. By default HAProxy passes streamed chunks to the
//! client with `MSG_MORE`, so the kernel holds small chunks (LLM tokens) until the client's
//! ACK — the gap between tokens the streams table shows for it; `option http-no-delay` is how
//! an operator fronting LLM streams would turn that off. The streams scenario measures it
//! alongside plain HAProxy, so that Hale's CPU per chunk is also compared with an HAProxy
//! giving the same service: each token passed on as soon as it arrives.

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

/// Which HAProxy configuration: its defaults, or with `option http-no-delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Haproxy {
    /// Its defaults: streamed chunks go to the client with `MSG_MORE`.
    Plain,
    /// `option http-no-delay` in `defaults`: each chunk is sent at once.
    NoDelay,
}

impl Haproxy {
    /// The stem of its config and log file names in the run's directory.
    fn file_stem(self) -> &'static str {
        match self {
            Haproxy::Plain => "haproxy",
            Haproxy::NoDelay => "haproxy-no-delay",
        }
    }
}

/// Starts HAProxy, configured as `variant`, in front of `backend`; returns it and the
/// address it listens on. `max_streams`: the most concurrent streams it must carry uncapped
/// (0 for a few).
pub(crate) fn start_haproxy(
    dir: &Path,
    backend: &str,
    max_streams: usize,
    variant: Haproxy,
) -> anyhow::Result<(Server, SocketAddr)> {
    let listen = free_port()?;
    let stem = variant.file_stem();
    let config = dir.join(format!("{stem}.cfg"));
    std::fs::write(
        &config,
        haproxy_config(listen, backend, workers(), max_streams, variant),
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let mut command = Command::new("haproxy");
    // -db: stay in the foreground, no daemon and no master process, so the pid we hold is
    // the one process that serves.
    command.arg("-db").arg("-f").arg(&config);
    let mut server = Server::spawn("haproxy", command, &dir.join(format!("{stem}.log")))?;
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

fn haproxy_config(
    listen: SocketAddr,
    backend: &str,
    threads: usize,
    max_streams: usize,
    variant: Haproxy,
) -> String {
    let maxconn = haproxy_maxconn(max_streams);
    let no_delay = match variant {
        Haproxy::Plain => "",
        Haproxy::NoDelay => "    option http-no-delay\n",
    };
    format!(
        "global\n\
         \x20   nbthread {threads}\n\
         \x20   maxconn {maxconn}\n\
         \x20   tune.idle-pool.shared off\n\
         \n\
         defaults\n\
         \x20   mode http\n\
         \x20   option http-keep-alive\n\
         {no_delay}\
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `config`'s `defaults` section, indented as written.
    fn defaults(config: &str) -> Vec<&str> {
        config
            .lines()
            .skip_while(|l| *l != "defaults")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn only_the_no_delay_haproxy_has_http_no_delay_in_its_defaults() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let plain = haproxy_config(listen, "127.0.0.1:9000", 2, 1000, Haproxy::Plain);
        let no_delay = haproxy_config(listen, "127.0.0.1:9000", 2, 1000, Haproxy::NoDelay);
        assert!(!plain.contains("http-no-delay"), "{plain}");
        let d = defaults(&no_delay);
        assert!(d.contains(&"    option http-no-delay"), "{no_delay}");
        assert_eq!(no_delay.matches("http-no-delay").count(), 1, "{no_delay}");
        // Otherwise the very same config.
        assert_eq!(no_delay.replace("    option http-no-delay\n", ""), plain);
        assert_eq!(
            defaults(&plain),
            [
                "    mode http",
                "    option http-keep-alive",
                "    http-reuse always",
                "    timeout connect 2s",
                "    timeout client 60s",
                "    timeout server 60s",
                "    timeout http-keep-alive 60s",
            ]
        );
        assert!(plain.contains("    maxconn 4096\n"), "{plain}");
    }
}
