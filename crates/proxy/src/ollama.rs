//! The Ollama routes Hale answers from its backends rather than relaying one request:
//! `GET /api/ps` (the running models of every routable `ollama` endpoint, each model once),
//! `GET /api/version` (the lowest version among them: clients gate features on it, and the
//! lowest is the one every request could land on) and `GET`/`HEAD /` (`Ollama is running`,
//! which scripts and UIs probe). `/api/show` and `/api/embeddings` are routed by model like
//! `/api/chat` (see `route`).
//!
//! Each backend is asked over the proxy's own upstream client (its pool, its endpoint key),
//! all at once, each bounded by that endpoint's `check_timeout` (at most 10 s) for the whole
//! answer and by 1 MiB for the body. Whatever a backend sends that is not the expected shape
//! (not JSON, no `models` array, an entry without a string `name`, a version that is not
//! semver) is skipped, logged at DEBUG and counted in `hale_proxy_backend_rejected_total
//! {endpoint,route}`, never a failure of the answer; an endpoint that does not answer in
//! time is left out. With no routable `ollama` endpoint, or none that told its version,
//! `/api/version` is a 503 (`/api/ps` an empty list). Errors here are Ollama-shaped
//! (`{"error":"…"}`, see `error::render`).

use crate::error::ProxyError;
use crate::hygiene::Added;
use crate::proxy::Shared;
use crate::route::Route;
use crate::runtime::EndpointRuntime;
use crate::stream::UpstreamBody;
use crate::upstream::Outgoing;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hale_core::same_model;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The metric counting backend answers that were skipped as malformed.
pub const BACKEND_REJECTED_TOTAL: &str = "hale_proxy_backend_rejected_total";
/// The largest answer read from a backend here.
const MAX_ANSWER: usize = 1024 * 1024;
/// The longest wait for one backend's answer, whatever its `check_timeout`.
const MAX_WAIT: Duration = Duration::from_secs(10);
/// The most running models taken from one backend.
const MAX_MODELS: usize = 1000;

/// `GET`/`HEAD /`.
pub fn root() -> Response {
    (
        StatusCode::OK,
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        "Ollama is running",
    )
        .into_response()
}

/// `GET /api/ps`.
pub async fn ps(shared: Arc<Shared>, request_id: HeaderValue) -> Result<Response, ProxyError> {
    let answers = ask_all(&shared, "/api/ps", &request_id).await;
    let mut names: Vec<String> = Vec::new();
    let mut models: Vec<Value> = Vec::new();
    for (rt, body) in answers {
        let Some(list) = parse_ps(&body) else {
            reject(&rt, "/api/ps", "not a JSON object with a `models` array");
            continue;
        };
        for entry in list {
            let Some(name) = entry.get("name").and_then(Value::as_str) else {
                reject(&rt, "/api/ps", "a model without a string `name`");
                continue;
            };
            if names.iter().any(|n| same_model(n, name)) {
                continue;
            }
            names.push(name.to_owned());
            models.push(Value::Object(entry));
        }
    }
    Ok(json(&serde_json::json!({ "models": models })))
}

fn parse_ps(body: &[u8]) -> Option<Vec<Map<String, Value>>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    let list = value.get_mut("models")?.as_array_mut()?;
    Some(
        list.drain(..)
            .take(MAX_MODELS)
            .filter_map(|v| match v {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .collect(),
    )
}

/// `GET /api/version`.
pub async fn version(shared: Arc<Shared>, request_id: HeaderValue) -> Result<Response, ProxyError> {
    let answers = ask_all(&shared, "/api/version", &request_id).await;
    let mut lowest: Option<(semver::Version, String)> = None;
    for (rt, body) in answers {
        let Some((parsed, text)) = parse_version(&body) else {
            reject(&rt, "/api/version", "not {\"version\":\"<semver>\"}");
            continue;
        };
        if lowest.as_ref().is_none_or(|(low, _)| parsed < *low) {
            lowest = Some((parsed, text));
        }
    }
    match lowest {
        Some((_, text)) => Ok(json(&serde_json::json!({ "version": text }))),
        None => Err(ProxyError::Unavailable {
            message: "no routable ollama endpoint reported its version".into(),
            retry_after: Duration::from_secs(1),
        }),
    }
}

fn parse_version(body: &[u8]) -> Option<(semver::Version, String)> {
    #[derive(serde::Deserialize)]
    struct V {
        version: String,
    }
    let v: V = serde_json::from_slice(body).ok()?;
    let text = v.version.trim();
    if text.len() > 64 {
        return None;
    }
    let parsed = semver::Version::parse(text.strip_prefix('v').unwrap_or(text)).ok()?;
    Some((parsed, text.to_owned()))
}

fn reject(rt: &EndpointRuntime, route: &'static str, why: &str) {
    tracing::debug!(
        endpoint = rt.name(),
        route,
        why,
        "skipped a malformed backend answer"
    );
    metrics::counter!(BACKEND_REJECTED_TOTAL, "endpoint" => rt.endpoint.name.to_string(), "route" => route)
        .increment(1);
}

/// `GET path` on every routable `ollama` endpoint at once; the bodies of the 200 answers.
async fn ask_all(
    shared: &Arc<Shared>,
    path: &'static str,
    request_id: &HeaderValue,
) -> Vec<(Arc<EndpointRuntime>, Bytes)> {
    let snapshot = shared.store.snapshot();
    let table = shared.table.load();
    let now = Instant::now();
    let targets: Vec<Arc<EndpointRuntime>> = snapshot
        .endpoints
        .iter()
        .filter(|s| s.endpoint.kind.speaks_ollama() && s.health.is_routable(now))
        .filter_map(|s| table.by_name.get(&s.endpoint.name).cloned())
        .filter(|rt| rt.usable())
        .collect();
    drop(table);
    drop(snapshot);
    let asks = targets.into_iter().map(|rt| async move {
        let limit = rt.endpoint.check_timeout.min(MAX_WAIT);
        match tokio::time::timeout(limit, ask(shared, rt.clone(), path, request_id)).await {
            Ok(Some(body)) => Some((rt, body)),
            Ok(None) => None,
            Err(_) => {
                tracing::debug!(endpoint = rt.name(), path, "no answer in time; left out");
                None
            }
        }
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

async fn ask(
    shared: &Arc<Shared>,
    rt: Arc<EndpointRuntime>,
    path: &'static str,
    request_id: &HeaderValue,
) -> Option<Bytes> {
    let claim = rt.try_claim(false, Instant::now())?;
    let none = HeaderMap::new();
    let keep = |_: &HeaderName| false;
    let added = Added::new(request_id, &shared.pod, rt.auth.as_ref());
    let empty = Bytes::new();
    let outgoing = Outgoing {
        route: Route::OllamaShow,
        custom: Some((&Method::GET, path)),
        query: None,
        headers: &none,
        keep: &keep,
        added: added.as_slice(),
        body: &empty,
    };
    let started = Instant::now();
    let (head, conn) = shared
        .upstream
        .send(&rt.dest, &outgoing, started)
        .await
        .ok()?;
    if head.status != StatusCode::OK {
        tracing::debug!(
            endpoint = rt.name(),
            path,
            status = head.status.as_u16(),
            "left out"
        );
        return None;
    }
    let watch = rt.watch(path, head.status.as_u16());
    let body = UpstreamBody::new(conn, head.framing, head.reusable, claim, started, watch);
    let collected = http_body_util::Limited::new(body, MAX_ANSWER)
        .collect()
        .await
        .ok()?;
    Some(collected.to_bytes())
}

fn json(value: &Value) -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        value.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(parse_version(br#"{"version":"0.5.7"}"#).unwrap().1, "0.5.7");
        assert_eq!(
            parse_version(br#"{"version":"v0.6.0-rc1"}"#).unwrap().1,
            "v0.6.0-rc1"
        );
        let low = parse_version(br#"{"version":"0.5.10"}"#).unwrap().0;
        let high = parse_version(br#"{"version":"0.10.0"}"#).unwrap().0;
        assert!(low < high, "semver, not text order");
        for bad in [
            &br#"{"version":7}"#[..],
            br#"{"version":"latest"}"#,
            br#"{}"#,
            b"<html>",
            b"",
        ] {
            assert!(parse_version(bad).is_none());
        }
        let long = format!(r#"{{"version":"1.0.0-{}"}}"#, "a".repeat(100));
        assert!(parse_version(long.as_bytes()).is_none());
    }

    #[test]
    fn ps_lists_parse_leniently() {
        let list = parse_ps(br#"{"models":[{"name":"a"},7,{"model":"b"}]}"#).unwrap();
        assert_eq!(list.len(), 2, "non-objects skipped");
        assert!(parse_ps(br#"{"models":{}}"#).is_none());
        assert!(parse_ps(b"garbage").is_none());
        assert!(parse_ps(br#"[]"#).is_none());
    }
}
