//! The axum [`Router`] of the proxy routes (DESIGN §5):
//! - routed by the body's `model`: the fixed [`Route`]s (`POST /v1/chat/completions`,
//!   `/v1/completions`, `/v1/embeddings`, `/v1/responses`, `/v1/messages`,
//!   `/v1/messages/count_tokens`, `/api/chat`, `/api/generate`, `/api/embed`, `/api/show`,
//!   `/api/embeddings`) and any other `POST /v1/...` ([`Route::Generic`], see `generic`);
//! - the follow-ups of a stored response (`GET`/`DELETE /v1/responses/{id}`,
//!   `POST /v1/responses/{id}/cancel`), sent to the endpoint that made it (see `responses`);
//! - answered by Hale: the catalogs (`GET /v1/models`, `GET /v1/models/{id}`,
//!   `GET /api/tags`), `GET /api/ps`, `GET /api/version` and `GET`/`HEAD /` (see `ollama`).
//!
//! Every answer carries `x-request-id` (the client's, or one Hale made); Hale's own errors are
//! in the shape of the path's API (`route::Api`, rendered by `error::render`): Ollama's on
//! `/api/*`, Anthropic's on `/v1/messages*`, OpenAI's elsewhere. A wrong method is a 405 with
//! `Allow`, and any path no route knows is a 404 — the proxy router owns the fallback of the
//! merged listener, since the api router sets none. API keys are checked in the handlers
//! rather than in a middleware layer: one branch instead of a boxed service per request.
//!
//! The router is built on the absolute-form-proof path only: axum routes on the URI's path,
//! and the upstream address always comes from the selected endpoint, so neither an
//! absolute-URI request line (`POST http://elsewhere/v1/chat/completions`) nor a `Host` header
//! can send a request anywhere but a configured backend. Paths are read raw (not
//! percent-decoded) where they are relayed or parsed for an id.

use crate::catalog;
use crate::error::{ProxyError, render};
use crate::forward::forward;
use crate::hygiene::X_REQUEST_ID;
use crate::proxy::Shared;
use crate::route::{Api, Route};
use crate::{generic, ollama, responses};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::response::Response;
use axum::routing::{MethodRouter, any, get, post};
use tokio::time::Instant;

type Shd = std::sync::Arc<Shared>;

/// `handler` for its method(s), and a 405 in `api`'s shape naming `allow` for the others.
fn only(handler: MethodRouter<Shd>, api: Api, allow: &'static str) -> MethodRouter<Shd> {
    handler.fallback(
        move |method: Method, uri: Uri, State(shared): State<Shd>, request: Request| async move {
            wrong_method(&shared, api, &method, &uri, allow, &request)
        },
    )
}

pub(crate) fn router(shared: Shd) -> Router {
    let mut router = Router::new();
    for route in Route::fixed() {
        router = router.route(
            route.path(),
            only(
                post(move |State(shared): State<Shd>, request: Request| {
                    generate(shared, route, request)
                }),
                route.api(),
                "POST",
            ),
        );
    }
    let listing = |api: Api, list: fn(&Shared) -> Response| {
        only(
            get(
                move |State(shared): State<Shd>, request: Request| async move {
                    answer(&shared, api, &request, |_| Ok(list(&shared)))
                },
            ),
            api,
            "GET, HEAD",
        )
    };
    router
        .route("/v1/models", listing(Api::OpenAi, catalog::openai_models))
        .route("/api/tags", listing(Api::Ollama, catalog::ollama_tags))
        .route(
            "/v1/models/{*id}",
            only(
                get(|State(shared): State<Shd>, request: Request| async move {
                    let id = request
                        .uri()
                        .path()
                        .strip_prefix("/v1/models/")
                        .unwrap_or("")
                        .to_owned();
                    answer(&shared, Api::OpenAi, &request, |_| {
                        catalog::openai_model(&shared, &id)
                    })
                }),
                Api::OpenAi,
                "GET, HEAD",
            ),
        )
        .route(
            "/v1/responses/{id}",
            only(
                get(|State(shared): State<Shd>, request: Request| {
                    follow_up(shared, Method::GET, "", request)
                })
                .delete(|State(shared): State<Shd>, request: Request| {
                    follow_up(shared, Method::DELETE, "", request)
                }),
                Api::OpenAi,
                "GET, HEAD, DELETE",
            ),
        )
        .route(
            "/v1/responses/{id}/cancel",
            only(
                post(|State(shared): State<Shd>, request: Request| {
                    follow_up(shared, Method::POST, "/cancel", request)
                }),
                Api::OpenAi,
                "POST",
            ),
        )
        .route(
            "/v1/{*rest}",
            any(|State(shared): State<Shd>, request: Request| async move {
                if request.method() == Method::POST && generic::clean_path(request.uri().path()) {
                    generate(shared, Route::Generic, request).await
                } else {
                    no_route(&shared, &request)
                }
            }),
        )
        .route("/api/ps", from_backends(ollama::ps))
        .route("/api/version", from_backends(ollama::version))
        .route(
            "/",
            only(
                get(|State(shared): State<Shd>, request: Request| async move {
                    with_id(ollama::root(), shared.ids.for_request(request.headers()))
                }),
                Api::Ollama,
                "GET, HEAD",
            ),
        )
        .fallback(|State(shared): State<Shd>, request: Request| async move {
            no_route(&shared, &request)
        })
        .with_state(shared)
}

/// An Ollama route answered from the backends (`ollama`): the API key, then `ask`.
fn from_backends<F, Fut>(ask: F) -> MethodRouter<Shd>
where
    F: Fn(Shd, HeaderValue) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, ProxyError>> + Send + 'static,
{
    only(
        get(
            move |State(shared): State<Shd>, request: Request| async move {
                let id = shared.ids.for_request(request.headers());
                let response = if shared.keys.admits(request.headers()) {
                    ask(shared.clone(), id.clone())
                        .await
                        .unwrap_or_else(|e| render(Api::Ollama, e))
                } else {
                    render(Api::Ollama, ProxyError::Unauthorized)
                };
                with_id(response, id)
            },
        ),
        Api::Ollama,
        "GET, HEAD",
    )
}

/// A model-routed route: forward, or answer with Hale's own error in the route's shape.
async fn generate(shared: Shd, route: Route, request: Request) -> Response {
    let started = Instant::now();
    shared.ensure_sweeper();
    let request_id = shared.ids.for_request(request.headers());
    match forward(&shared, route, request, &request_id, started).await {
        Ok(response) if route == Route::Responses => responses::learn(&shared, response),
        Ok(response) => response,
        Err(refusal) => {
            shared.stats.refused(
                refusal.served_model.as_deref(),
                refusal.endpoint.as_ref(),
                refusal.error.status(),
            );
            with_id(render(route.api(), refusal.error), request_id)
        }
    }
}

/// A follow-up of a stored response.
async fn follow_up(
    shared: Shd,
    method: Method,
    suffix: &'static str,
    request: Request,
) -> Response {
    shared.ensure_sweeper();
    let request_id = shared.ids.for_request(request.headers());
    let path = request.uri().path();
    let id = path
        .strip_prefix("/v1/responses/")
        .and_then(|rest| rest.strip_suffix(suffix))
        .unwrap_or("")
        .to_owned();
    match responses::follow_up(&shared, method, &id, suffix, request, &request_id).await {
        Ok(response) => response,
        Err(error) => with_id(render(Api::OpenAi, error), request_id),
    }
}

/// An answer Hale makes itself: the API key, then `make`.
fn answer(
    shared: &Shared,
    api: Api,
    request: &Request,
    make: impl FnOnce(&Request) -> Result<Response, ProxyError>,
) -> Response {
    let id = shared.ids.for_request(request.headers());
    let response = if shared.keys.admits(request.headers()) {
        make(request).unwrap_or_else(|e| render(api, e))
    } else {
        render(api, ProxyError::Unauthorized)
    };
    with_id(response, id)
}

fn no_route(shared: &Shared, request: &Request) -> Response {
    let id = shared.ids.for_request(request.headers());
    let path = request.uri().path();
    // An absurd path is not echoed whole.
    let shown: String = path.chars().take(256).collect();
    with_id(
        render(
            Api::of_path(path),
            ProxyError::NoRoute {
                method: request.method().to_string(),
                path: shown,
            },
        ),
        id,
    )
}

fn wrong_method(
    shared: &Shared,
    api: Api,
    method: &Method,
    uri: &Uri,
    allow: &'static str,
    request: &Request,
) -> Response {
    let id = shared.ids.for_request(request.headers());
    with_id(
        render(
            api,
            ProxyError::MethodNotAllowed {
                method: method.to_string(),
                path: uri.path().to_owned(),
                allow,
            },
        ),
        id,
    )
}

fn with_id(mut response: Response, id: HeaderValue) -> Response {
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}
