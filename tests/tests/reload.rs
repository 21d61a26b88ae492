//! End to end: the operator's actions on a running `hale serve` with real mockllm backends.
//!
//! - Live reload: under load (16 closed-loop clients), the config file gains a fourth endpoint
//!   and the gateway gets SIGHUP; the new endpoint is checked, turns healthy and takes
//!   traffic, and not one request fails. The three old endpoints keep their health (no new
//!   transition). An invalid edit is refused — a WARN line naming the key, a 422 from
//!   `POST /internal/reload` — and the gateway keeps serving the four endpoints it had.
//!   Removing an endpoint (by `POST /internal/reload`, still under load) stops its traffic
//!   and its checks.
//! - Drain: a stream in flight on a drained endpoint completes with every chunk while new
//!   requests go elsewhere; `/enable` brings it back.
//! - Check: `POST /internal/endpoints/{name}/check` checks at once and reports what it found;
//!   neither the admin token nor the endpoint's `api_key` shows in status or logs.

use hale_testkit::{Gateway, MockLlm, PooledClient, eventually, http_request};
use hale_tests::wait_status;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(50);
const TOKEN: &str = "admin-e2e-token";
const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// One `endpoints:` entry, checked every second.
fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!(
        "  - name: {name}\n    url: {url}\n    type: vllm\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms }}\n{extra}"
    )
}

fn config(endpoints: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_token: {TOKEN}\nhealth:\n  jitter: 0\n  healthy_threshold: 1\nproxy:\n  connect_timeout: 500ms\nendpoints:\n{}",
        endpoints.concat()
    )
}

/// `POST path` on the gateway with the admin token.
async fn admin_post(gw: &Gateway, path: &str) -> anyhow::Result<hale_testkit::HttpReply> {
    let auth = format!("Bearer {TOKEN}");
    http_request(
        http::Method::POST,
        &format!("{}{path}", gw.url()),
        &[("authorization", &auth)],
        None,
    )
    .await
}

#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Requests served per endpoint a, b, c, d.
    served: [AtomicU64; 4],
    failures: std::sync::Mutex<Vec<String>>,
}

#[tokio::test]
async fn sighup_adds_an_endpoint_under_load_and_an_invalid_edit_changes_nothing()
-> anyhow::Result<()> {
    const NAMES: [&str; 4] = ["a", "b", "c", "d"];
    const LOAD: Duration = Duration::from_secs(8);
    let backends = [
        MockLlm::start("vllm", &["m"]).await?,
        MockLlm::start("vllm", &["m"]).await?,
        MockLlm::start("vllm", &["m"]).await?,
        MockLlm::start("vllm", &["m"]).await?,
    ];
    let entries: Vec<String> = NAMES
        .iter()
        .zip(&backends)
        .map(|(n, b)| endpoint(n, &b.url(), ""))
        .collect();
    let gw = Gateway::start(&config(&entries[..3]))
        .await?
        .with_admin_token(TOKEN);
    for name in &NAMES[..3] {
        wait_status(&gw, name, "healthy", Duration::from_secs(5)).await?;
    }
    let events_before = gw.events().await?.len();

    // 16 closed-loop clients for LOAD: every reload below happens under load.
    let load = Arc::new(Load::default());
    let client = PooledClient::new();
    let url = format!("{}{CHAT}", gw.url());
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (client, url, load) = (client.clone(), url.clone(), load.clone());
            tokio::spawn(async move {
                while started.elapsed() < LOAD {
                    match client.post(&url, &[], BODY).await {
                        Ok(r) if r.status == 200 => {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            let by = r.header("x-hale-endpoint").unwrap_or("");
                            if let Some(i) = NAMES.iter().position(|n| *n == by) {
                                load.served[i].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => {
                            load.failed.fetch_add(1, Ordering::Relaxed);
                            let what = match other {
                                Ok(r) => format!("{} {}", r.status, r.text),
                                Err(e) => format!("{e:#}"),
                            };
                            let mut f = load.failures.lock().unwrap_or_else(|p| p.into_inner());
                            if f.len() < 20 {
                                f.push(format!("at {:?}: {what}", started.elapsed()));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(5), POLL, || async {
        anyhow::ensure!(
            load.ok.load(Ordering::Relaxed) > 200,
            "load not running yet"
        );
        Ok(())
    })
    .await?;

    // The fourth endpoint, by SIGHUP.
    gw.config().write(&config(&entries))?;
    let hup = Instant::now();
    gw.hangup().await?;
    wait_status(&gw, "d", "healthy", Duration::from_secs(5)).await?;
    let healthy_after = hup.elapsed();
    eventually(Duration::from_secs(5), POLL, || async {
        let d = load.served[3].load(Ordering::Relaxed);
        anyhow::ensure!(d > 100, "d served {d} requests so far");
        Ok(())
    })
    .await?;
    let routed_after = hup.elapsed();

    // An invalid edit: refused, logged with the key, the four endpoints keep serving.
    let broken = config(&entries).replace(
        "    check_timeout: 500ms\n",
        "    check_timeout: 500ms\n    chek_interval: 2s\n",
    );
    gw.config().write(&broken)?;
    gw.hangup().await?;
    eventually(Duration::from_secs(5), POLL, || async {
        let logs = gw.logs();
        anyhow::ensure!(
            logs.contains("config reload refused") && logs.contains("chek_interval"),
            "no refusal logged yet"
        );
        Ok(())
    })
    .await?;
    let refused = admin_post(&gw, "/internal/reload").await?;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.body["error"]["type"], "invalid_config_error");
    assert!(refused.text.contains("chek_interval"), "{}", refused.text);
    let served_d = load.served[3].load(Ordering::Relaxed);
    eventually(Duration::from_secs(3), POLL, || async {
        let now = load.served[3].load(Ordering::Relaxed);
        anyhow::ensure!(
            now > served_d + 50,
            "d stopped getting traffic after the refused edit"
        );
        Ok(())
    })
    .await?;
    assert_eq!(gw.endpoints().await?.len(), 4);

    // The old endpoints kept their health: the only new transitions so far are d's.
    let events = gw.events().await?;
    let new: Vec<&Value> = events[events_before..].iter().collect();
    assert!(
        new.iter().all(|e| e["endpoint"] == "d"),
        "transitions of unchanged endpoints after the reload: {new:?}"
    );

    // Removing c by the API: no traffic, no checks.
    gw.config().write(&config(&[
        entries[0].clone(),
        entries[1].clone(),
        entries[3].clone(),
    ]))?;
    let reply = admin_post(&gw, "/internal/reload").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["changes"]["removed"], serde_json::json!(["c"]));
    assert_eq!(reply.body["changes"]["unchanged"], 3);
    assert!(gw.endpoint("c").await.is_err(), "c is still listed");
    let c_health = backends[2].hits("/health").await?;
    let c_chat = backends[2].hits(CHAT).await?;
    let c_served = load.served[2].load(Ordering::Relaxed);
    // Checks run every second: while a is checked twice more, c would have been too.
    let a_health = backends[0].hits("/health").await?;
    eventually(Duration::from_secs(5), POLL, || async {
        let now = backends[0].hits("/health").await?;
        anyhow::ensure!(
            now >= a_health + 2,
            "a checked {} times since",
            now - a_health
        );
        Ok(())
    })
    .await?;
    assert_eq!(
        backends[2].hits("/health").await?,
        c_health,
        "c is still checked"
    );
    assert_eq!(
        backends[2].hits(CHAT).await?,
        c_chat,
        "c still gets traffic"
    );
    assert_eq!(load.served[2].load(Ordering::Relaxed), c_served);

    for w in workers {
        w.await?;
    }
    let ok = load.ok.load(Ordering::Relaxed);
    let failed = load.failed.load(Ordering::Relaxed);
    let served: Vec<u64> = load
        .served
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "reload under load: {ok} ok, {failed} failed over {:?}; served a/b/c/d {served:?}; d healthy {healthy_after:?} after SIGHUP, 100 requests on d after {routed_after:?}",
        started.elapsed()
    );
    let failures = load
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(failed, 0, "failed requests: {failures:#?}");

    Ok(())
}

#[tokio::test]
async fn a_drained_endpoint_finishes_its_stream_and_gets_nothing_new() -> anyhow::Result<()> {
    // a is preferred (priority), so the stream lands there; b takes over while a is drained.
    let a = MockLlm::builder("vllm")
        .models(&["m"])
        .chunks(20)
        .chunk_delay_ms(100)
        .start()
        .await?;
    let b = MockLlm::start("vllm", &["m"]).await?;
    let gw = Gateway::start(&config(&[
        endpoint("a", &a.url(), "    priority: 200\n"),
        endpoint("b", &b.url(), "    priority: 100\n"),
    ]))
    .await?
    .with_admin_token(TOKEN);
    wait_status(&gw, "a", "healthy", Duration::from_secs(5)).await?;
    wait_status(&gw, "b", "healthy", Duration::from_secs(5)).await?;

    let client = PooledClient::new();
    let url = format!("{}{CHAT}", gw.url());
    let streaming = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
            client.post_streamed(&url, &[], body).await
        })
    };
    // Drain once the stream has reached a.
    eventually(
        Duration::from_secs(3),
        Duration::from_millis(10),
        || async {
            anyhow::ensure!(a.hits(CHAT).await? == 1, "the stream has not reached a yet");
            Ok(())
        },
    )
    .await?;
    let reply = admin_post(&gw, "/internal/endpoints/a/drain").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["in_flight"], 1, "{}", reply.text);
    let drained_at = Instant::now();
    assert_eq!(gw.endpoint("a").await?["drained"], true);

    // While the stream runs, new requests go to b.
    let mut during = 0;
    while drained_at.elapsed() < Duration::from_millis(800) {
        let r = client.post(&url, &[], BODY).await?;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(
            r.header("x-hale-endpoint"),
            Some("b"),
            "a drained endpoint got a new request"
        );
        during += 1;
    }
    let stream = streaming.await??;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("x-hale-endpoint"), Some("a"));
    let text = stream.text();
    let events = text.matches("data: ").count();
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "stream cut short: {text}"
    );
    eprintln!(
        "drain: {during} requests to b while a's stream ran; the stream ended with {events} events after {:?}",
        drained_at.elapsed()
    );

    // Checks go on while drained; enabling brings traffic back.
    assert_eq!(gw.endpoint("a").await?["status"], "healthy");
    let reply = admin_post(&gw, "/internal/endpoints/a/enable").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let r = client.post(&url, &[], BODY).await?;
    assert_eq!(r.header("x-hale-endpoint"), Some("a"));
    Ok(())
}

#[tokio::test]
async fn check_on_request_reports_what_it_found() -> anyhow::Result<()> {
    let a = MockLlm::start("vllm", &["m"]).await?;
    let mut entry = endpoint("a", &a.url(), "    api_key: sk-upstream-e2e-secret\n");
    // A long interval: any check seen within the test is one we asked for.
    entry = entry.replace("check_interval: 1s", "check_interval: 60s");
    let gw = Gateway::start(&config(&[entry]))
        .await?
        .with_admin_token(TOKEN);
    wait_status(&gw, "a", "healthy", Duration::from_secs(5)).await?;
    let before = a.hits("/health").await?;

    a.set_mode(serde_json::json!({"status": 503})).await?;
    let reply = admin_post(&gw, "/internal/endpoints/a/check").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["ok"], false, "{}", reply.text);
    assert_eq!(reply.body["outcome"], "http_503", "{}", reply.text);
    assert_eq!(a.hits("/health").await?, before + 1);

    a.set_mode(serde_json::json!({"mode": "healthy"})).await?;
    let reply = admin_post(&gw, "/internal/endpoints/a/check").await?;
    assert_eq!(reply.body["ok"], true, "{}", reply.text);
    assert_eq!(reply.body["status"], "healthy", "{}", reply.text);
    assert_eq!(reply.body["models"], serde_json::json!(["m"]));

    let reply = admin_post(&gw, "/internal/endpoints/zz/check").await?;
    assert_eq!(reply.status, 404, "{}", reply.text);
    // Without the token: 401, and nothing is checked.
    let hits = a.hits("/health").await?;
    let unauth = http_request(
        http::Method::POST,
        &format!("{}/internal/endpoints/a/check", gw.url()),
        &[],
        None,
    )
    .await?;
    assert_eq!(unauth.status, 401);
    assert_eq!(a.hits("/health").await?, hits);

    // Neither secret shows in the status pages or in anything the gateway logged.
    let status = gw.get("/internal/status/endpoints").await?.text;
    let logs = gw.logs();
    for secret in ["sk-upstream-e2e-secret", TOKEN] {
        assert!(!status.contains(secret), "status shows {secret}");
        assert!(!logs.contains(secret), "the logs show {secret}");
    }
    Ok(())
}
