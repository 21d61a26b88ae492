//! The configuration sections core owns: `health:`, an endpoint's `startup:`, and the breaker
//! settings that `proxy.breaker` uses, with their defaults and validation.
//!
//! Every section is `#[serde(deny_unknown_fields, default)]` so a misspelt key is an error and
//! an omitted one takes the default of DESIGN §5. Durations are humantime strings (`"2s"`).
//! `validate()` checks what serde cannot (ranges, relations between keys) and reports the
//! failing key by its full path, so `hale check-config` can name it and its line.
//!
//! Every duration and size in the config is bounded (DESIGN §6), by the shared helpers here
//! so that every key that uses them gets the bound: durations at most [`MAX_DURATION`] (1 day,
//! [`require_nonzero`] and [`require_duration`]), sizes at most [`MAX_SIZE`] (1 GiB,
//! [`require_size`]). A value `check-config` accepts is then one the gateway can add to a
//! clock without overflowing; the runtime still adds them with saturating forms.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A configuration value that is well-formed but not acceptable, named by its key path
/// (for example `endpoints[2].check_timeout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The longest duration any config key accepts: 1 day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The largest size any config key accepts: 1 GiB.
pub const MAX_SIZE: u64 = 1 << 30;

/// The longest span the runtime ever adds to a clock reading: 365 days. Far beyond any value
/// validation lets through ([`MAX_DURATION`]), it only matters for a duration that did not
/// come through validation (a config built in code, a backend's Retry-After, a peer's
/// result), which [`clock_safe`] cuts to it so `Instant + d` cannot overflow and panic.
pub const CLOCK_HORIZON: Duration = Duration::from_secs(365 * 24 * 3600);

/// `d`, cut to [`CLOCK_HORIZON`]: safe to add to an `Instant` or `SystemTime` of today.
pub fn clock_safe(d: Duration) -> Duration {
    d.min(CLOCK_HORIZON)
}

/// Refuses a duration at `{path}.{key}` that is zero or above [`MAX_DURATION`].
pub fn require_nonzero(path: &str, key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::new(
            format!("{path}.{key}"),
            "must be greater than 0",
        ));
    }
    require_duration(path, key, value)
}

/// Refuses a duration at `{path}.{key}` above [`MAX_DURATION`] (zero is accepted).
pub fn require_duration(path: &str, key: &str, value: Duration) -> Result<(), ConfigError> {
    if value > MAX_DURATION {
        return Err(ConfigError::new(
            format!("{path}.{key}"),
            format!(
                "must be at most {} (1 day), got {}",
                humantime::format_duration(MAX_DURATION),
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

/// Refuses a size at `{path}.{key}` (in bytes) that is zero or above [`MAX_SIZE`]. A size
/// too large for the parser (`100EiB`) arrives saturated at `u64::MAX` and is refused here.
pub fn require_size(path: &str, key: &str, bytes: u64) -> Result<(), ConfigError> {
    if bytes == 0 {
        return Err(ConfigError::new(
            format!("{path}.{key}"),
            "must be greater than 0",
        ));
    }
    if bytes > MAX_SIZE {
        let got = match bytes {
            u64::MAX => "16EiB or more".to_owned(),
            _ => format!("{bytes} bytes"),
        };
        return Err(ConfigError::new(
            format!("{path}.{key}"),
            format!("must be at most 1GiB ({MAX_SIZE} bytes), got {got}"),
        ));
    }
    Ok(())
}

/// Refuses a count below 1 at `{path}.{key}`.
pub fn require_at_least_one(path: &str, key: &str, value: u32) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(
            format!("{path}.{key}"),
            "must be at least 1",
        ));
    }
    Ok(())
}

/// `health:` — thresholds and timing shared by every endpoint's state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Run background health checks. With `false`, endpoints are trusted (routable) until a
    /// request fails on them; useful where probing costs money.
    pub background: bool,
    /// Consecutive failed checks that turn a running endpoint `unhealthy`.
    pub unhealthy_threshold: u32,
    /// Consecutive good checks that turn an `unhealthy` endpoint `healthy` again.
    pub healthy_threshold: u32,
    /// A good check slower than this makes the endpoint `degraded`.
    #[serde(with = "humantime_serde")]
    pub degraded_latency: Duration,
    /// The longest wait between checks of a failing endpoint.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Spread of each wait, as a fraction of it (0 ≤ jitter < 1); 0 makes schedules exact.
    pub jitter: f64,
    /// How often an endpoint's model list is re-read (an endpoint's own
    /// `discovery_interval` overrides it); also the least time between two rediscoveries
    /// asked for by requests naming a model no endpoint has.
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            background: true,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            degraded_latency: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            jitter: 0.1,
            discovery_interval: Duration::from_secs(30),
        }
    }
}

impl HealthConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        require_at_least_one(path, "unhealthy_threshold", self.unhealthy_threshold)?;
        require_at_least_one(path, "healthy_threshold", self.healthy_threshold)?;
        require_nonzero(path, "degraded_latency", self.degraded_latency)?;
        require_nonzero(path, "max_backoff", self.max_backoff)?;
        require_nonzero(path, "discovery_interval", self.discovery_interval)?;
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                format!("{path}.jitter"),
                format!("must be in [0, 1), got {}", self.jitter),
            ));
        }
        Ok(())
    }
}

/// An endpoint's `startup:` phase, with Kubernetes startup-probe semantics: until the first
/// success the endpoint is `unknown`; it is `unhealthy` only after `failure_threshold` failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartupConfig {
    /// Wait this long after the gateway starts before the first check.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Time between checks during the startup phase (and while the backend says it is loading).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Failed startup checks tolerated before the endpoint is declared `unhealthy`.
    pub failure_threshold: u32,
    /// Good checks needed to leave the startup phase.
    pub success_threshold: u32,
    /// Timeout of one startup check.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(2),
            failure_threshold: 30,
            success_threshold: 1,
            timeout: Duration::from_secs(2),
        }
    }
}

impl StartupConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        require_duration(path, "initial_delay", self.initial_delay)?;
        require_nonzero(path, "period", self.period)?;
        require_nonzero(path, "timeout", self.timeout)?;
        if self.timeout > self.period {
            return Err(ConfigError::new(
                format!("{path}.timeout"),
                format!(
                    "must not exceed startup.period ({} > {})",
                    humantime::format_duration(self.timeout),
                    humantime::format_duration(self.period)
                ),
            ));
        }
        require_at_least_one(path, "failure_threshold", self.failure_threshold)?;
        require_at_least_one(path, "success_threshold", self.success_threshold)?;
        Ok(())
    }
}

/// The request-path circuit breaker (`proxy.breaker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive transport failures that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses traffic before admitting one trial request.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

impl BreakerConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        require_at_least_one(path, "failure_threshold", self.failure_threshold)?;
        require_nonzero(path, "open_for", self.open_for)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_design() {
        let h = HealthConfig::default();
        assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (3, 2));
        assert_eq!(h.max_backoff, Duration::from_secs(60));
        assert!(h.validate("health").is_ok());
        assert!(StartupConfig::default().validate("s").is_ok());
        assert!(BreakerConfig::default().validate("proxy.breaker").is_ok());
    }

    #[test]
    fn names_the_key() {
        let h = HealthConfig {
            jitter: 1.5,
            ..Default::default()
        };
        assert_eq!(h.validate("health").unwrap_err().path, "health.jitter");
        let s = StartupConfig {
            timeout: Duration::from_secs(5),
            ..Default::default()
        };
        assert_eq!(
            s.validate("endpoints[0].startup").unwrap_err().path,
            "endpoints[0].startup.timeout"
        );
    }

    #[test]
    fn durations_are_bounded_at_one_day() {
        let day = Duration::from_secs(86_400);
        let above = day + Duration::from_nanos(1);
        assert!(require_nonzero("h", "k", day).is_ok());
        assert!(require_duration("h", "k", day).is_ok());
        assert!(require_duration("h", "k", Duration::ZERO).is_ok());
        for huge in [above, Duration::from_secs(u64::MAX), Duration::MAX] {
            for err in [
                require_nonzero("server", "idle_timeout", huge).unwrap_err(),
                require_duration("server", "idle_timeout", huge).unwrap_err(),
            ] {
                assert_eq!(err.path, "server.idle_timeout");
                assert!(err.message.starts_with("must be at most 1day"), "{err}");
            }
        }
        assert_eq!(
            require_nonzero("h", "k", Duration::ZERO)
                .unwrap_err()
                .message,
            "must be greater than 0"
        );
    }

    #[test]
    fn every_duration_key_of_these_sections_is_bounded() {
        let huge = Duration::from_secs(u64::MAX);
        let h = HealthConfig {
            degraded_latency: huge,
            ..Default::default()
        };
        assert_eq!(
            h.validate("health").unwrap_err().path,
            "health.degraded_latency"
        );
        let h = HealthConfig {
            max_backoff: huge,
            ..Default::default()
        };
        assert_eq!(h.validate("health").unwrap_err().path, "health.max_backoff");
        let h = HealthConfig {
            discovery_interval: huge,
            ..Default::default()
        };
        assert_eq!(
            h.validate("health").unwrap_err().path,
            "health.discovery_interval"
        );
        let h = HealthConfig {
            discovery_interval: Duration::ZERO,
            ..Default::default()
        };
        assert_eq!(
            h.validate("health").unwrap_err().path,
            "health.discovery_interval"
        );
        let s = StartupConfig {
            initial_delay: huge,
            ..Default::default()
        };
        assert_eq!(s.validate("s").unwrap_err().path, "s.initial_delay");
        let s = StartupConfig {
            initial_delay: MAX_DURATION,
            ..Default::default()
        };
        assert!(s.validate("s").is_ok());
        let s = StartupConfig {
            period: huge,
            timeout: huge,
            ..Default::default()
        };
        assert_eq!(s.validate("s").unwrap_err().path, "s.period");
        let b = BreakerConfig {
            open_for: huge,
            ..Default::default()
        };
        assert_eq!(b.validate("b").unwrap_err().path, "b.open_for");
    }

    #[test]
    fn sizes_are_bounded_at_one_gib() {
        assert!(require_size("server", "max_body", 1 << 30).is_ok());
        assert!(require_size("server", "max_body", 1).is_ok());
        for bad in [0, (1 << 30) + 1, u64::MAX] {
            let err = require_size("server", "max_body", bad).unwrap_err();
            assert_eq!(err.path, "server.max_body");
        }
        let err = require_size("server", "max_body", u64::MAX).unwrap_err();
        assert!(err.message.contains("at most 1GiB"), "{err}");
        assert!(err.message.ends_with("got 16EiB or more"), "{err}");
        let err = require_size("server", "max_body", (1 << 30) + 1).unwrap_err();
        assert!(err.message.ends_with("got 1073741825 bytes"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<HealthConfig>(r#"{"unhealty_threshold": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unhealty_threshold"), "{err}");
    }
}
