//! `hale serve`: wires the crates into one running gateway.
//!
//! Order of start-up: telemetry; the pod id; the metrics recorder; the health store with every
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
//! On SIGTERM or SIGINT the gateway starts draining: `/readyz` answers 503 at once, the
//! listener stops taking new connections, open requests get up to `server.shutdown_grace` to
//! finish, then the checks stop and the process exits 0.

use crate::config::LoadedConfig;
use crate::reload::Reloader;
use anyhow::Context as _;
use hale_api::{ApiState, install_metrics};
use hale_core::{HealthStore, Now};
use hale_probe::{ProbeClient, Scheduler};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Runs the gateway until a shutdown signal; returns when it has drained.
pub async fn run(loaded: LoadedConfig) -> anyhow::Result<()> {
    let started = Now::capture();
    let LoadedConfig {
        config,
        endpoints,
        file,
    } = loaded;
    let pod_id = crate::pod::resolve(&config.pod_id);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pod_id = %pod_id,
        endpoints = endpoints.len(),
        "starting hale"
    );

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
        },
    );

    let addr = config.server.listen_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding server.listen {addr}"))?;
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
    let reloader = Arc::new(Reloader::new(
        file,
        config.clone(),
        store.clone(),
        proxy,
        scheduler.clone(),
    ));
    let _reloads = tokio::spawn(reload_on_hangup(reloader.clone()));

    let grace = config.server.shutdown_grace;
    let state = ApiState::new(store, config.server, env!("CARGO_PKG_VERSION"), metrics)
        .with_started(started)
        .with_breakers(Arc::new(proxy))
        .with_model_stats(Arc::new(proxy))
        .with_admin(reloader);
    let state = match &coordinator {
        Some(c) => state.with_shared(Arc::new(c.clone())),
        None => state,
    };
    let app = hale_api::router(state.clone()).merge(proxy.router());

    let draining = state.clone();
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        draining.start_draining();
        tracing::info!(grace = %humantime::format_duration(grace), "shutdown signal: draining");
        let _ = drained_tx.send(());
    };
    // TCP_NODELAY on client connections: streamed chunks must not wait for Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let server = tokio::spawn(async move { server.await });

    // Once draining starts, in-flight requests get `shutdown_grace` to finish.
    let _ = drained_rx.await;
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => tracing::info!("drained"),
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error while draining"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!("shutdown grace period over with requests still open"),
    }
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

/// Re-reads the config on every SIGHUP, for as long as the gateway runs.
async fn reload_on_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /internal/reload");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            // The outcome is logged by the reload itself.
            let _ = reloader.apply_file("SIGHUP").await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloader;
        std::future::pending::<()>().await;
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
