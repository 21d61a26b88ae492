//! hale-coord on the other Redis topologies, with real processes: a master behind three
//! sentinels, a Redis Cluster, and a TLS-only Redis with a test CA. Two in-process replicas
//! must exchange a result through each (pub/sub included: sharded on the Cluster), follow a
//! failover, keep fences growing across it, and refuse a server certificate that the
//! configured CA did not sign — checking locally instead, never in plain text.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail loudly on setup errors and unexpected answers"
)]

use hale_coord::{Coordinator, SentinelConfig, SharedConfig, TlsConfig};
use hale_core::{
    CheckOutcome, Coordination, Decision, FenceToken, HealthState, HealthStore, Now, Source,
};
mod support;

use hale_testkit::{MASTER_NAME, RedisCluster, RedisSentinelSet, RedisTls, TestCa, eventually};
use std::sync::Arc;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(20);

fn base(namespace: &str) -> SharedConfig {
    SharedConfig {
        enabled: true,
        namespace: namespace.to_owned(),
        cache_ttl: Duration::from_secs(30),
        lock_ttl: Duration::from_secs(3),
        ..SharedConfig::default()
    }
}

use support::store;

struct Replica {
    store: Arc<HealthStore>,
    coord: Coordinator,
}

async fn replica(config: &SharedConfig, pod: &str) -> Replica {
    let store = store(pod, &["e"]);
    let coord = Coordinator::start(config, pod, &store).unwrap();
    coord.first_contact(Duration::from_secs(5)).await;
    Replica { store, coord }
}

impl Replica {
    async fn check(&self) -> Decision {
        let decision = self.coord.may_check("e").await;
        if let Decision::Check { fence } = decision {
            self.store.observe_fenced(
                "e",
                &CheckOutcome::ok(Duration::from_millis(2)),
                Now::capture(),
                fence,
            );
        }
        decision
    }

    fn source(&self) -> Source {
        self.store.snapshot().get("e").unwrap().health.source
    }
}

/// A checks a coordinated round; B adopts it through the channel. Returns A's fence.
async fn exchange(a: &Replica, b: &Replica) -> FenceToken {
    // Ask until a round is due and granted to A (B may have checked one meanwhile).
    let fence = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            match a.check().await {
                Decision::Check { fence } if !fence.is_local() => Some(fence),
                _ => None,
            }
        },
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(5), POLL, || async {
        (b.store.fence("e") == Some(fence) && b.source() == Source::Shared).then_some(())
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "B did not adopt A's result under {fence}: {e}; B holds {:?} from {:?}; B: {:?}",
            b.store.fence("e"),
            b.source(),
            b.coord.status()
        )
    });
    assert_eq!(
        b.store.snapshot().get("e").unwrap().health.state,
        HealthState::Healthy
    );
    fence
}

async fn both_available(a: &Replica, b: &Replica, limit: Duration) {
    eventually(limit, POLL, || async {
        (a.coord.redis_available() && b.coord.redis_available()).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_finds_the_master_and_follows_a_failover() {
    let mut set = RedisSentinelSet::start(1, Duration::from_millis(1000), Duration::from_secs(3))
        .await
        .unwrap();
    let cfg = SharedConfig {
        sentinel: Some(SentinelConfig {
            master_name: MASTER_NAME.to_owned(),
            nodes: set.sentinel_addrs(),
            ..SentinelConfig::default()
        }),
        ..base("sentinel")
    };
    let a = replica(&cfg, "pod-a").await;
    let b = replica(&cfg, "pod-b").await;
    both_available(&a, &b, Duration::from_secs(5)).await;
    let before = exchange(&a, &b).await;

    // A replica refuses the scripts' writes with READONLY, which coord takes for a lost
    // master (the connection is dropped and the sentinels asked again), never for success.
    let old = set.master_port().await.unwrap();
    let replica_port = set
        .nodes
        .iter()
        .map(|n| n.port())
        .find(|p| *p != old)
        .unwrap();
    let direct = hale_coord::ResultCache::new(
        &SharedConfig {
            redis_url: format!("redis://127.0.0.1:{replica_port}"),
            ..base("sentinel")
        },
        "pod-x",
    )
    .unwrap();
    let refused = direct.probe().await.unwrap_err();
    assert!(
        refused.is_unreachable() && refused.to_string().to_lowercase().contains("read only"),
        "{refused}"
    );

    set.node_mut(old).unwrap().kill().await.unwrap();
    let new = set
        .wait_promoted(old, Duration::from_secs(20))
        .await
        .unwrap();
    assert_ne!(new, old);
    both_available(&a, &b, Duration::from_secs(10)).await;
    let after = exchange(&a, &b).await;
    assert!(
        after > before,
        "fences grow across the failover: {before} then {after}"
    );
    a.coord.shutdown().await;
    b.coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_follows_the_slot_and_its_failover_with_sharded_pubsub() {
    let mut cluster = RedisCluster::start(3, 1).await.unwrap();
    let cfg = SharedConfig {
        cluster_nodes: cluster.addrs(),
        ..base("clustered")
    };
    let a = replica(&cfg, "pod-a").await;
    let b = replica(&cfg, "pod-b").await;
    both_available(&a, &b, Duration::from_secs(5)).await;
    let before = exchange(&a, &b).await;

    // A second namespace on another slot works side by side.
    let other = SharedConfig {
        cluster_nodes: cluster.addrs(),
        ..base("other-ns")
    };
    let key = |ns: &str| format!("hale:{{{ns}}}:fence");
    assert_ne!(
        cluster.owner_of(&key("clustered")).await.unwrap(),
        cluster.owner_of(&key("other-ns")).await.unwrap(),
        "the two namespaces should live on different masters for this test to mean much"
    );
    let c = replica(&other, "pod-c").await;
    let d = replica(&other, "pod-d").await;
    both_available(&c, &d, Duration::from_secs(5)).await;
    exchange(&c, &d).await;

    let owner = cluster.owner_of(&key("clustered")).await.unwrap();
    cluster.node_mut(owner).unwrap().kill().await.unwrap();
    cluster
        .wait_failover(&key("clustered"), owner, Duration::from_secs(20))
        .await
        .unwrap();
    both_available(&a, &b, Duration::from_secs(10)).await;
    let after = exchange(&a, &b).await;
    assert!(
        after > before,
        "fences grow across the failover: {before} then {after}"
    );
    exchange(&c, &d).await;
    for r in [a, b, c, d] {
        r.coord.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_right_ca_works_and_a_wrong_ca_falls_back_locally() {
    let redis = RedisTls::start().await.unwrap();
    let cfg = SharedConfig {
        redis_url: redis.url(),
        tls: Some(TlsConfig {
            ca_file: Some(redis.ca.ca_file()),
            ..TlsConfig::default()
        }),
        ..base("tls")
    };
    let a = replica(&cfg, "pod-a").await;
    let b = replica(&cfg, "pod-b").await;
    both_available(&a, &b, Duration::from_secs(5)).await;
    exchange(&a, &b).await;

    let stranger = TestCa::new("stranger").unwrap();
    let wrong = SharedConfig {
        tls: Some(TlsConfig {
            ca_file: Some(stranger.ca_file()),
            ..TlsConfig::default()
        }),
        ..cfg.clone()
    };
    let c = replica(&wrong, "pod-c").await;
    assert!(!c.coord.redis_available());
    let err = c.coord.status().last_error.unwrap_or_default();
    assert!(
        err.to_lowercase().contains("certificate"),
        "the error says why: {err}"
    );
    assert!(
        matches!(c.check().await, Decision::Check { fence } if fence.is_local()),
        "checks are local"
    );
    // Still refused a while later: no silent plain-text retry makes it "available".
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!c.coord.redis_available());
    // insecure_skip_verify accepts the certificate the stranger CA cannot vouch for.
    let careless = SharedConfig {
        tls: Some(TlsConfig {
            ca_file: Some(stranger.ca_file()),
            insecure_skip_verify: true,
            ..TlsConfig::default()
        }),
        ..cfg.clone()
    };
    let d = replica(&careless, "pod-d").await;
    both_available(&a, &d, Duration::from_secs(5)).await;
    for r in [a, b, c, d] {
        r.coord.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let redis = RedisTls::start_mutual().await.unwrap();
    let tls = TlsConfig {
        ca_file: Some(redis.ca.ca_file()),
        ..TlsConfig::default()
    };
    let without = SharedConfig {
        redis_url: redis.url(),
        tls: Some(tls.clone()),
        ..base("mtls")
    };
    let a = replica(&without, "pod-a").await;
    assert!(
        !a.coord.redis_available(),
        "no client certificate, no Redis"
    );
    assert!(matches!(a.check().await, Decision::Check { fence } if fence.is_local()));
    let (cert, key) = redis.client_cert();
    let with = SharedConfig {
        tls: Some(TlsConfig {
            cert_file: Some(cert),
            key_file: Some(key),
            ..tls
        }),
        ..without
    };
    let b = replica(&with, "pod-b").await;
    let c = replica(&with, "pod-c").await;
    both_available(&b, &c, Duration::from_secs(5)).await;
    exchange(&b, &c).await;
    for r in [a, b, c] {
        r.coord.shutdown().await;
    }
}

#[test]
fn an_unreadable_tls_file_names_its_key() {
    let cfg = SharedConfig {
        redis_url: "rediss://127.0.0.1:6380".to_owned(),
        tls: Some(TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        }),
        ..base("files")
    };
    let err = hale_coord::ResultCache::new(&cfg, "pod").unwrap_err();
    assert!(err.to_string().contains("shared.tls.ca_file"), "{err}");
}

/// TLS settings that trust `ca`.
fn trusting(ca: &TestCa) -> TlsConfig {
    TlsConfig {
        ca_file: Some(ca.ca_file()),
        ..TlsConfig::default()
    }
}

/// Two replicas on `cfg` become available and exchange a result.
async fn two_replicas_exchange(cfg: &SharedConfig) {
    let a = replica(cfg, "pod-a").await;
    let b = replica(cfg, "pod-b").await;
    both_available(&a, &b, Duration::from_secs(5)).await;
    exchange(&a, &b).await;
    a.coord.shutdown().await;
    b.coord.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_works_with_the_ca() {
    let ca = TestCa::new("cluster").unwrap();
    let cluster = RedisCluster::start_tls(3, 0, &ca).await.unwrap();
    let cfg = SharedConfig {
        cluster_nodes: cluster.addrs(),
        tls: Some(trusting(&ca)),
        ..base("tls-cluster")
    };
    two_replicas_exchange(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_works_with_the_ca() {
    let ca = TestCa::new("sentinel").unwrap();
    let set =
        RedisSentinelSet::start_tls(1, Duration::from_millis(1000), Duration::from_secs(3), &ca)
            .await
            .unwrap();
    let cfg = SharedConfig {
        sentinel: Some(SentinelConfig {
            master_name: MASTER_NAME.to_owned(),
            nodes: set.sentinel_addrs(),
            ..SentinelConfig::default()
        }),
        tls: Some(trusting(&ca)),
        ..base("tls-sentinel")
    };
    two_replicas_exchange(&cfg).await;
}
