//! `/internal/events`: the recent state transitions this replica knows of, newest last.
//!
//! Each event is core's [`Event`](hale_core::Event): `seq, endpoint, from, to, reason, error,
//! at, pod_id, source` (`seq` numbers this process's events from 1; the live feed of the same
//! events is [`events_stream`](crate::events_stream)). `?endpoint=NAME` keeps one endpoint's events (an endpoint that is not
//! configured is a 404, so a typo does not read as "nothing happened"), and `?limit=N` keeps
//! the last N after filtering. A malformed query is a 400 in the usual error shape.

use crate::ApiState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use hale_core::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    endpoint: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct EventList {
    events: Vec<Event>,
}

/// `GET /internal/events[?endpoint=NAME][&limit=N]`.
pub(crate) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut events = state.store().events();
    if let Some(name) = &query.endpoint {
        if state.store().snapshot().get(name).is_none() {
            return Err(ApiError::not_found(format!("no endpoint named {name:?}")));
        }
        events.retain(|e| e.endpoint.as_ref() == name.as_str());
    }
    if let Some(limit) = query.limit {
        let skip = events.len().saturating_sub(limit);
        events.drain(..skip);
    }
    Ok(Json(EventList { events }).into_response())
}

#[cfg(test)]
mod tests {
    use crate::testing::Fixture;
    use axum::http::StatusCode;
    use hale_core::{CheckResult, Now};

    fn pairs(body: &serde_json::Value) -> Vec<(String, String, String)> {
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["endpoint"].as_str().unwrap().to_owned(),
                    e["from"].as_str().unwrap().to_owned(),
                    e["to"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    fn owned(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        v.iter()
            .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn lists_filters_and_limits() {
        let f = Fixture::new("");
        let r = f.get("/internal/events", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), serde_json::json!({"events": []}));

        f.ok("a");
        f.ok("b");
        f.store
            .passive_failure("a", &CheckResult::ConnectRefused, Now::capture());

        let body = f.get("/internal/events", None).await.json();
        assert_eq!(
            pairs(&body),
            owned(&[
                ("a", "unknown", "healthy"),
                ("b", "unknown", "healthy"),
                ("a", "healthy", "unhealthy"),
            ])
        );
        let last = &body["events"][2];
        assert_eq!(last["reason"], "connect_refused");
        assert_eq!(last["pod_id"], "pod-1");
        assert_eq!(last["source"], "passive");
        assert!(humantime::parse_rfc3339(last["at"].as_str().unwrap()).is_ok());

        let body = f.get("/internal/events?endpoint=a", None).await.json();
        assert_eq!(
            pairs(&body),
            owned(&[("a", "unknown", "healthy"), ("a", "healthy", "unhealthy")])
        );
        let body = f.get("/internal/events?limit=2", None).await.json();
        assert_eq!(
            pairs(&body),
            owned(&[("b", "unknown", "healthy"), ("a", "healthy", "unhealthy")])
        );
        let body = f
            .get("/internal/events?endpoint=a&limit=1", None)
            .await
            .json();
        assert_eq!(pairs(&body), owned(&[("a", "healthy", "unhealthy")]));
        let body = f.get("/internal/events?limit=0", None).await.json();
        assert!(pairs(&body).is_empty());
        let body = f.get("/internal/events?limit=99", None).await.json();
        assert_eq!(pairs(&body).len(), 3);
        let body = f.get("/internal/events?endpoint=c", None).await.json();
        assert!(pairs(&body).is_empty());
    }

    #[tokio::test]
    async fn bad_queries_are_clear_errors() {
        let f = Fixture::new("");
        let r = f.get("/internal/events?limit=lots", None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
        assert_eq!(r.json()["error"]["code"], 400);

        let r = f.get("/internal/events?endpoint=zzz", None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.json()["error"]["message"], "no endpoint named \"zzz\"");

        let r = f.get("/internal/events?colour=red", None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
}
