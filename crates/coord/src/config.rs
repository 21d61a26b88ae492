//! `shared:` — whether and how replicas coordinate through Redis.
//!
//! The Redis password can be given inside `redis_url`, as `redis_password`, or through the
//! compatibility env name `REDIS_PASSWORD`; it is never printed: serializing this section
//! masks the password in the URL and the `redis_password` field. `signing_key` (optional, a
//! secret like the password) turns on signed results.
//!
//! Topology (see [`crate::conn`]): one Redis at `redis_url` (the default); a master found
//! through Sentinel (`sentinel: {master_name, nodes, password}`, compat `REDIS_SENTINEL_NODES`,
//! `REDIS_SERVICE_NAME`, `REDIS_SENTINEL_PASSWORD`); or a Cluster (`cluster_nodes`, compat
//! `REDIS_CLUSTER_NODES`). At most one of `sentinel` and `cluster_nodes` is set; with either,
//! `redis_url` is not used, `redis_password` is the data nodes' password. TLS: `rediss://` for
//! one Redis; `tls: {ca_file, cert_file, key_file, insecure_skip_verify}` sets the CA and
//! client certificate, and for Sentinel and Cluster its presence turns TLS on (sentinels and
//! data nodes alike). A `tls` section with a `redis://` URL is refused rather than silently
//! connecting in plain text.

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
    /// Find the master through these sentinels instead of `redis_url`.
    pub sentinel: Option<SentinelConfig>,
    /// Seed nodes of a Redis Cluster (`host:port`); instead of `redis_url`.
    pub cluster_nodes: Vec<String>,
    /// TLS settings (CA, client certificate); see the module docs.
    pub tls: Option<TlsConfig>,
}

/// `shared.sentinel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SentinelConfig {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> …`).
    pub master_name: String,
    /// The sentinels, `host:port` each.
    pub nodes: Vec<String>,
    /// The sentinels' own password (`requirepass` of the sentinels), if any.
    pub password: Secret,
}

/// `shared.tls`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the servers' certificates; without it, the webpki
    /// roots (public CAs) are trusted.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for mutual TLS (with `key_file`).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// Accept any server certificate. For tests and emergencies only: it defeats TLS's
    /// protection against a man in the middle.
    pub insecure_skip_verify: bool,
}

/// Which Redis deployment coord talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Single,
    Sentinel,
    Cluster,
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
            sentinel: None,
            cluster_nodes: Vec::new(),
            tls: None,
        }
    }
}

impl SharedConfig {
    pub fn topology(&self) -> Topology {
        if self.sentinel.is_some() {
            Topology::Sentinel
        } else if !self.cluster_nodes.is_empty() {
            Topology::Cluster
        } else {
            Topology::Single
        }
    }

    /// Whether connections use TLS (see the module docs).
    pub fn uses_tls(&self) -> bool {
        match self.topology() {
            Topology::Single => self.redis_url.starts_with("rediss://"),
            Topology::Sentinel | Topology::Cluster => self.tls.is_some(),
        }
    }

    /// What logs and `check-config` show of the Redis target (no password).
    pub fn target_shown(&self) -> String {
        let tls = if self.uses_tls() { " (TLS)" } else { "" };
        match (&self.sentinel, self.topology()) {
            (Some(s), _) => format!(
                "sentinel master {:?} via {}{tls}",
                s.master_name,
                s.nodes.join(",")
            ),
            (None, Topology::Cluster) => format!("cluster {}{tls}", self.cluster_nodes.join(",")),
            _ => masked_url(&self.redis_url),
        }
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.validate_topology(path)?;
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

    fn validate_topology(&self, path: &str) -> Result<(), ConfigError> {
        if let Some(s) = &self.sentinel {
            if !self.cluster_nodes.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.cluster_nodes"),
                    "set either sentinel or cluster_nodes, not both",
                ));
            }
            if s.master_name.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.sentinel.master_name"),
                    "must name the master the sentinels monitor",
                ));
            }
            validate_nodes(&format!("{path}.sentinel.nodes"), &s.nodes)?;
        }
        if !self.cluster_nodes.is_empty() {
            validate_nodes(&format!("{path}.cluster_nodes"), &self.cluster_nodes)?;
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::new(
                    format!("{path}.tls.key_file"),
                    "cert_file and key_file go together (mutual TLS)",
                ));
            }
            if self.topology() == Topology::Single && !self.redis_url.starts_with("rediss://") {
                return Err(ConfigError::new(
                    format!("{path}.redis_url"),
                    "shared.tls is set: the URL must be rediss:// (no plain-text connection)",
                ));
            }
        }
        Ok(())
    }
}

/// The most nodes a list may name.
pub const MAX_NODES: usize = 64;

/// Checks a list of `host:port` nodes.
fn validate_nodes(key: &str, nodes: &[String]) -> Result<(), ConfigError> {
    if nodes.is_empty() || nodes.len() > MAX_NODES {
        return Err(ConfigError::new(
            key,
            format!("must list 1 to {MAX_NODES} nodes as host:port"),
        ));
    }
    for node in nodes {
        if parse_node(node).is_none() {
            return Err(ConfigError::new(
                key,
                format!("{node:?} is not host:port (port 1-65535)"),
            ));
        }
    }
    Ok(())
}

/// `host:port` (IPv6 in brackets) into its parts.
pub fn parse_node(node: &str) -> Option<(String, u16)> {
    let (host, port) = node.trim().rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'));
    ok.then(|| (host.to_owned(), port))
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

    #[test]
    fn validates_topologies_and_tls() {
        let mut c = SharedConfig {
            sentinel: Some(SentinelConfig {
                master_name: "mymaster".into(),
                nodes: vec!["10.0.0.1:26379".into(), "[::1]:26380".into()],
                password: Secret::default(),
            }),
            ..SharedConfig::default()
        };
        assert!(c.validate("shared").is_ok());
        assert_eq!(c.topology(), Topology::Sentinel);
        assert!(!c.uses_tls());
        c.tls = Some(TlsConfig::default());
        assert!(c.uses_tls(), "tls turns TLS on for sentinel");
        c.cluster_nodes = vec!["a:1".into()];
        assert_eq!(
            c.validate("shared").unwrap_err().path,
            "shared.cluster_nodes"
        );
        c.cluster_nodes.clear();
        for bad in ["", "host", "host:0", "host:99999", "ho st:1", ":6379"] {
            c.sentinel.as_mut().unwrap().nodes = vec![bad.into()];
            assert_eq!(
                c.validate("shared").unwrap_err().path,
                "shared.sentinel.nodes",
                "{bad:?}"
            );
        }
        c.sentinel.as_mut().unwrap().nodes = vec!["s:26379".into()];
        c.sentinel.as_mut().unwrap().master_name.clear();
        assert_eq!(
            c.validate("shared").unwrap_err().path,
            "shared.sentinel.master_name"
        );
        let mut c = SharedConfig {
            cluster_nodes: vec!["127.0.0.1:7000".into()],
            ..SharedConfig::default()
        };
        assert_eq!(c.topology(), Topology::Cluster);
        assert!(c.validate("shared").is_ok());
        c.cluster_nodes = (0..=MAX_NODES).map(|i| format!("h:{}", i + 1)).collect();
        assert_eq!(
            c.validate("shared").unwrap_err().path,
            "shared.cluster_nodes"
        );
        // A tls section with a plain URL is refused, not silently ignored.
        let mut c = SharedConfig {
            tls: Some(TlsConfig::default()),
            ..SharedConfig::default()
        };
        assert_eq!(c.validate("shared").unwrap_err().path, "shared.redis_url");
        c.redis_url = "rediss://127.0.0.1:6380".into();
        assert!(c.validate("shared").is_ok());
        c.tls.as_mut().unwrap().cert_file = Some("c.pem".into());
        assert_eq!(
            c.validate("shared").unwrap_err().path,
            "shared.tls.key_file"
        );
    }
}
