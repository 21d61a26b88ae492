//! `proxy:` — how requests are balanced and when the request-path breaker opens.

use hale_core::{BreakerConfig, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balancer {
    /// Highest priority tier first; within it, weighted least-outstanding-requests.
    Priority,
    /// Highest priority tier first; within it, weighted round robin.
    RoundRobin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub balancer: Balancer,
    /// Timeout for connecting to a backend on the request path.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub breaker: BreakerConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            balancer: Balancer::Priority,
            connect_timeout: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
        }
    }
}

impl ProxyConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        hale_core::config::require_nonzero(path, "connect_timeout", self.connect_timeout)?;
        self.breaker.validate(&format!("{path}.breaker"))
    }
}
