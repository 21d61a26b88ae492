//! The endpoint model: one configured backend, as written in `endpoints:` ([`EndpointConfig`])
//! and as resolved for use ([`Endpoint`]): full check URLs, per-type defaults filled in.
//!
//! Per-type defaults follow what each server really exposes (Olla's table, extended):
//!
//! | type      | health check   | model list   |
//! |-----------|----------------|--------------|
//! | ollama    | `/` ("Ollama is running") | `/api/tags` |
//! | lmstudio  | `/v1/models`   | `/v1/models` |
//! | vllm      | `/health`      | `/v1/models` |
//! | llamacpp  | `/health`      | `/v1/models` |
//! | sglang    | `/health`      | `/v1/models` |
//! | tgi       | `/health`      | `/info`      |
//! | openai    | `/v1/models`   | `/v1/models` |
//! | http      | `/`            | none         |
//!
//! `health_check_url` and `model_url` may be a path (joined to `url`, keeping any base path
//! such as `/proxy/ollama`) or an absolute `http(s)://` URL.

use crate::config::{ConfigError, StartupConfig};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// The kind of server behind an endpoint; it picks the probe and the default paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    Ollama,
    Lmstudio,
    Vllm,
    Llamacpp,
    Sglang,
    Tgi,
    Openai,
    Http,
}

impl EndpointKind {
    pub const ALL: [EndpointKind; 8] = [
        Self::Ollama,
        Self::Lmstudio,
        Self::Vllm,
        Self::Llamacpp,
        Self::Sglang,
        Self::Tgi,
        Self::Openai,
        Self::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ollama => "ollama",
            Self::Lmstudio => "lmstudio",
            Self::Vllm => "vllm",
            Self::Llamacpp => "llamacpp",
            Self::Sglang => "sglang",
            Self::Tgi => "tgi",
            Self::Openai => "openai",
            Self::Http => "http",
        }
    }

    /// The health-check path used when `health_check_url` is not set.
    pub fn default_health_path(self) -> &'static str {
        match self {
            Self::Ollama | Self::Http => "/",
            Self::Lmstudio | Self::Openai => "/v1/models",
            Self::Vllm | Self::Llamacpp | Self::Sglang | Self::Tgi => "/health",
        }
    }

    /// The model-list path used when `model_url` is not set; `None` where the type has none.
    pub fn default_model_path(self) -> Option<&'static str> {
        match self {
            Self::Ollama => Some("/api/tags"),
            Self::Tgi => Some("/info"),
            Self::Lmstudio | Self::Openai | Self::Vllm | Self::Llamacpp | Self::Sglang => {
                Some("/v1/models")
            }
            Self::Http => None,
        }
    }

    /// Whether the Ollama-native API (`/api/chat`, `/api/tags`, …) can be routed to it.
    pub fn speaks_ollama(self) -> bool {
        self == Self::Ollama
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an endpoint's health is learnt (`check:`).
///
/// `active` (the default): the probe checks it on its schedule. `passive`: no probe traffic
/// at all, for cloud APIs without a health path: it is routed for its static `models` (so
/// that list must not be empty: there is no discovery request either), starts `healthy`,
/// and only traffic marks it down; after its hold time one trial request decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckMode {
    #[default]
    Active,
    Passive,
}

impl CheckMode {
    pub fn is_passive(self) -> bool {
        self == Self::Passive
    }
}

/// One entry of `endpoints:` as written by the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    pub url: String,
    #[serde(rename = "type", default = "default_kind")]
    pub kind: EndpointKind,
    /// Higher is tried first.
    #[serde(default = "default_priority")]
    pub priority: i32,
    #[serde(default = "default_weight")]
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_url: Option<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub check_interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Static model list: what the endpoint is routed for. Empty means "discover".
    #[serde(default)]
    pub models: Vec<String>,
    /// Sent upstream as a bearer token (checks and proxied requests); never shown.
    #[serde(default)]
    pub api_key: Secret,
    #[serde(default)]
    pub startup: StartupConfig,
    /// Overrides `proxy.first_byte_timeout` for this endpoint: how long a proxied request may
    /// wait for the response head.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_byte_timeout: Option<Duration>,
    /// Overrides `proxy.idle_timeout` for this endpoint: how long a response body may pause
    /// between two reads.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// `active` (probed) or `passive` (health from traffic only); see [`CheckMode`].
    #[serde(default)]
    pub check: CheckMode,
    /// Overrides `health.discovery_interval` for this endpoint: how often its model list is
    /// re-read, and the least time between two rediscoveries requests ask for.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub discovery_interval: Option<Duration>,
}

fn default_kind() -> EndpointKind {
    EndpointKind::Openai
}
fn default_priority() -> i32 {
    100
}
fn default_weight() -> f64 {
    1.0
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl EndpointConfig {
    /// A config with every optional field at its default; handy for tests and examples.
    pub fn new(name: impl Into<String>, url: impl Into<String>, kind: EndpointKind) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            kind,
            priority: default_priority(),
            weight: default_weight(),
            health_check_url: None,
            model_url: None,
            check_interval: default_interval(),
            check_timeout: default_timeout(),
            models: Vec::new(),
            api_key: Secret::default(),
            startup: StartupConfig::default(),
            first_byte_timeout: None,
            idle_timeout: None,
            check: CheckMode::Active,
            discovery_interval: None,
        }
    }

    /// Checks this entry and resolves it; `path` is its key path, e.g. `endpoints[2]`.
    pub fn resolve(&self, path: &str) -> Result<Endpoint, ConfigError> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "must not be empty",
            ));
        }
        if name.len() > 128
            || name
                .chars()
                .any(|c| c.is_control() || c == '/' || c.is_whitespace())
        {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "must be at most 128 characters, without spaces, '/' or control characters",
            ));
        }
        let base =
            parse_http_url(&self.url).map_err(|m| ConfigError::new(format!("{path}.url"), m))?;
        let health_url = join(
            &base,
            self.health_check_url
                .as_deref()
                .unwrap_or(self.kind.default_health_path()),
        )
        .map_err(|m| ConfigError::new(format!("{path}.health_check_url"), m))?;
        let model_url = match (&self.model_url, self.kind.default_model_path()) {
            (Some(p), _) if p.is_empty() => None,
            (Some(p), _) => {
                Some(join(&base, p).map_err(|m| ConfigError::new(format!("{path}.model_url"), m))?)
            }
            (None, Some(p)) => {
                Some(join(&base, p).map_err(|m| ConfigError::new(format!("{path}.model_url"), m))?)
            }
            (None, None) => None,
        };
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(ConfigError::new(
                format!("{path}.weight"),
                format!("must be a number greater than 0, got {}", self.weight),
            ));
        }
        crate::config::require_nonzero(path, "check_interval", self.check_interval)?;
        crate::config::require_nonzero(path, "check_timeout", self.check_timeout)?;
        if self.check_timeout >= self.check_interval {
            return Err(ConfigError::new(
                format!("{path}.check_timeout"),
                format!(
                    "must be less than check_interval ({} >= {})",
                    humantime::format_duration(self.check_timeout),
                    humantime::format_duration(self.check_interval)
                ),
            ));
        }
        if let Some((i, _)) = self
            .models
            .iter()
            .enumerate()
            .find(|(_, m)| m.trim().is_empty())
        {
            return Err(ConfigError::new(
                format!("{path}.models[{i}]"),
                "must not be empty",
            ));
        }
        if self.check.is_passive() && self.models.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.models"),
                "must list the endpoint's models when check is passive (a passive endpoint \
                 sends no model-list request, so nothing could be discovered)",
            ));
        }
        self.startup.validate(&format!("{path}.startup"))?;
        if let Some(t) = self.first_byte_timeout {
            crate::config::require_nonzero(path, "first_byte_timeout", t)?;
        }
        if let Some(t) = self.idle_timeout {
            crate::config::require_nonzero(path, "idle_timeout", t)?;
        }
        if let Some(t) = self.discovery_interval {
            crate::config::require_nonzero(path, "discovery_interval", t)?;
        }
        Ok(Endpoint {
            name: Arc::from(name),
            url: base,
            kind: self.kind,
            priority: self.priority,
            weight: self.weight,
            health_url,
            model_url,
            check_interval: self.check_interval,
            check_timeout: self.check_timeout,
            models: self
                .models
                .iter()
                .map(|m| Arc::<str>::from(m.as_str()))
                .collect(),
            api_key: self.api_key.clone(),
            startup: self.startup.clone(),
            first_byte_timeout: self.first_byte_timeout,
            idle_timeout: self.idle_timeout,
            check: self.check,
            discovery_interval: self.discovery_interval,
        })
    }
}

fn parse_http_url(raw: &str) -> Result<Url, String> {
    // Credentials in a URL are secrets: error messages show the URL without them.
    let shown = crate::secret::redact_userinfo(raw);
    let raw_for_errors = shown.as_str();
    let url = Url::parse(raw).map_err(|e| format!("not a valid URL ({e}): {raw_for_errors:?}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme must be http or https, got {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL has no host: {raw_for_errors:?}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "base URL must not have a query or fragment: {raw_for_errors:?}"
        ));
    }
    Ok(url)
}

/// Joins a path to the base URL, keeping the base's own path prefix; absolute URLs pass as is.
fn join(base: &Url, path_or_url: &str) -> Result<Url, String> {
    if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
        return parse_http_url(path_or_url);
    }
    if !path_or_url.starts_with('/') {
        return Err(format!(
            "must be a path starting with '/' or an http(s) URL, got {:?}",
            crate::secret::redact_userinfo(path_or_url)
        ));
    }
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path_or_url);
    let (p, q) = joined
        .split_once('?')
        .map_or((joined.as_str(), None), |(p, q)| (p, Some(q)));
    url.set_path(p);
    url.set_query(q);
    Ok(url)
}

/// A resolved, immutable endpoint. Shared as `Arc<Endpoint>`; identity is the name.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub name: Arc<str>,
    /// The base URL requests are proxied to.
    pub url: Url,
    pub kind: EndpointKind,
    pub priority: i32,
    pub weight: f64,
    pub health_url: Url,
    pub model_url: Option<Url>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    /// Static models (empty = discovered ones are used).
    pub models: Vec<Arc<str>>,
    pub api_key: Secret,
    pub startup: StartupConfig,
    /// This endpoint's own `first_byte_timeout`, if it overrides the proxy's.
    pub first_byte_timeout: Option<Duration>,
    /// This endpoint's own `idle_timeout`, if it overrides the proxy's.
    pub idle_timeout: Option<Duration>,
    /// Probed (`active`) or health from traffic only (`passive`).
    pub check: CheckMode,
    /// This endpoint's own `discovery_interval`, if it overrides `health.discovery_interval`.
    pub discovery_interval: Option<Duration>,
}

impl Endpoint {
    /// Whether its models are discovered (no static list, a model URL to read): only then
    /// can a rediscovery learn anything.
    pub fn discovers(&self) -> bool {
        self.models.is_empty() && self.model_url.is_some() && !self.check.is_passive()
    }
}

impl Endpoint {
    /// The full URL for a request path on this backend (keeps the base path).
    pub fn url_for(&self, path_and_query: &str) -> String {
        format!(
            "{}{}",
            self.url.as_str().trim_end_matches('/'),
            path_and_query
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_type_defaults() {
        let e = EndpointConfig::new("o", "http://127.0.0.1:11434", EndpointKind::Ollama)
            .resolve("endpoints[0]")
            .unwrap();
        assert_eq!(e.health_url.as_str(), "http://127.0.0.1:11434/");
        assert_eq!(
            e.model_url.unwrap().as_str(),
            "http://127.0.0.1:11434/api/tags"
        );
        let e = EndpointConfig::new("v", "http://h:8000/base/", EndpointKind::Vllm)
            .resolve("e")
            .unwrap();
        assert_eq!(e.health_url.as_str(), "http://h:8000/base/health");
        assert_eq!(
            e.url_for("/v1/chat/completions"),
            "http://h:8000/base/v1/chat/completions"
        );
        let e = EndpointConfig::new("h", "http://h:1", EndpointKind::Http)
            .resolve("e")
            .unwrap();
        assert!(e.model_url.is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = EndpointConfig::new("a", "ftp://x", EndpointKind::Vllm);
        assert_eq!(
            c.resolve("endpoints[1]").unwrap_err().path,
            "endpoints[1].url"
        );
        c.url = "http://x:1".into();
        c.check_timeout = Duration::from_secs(5);
        let err = c.resolve("endpoints[1]").unwrap_err();
        assert_eq!(err.path, "endpoints[1].check_timeout");
        assert!(err.message.contains("less than check_interval"), "{err}");
        c.check_timeout = Duration::from_secs(1);
        c.health_check_url = Some("health".into());
        assert_eq!(c.resolve("e").unwrap_err().path, "e.health_check_url");
        c.health_check_url = None;
        c.weight = 0.0;
        assert_eq!(c.resolve("e").unwrap_err().path, "e.weight");
        c.weight = 1.0;
        c.first_byte_timeout = Some(Duration::ZERO);
        assert_eq!(c.resolve("e").unwrap_err().path, "e.first_byte_timeout");
        c.first_byte_timeout = Some(Duration::from_secs(30));
        c.idle_timeout = Some(Duration::ZERO);
        assert_eq!(c.resolve("e").unwrap_err().path, "e.idle_timeout");
        c.idle_timeout = None;
        c.discovery_interval = Some(Duration::ZERO);
        assert_eq!(c.resolve("e").unwrap_err().path, "e.discovery_interval");
        c.discovery_interval = Some(Duration::from_secs(u64::MAX));
        assert_eq!(c.resolve("e").unwrap_err().path, "e.discovery_interval");
        c.discovery_interval = Some(Duration::from_secs(10));
        assert_eq!(
            c.resolve("e").unwrap().discovery_interval,
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn proxy_deadline_overrides_are_optional() {
        let c: EndpointConfig = serde_json::from_str(r#"{"name":"a","url":"http://h:1"}"#).unwrap();
        let e = c.resolve("e").unwrap();
        assert_eq!((e.first_byte_timeout, e.idle_timeout), (None, None));
        let c: EndpointConfig = serde_json::from_str(
            r#"{"name":"a","url":"http://h:1","first_byte_timeout":"90s","idle_timeout":"15s"}"#,
        )
        .unwrap();
        let e = c.resolve("e").unwrap();
        assert_eq!(e.first_byte_timeout, Some(Duration::from_secs(90)));
        assert_eq!(e.idle_timeout, Some(Duration::from_secs(15)));
        assert!(
            serde_json::from_str::<EndpointConfig>(
                r#"{"name":"a","url":"http://h:1","idle_timeout":"soon"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn url_errors_never_show_credentials() {
        let c = EndpointConfig::new("a", "http://user:hunter2@x:1/?q=1", EndpointKind::Vllm);
        let err = c.resolve("e").unwrap_err();
        assert!(!err.message.contains("hunter2"), "{err}");
        assert!(err.message.contains("<redacted>@x:1"), "{err}");
    }

    #[test]
    fn passive_check_needs_a_static_model_list() {
        let c: EndpointConfig = serde_json::from_str(r#"{"name":"a","url":"http://h:1"}"#).unwrap();
        assert_eq!(c.check, CheckMode::Active, "active by default");
        let c: EndpointConfig =
            serde_json::from_str(r#"{"name":"a","url":"http://h:1","check":"passive"}"#).unwrap();
        let err = c.resolve("endpoints[3]").unwrap_err();
        assert_eq!(err.path, "endpoints[3].models");
        assert!(err.message.contains("passive"), "{err}");
        let c: EndpointConfig = serde_json::from_str(
            r#"{"name":"a","url":"http://h:1","check":"passive","models":["gpt-4o"]}"#,
        )
        .unwrap();
        assert_eq!(c.resolve("e").unwrap().check, CheckMode::Passive);
        for bad in [r#""Passive""#, r#""none""#, "1", "null"] {
            let raw = format!(r#"{{"name":"a","url":"http://h:1","check":{bad}}}"#);
            assert!(
                serde_json::from_str::<EndpointConfig>(&raw).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn kind_parses_lowercase() {
        for k in EndpointKind::ALL {
            let parsed: EndpointKind = serde_json::from_str(&format!("\"{k}\"")).unwrap();
            assert_eq!(parsed, k);
        }
    }
}

/// Whether two model names denote the same model. Ollama reports `llama3:latest` for a model
/// pulled as `llama3`, so a missing tag and `:latest` are the same.
pub fn same_model(a: &str, b: &str) -> bool {
    fn base(s: &str) -> &str {
        s.strip_suffix(":latest").unwrap_or(s)
    }
    a == b || base(a) == base(b)
}

#[cfg(test)]
mod model_name_tests {
    use super::same_model;

    #[test]
    fn latest_tag_is_implied() {
        assert!(same_model("llama3", "llama3:latest"));
        assert!(same_model("llama3:latest", "llama3"));
        assert!(!same_model("llama3", "llama3:8b"));
        assert!(same_model("gpt-4o", "gpt-4o"));
    }
}
