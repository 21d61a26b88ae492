//! hale-coord against a real `redis-server` (no mocks): the Redis semantics the fleet relies
//! on — fencing, owner-checked leases, round timing, namespaces, a restart — and replicas
//! (in-process stores with their own coordinators) exchanging results through it.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail loudly on setup errors and unexpected answers"
)]

use hale_coord::{
    CoordMode, Coordinator, GlobalLease, ResultCache, RoundAnswer, RoundLease, SharedConfig,
    WriteOutcome,
};
use hale_core::{
    CheckOutcome, CheckResult, Coordination, Decision, FenceToken, HealthState, HealthStore, Now,
    Phase, ResultKind, SharedResult, Source,
};
use hale_testkit::{RedisServer, eventually};

mod support;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const POLL: Duration = Duration::from_millis(20);
const LEASE: Duration = Duration::from_millis(300);
const LATE: Duration = Duration::from_secs(1);

fn config(redis: &RedisServer, namespace: &str) -> SharedConfig {
    SharedConfig {
        enabled: true,
        redis_url: redis.url(),
        namespace: namespace.to_owned(),
        cache_ttl: Duration::from_secs(30),
        lock_ttl: Duration::from_secs(3),
        ..SharedConfig::default()
    }
}

fn cache(redis: &RedisServer, namespace: &str, owner: &str) -> ResultCache {
    ResultCache::new(&config(redis, namespace), owner).unwrap()
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

/// The stored results of `name` (none or one), each readable.
async fn read(c: &ResultCache, name: &str) -> Vec<hale_coord::wire::StoredResult> {
    c.read_all(&[Arc::from(name)])
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r.unwrap())
        .collect()
}

async fn granted(c: &ResultCache, endpoint: &str) -> RoundLease {
    match c.acquire_round(endpoint, LEASE, LATE).await.unwrap() {
        RoundAnswer::Granted(lease) => lease,
        other => panic!("expected the round, got {other:?}"),
    }
}

// === the Redis side ===

#[tokio::test]
async fn an_outdated_fence_cannot_overwrite_a_newer_result() {
    let redis = RedisServer::start().await.unwrap();
    let (a, b) = (cache(&redis, "t", "pod-a"), cache(&redis, "t", "pod-b"));

    // A takes the round, then stalls past its lease; B takes the round over.
    let lease_a = granted(&a, "e").await;
    assert!(matches!(
        b.acquire_round("e", LEASE, LATE).await.unwrap(),
        RoundAnswer::Busy { .. }
    ));
    let lease_b = eventually(Duration::from_secs(2), POLL, || async {
        match b.acquire_round("e", LEASE, LATE).await? {
            RoundAnswer::Granted(l) => Ok(l),
            other => Err(anyhow::anyhow!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(lease_b.fence > lease_a.fence);

    let newer = result("pod-b", lease_b.fence, HealthState::Unhealthy);
    let written = b
        .write("e", &newer, Some((lease_b, Duration::from_secs(1))))
        .await
        .unwrap();
    assert!(matches!(written, WriteOutcome::Written { fence, .. } if fence == lease_b.fence));

    // A wakes up and writes under its old fence: refused, and told what is stored.
    let older = result("pod-a", lease_a.fence, HealthState::Healthy);
    match a
        .write("e", &older, Some((lease_a, Duration::from_secs(1))))
        .await
        .unwrap()
    {
        WriteOutcome::Refused(Ok(stored)) => {
            assert_eq!(stored.result.fence, lease_b.fence);
            assert_eq!(stored.result.state, HealthState::Unhealthy);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let stored = read(&a, "e").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].result.state, HealthState::Unhealthy);
    assert_eq!(&*stored[0].result.checked_by, "pod-b");
}

#[tokio::test]
async fn release_and_extend_are_owner_checked() {
    let redis = RedisServer::start().await.unwrap();
    let (a, b) = (cache(&redis, "t", "pod-a"), cache(&redis, "t", "pod-b"));
    granted(&a, "e").await;
    assert!(!b.release_round("e").await.unwrap(), "not B's to release");
    assert!(
        !b.extend_round("e", LEASE).await.unwrap(),
        "not B's to extend"
    );
    assert!(a.extend_round("e", Duration::from_secs(5)).await.unwrap());
    match b.acquire_round("e", LEASE, LATE).await.unwrap() {
        RoundAnswer::Busy { pttl } => assert!(pttl > LEASE, "extended: {pttl:?}"),
        other => panic!("{other:?}"),
    }
    assert!(a.release_round("e").await.unwrap());
    assert!(!a.release_round("e").await.unwrap(), "released once");
    granted(&b, "e").await;

    // The global lease: taken by one, extended by it, refused to the other.
    assert!(matches!(
        a.renew_global(LEASE).await.unwrap(),
        GlobalLease::Acquired(_)
    ));
    assert_eq!(a.renew_global(LEASE).await.unwrap(), GlobalLease::Extended);
    assert_eq!(
        b.renew_global(LEASE).await.unwrap(),
        GlobalLease::HeldBy("pod-a".into())
    );
    assert!(!b.release_global().await.unwrap());
    assert!(a.release_global().await.unwrap());
    assert!(matches!(
        b.renew_global(LEASE).await.unwrap(),
        GlobalLease::Acquired(_)
    ));
}

#[tokio::test]
async fn rounds_are_anchored_and_passive_results_leave_them_alone() {
    let redis = RedisServer::start().await.unwrap();
    let (a, b) = (cache(&redis, "t", "pod-a"), cache(&redis, "t", "pod-b"));
    let lease = granted(&a, "e").await;
    let checked = result("pod-a", lease.fence, HealthState::Healthy);
    let WriteOutcome::Written { due_in, due_at, .. } = a
        .write("e", &checked, Some((lease, Duration::from_secs(2))))
        .await
        .unwrap()
    else {
        panic!("not written");
    };
    // The next round is due `planned` after this round's anchor (now, for a first round).
    assert!(due_in <= Duration::from_secs(2) && due_in > Duration::from_millis(1800));
    assert_eq!(due_at, lease.anchor + 2000);
    match b.acquire_round("e", LEASE, LATE).await.unwrap() {
        RoundAnswer::NotDue { due_in, due_at: d } => {
            assert!(due_in <= Duration::from_secs(2));
            assert_eq!(d, due_at);
        }
        other => panic!("{other:?}"),
    }

    // A passive failure: a fresh, newer fence; the round stays where it was.
    let mut passive = result("pod-b", FenceToken::LOCAL, HealthState::Unhealthy);
    passive.kind = ResultKind::Passive;
    let WriteOutcome::Written {
        fence,
        due_at: passive_due,
        ..
    } = b.write("e", &passive, None).await.unwrap()
    else {
        panic!("not written");
    };
    assert!(fence > lease.fence);
    assert_eq!(passive_due, due_at);
    assert!(matches!(
        b.acquire_round("e", LEASE, LATE).await.unwrap(),
        RoundAnswer::NotDue { .. }
    ));
    let stored = read(&b, "e").await;
    assert_eq!(stored[0].result.kind, ResultKind::Passive);
    assert_eq!(stored[0].result.fence, fence);
}

#[tokio::test]
async fn fences_keep_growing_across_a_redis_restart() {
    let mut redis = RedisServer::start().await.unwrap();
    let a = cache(&redis, "t", "pod-a");
    let first = granted(&a, "e").await.fence;
    let second = granted(&a, "f").await.fence;
    assert!(second > first);
    redis.restart().await.unwrap();
    // The pool's old connection died with the server; the next call may fail once.
    let after = eventually(Duration::from_secs(3), POLL, || async {
        match a.acquire_round("e", LEASE, LATE).await? {
            RoundAnswer::Granted(l) => Ok(l.fence),
            other => Err(anyhow::anyhow!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(
        after > second,
        "{after} after {second}: tokens must not restart"
    );
}

#[tokio::test]
async fn two_namespaces_never_see_each_others_results() {
    let redis = RedisServer::start().await.unwrap();
    let (blue, green) = (
        cache(&redis, "blue", "pod-a"),
        cache(&redis, "green", "pod-a"),
    );
    let lease = granted(&blue, "e").await;
    blue.write(
        "e",
        &result("pod-a", lease.fence, HealthState::Unhealthy),
        Some((lease, Duration::from_secs(5))),
    )
    .await
    .unwrap();
    assert!(green.read_all(&[Arc::from("e")]).await.unwrap().is_empty());
    // The round blue just checked is still due for green, and vice versa.
    granted(&green, "e").await;

    let mut conn = redis.client().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("hale:{blue}:") || k.starts_with("hale:{green}:")),
        "{keys:?}"
    );
}

// === replicas ===

use support::store;

struct Replica {
    store: Arc<HealthStore>,
    coord: Coordinator,
}

async fn replica(config: &SharedConfig, pod: &str, names: &[&str]) -> Replica {
    let store = store(pod, names);
    let coord = Coordinator::start(config, pod, &store).unwrap();
    coord.first_contact(Duration::from_secs(2)).await;
    Replica { store, coord }
}

impl Replica {
    /// Asks to check `name` and, if granted, records `outcome` under the fence given.
    async fn check(&self, name: &str, outcome: CheckOutcome) -> Decision {
        let decision = self.coord.may_check(name).await;
        if let Decision::Check { fence } = decision {
            self.store
                .observe_fenced(name, &outcome, Now::capture(), fence);
        }
        decision
    }

    fn state(&self, name: &str) -> (HealthState, Source) {
        let snap = self.store.snapshot();
        let h = &snap.get(name).unwrap().health;
        (h.state, h.source)
    }
}

fn ok() -> CheckOutcome {
    CheckOutcome::ok(Duration::from_millis(2))
}

#[tokio::test]
async fn a_round_is_checked_once_and_every_replica_adopts_it() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = config(&redis, "fleet");
    let a = replica(&cfg, "pod-a", &["e"]).await;
    let b = replica(&cfg, "pod-b", &["e"]).await;
    assert!(a.coord.redis_available() && b.coord.redis_available());

    let first = a.check("e", ok()).await;
    assert!(matches!(first, Decision::Check { fence } if !fence.is_local()));
    eventually(Duration::from_secs(2), POLL, || async {
        (b.state("e") == (HealthState::Healthy, Source::Shared)).then_some(())
    })
    .await
    .unwrap();
    let events = b.store.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].source, &*events[0].pod_id),
        (Source::Shared, "pod-a")
    );

    // B asks for the same round: it is covered, and B is told when the next one starts.
    let Decision::Skip { retry_in } = b.check("e", ok()).await else {
        panic!("the round was checked already");
    };
    assert!(retry_in <= Duration::from_millis(1250), "{retry_in:?}");
    assert_eq!(b.coord.status().checks_skipped, 1);
    assert_eq!(a.coord.status().checks_performed, 1);

    // A failure on A's request path reaches B too.
    a.store
        .passive_failure("e", &CheckResult::ConnectRefused, Now::capture());
    eventually(Duration::from_secs(2), POLL, || async {
        (b.state("e").0 == HealthState::Unhealthy).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(a.state("e"), (HealthState::Unhealthy, Source::Passive));
    let (fa, fb) = (a.store.fence("e").unwrap(), b.store.fence("e").unwrap());
    assert_eq!(fa, fb, "both hold the passive result's fence");

    let status = b.coord.status();
    assert_eq!(&*status.pod_id, "pod-b");
    assert_eq!(status.mode, CoordMode::Sharded);
    assert_eq!(status.last_checked_by.as_deref(), Some("pod-a"));
    let status = eventually(Duration::from_secs(3), POLL, || async {
        let s = b.coord.status();
        s.cache_available.then_some(s)
    })
    .await
    .unwrap();
    assert!(status.cache_age.unwrap() < Duration::from_secs(3));
    a.coord.shutdown().await;
    b.coord.shutdown().await;
}

#[tokio::test]
async fn replicas_in_other_namespaces_do_not_adopt() {
    let redis = RedisServer::start().await.unwrap();
    let a = replica(&config(&redis, "blue"), "pod-a", &["e"]).await;
    let b = replica(&config(&redis, "green"), "pod-b", &["e"]).await;
    assert!(matches!(a.check("e", ok()).await, Decision::Check { .. }));
    // Green's own round is still due: the blue result did not count for it.
    assert!(matches!(b.check("e", ok()).await, Decision::Check { .. }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.state("e").1, Source::Local);
    assert_eq!(b.coord.status().checks_skipped, 0);
    assert_eq!(a.coord.status().checks_skipped, 0);
}

#[tokio::test]
async fn without_redis_every_check_is_local_and_it_rejoins_when_redis_returns() {
    let mut redis = RedisServer::start().await.unwrap();
    let cfg = config(&redis, "t");
    redis.stop().await.unwrap();
    let a = replica(&cfg, "pod-a", &["e"]).await;
    assert!(!a.coord.redis_available());
    let d = a.check("e", ok()).await;
    assert_eq!(
        d,
        Decision::Check {
            fence: FenceToken::LOCAL
        }
    );
    assert_eq!(a.state("e"), (HealthState::Healthy, Source::Local));
    let s = a.coord.status();
    assert!(!s.redis_available && !s.cache_available && s.lock_owner.is_none());

    redis.restart().await.unwrap();
    eventually(Duration::from_secs(3), POLL, || async {
        a.coord.redis_available().then_some(())
    })
    .await
    .unwrap();
    assert!(matches!(
        a.check("e", ok()).await,
        Decision::Check { fence } if !fence.is_local()
    ));
}

#[tokio::test]
async fn a_killed_redis_turns_checks_local_at_once() {
    let mut redis = RedisServer::start().await.unwrap();
    let a = replica(&config(&redis, "t"), "pod-a", &["e"]).await;
    assert!(a.coord.redis_available());
    redis.stop().await.unwrap();
    // The subscription closes, or the next operation fails: either way the check runs.
    let d = eventually(Duration::from_secs(2), POLL, || async {
        match a.coord.may_check("e").await {
            d @ Decision::Check { fence } if fence.is_local() => Some(d),
            _ => None,
        }
    })
    .await
    .unwrap();
    assert!(matches!(d, Decision::Check { .. }));
    // The outage is declared on evidence that persists: a few failed operations.
    eventually(Duration::from_secs(3), POLL, || async {
        (!a.coord.redis_available()).then_some(())
    })
    .await
    .unwrap();
    let s = a.coord.status();
    assert!(s.errors_total >= 3, "{s:?}");
    assert!(s.last_error.is_some());
}

#[tokio::test]
async fn global_mode_has_one_holder_that_goes_first() {
    let redis = RedisServer::start().await.unwrap();
    let cfg = SharedConfig {
        mode: CoordMode::Global,
        ..config(&redis, "g")
    };
    let a = replica(&cfg, "pod-a", &["e"]).await;
    eventually(Duration::from_secs(3), POLL, || async {
        (a.coord.status().lock_owner.as_deref() == Some("pod-a")).then_some(())
    })
    .await
    .unwrap();
    let b = replica(&cfg, "pod-b", &["e"]).await;
    let s = eventually(Duration::from_secs(3), POLL, || async {
        let s = b.coord.status();
        s.lock_owner.is_some().then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(s.lock_owner.as_deref(), Some("pod-a"));
    assert!(s.lock_in_progress);
    assert_eq!(s.mode, CoordMode::Global);

    // The holder gives the lease back on shutdown; the other takes it over.
    a.coord.shutdown().await;
    eventually(Duration::from_secs(5), POLL, || async {
        (b.coord.status().lock_owner.as_deref() == Some("pod-b")).then_some(())
    })
    .await
    .unwrap();
}
