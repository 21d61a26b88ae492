//! What the api crate needs from the layers it does not own, as small traits.
//!
//! The health snapshot comes from core directly; the circuit breakers live in the proxy, the
//! shared coordination status in coord and request counts wherever the proxy keeps them. Each
//! is optional in [`ApiState`](crate::ApiState) and has a documented meaning when absent, so
//! the routes work the same with or without the later layers wired in, and tests can plug in a
//! two-line fake.

use hale_core::coordination::BoxFuture;
use hale_core::{BreakerState, OutlierStats, Reconciled};
use hale_probe::{CheckNowError, ManualCheck};
use serde::Serialize;
use std::sync::Arc;

/// The request path's per-endpoint state: the circuit breakers, read for `breaker` in
/// `/internal/status/endpoints` and for `hale_breaker_open`, and outlier detection, read for
/// `outlier` there. Absent means every breaker reads closed and no traffic was recorded.
pub trait BreakerView: Send + Sync + 'static {
    /// The state of `endpoint`'s breaker now; an endpoint the view does not know reads closed.
    fn breaker_state(&self, endpoint: &str) -> BreakerState;

    /// What outlier detection on this replica has recorded for `endpoint`; `None` (the
    /// default) reads as nothing recorded.
    fn outlier(&self, endpoint: &str) -> Option<OutlierStats> {
        let _ = endpoint;
        None
    }
}

/// The shared (Redis) coordination status. Absent means local mode, and
/// `/health/shared-status` renders the local body itself.
pub trait SharedStatusView: Send + Sync + 'static {
    /// The whole `/health/shared-status` body: LiteLLM's fields
    /// (`shared_health_check_enabled`, `status.{pod_id, redis_available, lock_ttl, cache_ttl,
    /// lock_owner, lock_in_progress, cache_available, cache_age_seconds, last_checked_by}`)
    /// plus `status.mode`, `status.checks_performed` and `status.checks_skipped`.
    fn shared_status(&self) -> serde_json::Value;

    /// The coordination mode in force (`local`, `global` or `sharded`), shown by
    /// `/internal/status`. By default it is read from `status.mode` of
    /// [`shared_status`](Self::shared_status); override it where that body is costly to build.
    fn mode(&self) -> String {
        self.shared_status()
            .pointer("/status/mode")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("local")
            .to_owned()
    }
}

/// Request counts per model, for `requests_total` in `/internal/stats/models`. Absent means
/// every count is zero.
pub trait ModelStatsView: Send + Sync + 'static {
    /// Requests routed for `model` since the process started.
    fn requests_total(&self, model: &str) -> u64;

    /// Retries for `model` since the process started: `(retries made, retries the retry
    /// budget refused)`. Zero unless the view counts them.
    fn retry_figures(&self, _model: &str) -> (u64, u64) {
        (0, 0)
    }
}

/// The operator's actions that need more than the store: re-reading the config (the binary
/// owns the file and its loader) and checking an endpoint now (the scheduler runs checks).
/// Absent means `/internal/reload` and `/internal/endpoints/{name}/check` answer 503.
pub trait AdminActions: Send + Sync + 'static {
    /// Re-reads the config file and applies it, or says why it was refused (the running
    /// config then stays in force).
    fn reload(&self) -> BoxFuture<'_, Result<ReloadReport, String>>;

    /// Checks `endpoint` now and returns what the check found.
    fn check<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Result<ManualCheck, CheckNowError>>;

    /// Requests in flight to `endpoint` now.
    fn in_flight(&self, endpoint: &str) -> usize;
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub added: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
    /// Same backend, new settings: health kept.
    pub updated: Vec<Arc<str>>,
    /// A different backend under a known name: health starts over.
    pub replaced: Vec<Arc<str>>,
    pub unchanged: usize,
    /// Keys that changed in the file but only take effect at the next start; their running
    /// values stay.
    pub restart_required: Vec<String>,
}

impl ReloadReport {
    /// The report of a store reconciliation plus the keys that need a restart.
    pub fn new(change: Reconciled, restart_required: Vec<String>) -> Self {
        Self {
            added: change.added,
            removed: change.removed,
            updated: change.updated,
            replaced: change.replaced,
            unchanged: change.unchanged,
            restart_required,
        }
    }
}
