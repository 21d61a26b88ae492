//! [`Proxy`]: the crate's public entry. It is built once from the health store, the `proxy:`
//! section and the parts of `server:` the proxy enforces ([`ServerSettings`]), and hands out
//! the axum [`Router`] of the proxy routes plus read accessors for the status pages (breaker
//! state per endpoint, requests per model).
//!
//! Everything a request needs is in one `Shared`, built up front: the per-endpoint runtimes in
//! configuration order (the same order as the store's snapshot, so a snapshot index is a
//! runtime index), the selector, the pooled upstream client, the API keys, the request-id
//! source and this replica's `x-hale-pod` value. A gateway builds its proxy once and keeps it
//! for the life of the process, so `Shared` is leaked at construction and every request
//! borrows it (and its runtimes) as `&'static`: no reference count shared by all cores is
//! touched per request. `Proxy` is a `Copy` handle to it. (A test that builds many proxies
//! leaks a few kilobytes each, which is harmless.)
//!
//! The proxy serves the endpoints the store held when it was built; the store never adds or
//! removes endpoints during its life, and selection double-checks each runtime against the
//! snapshot entry (same `Arc<Endpoint>`) before using it.
//!
//! Build it after the metrics recorder is installed: the per-endpoint duration histograms bind
//! to the recorder in place when they are made.

use crate::auth::ApiKeys;
use crate::config::ProxyConfig;
use crate::hygiene::RequestIds;
use crate::metrics::RequestStats;
use crate::runtime::EndpointRuntime;
use crate::select::Selector;
use crate::upstream::Upstream;
use axum::Router;
use hale_core::{BreakerState, HealthStore, Secret};
use http::HeaderValue;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The parts of `server:` the proxy enforces. (`ServerConfig` itself lives in hale-api, which
/// depends on this crate, so the binary passes these on.)
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `server.api_keys`: when not empty, proxy routes need one of them as a bearer token.
    pub api_keys: Vec<Secret>,
    /// `server.max_body` in bytes: the largest request body accepted.
    pub max_body: usize,
}

impl Default for ServerSettings {
    /// No API keys, 10 MiB bodies: the defaults of `server:`.
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            max_body: 10 * 1024 * 1024,
        }
    }
}

/// The proxy; see the module docs.
#[derive(Clone, Copy)]
pub struct Proxy {
    shared: &'static Shared,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("endpoints", &self.shared.runtimes.len())
            .field("balancer", &self.shared.selector)
            .field("api_keys", &self.shared.keys)
            .field("max_body", &self.shared.max_body)
            .finish_non_exhaustive()
    }
}

/// Everything the request path reads, built once.
pub(crate) struct Shared {
    pub store: Arc<HealthStore>,
    pub runtimes: Box<[EndpointRuntime]>,
    pub by_name: HashMap<Arc<str>, usize>,
    pub selector: Selector,
    pub upstream: Upstream,
    pub keys: ApiKeys,
    pub max_body: usize,
    pub ids: RequestIds,
    pub pod: HeaderValue,
    pub stats: RequestStats,
    /// The start time for the catalogs, as Unix seconds and RFC 3339.
    pub started_unix: u64,
    pub started_rfc3339: String,
    /// Whether the task closing expired idle connections runs (started by the first request,
    /// since building the proxy needs no runtime).
    sweeping: AtomicBool,
}

impl Shared {
    /// Starts, once, the task that closes idle upstream connections past their timeout, so an
    /// endpoint that stops getting traffic does not keep sockets open.
    pub fn ensure_sweeper(&'static self) {
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::upstream::pool::IDLE_TIMEOUT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = Instant::now();
                for rt in self.runtimes.iter() {
                    rt.dest.pool.close_expired(now);
                }
            }
        });
    }
}

impl Proxy {
    /// Builds the proxy for the endpoints in `store`. Needs no runtime; the first request
    /// opens the first upstream connection.
    pub fn new(store: Arc<HealthStore>, config: &ProxyConfig, server: ServerSettings) -> Self {
        let snapshot = store.snapshot();
        let runtimes: Box<[EndpointRuntime]> = snapshot
            .endpoints
            .iter()
            .map(|s| EndpointRuntime::new(s.endpoint.clone(), &config.breaker))
            .collect();
        for rt in runtimes.iter() {
            if !rt.usable() {
                tracing::warn!(
                    endpoint = rt.name(),
                    "the endpoint URL names no http(s) host; it gets no traffic"
                );
            }
        }
        let by_name = runtimes
            .iter()
            .enumerate()
            .map(|(i, rt)| (rt.endpoint.name.clone(), i))
            .collect();
        let names = runtimes.iter().map(|rt| rt.endpoint.name.clone()).collect();
        // A pod id is printable text; the fallback only keeps this total.
        let pod = HeaderValue::from_bytes(store.pod_id().as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        let now = SystemTime::now();
        let shared = Shared {
            runtimes,
            by_name,
            selector: Selector::new(config.balancer),
            upstream: Upstream::new(config.connect_timeout),
            keys: ApiKeys::new(&server.api_keys),
            max_body: server.max_body,
            ids: RequestIds,
            pod,
            stats: RequestStats::new(names),
            started_unix: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            started_rfc3339: humantime::format_rfc3339_seconds(now).to_string(),
            sweeping: AtomicBool::new(false),
            store,
        };
        Self {
            shared: Box::leak(Box::new(shared)),
        }
    }

    /// The proxy routes — `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
    /// `/api/chat`, `/api/generate`, `/api/embed`, `GET /v1/models`, `/api/tags` — with JSON
    /// 405s for wrong methods and a JSON 404 fallback for every other path; merge it with the
    /// api router, which sets no fallback of its own.
    pub fn router(&self) -> Router {
        crate::router::router(self.shared)
    }

    /// The request-path breaker of `endpoint` now; an unknown endpoint reads closed.
    pub fn breaker_state(&self, endpoint: &str) -> BreakerState {
        self.runtime(endpoint)
            .map_or(BreakerState::Closed, |rt| rt.breaker_state(Instant::now()))
    }

    /// Requests for `model` (`:latest` implied) a backend answered since start.
    pub fn requests_total(&self, model: &str) -> u64 {
        self.shared.stats.requests_total(model)
    }

    /// Requests in flight to `endpoint` (sent, answer not finished); 0 for an unknown one.
    pub fn outstanding(&self, endpoint: &str) -> usize {
        self.runtime(endpoint).map_or(0, |rt| rt.outstanding())
    }

    fn runtime(&self, endpoint: &str) -> Option<&'static EndpointRuntime> {
        self.shared
            .by_name
            .get(endpoint)
            .and_then(|&i| self.shared.runtimes.get(i))
    }
}
