//! Hale's own health: liveness (`/livez`, `/health/liveliness`), readiness (`/readyz`,
//! `/health/readiness`) and Olla's overview (`/internal/health`). None needs a token.
//!
//! Liveness says only that the process answers HTTP: it never looks at backends or Redis, so a
//! backend outage can never get the gateway restarted by Kubernetes. Readiness is 200 once the
//! first sweep of checks (or the shared state) is in and 503 from the moment the process starts
//! draining; the 503 body says which (`starting` or `draining`). `/internal/health` always
//! answers 200 — it is a report, not a probe — with `status` `healthy` when every endpoint is
//! in a routable state (and when there are none), `unhealthy` when none is, `degraded`
//! otherwise. "Routable state" means healthy, degraded or recovering; a short rate limit does
//! not make a healthy backend unhealthy here (it does show in `hale_endpoint_up`).

use crate::ApiState;
use crate::counts::StateCounts;
use crate::format::go_duration;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// `GET /livez`: 200 `{"status":"alive"}`, always.
pub(crate) async fn livez() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

/// `GET /readyz`: 200 `{"status":"ready"}`, or 503
/// `{"status":"not_ready","reason":"starting"|"draining"}`.
pub(crate) async fn readyz(State(state): State<ApiState>) -> Response {
    let reason = if state.is_draining() {
        "draining"
    } else if !state.store().snapshot().ready {
        "starting"
    } else {
        return Json(json!({"status": "ready"})).into_response();
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "not_ready", "reason": reason})),
    )
        .into_response()
}

#[derive(Serialize)]
struct Overview<'a> {
    status: &'static str,
    endpoints: StateCounts,
    uptime: String,
    version: &'a str,
    pod_id: &'a str,
}

/// `GET /internal/health`: Olla's shape, see the module docs.
pub(crate) async fn internal_health(State(state): State<ApiState>) -> Response {
    let snapshot = state.store().snapshot();
    let counts: StateCounts = snapshot.endpoints.iter().map(|e| e.health.state).collect();
    let status = if counts.routable() == counts.total {
        "healthy"
    } else if counts.routable() == 0 {
        "unhealthy"
    } else {
        "degraded"
    };
    Json(Overview {
        status,
        endpoints: counts,
        uptime: go_duration(state.uptime()),
        version: state.version(),
        pod_id: state.store().pod_id(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use crate::testing::Fixture;
    use axum::http::StatusCode;
    use hale_core::{CheckResult, Now};
    use serde_json::json;

    #[tokio::test]
    async fn liveness_always_answers() {
        let f = Fixture::new("t");
        f.state.start_draining();
        for path in ["/livez", "/health/liveliness"] {
            let r = f.get(path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            assert_eq!(r.json(), json!({"status": "alive"}));
        }
    }

    #[tokio::test]
    async fn readiness_follows_the_first_sweep_and_draining() {
        let f = Fixture::new("t");
        for path in ["/readyz", "/health/readiness"] {
            let r = f.get(path, None).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(
                r.json(),
                json!({"status": "not_ready", "reason": "starting"})
            );
        }
        f.store.mark_ready();
        for path in ["/readyz", "/health/readiness"] {
            let r = f.get(path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            assert_eq!(r.json(), json!({"status": "ready"}));
        }
        f.state.start_draining();
        for path in ["/readyz", "/health/readiness"] {
            let r = f.get(path, None).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(
                r.json(),
                json!({"status": "not_ready", "reason": "draining"})
            );
        }
    }

    #[tokio::test]
    async fn overview_counts_and_verdict() {
        let f = Fixture::new("t");
        let body = f.get("/internal/health", None).await.json();
        assert_eq!(body["status"], "unhealthy", "nothing confirmed yet: {body}");
        assert_eq!(
            body["endpoints"],
            json!({"healthy": 0, "degraded": 0, "recovering": 0, "unhealthy": 0, "unknown": 3, "total": 3})
        );
        assert_eq!(body["version"], "0.1.0-test");
        assert_eq!(body["pod_id"], "pod-1");
        assert_eq!(body["uptime"], "0s");

        f.ok("a");
        f.ok("b");
        let body = f.get("/internal/health", None).await.json();
        assert_eq!(body["status"], "degraded", "{body}");
        assert_eq!(body["endpoints"]["healthy"], 2);
        assert_eq!(body["endpoints"]["unknown"], 1);

        f.ok("c");
        let r = f.get("/internal/health", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["status"], "healthy");

        for name in ["a", "b", "c"] {
            f.store
                .passive_failure(name, &CheckResult::ConnectRefused, Now::capture());
        }
        let r = f.get("/internal/health", None).await;
        assert_eq!(r.status, StatusCode::OK, "a report, not a probe");
        assert_eq!(r.json()["status"], "unhealthy");
        assert_eq!(r.json()["endpoints"]["unhealthy"], 3);
    }

    #[tokio::test]
    async fn no_endpoints_is_healthy() {
        let f = Fixture::empty();
        let body = f.get("/internal/health", None).await.json();
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["endpoints"]["total"], 0);
    }
}
