//! `shared:` — whether and how replicas coordinate through Redis.
//!
//! The Redis password can be given inside `redis_url`, as `redis_password`, or through the
//! compatibility env name `REDIS_PASSWORD`; it is never printed: serializing this section
//! masks the password in the URL and the `redis_password` field. `signing_key` (optional, a
//! secret like the password) turns on signed results.

use hale_core::{ConfigError, Secret};
use serde::{Deserialize, Serialize, Serializer};
use std::time::Duration;
use url::Url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CoordMode {
    /// One lease for all checks; the holder checks everything (LiteLLM's model).
    Global,
    /// One lease per endpoint per interval, so probe work spreads over replicas.
    Sharded,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedConfig {
    pub enabled: bool,
    pub mode: CoordMode,
    #[serde(serialize_with = "serialize_masked_url")]
    pub redis_url: String,
    pub redis_password: Secret,
    /// Scopes every key (`hale:{namespace}:…`) so deployments sharing a Redis never mix.
    pub namespace: String,
    /// How long a cached result stays valid in Redis.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// The lifetime of a lease that is not extended.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// When set, results and events are signed with HMAC-SHA256 under this key and
    /// unsigned or wrongly signed ones are refused (see `hale_coord::signing`). At least 16
    /// bytes; the same on every replica. Settable as `os.environ/NAME`.
    pub signing_key: Secret,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: CoordMode::Sharded,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_password: Secret::default(),
            namespace: "default".to_owned(),
            cache_ttl: Duration::from_secs(300),
            lock_ttl: Duration::from_secs(60),
            signing_key: Secret::default(),
        }
    }
}

impl SharedConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let url = Url::parse(&self.redis_url).map_err(|e| {
            ConfigError::new(
                format!("{path}.redis_url"),
                format!("not a valid URL ({e})"),
            )
        })?;
        if !matches!(url.scheme(), "redis" | "rediss") {
            return Err(ConfigError::new(
                format!("{path}.redis_url"),
                format!("scheme must be redis or rediss, got {:?}", url.scheme()),
            ));
        }
        if self.namespace.is_empty()
            || !self
                .namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::new(
                format!("{path}.namespace"),
                "must be non-empty and use only letters, digits, '-', '_' and '.'",
            ));
        }
        hale_core::config::require_nonzero(path, "cache_ttl", self.cache_ttl)?;
        hale_core::config::require_nonzero(path, "lock_ttl", self.lock_ttl)?;
        let key = self.signing_key.expose();
        if !key.is_empty() && key.len() < 16 {
            return Err(ConfigError::new(
                format!("{path}.signing_key"),
                "must be at least 16 bytes when set",
            ));
        }
        Ok(())
    }
}

/// Prints a Redis URL with any password replaced, so `check-config` can show it.
pub fn masked_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            // Setting a password only fails for URLs that cannot have one, which this has.
            let _ = url.set_password(Some(hale_core::secret::REDACTED));
            url.to_string()
        }
        Ok(_) => raw.to_owned(),
        // An unparsable URL is reported by validate(); never echo what might be a secret.
        Err(_) => hale_core::secret::REDACTED.to_owned(),
    }
}

fn serialize_masked_url<S: Serializer>(raw: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&masked_url(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_password_in_url() {
        assert_eq!(
            masked_url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://:%3Credacted%3E@10.0.0.1:6379/0"
        );
        assert_eq!(masked_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn validates() {
        let mut c = SharedConfig::default();
        assert!(c.validate("shared").is_ok());
        c.redis_url = "http://x".into();
        assert_eq!(c.validate("shared").unwrap_err().path, "shared.redis_url");
        c.redis_url = "rediss://x:6380".into();
        c.namespace = "a b".into();
        assert_eq!(c.validate("shared").unwrap_err().path, "shared.namespace");
        c.namespace = "ok".into();
        c.signing_key = Secret::new("short");
        assert_eq!(c.validate("shared").unwrap_err().path, "shared.signing_key");
        c.signing_key = Secret::new("0123456789abcdef");
        assert!(c.validate("shared").is_ok());
    }
}
