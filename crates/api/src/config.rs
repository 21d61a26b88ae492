//! `server:` — the listener, the tokens that guard it, and its limits.
//!
//! Departure from DESIGN §5: `idle_timeout` (default 75 s) is a key DESIGN does not list. It
//! bounds how long a keep-alive connection may sit between requests; see
//! [`server`](crate::server) for why it is separate from `header_timeout` and why 75 s.
//!
//! Departure from DESIGN §5: `stream_coalesce` (default `0s`, off) is a key DESIGN does not
//! list either. When set, streamed chunks after the first may be held up to that long so that
//! several leave in one TCP segment, as plain HAProxy does; see
//! [`server`](crate::server) for what it costs and saves.

use bytesize::ByteSize;
use hale_core::{ConfigError, Secret};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the one listener (proxy, status and metrics routes).
    pub listen: String,
    /// When set, `/internal/*` (but `/internal/health`) needs `Authorization: Bearer <token>`.
    pub admin_token: Secret,
    /// When non-empty, proxy routes need one of these as a bearer token.
    pub api_keys: Vec<Secret>,
    /// The largest request body accepted (buffered so it can be replayed on failover).
    pub max_body: ByteSize,
    /// A request head must arrive whole within this time: measured from the connection's
    /// accept for its first request, and from the first byte of each later one.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests before Hale closes it
    /// (HTTP/2: sends GOAWAY). A departure from DESIGN §5, which does not list this key.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long in-flight requests may run on after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Streamed HTTP/1 responses: how long a chunk after the first may be held so that later
    /// ones join it in one TCP segment. `0s` (the default) sends every chunk at once. At most
    /// [`MAX_STREAM_COALESCE`]. A departure from DESIGN §5, which does not list this key.
    #[serde(with = "humantime_serde")]
    pub stream_coalesce: Duration,
}

/// The longest `server.stream_coalesce` accepted: past it a stream's tokens would arrive in
/// bursts a reader notices as stalls, for no further saving (the kernel itself sends held
/// bytes within about 200 ms when nothing else is in flight).
pub const MAX_STREAM_COALESCE: Duration = Duration::from_secs(1);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:4100".to_owned(),
            admin_token: Secret::default(),
            api_keys: Vec::new(),
            max_body: ByteSize::mib(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            shutdown_grace: Duration::from_secs(30),
            stream_coalesce: Duration::ZERO,
        }
    }
}

impl ServerConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        self.listen.parse::<SocketAddr>().map_err(|e| {
            ConfigError::new(
                format!("{path}.listen"),
                format!(
                    "must be an address like 127.0.0.1:4100 ({e}): {:?}",
                    self.listen
                ),
            )
        })?;
        if let Some(i) = self.api_keys.iter().position(Secret::is_empty) {
            return Err(ConfigError::new(
                format!("{path}.api_keys[{i}]"),
                "must not be empty",
            ));
        }
        hale_core::config::require_size(path, "max_body", self.max_body.as_u64())?;
        hale_core::config::require_nonzero(path, "header_timeout", self.header_timeout)?;
        hale_core::config::require_nonzero(path, "idle_timeout", self.idle_timeout)?;
        hale_core::config::require_nonzero(path, "shutdown_grace", self.shutdown_grace)?;
        if self.stream_coalesce > MAX_STREAM_COALESCE {
            return Err(ConfigError::new(
                format!("{path}.stream_coalesce"),
                format!(
                    "must be at most {} (0s turns it off), got {}",
                    humantime::format_duration(MAX_STREAM_COALESCE),
                    humantime::format_duration(self.stream_coalesce)
                ),
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|e| ConfigError::new("server.listen", format!("{e}")))
    }
}
