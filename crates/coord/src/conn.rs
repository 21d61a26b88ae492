//! The Redis connection: one multiplexed connection shared by every coord task, reconnected
//! on demand, made safe to run while Redis is down — to one Redis, to the master that
//! Sentinel names, or to a Redis Cluster.
//!
//! A multiplexed connection pipelines every concurrent command over one socket, so it needs
//! no pool: there is no checkout to wait for, and a busy host or a slow Redis shows up as a
//! slow answer (one failed operation past [`OP_TIMEOUT`]), never as "no connection".
//!
//! - Nothing is opened at start; the first operation connects, bounded by [`CONNECT_TIMEOUT`]
//!   ([`DISCOVER_TIMEOUT`] when sentinels or cluster seeds must be asked first), so the
//!   gateway starts and serves with Redis unreachable. Concurrent operations wait for that
//!   one connect rather than opening their own.
//! - Every command is bounded by [`OP_TIMEOUT`] (the rejoin's by [`REJOIN_OP_TIMEOUT`]). A timeout is a failed operation but keeps the
//!   connection (the answer may just be late); a transport error (reset, refused, closed)
//!   drops it, and the next operation reconnects. A generation number makes sure a failure
//!   on an old connection never drops a newer one.
//! - `redis://` and `rediss://` (rustls, webpki roots, or `shared.tls.ca_file`) URLs; the
//!   password comes from the URL or, when the URL has none, from `shared.redis_password` /
//!   `REDIS_PASSWORD`.
//! - **Sentinel** (`shared.sentinel`): every (re)connect asks the sentinels for the master of
//!   `master_name` (redis-rs's `SentinelClient`, which checks with `ROLE` that the node it
//!   names really is a master), so coord never writes to a replica. Besides transport errors,
//!   `READONLY` (the node was demoted) and `MASTERDOWN` answers drop the connection too: the
//!   next operation asks the sentinels again, and so follows a failover.
//! - **Cluster** (`shared.cluster_nodes`): redis-rs's cluster connection, which learns the slot
//!   map from the seeds, follows `MOVED`/`ASK` and refreshes the map when a master fails
//!   over to its replica. Every key of a namespace shares one hash tag, so every script and
//!   pipeline goes to the one node owning the namespace's slot; `CLUSTERDOWN`/`TRYAGAIN`
//!   answers drop the connection like a transport error. Events use sharded pub/sub
//!   ([`crate::scripts::Scripts::publish`]: the scripts `SPUBLISH` on the namespace's slot, the subscriber
//!   `SSUBSCRIBE`s through a RESP3 cluster connection that re-subscribes after failovers).
//! - **TLS** for all three: a wrong CA or a server certificate that does not verify fails the
//!   connect with a TLS error, which is counted and logged like any failure (local fallback);
//!   there is no plain-text retry.
//!
//! (Departure from DESIGN §1's stack list: bb8/bb8-redis are no longer used by coord.)

use crate::config::{SharedConfig, TlsConfig, Topology, parse_node};
use futures_util::StreamExt as _;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    PushKind, RedisError, RedisFuture, ServerErrorKind, TlsCertificates, TlsMode, Value,
};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio::time::timeout;

/// The longest a connect attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest a connect may take that first asks the sentinels or the cluster seeds (one
/// round trip more, and a dead sentinel to skip).
pub const DISCOVER_TIMEOUT: Duration = Duration::from_millis(1000);
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
        let moved_on = matches!(
            e.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
            )
        );
        if e.is_timeout() {
            Self::Timeout
        } else if moved_on {
            // The node is no (usable) master any more: a failover. Treated as unreachable,
            // so the connection is dropped and the next operation finds the new master.
            Self::Unreachable(e.to_string())
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

/// Reads the PEM files `shared.tls` names; an unreadable file names its key.
fn certificates(tls: &TlsConfig) -> Result<TlsCertificates, RedisFailure> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            RedisFailure::Reply(format!(
                "shared.tls.{key}: cannot read {}: {e}",
                path.display()
            ))
        })
    };
    let root_cert = match &tls.ca_file {
        Some(p) => Some(read("ca_file", p)?),
        None => None,
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read("cert_file", c)?,
            client_key: read("key_file", k)?,
        }),
        _ => None,
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn tls_mode(tls: Option<&TlsConfig>) -> TlsMode {
    match tls {
        Some(t) if t.insecure_skip_verify => TlsMode::Insecure,
        _ => TlsMode::Secure,
    }
}

/// `host:port` nodes as connection infos, with TLS when `tls`.
fn node_infos(
    nodes: &[String],
    tls: Option<&TlsConfig>,
) -> Result<Vec<ConnectionInfo>, RedisFailure> {
    nodes
        .iter()
        .map(|n| {
            let (host, port) = parse_node(n)
                .ok_or_else(|| RedisFailure::Reply(format!("invalid node address {n:?}")))?;
            let addr = match tls {
                Some(t) => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: t.insecure_skip_verify,
                    tls_params: None,
                },
                None => ConnectionAddr::Tcp(host, port),
            };
            addr.into_connection_info()
                .map_err(RedisFailure::from_redis)
        })
        .collect()
}

/// Where the connection goes.
enum Target {
    Single(redis::Client),
    /// Asked for the master at every (re)connect; needs `&mut`, and the slot lock serialises
    /// connects anyway.
    Sentinel(Mutex<SentinelClient>),
    Cluster(Box<(ClusterClient, ClusterSpec)>),
}

/// What a cluster client is built from (redis-rs's builder is not `Clone`).
struct ClusterSpec {
    nodes: Vec<ConnectionInfo>,
    password: String,
    tls: Option<(TlsMode, TlsCertificates)>,
}

impl ClusterSpec {
    fn builder(&self) -> ClusterClientBuilder {
        let mut b = ClusterClientBuilder::new(self.nodes.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(OP_TIMEOUT)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200);
        if !self.password.is_empty() {
            b = b.password(self.password.clone());
        }
        if let Some((mode, certs)) = &self.tls {
            b = b.tls(*mode).certs(certs.clone());
        }
        b
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Single",
            Self::Sentinel(_) => "Sentinel",
            Self::Cluster(_) => "Cluster",
        })
    }
}

/// A connection to the data nodes: one Redis (single or Sentinel's master) or a Cluster.
/// Scripts and commands run on it alike ([`ConnectionLike`]).
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Connection::Single",
            Self::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The subscriber's event stream: classic pub/sub on one Redis, sharded pub/sub on a Cluster.
pub enum Events {
    Plain(PubSub),
    Cluster {
        /// Kept so the subscription lives.
        _conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

/// One event: its payload, or why it could not be read.
pub type Event = Result<String, String>;

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain(_) => "Events::Plain",
            Self::Cluster { .. } => "Events::Cluster",
        })
    }
}

impl Events {
    /// The next message on the channel; `None` when the connection closed.
    pub async fn next(&mut self) -> Option<Event> {
        match self {
            Self::Plain(p) => {
                let m = p.on_message().next().await?;
                Some(m.get_payload::<String>().map_err(|e| e.to_string()))
            }
            Self::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                if push.kind == PushKind::SMessage || push.kind == PushKind::Message {
                    return Some(match push.data.get(1) {
                        Some(v) => {
                            redis::from_redis_value_ref::<String>(v).map_err(|e| e.to_string())
                        }
                        None => Err("a message without payload".to_owned()),
                    });
                }
                if matches!(push.kind, PushKind::Disconnection | PushKind::SUnsubscribe) {
                    // The node serving the slot went away (redis-rs would only retry that
                    // address) or the slot moved: end the stream, so the subscriber builds a
                    // new subscription from a fresh slot map and re-reads what it missed.
                    return None;
                }
                // Subscription confirmations carry no result.
            },
        }
    }
}

/// The shared connection; see the module docs. Clone the [`ResultCache`](crate::ResultCache)
/// that owns it, not this.
#[derive(Debug)]
pub struct RedisConn {
    target: Target,
    topology: Topology,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    generation: u64,
    conn: Option<Connection>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("generation", &self.generation)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl RedisConn {
    /// A connection holder for one Redis at `info` that has not connected yet.
    pub fn new(info: ConnectionInfo) -> Result<Self, RedisFailure> {
        let client = redis::Client::open(info).map_err(RedisFailure::from_redis)?;
        Ok(Self {
            target: Target::Single(client),
            topology: Topology::Single,
            slot: Mutex::new(Slot::default()),
        })
    }

    /// A connection holder for the topology `config` describes (see the module docs); reads
    /// the TLS files, connects nothing.
    pub fn from_config(config: &SharedConfig) -> Result<Self, RedisFailure> {
        if config.uses_tls() {
            // redis-rs builds its rustls configs with the process default provider; without
            // one installed (and with no single provider chosen by crate features) rustls
            // panics. Ring is the workspace's provider; an error means one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let tls = config.tls.as_ref();
        let certs = tls.map(certificates).transpose()?;
        let password = config.redis_password.expose();
        let target = match (config.topology(), &config.sentinel) {
            (Topology::Sentinel, Some(s)) => {
                let sentinels = node_infos(&s.nodes, tls)?
                    .into_iter()
                    .map(|i| i.addr().clone())
                    .collect::<Vec<_>>();
                let mut b = SentinelClientBuilder::new(
                    sentinels,
                    &s.master_name,
                    SentinelServerType::Master,
                )
                .map_err(RedisFailure::from_redis)?;
                if !password.is_empty() {
                    b = b.set_client_to_redis_password(password);
                }
                if !s.password.is_empty() {
                    b = b.set_client_to_sentinel_password(s.password.expose());
                }
                if let Some(certs) = certs {
                    b = b
                        .set_client_to_redis_tls_mode(tls_mode(tls))
                        .set_client_to_sentinel_tls_mode(tls_mode(tls))
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_certificates(certs);
                }
                Target::Sentinel(Mutex::new(b.build().map_err(RedisFailure::from_redis)?))
            }
            (Topology::Cluster, _) => {
                let spec = ClusterSpec {
                    nodes: node_infos(&config.cluster_nodes, tls)?,
                    password: password.to_owned(),
                    tls: certs.map(|c| (tls_mode(tls), c)),
                };
                let client = spec.builder().build().map_err(RedisFailure::from_redis)?;
                Target::Cluster(Box::new((client, spec)))
            }
            _ => {
                let mut info = connection_info(&config.redis_url, password)?;
                if let (Some(t), ConnectionAddr::TcpTls { host, port, .. }) = (tls, info.addr()) {
                    let addr = ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: t.insecure_skip_verify,
                        tls_params: None,
                    };
                    info = info.set_addr(addr);
                }
                let client = match certs {
                    Some(certs) => redis::Client::build_with_tls(info, certs),
                    None => redis::Client::open(info),
                }
                .map_err(RedisFailure::from_redis)?;
                Target::Single(client)
            }
        };
        Ok(Self {
            target,
            topology: config.topology(),
            slot: Mutex::new(Slot::default()),
        })
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Opens the subscriber's dedicated connection and subscribes to `channel`: classic
    /// pub/sub on one Redis (on Sentinel's current master, asked anew), sharded pub/sub on a
    /// Cluster. Bounded by `limit` overall.
    pub async fn subscribe(&self, channel: &str, limit: Duration) -> Result<Events, RedisFailure> {
        let open = async {
            match &self.target {
                Target::Single(client) => {
                    let mut p = client.get_async_pubsub().await?;
                    p.subscribe(channel).await?;
                    Ok(Events::Plain(p))
                }
                Target::Sentinel(sentinel) => {
                    let client = sentinel.lock().await.async_get_client().await?;
                    let mut p = client.get_async_pubsub().await?;
                    p.subscribe(channel).await?;
                    Ok(Events::Plain(p))
                }
                Target::Cluster(cluster) => {
                    let spec = &cluster.1;
                    let (tx, pushes) = mpsc::unbounded_channel();
                    let client = spec
                        .builder()
                        .use_protocol(ProtocolVersion::RESP3)
                        .push_sender(tx)
                        .build()?;
                    let mut conn = client.get_async_connection().await?;
                    conn.ssubscribe(channel).await?;
                    Ok(Events::Cluster {
                        _conn: conn,
                        pushes,
                    })
                }
            }
        };
        timeout(limit, open)
            .await
            .map_err(|_| RedisFailure::Unreachable("subscribing timed out".to_owned()))?
            .map_err(RedisFailure::from_redis)
    }

    async fn get(&self) -> Result<(u64, Connection), RedisFailure> {
        let mut slot = self.slot.lock().await;
        if let Some(c) = &slot.conn {
            return Ok((slot.generation, c.clone()));
        }
        let (limit, connect) = match &self.target {
            Target::Single(client) => (
                CONNECT_TIMEOUT,
                Box::pin(async {
                    client
                        .get_multiplexed_async_connection()
                        .await
                        .map(Connection::Single)
                })
                    as futures_util::future::BoxFuture<'_, Result<Connection, RedisError>>,
            ),
            Target::Sentinel(sentinel) => (
                DISCOVER_TIMEOUT,
                Box::pin(async {
                    let master = sentinel.lock().await.async_get_client().await?;
                    master
                        .get_multiplexed_async_connection()
                        .await
                        .map(Connection::Single)
                }) as _,
            ),
            Target::Cluster(cluster) => (
                DISCOVER_TIMEOUT,
                Box::pin(async {
                    cluster
                        .0
                        .get_async_connection()
                        .await
                        .map(Connection::Cluster)
                }) as _,
            ),
        };
        let conn = timeout(limit, connect)
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
        F: AsyncFnOnce(&mut Connection) -> Result<T, RedisError>,
    {
        self.run_within(OP_TIMEOUT, op).await
    }

    /// [`run`](Self::run) with another bound than [`OP_TIMEOUT`] (the rejoin's
    /// [`REJOIN_OP_TIMEOUT`]).
    pub async fn run_within<T, F>(&self, limit: Duration, op: F) -> Result<T, RedisFailure>
    where
        F: AsyncFnOnce(&mut Connection) -> Result<T, RedisError>,
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
            .run(async |c: &mut Connection| redis::cmd("PING").query_async::<String>(c).await)
            .await;
        assert!(matches!(r, Err(RedisFailure::Unreachable(_))), "{r:?}");
        assert!(started.elapsed() <= CONNECT_TIMEOUT + Duration::from_millis(200));
    }
}
