//! [`Proxy`]: the crate's public entry. It is built once from the health store, the `proxy:`
//! section and the parts of `server:` the proxy enforces ([`ServerSettings`]), and hands out
//! the axum [`Router`] of the proxy routes plus read accessors for the status pages (breaker
//! state and outlier detection per endpoint, requests per model).
//!
//! Everything a request needs is in one `Shared`, built up front: the table of per-endpoint
//! runtimes (in the order of the store's snapshot, so a snapshot index is a table index), the
//! selector, the pooled upstream client, the API keys, the request-id source and this
//! replica's `x-hale-pod` value. A gateway builds its proxy once and keeps it for the life of
//! the process, so `Shared` is leaked at construction and every request borrows it (and its
//! runtimes) as `&'static`: no reference count shared by all cores is touched per request.
//! `Proxy` is a `Copy` handle to it. (A test that builds many proxies leaks a few kilobytes
//! each, which is harmless.)
//!
//! Live reload: after the store took a new endpoint set ([`HealthStore::reconcile`]),
//! [`Proxy::reload`] builds a new table and swaps it in (`ArcSwap`, one load per request).
//! An endpoint whose entry did not change (same `Arc<Endpoint>`) keeps its runtime — breaker,
//! outstanding count, idle connections; a new or changed one gets a new runtime. Requests in
//! flight keep the runtime they claimed and finish on it. Runtimes are leaked like `Shared`
//! (a few hundred bytes per endpoint added or changed by a reload, an operator action) and
//! each has an id that is never reused, which the per-request exclusion set and the metrics
//! cells key on; a retired runtime's idle connections are closed at once, and any that
//! finishes later is closed by the sweeper. Between the store's swap and the proxy's, selection
//! finds runtimes by identity (it double-checks each against the snapshot entry, same
//! `Arc<Endpoint>`), so a request never reaches an endpoint through a stale runtime.
//!
//! Build it after the metrics recorder is installed: the per-endpoint duration histograms bind
//! to the recorder in place when they are made.

use crate::auth::ApiKeys;
use crate::config::{ProxyConfig, RetryOn};
use crate::hygiene::RequestIds;
use crate::metrics::RequestStats;
use crate::queue::{MAX_WAITING, Queue};
use crate::retry::Budget;
use crate::runtime::EndpointRuntime;
use crate::select::Selector;
use crate::upstream::Upstream;
use arc_swap::ArcSwap;
use axum::Router;
use hale_core::{BreakerState, Endpoint, HealthStore, Secret};
use http::HeaderValue;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The parts of `server:` the proxy enforces. (`ServerConfig` itself lives in hale-api, which
/// depends on this crate, so the binary passes these on.)
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `server.api_keys`: when not empty, proxy routes need one of them as a bearer token.
    pub api_keys: Vec<Secret>,
    /// `server.max_body` in bytes: the largest request body accepted.
    pub max_body: usize,
    /// `server.header_timeout`: the whole request body must also arrive within this time of
    /// the request's head, or the request is answered 408.
    pub body_timeout: Duration,
    /// How many threads serve client connections (see [`crate::worker`]): the per-thread
    /// state is sized for them.
    pub workers: usize,
}

impl Default for ServerSettings {
    /// No API keys, 10 MiB bodies within 10 s: the defaults of `server:`; one serving thread.
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            max_body: 10 * 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            workers: 1,
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
            .field("endpoints", &self.shared.table.load().runtimes.len())
            .field("balancer", &self.shared.selector)
            .field("api_keys", &self.shared.keys)
            .field("max_body", &self.shared.max_body)
            .finish_non_exhaustive()
    }
}

/// The runtimes of the endpoints configured now, in the store's snapshot order.
pub(crate) struct Table {
    pub runtimes: Box<[&'static EndpointRuntime]>,
    pub by_name: HashMap<Arc<str>, &'static EndpointRuntime>,
}

impl Table {
    fn new(runtimes: Vec<&'static EndpointRuntime>) -> Self {
        let by_name = runtimes
            .iter()
            .map(|rt| (rt.endpoint.name.clone(), *rt))
            .collect();
        Self {
            runtimes: runtimes.into_boxed_slice(),
            by_name,
        }
    }
}

/// Everything the request path reads, built once.
pub(crate) struct Shared {
    pub store: Arc<HealthStore>,
    pub table: ArcSwap<Table>,
    /// Every runtime ever made, by id (retired ones too, for the idle-connection sweeper and
    /// the metric labels); held while a reload builds the next table.
    all: Mutex<Vec<&'static EndpointRuntime>>,
    /// `proxy:` as built with, for the runtimes a reload makes (breaker, deadlines).
    config: ProxyConfig,
    /// Serving threads, for the per-thread state of new runtimes.
    workers: usize,
    pub selector: Selector,
    pub upstream: Upstream,
    pub keys: ApiKeys,
    pub max_body: usize,
    pub body_timeout: Duration,
    pub ids: RequestIds,
    pub pod: HeaderValue,
    pub stats: RequestStats,
    /// `proxy.retry_on`, `proxy.retry_budget`, `proxy.queue_timeout` (issue 12).
    pub retry_on: Box<[RetryOn]>,
    pub budget: Budget,
    pub queue: Queue,
    /// Response ids → the endpoint that made them (OpenAI's Responses API).
    pub responses: crate::responses::ResponseBook,
    /// The start time for the catalogs, as Unix seconds and RFC 3339.
    pub started_unix: u64,
    pub started_rfc3339: String,
    /// Whether the task closing expired idle connections runs (started by the first request,
    /// since building the proxy needs no runtime).
    sweeping: AtomicBool,
}

impl Shared {
    /// Requests in flight to any endpoint now (claims held, streams included): read only when
    /// a retry is considered, for the retry budget.
    pub fn in_flight(&self) -> usize {
        self.table
            .load()
            .runtimes
            .iter()
            .map(|rt| rt.outstanding())
            .sum()
    }

    /// Whether `proxy.retry_on` lists `what`.
    pub fn retries_on(&self, what: RetryOn) -> bool {
        self.retry_on.contains(&what)
    }

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
                let all = self
                    .all
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                for rt in all {
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
        let runtimes: Vec<&'static EndpointRuntime> = store
            .snapshot()
            .endpoints
            .iter()
            .enumerate()
            .map(|(id, s)| new_runtime(id, &s.endpoint, config, server.workers, &store))
            .collect();
        let names = runtimes.iter().map(|rt| rt.endpoint.name.clone()).collect();
        // A pod id is printable text; the fallback only keeps this total.
        let pod = HeaderValue::from_bytes(store.pod_id().as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        store.set_max_ejection(config.outlier.max_ejection);
        let now = SystemTime::now();
        let shared = Shared {
            all: Mutex::new(runtimes.clone()),
            table: ArcSwap::from_pointee(Table::new(runtimes)),
            config: config.clone(),
            workers: server.workers,
            selector: Selector::new(config.balancer),
            upstream: Upstream::new(config.connect_timeout, server.workers),
            keys: ApiKeys::new(&server.api_keys),
            max_body: server.max_body,
            body_timeout: server.body_timeout,
            ids: RequestIds,
            pod,
            stats: RequestStats::new(names),
            retry_on: config.retry_on.clone().into_boxed_slice(),
            budget: Budget::new(config.retry_budget),
            queue: Queue::new(config.queue_timeout, MAX_WAITING),
            responses: Default::default(),
            started_unix: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            started_rfc3339: humantime::format_rfc3339_seconds(now).to_string(),
            sweeping: AtomicBool::new(false),
            store,
        };
        Self {
            shared: Box::leak(Box::new(shared)),
        }
    }

    /// Follows the store's current endpoint set after a config reload; see the module docs.
    /// Returns how many runtimes were made anew.
    pub fn reload(&self) -> usize {
        let shared = self.shared;
        let mut all = shared.all.lock().unwrap_or_else(PoisonError::into_inner);
        let old = shared.table.load_full();
        let mut made = 0;
        let runtimes: Vec<&'static EndpointRuntime> = shared
            .store
            .snapshot()
            .endpoints
            .iter()
            .map(|s| {
                match old
                    .by_name
                    .get(&s.endpoint.name)
                    .filter(|rt| Arc::ptr_eq(&rt.endpoint, &s.endpoint))
                {
                    Some(rt) => *rt,
                    None => {
                        made += 1;
                        let rt = new_runtime(
                            all.len(),
                            &s.endpoint,
                            &shared.config,
                            shared.workers,
                            &shared.store,
                        );
                        all.push(rt);
                        rt
                    }
                }
            })
            .collect();
        let table = Table::new(runtimes);
        for rt in old.runtimes.iter() {
            let kept = table
                .by_name
                .get(&rt.endpoint.name)
                .is_some_and(|new| std::ptr::eq(*new, *rt));
            if !kept {
                rt.dest.pool.clear();
            }
        }
        shared
            .stats
            .set_endpoints(all.iter().map(|rt| rt.endpoint.name.clone()).collect());
        shared.table.store(Arc::new(table));
        made
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

    /// Retry figures for `model` (`:latest` implied) since start.
    pub fn retry_figures(&self, model: &str) -> crate::metrics::RetryFigures {
        self.shared.stats.retry_figures(model)
    }

    /// Requests in flight to `endpoint` (sent, answer not finished); 0 for an unknown one.
    pub fn outstanding(&self, endpoint: &str) -> usize {
        self.runtime(endpoint).map_or(0, |rt| rt.outstanding())
    }

    /// What outlier detection on this replica shows for `endpoint`; `None` for an unknown
    /// one.
    pub fn outlier(&self, endpoint: &str) -> Option<hale_core::OutlierStats> {
        self.runtime(endpoint).map(|rt| rt.outlier_stats())
    }

    fn runtime(&self, endpoint: &str) -> Option<&'static EndpointRuntime> {
        self.shared.table.load().by_name.get(endpoint).copied()
    }
}

/// A runtime for `endpoint`, leaked (see the module docs).
fn new_runtime(
    id: usize,
    endpoint: &Arc<Endpoint>,
    config: &ProxyConfig,
    workers: usize,
    store: &Arc<HealthStore>,
) -> &'static EndpointRuntime {
    let rt = EndpointRuntime::new(id, endpoint.clone(), config, workers).with_store(store);
    if !rt.usable() {
        tracing::warn!(
            endpoint = rt.name(),
            "the endpoint URL names no http(s) host; it gets no traffic"
        );
    }
    Box::leak(Box::new(rt))
}
