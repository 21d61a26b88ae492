//! Redis topologies for failover tests: a master with replicas behind three sentinels
//! ([`RedisSentinelSet`]), a Redis Cluster ([`RedisCluster`]), and a Redis that speaks only
//! TLS with a test CA ([`RedisTls`], certificates made by [`TestCa`] with rcgen, never
//! checked in).
//!
//! Every node is a real `redis-server` (sentinels: Debian's `redis-sentinel <conf>`) on a free loopback port, with persistence off and its
//! files in a private temporary directory; every wait is bounded and fails with the node's
//! own output; every process is killed when its handle is dropped. [`RedisNode::kill`] is a
//! SIGKILL, as if the machine vanished.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use redis::aio::MultiplexedConnection;
use redis::{Client, ConnectionAddr, IntoConnectionInfo as _, TlsCertificates};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::output::CapturedOutput;
use crate::port::try_free_port;
use crate::process::{find_on_path, kill_and_wait, kill_blocking};

/// How long a node may take to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a topology may take to settle (replication linked, sentinels know each other,
/// cluster state ok).
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
/// One probe's bound.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(50);
const DROP_WAIT: Duration = Duration::from_secs(2);

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "halemaster";

/// One `redis-server` process (a data node or a sentinel).
#[derive(Debug)]
pub struct RedisNode {
    port: u16,
    child: Option<Child>,
    output: CapturedOutput,
    tls: Option<TlsCertificates>,
}

impl RedisNode {
    /// Spawns `redis-server` with `args` (after the common ones: loopback, `port`, no
    /// persistence) and waits until it answers PING. `config_file` is written into the
    /// node's directory first and passed as the first argument when given (sentinels need a
    /// writable config file).
    async fn spawn(
        name: &str,
        program: &str,
        port: u16,
        config_file: Option<String>,
        args: &[String],
        tls: Option<TlsCertificates>,
    ) -> anyhow::Result<Self> {
        let program = find_on_path(program).ok_or_else(|| {
            anyhow!("{program} not found on PATH: run `cargo xtask setup` (as root)")
        })?;
        let output = CapturedOutput::new(name)?;
        let (stdout, stderr, mark) = output.attach()?;
        let mut cmd = Command::new(program);
        if let Some(text) = config_file {
            let path = output.dir().join("node.conf");
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            cmd.arg(path);
        }
        let port_arg = if tls.is_some() {
            "0"
        } else {
            &port.to_string()
        };
        cmd.args(["--bind", "127.0.0.1", "--port", port_arg])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(args)
            .arg("--dir")
            .arg(output.dir())
            .current_dir(output.dir())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawning redis-server")?;
        let mut node = Self {
            port,
            child: Some(child),
            output,
            tls,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(child) = node.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{name} on port {port} exited with {status}\n{}",
                    node.output.quote_since(mark)
                );
            }
            if let Ok(Ok(pong)) = timeout(PROBE_TIMEOUT, node.query::<String>(&["PING"])).await
                && pong == "PONG"
            {
                return Ok(node);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} on port {port} did not answer PING within {READY_DEADLINE:?}\n{}",
                    node.output.quote_since(mark)
                );
            }
            sleep(POLL).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A new connection to this node (TLS with the test CA for a TLS node).
    pub async fn client(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = match &self.tls {
            Some(certs) => {
                let info = ConnectionAddr::TcpTls {
                    host: "127.0.0.1".to_owned(),
                    port: self.port,
                    insecure: false,
                    tls_params: None,
                }
                .into_connection_info()?;
                Client::build_with_tls(info, certs.clone())?
            }
            None => Client::open(format!("redis://{}", self.addr()))?,
        };
        timeout(PROBE_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", self.addr()))?
            .with_context(|| format!("connecting to {}", self.addr()))
    }

    /// Runs one command on a fresh connection, bounded by a second.
    pub async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut c = self.client().await?;
        let mut cmd = redis::cmd(args.first().copied().unwrap_or("PING"));
        for a in args.iter().skip(1) {
            cmd.arg(*a);
        }
        timeout(PROBE_TIMEOUT, cmd.query_async::<T>(&mut c))
            .await
            .map_err(|_| anyhow!("{args:?} on {} timed out", self.addr()))?
            .with_context(|| format!("{args:?} on {}", self.addr()))
    }

    /// SIGKILL, and wait for the exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child).await?;
        }
        Ok(())
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        self.output.quote_since(crate::output::Mark::default())
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_blocking(child, DROP_WAIT);
        }
    }
}

/// Polls `probe` every 50 ms until it yields `Some`, at most `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {limit:?}");
        }
        sleep(POLL).await;
    }
}

fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
}

// === Sentinel ===

/// A master, its replicas and three sentinels watching it as [`MASTER_NAME`].
#[derive(Debug)]
pub struct RedisSentinelSet {
    /// The data nodes; index 0 started as the master.
    pub nodes: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
}

impl RedisSentinelSet {
    /// Starts one master, `replicas` replicas and three sentinels (quorum 2) with the given
    /// `down-after-milliseconds` and `failover-timeout`, and waits until replication is
    /// linked and every sentinel knows the replicas and the other sentinels (so a failover
    /// can be elected at once).
    pub async fn start(
        replicas: usize,
        down_after: Duration,
        failover_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_with(replicas, down_after, failover_timeout, None).await
    }

    /// [`start`](Self::start), every node and sentinel speaking only TLS (replication too),
    /// with certificates from `ca`.
    pub async fn start_tls(
        replicas: usize,
        down_after: Duration,
        failover_timeout: Duration,
        ca: &TestCa,
    ) -> anyhow::Result<Self> {
        Self::start_with(replicas, down_after, failover_timeout, Some(ca)).await
    }

    async fn start_with(
        replicas: usize,
        down_after: Duration,
        failover_timeout: Duration,
        ca: Option<&TestCa>,
    ) -> anyhow::Result<Self> {
        let tls = |port: u16| -> anyhow::Result<(Vec<String>, Option<TlsCertificates>)> {
            match ca {
                Some(ca) => {
                    let mut args = tls_server_args(ca, port)?;
                    args.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
                    Ok((args, Some(ca.client_certificates(false)?)))
                }
                None => Ok((Vec::new(), None)),
            }
        };
        let master_port = try_free_port()?;
        let (args, certs) = tls(master_port)?;
        let mut nodes = vec![
            RedisNode::spawn(
                "redis-master",
                "redis-server",
                master_port,
                None,
                &args,
                certs,
            )
            .await?,
        ];
        for i in 0..replicas {
            let port = try_free_port()?;
            let (mut args, certs) = tls(port)?;
            args.extend([
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                master_port.to_string(),
            ]);
            nodes.push(
                RedisNode::spawn(
                    &format!("redis-replica{i}"),
                    "redis-server",
                    port,
                    None,
                    &args,
                    certs,
                )
                .await?,
            );
        }
        for replica in &nodes[1..] {
            until("replication link up", SETTLE_DEADLINE, || async {
                let info: String = replica.query(&["INFO", "replication"]).await.ok()?;
                (info_field(&info, "master_link_status").as_deref() == Some("up")).then_some(())
            })
            .await?;
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = try_free_port()?;
            let conf = format!(
                "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} {}\n\
                 sentinel failover-timeout {MASTER_NAME} {}\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                down_after.as_millis(),
                failover_timeout.as_millis()
            );
            let (args, certs) = tls(port)?;
            sentinels.push(
                RedisNode::spawn(
                    &format!("redis-sentinel{i}"),
                    "redis-sentinel",
                    port,
                    Some(conf),
                    &args,
                    certs,
                )
                .await?,
            );
        }
        let set = Self { nodes, sentinels };
        for s in &set.sentinels {
            until(
                "sentinels know each other and the replicas",
                SETTLE_DEADLINE,
                || async {
                    let others: Vec<redis::Value> = s
                        .query(&["SENTINEL", "SENTINELS", MASTER_NAME])
                        .await
                        .ok()?;
                    let replicas: Vec<redis::Value> =
                        s.query(&["SENTINEL", "REPLICAS", MASTER_NAME]).await.ok()?;
                    (others.len() >= 2 && replicas.len() >= set.nodes.len() - 1).then_some(())
                },
            )
            .await?;
        }
        Ok(set)
    }

    /// The sentinels' addresses, for `shared.sentinel.nodes`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::addr).collect()
    }

    /// The master's port as the first sentinel that answers says.
    pub async fn master_port(&self) -> anyhow::Result<u16> {
        for s in &self.sentinels {
            if let Ok((_, port)) = s
                .query::<(String, String)>(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
                .await
            {
                return port.parse().context("master port");
            }
        }
        bail!("no sentinel answered")
    }

    /// The data node listening on `port`.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisNode> {
        self.nodes.iter_mut().find(|n| n.port == port)
    }

    /// Waits until the sentinels name a master other than `old_port` and that node says it
    /// is a master; returns its port.
    pub async fn wait_promoted(&self, old_port: u16, limit: Duration) -> anyhow::Result<u16> {
        until("a replica promoted by the sentinels", limit, || async {
            let port = self.master_port().await.ok().filter(|p| *p != old_port)?;
            let node = self.nodes.iter().find(|n| n.port == port)?;
            let info: String = node.query(&["INFO", "replication"]).await.ok()?;
            (info_field(&info, "role").as_deref() == Some("master")).then_some(port)
        })
        .await
    }
}

// === Cluster ===

/// A Redis Cluster of `masters` masters with `replicas` replicas each, made with
/// `redis-cli --cluster create`, `cluster-node-timeout` 1 s.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisNode>,
}

/// The node timeout the cluster runs with: a dead master is failed over a little after it.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

impl RedisCluster {
    pub async fn start(masters: usize, replicas: usize) -> anyhow::Result<Self> {
        Self::start_with(masters, replicas, None).await
    }

    /// A cluster that speaks only TLS (clients, the cluster bus and replication), with
    /// server certificates from `ca`.
    pub async fn start_tls(masters: usize, replicas: usize, ca: &TestCa) -> anyhow::Result<Self> {
        Self::start_with(masters, replicas, Some(ca)).await
    }

    async fn start_with(
        masters: usize,
        replicas: usize,
        ca: Option<&TestCa>,
    ) -> anyhow::Result<Self> {
        let cli = find_on_path("redis-cli")
            .ok_or_else(|| anyhow!("redis-cli not found: run `cargo xtask setup` (as root)"))?;
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let port = try_free_port()?;
            let mut args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
                // A replica may always be promoted, however long ago it last heard from
                // its master: on a loaded test host, the default can refuse the failover.
                "--cluster-replica-validity-factor",
                "0",
            ]
            .map(str::to_owned)
            .to_vec();
            let certs = match ca {
                Some(ca) => {
                    args.extend(tls_server_args(ca, port)?);
                    args.extend(
                        ["--tls-cluster", "yes", "--tls-replication", "yes"].map(str::to_owned),
                    );
                    Some(ca.client_certificates(false)?)
                }
                None => None,
            };
            nodes.push(
                RedisNode::spawn(
                    &format!("redis-cluster{i}"),
                    "redis-server",
                    port,
                    None,
                    &args,
                    certs,
                )
                .await?,
            );
        }
        let cluster = Self { nodes };
        let mut create = Command::new(cli);
        if let Some(ca) = ca {
            create.arg("--tls").arg("--cacert").arg(ca.ca_file());
        }
        let out = timeout(
            SETTLE_DEADLINE,
            create
                .args(["--cluster", "create"])
                .args(cluster.addrs())
                .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
                .stdin(Stdio::null())
                .output(),
        )
        .await
        .map_err(|_| anyhow!("redis-cli --cluster create timed out"))??;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for n in &cluster.nodes {
            until(
                "cluster_state:ok and replicas linked on every node",
                SETTLE_DEADLINE,
                || async {
                    let info: String = n.query(&["CLUSTER", "INFO"]).await.ok()?;
                    let repl: String = n.query(&["INFO", "replication"]).await.ok()?;
                    // A master has all its replicas online; a replica has its link up (a
                    // replica that never synced could not be failed over to).
                    let linked = match info_field(&repl, "role").as_deref() {
                        Some("master") => {
                            info_field(&repl, "connected_slaves") == Some(replicas.to_string())
                                && !repl.contains("state=wait_bgsave")
                                && !repl.contains("state=send_bulk")
                        }
                        _ => info_field(&repl, "master_link_status").as_deref() == Some("up"),
                    };
                    (info_field(&info, "cluster_state").as_deref() == Some("ok") && linked)
                        .then_some(())
                },
            )
            .await?;
        }
        Ok(cluster)
    }

    /// The nodes' addresses, for `shared.cluster_nodes`.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::addr).collect()
    }

    /// The port of the master serving `key`'s slot, as a live node's `CLUSTER SLOTS` says.
    pub async fn owner_of(&self, key: &str) -> anyhow::Result<u16> {
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            let Ok(slot) = n.query::<i64>(&["CLUSTER", "KEYSLOT", key]).await else {
                continue;
            };
            let Ok(ranges) = n.query::<Vec<redis::Value>>(&["CLUSTER", "SLOTS"]).await else {
                continue;
            };
            for r in ranges {
                let redis::Value::Array(items) = r else {
                    continue;
                };
                let int = |v: Option<&redis::Value>| match v {
                    Some(redis::Value::Int(i)) => Some(*i),
                    _ => None,
                };
                let (Some(lo), Some(hi)) = (int(items.first()), int(items.get(1))) else {
                    continue;
                };
                if (lo..=hi).contains(&slot)
                    && let Some(redis::Value::Array(master)) = items.get(2)
                    && let Some(port) = int(master.get(1))
                {
                    return u16::try_from(port).context("port");
                }
            }
        }
        bail!("no live node could say who owns {key:?}")
    }

    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisNode> {
        self.nodes.iter_mut().find(|n| n.port == port)
    }

    /// Waits until a live node other than `old_port` owns `key`'s slot, says it is a master,
    /// and the cluster state is ok; returns its port.
    pub async fn wait_failover(
        &self,
        key: &str,
        old_port: u16,
        limit: Duration,
    ) -> anyhow::Result<u16> {
        let promoted = until("the replica promoted in the cluster", limit, || async {
            let port = self.owner_of(key).await.ok().filter(|p| *p != old_port)?;
            let node = self
                .nodes
                .iter()
                .find(|n| n.port == port && n.is_running())?;
            let info: String = node.query(&["CLUSTER", "INFO"]).await.ok()?;
            let role: String = node.query(&["INFO", "replication"]).await.ok()?;
            (info_field(&info, "cluster_state").as_deref() == Some("ok")
                && info_field(&role, "role").as_deref() == Some("master"))
            .then_some(port)
        })
        .await;
        if promoted.is_err() {
            let live = self.nodes.iter().find(|n| n.is_running());
            let nodes = match live {
                Some(n) => n
                    .query::<String>(&["CLUSTER", "NODES"])
                    .await
                    .unwrap_or_default(),
                None => String::new(),
            };
            let logs: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .map(RedisNode::log)
                .collect();
            return promoted
                .with_context(|| format!("CLUSTER NODES:\n{nodes}\nlogs:\n{}", logs.join("\n")));
        }
        promoted
    }
}

// === TLS ===

/// A throwaway CA and the PEM files it signed, in a temporary directory.
#[derive(Debug)]
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_cert: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA (its certificate written as `ca.pem`).
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("hale-ca-").tempdir()?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("hale test CA {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key)?;
        let ca_cert = cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_cert)?;
        let issuer = rcgen::Issuer::new(params, key);
        Ok(Self {
            dir,
            ca_cert,
            issuer,
        })
    }

    /// `ca.pem`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_cert
    }

    /// Issues a certificate for 127.0.0.1 and localhost; writes `<name>.pem` and
    /// `<name>.key` and returns their paths.
    pub fn issue(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name.to_owned());
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What a test client needs to reach a node with a certificate from this CA: the CA and,
    /// with `with_client_cert`, a client certificate (`client.pem`, issued once).
    pub fn client_certificates(&self, with_client_cert: bool) -> anyhow::Result<TlsCertificates> {
        let client_tls = if with_client_cert {
            let (cert, key) = (self.dir().join("client.pem"), self.dir().join("client.key"));
            if !cert.exists() {
                self.issue("client")?;
            }
            Some(redis::ClientTlsConfig {
                client_cert: std::fs::read(&cert)?,
                client_key: std::fs::read(&key)?,
            })
        } else {
            None
        };
        Ok(TlsCertificates {
            client_tls,
            root_cert: Some(self.ca_cert.as_bytes().to_vec()),
        })
    }
}

/// The arguments that make a node listen with TLS only on `port`, with a certificate from
/// `ca` (issued once per CA as `redis.pem`), trusting `ca` for clients and peers; clients
/// need no certificate of their own.
fn tls_server_args(ca: &TestCa, port: u16) -> anyhow::Result<Vec<String>> {
    install_crypto_provider();
    let (cert, key) = (ca.dir().join("redis.pem"), ca.dir().join("redis.key"));
    if !cert.exists() {
        ca.issue("redis")?;
    }
    let path = |p: &Path| p.display().to_string();
    Ok(vec![
        "--tls-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        path(&cert),
        "--tls-key-file".to_owned(),
        path(&key),
        "--tls-ca-cert-file".to_owned(),
        path(&ca.ca_file()),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ])
}

/// Installs rustls's ring provider as the process default (redis-rs asks for the default;
/// an error only means one is installed already).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A Redis that listens only with TLS (`--port 0 --tls-port`), its certificate signed by a
/// [`TestCa`]; clients need no certificate of their own.
#[derive(Debug)]
pub struct RedisTls {
    pub node: RedisNode,
    pub ca: TestCa,
}

impl RedisTls {
    /// A TLS Redis that asks clients for no certificate.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// A TLS Redis that requires a client certificate signed by its CA (mutual TLS); one is
    /// issued as `client.pem` / `client.key` ([`client_cert`](Self::client_cert)).
    pub async fn start_mutual() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(mutual: bool) -> anyhow::Result<Self> {
        let ca = TestCa::new("server")?;
        let port = try_free_port()?;
        let mut args = tls_server_args(&ca, port)?;
        args.extend([
            "--tls-auth-clients".to_owned(),
            if mutual { "yes" } else { "no" }.to_owned(),
        ]);
        let certs = ca.client_certificates(true)?;
        let node =
            RedisNode::spawn("redis-tls", "redis-server", port, None, &args, Some(certs)).await?;
        Ok(Self { node, ca })
    }

    /// The client certificate and key the CA issued (`client.pem`, `client.key`).
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.ca.dir().join("client.pem"),
            self.ca.dir().join("client.key"),
        )
    }

    /// `rediss://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.node.port)
    }
}
