//! End to end: active health checking of real mock backends by a real `hale serve`.
//!
//! Three mockllm backends (vLLM, Ollama and llama.cpp flavours) are checked every second with
//! jitter off, so the schedule can be read off the hit timestamps each mock records: the
//! failure threshold, the backoff schedule while a backend is down, recovery through
//! `recovering`, the startup phase while a model loads, timeouts of a hung backend that do not
//! slow the others, a killed process, and the admin token on the status routes.

use hale_testkit::{Gateway, eventually};
use hale_tests::{Backends, gaps, hit_times, rfc3339_secs, wait_status, wall_secs};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(50);

trait HealthConfig {
    fn config(&self, extra_server: &str) -> String;
}

impl HealthConfig for Backends {
    fn config(&self, extra_server: &str) -> String {
        format!(
            "server:\n  listen: 127.0.0.1:0\n{extra_server}health:\n  unhealthy_threshold: 3\n  healthy_threshold: 2\n  max_backoff: 4s\n  jitter: 0\nendpoints:\n{}",
            self.endpoints("1s", "500ms"),
        )
    }
}

/// The events of one endpoint, as (from, to, at) in order.
async fn transitions(gw: &Gateway, name: &str) -> anyhow::Result<Vec<(String, String, f64)>> {
    gw.events()
        .await?
        .into_iter()
        .filter(|e| e["endpoint"] == name)
        .map(|e| {
            Ok((
                e["from"].as_str().unwrap_or_default().to_owned(),
                e["to"].as_str().unwrap_or_default().to_owned(),
                rfc3339_secs(&e["at"])?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn failure_backoff_and_recovery() -> anyhow::Result<()> {
    let b = Backends::start().await?;
    let started = Instant::now();
    let gw = Gateway::start(&b.config("")).await?;

    // All three are healthy within 3 s of start.
    eventually(
        Duration::from_secs(3).saturating_sub(started.elapsed()),
        POLL,
        || async {
            let eps = gw.endpoints().await?;
            let states: Vec<&Value> = eps.iter().map(|e| &e["status"]).collect();
            anyhow::ensure!(
                eps.iter().all(|e| e["status"] == "healthy"),
                "states: {states:?}"
            );
            Ok(())
        },
    )
    .await?;

    // A backend answering 503 is unhealthy within threshold × interval + timeout (+1 s).
    b.vllm.set_mode(json!({"status": 503})).await?;
    let switched = Instant::now();
    let down = wait_status(&gw, "vllm", "unhealthy", Duration::from_millis(4500)).await?;
    assert_eq!(down["reason"], "http_503");
    assert!(switched.elapsed() <= Duration::from_millis(4500));
    let unhealthy_at = transitions(&gw, "vllm")
        .await?
        .into_iter()
        .find(|(_, to, _)| to == "unhealthy")
        .map(|(_, _, at)| at)
        .ok_or_else(|| anyhow::anyhow!("no unhealthy event"))?;

    // While it stays down, its checks follow 1×, 2×, 4×, then the 4 s cap.
    let expected = [1.0, 2.0, 4.0, 4.0, 4.0];
    let times = eventually(
        Duration::from_secs(22),
        Duration::from_millis(250),
        || async {
            let stats = b.vllm.stats().await?;
            let hits: Vec<f64> = hit_times(&stats, "/health")
                .into_iter()
                .filter(|t| *t >= unhealthy_at - 0.3)
                .collect();
            anyhow::ensure!(hits.len() > expected.len(), "{} hits so far", hits.len());
            Ok(hits)
        },
    )
    .await?;
    let measured = gaps(&times[..=expected.len()]);
    for (got, want) in measured.iter().zip(expected) {
        assert!(
            (got - want).abs() < 0.35,
            "backoff gaps {measured:?}, want {expected:?}"
        );
    }

    // Switched back, it passes through recovering and is healthy after exactly 2 good checks.
    let back_at = wall_secs();
    b.vllm.set_mode(json!({"mode": "healthy"})).await?;
    wait_status(&gw, "vllm", "healthy", Duration::from_secs(8)).await?;
    let events = transitions(&gw, "vllm").await?;
    let path: Vec<(&str, &str)> = events
        .iter()
        .map(|(f, t, _)| (f.as_str(), t.as_str()))
        .collect();
    assert_eq!(
        path,
        [
            ("unknown", "healthy"),
            ("healthy", "unhealthy"),
            ("unhealthy", "recovering"),
            ("recovering", "healthy")
        ],
        "each transition is listed once"
    );
    let healthy_at = events[3].2;
    let stats = b.vllm.stats().await?;
    let good_checks = hit_times(&stats, "/health")
        .into_iter()
        .filter(|t| *t > back_at && *t <= healthy_at + 0.05)
        .count();
    assert_eq!(good_checks, 2, "healthy_threshold good checks");
    Ok(())
}

#[tokio::test]
async fn loading_then_healthy_and_a_hang_does_not_slow_the_others() -> anyhow::Result<()> {
    let b = Backends::start().await?;
    b.llamacpp.set_mode(json!({"loading_for_s": 10})).await?;
    let loading_since = Instant::now();
    let gw = Gateway::start(&b.config("")).await?;

    let e = eventually(Duration::from_secs(3), POLL, || async {
        let e = gw.endpoint("llamacpp").await?;
        anyhow::ensure!(e["reason"] == "loading", "{e}");
        Ok(e)
    })
    .await?;
    assert_eq!(e["status"], "unknown");
    wait_status(&gw, "llamacpp", "healthy", Duration::from_secs(13)).await?;
    assert!(loading_since.elapsed() >= Duration::from_secs(10));
    let events = transitions(&gw, "llamacpp").await?;
    assert_eq!(events.len(), 1, "unknown → healthy only: {events:?}");

    // vLLM hangs: its checks time out, the other two keep their 1 s cadence.
    b.vllm.set_mode(json!({"mode": "hang"})).await?;
    let hang_from = wall_secs();
    eventually(Duration::from_secs(3), POLL, || async {
        let e = gw.endpoint("vllm").await?;
        anyhow::ensure!(e["reason"] == "timeout", "{e}");
        Ok(())
    })
    .await?;
    for (mock, path) in [(&b.ollama, "/"), (&b.llamacpp, "/health")] {
        let times = eventually(
            Duration::from_secs(8),
            Duration::from_millis(250),
            || async {
                let stats = mock.stats().await?;
                let t: Vec<f64> = hit_times(&stats, path)
                    .into_iter()
                    .filter(|t| *t >= hang_from)
                    .collect();
                anyhow::ensure!(t.len() >= 5, "{} hits", t.len());
                Ok(t)
            },
        )
        .await?;
        for gap in gaps(&times) {
            assert!((gap - 1.0).abs() < 0.3, "{path}: gaps {:?}", gaps(&times));
        }
    }
    Ok(())
}

#[tokio::test]
async fn killed_backend_is_connect_refused_and_counted() -> anyhow::Result<()> {
    let mut b = Backends::start().await?;
    let gw = Gateway::start(&b.config("")).await?;
    wait_status(&gw, "ollama", "healthy", Duration::from_secs(3)).await?;
    b.ollama.kill().await?;
    eventually(Duration::from_secs(3), POLL, || async {
        let e = gw.endpoint("ollama").await?;
        anyhow::ensure!(e["reason"] == "connect_refused", "{e}");
        Ok(())
    })
    .await?;
    let metrics = gw.get("/metrics").await?;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .text
            .contains(r#"hale_health_checks_total{endpoint="ollama",outcome="connect_refused"}"#),
        "{}",
        metrics.text
    );
    assert!(
        metrics
            .text
            .contains(r#"hale_endpoint_up{endpoint="vllm"} 1"#)
    );
    // Discovered models are listed per endpoint.
    let e = gw.endpoint("vllm").await?;
    assert_eq!(e["models"], json!(["m-vllm"]));
    Ok(())
}

#[tokio::test]
async fn admin_token_guards_status_but_not_probes() -> anyhow::Result<()> {
    let b = Backends::start().await?;
    let gw = Gateway::start(&b.config("  admin_token: s3cret-token\n")).await?;
    for path in [
        "/internal/status",
        "/internal/status/endpoints",
        "/internal/stats/models",
        "/internal/events",
    ] {
        let r = gw.get(path).await?;
        assert_eq!(r.status, 401, "{path} without token");
        assert_eq!(r.body["error"]["code"], 401);
    }
    let open = eventually(Duration::from_secs(5), POLL, || async {
        let r = gw.get("/readyz").await?;
        anyhow::ensure!(r.status == 200, "readyz {}", r.status);
        Ok(r)
    })
    .await?;
    assert_eq!(open.status, 200);
    assert_eq!(gw.get("/livez").await?.status, 200);
    assert_eq!(gw.get("/metrics").await?.status, 200);
    let gw = gw.with_admin_token("s3cret-token");
    for path in [
        "/internal/status",
        "/internal/status/endpoints",
        "/internal/events",
    ] {
        let r = gw.get(path).await?;
        assert_eq!(r.status, 200, "{path} with token");
        assert!(!r.text.contains("s3cret-token"));
    }
    Ok(())
}
