//! The Redis connection pool: bb8 over bb8-redis's connection manager, made safe to run while
//! Redis is down.
//!
//! - Building the pool opens no connection (`build_unchecked`, no `min_idle`), so the gateway
//!   starts and serves with Redis unreachable.
//! - A checkout waits at most [`CONNECT_TIMEOUT`], a connect attempt is bounded by the same,
//!   and every command by [`OP_TIMEOUT`]: a dead or black-holed Redis costs a health check at
//!   most that, once, before coord switches to local checks.
//! - bb8-redis's manager never reports a connection broken, so after a Redis restart a pool
//!   would hand out dead connections unless every checkout PINGed first (one extra round trip
//!   and command per operation). Instead, [`Tracked`] wraps each connection with a flag that
//!   an operation sets when it fails at the transport level; bb8 asks `has_broken` when the
//!   connection comes back and drops the flagged ones. Checkouts are not tested.
//! - `redis://` and `rediss://` (rustls, webpki roots) URLs; the password comes from the URL
//!   or, when the URL has none, from `shared.redis_password` / `REDIS_PASSWORD`.

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, RedisError};
use std::time::Duration;
use tokio::time::timeout;

/// The longest a checkout or a connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest one command or script may take.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// Connections kept at most; each is multiplexed, so a few carry all of coord's traffic.
const MAX_CONNECTIONS: u32 = 4;

/// Why a Redis operation did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    /// Redis could not be reached, or the connection broke or timed out: fall back to local.
    #[error("Redis unreachable: {0}")]
    Unreachable(String),
    /// Redis answered with an error (a script error, a wrong password, …).
    #[error("Redis error: {0}")]
    Server(#[source] RedisError),
    /// The answer did not have the expected shape.
    #[error("unexpected answer from Redis: {0}")]
    Reply(String),
}

impl RedisFailure {
    /// Classifies a client error: transport-level failures mean "Redis unreachable".
    pub fn from_redis(e: RedisError) -> Self {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            Self::Unreachable(e.to_string())
        } else {
            Self::Server(e)
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

/// A pooled connection and whether an operation saw it fail at the transport level.
#[derive(Debug)]
pub struct Tracked {
    pub conn: MultiplexedConnection,
    broken: bool,
}

/// bb8-redis's manager with a bounded connect and broken-connection tracking.
#[derive(Debug, Clone)]
pub struct Manager {
    inner: RedisConnectionManager,
}

impl bb8::ManageConnection for Manager {
    type Connection = Tracked;
    type Error = RedisError;

    async fn connect(&self) -> Result<Tracked, RedisError> {
        match timeout(CONNECT_TIMEOUT, self.inner.connect()).await {
            Ok(conn) => Ok(Tracked {
                conn: conn?,
                broken: false,
            }),
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to Redis timed out",
            ))),
        }
    }

    async fn is_valid(&self, conn: &mut Tracked) -> Result<(), RedisError> {
        self.inner.is_valid(&mut conn.conn).await
    }

    fn has_broken(&self, conn: &mut Tracked) -> bool {
        conn.broken
    }
}

/// The pool; cheap to clone.
#[derive(Debug, Clone)]
pub struct RedisPool {
    pool: bb8::Pool<Manager>,
    info: ConnectionInfo,
}

/// Builds the connection info from a URL and an optional password.
pub fn connection_info(url: &str, password: &str) -> Result<ConnectionInfo, RedisFailure> {
    let info = url
        .into_connection_info()
        .map_err(|e| RedisFailure::Reply(format!("invalid Redis URL ({:?})", e.kind())))?;
    if password.is_empty() || info.redis_settings().password().is_some() {
        return Ok(info);
    }
    let settings = info.redis_settings().clone().set_password(password);
    Ok(info.set_redis_settings(settings))
}

impl RedisPool {
    /// A pool for `info` that has not connected yet (and will not fail because of Redis).
    pub fn new(info: ConnectionInfo) -> Result<Self, RedisFailure> {
        let inner = RedisConnectionManager::new(info.clone()).map_err(RedisFailure::from_redis)?;
        let pool = bb8::Pool::builder()
            .max_size(MAX_CONNECTIONS)
            .min_idle(None)
            .test_on_check_out(false)
            .retry_connection(false)
            .connection_timeout(CONNECT_TIMEOUT)
            .build_unchecked(Manager { inner });
        Ok(Self { pool, info })
    }

    /// The connection info, for the dedicated pub/sub connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Runs `op` on a pooled connection within [`OP_TIMEOUT`]; a transport failure marks the
    /// connection broken so the pool drops it.
    pub async fn run<T, F>(&self, op: F) -> Result<T, RedisFailure>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    {
        let mut pooled = self.pool.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => RedisFailure::from_redis(e),
            bb8::RunError::TimedOut => {
                RedisFailure::Unreachable("no connection within the connect timeout".to_owned())
            }
        })?;
        let tracked: &mut Tracked = &mut pooled;
        let result = match timeout(OP_TIMEOUT, op(&mut tracked.conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisFailure::from_redis(e)),
            Err(_) => Err(RedisFailure::Unreachable(format!(
                "no answer within {} ms",
                OP_TIMEOUT.as_millis()
            ))),
        };
        if matches!(&result, Err(f) if f.is_unreachable()) {
            tracked.broken = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_from_config_unless_the_url_has_one() {
        let info = connection_info("redis://127.0.0.1:6390/2", "s3cret").unwrap();
        assert_eq!(info.redis_settings().password(), Some("s3cret"));
        let info = connection_info("redis://:inurl@127.0.0.1:6390", "s3cret").unwrap();
        assert_eq!(info.redis_settings().password(), Some("inurl"));
        let info = connection_info("redis://127.0.0.1:6390", "").unwrap();
        assert_eq!(info.redis_settings().password(), None);
        assert!(connection_info("http://x", "").is_err());
    }

    #[test]
    fn tls_urls_are_accepted() {
        let info = connection_info("rediss://redis.example:6380", "").unwrap();
        assert!(matches!(
            info.addr(),
            redis::ConnectionAddr::TcpTls { host, port: 6380, .. } if host == "redis.example"
        ));
    }

    #[tokio::test]
    async fn a_pool_for_a_dead_redis_builds_and_fails_fast() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pool =
            RedisPool::new(connection_info(&format!("redis://127.0.0.1:{port}"), "").unwrap())
                .unwrap();
        let started = tokio::time::Instant::now();
        let r = pool
            .run(async |c: &mut MultiplexedConnection| {
                redis::cmd("PING").query_async::<String>(c).await
            })
            .await;
        assert!(matches!(r, Err(RedisFailure::Unreachable(_))), "{r:?}");
        assert!(started.elapsed() <= CONNECT_TIMEOUT + Duration::from_millis(200));
    }
}
