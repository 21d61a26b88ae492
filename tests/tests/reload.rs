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
//! - Refused reloads, under load: values `serve` cannot run (durations of u64::MAX seconds,
//!   a 100EiB body limit), an empty file and a file without endpoints are each refused by
//!   SIGHUP with a WARN naming the key or the reason (and 422 from `POST /internal/reload`);
//!   every endpoint keeps being checked and serving, and not one request fails.
//! - Credentials in an endpoint URL never show in the logs (at DEBUG: checks passing and
//!   failing, refused and applied reloads, requests) or the status page.
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

struct Load {
    started: Instant,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Requests served per endpoint, in the order of the names given to [`start_load`].
    served: [AtomicU64; 4],
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    /// Waits until the clients have had `n` good answers.
    async fn running(&self, n: u64) -> anyhow::Result<()> {
        eventually(Duration::from_secs(5), POLL, || async {
            let ok = self.ok.load(Ordering::Relaxed);
            anyhow::ensure!(ok > n, "load not running yet ({ok} answers)");
            Ok(())
        })
        .await
    }

    /// The first failures (at most 20), with when they came.
    fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// 16 closed-loop clients posting chat requests to `gw` for `length`, counting good answers,
/// failures and which of `names` (at most 4) served each request.
fn start_load(
    gw: &Gateway,
    names: &'static [&'static str],
    length: Duration,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load {
        started: Instant::now(),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        served: Default::default(),
        failures: std::sync::Mutex::default(),
    });
    let client = PooledClient::new();
    let url = format!("{}{CHAT}", gw.url());
    let workers = (0..16)
        .map(|_| {
            let (client, url, load) = (client.clone(), url.clone(), load.clone());
            tokio::spawn(async move {
                while load.started.elapsed() < length {
                    match client.post(&url, &[], BODY).await {
                        Ok(r) if r.status == 200 => {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            let by = r.header("x-hale-endpoint").unwrap_or("");
                            if let Some(i) = names.iter().position(|n| *n == by) {
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
                                f.push(format!("at {:?}: {what}", load.started.elapsed()));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    (load, workers)
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
    let (load, workers) = start_load(&gw, &NAMES, LOAD);
    let started = load.started;
    load.running(200).await?;

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
    assert_eq!(failed, 0, "failed requests: {:#?}", load.failures());

    Ok(())
}

/// The log lines that refuse a reload and contain `needle`.
fn refusals(gw: &Gateway, needle: &str) -> usize {
    gw.logs()
        .lines()
        .filter(|l| l.contains("config reload refused") && l.contains(needle))
        .count()
}

/// Sends SIGHUP and waits for one more refusal line containing `needle`; returns the line.
async fn hangup_refused(gw: &Gateway, needle: &str) -> anyhow::Result<String> {
    let before = refusals(gw, needle);
    gw.hangup().await?;
    eventually(Duration::from_secs(5), POLL, || async {
        anyhow::ensure!(
            refusals(gw, needle) > before,
            "no refusal naming {needle:?} logged yet"
        );
        Ok(())
    })
    .await?;
    let logs = gw.logs();
    let line = logs
        .lines()
        .rfind(|l| l.contains("config reload refused") && l.contains(needle))
        .unwrap_or_default();
    Ok(line.to_owned())
}

/// Waits until every backend has had `more` health checks beyond the counts in `since`.
async fn checks_go_on(backends: &[MockLlm], since: &[u64], more: u64) -> anyhow::Result<()> {
    eventually(Duration::from_secs(6), POLL, || async {
        for (i, (b, before)) in backends.iter().zip(since).enumerate() {
            let now = b.hits("/health").await?;
            anyhow::ensure!(
                now >= before + more,
                "backend {i} checked {} times since",
                now - before
            );
        }
        Ok(())
    })
    .await
}

async fn health_hits(backends: &[MockLlm]) -> anyhow::Result<Vec<u64>> {
    let mut hits = Vec::new();
    for b in backends {
        hits.push(b.hits("/health").await?);
    }
    Ok(hits)
}

/// `u64::MAX` seconds: a duration humantime reads and no clock can be advanced by.
const HUGE: &str = "18446744073709551615s";

#[tokio::test]
async fn reloads_that_cannot_run_or_would_empty_the_gateway_are_refused_under_load()
-> anyhow::Result<()> {
    const NAMES: [&str; 2] = ["a", "b"];
    let backends = [
        MockLlm::start("vllm", &["m"]).await?,
        MockLlm::start("vllm", &["m"]).await?,
    ];
    let entries: Vec<String> = NAMES
        .iter()
        .zip(&backends)
        .map(|(n, b)| endpoint(n, &b.url(), ""))
        .collect();
    let good = config(&entries);
    let gw = Gateway::start(&good).await?.with_admin_token(TOKEN);
    for name in NAMES {
        wait_status(&gw, name, "healthy", Duration::from_secs(5)).await?;
    }
    let (load, workers) = start_load(&gw, &NAMES, Duration::from_secs(12));
    load.running(200).await?;

    // Values check-config refuses, one at a time, each by SIGHUP: refused with the key named.
    let huge = [
        (
            "  admin_token:",
            format!("  header_timeout: {HUGE}\n  admin_token:"),
            "server.header_timeout",
        ),
        (
            "  admin_token:",
            format!("  idle_timeout: {HUGE}\n  admin_token:"),
            "server.idle_timeout",
        ),
        (
            "  admin_token:",
            "  max_body: 100EiB\n  admin_token:".to_owned(),
            "server.max_body",
        ),
        (
            "    check_interval: 1s\n",
            format!("    check_interval: {HUGE}\n"),
            "endpoints[0].check_interval",
        ),
        (
            "    startup: { period: 1s, timeout: 500ms }\n",
            format!("    startup: {{ period: 1s, timeout: 500ms, initial_delay: {HUGE} }}\n"),
            "endpoints[0].startup.initial_delay",
        ),
    ];
    let hits = health_hits(&backends).await?;
    for (from, to, key) in &huge {
        gw.config().write(&good.replacen(from, to, 1))?;
        let line = hangup_refused(&gw, key).await?;
        assert!(line.contains("must be at most 1"), "{line}");
    }
    // Every endpoint is still checked at its cadence, and serves.
    checks_go_on(&backends, &hits, 2).await?;

    // A truncated write: the file is empty.
    gw.config().write("")?;
    let hits = health_hits(&backends).await?;
    let served = load.ok.load(Ordering::Relaxed);
    let line = hangup_refused(&gw, "the file is empty").await?;
    assert!(line.contains("WARN"), "{line}");
    let refused = admin_post(&gw, "/internal/reload").await?;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert_eq!(refused.body["error"]["type"], "invalid_config_error");
    assert!(
        refused.text.contains("the file is empty"),
        "{}",
        refused.text
    );

    // A config that would remove every endpoint while they serve.
    gw.config()
        .write(&config(&[]).replace("endpoints:\n", "endpoints: []\n"))?;
    let refused = admin_post(&gw, "/internal/reload").await?;
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(refused.text.contains("no endpoints"), "{}", refused.text);
    hangup_refused(&gw, "no endpoints").await?;

    checks_go_on(&backends, &hits, 2).await?;
    eventually(Duration::from_secs(3), POLL, || async {
        let now = load.ok.load(Ordering::Relaxed);
        anyhow::ensure!(now > served + 200, "traffic stopped after the refusals");
        Ok(())
    })
    .await?;
    assert_eq!(gw.endpoints().await?.len(), 2);

    // The good file applies again.
    gw.config().write(&good)?;
    let reply = admin_post(&gw, "/internal/reload").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["changes"]["unchanged"], 2, "{}", reply.text);

    for w in workers {
        w.await?;
    }
    let (ok, failed) = (
        load.ok.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "refused reloads under load: {ok} ok, {failed} failed over {:?}",
        load.started.elapsed()
    );
    assert_eq!(failed, 0, "failed requests: {:#?}", load.failures());
    Ok(())
}

#[tokio::test]
async fn url_credentials_never_show_in_logs_or_status() -> anyhow::Result<()> {
    let a = MockLlm::start("vllm", &["m"]).await?;
    let with_creds = a.url().replace("http://", "http://user:S3CRET@");
    let good = config(&[endpoint("a", &with_creds, "")]);
    let gw = Gateway::start_with_env(&good, &[("HALE_LOG", "debug")])
        .await?
        .with_admin_token(TOKEN);
    wait_status(&gw, "a", "healthy", Duration::from_secs(5)).await?;
    let r = PooledClient::new()
        .post(&format!("{}{CHAT}", gw.url()), &[], BODY)
        .await?;
    assert_eq!(r.status, 200, "{}", r.text);

    // Refused reloads log their reason: an invalid URL carrying the credentials, and
    // another key invalid next to them.
    gw.config()
        .write(&good.replace(&a.url()[7..], "127.0.0.1:99999"))?;
    hangup_refused(&gw, "endpoints[0].url").await?;
    gw.config()
        .write(&good.replace("  jitter: 0\n", "  jitter: 7\n"))?;
    hangup_refused(&gw, "health.jitter").await?;
    // An applied one logs what changed.
    gw.config()
        .write(&good.replace("check_interval: 1s", "check_interval: 2s"))?;
    let reply = admin_post(&gw, "/internal/reload").await?;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // Failing checks: a WARN for the first, DEBUG lines while the failure repeats.
    a.set_mode(serde_json::json!({"status": 503})).await?;
    wait_status(&gw, "a", "unhealthy", Duration::from_secs(8)).await?;
    // A connection that closes before a request is logged at DEBUG.
    drop(tokio::net::TcpStream::connect(gw.addr()).await?);
    eventually(Duration::from_secs(3), POLL, || async {
        anyhow::ensure!(gw.logs().contains(" DEBUG "), "nothing logged at DEBUG");
        Ok(())
    })
    .await?;

    let status = gw.get("/internal/status/endpoints").await?.text;
    let logs = gw.logs();
    assert!(
        !status.contains("S3CRET"),
        "status shows the password: {status}"
    );
    assert!(
        !logs.contains("S3CRET"),
        "the logs show the password: {logs}"
    );
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
