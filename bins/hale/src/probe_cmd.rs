//! `hale probe --type T URL`: one health check with the probe for that type, printed as JSON
//! (state-machine reason, error, latency, models), for operators checking a backend by hand.
//! Exit 0 when the check passes, 1 when it does not.

use hale_core::store::CheckPlan;
use hale_core::{CheckResult, EndpointConfig, EndpointKind};
use hale_probe::{ProbeClient, probe_for, run_check};
use std::sync::Arc;

/// Runs the check; returns whether it passed.
pub async fn run(kind: EndpointKind, url: &str, api_key: Option<String>) -> anyhow::Result<bool> {
    let mut config = EndpointConfig::new("probe", url, kind);
    if let Some(key) = api_key {
        config.api_key = hale_core::Secret::new(key);
    }
    let endpoint = config
        .resolve("probe")
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let plan = CheckPlan {
        timeout: endpoint.check_timeout,
        endpoint: Arc::new(endpoint),
        discover: true,
    };
    let outcome = run_check(&ProbeClient::new(), probe_for(kind).as_ref(), &plan).await;
    let (ok, models) = match &outcome.result {
        CheckResult::Ok { models } => (true, models.clone()),
        _ => (false, None),
    };
    let report = serde_json::json!({
        "type": kind.as_str(),
        "health_url": plan.endpoint.health_url.as_str(),
        "model_url": plan.endpoint.model_url.as_ref().map(|u| u.as_str()),
        "ok": ok,
        "reason": outcome.result.reason().map(|r| r.as_str().into_owned()),
        "error": outcome.result.error_text(),
        "latency_ms": outcome.latency.as_secs_f64() * 1e3,
        "models": models.map(|m| m.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ok)
}
