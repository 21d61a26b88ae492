//! End to end: health that does not come from probing (issue 12, items 4 and 5), with a real
//! `hale serve` and real mockllm processes.
//!
//! - A `check: passive` endpoint gets no probe traffic over 30 s (mockllm's `/__stats` counts
//!   every path: only the chat requests the test sends arrive; an operator's `/check` is a
//!   409), is routable from the start,
//!   is marked `unhealthy` by a connect failure on the request path when its backend is
//!   killed, and after the backend returns a trial request brings it back.
//! - A backend killed for 15 s and restarted (1 s interval): the gateway knocks on its port
//!   (bare TCP) every interval while backing off, so the first request is served by it within
//!   1.5 s of the restart, and the HTTP checks it got while dead (`hale_health_checks_total`)
//!   are no more than today's backoff schedule sends.

use hale_testkit::{Gateway, HttpReply, MockLlm, eventually, http_post_json, http_request};
use hale_tests::wait_status;
use http::Method;
use serde_json::json;
use std::time::Duration;
use tokio::time::{Instant, sleep};

const POLL: Duration = Duration::from_millis(50);
const TOKEN: &str = "passive-test-token";

async fn chat(gw: &Gateway, model: &str) -> anyhow::Result<HttpReply> {
    http_post_json(
        &format!("{}/v1/chat/completions", gw.url()),
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

/// The paths a mockllm saw that are not the test's own admin calls (`/__…`).
async fn non_admin_hits(mock: &MockLlm) -> anyhow::Result<Vec<(String, u64)>> {
    let stats = mock.stats().await?;
    Ok(stats["hits"]
        .as_object()
        .map(|hits| {
            hits.iter()
                .filter(|(path, _)| !path.starts_with("/__"))
                .map(|(path, n)| (path.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default())
}

/// The value of one series in a Prometheus text page, 0 when absent.
fn series(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_passive_endpoint_gets_no_probes_and_returns_through_a_trial() -> anyhow::Result<()> {
    let mut mock = MockLlm::start("openai", &["gpt-x"]).await?;
    let config = format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_token: {TOKEN}\nhealth:\n  healthy_threshold: 2\n  max_backoff: 4s\n  jitter: 0\nendpoints:\n  - name: cloud\n    url: {}\n    type: openai\n    check: passive\n    models: [gpt-x]\n    check_interval: 1s\n    check_timeout: 500ms\n",
        mock.url()
    );
    let gw = Gateway::start(&config).await?.with_admin_token(TOKEN);

    // Routable from the start: healthy, no reason, source passive, and the gateway ready.
    let e = gw.endpoint("cloud").await?;
    assert_eq!(
        (&e["status"], &e["reason"], &e["source"]),
        (&json!("healthy"), &json!(null), &json!("passive")),
        "{e}"
    );
    assert_eq!(gw.get("/readyz").await?.status, 200);
    // An operator's check: refused, there is no probe.
    let r = http_request(
        Method::POST,
        &format!("{}/internal/endpoints/cloud/check", gw.url()),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
    )
    .await?;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("passive"), "{}", r.text);
    let r = chat(&gw, "gpt-x").await?;
    assert_eq!(
        (r.status, r.header("x-hale-endpoint")),
        (200, Some("cloud"))
    );

    // 30 s with a request every 5 s: the only hits are those requests; no health check,
    // no model list, no check counted.
    let started = Instant::now();
    let mut sent = 1;
    while started.elapsed() < Duration::from_secs(30) {
        sleep(Duration::from_secs(5)).await;
        assert_eq!(chat(&gw, "gpt-x").await?.status, 200);
        sent += 1;
    }
    assert_eq!(
        non_admin_hits(&mock).await?,
        vec![("/v1/chat/completions".to_owned(), sent)]
    );
    let metrics = gw.get("/metrics").await?.text;
    assert!(
        !metrics.contains(r#"hale_health_checks_total{endpoint="cloud""#),
        "{metrics}"
    );

    // The backend dies: the next request's connect failure marks the endpoint down.
    mock.kill().await?;
    let r = chat(&gw, "gpt-x").await?;
    assert_ne!(r.status, 200, "{}", r.text);
    let e = wait_status(&gw, "cloud", "unhealthy", Duration::from_secs(2)).await?;
    assert_eq!(
        (&e["reason"], &e["source"]),
        (&json!("connect_refused"), &json!("passive")),
        "{e}"
    );

    // It returns; after the hold (1 s) a trial is allowed, and the trial requests
    // (healthy_threshold: 2) bring it back to healthy.
    mock.restart().await?;
    let served = eventually(Duration::from_secs(10), POLL, || async {
        let r = chat(&gw, "gpt-x").await?;
        anyhow::ensure!(r.status == 200, "{} {}", r.status, r.text);
        Ok(r)
    })
    .await?;
    assert_eq!(served.header("x-hale-endpoint"), Some("cloud"));
    eventually(Duration::from_secs(5), POLL, || async {
        assert_eq!(chat(&gw, "gpt-x").await?.status, 200);
        let e = gw.endpoint("cloud").await?;
        anyhow::ensure!(e["status"] == "healthy", "{e}");
        Ok(())
    })
    .await?;
    let steps: Vec<(String, String)> = gw
        .events()
        .await?
        .into_iter()
        .filter(|e| e["endpoint"] == "cloud")
        .map(|e| (e["from"].to_string(), e["to"].to_string()))
        .collect();
    let quoted = |a: &str, b: &str| (format!("\"{a}\""), format!("\"{b}\""));
    assert_eq!(
        steps,
        vec![
            quoted("healthy", "unhealthy"),
            quoted("unhealthy", "recovering"),
            quoted("recovering", "healthy"),
        ]
    );
    // Still no probe traffic to the restarted backend.
    let hits = non_admin_hits(&mock).await?;
    assert!(
        hits.iter().all(|(path, _)| path == "/v1/chat/completions"),
        "{hits:?}"
    );
    Ok(())
}

/// How many HTTP checks today's schedule sends to a backend that refuses for `dead`, in the
/// worst case (its first failed check right at the kill): `threshold` checks one interval
/// apart turn it unhealthy, then the n-th failure waits interval × 1, 2, 4, 8, 12, 12…
fn backoff_checks_within(dead: Duration, interval: Duration, threshold: u32) -> u64 {
    const FACTORS: [u32; 5] = [1, 2, 4, 8, 12];
    let mut at = Duration::ZERO;
    let mut checks = 0;
    for _ in 1..threshold {
        if at >= dead {
            return checks;
        }
        checks += 1;
        at += interval;
    }
    let mut n = 0;
    while at < dead {
        checks += 1;
        at += interval * FACTORS[n.min(FACTORS.len() - 1)];
        n += 1;
    }
    checks
}

#[tokio::test]
async fn a_restarted_backend_is_served_within_one_interval_of_its_port_opening()
-> anyhow::Result<()> {
    let mut mock = MockLlm::start("vllm", &["m"]).await?;
    let config = format!(
        "server:\n  listen: 127.0.0.1:0\nhealth:\n  unhealthy_threshold: 3\n  healthy_threshold: 2\n  max_backoff: 60s\n  jitter: 0\nendpoints:\n  - name: b\n    url: {}\n    type: vllm\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms }}\n",
        mock.url()
    );
    let gw = Gateway::start(&config).await?;
    wait_status(&gw, "b", "healthy", Duration::from_secs(5)).await?;
    assert_eq!(chat(&gw, "m").await?.status, 200);

    let refused = r#"hale_health_checks_total{endpoint="b",outcome="connect_refused"}"#;
    let before = series(&gw.get("/metrics").await?.text, refused);
    assert_eq!(before, 0.0);
    mock.kill().await?;
    let killed = Instant::now();
    let e = wait_status(&gw, "b", "unhealthy", Duration::from_secs(5)).await?;
    assert_eq!(e["reason"], "connect_refused", "{e}");
    sleep(Duration::from_secs(15).saturating_sub(killed.elapsed())).await;
    let dead = killed.elapsed();
    let checks_while_dead = series(&gw.get("/metrics").await?.text, refused);

    // The port opens: the test watches for it itself (a connect every 5 ms) to time it.
    let addr = mock.addr();
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Some(Instant::now());
            }
            sleep(Duration::from_millis(5)).await;
        }
        None
    });
    mock.restart().await?;
    let served_at = eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            let r = chat(&gw, "m").await?;
            anyhow::ensure!(r.status == 200, "{} {}", r.status, r.text);
            Ok(Instant::now())
        },
    )
    .await?;
    let opened = watcher
        .await?
        .ok_or_else(|| anyhow::anyhow!("the port never opened"))?;
    let served = served_at.saturating_duration_since(opened);
    let today = backoff_checks_within(dead, Duration::from_secs(1), 3);
    eprintln!(
        "dead {dead:?}: {checks_while_dead} HTTP checks (today's schedule: at most {today}); \
         first request served {served:?} after the port opened"
    );
    assert!(
        served <= Duration::from_millis(1500),
        "first request served {served:?} after the port opened"
    );
    assert!(checks_while_dead >= 3.0, "{checks_while_dead}");
    assert!(
        checks_while_dead <= today as f64,
        "{checks_while_dead} HTTP checks while dead, today's backoff sends {today}"
    );
    // The knocks were no checks: nothing but refusals and the one check that found it back
    // (and the one after it) were counted.
    let metrics = gw.get("/metrics").await?.text;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with(r#"hale_health_checks_total{endpoint="b","#))
        .filter(|l| !l.contains(r#"outcome="ok""#) && !l.contains(r#"outcome="connect_refused""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 0.0, "{metrics}");
    Ok(())
}
