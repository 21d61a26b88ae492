//! End to end: 10,000 concurrent streams through one replica. Each stream is an OpenAI chat
//! stream of 100 chunks from mockllm (two backend processes, 5,000 streams each), relayed by
//! one `hale serve`, all open at once. Every stream must complete: status 200, all 100
//! chunks, `[DONE]`. Hale must have raised its open-file limit (the INFO line at start) and
//! never have run out of descriptors.
//!
//! Descriptors: a stream costs the gateway one backend socket, and one client socket over
//! HTTP/1. 10,000 HTTP/1 clients would need 20,000 descriptors plus the gateway's own few
//! dozen, just above the 20,000 hard limit of the CI machine (whose containers may not raise
//! hard limits). So 5,000 streams come over their own HTTP/1 connections and 5,000 over 50
//! h2c connections (100 streams each, under hyper's default of 200 per connection): 15,050
//! client and backend sockets in the gateway, every one of its 10,000 backend connections
//! still a stream of its own. The test raises its own `RLIMIT_NOFILE` (the hard limit too,
//! when it may) before starting the processes, which inherit it, and fails — never skips —
//! when the limit is too low to try.
//!
//! The chunks are 250 ms apart, so a stream lasts 25 s and the whole relay is about 40,000
//! chunks a second, which 2 cores carry beside the mock and the clients (about 34 s in all
//! on an idle 2-core machine). No deadline but the overall one is on the streams (a loaded
//! machine is slow, not wrong); the duration, the slowest stream and the gateway's resident
//! memory with every stream open are printed.

use bytes::Bytes;
use hale_testkit::{Gateway, MockLlm, eventually};
use hale_tests::wait_status;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const STREAMS: usize = 10_000;
/// Streams over HTTP/1 connections of their own; the rest share h2c connections.
const HTTP1_STREAMS: usize = 5_000;
const H2_STREAMS_PER_CONNECTION: usize = 100;
const CHUNKS: u32 = 100;
const CHUNK_GAP_MS: u64 = 250;
/// Descriptors the test process and the gateway need beyond two per stream.
const SPARE_FDS: u64 = 2_000;
/// Connections opened per tick while the streams start (a burst of 10,000 SYNs would
/// overflow the listen backlog and wait for SYN retries).
const START_BATCH: usize = 500;
const START_TICK: Duration = Duration::from_millis(100);
/// However loaded the machine, every stream ends within this.
const DEADLINE: Duration = Duration::from_secs(600);
const BODY: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

/// Raises this process's open-file limit so that it (10,000 client sockets) and the processes
/// it starts (the gateway: 20,000) can hold every stream; an error when it cannot.
fn raise_nofile(needed: u64) -> anyhow::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    if hard < needed {
        // Allowed as root (CAP_SYS_RESOURCE); otherwise the hard limit stays and is checked.
        let _ = rlimit::Resource::NOFILE.set(needed, needed);
    }
    let soft = rlimit::increase_nofile_limit(u64::MAX)?;
    anyhow::ensure!(
        soft >= needed,
        "RLIMIT_NOFILE is {soft} and cannot be raised to the {needed} that {STREAMS} streams \
         need (raise the hard limit: ulimit -Hn {needed})"
    );
    Ok(soft)
}

/// The streamed chat request.
fn request(url: &str) -> anyhow::Result<http::Request<Full<Bytes>>> {
    Ok(http::Request::post(url)
        .header(http::header::HOST, "hale")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))?)
}

/// Reads one stream's answer to its end and checks it; how long after `started` it ended.
/// `open` counts the stream once its head is in (or it failed), so the wait for every head
/// ends on failures too.
async fn finish(
    answer: anyhow::Result<http::Response<hyper::body::Incoming>>,
    open: &AtomicUsize,
    started: Instant,
) -> anyhow::Result<Duration> {
    open.fetch_add(1, Ordering::Relaxed);
    let answer = answer?;
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await?.to_bytes();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&body);
    anyhow::ensure!(status == 200, "status {status}: {text}");
    let events = text.matches("data: {").count();
    anyhow::ensure!(
        events == CHUNKS as usize && text.contains("data: [DONE]"),
        "{events} chunks of {CHUNKS}, [DONE] {}",
        text.contains("data: [DONE]")
    );
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_streams_through_one_replica_all_complete() -> anyhow::Result<()> {
    let h2_connections = (STREAMS - HTTP1_STREAMS).div_ceil(H2_STREAMS_PER_CONNECTION);
    let limit = raise_nofile(
        (2 * HTTP1_STREAMS + STREAMS - HTTP1_STREAMS + h2_connections) as u64 + SPARE_FDS,
    )?;
    let mock = || {
        MockLlm::builder("vllm")
            .models(&["m"])
            .chunks(CHUNKS)
            .chunk_delay_ms(CHUNK_GAP_MS)
            .start()
    };
    let (one, two) = (mock().await?, mock().await?);
    let endpoint = |name: &str, url: &str| {
        format!("  - name: {name}\n    url: {url}\n    type: vllm\n    models: [m]\n")
    };
    let gw = Gateway::start(&format!(
        "server:\n  listen: 127.0.0.1:0\nendpoints:\n{}{}",
        endpoint("one", &one.url()),
        endpoint("two", &two.url())
    ))
    .await?;
    wait_status(&gw, "one", "healthy", Duration::from_secs(10)).await?;
    wait_status(&gw, "two", "healthy", Duration::from_secs(10)).await?;
    let raised = gw
        .logs()
        .lines()
        .find(|l| l.contains("open-file limit (RLIMIT_NOFILE) raised"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no open-file limit line in {}", gw.logs()))?;
    assert!(raised.contains(&format!("soft={limit}")), "{raised}");

    let url = format!("{}/v1/chat/completions", gw.url());
    let mut h2 = Vec::with_capacity(h2_connections);
    for _ in 0..h2_connections {
        let tcp = tokio::net::TcpStream::connect(gw.addr()).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        h2.push(sender);
    }
    let open = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut streams = Vec::with_capacity(STREAMS);
    for i in 0..STREAMS {
        let open = open.clone();
        if i < HTTP1_STREAMS {
            let (addr, url) = (gw.addr(), url.clone());
            streams.push(tokio::spawn(async move {
                // A connection of its own (hyper's, without a client pool's deadlines: a
                // loaded machine may take long, the overall deadline below bounds it).
                let answer = async {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                    tokio::spawn(conn);
                    anyhow::Ok(sender.send_request(request(&url)?).await?)
                };
                finish(answer.await, &open, started).await
            }));
        } else {
            let mut sender = h2[(i - HTTP1_STREAMS) / H2_STREAMS_PER_CONNECTION].clone();
            let url = url.clone();
            streams.push(tokio::spawn(async move {
                let answer = async {
                    sender.ready().await?;
                    anyhow::Ok(sender.send_request(request(&url)?).await?)
                };
                finish(answer.await, &open, started).await
            }));
        }
        if (i + 1) % START_BATCH == 0 {
            tokio::time::sleep(START_TICK).await;
        }
    }
    // Every stream has its head (or failed): the last starts long before the first can end,
    // so all 10,000 are open at once.
    eventually(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async {
            let n = open.load(Ordering::Relaxed);
            anyhow::ensure!(n == STREAMS, "{n} of {STREAMS} streams have their head");
            Ok(())
        },
    )
    .await?;
    let all_open = started.elapsed();
    let pid = gw.pid().ok_or_else(|| anyhow::anyhow!("no gateway pid"))?;
    let rss_open = hale_testkit::rss_bytes(pid)?;

    let mut slowest = Duration::ZERO;
    let mut errors = Vec::new();
    let mut completed = 0;
    let results = tokio::time::timeout(DEADLINE, async {
        let mut out = Vec::with_capacity(STREAMS);
        for s in streams {
            out.push(s.await);
        }
        out
    })
    .await
    .map_err(|_| anyhow::anyhow!("streams still running after {DEADLINE:?}"))?;
    for r in results {
        match r? {
            Ok(took) => {
                completed += 1;
                slowest = slowest.max(took);
            }
            Err(e) if errors.len() < 10 => errors.push(format!("{e:#}")),
            Err(_) => {}
        }
    }
    let logs = gw.logs();
    eprintln!(
        "{completed} of {STREAMS} streams of {CHUNKS} chunks ({CHUNK_GAP_MS} ms apart) completed; \
         all open after {all_open:?}, slowest ended after {slowest:?}, total {:?}; \
         gateway RSS with all open {:.1} MiB; nofile limit {limit}",
        started.elapsed(),
        rss_open as f64 / 1024.0 / 1024.0
    );
    assert_eq!(completed, STREAMS, "failures: {errors:#?}");
    assert!(
        !logs.contains("out of file descriptors"),
        "the gateway ran out of descriptors"
    );
    Ok(())
}
