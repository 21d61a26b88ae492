//! End to end: 10,000 concurrent streams through one replica. Each stream is an OpenAI chat
//! stream of 100 chunks from mockllm (two backend processes, 5,000 streams each), relayed by
//! one `hale serve` to 10,000 client connections of this test process at once. Every stream
//! must complete: status 200, all 100 chunks, `[DONE]`. Hale must have raised its open-file
//! limit (the INFO line at start) and never have run out of descriptors.
//!
//! Two descriptors per stream in the gateway (client and backend) is 20,000 plus its own: the
//! test raises its own `RLIMIT_NOFILE` (the hard limit too, when it may) before starting the
//! processes, which inherit it, and fails — never skips — when the limit is too low to try.
//!
//! The chunks are 300 ms apart, so a stream lasts 30 s and the whole relay is about 33,000
//! chunks a second: what the 2 cores of CI can carry beside the mock and the clients. The
//! duration and the slowest stream are printed.

use hale_testkit::{Gateway, MockLlm, PooledClient, eventually};
use hale_tests::wait_status;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const STREAMS: usize = 10_000;
const CHUNKS: u32 = 100;
const CHUNK_GAP_MS: u64 = 300;
/// Descriptors the test process and the gateway need beyond two per stream.
const SPARE_FDS: u64 = 2_000;
/// Connections opened per tick while the streams start (a burst of 10,000 SYNs would
/// overflow the listen backlog and wait for SYN retries).
const START_BATCH: usize = 500;
const START_TICK: Duration = Duration::from_millis(100);
/// However loaded the machine, every stream ends within this.
const DEADLINE: Duration = Duration::from_secs(240);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_streams_through_one_replica_all_complete() -> anyhow::Result<()> {
    let limit = raise_nofile(2 * STREAMS as u64 + SPARE_FDS)?;
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

    let client = PooledClient::new();
    let url = format!("{}/v1/chat/completions", gw.url());
    let open = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut streams = Vec::with_capacity(STREAMS);
    for batch in 0..STREAMS.div_ceil(START_BATCH) {
        for _ in 0..START_BATCH.min(STREAMS - batch * START_BATCH) {
            let (client, url, open) = (client.clone(), url.clone(), open.clone());
            streams.push(tokio::spawn(async move {
                let stream = client.post_streaming(&url, &[], BODY).await;
                // Counted either way, so the wait below ends on failures too.
                open.fetch_add(1, Ordering::Relaxed);
                let stream = stream?;
                let status = stream.status;
                let chunks = stream.rest().await?;
                let took = started.elapsed();
                let body: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
                let text = String::from_utf8_lossy(&body);
                anyhow::ensure!(status == 200, "status {status}: {text}");
                let events = text.matches("data: {").count();
                anyhow::ensure!(
                    events == CHUNKS as usize && text.contains("data: [DONE]"),
                    "{events} chunks of {CHUNKS}, [DONE] {}",
                    text.contains("data: [DONE]")
                );
                anyhow::Ok(took)
            }));
        }
        tokio::time::sleep(START_TICK).await;
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
         nofile limit {limit}",
        started.elapsed()
    );
    assert_eq!(completed, STREAMS, "failures: {errors:#?}");
    assert!(
        !logs.contains("out of file descriptors"),
        "the gateway ran out of descriptors"
    );
    Ok(())
}
