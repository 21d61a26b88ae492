//! One generation request, from arrival to the backend's answer: auth, the buffered body, the
//! model, then the failover loop over the candidates [`select`](crate::select) offers.
//!
//! The loop: select and claim an endpoint, send the buffered body there, and
//! - on response headers (any status), stop: the answer goes to the client as it streams in,
//!   and nothing about this request is retried from here on. A 5xx passes through to the
//!   client. A 502/503/504 is outlier detection's signal (it ejects through core, within
//!   `max_ejection_percent`), so for the breaker it is an answer like any other; another
//!   5xx counts as a failure on the breaker; any other answer resets it.
//! - on a connect-level failure (refused, connect timeout, DNS, TLS handshake: nothing was
//!   sent), mark the endpoint `unhealthy` at once through core (a passive signal that checks
//!   and every other request see in the next snapshot), count the failure on its breaker,
//!   and move on to the next candidate. Each endpoint is tried at most once.
//! - once the request was sent, it is never sent anywhere again: a backend that dropped it
//!   without an answer (closed or reset; the upstream client has already retried the one
//!   case where the backend cannot have read it, a stale keep-alive connection) or answered
//!   with a malformed head gets the client a 502, one that sent no head within its
//!   `first_byte_timeout` a 504, each naming the endpoint. A backend may have acted on a
//!   POST it then failed to answer, and a request that kills the backend it reaches (a query
//!   of death) would otherwise take down every endpoint of its model in turn. Such a failure
//!   does not mark the endpoint by itself: it counts on the breaker and asks core for a
//!   prompt probe check ([`HealthStore::request_check`](hale_core::HealthStore)), whose
//!   result decides.
//!
//! Every outcome is also recorded for outlier detection (one call per site: a 502/503/504 or
//! a failure after sending here, the rest when the body ends; see `runtime`), which may
//! eject the endpoint through core. Connect failures are not recorded there: they mark the
//! endpoint at once already.
//!
//! The body is replayed from the same `Bytes` on every attempt (a reference-count increment),
//! the client's headers are cleaned once and written into each attempt's request head, and
//! each attempt reads a fresh snapshot so it sees what the previous failure (or another
//! request's) just changed.
//! No lock is held across an await: the store is read through its `ArcSwap`, the breaker lock
//! is taken only inside a claim's calls.
//!
//! When no candidate is left: 404 if no endpoint serves the model on this route and nothing
//! was tried, otherwise 503 with `Retry-After` (the shortest check interval of the endpoints
//! that serve it: the soonest their state can change).

use crate::body;
use crate::error::ProxyError;
use crate::hygiene::{self, UpstreamFilter, X_HALE_POD, X_REQUEST_ID};
use crate::proxy::Shared;
use crate::route::Route;
use crate::runtime::EndpointRuntime;
use crate::select::{Excluded, Selection};
use crate::stream::UpstreamBody;
use crate::upstream::{Outgoing, SendError};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hale_core::{CheckResult, Now, Signal};
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};
use tokio::time::Instant;

/// Why a request was answered by Hale itself, and whether its model is one some endpoint
/// serves (for the metrics label).
#[derive(Debug)]
pub struct Refusal {
    pub error: ProxyError,
    pub served_model: Option<String>,
    /// The endpoint (runtime id) whose failure this answer reports: a 502 or 504.
    pub endpoint: Option<usize>,
}

impl From<ProxyError> for Refusal {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            served_model: None,
            endpoint: None,
        }
    }
}

/// Handles one request on a generation route; see the module docs.
pub async fn forward(
    shared: &'static Shared,
    route: Route,
    request: Request,
    request_id: &HeaderValue,
    started: Instant,
) -> Result<Response, Refusal> {
    if !shared.keys.admits(request.headers()) {
        return Err(ProxyError::Unauthorized.into());
    }
    let (parts, request_body) = request.into_parts();
    let read = body::read_limited(&parts.headers, request_body, shared.max_body);
    let deadline = started + hale_core::config::clock_safe(shared.body_timeout);
    let bytes = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ProxyError::BodyTimeout(shared.body_timeout))??;
    let fields = body::parse(&bytes)?;
    let model: &str = &fields.model;
    tracing::trace!(
        model,
        stream = fields.stream.unwrap_or(route.streams_by_default()),
        route = route.path(),
        "proxying"
    );
    let filter = UpstreamFilter::new(&parts.headers, shared.keys.enabled());
    let query = parts.uri.query();

    let mut excluded = Excluded::default();
    let mut failed: Option<&'static EndpointRuntime> = None;
    loop {
        // The first attempt starts when the request arrived; later ones read the clock again.
        let now = if failed.is_none() {
            started
        } else {
            Instant::now()
        };
        let snapshot = shared.store.snapshot();
        let table = shared.table.load();
        let selection =
            shared
                .selector
                .select(&snapshot, &table.runtimes, model, route, &mut excluded, now);
        drop(table);
        let mut claim = match selection {
            Selection::Picked { claim } => claim,
            Selection::NotServed if failed.is_none() => {
                let on = if route.ollama_only() {
                    " on an ollama endpoint"
                } else {
                    ""
                };
                return Err(ProxyError::ModelNotFound(format!(
                    "model '{model}' is not served by any configured endpoint{on}"
                ))
                .into());
            }
            Selection::NotServed => {
                return Err(unavailable(model, std::time::Duration::from_secs(1)));
            }
            Selection::Unavailable { retry_after } => {
                return Err(unavailable(model, retry_after));
            }
        };
        if let Some(previous) = failed.take() {
            shared.stats.retried(previous.id);
        }
        // The claim holds the runtime for as long as the process lives; borrowing it
        // separately leaves the claim free to record its outcome below.
        let rt = claim.runtime();
        excluded.insert(rt.id);
        let endpoint_has_key = rt.auth.is_some();
        let keep = |name: &HeaderName| filter.forwards(name, endpoint_has_key);
        let ids = [(&X_REQUEST_ID, request_id), (&X_HALE_POD, &shared.pod)];
        let with_key;
        let added: &[(&HeaderName, &HeaderValue)] = match &rt.auth {
            Some(auth) => {
                with_key = [ids[0], ids[1], (&AUTHORIZATION, auth)];
                &with_key
            }
            None => &ids,
        };
        let outgoing = Outgoing {
            route,
            query,
            headers: &parts.headers,
            keep: &keep,
            added,
            body: &bytes,
        };
        match shared.upstream.send(&rt.dest, &outgoing, now).await {
            Ok((head, conn)) => {
                let status = head.status;
                if status.is_server_error() && Signal::of_status(status.as_u16()).is_none() {
                    if claim.failure(Instant::now()) {
                        tracing::warn!(endpoint = %rt.endpoint.name, status = status.as_u16(), "circuit breaker opened after repeated failures");
                    }
                } else {
                    if claim.is_trial() {
                        tracing::info!(endpoint = %rt.endpoint.name, "circuit breaker closed: the trial request succeeded");
                    }
                    claim.success();
                }
                shared.stats.answered(model, rt.id, status);
                let watch = rt.watch(&shared.store, route.path(), status.as_u16());
                let mut headers = head.headers;
                hygiene::add_downstream(&mut headers, &rt.name_header, request_id);
                let body = UpstreamBody::new(
                    conn,
                    head.framing,
                    head.reusable,
                    &rt.dest.pool,
                    claim,
                    started,
                    watch,
                );
                let mut response = Response::new(Body::new(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                return Ok(response);
            }
            Err(SendError::Connect(result)) => {
                // Its other idle connections are most likely as dead as this one.
                rt.dest.pool.clear();
                let opened = claim.failure(Instant::now());
                let name = rt.endpoint.name.clone();
                drop(claim);
                tracing::debug!(endpoint = %name, error = ?result, "request path: cannot reach the backend, trying the next candidate");
                if opened {
                    tracing::warn!(endpoint = %name, "circuit breaker opened after repeated failures");
                }
                mark_unhealthy(shared, &name, &result);
                failed = Some(rt);
            }
            Err(sent) => {
                let opened = claim.failure(Instant::now());
                drop(claim);
                let name = &rt.endpoint.name;
                let error = match &sent {
                    SendError::TimedOut(after) => ProxyError::GatewayTimeout(format!(
                        "endpoint '{name}' sent no response within {} (first_byte_timeout)",
                        humantime::format_duration(*after)
                    )),
                    SendError::Malformed(why) => ProxyError::BadGateway(format!(
                        "endpoint '{name}' sent a malformed response: {why}"
                    )),
                    SendError::Dropped(_) | SendError::Connect(_) => {
                        ProxyError::BadGateway(format!(
                            "endpoint '{name}' closed the connection without answering; the \
                             request was not sent again, since the backend may have acted on it"
                        ))
                    }
                };
                tracing::warn!(endpoint = %name, error = ?sent, status = error.status().as_u16(), "request path: the backend failed a request it was sent; not sent again");
                if opened {
                    tracing::warn!(endpoint = %name, "circuit breaker opened after repeated failures");
                }
                shared.store.request_check(name);
                rt.record_outcome(
                    &shared.store,
                    crate::runtime::sent_failure(&sent),
                    route.path(),
                );
                return Err(Refusal {
                    error,
                    served_model: Some(model.to_owned()),
                    endpoint: Some(rt.id),
                });
            }
        }
    }
}

/// A passive failure: the endpoint turns unhealthy at once, unless the snapshot already shows
/// it out of rotation (then there is nothing to change and the store lock is not taken).
fn mark_unhealthy(shared: &Shared, name: &str, result: &CheckResult) {
    let routable = shared
        .store
        .snapshot()
        .get(name)
        .is_some_and(|s| s.health.state.is_routable());
    if !routable {
        return;
    }
    if let Some(event) = shared.store.passive_failure(name, result, Now::capture()) {
        tracing::warn!(
            endpoint = name,
            from = %event.from,
            to = %event.to,
            reason = ?event.reason.as_ref().map(|r| r.as_str()),
            "request path: connection failure, endpoint marked unhealthy"
        );
    }
}

fn unavailable(model: &str, retry_after: std::time::Duration) -> Refusal {
    Refusal {
        error: ProxyError::Unavailable {
            message: format!("no healthy endpoint can serve model '{model}' right now"),
            retry_after,
        },
        served_model: Some(model.to_owned()),
        endpoint: None,
    }
}
