//! End to end: how a real `hale serve` stops, and how its listener treats slow and oversize
//! clients.
//!
//! - SIGTERM in the middle of a 5 s stream: `/readyz` answers 503 within 100 ms of the signal
//!   while the listener keeps answering (with `Connection: close`), the stream completes with
//!   every chunk and its `[DONE]`, and the process exits 0 shortly after the stream ended,
//!   well within `shutdown_grace`.
//! - SIGTERM with nothing in flight: exit 0 at once (the 100 ms settle plus the stop).
//! - SIGINT twice (an operator's Ctrl-C, then again): the second ends the drain at once and
//!   the process exits 0, cutting the stream it was waiting for.
//! - SIGTERM in shared mode: the global lease is gone from Redis when the process has exited
//!   (the lease TTL is 30 s, so its expiry cannot explain it).
//! - Slowloris: connections trickling a request head a byte a second are cut at
//!   `header_timeout` (2 s here) after their first byte, while a client on the side keeps
//!   getting proxied answers at normal latency.
//! - A request head over 64 KiB, or with over 100 header fields, gets 431 and the gateway
//!   goes on serving.
//!
//! Measured figures are printed (run with `--no-capture` to see them).

use anyhow::Context as _;
use hale_testkit::{Gateway, MockLlm, PooledClient, RedisServer, eventually};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

const POLL: Duration = Duration::from_millis(50);
const GRACE: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str =
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// A gateway in front of `backend` with the test's timeouts; `extra` goes at the top level.
fn config(backend: &MockLlm, extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  header_timeout: 2s\n  shutdown_grace: 10s\nhealth:\n  jitter: 0\nproxy:\n  connect_timeout: 500ms\n{extra}endpoints:\n  - name: a\n    url: {}\n    type: vllm\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms, failure_threshold: 3 }}\n",
        backend.url()
    )
}

/// Waits until the gateway is ready and endpoint `a` healthy.
async fn ready(gw: &Gateway) -> anyhow::Result<()> {
    eventually(Duration::from_secs(5), POLL, || async {
        let r = gw.get("/readyz").await?;
        anyhow::ensure!(r.status == 200, "readyz {}", r.status);
        let a = gw.endpoint("a").await?;
        anyhow::ensure!(a["status"] == "healthy", "a is {}", a["status"]);
        Ok(())
    })
    .await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test]
async fn sigterm_mid_stream_turns_readyz_503_at_once_and_exits_0_after_the_stream()
-> anyhow::Result<()> {
    const CHUNKS: usize = 25;
    let backend = MockLlm::builder("vllm")
        .models(&["m"])
        .chunks(CHUNKS as u32)
        .chunk_delay_ms(200)
        .start()
        .await?;
    let mut gw = Gateway::start(&config(&backend, "")).await?;
    ready(&gw).await?;

    let client = PooledClient::new();
    let url = format!("{}/v1/chat/completions", gw.url());
    let mut stream = client.post_streaming(&url, &[], CHAT_STREAM).await?;
    assert_eq!(stream.status, 200);
    let first = stream.next_chunk().await?.context("no first chunk")?;

    let signalled = Instant::now();
    gw.terminate().await?;
    let (readyz_at, body) = eventually(Duration::from_secs(1), Duration::from_millis(1), || {
        let gw = &gw;
        async move {
            let r = gw.get("/readyz").await?;
            anyhow::ensure!(r.status == 503, "readyz still {}", r.status);
            Ok((signalled.elapsed(), r.body))
        }
    })
    .await?;
    eprintln!("readyz 503 {:.1} ms after SIGTERM", ms(readyz_at));
    assert!(readyz_at < Duration::from_millis(100), "{readyz_at:?}");
    assert_eq!(body["reason"], "draining");

    // The listener keeps answering during the drain, and tells clients to go elsewhere.
    let live = gw.get("/livez").await?;
    assert_eq!(live.status, 200);
    assert_eq!(live.header("connection"), Some("close"));

    let (rest, exited) = tokio::join!(
        async {
            let rest = stream.rest().await;
            (rest, Instant::now())
        },
        async {
            let status = gw.wait_exit(GRACE + Duration::from_secs(2)).await;
            (status, Instant::now())
        },
    );
    let (rest, stream_end) = (rest.0?, rest.1);
    let (status, exit_at) = (exited.0?, exited.1);

    let text: String = std::iter::once(&first)
        .chain(rest.iter())
        .map(|c| String::from_utf8_lossy(&c.data).into_owned())
        .collect();
    let events = text.matches("data: {").count();
    assert_eq!(events, CHUNKS, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(text.contains(r#""finish_reason":"stop""#), "{text}");
    assert!(
        stream_end - signalled > Duration::from_secs(3),
        "the signal came mid-stream"
    );

    assert!(status.success(), "exit status {status}");
    let after_stream = exit_at.saturating_duration_since(stream_end);
    let after_signal = exit_at - signalled;
    eprintln!(
        "stream ended {:.0} ms after SIGTERM; process exited {:.0} ms after the stream ended \
         ({:.0} ms after SIGTERM, grace {} s)",
        ms(stream_end - signalled),
        ms(after_stream),
        ms(after_signal),
        GRACE.as_secs()
    );
    assert!(exit_at >= stream_end - Duration::from_millis(5));
    assert!(after_signal < GRACE);
    assert!(after_stream < Duration::from_secs(1), "{after_stream:?}");

    let logs = gw.logs();
    assert!(
        logs.contains("shutdown signal: draining") && logs.contains("in_flight=1"),
        "{logs}"
    );
    assert!(logs.contains("drained: no request in flight"), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
    Ok(())
}

#[tokio::test]
async fn sigterm_with_nothing_in_flight_exits_0_at_once() -> anyhow::Result<()> {
    let backend = MockLlm::start("vllm", &["m"]).await?;
    let mut gw = Gateway::start(&config(&backend, "")).await?;
    ready(&gw).await?;
    // A request before, so the drain starts from a gateway that has served.
    let r = PooledClient::new()
        .post(&format!("{}/v1/chat/completions", gw.url()), &[], CHAT)
        .await?;
    assert_eq!(r.status, 200);

    let signalled = Instant::now();
    gw.terminate().await?;
    let status = gw.wait_exit(Duration::from_secs(3)).await?;
    let took = signalled.elapsed();
    eprintln!("idle gateway exited {:.0} ms after SIGTERM", ms(took));
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let logs = gw.logs();
    assert!(logs.contains("in_flight=0"), "{logs}");
    assert!(logs.contains("drained: no request in flight"), "{logs}");
    Ok(())
}

#[tokio::test]
async fn a_second_sigint_stops_without_waiting_for_the_drain() -> anyhow::Result<()> {
    let backend = MockLlm::builder("vllm")
        .models(&["m"])
        .chunks(25)
        .chunk_delay_ms(200)
        .start()
        .await?;
    let mut gw = Gateway::start(&config(&backend, "")).await?;
    ready(&gw).await?;
    let url = format!("{}/v1/chat/completions", gw.url());
    let mut stream = PooledClient::new()
        .post_streaming(&url, &[], CHAT_STREAM)
        .await?;
    stream.next_chunk().await?.context("no first chunk")?;

    gw.signal("INT").await?;
    eventually(Duration::from_secs(1), Duration::from_millis(5), || async {
        let r = gw.get("/readyz").await?;
        anyhow::ensure!(r.status == 503, "readyz still {}", r.status);
        Ok(())
    })
    .await?;
    let again = Instant::now();
    gw.signal("INT").await?;
    let status = gw.wait_exit(Duration::from_secs(3)).await?;
    let took = again.elapsed();
    eprintln!("exited {:.0} ms after the second SIGINT", ms(took));
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        stream.rest().await.is_err(),
        "the stream was cut, not finished"
    );
    let logs = gw.logs();
    assert!(logs.contains("second shutdown signal"), "{logs}");
    Ok(())
}

#[tokio::test]
async fn sigterm_in_shared_mode_gives_the_global_lease_back() -> anyhow::Result<()> {
    const LEASE_KEY: &str = "hale:{shutdown}:lease";
    let redis = RedisServer::start().await?;
    let backend = MockLlm::start("vllm", &["m"]).await?;
    let shared = format!(
        "pod_id: pod-s\nshared:\n  enabled: true\n  mode: global\n  redis_url: {}\n  namespace: shutdown\n  lock_ttl: 30s\n",
        redis.url()
    );
    let mut gw = Gateway::start(&config(&backend, &shared)).await?;
    ready(&gw).await?;
    let mut conn = redis.client().await?;
    eventually(Duration::from_secs(5), POLL, || {
        let mut conn = conn.clone();
        async move {
            let owner: Option<String> = redis::cmd("GET")
                .arg(LEASE_KEY)
                .query_async(&mut conn)
                .await?;
            anyhow::ensure!(owner.as_deref() == Some("pod-s"), "lease owner {owner:?}");
            Ok(())
        }
    })
    .await?;

    gw.terminate().await?;
    let status = gw.wait_exit(Duration::from_secs(5)).await?;
    assert!(status.success(), "exit status {status}");
    let owner: Option<String> = redis::cmd("GET")
        .arg(LEASE_KEY)
        .query_async(&mut conn)
        .await?;
    assert_eq!(owner, None, "the lease outlived the process");
    let logs = gw.logs();
    assert!(
        logs.contains("Pod pod-s released health check lock"),
        "{logs}"
    );
    Ok(())
}

// === hardening ===

/// A request head for a proxied chat, to be trickled.
const SLOW_HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nhost: hale\r\ncontent-type: application/json\r\ncontent-length: 60\r\n\r\n";

/// Trickles `SLOW_HEAD` a byte a second; returns how long after its first byte the gateway
/// closed the connection, and whether it answered anything.
async fn slowloris(addr: std::net::SocketAddr) -> anyhow::Result<(Duration, usize)> {
    let mut tcp = TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = tcp.split();
    let first = Instant::now();
    let trickle = async {
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        for byte in SLOW_HEAD {
            ticks.tick().await;
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    };
    let closed = async {
        let mut got = 0;
        let mut buf = [0_u8; 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return (first.elapsed(), got),
                Ok(n) => got += n,
            }
        }
    };
    tokio::select! {
        cut = timeout(Duration::from_secs(10), closed) => Ok(cut.context("never cut")?),
        () = trickle => anyhow::bail!("the whole head went out without the connection being cut"),
    }
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout_while_others_are_served() -> anyhow::Result<()> {
    const SLOW: usize = 10;
    let backend = MockLlm::start("vllm", &["m"]).await?;
    let gw = Gateway::start(&config(&backend, "")).await?;
    ready(&gw).await?;
    let url = format!("{}/v1/chat/completions", gw.url());
    let client = PooledClient::new();
    client.post(&url, &[], CHAT).await?;

    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slowloris(gw.addr())))
        .collect();
    // A normal client, a request every 20 ms, for as long as the slow ones last.
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    while started.elapsed() < HEADER_TIMEOUT + Duration::from_millis(500) {
        pace.tick().await;
        let sent = Instant::now();
        let r = client.post(&url, &[], CHAT).await?;
        assert_eq!(r.status, 200, "{}", r.text);
        latencies.push(sent.elapsed());
    }
    let mut cuts = Vec::new();
    for s in slow {
        let (cut, answered) = s.await??;
        assert_eq!(answered, 0, "a cut head gets no answer");
        cuts.push(cut);
    }
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() * 99 / 100];
    let (min_cut, max_cut) = (
        cuts.iter().min().copied().unwrap(),
        cuts.iter().max().copied().unwrap(),
    );
    eprintln!(
        "{SLOW} slowloris connections cut {:.0}–{:.0} ms after their first byte \
         (header_timeout {} s); meanwhile {} proxied requests, p50 {:.2} ms, p99 {:.2} ms",
        ms(min_cut),
        ms(max_cut),
        HEADER_TIMEOUT.as_secs(),
        latencies.len(),
        ms(p50),
        ms(p99)
    );
    assert!(
        min_cut >= HEADER_TIMEOUT - Duration::from_millis(100),
        "{min_cut:?}"
    );
    assert!(
        max_cut < HEADER_TIMEOUT + Duration::from_secs(1),
        "{max_cut:?}"
    );
    assert!(latencies.len() >= 20, "only {} requests", latencies.len());
    assert!(p50 < Duration::from_millis(50), "p50 {p50:?}");
    Ok(())
}

/// Sends a GET whose head carries `extra` header lines; returns the status line.
async fn send_head(addr: std::net::SocketAddr, extra: &str) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    let head = format!("GET /v1/models HTTP/1.1\r\nhost: hale\r\n{extra}\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0_u8; 1024];
    timeout(Duration::from_secs(5), async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await?;
    let text = String::from_utf8_lossy(&got);
    Ok(text.lines().next().unwrap_or("(closed)").to_owned())
}

#[tokio::test]
async fn oversize_heads_get_431_and_the_gateway_keeps_serving() -> anyhow::Result<()> {
    let backend = MockLlm::start("vllm", &["m"]).await?;
    let gw = Gateway::start(&config(&backend, "")).await?;
    ready(&gw).await?;

    let big = format!("x-big: {}\r\n", "a".repeat(70 * 1024));
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let fine = format!("x-big: {}\r\n", "a".repeat(60 * 1024));
    for (what, extra, want) in [
        (
            "70 KiB header",
            &big,
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            "150 headers",
            &many,
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        ("60 KiB header", &fine, "HTTP/1.1 200 OK"),
    ] {
        let status = send_head(gw.addr(), extra).await?;
        eprintln!("{what}: {status}");
        assert_eq!(status, want, "{what}");
    }

    let models = gw.get("/v1/models").await?;
    assert_eq!(models.status, 200);
    let ids: Vec<&Value> = models.body["data"].as_array().unwrap().iter().collect();
    assert_eq!(ids.len(), 1, "{}", models.text);
    let r = PooledClient::new()
        .post(&format!("{}/v1/chat/completions", gw.url()), &[], CHAT)
        .await?;
    assert_eq!(r.status, 200, "{}", r.text);
    Ok(())
}
