//! [`ApiState`]: everything the routes read, shared by every request.
//!
//! It holds the health store (read through lock-free snapshots), the `server:` config (for the
//! admin token), the version string, when the process started, the draining flag the binary
//! raises on SIGTERM, the metrics recorder, and the optional views of the later layers (see
//! [`providers`](crate::providers)). Every field is an `Arc` or a small copy, so cloning it per
//! request costs a few reference-count increments.

use crate::ServerConfig;
use crate::metrics::Metrics;
use crate::providers::{AdminActions, BreakerView, ModelStatsView, SharedStatusView};
use hale_core::{BreakerState, HealthStore, Now};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

#[derive(Clone)]
pub struct ApiState {
    store: Arc<HealthStore>,
    server: Arc<ServerConfig>,
    version: Arc<str>,
    started: Now,
    draining: Arc<AtomicBool>,
    metrics: Metrics,
    breakers: Option<Arc<dyn BreakerView>>,
    shared: Option<Arc<dyn SharedStatusView>>,
    model_stats: Option<Arc<dyn ModelStatsView>>,
    admin: Option<Arc<dyn AdminActions>>,
}

impl fmt::Debug for ApiState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The server config is left out on purpose: it holds the admin token and API keys, and
        // although `Secret` redacts itself, a Debug print of the state has no use for them.
        f.debug_struct("ApiState")
            .field("store", &self.store)
            .field("version", &self.version)
            .field("started", &self.started)
            .field("draining", &self.is_draining())
            .field("breakers", &self.breakers.is_some())
            .field("shared", &self.shared.is_some())
            .field("model_stats", &self.model_stats.is_some())
            .field("admin", &self.admin.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// A state with no optional views: breakers read closed, the shared status is local mode,
    /// request counts are zero. The start time is now; see [`with_started`](Self::with_started).
    pub fn new(
        store: Arc<HealthStore>,
        server: ServerConfig,
        version: impl Into<Arc<str>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            server: Arc::new(server),
            version: version.into(),
            started: Now::capture(),
            draining: Arc::new(AtomicBool::new(false)),
            metrics,
            breakers: None,
            shared: None,
            model_stats: None,
            admin: None,
        }
    }

    /// Sets when the process started (uptime counts from here).
    pub fn with_started(mut self, at: Now) -> Self {
        self.started = at;
        self
    }

    pub fn with_breakers(mut self, breakers: Arc<dyn BreakerView>) -> Self {
        self.breakers = Some(breakers);
        self
    }

    pub fn with_shared(mut self, shared: Arc<dyn SharedStatusView>) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn with_model_stats(mut self, stats: Arc<dyn ModelStatsView>) -> Self {
        self.model_stats = Some(stats);
        self
    }

    /// Turns `/readyz` to 503 at once, for every clone of this state. Called on SIGTERM so the
    /// load balancer stops sending new work while in-flight requests finish. There is no way
    /// back: a draining process is on its way out.
    pub fn with_admin(mut self, admin: Arc<dyn AdminActions>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// The operator's actions, when wired.
    pub fn admin(&self) -> Option<&Arc<dyn AdminActions>> {
        self.admin.as_ref()
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn store(&self) -> &Arc<HealthStore> {
        &self.store
    }

    pub fn server(&self) -> &ServerConfig {
        &self.server
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn started_at(&self) -> SystemTime {
        self.started.wall
    }

    /// Time since start, on the monotonic clock (so wall-clock jumps do not bend it).
    pub fn uptime(&self) -> Duration {
        self.started.mono.elapsed()
    }

    /// `endpoint`'s breaker, closed when no breaker view is wired in.
    pub fn breaker_state(&self, endpoint: &str) -> BreakerState {
        self.breakers
            .as_ref()
            .map_or(BreakerState::Closed, |b| b.breaker_state(endpoint))
    }

    /// What outlier detection recorded for `endpoint`; `None` when no view is wired in.
    pub fn outlier(&self, endpoint: &str) -> Option<hale_core::OutlierStats> {
        self.breakers.as_ref().and_then(|b| b.outlier(endpoint))
    }

    pub(crate) fn shared(&self) -> Option<&Arc<dyn SharedStatusView>> {
        self.shared.as_ref()
    }

    /// The coordination mode: `local` unless the shared view says otherwise.
    pub fn mode(&self) -> String {
        self.shared
            .as_ref()
            .map_or_else(|| "local".to_owned(), |s| s.mode())
    }

    pub(crate) fn requests_total(&self, model: &str) -> u64 {
        self.model_stats
            .as_ref()
            .map_or(0, |s| s.requests_total(model))
    }

    pub(crate) fn retry_figures(&self, model: &str) -> (u64, u64) {
        self.model_stats
            .as_ref()
            .map_or((0, 0), |s| s.retry_figures(model))
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::Fixture;

    #[tokio::test]
    async fn draining_reaches_every_clone() {
        let f = Fixture::new("");
        let clone = f.state.clone();
        assert!(!clone.is_draining());
        f.state.start_draining();
        assert!(clone.is_draining());
    }

    #[tokio::test]
    async fn debug_shows_no_token() {
        let f = Fixture::new("admin-token-value");
        let printed = format!("{:?}", f.state);
        assert!(!printed.contains("admin-token-value"), "{printed}");
        assert!(printed.contains("ApiState"));
    }
}
