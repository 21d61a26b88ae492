//! The axum [`Router`] of the proxy routes (DESIGN §5): the six generation routes
//! (`POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/api/chat`,
//! `/api/generate`, `/api/embed`) and the two catalogs (`GET /v1/models`, `GET /api/tags`).
//!
//! Every answer carries `x-request-id` (the client's, or one Hale made); a wrong method is a
//! JSON 405 with `Allow`, and any path no route knows is a JSON 404 — the proxy router owns
//! the fallback of the merged listener, since the api router sets none. API keys are checked
//! in the handlers rather than in a middleware layer: one branch instead of a boxed service
//! per request.
//!
//! The router is built on the absolute-form-proof path only: axum routes on the URI's path,
//! and the upstream address always comes from the selected endpoint, so neither an
//! absolute-URI request line (`POST http://elsewhere/v1/chat/completions`) nor a `Host` header
//! can send a request anywhere but a configured backend.

use crate::catalog;
use crate::error::ProxyError;
use crate::forward::forward;
use crate::hygiene::X_REQUEST_ID;
use crate::proxy::Shared;
use crate::route::Route;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

type Shd = std::sync::Arc<Shared>;

pub(crate) fn router(shared: Shd) -> Router {
    let mut router = Router::new();
    for route in Route::ALL {
        router = router.route(
            route.path(),
            post(move |State(shared): State<Shd>, request: Request| {
                generate(shared, route, request)
            })
            .fallback(
                |method: Method, uri: Uri, State(shared): State<Shd>, request: Request| async move {
                    wrong_method(&shared, &method, &uri, "POST", &request)
                },
            ),
        );
    }
    router
        .route(
            "/v1/models",
            get(|State(shared): State<Shd>, request: Request| async move {
                listing(&shared, &request, catalog::openai_models)
            })
            .fallback(
                |method: Method, uri: Uri, State(shared): State<Shd>, request: Request| async move {
                    wrong_method(&shared, &method, &uri, "GET, HEAD", &request)
                },
            ),
        )
        .route(
            "/api/tags",
            get(|State(shared): State<Shd>, request: Request| async move {
                listing(&shared, &request, catalog::ollama_tags)
            })
            .fallback(
                |method: Method, uri: Uri, State(shared): State<Shd>, request: Request| async move {
                    wrong_method(&shared, &method, &uri, "GET, HEAD", &request)
                },
            ),
        )
        .fallback(
            |method: Method, uri: Uri, State(shared): State<Shd>, request: Request| async move {
                let id = shared.ids.for_request(request.headers());
                with_id(
                    ProxyError::NoRoute {
                        method: method.to_string(),
                        path: uri.path().to_owned(),
                    }
                    .into_response(),
                    id,
                )
            },
        )
        .with_state(shared)
}

/// A generation route: forward, or answer with Hale's own error.
async fn generate(shared: Shd, route: Route, request: Request) -> Response {
    let started = Instant::now();
    shared.ensure_sweeper();
    let request_id = shared.ids.for_request(request.headers());
    match forward(&shared, route, request, &request_id, started).await {
        Ok(response) => response,
        Err(refusal) => {
            shared.stats.refused(
                refusal.served_model.as_deref(),
                refusal.endpoint.as_ref(),
                refusal.error.status(),
            );
            with_id(refusal.error.into_response(), request_id)
        }
    }
}

/// A catalog route: the API key, then the list.
fn listing(shared: &Shared, request: &Request, list: fn(&Shared) -> Response) -> Response {
    let id = shared.ids.for_request(request.headers());
    let response = if shared.keys.admits(request.headers()) {
        list(shared)
    } else {
        ProxyError::Unauthorized.into_response()
    };
    with_id(response, id)
}

fn wrong_method(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    allow: &'static str,
    request: &Request,
) -> Response {
    let id = shared.ids.for_request(request.headers());
    with_id(
        ProxyError::MethodNotAllowed {
            method: method.to_string(),
            path: uri.path().to_owned(),
            allow,
        }
        .into_response(),
        id,
    )
}

fn with_id(mut response: Response, id: HeaderValue) -> Response {
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}
