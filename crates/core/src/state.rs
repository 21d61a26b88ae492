//! The five health states, the machine-readable reason that goes with them, and the
//! [`Transition`] record that the state machine emits when an endpoint changes state.

use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// Where an endpoint stands. JSON values are lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Not yet confirmed: before the first good check, and during a startup phase or a reload
    /// of the model. Not routable.
    Unknown,
    /// Passing checks. Routable.
    Healthy,
    /// Passing, but slower than `degraded_latency`. Routable at reduced weight.
    Degraded,
    /// Was unhealthy and now passes; limited trial traffic until `healthy_threshold` passes.
    Recovering,
    /// Failing. No traffic.
    Unhealthy,
}

impl HealthState {
    pub const ALL: [HealthState; 5] = [
        Self::Unknown,
        Self::Healthy,
        Self::Degraded,
        Self::Recovering,
        Self::Unhealthy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Recovering => "recovering",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// Whether the state itself lets traffic through (rate limits and breakers aside).
    pub fn is_routable(self) -> bool {
        matches!(self, Self::Healthy | Self::Degraded | Self::Recovering)
    }

    /// The numeric value exported as `hale_endpoint_state`.
    pub fn code(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Healthy => 1,
            Self::Degraded => 2,
            Self::Recovering => 3,
            Self::Unhealthy => 4,
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an endpoint is in its state, in a form scripts can match on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The server says it is loading a model (llama.cpp 503 "Loading model", SGLang starting).
    Loading,
    ConnectRefused,
    ConnectionReset,
    Timeout,
    Dns,
    Tls,
    /// Any other HTTP status that fails a check, e.g. `http_503`.
    Http(u16),
    /// 429: backing off until Retry-After; not counted as a failure.
    RateLimited,
    /// 401/403: the configured key is wrong; a configuration problem.
    AuthError,
    /// A configured model is not reported by the backend.
    ModelMissing,
    /// The backend answered 2xx with a body that is not what this type of server sends.
    BadResponse,
    /// Good checks, but slower than `degraded_latency`.
    Slow,
    /// A request on the proxy path failed to connect; the endpoint was marked at once.
    RequestFailed,
    /// Real traffic failed on it (consecutive gateway failures or a high failure rate): it
    /// is ejected for a while ([`crate::outlier`]).
    Outlier,
    /// Anything else, named.
    Other(Arc<str>),
}

impl Reason {
    pub fn as_str(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Self::Loading => "loading",
            Self::ConnectRefused => "connect_refused",
            Self::ConnectionReset => "connection_reset",
            Self::Timeout => "timeout",
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::Http(code) => return Cow::Owned(format!("http_{code}")),
            Self::RateLimited => "rate_limited",
            Self::AuthError => "auth_error",
            Self::ModelMissing => "model_missing",
            Self::BadResponse => "bad_response",
            Self::Slow => "slow",
            Self::RequestFailed => "request_failed",
            Self::Outlier => "outlier",
            Self::Other(s) => return Cow::Owned(s.to_string()),
        })
    }

    /// Parses what [`Reason::as_str`] prints (used for results read back from Redis).
    pub fn parse(s: &str) -> Reason {
        match s {
            "loading" => Self::Loading,
            "connect_refused" => Self::ConnectRefused,
            "connection_reset" => Self::ConnectionReset,
            "timeout" => Self::Timeout,
            "dns" => Self::Dns,
            "tls" => Self::Tls,
            "rate_limited" => Self::RateLimited,
            "auth_error" => Self::AuthError,
            "model_missing" => Self::ModelMissing,
            "bad_response" => Self::BadResponse,
            "slow" => Self::Slow,
            "request_failed" => Self::RequestFailed,
            "outlier" => Self::Outlier,
            other => match other.strip_prefix("http_").and_then(|c| c.parse().ok()) {
                Some(code) => Self::Http(code),
                None => Self::Other(Arc::from(other)),
            },
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.as_str())
    }
}

/// A change of state of one endpoint, as logged, counted and listed in `/internal/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthState,
    pub to: HealthState,
    pub reason: Option<Reason>,
}

/// When a transition happened, for people.
pub type WallTime = SystemTime;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip() {
        for r in [
            Reason::Loading,
            Reason::ConnectRefused,
            Reason::Http(503),
            Reason::AuthError,
            Reason::Outlier,
            Reason::Other(Arc::from("weird")),
        ] {
            assert_eq!(Reason::parse(&r.as_str()), r);
        }
        assert_eq!(
            serde_json::to_string(&Reason::Http(503)).unwrap(),
            "\"http_503\""
        );
    }

    #[test]
    fn routable_states() {
        let routable: Vec<_> = HealthState::ALL
            .into_iter()
            .filter(|s| s.is_routable())
            .collect();
        assert_eq!(
            routable,
            [
                HealthState::Healthy,
                HealthState::Degraded,
                HealthState::Recovering
            ]
        );
    }
}
