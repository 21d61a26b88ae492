//! [`router`]: every route of this crate on one `axum::Router`, ready to be merged with the
//! proxy's routes by the binary.
//!
//! Open routes (no token, ever): `/livez`, `/readyz`, `/health/liveliness`,
//! `/health/readiness`, `/health/shared-status`, `/internal/health`, `/metrics`, and the status
//! page `/ui` with its assets `/ui/{name}` (code only, no data: see [`ui`]). Guarded routes
//! (the admin token, when one is set): everything else under `/internal/` (the event stream
//! `/internal/events/stream` too), including paths that do not exist, so that without the
//! token nobody can even probe which admin paths exist.
//! Unknown paths under `/internal/` and `/health/` are a JSON 404 and a wrong method a JSON 405,
//! both in [`ApiError`]'s shape. The router sets no fallback of its own: the binary merges it
//! with the proxy's router, and axum allows only one fallback in a merge.

use crate::error::ApiError;
use crate::{
    ApiState, admin, auth, events, events_stream, health_routes, metrics, shared_status, stats,
    status, ui,
};
use axum::Router;
use axum::handler::Handler;
use axum::http::{Method, Uri};
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, any, get, post};

/// All of the crate's routes; see the module docs for which need the admin token.
pub fn router(state: ApiState) -> Router {
    let guarded = Router::new()
        .route("/internal/status", get_only(status::summary))
        .route("/internal/status/endpoints", get_only(status::endpoints))
        .route("/internal/stats/models", get_only(stats::models))
        .route("/internal/events", get_only(events::list))
        .route("/internal/events/stream", get_only(events_stream::stream))
        .route("/internal/reload", post_only(admin::reload))
        .route("/internal/endpoints/{name}/drain", post_only(admin::drain))
        .route(
            "/internal/endpoints/{name}/enable",
            post_only(admin::enable),
        )
        .route("/internal/endpoints/{name}/check", post_only(admin::check))
        .route("/internal/{*rest}", any(not_found))
        .route_layer(from_fn_with_state(state.clone(), auth::require_admin_token));
    Router::new()
        .route("/livez", get_only(health_routes::livez))
        .route("/health/liveliness", get_only(health_routes::livez))
        .route("/readyz", get_only(health_routes::readyz))
        .route("/health/readiness", get_only(health_routes::readyz))
        .route("/internal/health", get_only(health_routes::internal_health))
        .route("/health/shared-status", get_only(shared_status::show))
        .route("/health/{*rest}", any(not_found))
        .route("/metrics", get_only(metrics::scrape))
        .route("/ui", get_only(ui::page))
        .route("/ui/{name}", get_only(ui::asset))
        .merge(guarded)
        .with_state(state)
}

/// A GET (and HEAD) route whose other methods get a JSON 405; axum adds `Allow` itself.
fn get_only<H, T>(handler: H) -> MethodRouter<ApiState>
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    get(handler).fallback(method_not_allowed)
}

fn post_only<H, T>(handler: H) -> MethodRouter<ApiState>
where
    H: Handler<T, ApiState>,
    T: 'static,
{
    post(handler).fallback(method_not_allowed)
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use crate::testing::{ADMIN_TOKEN, Fixture, SECRET_KEY};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use hale_core::{CheckOutcome, CheckResult, Now};
    use serde_json::json;
    use std::time::Duration;

    const ALL_ROUTES: [&str; 11] = [
        "/livez",
        "/readyz",
        "/health/liveliness",
        "/health/readiness",
        "/health/shared-status",
        "/internal/health",
        "/internal/status",
        "/internal/status/endpoints",
        "/internal/stats/models",
        "/internal/events",
        "/metrics",
    ];

    #[tokio::test]
    async fn every_route_answers() {
        let f = Fixture::new(ADMIN_TOKEN);
        f.store.mark_ready();
        for path in ALL_ROUTES {
            let r = f.get(path, Some(ADMIN_TOKEN)).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
            if path != "/metrics" {
                assert!(
                    r.header("content-type").starts_with("application/json"),
                    "{path}"
                );
                assert!(r.json().is_object(), "{path}");
            }
        }
    }

    #[tokio::test]
    async fn no_secret_in_any_response() {
        let f = Fixture::new(ADMIN_TOKEN);
        f.store.mark_ready();
        f.ok("a");
        f.store.observe(
            "a",
            &CheckOutcome::failed(Duration::from_millis(1), CheckResult::Timeout),
            Now::capture(),
        );
        f.store
            .passive_failure("b", &CheckResult::ConnectRefused, Now::capture());
        for path in ALL_ROUTES {
            let text = f.get(path, Some(ADMIN_TOKEN)).await.text();
            assert!(
                !text.contains(SECRET_KEY),
                "{path} leaks the api key: {text}"
            );
            assert!(!text.contains(ADMIN_TOKEN), "{path} leaks the admin token");
        }
        // The secret is really configured: a test that could not fail would prove nothing.
        let snapshot = f.store.snapshot();
        assert_eq!(
            snapshot.get("a").unwrap().endpoint.api_key.expose(),
            SECRET_KEY
        );
    }

    #[tokio::test]
    async fn unknown_paths_are_json_404s() {
        let f = Fixture::new(ADMIN_TOKEN);
        for path in ["/internal/nope", "/internal/status/nope", "/health/nope"] {
            let r = f.get(path, Some(ADMIN_TOKEN)).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(
                r.json(),
                json!({"error": {
                    "message": format!("no route for GET {path}"),
                    "type": "not_found_error",
                    "code": 404
                }})
            );
        }
    }

    #[tokio::test]
    async fn wrong_methods_are_json_405s() {
        let f = Fixture::new("");
        for path in ["/livez", "/internal/status", "/metrics"] {
            let r = f
                .request(Request::post(path).body(Body::empty()).unwrap())
                .await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(r.header("allow"), "GET,HEAD", "{path}");
            assert_eq!(r.json()["error"]["code"], 405, "{path}");
        }
        let r = f
            .request(Request::head("/livez").body(Body::empty()).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
}
