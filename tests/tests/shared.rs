//! End to end: shared health state across three `hale serve` replicas through a real
//! `redis-server`, checking real mockllm backends.
//!
//! Checks are attributed by the `x-hale-pod` header each replica sends, which mockllm records
//! per hit in `/__stats`, so the fleet's cadence and how the work is split are read off the
//! backends, as an operator would see them. Every replica checks each endpoint every second
//! (`check_interval: 1s`). The scenarios:
//! - sharded mode over 30 s: each endpoint gets 30 ± 3 checks from the whole fleet and no
//!   replica does more than 60 % of them; global mode: the same totals, one holder;
//! - a failing backend is `unhealthy` on all replicas within 300 ms of the first one seeing
//!   it, both for a failed check and for a connection failure on one replica's request path;
//! - a replica killed with SIGKILL leaves no endpoint unchecked for 2 s;
//! - Redis killed: requests keep succeeding, every replica checks every endpoint locally
//!   within two intervals; Redis back: one check per interval again within three;
//! - the compatibility env names (`USE_SHARED_HEALTH_CHECK`, `REDIS_HOST`, `REDIS_PORT`,
//!   `REDIS_PASSWORD`, `REDIS_URL`, the two TTLs) configure a working fleet.
//!
//! Measured figures are printed (run with `--no-capture` to see them).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on setup errors"
)]

use hale_testkit::{Gateway, MockLlm, RedisServer, eventually, http_get_json, http_post_json};
use hale_tests::{health_checks, rfc3339_secs, wall_secs};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::sleep;

const POLL: Duration = Duration::from_millis(50);
const PODS: [&str; 3] = ["pod-0", "pod-1", "pod-2"];
/// Coord's per-round lines are at DEBUG.
const DEBUG: &str = "info,hale_coord=debug";

// === fixtures ===

struct Fleet {
    redis: RedisServer,
    mocks: Vec<MockLlm>,
    gateways: Vec<Gateway>,
}

/// The config of replica `pod` for `mocks` (endpoint `ep-i` on mock `i`, serving `m-i`,
/// checked every `intervals[i]`, or the last interval given).
fn config(mocks: &[MockLlm], redis_url: &str, mode: &str, pod: &str, intervals: &[&str]) -> String {
    let mut endpoints = String::new();
    for (i, m) in mocks.iter().enumerate() {
        let interval = intervals.get(i).or(intervals.last()).unwrap();
        endpoints.push_str(&format!(
            "  - name: ep-{i}\n    url: {}\n    type: vllm\n    check_interval: {interval}\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms, failure_threshold: 3 }}\n",
            m.url()
        ));
    }
    format!(
        "server:\n  listen: 127.0.0.1:0\npod_id: {pod}\nhealth:\n  unhealthy_threshold: 1\n  healthy_threshold: 1\n  max_backoff: 2s\nproxy:\n  connect_timeout: 500ms\nshared:\n  enabled: true\n  mode: {mode}\n  redis_url: {redis_url}\n  namespace: e2e\n  cache_ttl: 30s\n  lock_ttl: 3s\nendpoints:\n{endpoints}"
    )
}

impl Fleet {
    /// Starts Redis, `endpoints` mocks and three replicas logging at `log` (HALE_LOG).
    async fn start(
        endpoints: usize,
        mode: &str,
        intervals: &[&str],
        log: &str,
    ) -> anyhow::Result<Self> {
        let redis = RedisServer::start().await?;
        let mut mocks = Vec::new();
        for i in 0..endpoints {
            mocks.push(MockLlm::start("vllm", &[&format!("m-{i}")]).await?);
        }
        let mut gateways = Vec::new();
        for pod in PODS {
            let yaml = config(&mocks, &redis.url(), mode, pod, intervals);
            gateways.push(Gateway::start_with_env(&yaml, &[("HALE_LOG", log)]).await?);
        }
        Ok(Self {
            redis,
            mocks,
            gateways,
        })
    }

    /// Waits until every live replica shows every endpoint `state`.
    async fn all(&self, state: &str, within: Duration) -> anyhow::Result<()> {
        eventually(within, POLL, || async {
            for gw in self.gateways.iter().filter(|g| g.pid().is_some()) {
                for e in gw.endpoints().await? {
                    anyhow::ensure!(e["status"] == state, "{}: {}", gw.url(), e);
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
    Ok(r.body)
}

/// Checks per pod over all mocks in `[from, to)`, and the per-endpoint totals.
async fn tally(
    mocks: &[MockLlm],
    from: f64,
    to: f64,
) -> anyhow::Result<(Vec<usize>, BTreeMap<String, usize>)> {
    let mut per_endpoint = Vec::new();
    let mut per_pod = BTreeMap::new();
    for m in mocks {
        let hits = health_checks(m, from, to).await?;
        per_endpoint.push(hits.len());
        for (_, pod) in hits {
            *per_pod.entry(pod).or_insert(0) += 1;
        }
    }
    Ok((per_endpoint, per_pod))
}

// === the fleet's cadence ===

#[tokio::test]
async fn sharded_fleet_checks_each_endpoint_once_per_interval_and_spreads_the_work() {
    let fleet = Fleet::start(4, "sharded", &["1s"], DEBUG).await.unwrap();
    for gw in &fleet.gateways {
        // Logs are quoted from their tail; this line is only there at the start.
        assert!(
            gw.logs()
                .contains("Initialized shared health check manager")
        );
    }
    fleet.all("healthy", Duration::from_secs(10)).await.unwrap();
    sleep(Duration::from_secs(2)).await;

    let from = wall_secs();
    sleep(Duration::from_secs(30)).await;
    let to = wall_secs();
    let (per_endpoint, per_pod) = tally(&fleet.mocks, from, to).await.unwrap();
    let total: usize = per_endpoint.iter().sum();
    println!("sharded, 30 s: checks per endpoint {per_endpoint:?}, per pod {per_pod:?}");
    for (i, n) in per_endpoint.iter().enumerate() {
        assert!((27..=33).contains(n), "ep-{i}: {n} checks in 30 s");
    }
    for (pod, n) in &per_pod {
        assert!(
            PODS.contains(&pod.as_str()),
            "unattributed checks: {per_pod:?}"
        );
        let share = *n as f64 / total as f64;
        assert!(share <= 0.6, "{pod} ran {n} of {total} checks");
    }
    assert_eq!(per_pod.len(), 3, "every replica takes a share: {per_pod:?}");

    // What each replica reports.
    let mut performed = 0;
    for (gw, pod) in fleet.gateways.iter().zip(PODS) {
        let body = eventually(Duration::from_secs(5), POLL, || async {
            let b = shared_status(gw).await?;
            anyhow::ensure!(b["status"]["cache_available"] == true, "{b}");
            Ok(b)
        })
        .await
        .unwrap();
        let s = &body["status"];
        assert_eq!(body["shared_health_check_enabled"], true);
        assert_eq!(s["pod_id"], pod, "stable pod id");
        assert_eq!(shared_status(gw).await.unwrap()["status"]["pod_id"], pod);
        assert_eq!(s["mode"], "sharded");
        assert_eq!(s["redis_available"], true);
        assert_eq!(
            (s["lock_ttl"].as_u64(), s["cache_ttl"].as_u64()),
            (Some(3), Some(30))
        );
        assert!(s["cache_age_seconds"].as_f64().unwrap() < 3.0, "{s}");
        assert!(
            PODS.contains(&s["last_checked_by"].as_str().unwrap()),
            "{s}"
        );
        assert!(s["checks_skipped"].as_u64().unwrap() > 20, "{s}");
        performed += s["checks_performed"].as_u64().unwrap();
        let metrics = gw.get("/metrics").await.unwrap().text;
        assert!(metrics.contains("hale_coord_redis_up 1"), "{metrics}");
        assert!(
            metrics.contains("hale_coord_checks_skipped_total "),
            "{metrics}"
        );
        let logs = gw.logs();
        assert!(
            logs.contains("Cached health check results for 4 healthy and 0 unhealthy endpoints")
        );
        assert!(logs.contains("Using cached health check results"));
        assert!(logs.contains(&format!("Pod {pod} acquired health check lock")));
    }
    println!("checks_performed over the fleet since start: {performed}");
    // Every endpoint shows who checked it and that the result came through the fleet.
    let e = fleet.gateways[0].endpoint("ep-0").await.unwrap();
    assert!(PODS.contains(&e["checked_by"].as_str().unwrap()), "{e}");
    assert!(e["source"] == "shared" || e["source"] == "local", "{e}");
}

#[tokio::test]
async fn global_mode_keeps_the_check_interval_with_one_holder() {
    let mut fleet = Fleet::start(4, "global", &["1s"], "info").await.unwrap();
    fleet.all("healthy", Duration::from_secs(10)).await.unwrap();
    sleep(Duration::from_secs(2)).await;

    let from = wall_secs();
    sleep(Duration::from_secs(30)).await;
    let to = wall_secs();
    let (per_endpoint, per_pod) = tally(&fleet.mocks, from, to).await.unwrap();
    let total: usize = per_endpoint.iter().sum();
    println!("global, 30 s: checks per endpoint {per_endpoint:?}, per pod {per_pod:?}");
    for (i, n) in per_endpoint.iter().enumerate() {
        assert!((27..=33).contains(n), "ep-{i}: {n} checks in 30 s");
    }
    let mut owners = Vec::new();
    for gw in &fleet.gateways {
        let s = shared_status(gw).await.unwrap()["status"].clone();
        assert_eq!(s["mode"], "global");
        assert_eq!(s["lock_in_progress"], true, "{s}");
        owners.push(s["lock_owner"].as_str().unwrap().to_owned());
    }
    assert!(
        owners.iter().all(|o| *o == owners[0]),
        "one holder: {owners:?}"
    );
    let holder_checks = per_pod.get(&owners[0]).copied().unwrap_or(0);
    assert!(
        holder_checks * 10 >= total * 9,
        "the holder {} ran {holder_checks} of {total}",
        owners[0]
    );
    let holder = PODS.iter().position(|p| *p == owners[0]).unwrap();
    assert!(
        fleet.gateways[holder]
            .logs()
            .contains(&format!("Pod {} acquired health check lock", owners[0]))
    );

    // The holder dies without giving its lease back: the others take the rounds over at
    // once, not after the lease expires, and one of them takes the lease when it does.
    let before = wall_secs() - 1.5;
    fleet.gateways[holder].kill().await.unwrap();
    sleep(Duration::from_secs(6)).await;
    let after = wall_secs();
    let gaps = longest_gaps(&fleet.mocks, before, after).await.unwrap();
    println!("global, holder killed: longest gap between checks per endpoint {gaps:.2?} s");
    for (i, g) in gaps.iter().enumerate() {
        assert!(*g < 2.0, "ep-{i}: {g:.2} s without a check");
    }
    let survivor = &fleet.gateways[(holder + 1) % 3];
    let owner = eventually(Duration::from_secs(5), POLL, || async {
        let s = shared_status(survivor).await?["status"].clone();
        let owner = s["lock_owner"].as_str().unwrap_or_default().to_owned();
        anyhow::ensure!(!owner.is_empty() && owner != owners[0], "{s}");
        Ok(owner)
    })
    .await
    .unwrap();
    println!("global, new holder after lock_ttl: {owner}");
}

// === failures travel ===

/// The first event of `endpoint` turning `to` on `gw`, in Unix seconds.
async fn first_event(gw: &Gateway, endpoint: &str, to: &str, after: f64) -> anyhow::Result<f64> {
    let events = gw.events().await?;
    events
        .iter()
        .filter(|e| e["endpoint"] == endpoint && e["to"] == to)
        .map(|e| rfc3339_secs(&e["at"]))
        .collect::<anyhow::Result<Vec<f64>>>()?
        .into_iter()
        // Event times are printed to the millisecond: one in the same millisecond as `after`
        // reads as slightly earlier.
        .find(|at| *at >= after - 0.001)
        .ok_or_else(|| anyhow::anyhow!("no {to} event of {endpoint} yet"))
}

/// Waits until `endpoint` turned `to` on every replica and returns the spread of the events'
/// times (last minus first).
async fn spread_of(fleet: &Fleet, endpoint: &str, to: &str, after: f64) -> anyhow::Result<f64> {
    let times = eventually(Duration::from_secs(12), POLL, || async {
        let mut times = Vec::new();
        for gw in &fleet.gateways {
            times.push(first_event(gw, endpoint, to, after).await?);
        }
        Ok(times)
    })
    .await?;
    let first = times.iter().copied().fold(f64::INFINITY, f64::min);
    let last = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok(last - first)
}

#[tokio::test]
async fn a_failure_seen_by_one_replica_reaches_all_within_300ms() {
    // ep-0 is checked every second; ep-1 only every 10 s, so its failure is found on the
    // request path long before any check would see it.
    let mut fleet = Fleet::start(2, "sharded", &["1s", "10s"], "info")
        .await
        .unwrap();
    fleet.all("healthy", Duration::from_secs(12)).await.unwrap();

    // A failed check.
    let t0 = wall_secs();
    fleet.mocks[0]
        .set_mode(json!({"status": 503}))
        .await
        .unwrap();
    let spread = spread_of(&fleet, "ep-0", "unhealthy", t0).await.unwrap();
    println!(
        "failed check: unhealthy on all replicas within {:.0} ms",
        spread * 1e3
    );
    assert!(spread <= 0.3, "spread {spread:.3} s");
    for gw in &fleet.gateways {
        let e = gw.endpoint("ep-0").await.unwrap();
        assert_eq!(
            (e["status"].as_str(), e["reason"].as_str()),
            (Some("unhealthy"), Some("http_503"))
        );
    }
    // And back.
    let t1 = wall_secs();
    fleet.mocks[0]
        .set_mode(json!({"mode": "healthy"}))
        .await
        .unwrap();
    let spread = spread_of(&fleet, "ep-0", "healthy", t1).await.unwrap();
    println!(
        "recovery: healthy on all replicas within {:.0} ms",
        spread * 1e3
    );
    assert!(spread <= 0.3, "spread {spread:.3} s");

    // A connection failure on replica 0's request path.
    fleet.mocks[1].kill().await.unwrap();
    let t2 = wall_secs();
    // The request itself may wait up to `queue_timeout` for m-1's only endpoint to come back
    // (it just failed, so it may be restarting) before its 503; the mark does not wait.
    let url = format!("{}/v1/chat/completions", fleet.gateways[0].url());
    let request = tokio::spawn(async move {
        let body = json!({"model": "m-1", "messages": [{"role": "user", "content": "hi"}]});
        http_post_json(&url, &body).await
    });
    let spread = match spread_of(&fleet, "ep-1", "unhealthy", t2).await {
        Ok(s) => s,
        Err(e) => {
            for gw in &fleet.gateways {
                eprintln!(
                    "{}\n{:?}\n{}",
                    gw.url(),
                    gw.endpoint("ep-1").await,
                    gw.logs()
                );
            }
            panic!("{e:#}");
        }
    };
    println!(
        "passive failure: unhealthy on all replicas within {:.0} ms",
        spread * 1e3
    );
    assert!(spread <= 0.3, "spread {spread:.3} s");
    assert!(
        wall_secs() - t2 < 5.0,
        "found by the request path, not by a check"
    );
    let seen_by = fleet.gateways[1].endpoint("ep-1").await.unwrap();
    assert_eq!(seen_by["checked_by"], "pod-0", "{seen_by}");
    assert_eq!(seen_by["source"], "shared", "{seen_by}");
    let events = fleet.gateways[2].events().await.unwrap();
    let e = events
        .iter()
        .rev()
        .find(|e| e["endpoint"] == "ep-1")
        .unwrap();
    assert_eq!(
        (e["source"].as_str(), e["pod_id"].as_str()),
        (Some("shared"), Some("pod-0"))
    );
    let r = request.await.unwrap().unwrap();
    assert!(
        r.status >= 500,
        "no backend left for m-1: {} {}",
        r.status,
        r.text
    );
}

// === replicas and Redis going away ===

/// The longest stretch without a check of each mock in `[from, to)`, window edges included.
async fn longest_gaps(mocks: &[MockLlm], from: f64, to: f64) -> anyhow::Result<Vec<f64>> {
    let mut gaps = Vec::new();
    for m in mocks {
        let mut times: Vec<f64> = health_checks(m, from, to)
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        times.sort_by(f64::total_cmp);
        let mut edges = vec![from];
        edges.extend(times);
        edges.push(to);
        gaps.push(edges.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max));
    }
    Ok(gaps)
}

#[tokio::test]
async fn a_killed_replica_leaves_no_endpoint_unchecked_for_2s() {
    let mut fleet = Fleet::start(4, "sharded", &["1s"], "info").await.unwrap();
    fleet.all("healthy", Duration::from_secs(10)).await.unwrap();
    sleep(Duration::from_secs(2)).await;

    let before = wall_secs() - 1.5;
    fleet.gateways[2].kill().await.unwrap();
    let killed = wall_secs();
    sleep(Duration::from_secs(12)).await;
    let after = wall_secs();
    let gaps = longest_gaps(&fleet.mocks, before, after).await.unwrap();
    println!("kill -9 of pod-2: longest gap between checks per endpoint {gaps:.2?} s");
    for (i, g) in gaps.iter().enumerate() {
        assert!(*g < 2.0, "ep-{i}: {g:.2} s without a check");
    }
    let (per_endpoint, per_pod) = tally(&fleet.mocks, killed + 1.0, after).await.unwrap();
    println!("after the kill: per endpoint {per_endpoint:?}, per pod {per_pod:?}");
    assert!(!per_pod.contains_key("pod-2"));
    assert_eq!(
        per_pod.len(),
        2,
        "the survivors share the work: {per_pod:?}"
    );
}

#[tokio::test]
async fn redis_outage_falls_back_to_local_checks_and_rejoins() {
    let mut fleet = Fleet::start(3, "sharded", &["1s"], "info").await.unwrap();
    fleet.all("healthy", Duration::from_secs(10)).await.unwrap();
    sleep(Duration::from_secs(2)).await;

    // Steady client load on every replica for the whole scenario.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let urls: Vec<String> = fleet.gateways.iter().map(Gateway::url).collect();
    let load = tokio::spawn({
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let url = &urls[i % urls.len()];
                let path = if i.is_multiple_of(2) {
                    "/readyz"
                } else {
                    "/v1/models"
                };
                match http_get_json(&format!("{url}{path}")).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
                sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // Redis goes away: every replica checks every endpoint itself within two intervals.
    fleet.redis.stop().await.unwrap();
    let down = wall_secs();
    sleep(Duration::from_millis(2500)).await;
    let mut latest = 0.0f64;
    for (i, m) in fleet.mocks.iter().enumerate() {
        let hits = health_checks(m, down, wall_secs()).await.unwrap();
        for pod in PODS {
            let first = hits
                .iter()
                .filter(|(_, p)| p == pod)
                .map(|(t, _)| t - down)
                .fold(f64::INFINITY, f64::min);
            latest = latest.max(first);
            assert!(
                first <= 2.0,
                "ep-{i}: {pod} first checked locally {first:.2} s after the outage"
            );
        }
    }
    println!("Redis killed: every replica checked every endpoint within {latest:.2} s");
    for gw in &fleet.gateways {
        let s = shared_status(gw).await.unwrap()["status"].clone();
        assert_eq!(s["redis_available"], false, "{s}");
        assert_eq!(s["cache_available"], false, "{s}");
        assert!(
            gw.get("/metrics")
                .await
                .unwrap()
                .text
                .contains("hale_coord_redis_up 0")
        );
    }
    sleep(Duration::from_secs(2)).await;

    // Redis is back: the fleet goes back to one check per interval within three intervals.
    fleet.redis.restart().await.unwrap();
    let up = wall_secs();
    sleep(Duration::from_secs(3)).await;
    let from = wall_secs();
    sleep(Duration::from_secs(6)).await;
    let to = wall_secs();
    let (per_endpoint, per_pod) = tally(&fleet.mocks, from, to).await.unwrap();
    println!(
        "Redis back: {:.1}..{:.1} s after the restart, checks per endpoint {per_endpoint:?} (6 s), per pod {per_pod:?}",
        from - up,
        to - up
    );
    for (i, n) in per_endpoint.iter().enumerate() {
        assert!((5..=7).contains(n), "ep-{i}: {n} checks in 6 s");
    }
    for gw in &fleet.gateways {
        assert_eq!(
            shared_status(gw).await.unwrap()["status"]["redis_available"],
            true
        );
        let logs = gw.logs();
        // The outage's line, not every mention: the `error` field of that line may itself say
        // "Redis unreachable: <cause>" (a reset rather than a refusal, depending on when the
        // kill lands).
        assert_eq!(
            logs.matches("Redis unreachable: checking every endpoint locally")
                .count(),
            1,
            "logged once:\n{logs}"
        );
        assert!(logs.contains("Redis reachable again: rejoining shared health checks"));
    }

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("client requests during the outage and rejoin: {ok} ok, {failed} failed");
    assert!(ok > 300, "{ok}");
    assert_eq!(failed, 0);
}

// === configuration ===

#[tokio::test]
async fn compatibility_env_names_configure_a_shared_fleet() {
    let redis = RedisServer::start().await.unwrap();
    let mut conn = redis.client().await.unwrap();
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret-pw")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mock = MockLlm::start("vllm", &["m-0"]).await.unwrap();
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\nendpoints:\n  - name: ep-0\n    url: {}\n    type: vllm\n    check_interval: 1s\n    check_timeout: 500ms\n",
        mock.url()
    );
    let port = redis.port().to_string();
    let a = Gateway::start_with_env(
        &yaml,
        &[
            ("USE_SHARED_HEALTH_CHECK", "true"),
            ("REDIS_HOST", "127.0.0.1"),
            ("REDIS_PORT", &port),
            ("REDIS_PASSWORD", "s3cret-pw"),
            ("DEFAULT_SHARED_HEALTH_CHECK_TTL", "45"),
            ("DEFAULT_SHARED_HEALTH_CHECK_LOCK_TTL", "7"),
        ],
    )
    .await
    .unwrap();
    let url = format!("redis://:s3cret-pw@127.0.0.1:{port}");
    let b = Gateway::start_with_env(
        &yaml,
        &[("USE_SHARED_HEALTH_CHECK", "True"), ("REDIS_URL", &url)],
    )
    .await
    .unwrap();
    for (gw, ttl, lock) in [(&a, 45, 7), (&b, 300, 60)] {
        let body = eventually(Duration::from_secs(5), POLL, || async {
            let b = shared_status(gw).await?;
            anyhow::ensure!(b["status"]["redis_available"] == true, "{b}");
            Ok(b)
        })
        .await
        .unwrap();
        assert_eq!(body["shared_health_check_enabled"], true);
        let s = &body["status"];
        assert_eq!(s["mode"], "sharded");
        assert_eq!(
            (s["cache_ttl"].as_u64(), s["lock_ttl"].as_u64()),
            (Some(ttl), Some(lock))
        );
        assert!(
            !gw.logs().contains("s3cret-pw"),
            "the password is never logged"
        );
    }
    // Both write to the default namespace, under the password.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored = eventually(Duration::from_secs(5), POLL, || async {
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg("hale:{default}:result:ep-0")
            .query_async(&mut conn.clone())
            .await?;
        anyhow::ensure!(!fields.is_empty(), "no result yet");
        Ok(fields)
    })
    .await
    .unwrap();
    assert_eq!(stored["state"], "healthy");
    let ttl: i64 = redis::cmd("TTL")
        .arg("hale:{default}:result:ep-0")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 30 && ttl <= 300, "cache_ttl applies: {ttl}");
}
