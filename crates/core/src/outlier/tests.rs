//! Tests of the outlier detector on paused tokio time, and property tests of its promises
//! (4xx never ejects; a run shorter than the threshold never ejects by itself; ejection time
//! stays within [base, max]).

use super::*;
use proptest::prelude::*;

const S: Duration = Duration::from_secs(1);

fn config() -> OutlierConfig {
    OutlierConfig {
        base_ejection: Duration::from_secs(3),
        max_ejection: Duration::from_secs(10),
        ..OutlierConfig::default()
    }
}

const F503: Outcome = Outcome::Failure(Signal::Status(503));

#[tokio::test(start_paused = true)]
async fn five_consecutive_failures_trigger_and_a_4xx_resets_the_run() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    for _ in 0..4 {
        assert_eq!(d.record(F503, Instant::now()), None);
    }
    // A 4xx is the client's fault: it does not count, and it ends the run.
    assert_eq!(d.record(Outcome::of_status(404), Instant::now()), None);
    for _ in 0..4 {
        assert_eq!(d.record(F503, Instant::now()), None);
    }
    let t = d.record(F503, Instant::now()).unwrap();
    assert_eq!(
        t,
        Trigger::Consecutive {
            count: 5,
            signal: Signal::Status(503),
            same: true,
            replicas: 1
        }
    );
    assert_eq!(t.label(), "consecutive_5xx");
    assert_eq!(
        t.describe("/v1/chat/completions"),
        "5 consecutive 503 on /v1/chat/completions"
    );
}

#[tokio::test(start_paused = true)]
async fn mixed_runs_name_the_last_signal() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    for s in [
        Signal::Status(502),
        Signal::Dropped,
        Signal::FirstByteTimeout,
        Signal::IdleTimeout,
    ] {
        assert_eq!(d.record(Outcome::Failure(s), Instant::now()), None);
    }
    let t = d
        .record(Outcome::Failure(Signal::StreamCut), Instant::now())
        .unwrap();
    assert_eq!(t.label(), "consecutive_reset");
    assert_eq!(
        t.describe("/api/chat"),
        "5 consecutive failures on /api/chat (last: stream cut)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_cut_counts_as_a_failure() {
    let mut d = OutlierDetector::new(
        &OutlierConfig {
            consecutive_failures: 2,
            ..config()
        },
        Instant::now(),
    );
    assert!(
        d.record(Outcome::Failure(Signal::StreamCut), Instant::now())
            .is_none()
    );
    assert!(
        d.record(Outcome::Failure(Signal::StreamCut), Instant::now())
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_counts_over_the_window_and_needs_min_requests() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    // 19 requests, every other one failing (never 5 in a row): below min_requests.
    for i in 0..19 {
        let o = if i % 2 == 0 { F503 } else { Outcome::Success };
        assert_eq!(d.record(o, Instant::now()), None, "request {i}");
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    // The 20th, a failure: 11 of 20 failed, within 10 s.
    let t = d.record(F503, Instant::now()).unwrap();
    assert_eq!(
        t,
        Trigger::Rate {
            failures: 11,
            requests: 20,
            window: Duration::from_secs(10)
        }
    );
    assert_eq!(t.label(), "failure_rate");
    assert_eq!(
        t.describe("/v1/completions"),
        "failure rate 55 % of 20 requests in 10s on /v1/completions"
    );
}

#[tokio::test(start_paused = true)]
async fn old_requests_leave_the_window() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    for _ in 0..4 {
        d.record(F503, Instant::now());
        d.record(Outcome::Success, Instant::now());
    }
    assert_eq!(d.stats(Instant::now()).recent_requests, 8);
    assert_eq!(d.stats(Instant::now()).recent_failure_rate, 0.5);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(d.stats(Instant::now()).recent_requests, 0);
    // 19 fresh successes and one failure: far from the rate.
    for _ in 0..19 {
        d.record(Outcome::Success, Instant::now());
    }
    assert_eq!(d.record(F503, Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn other_5xx_neither_count_nor_reset() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    for _ in 0..4 {
        d.record(F503, Instant::now());
    }
    assert_eq!(Outcome::of_status(500), Outcome::Neutral);
    assert_eq!(d.record(Outcome::of_status(500), Instant::now()), None);
    assert!(d.record(F503, Instant::now()).is_some(), "the run went on");
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_with_recent_ejections_and_is_capped() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    let t = Trigger::Consecutive {
        count: 5,
        signal: Signal::Status(503),
        same: true,
        replicas: 1,
    };
    let mut lengths = Vec::new();
    for _ in 0..5 {
        let len = d.ejection_time(Instant::now());
        d.ejected(&t, len, Instant::now());
        lengths.push(len.as_secs());
        // Back in rotation and failing again soon after the ejection ended.
        tokio::time::advance(len + S).await;
    }
    assert_eq!(lengths, [3, 6, 9, 10, 10], "base 3 s x n, capped at 10 s");
    assert_eq!(d.stats(Instant::now()).ejections, 5);
    assert_eq!(d.stats(Instant::now()).last_signal, Some("consecutive_5xx"));
    // A quiet max_ejection after the last one ended: the count starts over.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(d.ejection_time(Instant::now()), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn a_verdict_starts_the_counts_over_and_withheld_logs_are_bounded() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    for _ in 0..4 {
        d.record(F503, Instant::now());
    }
    let t = d.record(F503, Instant::now()).unwrap();
    assert!(d.withheld(&t, Instant::now()), "the first is logged");
    for _ in 0..4 {
        assert_eq!(d.record(F503, Instant::now()), None, "a new run is needed");
    }
    let t = d.record(F503, Instant::now()).unwrap();
    assert!(!d.withheld(&t, Instant::now()), "once per window");
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(d.withheld(&t, Instant::now()));
    assert_eq!(d.stats(Instant::now()).ejections, 0);
}

#[tokio::test(start_paused = true)]
async fn in_a_fleet_each_replica_spends_its_share_of_the_run() {
    let mut d = OutlierDetector::new(&config(), Instant::now());
    assert_eq!(
        [1, 2, 3, 5, 9].map(|n| d.consecutive_share(n)),
        [5, 3, 2, 1, 1],
        "ceil(5 / n), at least 1"
    );
    assert_eq!(d.consecutive_share(0), 5, "no fleet reads as alone");
    assert_eq!(d.record_in_fleet(F503, Instant::now(), 3), None);
    let t = d.record_in_fleet(F503, Instant::now(), 3).unwrap();
    assert_eq!(
        t.describe("/v1/chat/completions"),
        "2 consecutive 503 on /v1/chat/completions, this replica's share of the fleet's \
         (3 replicas)"
    );
    assert_eq!(t.label(), "consecutive_5xx");
}

#[test]
fn config_is_validated() {
    assert!(OutlierConfig::default().validate("proxy.outlier").is_ok());
    let bad = [
        (
            OutlierConfig {
                consecutive_failures: 0,
                ..Default::default()
            },
            "proxy.outlier.consecutive_failures",
        ),
        (
            OutlierConfig {
                failure_rate: 0.0,
                ..Default::default()
            },
            "proxy.outlier.failure_rate",
        ),
        (
            OutlierConfig {
                failure_rate: 1.5,
                ..Default::default()
            },
            "proxy.outlier.failure_rate",
        ),
        (
            OutlierConfig {
                failure_rate: f64::NAN,
                ..Default::default()
            },
            "proxy.outlier.failure_rate",
        ),
        (
            OutlierConfig {
                min_requests: 0,
                ..Default::default()
            },
            "proxy.outlier.min_requests",
        ),
        (
            OutlierConfig {
                window: Duration::ZERO,
                ..Default::default()
            },
            "proxy.outlier.window",
        ),
        (
            OutlierConfig {
                base_ejection: Duration::from_secs(u64::MAX),
                ..Default::default()
            },
            "proxy.outlier.base_ejection",
        ),
        (
            OutlierConfig {
                max_ejection: Duration::from_secs(10),
                ..Default::default()
            },
            "proxy.outlier.max_ejection",
        ),
        (
            OutlierConfig {
                max_ejection_percent: 101,
                ..Default::default()
            },
            "proxy.outlier.max_ejection_percent",
        ),
    ];
    for (c, path) in bad {
        assert_eq!(c.validate("proxy.outlier").unwrap_err().path, path, "{c:?}");
    }
    let full = OutlierConfig {
        failure_rate: 1.0,
        max_ejection_percent: 100,
        ..Default::default()
    };
    assert!(full.validate("proxy.outlier").is_ok());
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        (200u16..=499).prop_map(Outcome::of_status),
        (500u16..=599).prop_map(Outcome::of_status),
        Just(Outcome::Failure(Signal::Dropped)),
        Just(Outcome::Failure(Signal::FirstByteTimeout)),
        Just(Outcome::Failure(Signal::IdleTimeout)),
        Just(Outcome::Failure(Signal::StreamCut)),
    ]
}

proptest! {
    #[test]
    fn answers_below_500_never_eject(
        statuses in proptest::collection::vec(200u16..=499, 0..200),
        gaps in proptest::collection::vec(0u64..2000, 200),
    ) {
        let start = Instant::now();
        let mut d = OutlierDetector::new(&OutlierConfig::default(), start);
        let mut now = start;
        for (s, gap) in statuses.iter().zip(gaps) {
            now += Duration::from_millis(gap);
            prop_assert_eq!(d.record(Outcome::of_status(*s), now), None);
        }
    }

    #[test]
    fn a_trigger_needs_the_run_or_the_rate(
        outcomes in proptest::collection::vec(outcome(), 0..300),
        gaps in proptest::collection::vec(0u64..500, 300),
    ) {
        let c = OutlierConfig::default();
        let start = Instant::now();
        let mut d = OutlierDetector::new(&c, start);
        let mut now = start;
        let mut run = 0u32;
        let mut seen: Vec<(Instant, bool)> = Vec::new();
        for (o, gap) in outcomes.iter().zip(gaps) {
            now += Duration::from_millis(gap);
            let failed = matches!(o, Outcome::Failure(_));
            match o {
                Outcome::Failure(_) => run += 1,
                Outcome::Success => run = 0,
                Outcome::Neutral => {}
            }
            seen.push((now, failed));
            if let Some(t) = d.record(*o, now) {
                prop_assert!(failed, "only a failure triggers");
                match t {
                    Trigger::Consecutive { count, .. } => {
                        prop_assert_eq!(count, run);
                        prop_assert!(count >= c.consecutive_failures);
                    }
                    Trigger::Rate { failures, requests, .. } => {
                        prop_assert!(requests >= c.min_requests);
                        prop_assert!(f64::from(failures) >= c.failure_rate * f64::from(requests));
                        // Nothing older than the window (plus one bucket) was counted.
                        let recent = seen
                            .iter()
                            .filter(|(at, _)| now - *at <= c.window + c.window / 10)
                            .count();
                        prop_assert!(requests as usize <= recent);
                    }
                }
                d.ejected(&t, d.ejection_time(now), now);
                run = 0;
                seen.clear();
            }
        }
    }

    #[test]
    fn ejection_time_stays_between_base_and_max(
        base in 1u64..100,
        extra in 0u64..1000,
        steps in proptest::collection::vec(0u64..2000, 1..30),
    ) {
        let c = OutlierConfig {
            base_ejection: Duration::from_secs(base),
            max_ejection: Duration::from_secs(base + extra),
            ..OutlierConfig::default()
        };
        let start = Instant::now();
        let mut d = OutlierDetector::new(&c, start);
        let mut now = start;
        let t = Trigger::Consecutive { count: 5, signal: Signal::Dropped, same: true, replicas: 1 };
        for step in steps {
            now += Duration::from_secs(step);
            let len = d.ejection_time(now);
            prop_assert!(len >= c.base_ejection && len <= c.max_ejection);
            d.ejected(&t, len, now);
        }
    }
}
