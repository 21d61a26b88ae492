//! `proxy:` — how requests are balanced, when the request-path breaker opens, and how long a
//! backend may take: `connect_timeout` (to connect), `first_byte_timeout` (from sending the
//! request to the response head; default 600 s, since a non-streamed generation can take
//! minutes) and `idle_timeout` (the longest pause between two reads of a response body;
//! default 120 s). An endpoint may override the last two with its own keys of the same names.
//! `outlier` is outlier detection from real traffic (core's
//! [`OutlierConfig`](hale_core::OutlierConfig): which failures eject an endpoint, for how long,
//! and at most which share of a model's endpoints).

use hale_core::{BreakerConfig, ConfigError, Endpoint, OutlierConfig};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub balancer: Balancer,
    /// Timeout for connecting to a backend on the request path.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a request may wait for the response head once sent (504 after it).
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// The longest pause between two reads of a response body (the answer is cut after it).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub breaker: BreakerConfig,
    /// Outlier detection from real traffic (`proxy.outlier`).
    pub outlier: OutlierConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            balancer: Balancer::Priority,
            connect_timeout: Duration::from_secs(2),
            first_byte_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
            breaker: BreakerConfig::default(),
            outlier: OutlierConfig::default(),
        }
    }
}

impl ProxyConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        hale_core::config::require_nonzero(path, "connect_timeout", self.connect_timeout)?;
        hale_core::config::require_nonzero(path, "first_byte_timeout", self.first_byte_timeout)?;
        hale_core::config::require_nonzero(path, "idle_timeout", self.idle_timeout)?;
        self.breaker.validate(&format!("{path}.breaker"))?;
        self.outlier.validate(&format!("{path}.outlier"))
    }

    /// The deadlines that apply to `endpoint`: its own overrides, else these.
    pub fn deadlines_for(&self, endpoint: &Endpoint) -> Deadlines {
        Deadlines {
            first_byte: endpoint
                .first_byte_timeout
                .unwrap_or(self.first_byte_timeout),
            idle: endpoint.idle_timeout.unwrap_or(self.idle_timeout),
        }
    }
}

/// The upstream deadlines of one endpoint (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub first_byte: Duration,
    pub idle: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_core::{EndpointConfig, EndpointKind};

    #[test]
    fn deadlines_default_and_are_overridden_per_endpoint() {
        let c: ProxyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.first_byte_timeout, Duration::from_secs(600));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        let c: ProxyConfig =
            serde_json::from_str(r#"{"first_byte_timeout":"30s","idle_timeout":"5s"}"#).unwrap();
        let mut e = EndpointConfig::new("a", "http://h:1", EndpointKind::Vllm);
        let plain = e.resolve("e").unwrap();
        assert_eq!(
            c.deadlines_for(&plain),
            Deadlines {
                first_byte: Duration::from_secs(30),
                idle: Duration::from_secs(5)
            }
        );
        e.idle_timeout = Some(Duration::from_secs(1));
        let own = e.resolve("e").unwrap();
        assert_eq!(c.deadlines_for(&own).idle, Duration::from_secs(1));
        assert_eq!(c.deadlines_for(&own).first_byte, Duration::from_secs(30));

        for bad in [r#"{"first_byte_timeout":"0s"}"#, r#"{"idle_timeout":"0s"}"#] {
            let c: ProxyConfig = serde_json::from_str(bad).unwrap();
            assert!(c.validate("proxy").is_err(), "{bad}");
        }
    }

    #[test]
    fn outlier_section_defaults_and_is_validated() {
        let c: ProxyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.outlier, OutlierConfig::default());
        assert_eq!(c.outlier.consecutive_failures, 5);
        assert_eq!(c.outlier.max_ejection, Duration::from_secs(300));
        let c: ProxyConfig = serde_json::from_str(
            r#"{"outlier":{"consecutive_failures":3,"base_ejection":"3s","window":"5s"}}"#,
        )
        .unwrap();
        assert!(c.validate("proxy").is_ok());
        assert_eq!(c.outlier.base_ejection, Duration::from_secs(3));
        for (bad, key) in [
            (
                r#"{"outlier":{"consecutive_failures":0}}"#,
                "proxy.outlier.consecutive_failures",
            ),
            (
                r#"{"outlier":{"failure_rate":0}}"#,
                "proxy.outlier.failure_rate",
            ),
            (
                r#"{"outlier":{"max_ejection":"2days"}}"#,
                "proxy.outlier.max_ejection",
            ),
            (
                r#"{"outlier":{"max_ejection_percent":150}}"#,
                "proxy.outlier.max_ejection_percent",
            ),
        ] {
            let c: ProxyConfig = serde_json::from_str(bad).unwrap();
            assert_eq!(c.validate("proxy").unwrap_err().path, key, "{bad}");
        }
        assert!(serde_json::from_str::<ProxyConfig>(r#"{"outlier":{"windw":"1s"}}"#).is_err());
    }
}
