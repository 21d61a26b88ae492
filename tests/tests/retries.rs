//! End to end: retries within a budget and the short queue wait (issue 12), through a real
//! `hale serve` in front of real mockllm backends.
//!
//! - Two backends; B's health passes while its chat answers 503 (mockllm's `generation_only`
//!   status). 20 s at 50 req/s: every B failure is retried on A, zero requests fail, and
//!   `hale_proxy_retries_total{reason="503"}` equals the 503s B answered.
//! - Both backends failing chat: every request gets the backend's own 503 within a second,
//!   after one retry while both are in rotation — never a hang, never a third try; outlier
//!   detection ejects at most one of the two (`max_ejection_percent`).
//! - A retry storm is bounded: every backend answering 503 under 128 concurrent clients for
//!   5 s, the retries stay within the budget (at most 20 % of what Hale sent upstream, plus
//!   the minimum of 3), read from `/metrics` and mockllm's `/__stats`.
//! - The only backend of a model is killed and comes back loading for 6 s (`--loading-for-s`,
//!   llama.cpp's 503 "Loading model"): requests sent meanwhile wait (`queue_timeout`) and all
//!   succeed once it has loaded.
//!
//! In the tests that count retries the request-path breaker is set out of reach, so every
//! request reaches a backend and the figures are the retry logic's alone.

use hale_testkit::{Gateway, MockLlm, PooledClient};
use hale_tests::wait_status;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// One `endpoints:` entry serving `m`, checked every 500 ms.
fn endpoint(name: &str, url: &str, kind: &str) -> String {
    format!(
        "  - name: {name}\n    url: {url}\n    type: {kind}\n    models: [m]\n    check_interval: 500ms\n    check_timeout: 400ms\n    startup: {{ period: 500ms, timeout: 400ms, failure_threshold: 60 }}\n"
    )
}

fn config(proxy: &str, endpoints: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\nhealth:\n  jitter: 0\n  healthy_threshold: 1\nproxy:\n  connect_timeout: 500ms\n{proxy}endpoints:\n{}",
        endpoints.concat()
    )
}

/// A breaker that never opens in these tests' traffic.
const NO_BREAKER: &str = "  breaker: { failure_threshold: 1000000, open_for: 1s }\n";

/// The sum of every `hale_proxy_retries_total` series matching `filter`.
async fn retries(gw: &Gateway, filter: &str) -> anyhow::Result<f64> {
    let text = gw.get("/metrics").await?.text;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("hale_proxy_retries_total{") && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

async fn chat_hits(mock: &MockLlm) -> anyhow::Result<u64> {
    mock.hits("/v1/chat/completions").await
}

#[tokio::test]
async fn a_backend_whose_chat_fails_costs_clients_nothing() -> anyhow::Result<()> {
    let a = MockLlm::start("vllm", &["m"]).await?;
    let b = MockLlm::start("vllm", &["m"]).await?;
    let gw = Gateway::start(&config(
        NO_BREAKER,
        &[
            endpoint("a", &a.url(), "vllm"),
            endpoint("b", &b.url(), "vllm"),
        ],
    ))
    .await?;
    wait_status(&gw, "a", "healthy", Duration::from_secs(5)).await?;
    wait_status(&gw, "b", "healthy", Duration::from_secs(5)).await?;
    b.set_mode(json!({"status": 503, "generation_only": true}))
        .await?;

    // 20 s at 50 req/s, each request on its own task so a slow one does not slow the rate.
    let client = PooledClient::new();
    let url = format!("{}/v1/chat/completions", gw.url());
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut tasks = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let reply = client.post(&url, &[], CHAT).await?;
            anyhow::Ok((
                reply.status,
                reply.header("x-hale-endpoint").map(str::to_owned),
            ))
        }));
    }
    let mut failures = Vec::new();
    let total = tasks.len();
    for t in tasks {
        match t.await? {
            Ok((200, Some(e))) if e == "a" => {}
            other => failures.push(format!("{other:?}")),
        }
    }
    let b_failed = chat_hits(&b).await?;
    let retried = retries(&gw, r#"reason="503""#).await?;
    eprintln!(
        "{total} requests, {} failed; b answered {b_failed} chats with 503, {retried} retries",
        failures.len()
    );
    assert!(total >= 900, "the load ran: {total}");
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(b_failed >= 5, "b took traffic: {b_failed}");
    assert_eq!(retried, b_failed as f64, "every b failure was retried");
    assert_eq!(chat_hits(&a).await?, total as u64);
    let stats = gw.get("/internal/stats/models").await?.body;
    assert_eq!(stats["models"][0]["retry"]["retries"], b_failed);
    assert_eq!(stats["models"][0]["retry"]["budget_exhausted"], 0);
    Ok(())
}

/// Two healthy vLLM mocks `a` and `b` serving `m` behind a gateway without a breaker (and
/// `proxy` settings on top), both then answering every chat with 503 (their probes stay
/// green).
async fn two_backends_failing_chat(proxy: &str) -> anyhow::Result<(MockLlm, MockLlm, Gateway)> {
    let a = MockLlm::start("vllm", &["m"]).await?;
    let b = MockLlm::start("vllm", &["m"]).await?;
    let gw = Gateway::start(&config(
        &format!("{NO_BREAKER}{proxy}"),
        &[
            endpoint("a", &a.url(), "vllm"),
            endpoint("b", &b.url(), "vllm"),
        ],
    ))
    .await?;
    wait_status(&gw, "a", "healthy", Duration::from_secs(5)).await?;
    wait_status(&gw, "b", "healthy", Duration::from_secs(5)).await?;
    for mock in [&a, &b] {
        mock.set_mode(json!({"status": 503, "generation_only": true}))
            .await?;
    }
    Ok((a, b, gw))
}

#[tokio::test]
async fn both_backends_failing_chat_give_the_backends_503_after_one_retry() -> anyhow::Result<()> {
    let (a, b, gw) = two_backends_failing_chat("").await?;
    let client = PooledClient::new();
    let url = format!("{}/v1/chat/completions", gw.url());
    const N: u64 = 20;
    for i in 0..N {
        let started = Instant::now();
        let reply = client.post(&url, &[], CHAT).await?;
        let took = started.elapsed();
        assert_eq!(reply.status, 503, "request {i}: {}", reply.text);
        assert_eq!(
            reply.body["error"]["message"], "mock status 503",
            "the backend's own answer, not Hale's: {}",
            reply.text
        );
        assert!(took < Duration::from_secs(1), "request {i} took {took:?}");
    }
    // Each request is tried once and retried once on the other backend, until outlier
    // detection ejects one of the two (never both: max_ejection_percent); from then on the
    // one left has no other endpoint to retry on.
    let hits = chat_hits(&a).await? + chat_hits(&b).await?;
    let retried = retries(&gw, r#"reason="503""#).await?;
    assert!((N..=2 * N).contains(&hits), "{hits} chat requests for {N}");
    assert_eq!(hits, N + retried as u64, "one try each, plus the retries");
    let ejected = [gw.endpoint("a").await?, gw.endpoint("b").await?]
        .iter()
        .filter(|e| e["reason"] == "outlier")
        .count();
    assert!(ejected <= 1, "{ejected} of 2 ejected");
    Ok(())
}

#[tokio::test]
async fn a_retry_storm_stays_within_the_budget() -> anyhow::Result<()> {
    // No ejections: with one of the two ejected (as outlier detection would within the first
    // few failures) a retry has nowhere to go, and whether the budget was ever reached would
    // depend on that race, not on the budget.
    let (a, b, gw) = two_backends_failing_chat("  outlier: { max_ejection_percent: 0 }\n").await?;
    // 128 clients, each sending one request after another for 5 s.
    let client = PooledClient::new();
    let url = Arc::new(format!("{}/v1/chat/completions", gw.url()));
    let end = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..128)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut answers = 0_u64;
                while Instant::now() < end {
                    let reply = client.post(&url, &[], CHAT).await?;
                    anyhow::ensure!(reply.status == 503, "{} {}", reply.status, reply.text);
                    answers += 1;
                }
                anyhow::Ok(answers)
            })
        })
        .collect();
    let mut answered = 0;
    for c in clients {
        answered += c.await??;
    }
    let sent = chat_hits(&a).await? + chat_hits(&b).await?;
    let retried = retries(&gw, "").await?;
    let exhausted =
        gw.get("/internal/stats/models").await?.body["models"][0]["retry"]["budget_exhausted"]
            .as_u64()
            .unwrap_or(0);
    eprintln!(
        "{answered} answers; Hale sent {sent} requests upstream, {retried} of them retries \
         ({:.1} %); the budget refused {exhausted} retries",
        100.0 * retried / sent as f64
    );
    assert!(answered > 500, "the storm ran: {answered}");
    assert_eq!(
        sent as f64,
        answered as f64 + retried,
        "every attempt reached a backend"
    );
    assert!(
        retried <= 0.2 * sent as f64 + 3.0,
        "{retried} retries of {sent} requests sent upstream"
    );
    assert!(exhausted > 0, "the budget was what held retries back");
    Ok(())
}

#[tokio::test]
async fn the_only_backend_reloading_costs_latency_not_errors() -> anyhow::Result<()> {
    let mut backend = MockLlm::start("llamacpp", &["m"]).await?;
    let port = backend.port();
    let gw = Gateway::start(&config(
        "  queue_timeout: 10s\n",
        &[endpoint("only", &backend.url(), "llamacpp")],
    ))
    .await?;
    wait_status(&gw, "only", "healthy", Duration::from_secs(5)).await?;
    let client = PooledClient::new();
    let url = format!("{}/v1/chat/completions", gw.url());
    assert_eq!(client.post(&url, &[], CHAT).await?.status, 200);

    // The backend restarts: killed, then back on its port loading its model for 6 s.
    backend.kill().await?;
    let restarted = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut tasks = Vec::new();
    let mut replacement = None;
    // Requests every 100 ms from the kill until 8 s after it (bounded), the new process
    // started after the first second.
    while restarted.elapsed() < Duration::from_secs(8) {
        tick.tick().await;
        if replacement.is_none() && restarted.elapsed() >= Duration::from_secs(1) {
            replacement = Some(
                MockLlm::builder("llamacpp")
                    .models(&["m"])
                    .port(port)
                    .arg("--loading-for-s")
                    .arg("6")
                    .start()
                    .await?,
            );
        }
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let reply = client.post(&url, &[], CHAT).await?;
            anyhow::Ok((reply.status, sent.elapsed(), reply.text))
        }));
    }
    let mut errors = Vec::new();
    let mut slowest = Duration::ZERO;
    let total = tasks.len();
    for t in tasks {
        let (status, took, text) = t.await??;
        slowest = slowest.max(took);
        if status != 200 {
            errors.push(format!("{status} after {took:?}: {text}"));
        }
    }
    let events = gw.events().await?;
    let path: Vec<String> = events
        .iter()
        .map(|e| format!("{}→{} ({})", e["from"], e["to"], e["reason"]))
        .collect();
    eprintln!("{total} requests over the restart; slowest {slowest:?}; transitions {path:?}");
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(total >= 70, "{total}");
    assert!(
        slowest >= Duration::from_secs(5),
        "some requests waited for the load: {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(10),
        "none waited past queue_timeout: {slowest:?}"
    );
    assert!(
        events.iter().any(|e| e["reason"] == "loading"),
        "the loading was seen: {path:?}"
    );
    Ok(())
}
