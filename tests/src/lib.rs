//! hale-tests: Hale's end-to-end suites. Each file in `tests/tests/` is one suite that starts
//! real processes — gateway replicas (`hale`), `redis-server`, `mockllm` backends — over
//! loopback and asserts on what a user or an operator would see: HTTP answers, status pages,
//! metrics, Redis keys. The process harness lives in `hale-testkit`; this library is where
//! helpers shared only by the end-to-end suites (a gateway fixture, config builders) belong.
//!
//! The suites need the workspace binaries built (`cargo build --workspace --bins`) and
//! `redis-server` on `PATH`; `cargo xtask it` and `cargo xtask test` take care of both.

use hale_testkit::{Gateway, MockLlm, eventually};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Three mockllm backends, one per flavour, each with its own model: `vllm` (`m-vllm`),
/// `ollama` (`llama3`) and `llamacpp` (`m-llama`). A fixture the suites read and drive; only
/// [`Backends::start`] makes one.
#[derive(Debug)]
pub struct Backends {
    pub vllm: MockLlm,
    pub ollama: MockLlm,
    pub llamacpp: MockLlm,
}

impl Backends {
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            vllm: MockLlm::start("vllm", &["m-vllm"]).await?,
            ollama: MockLlm::start("ollama", &["llama3"]).await?,
            llamacpp: MockLlm::start("llamacpp", &["m-llama"]).await?,
        })
    }

    /// Their `endpoints:` entries (named after the flavour), checked every `interval` with
    /// `timeout`, and in the startup phase at the same cadence with 3 failures allowed.
    pub fn endpoints(&self, interval: &str, timeout: &str) -> String {
        let ep = |name: &str, url: String| {
            format!(
                "  - name: {name}\n    url: {url}\n    type: {name}\n    check_interval: {interval}\n    check_timeout: {timeout}\n    startup: {{ period: {interval}, timeout: {timeout}, failure_threshold: 3 }}\n"
            )
        };
        format!(
            "{}{}{}",
            ep("vllm", self.vllm.url()),
            ep("ollama", self.ollama.url()),
            ep("llamacpp", self.llamacpp.url()),
        )
    }
}

/// Waits until `/internal/status/endpoints` shows `name` with `status`, polling every 50 ms,
/// for at most `within`; returns the endpoint's status object.
pub async fn wait_status(
    gw: &Gateway,
    name: &str,
    status: &str,
    within: Duration,
) -> anyhow::Result<Value> {
    eventually(within, Duration::from_millis(50), || async {
        let e = gw.endpoint(name).await?;
        anyhow::ensure!(
            e["status"] == status,
            "{name} is {} ({})",
            e["status"],
            e["reason"]
        );
        Ok(e)
    })
    .await
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp as Hale prints it.
pub fn rfc3339_secs(v: &serde_json::Value) -> anyhow::Result<f64> {
    let s = v
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("not a timestamp: {v}"))?;
    let t = humantime::parse_rfc3339(s)?;
    Ok(t.duration_since(UNIX_EPOCH)?.as_secs_f64())
}

/// Now, in seconds since the Unix epoch (the clock mockllm stamps hits with).
pub fn wall_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Arrival times (Unix seconds) of the requests a mockllm received on `path`, oldest first,
/// from its `/__stats` answer.
pub fn hit_times(stats: &serde_json::Value, path: &str) -> Vec<f64> {
    stats["recent"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter(|h| h["path"] == path)
                .filter_map(|h| h["t"].as_f64())
                .collect()
        })
        .unwrap_or_default()
}

/// The gaps between consecutive times.
pub fn gaps(times: &[f64]) -> Vec<f64> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// The `/health` hits a mock received in `[from, to)` (wall-clock seconds), each with the
/// pod that sent it: who checked the backend, and when.
pub async fn health_checks(
    mock: &MockLlm,
    from: f64,
    to: f64,
) -> anyhow::Result<Vec<(f64, String)>> {
    let stats = mock.stats().await?;
    Ok(stats["recent"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["path"] == "/health")
        .filter_map(|h| {
            let t = h["t"].as_f64()?;
            let pod = h["pod"].as_str().unwrap_or("?").to_owned();
            (t >= from && t < to).then_some((t, pod))
        })
        .collect())
}
