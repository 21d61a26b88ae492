//! One health check of one endpoint, start to finish: GET the health URL, let the type's probe
//! judge it, and — on the first success, after a recovery, or when static models must be
//! verified — read the model list too.
//!
//! A configured (static) model that the backend does not report fails the check with reason
//! `model_missing`. To see that promptly, endpoints with a static list and a model URL list
//! their models on every check (one extra request per interval); others list them only when
//! core says discovery is due, or when the health URL is the model list anyway.
//!
//! A model list is input like any other: the body is read up to the client's bound
//! ([`crate::client::MAX_BODY`]; a bigger one fails the check), and of what it lists only
//! names of at most [`MAX_MODEL_NAME`] bytes are kept, the first [`MAX_MODELS`] of them
//! (the same bounds shared results carry between replicas); what is left out is logged at
//! WARN with its count.

use crate::client::{ProbeClient, timed};
use crate::kinds::{Probe, expect_success};
use hale_core::store::CheckPlan;
use hale_core::{CheckOutcome, CheckResult, same_model};
use std::sync::Arc;
use tokio::time::Instant;

/// The most models one endpoint is routed for from its discovery.
pub const MAX_MODELS: usize = 4096;
/// The longest model name kept from a discovery (bytes).
pub const MAX_MODEL_NAME: usize = 256;

/// Keeps the names of at most [`MAX_MODEL_NAME`] bytes, at most [`MAX_MODELS`] of them.
fn bounded(endpoint: &str, models: Vec<Arc<str>>) -> Vec<Arc<str>> {
    let listed = models.len();
    let kept: Vec<Arc<str>> = models
        .into_iter()
        .filter(|m| !m.is_empty() && m.len() <= MAX_MODEL_NAME)
        .take(MAX_MODELS)
        .collect();
    if kept.len() < listed {
        tracing::warn!(
            endpoint,
            listed,
            kept = kept.len(),
            "model list out of bounds: only names of at most {MAX_MODEL_NAME} bytes, and at most {MAX_MODELS} of them, are routed"
        );
    }
    kept
}

/// Runs one check as `plan` says and returns its outcome. Never fails: every failure is an
/// outcome with a reason.
pub async fn run_check(client: &ProbeClient, probe: &dyn Probe, plan: &CheckPlan) -> CheckOutcome {
    let endpoint = &plan.endpoint;
    let start = Instant::now();
    let (health, latency) =
        timed(client.get(&endpoint.health_url, &endpoint.api_key, plan.timeout)).await;
    let response = match health {
        Ok(r) => r,
        Err(result) => return CheckOutcome { latency, result },
    };
    if let Err(result) = probe.judge(&response) {
        return CheckOutcome { latency, result };
    }

    let Some(model_url) = &endpoint.model_url else {
        return CheckOutcome::ok(latency);
    };
    let same_url = *model_url == endpoint.health_url;
    let verify_static = !endpoint.models.is_empty();
    if !(plan.discover || verify_static || same_url) {
        return CheckOutcome::ok(latency);
    }
    let body = if same_url {
        response.body
    } else {
        let remaining = plan.timeout.saturating_sub(start.elapsed());
        match client.get(model_url, &endpoint.api_key, remaining).await {
            Ok(r) => match expect_success(&r) {
                Ok(()) => r.body,
                Err(result) => return CheckOutcome { latency, result },
            },
            Err(result) => return CheckOutcome { latency, result },
        }
    };
    let models = match probe.models(&body) {
        Ok(m) => bounded(&endpoint.name, m),
        Err(message) => {
            return CheckOutcome {
                latency,
                result: CheckResult::BadResponse { message },
            };
        }
    };
    let missing: Vec<Arc<str>> = endpoint
        .models
        .iter()
        .filter(|want| !models.iter().any(|have| same_model(want, have)))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return CheckOutcome {
            latency,
            result: CheckResult::ModelMissing { missing },
        };
    }
    CheckOutcome {
        latency,
        result: CheckResult::Ok {
            models: Some(models),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovered_lists_are_bounded() {
        let mut listed: Vec<Arc<str>> = (0..100_000).map(|i| Arc::from(format!("m{i}"))).collect();
        listed.insert(0, Arc::from("x".repeat(MAX_MODEL_NAME + 1)));
        listed.insert(1, Arc::from(""));
        let kept = bounded("e", listed);
        assert_eq!(kept.len(), MAX_MODELS);
        assert_eq!(&*kept[0], "m0");
        assert!(kept.iter().all(|m| m.len() <= MAX_MODEL_NAME));
        let few: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b")];
        assert_eq!(bounded("e", few.clone()), few);
    }
}
