//! End to end: model catalog freshness (issue #13), through a real `hale serve` to real
//! mockllm processes whose model lists change at run time (`POST /__models`), and, for
//! shared mode, a real `redis-server`.
//!
//! Every endpoint here re-reads its list on schedule only once an hour
//! (`discovery_interval: 1h`), so whatever the gateway learns in these tests it learns from
//! the rediscoveries requests cause. The scenarios:
//! - a model pulled onto a running backend is served on the first request naming it; a
//!   model removed from a backend is dropped from that endpoint on the backend's first
//!   "model not found", that very request is served by the other endpoint that still has it,
//!   and so is every later one;
//! - 1,000 requests naming made-up models cause at most one model-list request per endpoint
//!   (counted at the mocks) and are all answered 404;
//! - a llama-server restarted under another model name: the new name is served on the first
//!   request, the old one is answered 404 by Hale without reaching the backend;
//! - shared mode, two replicas: a model one replica rediscovered is routed by the other
//!   without a model-list request of its own (mockllm records the replica of every hit);
//! - hostile: a model list of 60,000 names is cut to 4,096, one of 10 MB fails the check
//!   (`bad_response`), and 404 answers that are huge, garbage, chunked or stall mid-body are
//!   relayed, or answered 502 within the read bound, never parsed unbounded or held.
//!
//! Measured figures are printed (run with `--no-capture` to see them).

use hale_testkit::{
    Gateway, MockLlm, PooledClient, RedisServer, eventually, http_get_json, http_post_json,
};
use hale_tests::wait_status;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

const CHAT: &str = "/v1/chat/completions";
const POLL: Duration = Duration::from_millis(50);
const WITHIN: Duration = Duration::from_secs(20);

/// One `endpoints:` entry: checked every 2 s within 1 s, models re-read hourly on schedule.
fn endpoint(name: &str, url: &str, kind: &str, extra: &str) -> String {
    endpoint_timed(name, url, kind, ("2s", "1s"), extra)
}

/// [`endpoint`] checked every `interval`, within `timeout`.
fn endpoint_timed(
    name: &str,
    url: &str,
    kind: &str,
    (interval, timeout): (&str, &str),
    extra: &str,
) -> String {
    format!(
        "  - name: {name}\n    url: {url}\n    type: {kind}\n    check_interval: {interval}\n    check_timeout: {timeout}\n    discovery_interval: 1h\n    startup: {{ period: {interval}, timeout: {timeout}, failure_threshold: 3 }}\n{extra}"
    )
}

/// The admin token of every gateway here (the hostile test drains endpoints).
const TOKEN: &str = "catalog-admin";

fn config(endpoints: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_token: {TOKEN}\nhealth:\n  jitter: 0\nproxy:\n  connect_timeout: 500ms\nendpoints:\n{}",
        endpoints.concat()
    )
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })
}

async fn ask(gw: &Gateway, model: &str) -> anyhow::Result<hale_testkit::HttpReply> {
    http_post_json(&format!("{}{CHAT}", gw.url()), &chat(model)).await
}

/// Serves `models` on `mock` from now on.
async fn serve(mock: &MockLlm, models: &[&str]) -> anyhow::Result<()> {
    let reply = http_post_json(
        &format!("{}/__models", mock.url()),
        &json!({ "models": models }),
    )
    .await?;
    anyhow::ensure!(reply.status == 200, "POST /__models: {}", reply.text);
    Ok(())
}

/// The models the gateway routes `name` for.
async fn models_of(gw: &Gateway, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(gw.endpoint(name).await?["models"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect())
}

/// Waits until `name` is healthy and routed for `model`.
async fn wait_serving(gw: &Gateway, name: &str, model: &str) -> anyhow::Result<()> {
    wait_status(gw, name, "healthy", WITHIN).await?;
    eventually(WITHIN, POLL, || async {
        let models = models_of(gw, name).await?;
        anyhow::ensure!(models.iter().any(|m| m == model), "{name} lists {models:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn added_models_are_served_at_once_and_removed_ones_fail_over() -> anyhow::Result<()> {
    let a = MockLlm::builder("vllm")
        .models(&["base", "both"])
        .arg("--strict-models")
        .start()
        .await?;
    let b = MockLlm::builder("vllm")
        .models(&["base", "both"])
        .arg("--strict-models")
        .start()
        .await?;
    let gw = Gateway::start(&config(&[
        endpoint("a", &a.url(), "vllm", "    priority: 200\n"),
        endpoint("b", &b.url(), "vllm", "    priority: 100\n"),
    ]))
    .await?
    .with_admin_token(TOKEN);
    wait_serving(&gw, "a", "both").await?;
    wait_serving(&gw, "b", "both").await?;

    // Pulled onto a: served on the first request naming it.
    serve(&a, &["base", "both", "fresh"]).await?;
    let lists_before = a.hits("/v1/models").await?;
    let started = Instant::now();
    let reply = ask(&gw, "fresh").await?;
    println!(
        "first request for a model pulled onto a running backend: {} in {:?}",
        reply.status,
        started.elapsed()
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-hale-endpoint"), Some("a"));
    assert_eq!(
        a.hits("/v1/models").await?,
        lists_before + 1,
        "one rediscovery"
    );

    // Removed from a (the preferred endpoint): its first "model not found" drops it there,
    // and that request is served by b.
    serve(&a, &["base", "fresh"]).await?;
    let a_chats = a.hits(CHAT).await?;
    let reply = ask(&gw, "both").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("x-hale-endpoint"), Some("b"));
    assert_eq!(a.hits(CHAT).await?, a_chats + 1, "a answered it 404 once");
    assert!(!models_of(&gw, "a").await?.contains(&"both".to_owned()));
    for _ in 0..20 {
        let reply = ask(&gw, "both").await?;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.header("x-hale-endpoint"), Some("b"));
    }
    assert_eq!(a.hits(CHAT).await?, a_chats + 1, "never sent to a again");

    // Removed everywhere: the client gets the backend's own 404, nothing worse.
    serve(&b, &["base"]).await?;
    let reply = ask(&gw, "both").await?;
    assert_eq!(reply.status, 404, "{}", reply.text);
    let reply = ask(&gw, "both").await?;
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(
        wait_status(&gw, "a", "healthy", WITHIN).await?["status"],
        "healthy"
    );
    Ok(())
}

#[tokio::test]
async fn a_flood_of_made_up_models_costs_one_rediscovery_per_endpoint() -> anyhow::Result<()> {
    const REQUESTS: usize = 1000;
    const WORKERS: usize = 20;
    let a = MockLlm::start("vllm", &["m"]).await?;
    let b = MockLlm::start("ollama", &["m"]).await?;
    let gw = Gateway::start(&config(&[
        endpoint("a", &a.url(), "vllm", ""),
        endpoint("b", &b.url(), "ollama", ""),
    ]))
    .await?
    .with_admin_token(TOKEN);
    wait_serving(&gw, "a", "m").await?;
    wait_serving(&gw, "b", "m").await?;
    let before = (a.hits("/v1/models").await?, b.hits("/api/tags").await?);

    let client = PooledClient::new();
    let url = format!("{}{CHAT}", gw.url());
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, url) = (client.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..REQUESTS / WORKERS {
                let body = chat(&format!("made-up-{w}-{i}")).to_string();
                statuses.push(client.post(&url, &[], body).await.map(|r| r.status));
            }
            statuses
        }));
    }
    let mut not_found = 0;
    for w in workers {
        for status in w.await? {
            assert_eq!(status?, 404);
            not_found += 1;
        }
    }
    let took = started.elapsed();
    let after = (a.hits("/v1/models").await?, b.hits("/api/tags").await?);
    println!(
        "{not_found} requests naming made-up models in {took:?}: model-list requests a {} → {}, b {} → {}",
        before.0, after.0, before.1, after.1
    );
    assert_eq!(not_found, REQUESTS);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(after.0 <= before.0 + 1, "a: {before:?} → {after:?}");
    assert!(after.1 <= before.1 + 1, "b: {before:?} → {after:?}");
    // The rediscovery did run (the first request waited for it).
    assert!(after.0 + after.1 > before.0 + before.1);
    assert_eq!(gw.get("/livez").await?.status, 200);
    Ok(())
}

#[tokio::test]
async fn a_llama_server_restarted_under_another_model_name() -> anyhow::Result<()> {
    let old = MockLlm::builder("llamacpp")
        .models(&["old-model"])
        .arg("--strict-models")
        .start()
        .await?;
    let port = old.port();
    let gw = Gateway::start(&config(&[endpoint("l", &old.url(), "llamacpp", "")]))
        .await?
        .with_admin_token(TOKEN);
    wait_serving(&gw, "l", "old-model").await?;
    assert_eq!(ask(&gw, "old-model").await?.status, 200);

    drop(old);
    let new = MockLlm::builder("llamacpp")
        .models(&["new-model"])
        .arg("--strict-models")
        .port(port)
        .start()
        .await?;
    wait_status(&gw, "l", "healthy", WITHIN).await?;
    let reply = ask(&gw, "new-model").await?;
    assert_eq!(
        reply.status, 200,
        "the new name on the first request: {}",
        reply.text
    );
    let chats = new.hits(CHAT).await?;
    let reply = ask(&gw, "old-model").await?;
    assert_eq!(reply.status, 404, "{}", reply.text);
    assert_eq!(
        new.hits(CHAT).await?,
        chats,
        "the old name is no longer routed"
    );
    assert_eq!(models_of(&gw, "l").await?, ["new-model"]);
    Ok(())
}

#[tokio::test]
async fn one_replicas_rediscovery_serves_the_fleet() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let mock = MockLlm::builder("vllm")
        .models(&["base"])
        .arg("--strict-models")
        .start()
        .await?;
    let mut gateways = Vec::new();
    for pod in ["pod-0", "pod-1"] {
        let yaml = format!(
            "server:\n  listen: 127.0.0.1:0\npod_id: {pod}\nhealth:\n  jitter: 0\nshared:\n  enabled: true\n  redis_url: {}\n  namespace: catalog\n  cache_ttl: 30s\n  lock_ttl: 3s\nendpoints:\n{}",
            redis.url(),
            endpoint("e", &mock.url(), "vllm", "")
        );
        gateways.push(Gateway::start(&yaml).await?);
    }
    for gw in &gateways {
        wait_serving(gw, "e", "base").await?;
    }
    let list_hits = |stats: &Value, pod: &str| {
        stats["recent"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["path"] == "/v1/models" && h["pod"] == pod)
            .count()
    };
    serve(&mock, &["base", "fresh"]).await?;
    let before = mock.stats().await?;
    let reply = ask(&gateways[0], "fresh").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // The other replica adopts the new list from the shared result...
    eventually(WITHIN, POLL, || async {
        let models = models_of(&gateways[1], "e").await?;
        anyhow::ensure!(
            models.iter().any(|m| m == "fresh"),
            "pod-1 lists {models:?}"
        );
        Ok(())
    })
    .await?;
    let reply = ask(&gateways[1], "fresh").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // ...without a model-list request of its own.
    let after = mock.stats().await?;
    println!(
        "model-list requests during the change: pod-0 {} → {}, pod-1 {} → {}",
        list_hits(&before, "pod-0"),
        list_hits(&after, "pod-0"),
        list_hits(&before, "pod-1"),
        list_hits(&after, "pod-1")
    );
    assert_eq!(list_hits(&after, "pod-0"), list_hits(&before, "pod-0") + 1);
    assert_eq!(list_hits(&after, "pod-1"), list_hits(&before, "pod-1"));
    Ok(())
}

/// A vLLM-like backend serving `/health` and a one-model list (`m`), answering every POST
/// with what `answer` returns for its request count (0, 1, ...): raw bytes after the head.
async fn raw_backend(answer: fn(usize) -> Vec<u8>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let posts = posts.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = Vec::new();
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if got.len() < end + 4 + length {
                        continue;
                    }
                    got.drain(..end + 4 + length);
                    let reply = if head.starts_with("get /v1/models") {
                        let body = r#"{"object":"list","data":[{"id":"m"}]}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    } else if head.starts_with("get ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()
                    } else {
                        let n = posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        answer(n)
                    };
                    if sock.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

fn not_found_with(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn hostile_model_lists_and_not_found_answers_are_bounded() -> anyhow::Result<()> {
    // 60,000 names (3.6 MB as mockllm lists them, within the 4 MiB a check reads): cut to
    // the first 4,096.
    let many = MockLlm::start("vllm", &["m"]).await?;
    // 10 MB of names: beyond what a check reads.
    let huge = MockLlm::start("vllm", &["m"]).await?;
    let garbage = raw_backend(|_| not_found_with(b"\x00\xff{{{ not json at all")).await?;
    let big = raw_backend(|_| {
        let body = format!(
            r#"{{"error":"model 'm' not found","pad":"{}"}}"#,
            "x".repeat(1 << 20)
        );
        not_found_with(body.as_bytes())
    })
    .await?;
    let chunked = raw_backend(|_| {
        let body = r#"{"error":"model 'm' not found"}"#;
        format!(
            "HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .into_bytes()
    })
    .await?;
    let stalled = raw_backend(|_| {
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 100\r\n\r\n{\"error\":".to_vec()
    })
    .await?;
    let gw = Gateway::start(&config(&[
        // Lists of megabytes take a debug build a moment to parse on a loaded machine.
        endpoint_timed("many", &many.url(), "vllm", ("5s", "3s"), ""),
        endpoint_timed("huge", &huge.url(), "vllm", ("5s", "3s"), ""),
        endpoint("garbage", &garbage, "vllm", "    priority: 400\n"),
        endpoint("big", &big, "vllm", "    priority: 300\n"),
        endpoint("chunked", &chunked, "vllm", "    priority: 200\n"),
        endpoint("stalled", &stalled, "vllm", "    priority: 150\n"),
    ]))
    .await?
    .with_admin_token(TOKEN);
    for name in ["many", "huge", "garbage", "big", "chunked", "stalled"] {
        wait_status(&gw, name, "healthy", WITHIN).await?;
    }

    let names: Vec<String> = (0..60_000).map(|i| format!("n{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    serve(&many, &refs).await?;
    let long: Vec<String> = (0..100_000).map(|i| format!("{i:0100}")).collect();
    let refs: Vec<&str> = long.iter().map(String::as_str).collect();
    serve(&huge, &refs).await?;
    // A model no endpoint has yet: both re-read their lists.
    let reply = ask(&gw, "n00001").await?;
    assert!(reply.status == 200 || reply.status == 404, "{}", reply.text);
    eventually(WITHIN, POLL, || async {
        let n = models_of(&gw, "many").await?.len();
        anyhow::ensure!(n == 4096, "many lists {n}");
        Ok(())
    })
    .await?;
    assert_eq!(ask(&gw, "n00001").await?.status, 200);
    let started = Instant::now();
    assert_eq!(ask(&gw, "n59999").await?.status, 404, "beyond the cap");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered without a wait"
    );
    // The 10 MB list fails that check (counted), and the endpoint keeps the list it had.
    let line = eventually(WITHIN, POLL, || async {
        let metrics = http_get_json(&format!("{}/metrics", gw.url())).await?.text;
        metrics
            .lines()
            .find(|l| {
                l.starts_with("hale_health_checks_total")
                    && l.contains("endpoint=\"huge\"")
                    && l.contains("bad_response")
            })
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no bad_response check of huge yet"))
    })
    .await?;
    println!("a 10 MB model list: {line}");
    assert_eq!(models_of(&gw, "huge").await?, ["m"]);

    // 404s for model `m` (served by the raw backends, by priority): garbage is relayed and
    // changes nothing; a huge one and a chunked one are relayed unread; one that stalls
    // mid-body is a 502 within the read bound.
    let reply = ask(&gw, "m").await?;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-hale-endpoint"), Some("garbage"));
    assert!(models_of(&gw, "garbage").await?.contains(&"m".to_owned()));
    serve_nothing_from(&gw, "garbage").await?;
    let reply = ask(&gw, "m").await?;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-hale-endpoint"), Some("big"));
    assert!(reply.text.len() > 1 << 20, "relayed whole, unread");
    assert!(models_of(&gw, "big").await?.contains(&"m".to_owned()));
    serve_nothing_from(&gw, "big").await?;
    let reply = ask(&gw, "m").await?;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("x-hale-endpoint"), Some("chunked"));
    assert!(models_of(&gw, "chunked").await?.contains(&"m".to_owned()));
    serve_nothing_from(&gw, "chunked").await?;
    let started = Instant::now();
    let reply = ask(&gw, "m").await?;
    let took = started.elapsed();
    println!(
        "a 404 that stalls mid-body: {} after {took:?}",
        reply.status
    );
    assert_eq!(reply.status, 502, "{}", reply.text);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(gw.get("/livez").await?.status, 200);
    Ok(())
}

/// Drains endpoint `name` so the next request for `m` goes to the next priority tier.
async fn serve_nothing_from(gw: &Gateway, name: &str) -> anyhow::Result<()> {
    let reply = hale_testkit::http_request(
        http::Method::POST,
        &format!("{}/internal/endpoints/{name}/drain", gw.url()),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        None,
    )
    .await?;
    anyhow::ensure!(reply.is_success(), "drain {name}: {}", reply.text);
    Ok(())
}
