//! What the api crate needs to know from the layers it does not own, as three small traits.
//!
//! The health snapshot comes from core directly; the circuit breakers live in the proxy, the
//! shared coordination status in coord and request counts wherever the proxy keeps them. Each
//! is optional in [`ApiState`](crate::ApiState) and has a documented meaning when absent, so
//! the routes work the same with or without the later layers wired in, and tests can plug in a
//! two-line fake.

use hale_core::BreakerState;

/// The request-path circuit breakers, read for `breaker` in `/internal/status/endpoints` and
/// for `hale_breaker_open`. Absent means every breaker reads closed.
pub trait BreakerView: Send + Sync + 'static {
    /// The state of `endpoint`'s breaker now; an endpoint the view does not know reads closed.
    fn breaker_state(&self, endpoint: &str) -> BreakerState;
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
}
