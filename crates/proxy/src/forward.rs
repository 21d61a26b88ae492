//! One generation request, from arrival to the backend's answer: auth, the buffered body, the
//! model, then the failover loop over the candidates [`select`](crate::select) offers.
//!
//! The loop: select and claim an endpoint, send the buffered body there, and
//! - on response headers, the answer goes to the client as it streams in — unless it is a
//!   status `proxy.retry_on` lists (default 429, 502, 503, 504), this request has not been
//!   retried yet, the retry budget ([`crate::retry`]) has room, and another endpoint serving
//!   the model can be claimed now: then the answer is read whole (at most 64 KiB within 2 s,
//!   so a small error body keeps its connection; anything bigger or slower is dropped with
//!   its connection) and the request goes to that endpoint once more. Its answer, whatever
//!   it is, goes to the client; if it cannot be made after all (the new endpoint refuses the
//!   connection and no other is left, or drops the request) the client gets the answer the
//!   retry replaced, as the backend sent it. No byte reaches the client before this decision.
//!   A 429 also holds the endpoint out of rotation until its `Retry-After` (whole seconds;
//!   one check interval without one; bounded by `max_backoff`) through
//!   [`HealthStore::rate_limited`](hale_core::HealthStore), without counting a failure. A
//!   502/503/504 is outlier detection's signal (recorded before the retry decision, so a
//!   retried answer counts too; it ejects through core, within `max_ejection_percent`), so
//!   for the breaker it is an answer like any other; another 5xx counts as a failure on the
//!   breaker; any other answer resets it.
//! - on a connect that failed because Hale has no file descriptor left (EMFILE/ENFILE), a
//!   503 at once: the backend is not to blame, so it is not marked, and another endpoint
//!   would fail the same way (a WARN at most once a minute says so).
//! - on a connect-level failure (refused, connect timeout, DNS, TLS handshake: nothing was
//!   sent), mark the endpoint `unhealthy` at once through core (a passive signal that checks
//!   and every other request see in the next snapshot), count the failure on its breaker,
//!   and move on to the next candidate (`connect_failure` in `retry_on`, the default; this
//!   failover is not charged to the retry budget, since nothing reached a backend). Each
//!   endpoint is tried at most once.
//! - once the request was sent, it is never sent again after the backend dropped it
//!   without an answer (closed or reset; the upstream client has already retried the one
//!   case where the backend cannot have read it, a stale keep-alive connection) or answered
//!   with a malformed head: the client gets a 502 naming the endpoint. One that sent no head
//!   within its `first_byte_timeout` gets a 504, or — only when `retry_on` lists
//!   `first_byte_timeout` — one retry elsewhere under the same rules as a status. A backend
//!   may have acted on a POST it then failed to answer, and a request that kills the
//!   backend it reaches (a query of death) would otherwise take down every endpoint of its
//!   model in turn. Such a failure does not mark the endpoint by itself: it counts on the
//!   breaker and asks core for a prompt probe check
//!   ([`HealthStore::request_check`](hale_core::HealthStore)), whose result decides.
//! - when no candidate is left and some endpoint of the model is about to be routable
//!   (loading, recovering, just failed with a check due, rate-limited or breaker
//!   half-opening within the wait: see [`crate::queue`]), the request waits up to `proxy.queue_timeout` for the
//!   store's next change and selects again (endpoints that were sent it stay excluded;
//!   one that only refused the connection may be tried again).
//!
//! Every retry is counted in `hale_proxy_retries_total{endpoint,reason}` and per model for
//! `/internal/stats/models`; a retry the budget refused is counted per model.
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
//! Model catalog freshness (the request path's part; see `hale_core::discovery`):
//! - a request naming a model no endpoint serves waits once for a rediscovery of the
//!   endpoints that could serve the route ([`crate::select::rediscover`]: rate limited per
//!   endpoint, bounded) and selects again before it is answered 404;
//! - a 404 whose small body says "model not found" ([`crate::model_gone`]) drops that model
//!   from the endpoint's discovered list at once
//!   ([`HealthStore::forget_model`](hale_core::HealthStore)), asks for a rediscovery (for a
//!   static list, a prompt check, which reports `model_missing`), and the request goes to
//!   the next endpoint serving the model, like a connect failure: such an answer means the
//!   backend did not act on the request, so sending it elsewhere cannot do it twice; each
//!   endpoint is tried at most once, and it is not charged to the retry budget. With none
//!   left the client gets the backend's 404 as it was sent. Only a 404 framed by a
//!   `Content-Length` of at most 16 KiB is read (within 2 s; one that is not whole in time
//!   is a 502); a chunked, unframed or bigger 404 is relayed as it streams, unread.
//!
//! When no candidate is left (and no wait helps): 404 if no endpoint serves the model on this
//! route and nothing was tried, otherwise 503 with `Retry-After` (the shortest check interval of the endpoints
//! that serve it: the soonest their state can change).

use crate::body;
use crate::config::RetryOn;
use crate::error::ProxyError;
use crate::hygiene::{self, UpstreamFilter, X_HALE_POD, X_REQUEST_ID};
use crate::proxy::Shared;
use crate::retry::RetryToken;
use crate::route::Route;
use crate::runtime::Claim;
use crate::runtime::EndpointRuntime;
use crate::select::{Excluded, Selection};
use crate::stream::UpstreamBody;
use crate::upstream::{Outgoing, SendError};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hale_core::{CheckResult, Now, Signal};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

/// Why a request was answered by Hale itself, and whether its model is one some endpoint
/// serves (for the metrics label).
#[derive(Debug)]
pub struct Refusal {
    pub error: ProxyError,
    pub served_model: Option<String>,
    /// The endpoint whose failure this answer reports: a 502 or 504.
    pub endpoint: Option<std::sync::Arc<str>>,
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
    shared: &Shared,
    route: Route,
    request: Request,
    request_id: &HeaderValue,
    started: Instant,
) -> Result<Response, Refusal> {
    if !shared.keys.admits_on(route.api(), request.headers()) {
        return Err(ProxyError::Unauthorized.into());
    }
    let (parts, request_body) = request.into_parts();
    let read = body::read_limited(&parts.headers, request_body, shared.max_body);
    let deadline = started + hale_core::config::clock_safe(shared.body_timeout);
    let bytes = tokio::time::timeout_at(deadline, read)
        .await
        .map_err(|_| ProxyError::BodyTimeout(shared.body_timeout))??;
    let fields = crate::generic::fields(&parts.headers, &bytes).await?;
    let model: &str = &fields.model;
    tracing::trace!(
        model,
        stream = fields.stream.unwrap_or(route.streams_by_default()),
        route = route.path(),
        "proxying"
    );
    let filter = UpstreamFilter::new(&parts.headers, shared.keys.enabled());
    let query = parts.uri.query();

    // Endpoints this request must not be sent to: tried, or refused a claim just now.
    let mut excluded = Excluded::default();
    // Endpoints that were sent the request (a connect failure sent nothing): never again,
    // even after a wait.
    let mut sent = Excluded::default();
    // The previous attempt's endpoint and why it failed, counted when the next one starts.
    let mut failed: Option<(std::sync::Arc<EndpointRuntime>, RetryOn)> = None;
    // The one retry of a sent request (429, 5xx, first-byte timeout) was spent.
    let mut retried = false;
    // Holds the retry's place in the budget until its answer's head is in.
    let mut _token: Option<RetryToken<'_>> = None;
    // The backend answer a retry replaced, read whole: the client's answer if the retry
    // cannot be made after all.
    let mut fallback: Option<Response> = None;
    // An endpoint already claimed for the next attempt (a retry picks its target before it
    // gives up the answer it has).
    let mut next: Option<Claim> = None;
    // The queue wait, once started: its deadline and the store's change signal.
    let mut waiting: Option<(Instant, tokio::sync::watch::Receiver<u64>)> = None;
    // A rediscovery for a model no endpoint served was waited for (once per request).
    let mut rediscovered = false;
    loop {
        // The first attempt starts when the request arrived; later ones read the clock again.
        let now = if failed.is_none() && waiting.is_none() && !rediscovered {
            started
        } else {
            Instant::now()
        };
        let mut claim = match next.take() {
            Some(claim) => claim,
            None => {
                let snapshot = shared.store.snapshot();
                let table = shared.table.load();
                let selection = shared.selector.select(
                    &snapshot,
                    &table.runtimes,
                    model,
                    route,
                    &mut excluded,
                    now,
                );
                match selection {
                    Selection::Picked { claim } => claim,
                    Selection::NotServed if failed.is_none() && waiting.is_none() => {
                        if !rediscovered {
                            rediscovered = true;
                            drop(table);
                            if crate::select::rediscover(&shared.store, &snapshot, route).await {
                                continue;
                            }
                        }
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
                    other => {
                        if let Some(answer) = fallback.take() {
                            return Ok(answer);
                        }
                        let retry_after = match other {
                            Selection::Unavailable { retry_after } => retry_after,
                            _ => std::time::Duration::from_secs(1),
                        };
                        // Wait for an endpoint about to be routable (see `queue`), then select
                        // again; the 503 when there is none, or the wait runs out.
                        let prospect = shared.queue.prospect(
                            &snapshot,
                            &table.runtimes,
                            model,
                            route,
                            &sent,
                            now,
                        );
                        drop(table);
                        if !prospect.worth {
                            return Err(unavailable(model, retry_after));
                        }
                        let Some(_place) = shared.queue.enter() else {
                            return Err(unavailable(model, retry_after));
                        };
                        let (deadline, changes) = waiting.get_or_insert_with(|| {
                            (now + shared.queue.timeout(), shared.store.subscribe())
                        });
                        // A change published since the snapshot above was read: select
                        // again at once; otherwise wait for the next one.
                        let seen = *changes.borrow_and_update();
                        let changed = seen != snapshot.version;
                        drop(snapshot);
                        let out_of_time = Instant::now() >= *deadline;
                        if out_of_time
                            || (!changed && !crate::queue::wake(changes, prospect, *deadline).await)
                        {
                            return Err(unavailable(model, retry_after));
                        }
                        // Something changed: everything not sent the request is a candidate.
                        excluded = sent.clone();
                        continue;
                    }
                }
            }
        };
        if let Some((previous, reason)) = failed.take() {
            shared
                .stats
                .retried(model, previous.counters.name(), reason.label());
        }
        // A reference of its own to the runtime leaves the claim free to record its outcome
        // and to move into the response body below.
        let rt = claim.shared_runtime();
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
            // The client's own path (checked by the router) on the generic route.
            custom: (route == Route::Generic).then_some((&http::Method::POST, parts.uri.path())),
            query,
            headers: &parts.headers,
            keep: &keep,
            added,
            body: &bytes,
        };
        match shared.upstream.send(&rt.dest, &outgoing, now).await {
            Ok((head, conn)) => {
                sent.insert(rt.id);
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
                shared.stats.answered(model, &rt.counters, status);
                if status == StatusCode::TOO_MANY_REQUESTS {
                    hold_rate_limited(shared, &rt.endpoint.name, &head.headers);
                }
                // Outlier detection sees every answer, a retried one included.
                let watch = rt.watch(route.path(), status.as_u16());
                let mut headers = head.headers;
                hygiene::add_downstream(&mut headers, &rt.name_header, request_id);
                let body =
                    UpstreamBody::new(conn, head.framing, head.reusable, claim, started, watch);
                if status == StatusCode::NOT_FOUND
                    && let crate::upstream::head::Framing::Length(len) = head.framing
                    && len <= crate::model_gone::MAX_BODY
                {
                    let Some(bytes) = read_whole(body).await else {
                        // A retry whose answer broke off leaves the client the one it replaced.
                        if let Some(answer) = fallback.take() {
                            return Ok(answer);
                        }
                        return Err(Refusal {
                            error: ProxyError::BadGateway(format!(
                                "endpoint '{}' did not send its 404 answer whole in time",
                                rt.endpoint.name
                            )),
                            served_model: Some(model.to_owned()),
                            endpoint: Some(rt.counters.name().clone()),
                        });
                    };
                    let answer = whole_answer(status, headers, bytes.clone());
                    if !crate::model_gone::says_model_not_found(&bytes) {
                        return Ok(answer);
                    }
                    model_gone(shared, &rt, model);
                    fallback = Some(answer);
                    failed = Some((rt, RetryOn::Status(404)));
                    continue;
                }
                let reason = RetryOn::Status(status.as_u16());
                // (A 2xx, the common case, looks no further than its status.)
                let failed_answer =
                    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                if failed_answer
                    && !retried
                    && shared.retries_on(reason)
                    && let Some((token, target)) =
                        retry_target(shared, &mut excluded, &sent, model, route)
                {
                    tracing::debug!(endpoint = %rt.endpoint.name, status = status.as_u16(), to = target.runtime().name(), "request path: retrying a failed answer on another endpoint");
                    // The answer is read whole (a small error body keeps its connection) to
                    // be the client's if the retry cannot be made; the retry's own answer,
                    // whatever it is, replaces it.
                    fallback = buffer_answer(status, headers, body).await;
                    retried = true;
                    _token = Some(token);
                    failed = Some((rt, reason));
                    next = Some(target);
                    continue;
                }
                let mut response = Response::new(Body::new(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                return Ok(response);
            }
            Err(SendError::Connect(result))
                if crate::upstream::io::is_out_of_descriptors(&result) =>
            {
                // Hale's own limit, not the backend's: nothing is marked or counted against
                // it, and no other endpoint is tried (every connect would fail the same way).
                drop(claim);
                warn_out_of_descriptors(&rt.endpoint.name, &result);
                if let Some(answer) = fallback.take() {
                    return Ok(answer);
                }
                return Err(unavailable(model, std::time::Duration::from_secs(1)));
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
                if !shared.retries_on(RetryOn::ConnectFailure) {
                    if let Some(answer) = fallback.take() {
                        return Ok(answer);
                    }
                    return Err(unavailable(model, rt.endpoint.check_interval));
                }
                failed = Some((rt, RetryOn::ConnectFailure));
            }
            Err(send_error) => {
                sent.insert(rt.id);
                let opened = claim.failure(Instant::now());
                drop(claim);
                let name = &rt.endpoint.name;
                if opened {
                    tracing::warn!(endpoint = %name, "circuit breaker opened after repeated failures");
                }
                shared.store.request_check(name);
                rt.record_outcome(crate::runtime::sent_failure(&send_error), route.path());
                // Only a first-byte timeout may be retried (when `retry_on` says so): the
                // backend answered nothing in time. A request dropped after it was written,
                // or answered with garbage, is never sent again.
                if let SendError::TimedOut(_) = send_error
                    && !retried
                    && shared.retries_on(RetryOn::FirstByteTimeout)
                    && let Some((token, target)) =
                        retry_target(shared, &mut excluded, &sent, model, route)
                {
                    tracing::warn!(endpoint = %name, to = target.runtime().name(), "request path: no answer within first_byte_timeout; retrying on another endpoint");
                    retried = true;
                    _token = Some(token);
                    failed = Some((rt, RetryOn::FirstByteTimeout));
                    next = Some(target);
                    continue;
                }
                let error = match &send_error {
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
                tracing::warn!(endpoint = %name, error = ?send_error, status = error.status().as_u16(), "request path: the backend failed a request it was sent; not sent again");
                // A retry that failed this way leaves the client the answer it replaced.
                if let Some(answer) = fallback.take() {
                    return Ok(answer);
                }
                return Err(Refusal {
                    error,
                    served_model: Some(model.to_owned()),
                    endpoint: Some(rt.counters.name().clone()),
                });
            }
        }
    }
}

/// The largest failed answer read whole to be kept while a retry runs; a bigger one is
/// dropped (its connection closed) and the retry goes ahead without a fallback.
const MAX_FALLBACK_BODY: usize = 64 * 1024;

/// How long reading such an answer may take (an error body usually came with its head).
const FALLBACK_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A retry for a request that failed on every endpoint in `excluded`: a place in the retry
/// budget and a claim on another endpoint that serves the model, or `None` (the budget is
/// spent — counted — or no other endpoint can take it now).
fn retry_target<'s>(
    shared: &'s Shared,
    excluded: &mut Excluded,
    sent: &Excluded,
    model: &str,
    route: Route,
) -> Option<(RetryToken<'s>, Claim)> {
    let Some(token) = shared.budget.try_acquire(shared.in_flight()) else {
        shared.stats.budget_exhausted(model);
        tracing::debug!(
            model,
            "request path: retry budget spent; the answer goes to the client as it is"
        );
        return None;
    };
    let snapshot = shared.store.snapshot();
    let table = shared.table.load();
    let mut tried = excluded.clone();
    match shared.selector.select(
        &snapshot,
        &table.runtimes,
        model,
        route,
        &mut tried,
        Instant::now(),
    ) {
        Selection::Picked { claim } if !sent.contains(claim.runtime().id) => {
            *excluded = tried;
            Some((token, claim))
        }
        _ => None,
    }
}

/// Reads a failed answer whole (bounded in size and time) into a response the client can
/// still be given; `None` when it is too big, too slow or broke off (its connection is then
/// closed, never reused).
async fn buffer_answer(
    status: StatusCode,
    headers: http::HeaderMap,
    body: UpstreamBody,
) -> Option<Response> {
    Some(whole_answer(status, headers, read_whole(body).await?))
}

/// Reads an answer's body whole, at most [`MAX_FALLBACK_BODY`] bytes within
/// [`FALLBACK_READ_TIMEOUT`]; `None` when it is bigger, slower or broke off (its connection
/// is then closed, never reused).
async fn read_whole(body: UpstreamBody) -> Option<bytes::Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_FALLBACK_BODY);
    let collected = tokio::time::timeout(FALLBACK_READ_TIMEOUT, limited.collect())
        .await
        .ok()?
        .ok()?;
    Some(collected.to_bytes())
}

/// A backend's answer whose body was read whole.
fn whole_answer(status: StatusCode, mut headers: http::HeaderMap, body: bytes::Bytes) -> Response {
    // The body is whole now: hyper frames it by its length.
    headers.remove(CONTENT_LENGTH);
    headers.remove(TRANSFER_ENCODING);
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `rt`'s backend said it does not serve `model` (see the module docs): it is no longer
/// routed there, and its model list is read again soon.
fn model_gone(shared: &Shared, rt: &EndpointRuntime, model: &str) {
    let name = &rt.endpoint.name;
    let dropped = shared.store.forget_model(name, model, Now::capture());
    if rt.endpoint.discovers() {
        // Rate limited; nobody waits for it.
        let _ = shared.store.request_discovery(name, Instant::now());
    } else {
        shared.store.request_check(name);
    }
    tracing::info!(
        endpoint = %name,
        model,
        dropped,
        "request path: the backend does not serve the model; trying another endpoint"
    );
}

/// A 429's `Retry-After` (whole seconds; anything else reads as absent) holds the endpoint
/// out of rotation until then (see [`HealthStore::rate_limited`](hale_core::HealthStore)).
fn hold_rate_limited(shared: &Shared, name: &str, headers: &http::HeaderMap) {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    if shared.store.rate_limited(name, retry_after, Now::capture()) {
        tracing::info!(endpoint = name, retry_after = ?retry_after, "request path: 429, endpoint held out of rotation until its Retry-After");
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

/// Logs a connect that failed for lack of descriptors: WARN at most once a minute (the
/// listener says the same for accepts), DEBUG otherwise.
fn warn_out_of_descriptors(endpoint: &str, result: &CheckResult) {
    static LAST_WARNED_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNED_SECS.load(std::sync::atomic::Ordering::Relaxed);
    if now >= last.saturating_add(60)
        && LAST_WARNED_SECS
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(endpoint, error = ?result, "request path: cannot open a backend connection, Hale is out of file descriptors; answering 503 (logged once a minute)");
    } else {
        tracing::debug!(endpoint, error = ?result, "request path: out of file descriptors");
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
