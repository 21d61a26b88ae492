//! hale-coord against a real `redis-server` holding hostile values: every value Redis or the
//! channel hands a replica is refused and counted, or repaired, and never stops, storms or
//! freezes its checks. Each test writes the bad value with plain Redis commands, as anyone
//! with access to the Redis could.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail loudly on setup errors and unexpected answers"
)]

use hale_coord::wire::{self, StoredResult};
use hale_coord::{
    Coordinator, RejectKind, ResultCache, RoundAnswer, RoundLease, SharedConfig, WriteOutcome,
};
use hale_core::{
    CheckOutcome, Coordination, Decision, EndpointConfig, EndpointKind, FenceToken, HealthConfig,
    HealthState, HealthStore, Now, Phase, ResultKind, SharedResult, Source,
};
use hale_testkit::{RedisServer, eventually};
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const POLL: Duration = Duration::from_millis(20);
const LEASE: Duration = Duration::from_millis(300);
const LATE: Duration = Duration::from_secs(1);
const INTERVAL: Duration = Duration::from_secs(1);
/// 2^53 − 1: the largest fence Lua holds exactly, the year 2255 in µs.
const HUGE_FENCE: u64 = (1 << 53) - 1;
const TEN_YEARS_MS: i64 = 10 * 365 * 86_400_000;

fn config(redis: &RedisServer) -> SharedConfig {
    SharedConfig {
        enabled: true,
        redis_url: redis.url(),
        namespace: "t".to_owned(),
        cache_ttl: Duration::from_secs(30),
        lock_ttl: Duration::from_secs(3),
        ..SharedConfig::default()
    }
}

fn cache(redis: &RedisServer, owner: &str) -> ResultCache {
    ResultCache::new(&config(redis), owner).unwrap()
}

const RESULT: &str = "hale:{t}:result:e";
const LEASE_KEY: &str = "hale:{t}:lease:e";
const FENCE_KEY: &str = "hale:{t}:fence";
const CHANNEL: &str = "hale:{t}:events";

async fn cmd(c: &mut MultiplexedConnection, args: &[&str]) -> redis::Value {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(c).await.unwrap()
}

fn now_ms() -> i64 {
    wire::millis(SystemTime::now())
}

fn result(by: &str, fence: FenceToken, state: HealthState) -> SharedResult {
    SharedResult {
        state,
        phase: Phase::Running,
        reason: None,
        error: None,
        latency: Some(Duration::from_millis(2)),
        checked_at: SystemTime::now(),
        checked_by: Arc::from(by),
        fence,
        models: None,
        consecutive_failures: 0,
        consecutive_successes: 1,
        unhealthy_failures: 0,
        rate_limited_until: None,
        ejected_until: None,
        kind: ResultKind::Check {
            ok: state == HealthState::Healthy,
        },
    }
}

async fn granted(c: &ResultCache) -> RoundLease {
    match c.acquire_round("e", LEASE, LATE).await.unwrap() {
        RoundAnswer::Granted(lease) => lease,
        other => panic!("expected the round, got {other:?}"),
    }
}

/// Takes the round and writes a healthy result under it, planning the next round 1 ms
/// later (so the next call finds it due); returns the fence.
async fn write_round(c: &ResultCache) -> FenceToken {
    let lease = granted(c).await;
    let r = result(c.owner(), lease.fence, HealthState::Healthy);
    let written = c
        .write("e", &r, Some((lease, Duration::from_millis(1))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    match written {
        WriteOutcome::Written { fence, .. } => fence,
        other => panic!("expected the write to land, got {other:?}"),
    }
}

/// Waits until the result `replica` wrote under its fence is stored in Redis.
async fn stored_by(redis: &RedisServer, replica: &Replica) {
    let fence = replica.store.fence("e").unwrap();
    let c = cache(redis, "reader");
    eventually(Duration::from_secs(2), POLL, || async {
        matches!(read(&c).await.as_slice(), [Ok(s)] if s.result.fence == fence).then_some(())
    })
    .await
    .unwrap();
}

async fn read(c: &ResultCache) -> Vec<Result<StoredResult, wire::WireError>> {
    c.read_all(&[Arc::from("e")])
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

/// A channel message as the write script publishes it.
fn message(fence: &str, due_at: i64, due_in: i64, r: &SharedResult) -> String {
    format!("{fence} {due_at} {due_in}\n{}", wire::message_body("e", r))
}

// === the scripts repair what they find ===

#[tokio::test]
async fn a_non_numeric_due_at_is_due_and_the_write_repairs_it() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = cache(&redis, "pod-a");
    write_round(&a).await;
    for bad in ["soon", "1e999", "nan", ""] {
        cmd(&mut raw, &["HSET", RESULT, "due_at", bad]).await;
        let lease = granted(&a).await;
        assert_eq!(lease.repaired, 1, "due_at={bad:?}");
        let r = result("pod-a", lease.fence, HealthState::Healthy);
        a.write("e", &r, Some((lease, INTERVAL))).await.unwrap();
        let stored = read(&a).await.remove(0).unwrap();
        assert!(
            stored.due_in_ms > 0 && stored.due_in_ms <= 1000,
            "{stored:?}"
        );
    }
}

#[tokio::test]
async fn a_far_future_due_at_counts_as_due_beyond_the_callers_bound() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = cache(&redis, "pod-a");
    write_round(&a).await;
    let far = (now_ms() + TEN_YEARS_MS).to_string();
    cmd(&mut raw, &["HSET", RESULT, "due_at", &far]).await;
    let bounds = hale_coord::Bounds {
        max_due_in: Duration::from_secs(2),
        max_lease: Duration::from_secs(3),
    };
    match a.acquire_bounded("e", LEASE, LATE, bounds).await.unwrap() {
        RoundAnswer::Granted(lease) => assert_eq!(lease.repaired, 1),
        other => panic!("a due time ten years ahead must not hold the round: {other:?}"),
    }
}

#[tokio::test]
async fn keys_of_the_wrong_type_are_replaced_not_fatal() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = cache(&redis, "pod-a");
    let setups: [&[&str]; 4] = [
        &["SET", RESULT, "not a hash"],
        &["RPUSH", RESULT, "a", "list"],
        &["HSET", LEASE_KEY, "f", "v"],
        &["SADD", FENCE_KEY, "a set"],
    ];
    for setup in setups {
        cmd(&mut raw, &["DEL", RESULT, LEASE_KEY, FENCE_KEY]).await;
        cmd(&mut raw, setup).await;
        if setup[1] == RESULT {
            // Reading is not fatal either: the one entry is refused.
            let found = read(&a).await;
            assert!(matches!(found.as_slice(), [Err(_)]), "{setup:?}: {found:?}");
        }
        let fence = write_round(&a).await;
        assert!(fence.get() > 1_000_000_000_000_000, "{setup:?}: {fence}");
        let stored = read(&a).await.remove(0).unwrap();
        assert_eq!(stored.result.fence, fence, "{setup:?}");
    }
}

#[tokio::test]
async fn a_lease_without_expiry_or_too_long_is_taken_over() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = cache(&redis, "pod-a");
    cmd(&mut raw, &["SET", LEASE_KEY, "intruder"]).await;
    assert_eq!(granted(&a).await.repaired, 3);
    cmd(&mut raw, &["SET", LEASE_KEY, "intruder", "PX", "86400000"]).await;
    assert_eq!(granted(&a).await.repaired, 3);
}

#[tokio::test]
async fn a_poisoned_global_lease_is_taken_over() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = cache(&redis, "pod-a");
    let ttl = Duration::from_secs(3);
    let global = "hale:{t}:lease";
    let setups: [&[&str]; 3] = [
        &["SET", global, "intruder"],
        &["SET", global, "intruder", "PX", "86400000"],
        &["HSET", global, "f", "v"],
    ];
    for setup in setups {
        cmd(&mut raw, &["DEL", global]).await;
        cmd(&mut raw, setup).await;
        let got = a.renew_global(ttl).await.unwrap();
        assert!(
            matches!(got, hale_coord::GlobalLease::Acquired(_)),
            "{setup:?}: {got:?}"
        );
    }
    // A lease held within bounds by someone else is respected.
    cmd(&mut raw, &["SET", global, "pod-b", "PX", "2000"]).await;
    assert_eq!(
        a.renew_global(ttl).await.unwrap(),
        hale_coord::GlobalLease::HeldBy("pod-b".to_owned())
    );
}

#[tokio::test]
async fn a_poisoned_counter_is_reseeded_and_a_huge_stored_fence_overwritten() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = cache(&redis, "pod-a");
    let first = write_round(&a).await;
    // A stored fence no counter can have issued, and a counter pushed to it.
    cmd(
        &mut raw,
        &["HSET", RESULT, "fence", &HUGE_FENCE.to_string()],
    )
    .await;
    let next = write_round(&a).await;
    assert!(next > first);
    assert_eq!(read(&a).await.remove(0).unwrap().result.fence, next);
    for bad in [HUGE_FENCE.to_string(), "12abc".to_owned(), "-5".to_owned()] {
        cmd(&mut raw, &["SET", FENCE_KEY, &bad]).await;
        let f = write_round(&a).await;
        let now_us = u64::try_from(now_ms()).unwrap() * 1000;
        assert!(
            f.get() > 1_000_000_000_000_000 && f.get() < now_us + 3_600_000_000,
            "counter {bad}: fence {f}"
        );
    }
}

#[tokio::test]
async fn oversize_and_out_of_range_fields_are_refused_on_read() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = cache(&redis, "pod-a");
    write_round(&a).await;
    let long = "x".repeat(wire::MAX_TEXT + 1);
    let many: Vec<String> = (0..=wire::MAX_MODELS).map(|i| format!("m{i}")).collect();
    let many = serde_json::to_string(&many).unwrap();
    let bad: [(&str, &str); 9] = [
        ("error", &long),
        ("checked_by", &long),
        ("models", &many),
        ("state", "splendid"),
        ("cf", "-1"),
        ("cs", "99999999999"),
        ("latency_ms", "inf"),
        ("checked_at", "99999999999999999"),
        ("fence", "0"),
    ];
    for (field, value) in bad {
        write_round(&a).await;
        cmd(&mut raw, &["HSET", RESULT, field, value]).await;
        let found = read(&a).await;
        assert!(matches!(found.as_slice(), [Err(_)]), "{field}: {found:?}");
    }
}

// === replicas ===

fn store(pod: &str) -> Arc<HealthStore> {
    let mut c = EndpointConfig::new("e", "http://127.0.0.1:9", EndpointKind::Vllm);
    c.check_interval = INTERVAL;
    c.check_timeout = Duration::from_millis(200);
    c.startup.period = INTERVAL;
    c.startup.timeout = Duration::from_millis(200);
    let health = HealthConfig {
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        jitter: 0.0,
        ..HealthConfig::default()
    };
    Arc::new(HealthStore::new(
        pod,
        vec![c.resolve("e").unwrap()],
        &health,
        Now::capture(),
    ))
}

struct Replica {
    store: Arc<HealthStore>,
    coord: Coordinator,
}

async fn replica(redis: &RedisServer, pod: &str) -> Replica {
    let store = store(pod);
    let coord = Coordinator::start(&config(redis), pod, &store).unwrap();
    coord.first_contact(Duration::from_secs(2)).await;
    assert!(coord.redis_available());
    Replica { store, coord }
}

impl Replica {
    /// Asks to check `e` and, if told to, records `outcome` under the fence given.
    async fn check(&self, outcome: &CheckOutcome) -> Decision {
        let decision = self.coord.may_check("e").await;
        if let Decision::Check { fence } = decision {
            self.store
                .observe_fenced("e", outcome, Now::capture(), fence);
        }
        decision
    }

    /// Asks until a round is granted under a real fence (within 3 s) and records a good
    /// check under it: Redis coordinates this replica again. Returns the fence.
    async fn coordinated_check(&self) -> FenceToken {
        eventually(
            Duration::from_secs(3),
            Duration::from_millis(50),
            || async {
                match self.check(&ok()).await {
                    Decision::Check { fence } if !fence.is_local() => Some(fence),
                    _ => None,
                }
            },
        )
        .await
        .unwrap()
    }

    /// Checks `e` in a coordinated round (within 3 s) and waits until `other` holds the
    /// result's fence: the subscriber on the other side is alive and adopting.
    async fn coordinated_result_reaches(&self, other: &Replica) {
        let fence = self.coordinated_check().await;
        eventually(Duration::from_secs(2), POLL, || async {
            (other.store.fence("e").unwrap() == fence).then_some(())
        })
        .await
        .unwrap();
    }

    fn state(&self) -> (HealthState, Source) {
        let snap = self.store.snapshot();
        let h = &snap.get("e").unwrap().health;
        (h.state, h.source)
    }
}

fn ok() -> CheckOutcome {
    CheckOutcome::ok(Duration::from_millis(2))
}

#[tokio::test]
async fn garbage_and_forged_messages_are_refused_and_the_subscriber_keeps_going() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = replica(&redis, "pod-a").await;
    let b = replica(&redis, "pod-b").await;
    assert!(matches!(a.check(&ok()).await, Decision::Check { fence } if !fence.is_local()));
    eventually(Duration::from_secs(2), POLL, || async {
        (b.state() == (HealthState::Healthy, Source::Shared)).then_some(())
    })
    .await
    .unwrap();

    let lie = result("mallory", FenceToken(1), HealthState::Unhealthy);
    let now = now_ms();
    let far = now + TEN_YEARS_MS;
    let big = "x".repeat(wire::MAX_MESSAGE + 1);
    let garbage = [
        "".to_owned(),
        "\u{0}\u{1}binary".to_owned(),
        "1 2\nnot json".to_owned(),
        big,
        message("-1", now, 0, &lie),
        message("abc", now, 0, &lie),
        message("0", now, 0, &lie),
        message(&HUGE_FENCE.to_string(), far, TEN_YEARS_MS, &lie),
        message("18446744073709551616", now, 0, &lie),
    ];
    for g in &garbage {
        cmd(&mut raw, &["PUBLISH", CHANNEL, g]).await;
    }
    // A legitimate result after the garbage still arrives: the subscriber is alive.
    a.coordinated_result_reaches(&b).await;
    assert_eq!(b.state(), (HealthState::Healthy, Source::Shared));
    assert_eq!(b.coord.rejected(RejectKind::Fence), 1, "2^53-1");
    assert_eq!(b.coord.rejected(RejectKind::Malformed), 8);
    assert!(b.coord.redis_available(), "refusals are not Redis failures");
    assert_eq!(b.coord.status().errors_total, 0);
}

#[tokio::test]
async fn a_far_future_due_in_a_valid_message_does_not_delay_the_next_check() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let b = replica(&redis, "pod-b").await;
    assert!(matches!(b.check(&ok()).await, Decision::Check { fence } if !fence.is_local()));
    // A plausible fence (this µs) with a due time ten years ahead: the result is adopted
    // (it could be true), the due time refused.
    let now = now_ms();
    let fence = u64::try_from(now).unwrap() * 1000;
    let lie = result("mallory", FenceToken(fence), HealthState::Healthy);
    cmd(
        &mut raw,
        &[
            "PUBLISH",
            CHANNEL,
            &message(&fence.to_string(), now + TEN_YEARS_MS, TEN_YEARS_MS, &lie),
        ],
    )
    .await;
    eventually(Duration::from_secs(2), POLL, || async {
        (b.coord.rejected(RejectKind::Due) == 1).then_some(())
    })
    .await
    .unwrap();
    match b.coord.may_check("e").await {
        Decision::Skip { retry_in } => {
            assert!(
                retry_in <= INTERVAL + Duration::from_millis(250),
                "{retry_in:?}"
            )
        }
        Decision::Check { .. } => {}
    }
}

#[tokio::test]
async fn the_watchdog_heals_a_replica_holding_a_plausible_forged_fence() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = replica(&redis, "pod-a").await;
    let b = replica(&redis, "pod-b").await;
    // B adopts a forged "unhealthy" under a fence just below the plausibility bound: far
    // above anything the counter will issue for a long time.
    let now = now_ms();
    let forged = u64::try_from(now).unwrap() * 1000 + 1_000_000_000;
    let mut lie = result("mallory", FenceToken(forged), HealthState::Unhealthy);
    lie.kind = ResultKind::Check { ok: false };
    cmd(
        &mut raw,
        &[
            "PUBLISH",
            CHANNEL,
            &message(&forged.to_string(), now + 1000, 1000, &lie),
        ],
    )
    .await;
    eventually(Duration::from_secs(2), POLL, || async {
        (b.state().0 == HealthState::Unhealthy).then_some(())
    })
    .await
    .unwrap();
    // A checks every round and finds the backend healthy; B keeps asking, as its scheduler
    // would. Within its planned delay + spread (+ a round) B is healthy again.
    let started = tokio::time::Instant::now();
    let healed = eventually(
        Duration::from_secs(4),
        Duration::from_millis(50),
        || async {
            a.check(&ok()).await;
            b.check(&ok()).await;
            (b.state().0 == HealthState::Healthy).then_some(started.elapsed())
        },
    )
    .await
    .unwrap();
    assert!(
        healed <= INTERVAL * 2 + Duration::from_millis(500),
        "{healed:?}"
    );
    // And it takes A's results again afterwards.
    tokio::time::sleep(INTERVAL).await;
    a.coordinated_result_reaches(&b).await;
}

#[tokio::test]
async fn a_script_error_is_a_local_round_at_the_own_cadence_then_an_outage() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = replica(&redis, "pod-a").await;
    assert!(matches!(a.check(&ok()).await, Decision::Check { fence } if !fence.is_local()));
    tokio::time::sleep(INTERVAL + Duration::from_millis(300)).await;
    cmd(
        &mut raw,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    )
    .await;
    cmd(&mut raw, &["CONFIG", "SET", "maxmemory", "1"]).await;
    // Every write now answers OOM: the round is local, and the next wait is the planned
    // one, not the zero a stale due time would give.
    let d = a.check(&ok()).await;
    assert_eq!(
        d,
        Decision::Check {
            fence: FenceToken::LOCAL
        }
    );
    assert_eq!(a.coord.next_wait("e", INTERVAL), INTERVAL);
    let s = a.coord.status();
    assert!(s.errors_total >= 1);
    assert!(s.last_error.as_deref().unwrap().contains("OOM"), "{s:?}");
    // Failures that persist make an outage.
    eventually(Duration::from_secs(3), POLL, || async {
        a.check(&ok()).await;
        (!a.coord.redis_available()).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(a.coord.next_wait("e", INTERVAL), INTERVAL);

    // Memory back: probes succeed, and after a few seconds the replica rejoins.
    cmd(&mut raw, &["CONFIG", "SET", "maxmemory", "0"]).await;
    eventually(Duration::from_secs(6), POLL, || async {
        a.coord.redis_available().then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(INTERVAL).await;
    a.coordinated_check().await;
}

#[tokio::test]
async fn a_hash_poisoned_with_a_far_due_and_huge_fence_heals_within_a_round() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = replica(&redis, "pod-a").await;
    let b = replica(&redis, "pod-b").await;
    assert!(matches!(a.check(&ok()).await, Decision::Check { fence } if !fence.is_local()));
    stored_by(&redis, &a).await;
    let far = (now_ms() + TEN_YEARS_MS).to_string();
    cmd(
        &mut raw,
        &[
            "HSET",
            RESULT,
            "due_at",
            &far,
            "fence",
            &HUGE_FENCE.to_string(),
            "state",
            "unhealthy",
        ],
    )
    .await;
    // Both keep asking, as their schedulers would: a round is taken and written within an
    // interval and a spread, and the hash holds sane values again.
    let started = tokio::time::Instant::now();
    eventually(
        Duration::from_secs(4),
        Duration::from_millis(50),
        || async {
            a.check(&ok()).await;
            b.check(&ok()).await;
            let c = cache(&redis, "reader");
            let found = read(&c).await;
            match found.as_slice() {
                [Ok(s)] if s.result.fence.get() < HUGE_FENCE && s.due_in_ms <= 1000 => Some(()),
                _ => None,
            }
        },
    )
    .await
    .unwrap();
    assert!(started.elapsed() <= INTERVAL * 2 + Duration::from_millis(500));
    assert!(a.coord.rejected(RejectKind::Due) + b.coord.rejected(RejectKind::Due) >= 1);
    assert_eq!(a.state().0, HealthState::Healthy);
    assert_eq!(b.state().0, HealthState::Healthy);
}

// === signed results ===

const KEY: &str = "0123456789abcdef-signing";

async fn signed_replica(redis: &RedisServer, pod: &str, key: &str) -> Replica {
    let store = store(pod);
    let cfg = SharedConfig {
        signing_key: hale_core::Secret::new(key),
        ..config(redis)
    };
    let coord = Coordinator::start(&cfg, pod, &store).unwrap();
    coord.first_contact(Duration::from_secs(2)).await;
    assert!(coord.redis_available());
    Replica { store, coord }
}

#[tokio::test]
async fn with_a_signing_key_only_signed_results_are_adopted() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = signed_replica(&redis, "pod-a", KEY).await;
    let b = signed_replica(&redis, "pod-b", KEY).await;
    assert!(matches!(a.check(&ok()).await, Decision::Check { fence } if !fence.is_local()));
    eventually(Duration::from_secs(2), POLL, || async {
        (b.state() == (HealthState::Healthy, Source::Shared)).then_some(())
    })
    .await
    .unwrap();
    stored_by(&redis, &a).await;

    // A forged event with a plausible fence: unsigned, then signed with another key.
    let now = now_ms();
    let fence = u64::try_from(now).unwrap() * 1000;
    let lie = result("mallory", FenceToken(fence), HealthState::Unhealthy);
    let unsigned = message(&fence.to_string(), now + 1000, 1000, &lie);
    let mut fields = wire::to_fields(&lie);
    fields.push(("planned_ms", "1000".to_owned()));
    let wrong = hale_coord::signing::Signer::new("another key, 16+ bytes").unwrap();
    fields.push(("sig", wrong.sign("e", fence, &fields)));
    let wrongly_signed = format!(
        "{fence} {} 1000\n{}",
        now + 1000,
        wire::message_body_of("e", &fields)
    );
    for m in [&unsigned, &wrongly_signed] {
        cmd(&mut raw, &["PUBLISH", CHANNEL, m]).await;
    }
    eventually(Duration::from_secs(2), POLL, || async {
        (b.coord.rejected(RejectKind::Signature) == 2).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(b.state(), (HealthState::Healthy, Source::Shared));

    // A tampered hash (the state changed, the signature kept) is refused on a re-read: a
    // replica starting now does not adopt it.
    cmd(&mut raw, &["HSET", RESULT, "state", "unhealthy"]).await;
    let c = signed_replica(&redis, "pod-c", KEY).await;
    assert_eq!(c.coord.rejected(RejectKind::Signature), 1);
    assert_eq!(c.state().0, HealthState::Unknown);

    // A passive failure, signed with a fence taken first, reaches the others.
    a.store
        .passive_failure("e", &hale_core::CheckResult::ConnectRefused, Now::capture());
    eventually(Duration::from_secs(2), POLL, || async {
        (b.state().0 == HealthState::Unhealthy && c.state().0 == HealthState::Unhealthy)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(b.coord.rejected(RejectKind::Signature), 2);

    // A replica without the key still reads signed results (it does not check them).
    let d = replica(&redis, "pod-d").await;
    assert_eq!(d.state().0, HealthState::Unhealthy);
}

// === a slow Redis is not an outage ===

#[tokio::test]
async fn a_slow_answer_is_one_local_round_not_an_outage() {
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let a = replica(&redis, "pod-a").await;
    assert!(matches!(a.check(&ok()).await, Decision::Check { fence } if !fence.is_local()));
    tokio::time::sleep(INTERVAL + Duration::from_millis(300)).await;
    // Redis stops answering for 700 ms, longer than the 500 ms command timeout.
    cmd(&mut raw, &["CLIENT", "PAUSE", "700", "ALL"]).await;
    let d = a.check(&ok()).await;
    assert_eq!(
        d,
        Decision::Check {
            fence: FenceToken::LOCAL
        }
    );
    assert_eq!(a.coord.next_wait("e", INTERVAL), INTERVAL, "own cadence");
    let s = a.coord.status();
    assert_eq!(s.errors_total, 1, "{s:?}");
    assert!(
        s.last_error.as_deref().unwrap().contains("did not answer"),
        "{s:?}"
    );
    assert!(
        a.coord.redis_available(),
        "one slow answer is not an outage"
    );
    // Once Redis answers again, the next round is coordinated as before.
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.coordinated_check().await;
    assert!(a.coord.redis_available());
}

/// An acquire that times out before the watchdog's deadline (a starved host reading its
/// answers late) is a `Skip` until that deadline, not an extra check; the round after is
/// coordinated as before.
#[tokio::test]
async fn an_acquire_timeout_before_the_deadline_skips_to_it_instead_of_checking() {
    const SLOW: Duration = Duration::from_secs(4);
    let redis = RedisServer::start().await.unwrap();
    let mut raw = redis.client().await.unwrap();
    let mut c = EndpointConfig::new("e", "http://127.0.0.1:9", EndpointKind::Vllm);
    c.check_interval = SLOW;
    c.check_timeout = Duration::from_millis(200);
    c.startup.period = SLOW;
    c.startup.timeout = Duration::from_millis(200);
    let health = HealthConfig {
        unhealthy_threshold: 1,
        healthy_threshold: 1,
        jitter: 0.0,
        ..HealthConfig::default()
    };
    let store = Arc::new(HealthStore::new(
        "pod-a",
        vec![c.resolve("e").unwrap()],
        &health,
        Now::capture(),
    ));
    let coord = Coordinator::start(&config(&redis), "pod-a", &store).unwrap();
    coord.first_contact(Duration::from_secs(2)).await;
    let a = Replica { store, coord };
    let checked = tokio::time::Instant::now();
    assert!(matches!(a.check(&ok()).await, Decision::Check { fence } if !fence.is_local()));
    stored_by(&redis, &a).await;
    // The next round is due 4 s on (this replica asks within an eighth of the 1 s spread
    // after that); the deadline (fresh + planned + spread) 5 s on.
    tokio::time::sleep_until(checked + SLOW + SLOW / 32 + Duration::from_millis(50)).await;
    cmd(&mut raw, &["CLIENT", "PAUSE", "700", "ALL"]).await;
    let asked = tokio::time::Instant::now();
    match a.check(&ok()).await {
        Decision::Skip { retry_in } => {
            let deadline = checked + SLOW + SLOW / 4;
            assert!(
                asked + Duration::from_millis(500) + retry_in
                    <= deadline + Duration::from_millis(100),
                "skips to the deadline, not past it: {retry_in:?}"
            );
        }
        d => panic!("a timed-out acquire before the deadline checks nothing: {d:?}"),
    }
    let s = a.coord.status();
    assert_eq!(s.errors_total, 1, "{s:?}");
    assert!(
        a.coord.redis_available(),
        "one late answer is not an outage"
    );
    // Redis answers again: the round is coordinated (granted), not local.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = eventually(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || async {
            match a.check(&ok()).await {
                d @ Decision::Check { .. } => Some(d),
                Decision::Skip { .. } => None,
            }
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(d, Decision::Check { fence } if !fence.is_local()),
        "{d:?}"
    );
}
