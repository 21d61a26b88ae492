//! [`Proxy`]: the crate's public entry. It is built once from the health store, the `proxy:`
//! section and the parts of `server:` the proxy enforces ([`ServerSettings`]), and hands out
//! the axum [`Router`] of the proxy routes plus read accessors for the status pages (breaker
//! state and outlier detection per endpoint, requests per model).
//!
//! Everything a request needs is in one `Shared`, built up front: the table of per-endpoint
//! runtimes (in the order of the store's snapshot, so a snapshot index is a table index), the
//! selector, the pooled upstream client, the API keys, the request-id source and this
//! replica's `x-hale-pod` value. `Proxy` is a cheap handle to it (an `Arc`); the router holds
//! one more, and each request clones it once (its count sits on a cache line of its own,
//! see `Shared`'s alignment). Nothing is leaked: a proxy that is dropped with its router
//! frees everything, and the idle-connection sweeper holds only a `Weak` and stops.
//!
//! Live reload: after the store took a new endpoint set ([`HealthStore::reconcile`]),
//! [`Proxy::reload`] builds a new table and swaps it in (`ArcSwap`, one load per request).
//! An endpoint whose entry did not change (same `Arc<Endpoint>`) keeps its runtime — breaker,
//! outstanding count, idle connections; a new or changed one gets a new runtime. Requests in
//! flight keep the runtime they claimed (their [`Claim`](crate::runtime::Claim) holds an
//! `Arc`) and finish on it. The lifetime of per-endpoint state is therefore: a runtime lives
//! while the routing table lists it or a request holds it, and is freed when both are gone —
//! with its breaker, outlier detector, prepared headers, connection pools, and the metric
//! handles it keeps (its duration histogram, its status-200 counters). A retired runtime's
//! idle connections are closed at once, and any that finishes later is closed by the sweeper
//! (which sees retired runtimes through `Weak`s, pruned as they die). Each runtime has an id
//! that is never reused, which only the per-request exclusion set keys on (that set is sized
//! by what the request tried, not by the ids). [`Proxy::live_runtimes`] and the gauge
//! `hale_proxy_endpoint_runtimes` count the runtimes alive. Between the store's swap and the
//! proxy's, selection finds runtimes by identity (it double-checks each against the snapshot
//! entry, same `Arc<Endpoint>`), so a request never reaches an endpoint through a stale
//! runtime.
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
use std::sync::{Arc, Mutex, PoisonError, Weak};
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
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
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
    pub runtimes: Box<[Arc<EndpointRuntime>]>,
    pub by_name: HashMap<Arc<str>, Arc<EndpointRuntime>>,
}

impl Table {
    fn new(runtimes: Vec<Arc<EndpointRuntime>>) -> Self {
        let by_name = runtimes
            .iter()
            .map(|rt| (rt.endpoint.name.clone(), rt.clone()))
            .collect();
        Self {
            runtimes: runtimes.into_boxed_slice(),
            by_name,
        }
    }
}

/// Everything the request path reads, built once. Aligned so that the `Arc`'s reference
/// count, which every request touches, does not share a cache line with these fields.
#[repr(align(128))]
pub(crate) struct Shared {
    pub store: Arc<HealthStore>,
    pub table: ArcSwap<Table>,
    /// Every runtime that may still be alive (retired ones too, for the idle-connection
    /// sweeper), pruned of dead ones at every reload and sweep; held while a reload builds
    /// the next table.
    all: Mutex<Vec<Weak<EndpointRuntime>>>,
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
    /// endpoint that stops getting traffic does not keep sockets open. It holds the proxy
    /// only through a `Weak` and ends when the proxy is gone.
    pub fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::upstream::pool::IDLE_TIMEOUT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let now = Instant::now();
                for rt in shared.alive() {
                    rt.dest.pool.close_expired(now);
                }
            }
        });
    }

    /// The runtimes alive now (listed or still finishing requests); prunes the dead.
    fn alive(&self) -> Vec<Arc<EndpointRuntime>> {
        let mut all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        prune(&mut all)
    }
}

/// Drops the dead entries of `all` and returns the living runtimes.
fn prune(all: &mut Vec<Weak<EndpointRuntime>>) -> Vec<Arc<EndpointRuntime>> {
    let mut alive = Vec::with_capacity(all.len());
    all.retain(|w| match w.upgrade() {
        Some(rt) => {
            alive.push(rt);
            true
        }
        None => false,
    });
    alive
}

impl Proxy {
    /// Builds the proxy for the endpoints in `store`. Needs no runtime; the first request
    /// opens the first upstream connection.
    pub fn new(store: Arc<HealthStore>, config: &ProxyConfig, server: ServerSettings) -> Self {
        let runtimes: Vec<Arc<EndpointRuntime>> = store
            .snapshot()
            .endpoints
            .iter()
            .map(|s| new_runtime(&s.endpoint, config, server.workers, &store))
            .collect();
        // A pod id is printable text; the fallback only keeps this total.
        let pod = HeaderValue::from_bytes(store.pod_id().as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        store.set_max_ejection(config.outlier.max_ejection);
        let now = SystemTime::now();
        let shared = Shared {
            all: Mutex::new(runtimes.iter().map(Arc::downgrade).collect()),
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
            stats: RequestStats::new(),
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
            shared: Arc::new(shared),
        }
    }

    /// Follows the store's current endpoint set after a config reload; see the module docs.
    /// Returns how many runtimes were made anew.
    pub fn reload(&self) -> usize {
        let shared = &*self.shared;
        let mut all = shared.all.lock().unwrap_or_else(PoisonError::into_inner);
        let old = shared.table.load_full();
        let mut made = 0;
        let runtimes: Vec<Arc<EndpointRuntime>> = shared
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
                    Some(rt) => rt.clone(),
                    None => {
                        made += 1;
                        let rt =
                            new_runtime(&s.endpoint, &shared.config, shared.workers, &shared.store);
                        all.push(Arc::downgrade(&rt));
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
                .is_some_and(|new| Arc::ptr_eq(new, rt));
            if !kept {
                rt.dest.pool.clear();
            }
        }
        shared.table.store(Arc::new(table));
        drop(old);
        // Retired runtimes no request holds are freed by now; forget them.
        prune(&mut all);
        made
    }

    /// Per-endpoint runtimes alive now: the routing table's, plus retired ones whose last
    /// request has not ended yet (see the module docs). Flat across reloads once those end.
    pub fn live_runtimes(&self) -> usize {
        self.shared.alive().len()
    }

    /// The proxy routes — `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
    /// `/api/chat`, `/api/generate`, `/api/embed`, `GET /v1/models`, `/api/tags` — with JSON
    /// 405s for wrong methods and a JSON 404 fallback for every other path; merge it with the
    /// api router, which sets no fallback of its own.
    pub fn router(&self) -> Router {
        crate::router::router(self.shared.clone())
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

    fn runtime(&self, endpoint: &str) -> Option<Arc<EndpointRuntime>> {
        self.shared.table.load().by_name.get(endpoint).cloned()
    }
}

/// A new runtime for `endpoint` (see the module docs).
fn new_runtime(
    endpoint: &Arc<Endpoint>,
    config: &ProxyConfig,
    workers: usize,
    store: &Arc<HealthStore>,
) -> Arc<EndpointRuntime> {
    let rt = EndpointRuntime::new(endpoint.clone(), config, workers, store);
    if !rt.usable() {
        tracing::warn!(
            endpoint = rt.name(),
            "the endpoint URL names no http(s) host; it gets no traffic"
        );
    }
    Arc::new(rt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_core::{EndpointConfig, EndpointKind, HealthConfig, Now};

    fn endpoint(name: &str, weight: f64) -> Endpoint {
        let mut c = EndpointConfig::new(name, "http://127.0.0.1:9", EndpointKind::Vllm);
        c.weight = weight;
        c.models = vec!["m".into()];
        c.resolve("e").unwrap()
    }

    fn proxy(endpoints: Vec<Endpoint>) -> (Arc<HealthStore>, Proxy) {
        let health = HealthConfig {
            background: false,
            ..Default::default()
        };
        let store = Arc::new(HealthStore::new("pod", endpoints, &health, Now::capture()));
        let proxy = Proxy::new(
            store.clone(),
            &ProxyConfig::default(),
            ServerSettings::default(),
        );
        (store, proxy)
    }

    #[tokio::test]
    async fn a_removed_endpoints_runtime_lives_until_its_last_request_ends() {
        let (store, proxy) = proxy(vec![endpoint("a", 1.0), endpoint("b", 1.0)]);
        let b = proxy.runtime("b").unwrap();
        let weak_b = Arc::downgrade(&b);
        let claim = b.try_claim(false, Instant::now()).unwrap();
        drop(b);
        assert_eq!(proxy.live_runtimes(), 2);

        // b is removed while its request is in flight: the claim keeps its runtime.
        store.reconcile(vec![endpoint("a", 1.0)], Now::capture());
        assert_eq!(proxy.reload(), 0, "a is unchanged, nothing new");
        assert!(proxy.runtime("b").is_none());
        let held = weak_b.upgrade().unwrap();
        assert_eq!(held.outstanding(), 1);
        assert_eq!(
            Arc::strong_count(&held),
            2,
            "only the claim (and this probe) hold it"
        );
        drop(held);
        assert_eq!(proxy.live_runtimes(), 2, "a, and b finishing its request");

        // The request ends: b is freed, and the count is back to the table's.
        drop(claim);
        assert!(weak_b.upgrade().is_none(), "freed with its last claim");
        assert_eq!(proxy.live_runtimes(), 1);
    }

    #[tokio::test]
    async fn many_reloads_keep_the_live_runtimes_flat() {
        let (store, proxy) = proxy(vec![endpoint("a", 1.0), endpoint("x0", 1.0)]);
        let first_a = Arc::downgrade(&proxy.runtime("a").unwrap());
        for i in 1..=300 {
            // A weight change (a new runtime for a), one endpoint added, one removed.
            let weight = 1.0 + f64::from(i % 7);
            store.reconcile(
                vec![endpoint("a", weight), endpoint(&format!("x{i}"), 1.0)],
                Now::capture(),
            );
            proxy.reload();
            assert_eq!(proxy.live_runtimes(), 2, "after reload {i}");
        }
        assert!(first_a.upgrade().is_none(), "a's first runtime was freed");
        assert_eq!(
            proxy.shared.all.lock().unwrap().len(),
            2,
            "no dead entries kept"
        );
        // The last ids are far past 64, and selection still excludes by them.
        let a = proxy.runtime("a").unwrap();
        assert!(a.id >= 300, "ids are never reused: {}", a.id);
        let mut excluded = crate::select::Excluded::default();
        excluded.insert(a.id);
        assert!(excluded.contains(a.id));
    }

    #[tokio::test]
    async fn a_dropped_proxy_frees_everything() {
        let (_store, proxy) = proxy(vec![endpoint("a", 1.0)]);
        let router = proxy.router();
        let weak = Arc::downgrade(&proxy.shared);
        let rt = Arc::downgrade(&proxy.runtime("a").unwrap());
        drop(proxy);
        assert!(weak.upgrade().is_some(), "the router still holds it");
        drop(router);
        assert!(weak.upgrade().is_none() && rt.upgrade().is_none());
    }
}
