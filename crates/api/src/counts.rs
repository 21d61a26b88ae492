//! Endpoint counts by health state, the block that `/internal/health`, `/internal/status` and
//! `/internal/stats/models` all show, so all three name and order the states the same way.

use hale_core::HealthState;
use serde::Serialize;

/// `{"healthy":N,"degraded":N,"recovering":N,"unhealthy":N,"unknown":N,"total":N}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct StateCounts {
    pub healthy: usize,
    pub degraded: usize,
    pub recovering: usize,
    pub unhealthy: usize,
    pub unknown: usize,
    pub total: usize,
}

impl StateCounts {
    pub fn add(&mut self, state: HealthState) {
        let slot = match state {
            HealthState::Healthy => &mut self.healthy,
            HealthState::Degraded => &mut self.degraded,
            HealthState::Recovering => &mut self.recovering,
            HealthState::Unhealthy => &mut self.unhealthy,
            HealthState::Unknown => &mut self.unknown,
        };
        *slot += 1;
        self.total += 1;
    }

    /// How many are in a state that takes traffic (healthy, degraded or recovering).
    pub fn routable(&self) -> usize {
        self.healthy + self.degraded + self.recovering
    }
}

impl FromIterator<HealthState> for StateCounts {
    fn from_iter<I: IntoIterator<Item = HealthState>>(states: I) -> Self {
        let mut counts = Self::default();
        for s in states {
            counts.add(s);
        }
        counts
    }
}
