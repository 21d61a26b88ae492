//! End to end: backends that misbehave in ways a health check does not see, through a real
//! `hale serve` to real mockllm processes (issue #11).
//!
//! - A query of death: two backends both close the connection on one particular request body
//!   (mockllm's `close_on` marker) and serve everything else. Each such request is delivered
//!   at most twice in total (mockllm counts them) and answered 502 naming the endpoint; 200
//!   ordinary requests running meanwhile and after it (one marked request every 4 s) all
//!   succeed; neither endpoint is ever marked `unhealthy`, since their probes keep passing.
//! - A backend that accepts and never answers: 504 once `proxy.first_byte_timeout` (2 s
//!   here) has passed, not a client held forever.
//! - A stream that stalls mid-way: cut after the endpoint's `idle_timeout` (1 s here) so the
//!   client sees a broken body, never a clean end; a stream whose chunks come more slowly
//!   than that in total, but each within it, is untouched.

use hale_testkit::{Gateway, MockLlm, PooledClient};
use hale_tests::wait_status;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const CHAT: &str = "/v1/chat/completions";
const ORDINARY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const MARKER: &str = "QUERY-OF-DEATH";

/// One `endpoints:` entry, checked every second, with `extra` keys appended.
fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    url: {url}\n    type: vllm\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms, failure_threshold: 3 }}\n{extra}"
    )
}

fn config(proxy: &str, endpoints: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\nhealth:\n  jitter: 0\nproxy:\n  connect_timeout: 500ms\n{proxy}endpoints:\n{}",
        endpoints.concat()
    )
}

/// How many marked requests reached `mock` so far.
async fn deliveries(mock: &MockLlm) -> anyhow::Result<u64> {
    Ok(mock.stats().await?["closed_on_marker"]
        .as_u64()
        .unwrap_or(0))
}

#[tokio::test]
async fn a_query_of_death_is_not_replayed_and_takes_no_endpoint_down() -> anyhow::Result<()> {
    const GOOD: u64 = 200;
    const WORKERS: u64 = 4;
    const MARKED: usize = 3;
    const EVERY: Duration = Duration::from_secs(4);

    let a = MockLlm::start("vllm", &["m"]).await?;
    let b = MockLlm::start("vllm", &["m"]).await?;
    for mock in [&a, &b] {
        mock.set_mode(json!({ "close_on": MARKER })).await?;
    }
    let gw = Gateway::start(&config(
        "",
        &[endpoint("a", &a.url(), ""), endpoint("b", &b.url(), "")],
    ))
    .await?;
    for name in ["a", "b"] {
        wait_status(&gw, name, "healthy", Duration::from_secs(5)).await?;
    }
    let url = format!("{}{CHAT}", gw.url());
    let client = PooledClient::new();

    // Ordinary traffic, paced to span the marked requests and the time after the last one:
    // 4 clients, 50 requests each, one every 300 ms (15 s in all).
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (client, url, ok, failures) =
                (client.clone(), url.clone(), ok.clone(), failures.clone());
            tokio::spawn(async move {
                let mut pace = tokio::time::interval(Duration::from_millis(300));
                for _ in 0..GOOD / WORKERS {
                    pace.tick().await;
                    match client.post(&url, &[], ORDINARY).await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            let what = match other {
                                Ok(r) => format!("{} {}", r.status, r.text),
                                Err(e) => format!("{e:#}"),
                            };
                            failures
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push(format!("at {:?}: {what}", started.elapsed()));
                        }
                    }
                }
            })
        })
        .collect();

    // One marked request every 4 s, each on its own.
    let marked_body =
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{MARKER}"}}]}}"#);
    let mut delivered = 0;
    for i in 0..MARKED {
        tokio::time::sleep_until(started + EVERY * i as u32).await;
        let before = deliveries(&a).await? + deliveries(&b).await?;
        let r = client.post(&url, &[], marked_body.clone()).await?;
        let after = deliveries(&a).await? + deliveries(&b).await?;
        let message = r.body["error"]["message"].as_str().unwrap_or("");
        eprintln!(
            "marked request {i}: {} after {} deliveries: {message}",
            r.status,
            after - before
        );
        assert_eq!(r.status, 502, "marked request {i}: {}", r.text);
        assert_eq!(r.body["error"]["type"], "bad_gateway_error", "{}", r.text);
        assert!(
            message.contains("endpoint 'a'") || message.contains("endpoint 'b'"),
            "{message}"
        );
        assert!(
            (1..=2).contains(&(after - before)),
            "marked request {i} was delivered {} times",
            after - before
        );
        delivered += after - before;
    }

    for w in workers {
        w.await?;
    }
    let ok = ok.load(Ordering::Relaxed);
    let failures = failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    eprintln!(
        "{ok}/{GOOD} ordinary requests served in {:?}; {MARKED} marked requests delivered \
         {delivered} times in total",
        started.elapsed()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(ok, GOOD);
    assert!(delivered <= 2 * MARKED as u64);

    // Nobody took either endpoint out of rotation: no transition to unhealthy, ever.
    let events = gw.events().await?;
    let down: Vec<_> = events.iter().filter(|e| e["to"] == "unhealthy").collect();
    assert!(down.is_empty(), "endpoints were marked down: {down:?}");
    for name in ["a", "b"] {
        assert_eq!(gw.endpoint(name).await?["status"], "healthy", "{name}");
    }
    // The 502s are counted against the endpoints that dropped the requests.
    let metrics = gw.get("/metrics").await?.text;
    let bad_gateway: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("hale_proxy_requests_total{") && l.contains(r#"status="502""#))
        .filter(|l| l.contains(r#"endpoint="a""#) || l.contains(r#"endpoint="b""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(bad_gateway, MARKED as f64, "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_backend_that_never_answers_gets_a_504_after_first_byte_timeout() -> anyhow::Result<()> {
    let mock = MockLlm::start("vllm", &["m"]).await?;
    let gw = Gateway::start(&config(
        "  first_byte_timeout: 2s\n",
        &[endpoint("silent", &mock.url(), "")],
    ))
    .await?;
    wait_status(&gw, "silent", "healthy", Duration::from_secs(5)).await?;
    mock.set_mode(json!({ "mode": "hang" })).await?;

    let client = PooledClient::new();
    let sent = Instant::now();
    let r = client
        .post(&format!("{}{CHAT}", gw.url()), &[], ORDINARY)
        .await?;
    let waited = sent.elapsed();
    eprintln!("hung backend: {} after {waited:?}: {}", r.status, r.text);
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.body["error"]["type"], "gateway_timeout_error");
    assert_eq!(r.body["error"]["code"], 504);
    let message = r.body["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("endpoint 'silent'"), "{message}");
    assert!(
        waited >= Duration::from_millis(1950) && waited < Duration::from_secs(4),
        "answered after {waited:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_that_stalls_is_cut_after_idle_timeout() -> anyhow::Result<()> {
    let mock = MockLlm::builder("vllm")
        .models(&["m"])
        .chunks(5)
        .start()
        .await?;
    let gw = Gateway::start(&config(
        "",
        &[endpoint("staller", &mock.url(), "    idle_timeout: 1s\n")],
    ))
    .await?;
    wait_status(&gw, "staller", "healthy", Duration::from_secs(5)).await?;
    let url = format!("{}{CHAT}", gw.url());
    let streamed = r#"{"model":"m","stream":true,"messages":[]}"#;
    let client = PooledClient::new();

    // Chunks 400 ms apart: 2 s in all, each gap within the 1 s idle timeout. Untouched.
    mock.set_mode(json!({ "mode": "healthy", "chunk_delay_ms": 400 }))
        .await?;
    let whole = client.post_streamed(&url, &[], streamed).await?;
    assert_eq!(whole.status, 200);
    assert!(whole.text().contains("data: [DONE]"), "{}", whole.text());

    // Two chunks, then nothing: the client's body breaks after about a second of silence.
    mock.set_mode(json!({ "mode": "stall", "stall_after_chunks": 2, "chunk_delay_ms": 0 }))
        .await?;
    let mut open = client.post_streaming(&url, &[], streamed).await?;
    assert_eq!(open.status, 200);
    let mut text = String::new();
    let mut last = Instant::now();
    let ended = loop {
        match open.next_chunk().await {
            Ok(Some(chunk)) => {
                last = Instant::now();
                text.push_str(&String::from_utf8_lossy(&chunk.data));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let silence = last.elapsed();
    let Err(error) = ended else {
        anyhow::bail!("the stalled stream ended cleanly: {text}");
    };
    eprintln!(
        "stalled stream: {} events, then cut after {silence:?} of silence: {error:#}",
        text.matches("data: ").count()
    );
    assert_eq!(text.matches("data: ").count(), 2, "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    assert!(
        silence >= Duration::from_millis(900) && silence < Duration::from_secs(3),
        "cut after {silence:?} of silence"
    );
    Ok(())
}
