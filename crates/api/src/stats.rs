//! `/internal/stats/models`: for every model some endpoint serves, where it can be served and
//! how those endpoints are doing — Olla's model statistics.
//!
//! Per model, sorted by name: the endpoints that serve it and the subset that may take traffic
//! now (both in configuration order), their counts by state, the mean of their latest check
//! latencies (null when none has been checked), the requests routed for it and its `retry`
//! figures — `{retries, budget_exhausted}`: requests sent once more to another endpoint, and
//! retries not made because the retry budget was spent — (zero until a
//! [`ModelStatsView`](crate::ModelStatsView) is wired in). A model is listed when an endpoint
//! is configured for it or reported it at discovery, whatever that endpoint's state, so a model
//! whose only backend is down shows up with no routable endpoints rather than vanishing.

use crate::ApiState;
use crate::counts::StateCounts;
use crate::format::millis;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Serialize)]
struct ModelList {
    models: Vec<ModelStats>,
    total_models: usize,
}

#[derive(Serialize)]
struct ModelStats {
    name: Arc<str>,
    endpoints: Vec<Arc<str>>,
    routable_endpoints: Vec<Arc<str>>,
    endpoints_by_status: StateCounts,
    avg_check_latency_ms: Option<f64>,
    requests_total: u64,
    retry: RetryStats,
}

#[derive(Serialize)]
struct RetryStats {
    retries: u64,
    budget_exhausted: u64,
}

/// Latencies summed while walking the endpoints; the mean is taken at the end.
#[derive(Default)]
struct Building {
    endpoints: Vec<Arc<str>>,
    routable_endpoints: Vec<Arc<str>>,
    by_status: StateCounts,
    latency_sum: Duration,
    latency_count: u32,
}

/// `GET /internal/stats/models`.
pub(crate) async fn models(State(state): State<ApiState>) -> Response {
    let snapshot = state.store().snapshot();
    let now = Instant::now();
    let mut by_model: BTreeMap<Arc<str>, Building> = BTreeMap::new();
    for e in &snapshot.endpoints {
        let routable = e.health.is_routable(now);
        for model in e.models() {
            let b = by_model.entry(model).or_default();
            // A model listed twice by one endpoint must not count that endpoint twice.
            if b.endpoints.last() == Some(&e.endpoint.name) {
                continue;
            }
            b.endpoints.push(e.endpoint.name.clone());
            if routable {
                b.routable_endpoints.push(e.endpoint.name.clone());
            }
            b.by_status.add(e.health.state);
            if let Some(latency) = e.health.last_latency {
                b.latency_sum += latency;
                b.latency_count += 1;
            }
        }
    }
    let models: Vec<ModelStats> = by_model
        .into_iter()
        .map(|(name, b)| ModelStats {
            requests_total: state.requests_total(&name),
            retry: {
                let (retries, budget_exhausted) = state.retry_figures(&name);
                RetryStats {
                    retries,
                    budget_exhausted,
                }
            },
            avg_check_latency_ms: (b.latency_count > 0)
                .then(|| millis(b.latency_sum / b.latency_count)),
            name,
            endpoints: b.endpoints,
            routable_endpoints: b.routable_endpoints,
            endpoints_by_status: b.by_status,
        })
        .collect();
    Json(ModelList {
        total_models: models.len(),
        models,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use crate::ModelStatsView;
    use crate::testing::Fixture;
    use axum::http::StatusCode;
    use hale_core::{CheckOutcome, Now};
    use serde_json::{Value, json};
    use std::sync::Arc;
    use std::time::Duration;

    struct Counts;
    impl ModelStatsView for Counts {
        fn requests_total(&self, model: &str) -> u64 {
            if model == "m2" { 7 } else { 0 }
        }
        fn retry_figures(&self, model: &str) -> (u64, u64) {
            if model == "m2" { (3, 1) } else { (0, 0) }
        }
    }

    #[tokio::test]
    async fn per_model_availability_and_latency() {
        let f = Fixture::with_state("", |s| s.with_model_stats(Arc::new(Counts)));
        f.store.observe(
            "a",
            &CheckOutcome::ok(Duration::from_millis(4)),
            Now::capture(),
        );
        let r = f.get("/internal/stats/models", None).await;
        assert_eq!(r.status, StatusCode::OK);
        let body = r.json();
        assert_eq!(body["total_models"], 2);
        let models = body["models"].as_array().unwrap();
        let m1 = &models[0];
        assert_eq!(m1["name"], "m1");
        assert_eq!(m1["endpoints"], json!(["a", "b"]));
        assert_eq!(m1["routable_endpoints"], json!(["a"]));
        assert_eq!(
            m1["endpoints_by_status"],
            json!({"healthy": 1, "degraded": 0, "recovering": 0, "unhealthy": 0, "unknown": 1, "total": 2})
        );
        assert_eq!(m1["avg_check_latency_ms"], 4.0);
        assert_eq!(m1["requests_total"], 0);
        assert_eq!(m1["retry"], json!({"retries": 0, "budget_exhausted": 0}));

        let m2 = &models[1];
        assert_eq!(m2["name"], "m2");
        assert_eq!(m2["endpoints"], json!(["b"]));
        assert_eq!(m2["routable_endpoints"], json!([]));
        assert_eq!(m2["avg_check_latency_ms"], Value::Null);
        assert_eq!(m2["requests_total"], 7);
        assert_eq!(m2["retry"], json!({"retries": 3, "budget_exhausted": 1}));
    }

    #[tokio::test]
    async fn averages_latest_latencies_of_serving_endpoints() {
        let f = Fixture::new("");
        for (name, ms) in [("a", 2), ("b", 6)] {
            f.store.observe(
                name,
                &CheckOutcome::ok(Duration::from_millis(ms)),
                Now::capture(),
            );
        }
        let body = f.get("/internal/stats/models", None).await.json();
        assert_eq!(body["models"][0]["avg_check_latency_ms"], 4.0);
        assert_eq!(body["models"][0]["routable_endpoints"], json!(["a", "b"]));
        assert_eq!(body["models"][1]["avg_check_latency_ms"], 6.0);
    }
}
