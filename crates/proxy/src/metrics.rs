//! The proxy's own series (names fixed by DESIGN §5; hale-api describes them and serves
//! `/metrics`) and the per-model request counts behind `requests_total` in
//! `/internal/stats/models`.
//!
//! - `hale_proxy_requests_total{model,endpoint,status}`: every answer on a generation route,
//!   the backend's or Hale's own, including a backend's answer that a retry replaced (so a
//!   retried request counts once per endpoint that answered it). `model` is the requested name when some endpoint serves it
//!   and empty otherwise, so a client sending made-up model names cannot grow the label
//!   space; `endpoint` is empty when Hale answered itself, except for the 502 and 504 that
//!   report an endpoint's failure (dropped request, malformed answer, first-byte timeout),
//!   which name it.
//! - `hale_proxy_request_duration_seconds{endpoint}`: from the request's arrival to the last
//!   byte of the backend's answer (streams included).
//! - `hale_proxy_retries_total{endpoint,reason}`: requests sent once more to another endpoint
//!   after `endpoint` failed them, by `reason`: `connect_failure` (nothing was sent), the
//!   status it answered (`429`, `502`, `503`, `504`, or another configured 5xx) or
//!   `first_byte_timeout` (see `proxy.retry_on`). One series name with the endpoint label it
//!   always had, so existing dashboards keep working and `sum by (reason)` gives DESIGN's
//!   `proxy_retries_total{reason}`.
//!
//! Per model, for `retry` in `/internal/stats/models`: retries made and retries refused because
//! the retry budget was spent ([`RequestStats::retry_figures`]).
//!
//! - `hale_outlier_ejections_total{endpoint,signal}`: ejections this replica made from its
//!   traffic; `signal` is `consecutive_5xx`, `consecutive_reset`, `consecutive_timeout` or
//!   `failure_rate` ([`hale_core::Trigger::label`]).
//! - `hale_outlier_ejections_withheld_total{endpoint}`: ejections refused because they would
//!   leave too few of a model's endpoints (`proxy.outlier.max_ejection_percent`).
//!
//! - `hale_proxy_endpoint_runtimes`: per-endpoint runtimes alive now — the endpoints in the
//!   routing table plus retired ones still finishing requests. Flat across reloads; a number
//!   that only grows is a leak.
//!
//! The common case — a 200 for a model seen before — touches no lock and allocates nothing:
//! the counter handles for status 200 are made once per model and endpoint and kept in a
//! copy-on-write map owned by the endpoint's runtime ([`EndpointCounters`], one `ArcSwap` load
//! per request), so they go when the runtime goes; any other status goes through the
//! `metrics` macros, which is fine for the rare path. Handles bind to the recorder installed
//! when they are made, so the binary installs its recorder before building the proxy. The
//! per-model count for the stats page is sharded by thread ([`Sharded`]), so counting does not
//! bounce one cache line between cores on every request.

use arc_swap::ArcSwap;
use hale_core::same_model;
use http::StatusCode;
use metrics::Counter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

pub const REQUESTS_TOTAL: &str = "hale_proxy_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "hale_proxy_request_duration_seconds";
pub const RETRIES_TOTAL: &str = "hale_proxy_retries_total";
pub const OUTLIER_EJECTIONS_TOTAL: &str = "hale_outlier_ejections_total";
pub const OUTLIER_WITHHELD_TOTAL: &str = "hale_outlier_ejections_withheld_total";
pub const ENDPOINT_RUNTIMES: &str = "hale_proxy_endpoint_runtimes";

/// Past this many distinct model names the per-model map stops growing; later names are
/// still counted in Prometheus, through the slow path.
const MAX_MODELS: usize = 4096;

/// Per-model counters; see the module docs.
#[derive(Debug, Default)]
pub struct RequestStats {
    models: ArcSwap<HashMap<Box<str>, ModelCells>>,
    grow: Mutex<()>,
}

/// One endpoint's status-200 counters by model (see the module docs); owned by its runtime.
#[derive(Debug)]
pub struct EndpointCounters {
    name: Arc<str>,
    ok: ArcSwap<HashMap<Arc<str>, Counter>>,
    grow: Mutex<()>,
}

impl EndpointCounters {
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            ok: ArcSwap::from_pointee(HashMap::new()),
            grow: Mutex::new(()),
        }
    }

    /// The endpoint's name, the `endpoint` label.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Counts one 200 for `model` (a label [`RequestStats`] already bounded).
    fn ok(&self, model: &Arc<str>) {
        if let Some(c) = self.ok.load().get(model) {
            c.increment(1);
            return;
        }
        let _grow = self.grow.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.ok.load_full();
        let counter = match current.get(model) {
            Some(c) => c.clone(),
            None => {
                let c = metrics::counter!(
                    REQUESTS_TOTAL,
                    "model" => model.clone(),
                    "endpoint" => self.name.clone(),
                    "status" => "200"
                );
                let mut next = HashMap::clone(&current);
                next.insert(model.clone(), c.clone());
                self.ok.store(Arc::new(next));
                c
            }
        };
        counter.increment(1);
    }
}

#[derive(Debug, Clone)]
struct ModelCells {
    label: Arc<str>,
    forwarded: Arc<Sharded>,
    /// Retries made for this model, and retries the budget refused.
    retries: Arc<Sharded>,
    budget_exhausted: Arc<Sharded>,
}

/// A model's retry figures, for `/internal/stats/models`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryFigures {
    /// Requests sent once more to another endpoint.
    pub retries: u64,
    /// Retries not made because the retry budget was spent.
    pub budget_exhausted: u64,
}

impl RequestStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// A backend (`endpoint`) answered a request for `model`.
    pub fn answered(&self, model: &str, endpoint: &EndpointCounters, status: StatusCode) {
        let recorded = {
            let map = self.models.load();
            map.get(model).map(|cells| {
                cells.forwarded.add(1);
                if status == StatusCode::OK {
                    endpoint.ok(&cells.label);
                } else {
                    self.slow(cells.label.clone(), &endpoint.name, status);
                }
            })
        };
        if recorded.is_none() {
            match self.insert(model) {
                Some(cells) => {
                    cells.forwarded.add(1);
                    self.slow(cells.label, &endpoint.name, status);
                }
                None => self.slow(Arc::from(model), &endpoint.name, status),
            }
        }
    }

    /// Hale answered itself. `served_model` is the model when some endpoint serves it;
    /// `endpoint` the endpoint whose failure the answer reports.
    pub fn refused(
        &self,
        served_model: Option<&str>,
        endpoint: Option<&Arc<str>>,
        status: StatusCode,
    ) {
        let model: Arc<str> = served_model.map_or_else(|| Arc::from(""), Arc::from);
        let endpoint = endpoint.cloned().unwrap_or_else(|| Arc::from(""));
        metrics::counter!(
            REQUESTS_TOTAL,
            "model" => model,
            "endpoint" => endpoint,
            "status" => status.as_str().to_owned()
        )
        .increment(1);
    }

    /// A request for `model` moved on after `endpoint` failed it for `reason` (a
    /// `proxy.retry_on` label).
    pub fn retried(&self, model: &str, endpoint: &Arc<str>, reason: &'static str) {
        metrics::counter!(RETRIES_TOTAL, "endpoint" => endpoint.clone(), "reason" => reason)
            .increment(1);
        if let Some(cells) = self.cells(model) {
            cells.retries.add(1);
        }
    }

    /// A request for `model` was not retried because the retry budget was spent.
    pub fn budget_exhausted(&self, model: &str) {
        if let Some(cells) = self.cells(model) {
            cells.budget_exhausted.add(1);
        }
    }

    /// Retry figures for `model` (or a name [`same_model`] equates with it).
    pub fn retry_figures(&self, model: &str) -> RetryFigures {
        self.models
            .load()
            .iter()
            .filter(|(name, _)| same_model(name, model))
            .fold(RetryFigures::default(), |f, (_, c)| RetryFigures {
                retries: f.retries + c.retries.sum(),
                budget_exhausted: f.budget_exhausted + c.budget_exhausted.sum(),
            })
    }

    fn cells(&self, model: &str) -> Option<ModelCells> {
        match self.models.load().get(model) {
            Some(cells) => Some(cells.clone()),
            None => self.insert(model),
        }
    }

    /// Requests for `model` (or a name [`same_model`] equates with it) that a backend
    /// answered.
    pub fn requests_total(&self, model: &str) -> u64 {
        self.models
            .load()
            .iter()
            .filter(|(name, _)| same_model(name, model))
            .map(|(_, c)| c.forwarded.sum())
            .sum()
    }

    fn slow(&self, model: Arc<str>, endpoint: &Arc<str>, status: StatusCode) {
        metrics::counter!(
            REQUESTS_TOTAL,
            "model" => model,
            "endpoint" => endpoint.clone(),
            "status" => status.as_str().to_owned()
        )
        .increment(1);
    }

    /// Adds `model` to the map (copy on write) and returns its cells; `None` when full.
    fn insert(&self, model: &str) -> Option<ModelCells> {
        let _grow = self.grow.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.models.load_full();
        if let Some(cells) = current.get(model) {
            return Some(cells.clone());
        }
        if current.len() >= MAX_MODELS {
            return None;
        }
        let label: Arc<str> = Arc::from(model);
        let cells = ModelCells {
            label,
            forwarded: Arc::new(Sharded::default()),
            retries: Arc::new(Sharded::default()),
            budget_exhausted: Arc::new(Sharded::default()),
        };
        let mut next = HashMap::clone(&current);
        next.insert(Box::from(model), cells.clone());
        self.models.store(Arc::new(next));
        Some(cells)
    }
}

/// How many shards a [`Sharded`] counter has.
const SHARDS: usize = 8;

/// A counter written from many threads: each thread adds to its own shard (threads are given
/// shards round robin), reading sums them.
#[derive(Debug, Default)]
pub struct Sharded {
    shards: [Shard; SHARDS],
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard(AtomicU64);

impl Sharded {
    pub fn add(&self, n: u64) {
        static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        let i = SHARD.with(|s| *s);
        if let Some(shard) = self.shards.get(i) {
            shard.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn sum(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_model_with_latest_tags_merged() {
        let s = RequestStats::new();
        let (a, b) = (
            EndpointCounters::new(Arc::from("a")),
            EndpointCounters::new(Arc::from("b")),
        );
        s.answered("llama3", &a, StatusCode::OK);
        s.answered("llama3", &b, StatusCode::OK);
        s.answered("llama3:latest", &a, StatusCode::INTERNAL_SERVER_ERROR);
        s.answered("m2", &a, StatusCode::OK);
        s.refused(Some("m2"), None, StatusCode::SERVICE_UNAVAILABLE);
        s.refused(Some("m2"), Some(b.name()), StatusCode::BAD_GATEWAY);
        assert_eq!(s.requests_total("llama3"), 3);
        assert_eq!(s.requests_total("llama3:latest"), 3);
        assert_eq!(s.requests_total("m2"), 1);
        assert_eq!(s.requests_total("nope"), 0);
        s.retried("llama3", a.name(), "503");
        s.retried("llama3:latest", b.name(), "connect_failure");
        s.budget_exhausted("llama3");
        assert_eq!(
            s.retry_figures("llama3"),
            RetryFigures {
                retries: 2,
                budget_exhausted: 1
            }
        );
        assert_eq!(s.retry_figures("m2"), RetryFigures::default());
    }

    #[test]
    fn sharded_counts_add_up_across_threads() {
        let c = Arc::new(Sharded::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.add(1)))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.sum(), 12_000);
    }
}
