//! End to end: nothing grows across reloads. A real `hale serve` with two mockllm backends is
//! reloaded 1,000 times through `POST /internal/reload` (the file rewritten before each), under
//! steady load from 8 closed-loop clients. Every reload changes endpoint `a`'s weight (a new
//! proxy runtime for it) and replaces the extra endpoint `x<i-1>` with `x<i>` (one added, one
//! removed). Asserted: not one request fails; the gateway's resident memory stays within
//! 2 MiB after a warm-up of 200 reloads; `hale_proxy_endpoint_runtimes` stays at the
//! configured endpoints plus at most a few still finishing requests, and settles at 2; and
//! `/metrics` ends listing series of the current endpoints only (no `x<i>` of the past).
//! The time the reloads took is printed (a reload should take milliseconds).

use hale_testkit::{Gateway, MockLlm, PooledClient, eventually, http_request, rss_bytes};
use hale_tests::wait_status;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const TOKEN: &str = "admin-soak-token";
const RELOADS: u32 = 1000;
const WARM_UP: u32 = 200;
const SAMPLE_EVERY: u32 = 50;
const RSS_SLACK: u64 = 2 * 1024 * 1024;
const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// The config of reload `i`: `a` with a weight that changes every time, and `x<i>`.
fn config(a: &MockLlm, x: &MockLlm, i: u32) -> String {
    let entry = |name: &str, url: &str, weight: u32| {
        format!(
            "  - name: {name}\n    url: {url}\n    type: vllm\n    models: [m]\n    weight: {weight}\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms }}\n"
        )
    };
    format!(
        "server:\n  listen: 127.0.0.1:0\n  admin_token: {TOKEN}\nhealth:\n  jitter: 0\n  healthy_threshold: 1\nendpoints:\n{}{}",
        entry("a", &a.url(), 1 + i % 5),
        entry(&format!("x{i}"), &x.url(), 1),
    )
}

/// The value of the unlabelled gauge `name` in a `/metrics` text.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Every value of the `endpoint` label in a `/metrics` text.
fn endpoint_labels(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = &l[l.find("endpoint=\"")? + "endpoint=\"".len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_under_load_grow_nothing() -> anyhow::Result<()> {
    let a = MockLlm::start("vllm", &["m"]).await?;
    let x = MockLlm::start("vllm", &["m"]).await?;
    let gw = Gateway::start(&config(&a, &x, 0))
        .await?
        .with_admin_token(TOKEN);
    let pid = gw.pid().ok_or_else(|| anyhow::anyhow!("no gateway pid"))?;
    wait_status(&gw, "a", "healthy", Duration::from_secs(10)).await?;

    // Steady load until the reloads are done.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let client = PooledClient::new();
    let url = format!("{}/v1/chat/completions", gw.url());
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
            let (ok, failed, failures) = (ok.clone(), failed.clone(), failures.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match client.post(&url, &[], BODY).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
                            if f.len() < 20 {
                                f.push(match other {
                                    Ok(r) => format!("{} {}", r.status, r.text),
                                    Err(e) => format!("{e:#}"),
                                });
                            }
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async {
            anyhow::ensure!(ok.load(Ordering::Relaxed) > 200, "load not running yet");
            Ok(())
        },
    )
    .await?;

    let auth = format!("Bearer {TOKEN}");
    let reload_url = format!("{}/internal/reload", gw.url());
    let mut rss = Vec::new();
    let mut runtimes_seen = Vec::new();
    let started = Instant::now();
    for i in 1..=RELOADS {
        gw.config().write(&config(&a, &x, i))?;
        let reply = http_request(
            http::Method::POST,
            &reload_url,
            &[("authorization", &auth)],
            None,
        )
        .await?;
        anyhow::ensure!(
            reply.status == 200,
            "reload {i}: {} {}",
            reply.status,
            reply.text
        );
        if i % SAMPLE_EVERY == 0 {
            rss.push((i, rss_bytes(pid)?));
            let text = gw.get("/metrics").await?.text;
            let live = gauge(&text, "hale_proxy_endpoint_runtimes")
                .ok_or_else(|| anyhow::anyhow!("no hale_proxy_endpoint_runtimes in {text}"))?;
            runtimes_seen.push(live);
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let after: Vec<u64> = rss
        .iter()
        .filter(|(i, _)| *i >= WARM_UP)
        .map(|(_, b)| *b)
        .collect();
    let (low, high) = (
        after.iter().copied().min().unwrap_or(0),
        after.iter().copied().max().unwrap_or(0),
    );
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;
    eprintln!(
        "{RELOADS} reloads in {took:?} ({:?} each) under load: {ok} ok, {failed} failed; RSS after \
         warm-up {:.2}..{:.2} MiB (spread {:.2} MiB), all samples {:?}; live runtimes sampled {runtimes_seen:?}",
        took / RELOADS,
        mib(low),
        mib(high),
        mib(high - low),
        rss.iter()
            .map(|(i, b)| (i, format!("{:.1}", mib(*b))))
            .collect::<Vec<_>>(),
    );
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(failed, 0, "failed requests: {failures:#?}");
    assert!(ok > 1000, "the load ran: {ok} answers");
    assert!(
        high - low <= RSS_SLACK,
        "RSS grew by {:.2} MiB after warm-up",
        mib(high - low)
    );
    assert!(
        runtimes_seen.iter().all(|n| (2.0..=6.0).contains(n)),
        "live runtimes: {runtimes_seen:?}"
    );

    // Quiet now: the runtimes settle at the two endpoints, and /metrics names only them.
    let text = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let text = gw.get("/metrics").await?.text;
            let live = gauge(&text, "hale_proxy_endpoint_runtimes");
            anyhow::ensure!(live == Some(2.0), "live runtimes {live:?}");
            Ok(text)
        },
    )
    .await?;
    let last = format!("x{RELOADS}");
    let labels = endpoint_labels(&text);
    let expected: BTreeSet<String> = ["a", last.as_str(), ""]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    assert!(
        labels.is_subset(&expected) && labels.contains("a"),
        "endpoints in /metrics: {labels:?}"
    );
    let lines = text.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!("/metrics at the end: {lines} series lines, endpoints {labels:?}");
    Ok(())
}
