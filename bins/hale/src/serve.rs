//! `hale serve`: wires the crates into one running gateway.
//!
//! Order of start-up: telemetry; the pod id; the open-file soft limit raised to the hard
//! limit (logged at INFO, see [`hale_api::fds`]); the metrics recorder; the health store with every
//! configured endpoint `unknown`; the listener (so `/livez` answers while the first sweep runs
//! and `/readyz` says 503 until it is in); then the scheduler. With `shared.enabled`, coord
//! starts with the store (Redis is reached in the background, never required to start), the
//! scheduler asks it before each check, and it releases its leases after the checks stop.
//! Once bound, the address is
//! printed on stdout as `hale listening on <addr>` so scripts and tests can find a port chosen
//! with `:0`. Logs go to stderr.
//!
//! SIGHUP (and `POST /internal/reload`) re-reads the config file and applies its endpoints
//! without a restart; see [`crate::reload`].
//!
//! The listener is [`hale_api::Server`]: it enforces `server.header_timeout`,
//! `server.idle_timeout` and the request head size limits (see [`hale_api::server`]), and
//! hands each connection to one of the serving threads ([`crate::workers`]).
//!
//! On SIGTERM or SIGINT, in this order:
//! 1. `/readyz` (and `/health/readiness`) answers 503 `draining` at once, and one INFO line
//!    `shutdown signal: draining` gives the number of requests in flight.
//! 2. The listener stays open and keeps answering (DESIGN §6: the load balancer may still
//!    send work until it has seen the 503), but every HTTP/1 response from now on carries
//!    `Connection: close`, idle keep-alive connections are closed, and HTTP/2 connections get
//!    GOAWAY, so clients move to other replicas.
//! 3. The process waits until no request has been in flight for 100 ms (a request counts from
//!    its head until its response body has ended, so streams finish), or until
//!    `server.shutdown_grace` is over, whichever comes first; one INFO line `drained` (or a
//!    WARN line with the requests cut) says which. A second signal ends the wait at once.
//! 4. The listener and every connection are closed, the checks stop, coord gives back its
//!    leases in Redis, `stopped` is logged and the process exits 0.

use crate::config::LoadedConfig;
use crate::reload::Reloader;
use crate::workers::Workers;
use anyhow::Context as _;
use hale_api::{ApiState, Limits, Server, install_metrics};
use hale_core::{HealthStore, Now};
use hale_probe::{ProbeClient, Scheduler};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Runs the gateway, serving connections on `threads` threads (the caller's, on a
/// current-thread runtime, and `threads - 1` more; see [`crate::workers`]), until a shutdown
/// signal; returns when it has drained.
pub async fn run(loaded: LoadedConfig, threads: usize) -> anyhow::Result<()> {
    let started = Now::capture();
    let mut signals = ShutdownSignals::install()?;
    let hangups = Hangups::install()?;
    let LoadedConfig {
        config,
        endpoints,
        file,
        ..
    } = loaded;
    let pod_id = crate::pod::resolve(&config.pod_id);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pod_id = %pod_id,
        endpoints = endpoints.len(),
        threads,
        "starting hale"
    );
    // Two descriptors per stream (client and backend): the usual soft limit of 1,024 would
    // cap a replica near 500 streams.
    match hale_api::fds::raise_nofile_limit() {
        Ok(l) => tracing::info!(
            soft = l.now,
            hard = l.hard,
            was = l.before,
            "open-file limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit (RLIMIT_NOFILE)"),
    }
    let workers = Workers::start(threads)?;

    let metrics = install_metrics().context("installing the metrics recorder")?;
    let _upkeep = metrics.spawn_upkeep(Duration::from_secs(10));
    let store = Arc::new(HealthStore::new(
        pod_id.as_str(),
        endpoints,
        &config.health,
        started,
    ));
    // Shared mode: coord attaches to the store and reaches Redis in the background; with
    // Redis down the gateway starts anyway and checks locally.
    let coordinator = match config.shared.enabled {
        true => Some(hale_coord::Coordinator::start(
            &config.shared,
            &pod_id,
            &store,
        )?),
        false => None,
    };
    // After the recorder (its histograms bind to it) and the store (it routes on its snapshot).
    let proxy = hale_proxy::Proxy::new(
        store.clone(),
        &config.proxy,
        hale_proxy::ServerSettings {
            api_keys: config.server.api_keys.clone(),
            max_body: usize::try_from(config.server.max_body.as_u64()).unwrap_or(usize::MAX),
            body_timeout: config.server.header_timeout,
            workers: threads,
        },
    );

    let addr = config.server.listen_addr()?;
    let listener =
        hale_api::server::bind(addr).with_context(|| format!("binding server.listen {addr}"))?;
    let local = listener.local_addr()?;
    announce(local);
    tracing::info!(addr = %local, "listening");

    let probes = ProbeClient::new().with_pod_id(&pod_id);
    let scheduler = Scheduler::new(store.clone(), probes, config.health.background);
    let scheduler = Arc::new(
        match &coordinator {
            Some(c) => scheduler.with_coordination(Arc::new(c.clone())),
            None => scheduler,
        }
        .spawn(),
    );
    let reloader = Arc::new(
        Reloader::new(
            file,
            config.clone(),
            store.clone(),
            proxy.clone(),
            scheduler.clone(),
        )
        .with_metrics(metrics.clone()),
    );
    let _reloads = tokio::spawn(reload_on_hangup(reloader.clone(), hangups));

    let grace = config.server.shutdown_grace;
    let limits = Limits::from_config(&config.server);
    let state = ApiState::new(store, config.server, env!("CARGO_PKG_VERSION"), metrics)
        .with_started(started)
        .with_breakers(Arc::new(proxy.clone()))
        .with_model_stats(Arc::new(proxy.clone()))
        .with_admin(reloader);
    let state = match &coordinator {
        Some(c) => state.with_shared(Arc::new(c.clone())),
        None => state,
    };
    let app = hale_api::router(state.clone()).merge(proxy.router());
    let server = Server::new(listener, app, limits)
        .with_workers(workers.handles())
        .spawn();

    signals.recv().await;
    state.start_draining();
    let in_flight = server.start_draining();
    tracing::info!(
        in_flight,
        grace = %humantime::format_duration(grace),
        "shutdown signal: draining"
    );
    let draining_since = tokio::time::Instant::now();
    tokio::select! {
        drained = tokio::time::timeout(grace, server.drained()) => match drained {
            Ok(()) => tracing::info!(
                after_ms = draining_since.elapsed().as_millis(),
                "drained: no request in flight"
            ),
            Err(_) => tracing::warn!(
                in_flight = server.in_flight(),
                "shutdown grace period over with requests still in flight; closing them"
            ),
        },
        () = signals.recv() => tracing::warn!(
            in_flight = server.in_flight(),
            "second shutdown signal: closing without waiting for the drain"
        ),
    }
    server.stop().await;
    workers.stop();
    scheduler.shutdown().await;
    if let Some(c) = &coordinator {
        c.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Prints the listening line on stdout (logs go to stderr) and flushes it.
fn announce(addr: std::net::SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "hale listening on {addr}");
    let _ = out.flush();
}

/// Re-reads the config on every SIGHUP, for as long as the gateway runs. The handler is
/// installed at start-up (see [`Hangups`]), so a SIGHUP never takes its default action (an
/// exit).
async fn reload_on_hangup(reloader: Arc<Reloader>, mut hangups: Hangups) {
    while hangups.recv().await {
        // The outcome is logged by the reload itself.
        let _ = reloader.apply_file("SIGHUP").await;
    }
}

/// SIGHUP, listened for from start-up on.
struct Hangups {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Hangups {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                hup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next SIGHUP; false once no more can come.
    async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        {
            self.hup.recv().await.is_some()
        }
        #[cfg(not(unix))]
        {
            std::future::pending::<bool>().await
        }
    }
}

/// SIGTERM and SIGINT, listened for from start-up on: installed before the listening line is
/// printed, so a signal at any moment after it drains instead of taking the default action
/// (an abrupt exit).
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => {}
                _ = self.int.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
