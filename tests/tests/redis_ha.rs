//! End to end: three `hale serve` replicas in sharded mode (1 s interval) on Redis behind
//! Sentinel and on a Redis Cluster, through the loss of the master that holds their keys, and
//! Hale on a TLS-only Redis — all real processes on loopback.
//!
//! For each failover, under steady client load on every replica, the suite measures (and
//! prints; run with `--no-capture`) the four figures of issue 15: failed client requests
//! (must be 0), the longest time any endpoint went without a check (< 2 s), how long after the
//! new master was in place every replica showed `redis_available: true` again (≤ 3 s), and
//! the fleet's checks per endpoint over the 10 s that follow (10 ± 1). Checks are counted
//! at the mock backends by the `x-hale-pod` header, as in `shared.rs`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on setup errors"
)]

use hale_testkit::{
    Gateway, MASTER_NAME, MockLlm, RedisCluster, RedisSentinelSet, RedisTls, TestCa, eventually,
    http_get_json,
};
use hale_tests::{health_checks, wall_secs};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::sleep;

const POLL: Duration = Duration::from_millis(50);
const PODS: [&str; 3] = ["pod-0", "pod-1", "pod-2"];

/// The config of replica `pod`: endpoint `ep-i` on mock `i`, checked every second, and the
/// `shared:` lines `topology` gives (after `enabled`, `mode`, `namespace`).
fn config(mocks: &[MockLlm], pod: &str, namespace: &str, topology: &str) -> String {
    let mut endpoints = String::new();
    for (i, m) in mocks.iter().enumerate() {
        endpoints.push_str(&format!(
            "  - name: ep-{i}\n    url: {}\n    type: vllm\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms, failure_threshold: 3 }}\n",
            m.url()
        ));
    }
    format!(
        "server:\n  listen: 127.0.0.1:0\npod_id: {pod}\nhealth:\n  unhealthy_threshold: 1\n  healthy_threshold: 1\n  max_backoff: 2s\nproxy:\n  connect_timeout: 500ms\nshared:\n  enabled: true\n  mode: sharded\n  namespace: {namespace}\n  cache_ttl: 30s\n  lock_ttl: 3s\n{topology}endpoints:\n{endpoints}"
    )
}

async fn mocks(n: usize) -> Vec<MockLlm> {
    let mut mocks = Vec::new();
    for i in 0..n {
        mocks.push(MockLlm::start("vllm", &[&format!("m-{i}")]).await.unwrap());
    }
    mocks
}

async fn fleet(mocks: &[MockLlm], pods: &[&str], namespace: &str, topology: &str) -> Vec<Gateway> {
    let mut gateways = Vec::new();
    for pod in pods {
        let yaml = config(mocks, pod, namespace, topology);
        gateways.push(
            Gateway::start_with_env(&yaml, &[("HALE_LOG", "info")])
                .await
                .unwrap(),
        );
    }
    gateways
}

async fn shared_status(gw: &Gateway) -> anyhow::Result<Value> {
    let r = gw.get("/health/shared-status").await?;
    anyhow::ensure!(r.status == 200, "shared-status: {}", r.status);
    Ok(r.body["status"].clone())
}

/// Waits until every gateway shows every endpoint healthy and Redis available.
async fn settled(gateways: &[Gateway]) {
    eventually(Duration::from_secs(15), POLL, || async {
        for gw in gateways {
            for e in gw.endpoints().await? {
                anyhow::ensure!(e["status"] == "healthy", "{}: {e}", gw.url());
            }
            let s = shared_status(gw).await?;
            anyhow::ensure!(s["redis_available"] == true, "{}: {s}", gw.url());
        }
        Ok(())
    })
    .await
    .unwrap();
}

/// Client requests spread over the gateways every 20 ms until stopped; counts ok and failed.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Load {
    fn start(gateways: &[Gateway]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let urls: Vec<String> = gateways.iter().map(Gateway::url).collect();
        let task = tokio::spawn({
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            async move {
                for i in 0usize.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let path = ["/readyz", "/v1/models"][i % 2];
                    match http_get_json(&format!("{}{path}", urls[i % urls.len()])).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The longest stretch without a check of each mock in `[from, to)` by `pods`, window edges
/// included.
async fn longest_gaps(mocks: &[MockLlm], pods: &[&str], from: f64, to: f64) -> Vec<f64> {
    let mut out = Vec::new();
    for m in mocks {
        let mut edges = vec![from];
        let hits = health_checks(m, from, to).await.unwrap();
        edges.extend(
            hits.into_iter()
                .filter(|(_, p)| pods.contains(&p.as_str()))
                .map(|(t, _)| t),
        );
        edges.sort_by(f64::total_cmp);
        edges.push(to);
        out.push(edges.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max));
    }
    out
}

/// Checks of each mock by `pods` in `[from, to)`.
async fn checks(mocks: &[MockLlm], pods: &[&str], from: f64, to: f64) -> Vec<usize> {
    let mut out = Vec::new();
    for m in mocks {
        let hits = health_checks(m, from, to).await.unwrap();
        out.push(
            hits.iter()
                .filter(|(_, p)| pods.contains(&p.as_str()))
                .count(),
        );
    }
    out
}

/// After `kill` (wall time) and the new master in place at `promoted`: asserts and prints
/// the four figures (see the module docs) for `gateways` (pods `pods`).
async fn assert_failover_figures(
    what: &str,
    mocks: &[MockLlm],
    gateways: &[Gateway],
    pods: &[&str],
    load: Load,
    (before, kill, promoted): (f64, f64, f64),
) {
    // redis_available true again on every replica within 3 s of the new master.
    let available = eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            for gw in gateways {
                let s = shared_status(gw).await?;
                anyhow::ensure!(s["redis_available"] == true, "{}: {s}", gw.url());
            }
            Ok(wall_secs())
        },
    )
    .await
    .unwrap();
    let rejoin = (available - promoted).max(0.0);
    // The following 10 s, from three intervals after the new master.
    let from = promoted + 3.0;
    let wait = from + 10.0 - wall_secs();
    if wait > 0.0 {
        sleep(Duration::from_secs_f64(wait)).await;
    }
    let per_endpoint = checks(mocks, pods, from, from + 10.0).await;
    let gaps = longest_gaps(mocks, pods, before, from + 10.0).await;
    let (ok, failed) = load.finish().await;
    let mut outage_logs = 0;
    for gw in gateways {
        outage_logs += gw
            .logs()
            .matches("Redis unreachable: checking every endpoint locally")
            .count();
    }
    println!(
        "{what}: new master {:.2} s after the kill; redis_available on every replica {rejoin:.2} s \
         after it; longest gap between checks per endpoint {gaps:.2?} s; checks per endpoint \
         in the 10 s from 3 s after the new master {per_endpoint:?}; client requests {ok} ok, \
         {failed} failed; replicas that declared an outage: {outage_logs}",
        promoted - kill
    );
    assert_eq!(failed, 0, "client requests failed during the failover");
    assert!(ok > 200, "the load ran: {ok}");
    for (i, g) in gaps.iter().enumerate() {
        assert!(*g < 2.0, "ep-{i}: {g:.2} s without a check");
    }
    assert!(
        rejoin <= 3.0,
        "redis_available came back {rejoin:.2} s after the new master"
    );
    for (i, n) in per_endpoint.iter().enumerate() {
        assert!((9..=11).contains(n), "ep-{i}: {n} checks in 10 s");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_the_fleet_checking_once_per_interval() {
    let mut set = RedisSentinelSet::start(1, Duration::from_millis(1000), Duration::from_secs(3))
        .await
        .unwrap();
    let mocks = mocks(3).await;
    let nodes: Vec<String> = set
        .sentinel_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let topology = format!(
        "  sentinel:\n    master_name: {MASTER_NAME}\n    nodes: [{}]\n",
        nodes.join(", ")
    );
    let gateways = fleet(&mocks, &PODS, "e2e", &topology).await;
    settled(&gateways).await;
    sleep(Duration::from_secs(2)).await;

    let load = Load::start(&gateways);
    let old = set.master_port().await.unwrap();
    let before = wall_secs() - 1.5;
    set.node_mut(old).unwrap().kill().await.unwrap();
    let kill = wall_secs();
    set.wait_promoted(old, Duration::from_secs(20))
        .await
        .unwrap();
    let promoted = wall_secs();
    assert_failover_figures(
        "Sentinel, kill -9 of the master",
        &mocks,
        &gateways,
        &PODS,
        load,
        (before, kill, promoted),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_of_the_namespace_slot_keeps_the_fleet_checking_once_per_interval() {
    let mut cluster = RedisCluster::start(3, 1).await.unwrap();
    let fence_key = |ns: &str| format!("hale:{{{ns}}}:fence");
    let owner = cluster.owner_of(&fence_key("e2e")).await.unwrap();
    // A second namespace whose slot another master serves.
    let mut other = None;
    for i in 0..64 {
        let ns = format!("e2e-{i}");
        if cluster.owner_of(&fence_key(&ns)).await.unwrap() != owner {
            other = Some(ns);
            break;
        }
    }
    let other = other.unwrap();
    let mocks = mocks(3).await;
    let nodes: Vec<String> = cluster.addrs().iter().map(|a| format!("\"{a}\"")).collect();
    let topology = format!("  cluster_nodes: [{}]\n", nodes.join(", "));
    let gateways = fleet(&mocks, &PODS, "e2e", &topology).await;
    let others = ["other-0", "other-1"];
    let other_fleet = fleet(&mocks, &others, &other, &topology).await;
    settled(&gateways).await;
    settled(&other_fleet).await;
    sleep(Duration::from_secs(2)).await;
    // Both namespaces coordinate: each fleet checks each endpoint once per interval.
    let t = wall_secs();
    sleep(Duration::from_secs(5)).await;
    let (a, b) = (
        checks(&mocks, &PODS, t, t + 5.0).await,
        checks(&mocks, &others, t, t + 5.0).await,
    );
    println!("Cluster, namespaces e2e and {other}: checks per endpoint in 5 s {a:?} and {b:?}");
    for n in a.iter().chain(&b) {
        assert!((4..=6).contains(n), "{a:?} {b:?}");
    }

    let load = Load::start(&gateways);
    let before = wall_secs() - 1.5;
    cluster.node_mut(owner).unwrap().kill().await.unwrap();
    let kill = wall_secs();
    cluster
        .wait_failover(&fence_key("e2e"), owner, Duration::from_secs(20))
        .await
        .unwrap();
    let promoted = wall_secs();
    assert_failover_figures(
        "Cluster, kill -9 of the slot's master",
        &mocks,
        &gateways,
        &PODS,
        load,
        (before, kill, promoted),
    )
    .await;
    // The other namespace, on a master that stayed, still coordinates.
    let t = wall_secs() - 5.0;
    let b = checks(&mocks, &others, t, t + 5.0).await;
    for gw in &other_fleet {
        assert_eq!(shared_status(gw).await.unwrap()["redis_available"], true);
    }
    assert!(b.iter().all(|n| (4..=6).contains(n)), "{b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redis_with_the_right_ca_and_a_wrong_ca_refused_with_local_fallback() {
    let redis = RedisTls::start().await.unwrap();
    let mocks = mocks(1).await;
    let topology = |ca: &std::path::Path| {
        format!(
            "  redis_url: {}\n  tls:\n    ca_file: {}\n",
            redis.url(),
            ca.display()
        )
    };
    let good = fleet(
        &mocks,
        &["tls-0", "tls-1"],
        "tls",
        &topology(&redis.ca.ca_file()),
    )
    .await;
    settled(&good).await;

    let stranger = TestCa::new("stranger").unwrap();
    let bad = fleet(&mocks, &["wrong-ca"], "tls", &topology(&stranger.ca_file())).await;
    // It serves, checks locally, and says why in its log and status.
    let line = eventually(Duration::from_secs(10), POLL, || async {
        let logs = bad[0].logs();
        let line = logs
            .lines()
            .find(|l| l.contains("a Redis operation failed") && l.contains("certificate"))
            .map(str::to_owned);
        anyhow::ensure!(line.is_some(), "no TLS failure logged yet:\n{logs}");
        Ok(line.unwrap_or_default())
    })
    .await
    .unwrap();
    println!("wrong CA: {line}");
    eventually(Duration::from_secs(10), POLL, || async {
        let e = bad[0].endpoint("ep-0").await?;
        anyhow::ensure!(e["status"] == "healthy", "{e}");
        Ok(())
    })
    .await
    .unwrap();
    let s = shared_status(&bad[0]).await.unwrap();
    assert_eq!(s["redis_available"], false, "{s}");
    assert!(
        s["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("certificate"),
        "{s}"
    );
    // The wrong-CA replica checks on its own; the good ones keep coordinating.
    let t = wall_secs();
    sleep(Duration::from_secs(4)).await;
    let own = checks(&mocks, &["wrong-ca"], t, t + 4.0).await;
    let fleet_checks = checks(&mocks, &["tls-0", "tls-1"], t, t + 4.0).await;
    println!("wrong CA: its own checks in 4 s {own:?}; the TLS fleet's {fleet_checks:?}");
    assert!(own[0] >= 3, "{own:?}");
    assert!((3..=5).contains(&fleet_checks[0]), "{fleet_checks:?}");
    for gw in &good {
        assert_eq!(shared_status(gw).await.unwrap()["redis_available"], true);
    }
}
