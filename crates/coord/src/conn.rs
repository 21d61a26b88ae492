//! The Redis connection: one multiplexed connection shared by every coord task, reconnected
//! on demand, made safe to run while Redis is down.
//!
//! A multiplexed connection pipelines every concurrent command over one socket, so it needs
//! no pool: there is no checkout to wait for, and a busy host or a slow Redis shows up as a
//! slow answer (one failed operation past [`OP_TIMEOUT`]), never as "no connection".
//!
//! - Nothing is opened at start; the first operation connects, bounded by [`CONNECT_TIMEOUT`],
//!   so the gateway starts and serves with Redis unreachable. Concurrent operations wait for
//!   that one connect rather than opening their own.
//! - Every command is bounded by [`OP_TIMEOUT`] (the rejoin's by [`REJOIN_OP_TIMEOUT`]). A timeout is a failed operation but keeps the
//!   connection (the answer may just be late); a transport error (reset, refused, closed)
//!   drops it, and the next operation reconnects. A generation number makes sure a failure
//!   on an old connection never drops a newer one.
//! - `redis://` and `rediss://` (rustls, webpki roots) URLs; the password comes from the URL
//!   or, when the URL has none, from `shared.redis_password` / `REDIS_PASSWORD`.
//!
//! (Departure from DESIGN §1's stack list: bb8/bb8-redis are no longer used by coord.)

use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, IntoConnectionInfo, RedisError};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::timeout;

/// The longest a connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest one command or script may take.
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest the rejoin's probe and re-reads may take. They delay no check (every round is
/// local until the rejoin is done), and a replica checking every endpoint itself on a
/// saturated host reads answers late: with [`OP_TIMEOUT`] it could never prove Redis usable
/// again and stayed in local fallback, checking everything, for good.
pub const REJOIN_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a Redis operation did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisFailure {
    /// Redis could not be reached, or the connection broke.
    #[error("Redis unreachable: {0}")]
    Unreachable(String),
    /// No answer within [`OP_TIMEOUT`].
    #[error("Redis did not answer within {} ms", OP_TIMEOUT.as_millis())]
    Timeout,
    /// Redis answered with an error (a script error, OOM, a wrong password, …).
    #[error("Redis error: {0}")]
    Server(#[source] RedisError),
    /// The answer did not have the expected shape.
    #[error("unexpected answer from Redis: {0}")]
    Reply(String),
}

impl RedisFailure {
    /// Classifies a client error: transport-level failures mean "Redis unreachable".
    pub fn from_redis(e: RedisError) -> Self {
        if e.is_timeout() {
            Self::Timeout
        } else if e.is_io_error()
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

    /// A short text for `/health/shared-status` and logs; never carries a password (redis-rs
    /// errors do not include the connection info, and neither do scripts' answers).
    pub fn summary(&self) -> String {
        let mut s = self.to_string();
        if s.len() > 200 {
            let mut cut = 200;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }
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

/// The shared connection; see the module docs. Clone the [`ResultCache`](crate::ResultCache)
/// that owns it, not this.
#[derive(Debug)]
pub struct RedisConn {
    client: redis::Client,
    info: ConnectionInfo,
    slot: Mutex<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u64,
    conn: Option<MultiplexedConnection>,
}

impl RedisConn {
    /// A connection holder for `info` that has not connected yet.
    pub fn new(info: ConnectionInfo) -> Result<Self, RedisFailure> {
        let client = redis::Client::open(info.clone()).map_err(RedisFailure::from_redis)?;
        Ok(Self {
            client,
            info,
            slot: Mutex::new(Slot::default()),
        })
    }

    /// The connection info, for the dedicated pub/sub connection.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// The client, for the dedicated pub/sub connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisFailure> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = &slot.conn {
            return Ok((slot.generation, c.clone()));
        }
        let conn = timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| RedisFailure::Unreachable("connecting to Redis timed out".to_owned()))?
        .map_err(RedisFailure::from_redis)?;
        slot.generation += 1;
        slot.conn = Some(conn.clone());
        Ok((slot.generation, conn))
    }

    async fn broken(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.generation == generation {
            slot.conn = None;
        }
    }

    /// Runs `op` on the shared connection within [`OP_TIMEOUT`]; a transport failure drops
    /// the connection so the next operation reconnects.
    pub async fn run<T, F>(&self, op: F) -> Result<T, RedisFailure>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    {
        self.run_within(OP_TIMEOUT, op).await
    }

    /// [`run`](Self::run) with another bound than [`OP_TIMEOUT`] (the rejoin's
    /// [`REJOIN_OP_TIMEOUT`]).
    pub async fn run_within<T, F>(&self, limit: Duration, op: F) -> Result<T, RedisFailure>
    where
        F: AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    {
        let (generation, mut conn) = self.get().await?;
        let result = match timeout(limit, op(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RedisFailure::from_redis(e)),
            Err(_) => Err(RedisFailure::Timeout),
        };
        if matches!(&result, Err(f) if f.is_unreachable()) {
            self.broken(generation).await;
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
    async fn a_connection_to_a_dead_redis_builds_and_fails_fast() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let conn =
            RedisConn::new(connection_info(&format!("redis://127.0.0.1:{port}"), "").unwrap())
                .unwrap();
        let started = tokio::time::Instant::now();
        let r = conn
            .run(async |c: &mut MultiplexedConnection| {
                redis::cmd("PING").query_async::<String>(c).await
            })
            .await;
        assert!(matches!(r, Err(RedisFailure::Unreachable(_))), "{r:?}");
        assert!(started.elapsed() <= CONNECT_TIMEOUT + Duration::from_millis(200));
    }
}
