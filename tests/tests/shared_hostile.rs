//! End to end: two `hale serve` replicas in sharded mode share a real `redis-server` that
//! holds or carries hostile values, and keep checking at their own cadence (issue #11).
//!
//! - Redis at `maxmemory 1` under `noeviction` (every write answers OOM): each endpoint
//!   gets at most two checks per interval from the fleet (each replica at its own cadence,
//!   counted on the backends), each replica logs a few WARN lines, not one per check, and
//!   `/health/shared-status` shows the failure; with memory back the fleet rejoins.
//! - A forged `PUBLISH` on the channel or `HSET` on a result key, with a due time ten years
//!   ahead and a fence of 2^53 − 1 (and, harder, a plausible fence), for a healthy and for a
//!   failing backend: within two intervals and a spread both replicas show the true states
//!   again, the backends are checked on, and the healthy backend's model serves.
//! - With `shared.signing_key` set (through `os.environ/NAME`), the forged event with a
//!   plausible fence is never adopted, and the fleet still exchanges its own results.
//!
//! Measured figures are printed (run with `--no-capture` to see them).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on setup errors"
)]

use hale_testkit::{Gateway, MockLlm, RedisServer, eventually, http_post_json};
use hale_tests::{health_checks, wall_secs};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{Instant, sleep};

const POLL: Duration = Duration::from_millis(50);
const PODS: [&str; 2] = ["pod-a", "pod-b"];
/// The endpoints' check interval, and the spread of a round over replicas (a quarter).
const INTERVAL: Duration = Duration::from_secs(1);
const SPREAD: Duration = Duration::from_millis(250);
/// 2^53 − 1: the largest fence Lua holds exactly (the year 2255 in µs).
const HUGE_FENCE: u64 = (1 << 53) - 1;
const TEN_YEARS_MS: u64 = 10 * 365 * 86_400_000;

struct Fleet {
    redis: RedisServer,
    mocks: Vec<MockLlm>,
    gateways: Vec<Gateway>,
}

/// Replica `pod`'s config: endpoint `ep-i` on mock `i`, serving `m-i`, checked every second;
/// a failing endpoint backs off to at most one interval, so "its own planned delay" is one
/// interval whatever its state.
fn config(mocks: &[MockLlm], redis_url: &str, pod: &str) -> String {
    let mut endpoints = String::new();
    for (i, m) in mocks.iter().enumerate() {
        endpoints.push_str(&format!(
            "  - name: ep-{i}\n    url: {}\n    type: vllm\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms, failure_threshold: 3 }}\n",
            m.url()
        ));
    }
    format!(
        "server:\n  listen: 127.0.0.1:0\npod_id: {pod}\nhealth:\n  unhealthy_threshold: 1\n  healthy_threshold: 1\n  max_backoff: 1s\nproxy:\n  connect_timeout: 500ms\nshared:\n  enabled: true\n  mode: sharded\n  redis_url: {redis_url}\n  namespace: e2e\n  cache_ttl: 30s\n  lock_ttl: 3s\nendpoints:\n{endpoints}"
    )
}

impl Fleet {
    async fn start(endpoints: usize) -> anyhow::Result<Self> {
        Self::start_with(endpoints, "", &[]).await
    }

    /// Starts the fleet with `extra` appended to the `shared:` section and `env` set.
    async fn start_with(
        endpoints: usize,
        extra: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let redis = RedisServer::start().await?;
        let mut mocks = Vec::new();
        for i in 0..endpoints {
            mocks.push(MockLlm::start("vllm", &[&format!("m-{i}")]).await?);
        }
        let mut gateways = Vec::new();
        for pod in PODS {
            let yaml = config(&mocks, &redis.url(), pod)
                .replace("  lock_ttl: 3s\n", &format!("  lock_ttl: 3s\n{extra}"));
            let mut env = env.to_vec();
            env.push(("HALE_LOG", "info"));
            gateways.push(Gateway::start_with_env(&yaml, &env).await?);
        }
        Ok(Self {
            redis,
            mocks,
            gateways,
        })
    }

    /// Waits until every replica shows `ep-i` in `states[i]`.
    async fn states(&self, states: &[&str], within: Duration) -> anyhow::Result<()> {
        eventually(within, POLL, || async {
            for gw in &self.gateways {
                for (i, want) in states.iter().enumerate() {
                    let e = gw.endpoint(&format!("ep-{i}")).await?;
                    anyhow::ensure!(e["status"] == *want, "{}: {e}", gw.url());
                }
            }
            Ok(())
        })
        .await
    }
}

async fn shared_status(gw: &Gateway) -> anyhow::Result<Value> {
    let r = gw.get("/health/shared-status").await?;
    anyhow::ensure!(r.status == 200, "shared-status: {}", r.status);
    Ok(r.body["status"].clone())
}

async fn chat(gw: &Gateway, model: &str) -> anyhow::Result<u16> {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    Ok(
        http_post_json(&format!("{}/v1/chat/completions", gw.url()), &body)
            .await?
            .status,
    )
}

async fn redis_cmd(c: &mut MultiplexedConnection, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let v: redis::Value = cmd.query_async(c).await?;
    Ok(json!(format!("{v:?}")))
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

// === Redis out of memory ===

#[tokio::test]
async fn redis_out_of_memory_is_an_outage_checked_at_each_replicas_own_cadence() {
    let fleet = Fleet::start(2).await.unwrap();
    fleet
        .states(&["healthy", "healthy"], Duration::from_secs(10))
        .await
        .unwrap();
    sleep(Duration::from_secs(1)).await;
    let warns_before: Vec<usize> = fleet
        .gateways
        .iter()
        .map(|g| g.full_logs().matches(" WARN ").count())
        .collect();

    let mut raw = fleet.redis.client().await.unwrap();
    redis_cmd(
        &mut raw,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    )
    .await
    .unwrap();
    redis_cmd(&mut raw, &["CONFIG", "SET", "maxmemory", "1"])
        .await
        .unwrap();
    let from = wall_secs();
    sleep(Duration::from_secs(10)).await;
    let to = wall_secs();
    for (i, m) in fleet.mocks.iter().enumerate() {
        let hits = health_checks(m, from, to).await.unwrap();
        let per_pod: Vec<usize> = PODS
            .iter()
            .map(|p| hits.iter().filter(|(_, by)| by == p).count())
            .collect();
        println!(
            "OOM, 10 s: ep-{i} checked {} times, per pod {per_pod:?}",
            hits.len()
        );
        // At most two checks per interval from the fleet (jitter ± 10 % on each replica's
        // own cadence), and no replica stops checking.
        assert!(hits.len() <= 22, "ep-{i}: {} checks in 10 s", hits.len());
        for n in per_pod {
            assert!((8..=12).contains(&n), "ep-{i}: {per_pod:?}", per_pod = n);
        }
    }
    for (gw, before) in fleet.gateways.iter().zip(&warns_before) {
        let logs = gw.full_logs();
        let warns = logs.matches(" WARN ").count() - before;
        println!("OOM, 10 s: {} logged {warns} WARN lines", gw.url());
        assert!(warns <= 5, "{warns} WARN lines:\n{logs}");
        let s = shared_status(gw).await.unwrap();
        assert_eq!(s["redis_available"], false, "{s}");
        assert!(s["errors_total"].as_u64().unwrap() >= 3, "{s}");
        assert!(s["last_error"].as_str().unwrap().contains("OOM"), "{s}");
        // Client traffic is unaffected.
        assert_eq!(chat(gw, "m-0").await.unwrap(), 200);
    }

    // Memory back: every replica rejoins, and the fleet checks once per interval again.
    redis_cmd(&mut raw, &["CONFIG", "SET", "maxmemory", "0"])
        .await
        .unwrap();
    let back = Instant::now();
    for gw in &fleet.gateways {
        eventually(Duration::from_secs(10), POLL, || async {
            let s = shared_status(gw).await?;
            anyhow::ensure!(s["redis_available"] == true, "{s}");
            Ok(())
        })
        .await
        .unwrap();
    }
    println!(
        "OOM over: both replicas rejoined within {:?}",
        back.elapsed()
    );
    sleep(Duration::from_secs(2)).await;
    let from = wall_secs();
    sleep(Duration::from_secs(5)).await;
    let to = wall_secs();
    for (i, m) in fleet.mocks.iter().enumerate() {
        let n = health_checks(m, from, to).await.unwrap().len();
        println!("rejoined, 5 s: ep-{i} checked {n} times");
        assert!((4..=6).contains(&n), "ep-{i}: {n} checks in 5 s");
    }
}

// === forged results ===

/// A forged channel message for `endpoint` as the write script would publish it.
fn forged_message(endpoint: &str, fence: u64, state: &str, ok: bool) -> String {
    let now = now_ms();
    let body = json!({
        "endpoint": endpoint,
        "state": state,
        "phase": "running",
        "reason": if ok { "" } else { "http_503" },
        "error": "",
        "latency_ms": "1.000",
        "checked_at": now.to_string(),
        "checked_by": "mallory",
        "cf": if ok { "0" } else { "1" },
        "cs": if ok { "1" } else { "0" },
        "uf": if ok { "0" } else { "1" },
        "rl_until": "",
        "kind": if ok { "check_ok" } else { "check_failed" },
    });
    format!("{fence} {} {TEN_YEARS_MS}\n{body}", now + TEN_YEARS_MS)
}

/// The longest any replica may take to show the truth again: two intervals and a spread,
/// plus the check itself and this test's polling.
fn heal_limit() -> Duration {
    2 * INTERVAL + SPREAD + Duration::from_millis(500)
}

/// Waits until both replicas show ep-0 healthy and ep-1 unhealthy and m-0 serves; returns
/// how long it took from `since`.
async fn truth_within(fleet: &Fleet, since: Instant) -> Duration {
    fleet
        .states(&["healthy", "unhealthy"], heal_limit())
        .await
        .unwrap();
    for gw in &fleet.gateways {
        eventually(heal_limit(), POLL, || async {
            anyhow::ensure!(chat(gw, "m-0").await? == 200);
            Ok(())
        })
        .await
        .unwrap();
    }
    since.elapsed()
}

/// Both backends are checked on after the forgery: each gets 2..=4 checks in 3 s.
async fn still_checked(fleet: &Fleet) {
    let from = wall_secs();
    sleep(Duration::from_secs(3)).await;
    let to = wall_secs();
    for (i, m) in fleet.mocks.iter().enumerate() {
        let n = health_checks(m, from, to).await.unwrap().len();
        assert!((2..=4).contains(&n), "ep-{i}: {n} checks in 3 s");
    }
}

#[tokio::test]
async fn a_forged_event_or_result_cannot_freeze_an_endpoint() {
    let fleet = Fleet::start(2).await.unwrap();
    // ep-0's backend is healthy, ep-1's fails every check.
    fleet.mocks[1]
        .set_mode(json!({"status": 503}))
        .await
        .unwrap();
    fleet
        .states(&["healthy", "unhealthy"], Duration::from_secs(10))
        .await
        .unwrap();
    let mut raw = fleet.redis.client().await.unwrap();

    // 1. PUBLISH with fence 2^53 − 1 and a due time ten years ahead: the lie (ep-0 down,
    //    ep-1 up) is never adopted, and both keep being checked.
    let t0 = Instant::now();
    for (ep, state, ok) in [("ep-0", "unhealthy", false), ("ep-1", "healthy", true)] {
        let msg = forged_message(ep, HUGE_FENCE, state, ok);
        redis_cmd(&mut raw, &["PUBLISH", "hale:{e2e}:events", &msg])
            .await
            .unwrap();
    }
    let took = truth_within(&fleet, t0).await;
    println!("PUBLISH, fence 2^53-1: true states shown {took:?} after the forgery");
    still_checked(&fleet).await;

    // 2. The same with a plausible fence (above anything the counter will issue for a long
    //    time): adopted, since it could be true, but the watchdog and the next round put the
    //    truth back within two intervals and a spread.
    let plausible = now_ms() * 1000 + 1_000_000_000;
    let t0 = Instant::now();
    for (ep, state, ok) in [("ep-0", "unhealthy", false), ("ep-1", "healthy", true)] {
        let msg = forged_message(ep, plausible, state, ok);
        redis_cmd(&mut raw, &["PUBLISH", "hale:{e2e}:events", &msg])
            .await
            .unwrap();
    }
    let took = truth_within(&fleet, t0).await;
    println!("PUBLISH, plausible fence: true states shown {took:?} after the forgery");
    assert!(took <= heal_limit(), "{took:?}");
    still_checked(&fleet).await;

    // 3. HSET on the result keys, then a re-read (the subscription is killed, so every
    //    replica re-subscribes and re-reads): refused, and the next round repairs the hash.
    let far = (now_ms() + TEN_YEARS_MS).to_string();
    let huge = HUGE_FENCE.to_string();
    let t0 = Instant::now();
    for (ep, state) in [("ep-0", "unhealthy"), ("ep-1", "healthy")] {
        let key = format!("hale:{{e2e}}:result:{ep}");
        redis_cmd(
            &mut raw,
            &["HSET", &key, "due_at", &far, "fence", &huge, "state", state],
        )
        .await
        .unwrap();
    }
    redis_cmd(&mut raw, &["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .unwrap();
    let took = truth_within(&fleet, t0).await;
    println!("HSET, fence 2^53-1: true states shown {took:?} after the forgery");
    eventually(heal_limit(), POLL, || async {
        let mut c = fleet.redis.client().await?;
        for ep in ["ep-0", "ep-1"] {
            let key = format!("hale:{{e2e}}:result:{ep}");
            let fence: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("fence")
                .query_async(&mut c)
                .await?;
            let due: Option<u64> = redis::cmd("HGET")
                .arg(&key)
                .arg("due_at")
                .query_async(&mut c)
                .await?;
            anyhow::ensure!(
                fence.is_some_and(|f| f < HUGE_FENCE),
                "{ep}: fence {fence:?}"
            );
            anyhow::ensure!(
                due.is_some_and(|d| d <= now_ms() + 2000),
                "{ep}: due_at {due:?}"
            );
        }
        Ok(())
    })
    .await
    .unwrap();
    println!(
        "HSET: both hashes repaired {:?} after the forgery",
        t0.elapsed()
    );
    assert!(t0.elapsed() <= heal_limit() + Duration::from_millis(500));
    still_checked(&fleet).await;
    for gw in &fleet.gateways {
        let s = shared_status(gw).await.unwrap();
        assert_eq!(s["redis_available"], true, "{s}");
        let metrics = gw.get("/metrics").await.unwrap().text;
        assert!(
            metrics.contains("hale_coord_rejected_total{kind=\"fence\"}"),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn with_a_signing_key_a_forged_event_is_never_adopted() {
    let fleet = Fleet::start_with(
        2,
        "  signing_key: os.environ/HALE_E2E_SIGNING_KEY\n",
        &[("HALE_E2E_SIGNING_KEY", "e2e-signing-key-0123456789")],
    )
    .await
    .unwrap();
    fleet.mocks[1]
        .set_mode(json!({"status": 503}))
        .await
        .unwrap();
    fleet
        .states(&["healthy", "unhealthy"], Duration::from_secs(10))
        .await
        .unwrap();
    // Results made by one replica still reach the other: signed and verified.
    for gw in &fleet.gateways {
        eventually(Duration::from_secs(5), POLL, || async {
            let s = shared_status(gw).await?;
            anyhow::ensure!(s["checks_skipped"].as_u64() > Some(0), "{s}");
            Ok(())
        })
        .await
        .unwrap();
    }
    let mut raw = fleet.redis.client().await.unwrap();
    let plausible = now_ms() * 1000 + 1_000_000_000;
    for (ep, state, ok) in [("ep-0", "unhealthy", false), ("ep-1", "healthy", true)] {
        let msg = forged_message(ep, plausible, state, ok);
        redis_cmd(&mut raw, &["PUBLISH", "hale:{e2e}:events", &msg])
            .await
            .unwrap();
    }
    // Never adopted: the states stay true on both replicas the whole time.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for gw in &fleet.gateways {
            for (ep, want) in [("ep-0", "healthy"), ("ep-1", "unhealthy")] {
                let e = gw.endpoint(ep).await.unwrap();
                assert_eq!(e["status"], want, "{e}");
                assert_ne!(e["checked_by"], "mallory", "{e}");
            }
        }
        sleep(POLL).await;
    }
    for gw in &fleet.gateways {
        let metrics = gw.get("/metrics").await.unwrap().text;
        assert!(
            metrics.contains("hale_coord_rejected_total{kind=\"signature\"} 2"),
            "{metrics}"
        );
        assert!(
            !gw.full_logs().contains("e2e-signing-key"),
            "the key is never logged"
        );
    }
    still_checked(&fleet).await;
}
