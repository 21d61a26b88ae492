//! What one health check saw: [`CheckOutcome`] (latency plus a [`CheckResult`]).
//!
//! Probes in hale-probe produce these from real HTTP exchanges; the state machine consumes
//! them. Every way a check can go wrong has its own variant, so the reason shown to operators
//! is exact (`connect_refused` versus `timeout` versus `http_503`), and garbage from a backend
//! is a `BadResponse` result rather than a panic anywhere.

use crate::state::Reason;
use std::sync::Arc;
use std::time::Duration;

/// The result of one check of one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOutcome {
    /// Time from sending the request to having judged the answer.
    pub latency: Duration,
    pub result: CheckResult,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckResult {
    /// The backend is serving. `models` is set when this check also listed the models.
    Ok {
        models: Option<Vec<Arc<str>>>,
    },
    /// The backend is up but loading a model; it will end by itself.
    Loading {
        message: String,
    },
    /// An HTTP status that is not success. 429 carries its Retry-After.
    Http {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    Timeout,
    ConnectRefused,
    /// Reset or closed before a full answer.
    ConnectionReset {
        message: String,
    },
    Dns {
        message: String,
    },
    Tls {
        message: String,
    },
    /// 2xx, but not the body this type of server sends.
    BadResponse {
        message: String,
    },
    /// Configured models the backend does not report.
    ModelMissing {
        missing: Vec<Arc<str>>,
    },
    /// Any other transport error.
    Other {
        message: String,
    },
}

/// How the state machine treats a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Loading,
    RateLimited,
    Fail,
}

impl CheckOutcome {
    pub fn ok(latency: Duration) -> Self {
        Self {
            latency,
            result: CheckResult::Ok { models: None },
        }
    }

    pub fn failed(latency: Duration, result: CheckResult) -> Self {
        Self { latency, result }
    }
}

impl CheckResult {
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Ok { .. } => Verdict::Pass,
            Self::Loading { .. } => Verdict::Loading,
            Self::Http { status: 429, .. } => Verdict::RateLimited,
            _ => Verdict::Fail,
        }
    }

    /// The reason code that goes with this result; `None` for a plain success.
    pub fn reason(&self) -> Option<Reason> {
        Some(match self {
            Self::Ok { .. } => return None,
            Self::Loading { .. } => Reason::Loading,
            Self::Http { status: 429, .. } => Reason::RateLimited,
            Self::Http {
                status: 401 | 403, ..
            } => Reason::AuthError,
            Self::Http { status, .. } => Reason::Http(*status),
            Self::Timeout => Reason::Timeout,
            Self::ConnectRefused => Reason::ConnectRefused,
            Self::ConnectionReset { .. } => Reason::ConnectionReset,
            Self::Dns { .. } => Reason::Dns,
            Self::Tls { .. } => Reason::Tls,
            Self::BadResponse { .. } => Reason::BadResponse,
            Self::ModelMissing { .. } => Reason::ModelMissing,
            Self::Other { message } => Reason::Other(Arc::from(short_code(message))),
        })
    }

    /// A short human sentence for the `error` field; `None` for a plain success.
    pub fn error_text(&self) -> Option<String> {
        Some(match self {
            Self::Ok { .. } => return None,
            Self::Loading { message } => format!("loading: {message}"),
            Self::Http {
                status,
                retry_after,
                message,
            } => match retry_after {
                Some(ra) => format!("HTTP {status} (retry after {}s): {message}", ra.as_secs()),
                None if message.is_empty() => format!("HTTP {status}"),
                None => format!("HTTP {status}: {message}"),
            },
            Self::Timeout => "check timed out".to_owned(),
            Self::ConnectRefused => "connection refused".to_owned(),
            Self::ConnectionReset { message } => format!("connection reset: {message}"),
            Self::Dns { message } => format!("DNS lookup failed: {message}"),
            Self::Tls { message } => format!("TLS error: {message}"),
            Self::BadResponse { message } => format!("unexpected response: {message}"),
            Self::ModelMissing { missing } => {
                let names: Vec<&str> = missing.iter().map(|m| m.as_ref()).collect();
                format!("configured models not served: {}", names.join(", "))
            }
            Self::Other { message } => message.clone(),
        })
    }

    /// Whether this is a transport-level failure (nothing, or no full answer, came back).
    pub fn is_transport_failure(&self) -> bool {
        matches!(
            self,
            Self::Timeout
                | Self::ConnectRefused
                | Self::ConnectionReset { .. }
                | Self::Dns { .. }
                | Self::Tls { .. }
                | Self::Other { .. }
        )
    }
}

/// Reasons are codes, not sentences: `Other` errors are reduced to a fixed one.
fn short_code(_message: &str) -> &'static str {
    "transport_error"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let http = |status| CheckResult::Http {
            status,
            retry_after: None,
            message: String::new(),
        };
        assert_eq!(http(503).reason(), Some(Reason::Http(503)));
        assert_eq!(http(401).reason(), Some(Reason::AuthError));
        assert_eq!(http(403).reason(), Some(Reason::AuthError));
        assert_eq!(http(429).verdict(), Verdict::RateLimited);
        assert_eq!(
            CheckResult::ConnectRefused.reason(),
            Some(Reason::ConnectRefused)
        );
        assert_eq!(CheckResult::Ok { models: None }.reason(), None);
    }
}
