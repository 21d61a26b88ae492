//! The proxy's side of the status pages: [`BreakerView`] (breakers and outlier detection)
//! and [`ModelStatsView`] for
//! [`hale_proxy::Proxy`], so the binary can hand its proxy to [`ApiState`](crate::ApiState)
//! as is (`with_breakers(Arc::new(proxy))`, `with_model_stats(Arc::new(proxy))`).
//!
//! The impls live here rather than in the proxy crate because the traits are this crate's and
//! this crate depends on the proxy, not the other way round. Both read lock-free state (the
//! breaker lock is taken only while an endpoint's breaker is not plainly closed).

use crate::providers::{BreakerView, ModelStatsView};
use hale_core::{BreakerState, OutlierStats};
use hale_proxy::Proxy;

impl BreakerView for Proxy {
    fn breaker_state(&self, endpoint: &str) -> BreakerState {
        Proxy::breaker_state(self, endpoint)
    }

    fn outlier(&self, endpoint: &str) -> Option<OutlierStats> {
        Proxy::outlier(self, endpoint)
    }
}

impl ModelStatsView for Proxy {
    fn requests_total(&self, model: &str) -> u64 {
        Proxy::requests_total(self, model)
    }

    fn retry_figures(&self, model: &str) -> (u64, u64) {
        let f = Proxy::retry_figures(self, model);
        (f.retries, f.budget_exhausted)
    }
}
