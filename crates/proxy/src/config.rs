//! `proxy:` — how requests are balanced, when the request-path breaker opens, and how long a
//! backend may take: `connect_timeout` (to connect), `first_byte_timeout` (from sending the
//! request to the response head; default 600 s, since a non-streamed generation can take
//! minutes) and `idle_timeout` (the longest pause between two reads of a response body;
//! default 120 s). An endpoint may override the last two with its own keys of the same names.
//!
//! Retries and the short wait (issue 12; see [`crate::retry`] and [`crate::queue`]):
//! `retry_on` lists what a request is sent once more to another endpoint for, before any
//! byte of the answer reached the client (`connect_failure`, `first_byte_timeout`, `429` or a
//! 5xx status, written as a string or a number; default `[connect_failure, "429", "502",
//! "503", "504"]`); `retry_budget` (`{percent: 20, min_concurrent: 3}`) bounds the retries in
//! flight to `max(min_concurrent, percent % of the requests in flight)`; `queue_timeout`
//! (default 10 s, 0 disables) is how long a request may wait for an endpoint of its model
//! that is loading or about to recover instead of getting a 503 at once.
//!
//! `outlier` is outlier detection from real traffic (core's
//! [`OutlierConfig`](hale_core::OutlierConfig): which failures eject an endpoint, for how long,
//! and at most which share of a model's endpoints).

use hale_core::{BreakerConfig, ConfigError, Endpoint, OutlierConfig};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
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
    // Retries and the short wait (issue 12): kept together.
    /// What a request is retried on another endpoint for (once, within the budget).
    pub retry_on: Vec<RetryOn>,
    pub retry_budget: RetryBudget,
    /// How long a request may wait for an endpoint about to become routable (0: no wait).
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
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
            retry_on: RetryOn::defaults(),
            retry_budget: RetryBudget::default(),
            queue_timeout: Duration::from_secs(10),
            outlier: OutlierConfig::default(),
        }
    }
}

impl ProxyConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        hale_core::config::require_nonzero(path, "connect_timeout", self.connect_timeout)?;
        hale_core::config::require_nonzero(path, "first_byte_timeout", self.first_byte_timeout)?;
        hale_core::config::require_nonzero(path, "idle_timeout", self.idle_timeout)?;
        hale_core::config::require_duration(path, "queue_timeout", self.queue_timeout)?;
        self.retry_budget
            .validate(&format!("{path}.retry_budget"))?;
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

/// One thing a request may be retried for (`proxy.retry_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The endpoint could not be connected to (nothing was sent): failover.
    ConnectFailure,
    /// The endpoint sent no response head within its `first_byte_timeout`.
    FirstByteTimeout,
    /// The endpoint answered with this status (429 or a 5xx).
    Status(u16),
}

impl RetryOn {
    /// `[connect_failure, 429, 502, 503, 504]`.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::ConnectFailure,
            Self::Status(429),
            Self::Status(502),
            Self::Status(503),
            Self::Status(504),
        ]
    }

    /// The `reason` label of `hale_proxy_retries_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectFailure => "connect_failure",
            Self::FirstByteTimeout => "first_byte_timeout",
            Self::Status(429) => "429",
            // Not configurable: a backend's "model not found" always fails over.
            Self::Status(404) => "model_not_found",
            Self::Status(500) => "500",
            Self::Status(501) => "501",
            Self::Status(502) => "502",
            Self::Status(503) => "503",
            Self::Status(504) => "504",
            Self::Status(_) => "5xx",
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        match text {
            "connect_failure" => Ok(Self::ConnectFailure),
            "first_byte_timeout" => Ok(Self::FirstByteTimeout),
            _ => match text.parse::<u64>() {
                Ok(code) => Self::status(code),
                Err(_) => Err(format!(
                    "unknown value `{text}`, expected `connect_failure`, `first_byte_timeout`, \
                     429 or a 5xx status"
                )),
            },
        }
    }

    fn status(code: u64) -> Result<Self, String> {
        match u16::try_from(code) {
            Ok(c @ (429 | 500..=599)) => Ok(Self::Status(c)),
            _ => Err(format!(
                "status {code} is not retried: only 429 and 5xx statuses are (a 4xx is the \
                 client's fault)"
            )),
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Status(c) => s.serialize_str(&c.to_string()),
            other => s.serialize_str(other.label()),
        }
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RetryOn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`connect_failure`, `first_byte_timeout`, 429 or a 5xx status")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RetryOn, E> {
                RetryOn::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RetryOn, E> {
                RetryOn::status(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RetryOn, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("status {v} is not retried"))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `proxy.retry_budget`: retries in flight may be at most
/// `max(min_concurrent, percent % of the requests in flight)` (Envoy's retry budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudget {
    /// 0 to 100.
    pub percent: u32,
    /// Retries always allowed in flight, however few requests are (at most 1,000,000).
    pub min_concurrent: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20,
            min_concurrent: 3,
        }
    }
}

impl RetryBudget {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.percent > 100 {
            return Err(ConfigError::new(
                format!("{path}.percent"),
                format!("must be at most 100, got {}", self.percent),
            ));
        }
        if self.min_concurrent > 1_000_000 {
            return Err(ConfigError::new(
                format!("{path}.min_concurrent"),
                format!("must be at most 1000000, got {}", self.min_concurrent),
            ));
        }
        Ok(())
    }
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
    fn retry_keys_parse_as_written_in_yaml_and_refuse_the_rest() {
        let c: ProxyConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.retry_on, RetryOn::defaults());
        assert_eq!(c.retry_budget, RetryBudget::default());
        assert_eq!(c.queue_timeout, Duration::from_secs(10));
        let c: ProxyConfig = serde_yaml::from_str(
            "retry_on: [connect_failure, \"429\", 502, first_byte_timeout]\n\
             retry_budget: { percent: 50, min_concurrent: 1 }\nqueue_timeout: 0s\n",
        )
        .unwrap();
        assert_eq!(
            c.retry_on,
            [
                RetryOn::ConnectFailure,
                RetryOn::Status(429),
                RetryOn::Status(502),
                RetryOn::FirstByteTimeout
            ]
        );
        assert!(c.validate("proxy").is_ok());
        assert_eq!(
            serde_json::to_string(&c.retry_on).unwrap(),
            r#"["connect_failure","429","502","first_byte_timeout"]"#
        );
        for bad in [
            "retry_on: [\"404\"]",
            "retry_on: [400]",
            "retry_on: [-1]",
            "retry_on: [70000]",
            "retry_on: [reset]",
            "retry_budget: { percent: 20, extra: 1 }",
        ] {
            assert!(serde_yaml::from_str::<ProxyConfig>(bad).is_err(), "{bad}");
        }
        for bad in [
            "retry_budget: { percent: 101 }",
            "retry_budget: { min_concurrent: 4000000 }",
            "queue_timeout: 2d",
        ] {
            let c: ProxyConfig = serde_yaml::from_str(bad).unwrap();
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
