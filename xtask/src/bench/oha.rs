//! Driving oha, the HTTP load generator, and reading its JSON report.
//!
//! One [`Load`] is one oha run against one URL: a closed loop (`-c N`, each connection sends
//! its next request when the answer is in) or a fixed rate (`-q R --latency-correction`, so a
//! stalled answer delays the measured latency of the requests queued behind it instead of
//! hiding them — no coordinated omission). Every run is bounded by `-z`; requests still in
//! flight at the deadline are cut and not counted (oha reports them as "aborted due to
//! deadline"). Latencies are of complete answers: a streamed answer counts when its last
//! chunk has arrived.

use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use serde_json::Value;

/// What to send and how hard.
#[derive(Clone, Debug)]
pub(crate) struct Load {
    /// Connections (closed loop) or the connections a fixed rate may use.
    pub(crate) connections: u32,
    /// Requests per second for an open loop; `None` for a closed loop.
    pub(crate) rate: Option<u32>,
    /// Run length in seconds.
    pub(crate) seconds: f64,
    /// The JSON body of every `POST`.
    pub(crate) body: String,
}

/// The figures of one run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outcome {
    /// 2xx answers.
    pub(crate) ok: u64,
    /// Non-2xx answers and transport errors (deadline cuts excluded).
    pub(crate) failed: u64,
    /// 2xx answers per second of the run.
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// oha's version line, e.g. `oha 1.8.0`.
pub(crate) fn version() -> anyhow::Result<String> {
    let output = Command::new("oha")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .context("running oha --version")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs `load` against `url` (a `POST` with a JSON body) and reads oha's report.
pub(crate) fn run(url: &str, load: &Load) -> anyhow::Result<Outcome> {
    let mut command = Command::new("oha");
    command
        .args(["--no-tui", "--output-format", "json"])
        .args([
            "-z",
            &format!("{}ms", (load.seconds * 1000.0).round() as u64),
        ])
        .args(["-c", &load.connections.to_string()])
        .args(["-m", "POST", "-T", "application/json", "-d", &load.body]);
    if let Some(rate) = load.rate {
        command
            .args(["-q", &rate.to_string()])
            .arg("--latency-correction");
    }
    command.arg(url).stdin(Stdio::null());
    let output = command.output().context("running oha")?;
    if !output.status.success() {
        bail!(
            "oha against {url} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "oha's output is not JSON: {}",
            String::from_utf8_lossy(&output.stdout)
                .chars()
                .take(300)
                .collect::<String>()
        )
    })?;
    parse(&report)
}

/// The figures from oha's JSON report (latencies there are in seconds).
fn parse(report: &Value) -> anyhow::Result<Outcome> {
    let number = |pointer: &str| -> anyhow::Result<f64> {
        report
            .pointer(pointer)
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow!("oha's report has no number at {pointer}"))
    };
    let mut ok = 0;
    let mut failed = 0;
    if let Some(codes) = report
        .get("statusCodeDistribution")
        .and_then(Value::as_object)
    {
        for (code, count) in codes {
            let count = count.as_u64().unwrap_or(0);
            if code.starts_with('2') {
                ok += count;
            } else {
                failed += count;
            }
        }
    }
    if let Some(errors) = report.get("errorDistribution").and_then(Value::as_object) {
        for (error, count) in errors {
            if !error.contains("deadline") {
                failed += count.as_u64().unwrap_or(0);
            }
        }
    }
    let seconds = number("/summary/total")?;
    if ok == 0 {
        // No successful answer: latency percentiles are absent or meaningless.
        return Ok(Outcome {
            ok,
            failed,
            ..Outcome::default()
        });
    }
    Ok(Outcome {
        ok,
        failed,
        rps: if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        },
        p50_ms: number("/latencyPercentiles/p50")? * 1000.0,
        p99_ms: number("/latencyPercentiles/p99")? * 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oha_report_counting_only_2xx_and_real_errors() {
        let report: Value = serde_json::from_str(
            r#"{"summary":{"successRate":1.0,"total":2.0,"requestsPerSec":1010.0},
                "latencyPercentiles":{"p10":0.0001,"p50":0.0005,"p99":0.002},
                "statusCodeDistribution":{"200":2000,"502":10},
                "errorDistribution":{"aborted due to deadline":32,"connection closed":3}}"#,
        )
        .unwrap();
        let outcome = parse(&report).unwrap();
        assert_eq!(outcome.ok, 2000);
        assert_eq!(outcome.failed, 13);
        assert!((outcome.rps - 1000.0).abs() < 1e-9);
        assert!((outcome.p50_ms - 0.5).abs() < 1e-9);
        assert!((outcome.p99_ms - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_run_without_success_has_no_latencies() {
        let report: Value = serde_json::from_str(
            r#"{"summary":{"total":1.0},"latencyPercentiles":{"p50":null,"p99":null},
                "statusCodeDistribution":{"404":500},"errorDistribution":{}}"#,
        )
        .unwrap();
        let outcome = parse(&report).unwrap();
        assert_eq!((outcome.ok, outcome.failed), (0, 500));
        assert_eq!(outcome.rps, 0.0);
    }
}
