//! The operator's actions: `POST /internal/reload` (re-read the config file, as SIGHUP does)
//! and, per endpoint, `POST /internal/endpoints/{name}/drain`, `/enable` and `/check`.
//!
//! - **drain**: the endpoint gets no new requests (selection skips it and the catalogs stop
//!   listing it through it); requests and streams already on it finish. Its health checks go
//!   on, so `/enable` puts back an endpoint whose health is current. A drain is a decision of
//!   this replica about that name: it survives a reload (even one that points the name at a
//!   new URL) and is shown as `drained` in `/internal/status/endpoints` and as
//!   `hale_endpoint_drained`. It is not shared through Redis: behind a Service, drain every
//!   replica (docs/OPERATIONS.md shows how), or remove the endpoint from the config.
//! - **check**: runs one check now on the endpoint's own task and answers with what it found
//!   and the state after it.
//! - **reload**: 200 with what changed (`added`, `removed`, `updated`, `replaced`,
//!   `unchanged`, `restart_required`), or 422 with the reason when the new file is refused —
//!   the running config then stays.
//!
//! Decision where DESIGN is silent: these change what the gateway does, so they need the
//! admin token even when the read-only `/internal/` pages are open: with no
//! `server.admin_token` configured they answer 403 and say so. They are `POST` only.

use crate::ApiState;
use crate::error::ApiError;
use crate::format::millis;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hale_core::HealthState;
use hale_probe::CheckNowError;
use serde::Serialize;
use serde_json::json;

/// The `type` of an admin action refused because no admin token is configured.
pub const PERMISSION_ERROR: &str = "permission_error";
/// The `type` of a reload refused because the new config is invalid.
pub const INVALID_CONFIG_ERROR: &str = "invalid_config_error";

fn require_token(state: &ApiState) -> Result<(), ApiError> {
    if state.server().admin_token.expose().is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            PERMISSION_ERROR,
            "admin actions need server.admin_token to be set",
        ));
    }
    Ok(())
}

fn unknown_endpoint(name: &str) -> ApiError {
    ApiError::not_found(format!("no endpoint named '{name}' is configured"))
}

fn unavailable(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable_error",
        format!("{what} is not available in this process"),
    )
}

/// `POST /internal/endpoints/{name}/drain`.
pub(crate) async fn drain(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_drained(&state, &name, true)
}

/// `POST /internal/endpoints/{name}/enable`.
pub(crate) async fn enable(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_drained(&state, &name, false)
}

fn set_drained(state: &ApiState, name: &str, drained: bool) -> Result<Response, ApiError> {
    require_token(state)?;
    let before = state
        .store()
        .set_drained(name, drained)
        .ok_or_else(|| unknown_endpoint(name))?;
    if before != drained {
        let action = if drained { "drained" } else { "enabled" };
        tracing::info!(endpoint = name, "endpoint {action} by an operator");
    }
    let in_flight = state.admin().map_or(0, |a| a.in_flight(name));
    Ok(Json(json!({
        "endpoint": name,
        "drained": drained,
        "changed": before != drained,
        "in_flight": in_flight,
    }))
    .into_response())
}

#[derive(Serialize)]
struct CheckView<'a> {
    endpoint: &'a str,
    ok: bool,
    outcome: String,
    error: Option<String>,
    latency_ms: f64,
    status: Option<HealthState>,
    reason: Option<String>,
    transition: Option<serde_json::Value>,
    models: Option<Vec<String>>,
}

/// `POST /internal/endpoints/{name}/check`.
pub(crate) async fn check(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    require_token(&state)?;
    let admin = state
        .admin()
        .ok_or_else(|| unavailable("checking on request"))?;
    let found = admin.check(&name).await.map_err(|e| match e {
        CheckNowError::UnknownEndpoint => unknown_endpoint(&name),
        CheckNowError::Stopped => unavailable("checking (the gateway is stopping)"),
        CheckNowError::Passive => ApiError::new(
            StatusCode::CONFLICT,
            crate::error::INVALID_REQUEST_ERROR,
            format!("endpoint '{name}' is passive (check: passive): it has no probe"),
        ),
    })?;
    let result = &found.outcome.result;
    let reason = result.reason();
    let view = CheckView {
        endpoint: &name,
        ok: reason.is_none(),
        outcome: reason
            .as_ref()
            .map_or_else(|| "ok".to_owned(), |r| r.as_str().into_owned()),
        error: result.error_text().map(|e| e.to_string()),
        latency_ms: millis(found.outcome.latency),
        status: found.status.as_ref().map(|s| s.health.state),
        reason: found
            .status
            .as_ref()
            .and_then(|s| s.health.reason.as_ref())
            .map(|r| r.as_str().into_owned()),
        transition: found
            .event
            .as_ref()
            .map(|e| json!({"from": e.from, "to": e.to})),
        models: found
            .status
            .as_ref()
            .map(|s| s.models().iter().map(|m| m.to_string()).collect()),
    };
    Ok(Json(view).into_response())
}

/// `POST /internal/reload`.
pub(crate) async fn reload(State(state): State<ApiState>) -> Result<Response, ApiError> {
    require_token(&state)?;
    let admin = state.admin().ok_or_else(|| unavailable("reloading"))?;
    match admin.reload().await {
        Ok(report) => Ok(Json(json!({"reloaded": true, "changes": report})).into_response()),
        Err(why) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            INVALID_CONFIG_ERROR,
            format!("config not reloaded, the running one stays: {why}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::providers::{AdminActions, ReloadReport};
    use crate::testing::{ADMIN_TOKEN, Fixture};
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use hale_core::coordination::BoxFuture;
    use hale_core::{CheckOutcome, CheckResult};
    use hale_probe::{CheckNowError, ManualCheck};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// Reloads succeed or fail as told; checks time out on `a` and know nothing else.
    struct FakeAdmin {
        store: Arc<hale_core::HealthStore>,
        refuse: AtomicBool,
    }

    impl AdminActions for FakeAdmin {
        fn reload(&self) -> BoxFuture<'_, Result<ReloadReport, String>> {
            Box::pin(async move {
                if self.refuse.load(Ordering::SeqCst) {
                    Err("line 3: endpoints[0]: unknown field urll".to_owned())
                } else {
                    Ok(ReloadReport {
                        unchanged: 3,
                        restart_required: vec!["server.listen".to_owned()],
                        ..ReloadReport::default()
                    })
                }
            })
        }

        fn check<'a>(
            &'a self,
            endpoint: &'a str,
        ) -> BoxFuture<'a, Result<ManualCheck, CheckNowError>> {
            Box::pin(async move {
                if endpoint != "a" {
                    return Err(CheckNowError::UnknownEndpoint);
                }
                let outcome = CheckOutcome::failed(Duration::from_millis(2), CheckResult::Timeout);
                let event = self.store.observe("a", &outcome, hale_core::Now::capture());
                Ok(ManualCheck {
                    outcome,
                    event,
                    status: self.store.snapshot().get("a").cloned(),
                })
            })
        }

        fn in_flight(&self, _endpoint: &str) -> usize {
            2
        }
    }

    fn fixture(token: &str) -> (Fixture, Arc<FakeAdmin>) {
        let mut admin = None;
        let f = Fixture::with_state(token, |s| {
            let a = Arc::new(FakeAdmin {
                store: s.store().clone(),
                refuse: AtomicBool::new(false),
            });
            admin = Some(a.clone());
            s.with_admin(a)
        });
        (f, admin.unwrap())
    }

    async fn post(f: &Fixture, path: &str, token: Option<&str>) -> crate::testing::Reply {
        let mut req = Request::post(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        f.request(req.body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn drain_and_enable_flip_the_store_and_show_in_status() {
        let (f, _) = fixture(ADMIN_TOKEN);
        f.ok("a");
        let r = post(&f, "/internal/endpoints/a/drain", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({"endpoint": "a", "drained": true, "changed": true, "in_flight": 2})
        );
        let snap = f.store.snapshot();
        assert!(snap.get("a").unwrap().health.drained);
        let list = f
            .get("/internal/status/endpoints", Some(ADMIN_TOKEN))
            .await
            .json();
        assert_eq!(list["endpoints"][0]["drained"], true);
        assert_eq!(list["endpoints"][0]["status"], "healthy");
        let again = post(&f, "/internal/endpoints/a/drain", Some(ADMIN_TOKEN)).await;
        assert_eq!(again.json()["changed"], false);

        let r = post(&f, "/internal/endpoints/a/enable", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.json()["drained"], false);
        assert!(!f.store.snapshot().get("a").unwrap().health.drained);

        let r = post(&f, "/internal/endpoints/zz/drain", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["type"], "not_found_error");
    }

    #[tokio::test]
    async fn actions_need_the_token_and_a_configured_one() {
        let (f, _) = fixture(ADMIN_TOKEN);
        for path in [
            "/internal/reload",
            "/internal/endpoints/a/drain",
            "/internal/endpoints/a/enable",
            "/internal/endpoints/a/check",
        ] {
            let r = post(&f, path, None).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
            let r = post(&f, path, Some("wrong")).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
            let r = f.get(path, Some(ADMIN_TOKEN)).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        }
        assert!(!f.store.snapshot().get("a").unwrap().health.drained);

        let (open, _) = fixture("");
        let r = post(&open, "/internal/endpoints/a/drain", None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(r.json()["error"]["type"], "permission_error");
        assert!(!open.store.snapshot().get("a").unwrap().health.drained);
    }

    #[tokio::test]
    async fn check_reports_the_outcome_and_the_state_after() {
        let (f, _) = fixture(ADMIN_TOKEN);
        f.ok("a");
        let r = post(&f, "/internal/endpoints/a/check", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let body = r.json();
        assert_eq!(body["endpoint"], "a");
        assert_eq!(body["ok"], false);
        assert_eq!(body["outcome"], "timeout");
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(
            body["transition"],
            serde_json::json!({"from": "healthy", "to": "unhealthy"})
        );
        assert_eq!(body["latency_ms"], 2.0);
        let r = post(&f, "/internal/endpoints/b/check", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn reload_reports_changes_or_the_refusal() {
        let (f, admin) = fixture(ADMIN_TOKEN);
        let r = post(&f, "/internal/reload", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.json()["changes"]["unchanged"], 3);
        assert_eq!(r.json()["changes"]["restart_required"][0], "server.listen");
        admin.refuse.store(true, Ordering::SeqCst);
        let r = post(&f, "/internal/reload", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.json()["error"]["type"], "invalid_config_error");
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("unknown field urll")
        );
    }

    #[tokio::test]
    async fn without_admin_actions_wired_reload_and_check_are_503() {
        let f = Fixture::new(ADMIN_TOKEN);
        for path in ["/internal/reload", "/internal/endpoints/a/check"] {
            let r = post(&f, path, Some(ADMIN_TOKEN)).await;
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        }
        let r = post(&f, "/internal/endpoints/a/drain", Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
}
