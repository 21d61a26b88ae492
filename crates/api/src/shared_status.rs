//! `/health/shared-status`: how this replica coordinates health checks with the others, in
//! LiteLLM's shape so dashboards and scripts written for LiteLLM keep working.
//!
//! With a [`SharedStatusView`](crate::SharedStatusView) wired in, its body is returned as is.
//! Without one the replica is in local mode and the body says so: shared checking off, no
//! Redis, no lock and no cache (their fields null or false), every check run by this pod
//! (`checks_performed` is the sum of checks over all endpoints), none skipped and no Redis
//! error (`last_error` null, `errors_total` 0). No token is
//! needed, as with LiteLLM's route and DESIGN §5.

use crate::ApiState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `GET /health/shared-status`.
pub(crate) async fn show(State(state): State<ApiState>) -> Response {
    let body = match state.shared() {
        Some(shared) => shared.shared_status(),
        None => local_body(&state),
    };
    Json(body).into_response()
}

fn local_body(state: &ApiState) -> Value {
    let checks: u64 = state
        .store()
        .snapshot()
        .endpoints
        .iter()
        .map(|e| e.health.checks_total)
        .sum();
    json!({
        "shared_health_check_enabled": false,
        "status": {
            "pod_id": state.store().pod_id().as_ref(),
            "mode": "local",
            "redis_available": false,
            "lock_ttl": null,
            "cache_ttl": null,
            "lock_owner": null,
            "lock_in_progress": false,
            "cache_available": false,
            "cache_age_seconds": null,
            "last_checked_by": null,
            "checks_performed": checks,
            "checks_skipped": 0,
            "last_error": null,
            "errors_total": 0,
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::testing::{Fixture, SharedFake};
    use axum::http::StatusCode;
    use serde_json::json;
    use std::sync::Arc;

    #[tokio::test]
    async fn local_mode_body() {
        let f = Fixture::new("t");
        f.ok("a");
        f.ok("a");
        f.ok("b");
        let r = f.get("/health/shared-status", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.json(),
            json!({
                "shared_health_check_enabled": false,
                "status": {
                    "pod_id": "pod-1",
                    "mode": "local",
                    "redis_available": false,
                    "lock_ttl": null,
                    "cache_ttl": null,
                    "lock_owner": null,
                    "lock_in_progress": false,
                    "cache_available": false,
                    "cache_age_seconds": null,
                    "last_checked_by": null,
                    "checks_performed": 3,
                    "checks_skipped": 0,
                    "last_error": null,
                    "errors_total": 0
                }
            })
        );
    }

    #[tokio::test]
    async fn shared_view_body_is_passed_through() {
        let f = Fixture::with_state("", |s| s.with_shared(Arc::new(SharedFake)));
        let body = f.get("/health/shared-status", None).await.json();
        assert_eq!(body["shared_health_check_enabled"], true);
        assert_eq!(body["status"]["mode"], "sharded");
        assert_eq!(body["status"]["lock_ttl"], 60);
    }
}
