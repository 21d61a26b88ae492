//! `/internal/status` (the summary of this replica, with `replicas`: the live replicas it
//! knows of, itself included) and `/internal/status/endpoints` (every endpoint's health in
//! detail, in configuration order).
//!
//! Per endpoint the fields are DESIGN §5's — `name, url, type, status, reason, priority,
//! last_check, last_latency_ms, consecutive_failures, consecutive_successes,
//! uptime_percentage, error, next_check_at, breaker, models, checked_by, source` — plus
//! `weight, phase, since, checks_total, drained` and `outlier` (`{ejected_until, ejections,
//! recent_requests, recent_failure_rate, last_signal}`: `ejected_until` from the health
//! state, so an ejection another replica made shows too, null when none is in force; the
//! rest is what this replica's traffic recorded, zeros and null without the proxy) and
//! `recent_checks` (the last 60 checks, oldest first, each `{at, latency_ms, ok}`; this
//! replica's and, in shared mode, the adopted checks of others; see `hale_core::history`).
//! Times are RFC 3339 with milliseconds or null; `last_latency_ms` is a float with microsecond precision; `uptime_percentage` is rounded to
//! two decimals. Nothing secret is rendered: the endpoint's `api_key` is not a field at all,
//! and credentials written into the URL (`http://user:pass@host`) are stripped from `url`.

use crate::ApiState;
use crate::counts::StateCounts;
use crate::format::{millis, percent, rfc3339_ms};
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hale_core::store::EndpointStatus;
use hale_core::{
    BreakerState, EndpointKind, HealthState, OutlierStats, Phase, Reason, Snapshot, Source,
};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

#[derive(Serialize)]
struct Summary<'a> {
    version: &'a str,
    pod_id: &'a str,
    uptime_seconds: u64,
    started_at: String,
    ready: bool,
    draining: bool,
    mode: String,
    /// Replicas known to be live, this one included (1 alone; see `HealthStore::fleet_size`).
    replicas: usize,
    endpoints: StateCounts,
    routable_models: Vec<Arc<str>>,
}

/// `GET /internal/status`.
pub(crate) async fn summary(State(state): State<ApiState>) -> Response {
    let snapshot = state.store().snapshot();
    Json(Summary {
        version: state.version(),
        pod_id: state.store().pod_id(),
        uptime_seconds: state.uptime().as_secs(),
        started_at: rfc3339_ms(state.started_at()),
        ready: snapshot.ready,
        draining: state.is_draining(),
        mode: state.mode(),
        replicas: state.store().fleet_size(),
        endpoints: snapshot.endpoints.iter().map(|e| e.health.state).collect(),
        routable_models: routable_models(&snapshot, Instant::now()),
    })
    .into_response()
}

/// The sorted, de-duplicated models of the endpoints that may take traffic at `now`.
fn routable_models(snapshot: &Snapshot, now: Instant) -> Vec<Arc<str>> {
    snapshot
        .endpoints
        .iter()
        .filter(|e| e.health.is_routable(now))
        .flat_map(|e| e.models())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[derive(Serialize)]
struct EndpointList<'a> {
    endpoints: Vec<EndpointView<'a>>,
}

#[derive(Serialize)]
struct EndpointView<'a> {
    name: &'a str,
    url: String,
    #[serde(rename = "type")]
    kind: EndpointKind,
    status: HealthState,
    reason: Option<&'a Reason>,
    phase: Phase,
    priority: i32,
    weight: f64,
    since: String,
    last_check: Option<String>,
    last_latency_ms: Option<f64>,
    consecutive_failures: u32,
    consecutive_successes: u32,
    checks_total: u64,
    uptime_percentage: f64,
    error: Option<&'a str>,
    next_check_at: Option<String>,
    breaker: BreakerState,
    models: Vec<Arc<str>>,
    checked_by: Option<&'a str>,
    source: Source,
    drained: bool,
    outlier: OutlierView,
    recent_checks: Vec<CheckView>,
}

#[derive(Serialize)]
struct CheckView {
    at: String,
    latency_ms: Option<f64>,
    ok: bool,
}

#[derive(Serialize)]
struct OutlierView {
    ejected_until: Option<String>,
    ejections: u64,
    recent_requests: u32,
    recent_failure_rate: f64,
    last_signal: Option<&'static str>,
}

impl OutlierView {
    fn new(ejected_until: Option<Instant>, stats: Option<OutlierStats>) -> Self {
        let now = Instant::now();
        let ejected_until = ejected_until
            .filter(|until| *until > now)
            .map(|until| rfc3339_ms(SystemTime::now() + (until - now)));
        let stats = stats.unwrap_or(OutlierStats {
            ejections: 0,
            recent_requests: 0,
            recent_failure_rate: 0.0,
            last_signal: None,
        });
        Self {
            ejected_until,
            ejections: stats.ejections,
            recent_requests: stats.recent_requests,
            recent_failure_rate: percent(stats.recent_failure_rate * 100.0) / 100.0,
            last_signal: stats.last_signal,
        }
    }
}

impl<'a> EndpointView<'a> {
    fn new(e: &'a EndpointStatus, breaker: BreakerState, outlier: Option<OutlierStats>) -> Self {
        let h = &e.health;
        Self {
            name: &e.endpoint.name,
            url: display_url(&e.endpoint.url),
            kind: e.endpoint.kind,
            status: h.state,
            reason: h.reason.as_ref(),
            phase: h.phase,
            priority: e.endpoint.priority,
            weight: e.endpoint.weight,
            since: rfc3339_ms(h.since),
            last_check: h.last_check.map(rfc3339_ms),
            last_latency_ms: h.last_latency.map(millis),
            consecutive_failures: h.consecutive_failures,
            consecutive_successes: h.consecutive_successes,
            checks_total: h.checks_total,
            uptime_percentage: percent(h.uptime_percentage()),
            error: h.error.as_deref(),
            next_check_at: h.next_check_at.map(rfc3339_ms),
            breaker,
            models: e.models(),
            checked_by: h.checked_by.as_deref(),
            source: h.source,
            drained: h.drained,
            outlier: OutlierView::new(h.ejected_until, outlier),
            recent_checks: h
                .checks
                .iter()
                .map(|c| CheckView {
                    at: rfc3339_ms(c.at),
                    latency_ms: c.latency.map(millis),
                    ok: c.ok,
                })
                .collect(),
        }
    }
}

/// The URL without any user or password written into it.
fn display_url(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Both setters fail only for URLs that cannot have credentials, which these already have.
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

/// `GET /internal/status/endpoints`.
pub(crate) async fn endpoints(State(state): State<ApiState>) -> Response {
    let snapshot = state.store().snapshot();
    let endpoints = snapshot
        .endpoints
        .iter()
        .map(|e| {
            let name = &e.endpoint.name;
            EndpointView::new(e, state.breaker_state(name), state.outlier(name))
        })
        .collect();
    Json(EndpointList { endpoints }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, OpenBreakers, SharedFake};
    use axum::http::StatusCode;
    use hale_core::{CheckOutcome, CheckResult, Now};
    use serde_json::{Value, json};
    use std::time::Duration;

    const FIELDS: [&str; 24] = [
        "name",
        "url",
        "type",
        "status",
        "reason",
        "priority",
        "last_check",
        "last_latency_ms",
        "consecutive_failures",
        "consecutive_successes",
        "uptime_percentage",
        "error",
        "next_check_at",
        "breaker",
        "models",
        "checked_by",
        "source",
        "weight",
        "phase",
        "since",
        "checks_total",
        "drained",
        "outlier",
        "recent_checks",
    ];

    fn is_rfc3339_ms(v: &Value) -> bool {
        v.as_str().is_some_and(|s| {
            humantime::parse_rfc3339(s).is_ok() && s.len() == 24 && s.ends_with('Z')
        })
    }

    #[tokio::test]
    async fn endpoints_have_every_field_in_config_order() {
        let f = Fixture::new("");
        f.store.observe(
            "a",
            &CheckOutcome::ok(Duration::from_micros(15_042)),
            Now::capture(),
        );
        f.store.schedule_next("a", Now::capture(), 0.0);
        let r = f.get("/internal/status/endpoints", None).await;
        assert_eq!(r.status, StatusCode::OK);
        let body = r.json();
        let list = body["endpoints"].as_array().unwrap();
        let names: Vec<&str> = list.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        for e in list {
            let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut want = FIELDS.to_vec();
            want.sort_unstable();
            assert_eq!(keys, want);
        }

        let a = &list[0];
        assert_eq!(a["url"], "http://127.0.0.1:9001/");
        assert_eq!(a["type"], "vllm");
        assert_eq!(a["status"], "healthy");
        assert_eq!(a["reason"], Value::Null);
        assert_eq!(a["phase"], "running");
        assert_eq!(a["priority"], 100);
        assert_eq!(a["weight"], 1.0);
        assert!(is_rfc3339_ms(&a["since"]), "{a}");
        assert!(is_rfc3339_ms(&a["last_check"]), "{a}");
        assert!(is_rfc3339_ms(&a["next_check_at"]), "{a}");
        assert_eq!(a["last_latency_ms"], 15.042);
        assert_eq!(a["consecutive_failures"], 0);
        assert_eq!(a["consecutive_successes"], 1);
        assert_eq!(a["checks_total"], 1);
        assert_eq!(a["uptime_percentage"], 100.0);
        assert_eq!(a["error"], Value::Null);
        assert_eq!(a["breaker"], "closed");
        assert_eq!(a["models"], json!(["m1"]));
        assert_eq!(a["checked_by"], "pod-1");
        assert_eq!(a["source"], "local");
        let checks = a["recent_checks"].as_array().unwrap();
        assert_eq!(checks.len(), 1, "{a}");
        assert!(is_rfc3339_ms(&checks[0]["at"]), "{a}");
        assert_eq!(checks[0]["latency_ms"], 15.042);
        assert_eq!(checks[0]["ok"], true);
        assert_eq!(
            a["outlier"],
            json!({"ejected_until": null, "ejections": 0, "recent_requests": 0,
                   "recent_failure_rate": 0.0, "last_signal": null})
        );

        let b = &list[1];
        assert_eq!(b["status"], "unknown");
        assert_eq!(b["phase"], "startup");
        assert_eq!(b["type"], "ollama");
        assert_eq!(b["priority"], 50);
        assert_eq!(b["last_check"], Value::Null);
        assert_eq!(b["last_latency_ms"], Value::Null);
        assert_eq!(b["next_check_at"], Value::Null);
        assert_eq!(b["checked_by"], Value::Null);
        assert_eq!(b["source"], "none");
        assert_eq!(b["recent_checks"], json!([]));
        assert_eq!(b["models"], json!(["m1", "m2"]));
        assert_eq!(list[2]["models"], json!([]), "nothing discovered yet");
    }

    #[tokio::test]
    async fn failures_show_reason_error_and_breaker() {
        let f = Fixture::with_state("", |s| s.with_breakers(Arc::new(OpenBreakers(&["a"]))));
        f.ok("a");
        f.store.observe(
            "a",
            &CheckOutcome::failed(
                Duration::from_millis(2),
                CheckResult::Http {
                    status: 503,
                    retry_after: None,
                    message: String::new(),
                },
            ),
            Now::capture(),
        );
        let body = f.get("/internal/status/endpoints", None).await.json();
        let a = &body["endpoints"][0];
        assert_eq!(a["status"], "unhealthy", "{a}");
        assert_eq!(a["reason"], "http_503");
        assert_eq!(a["error"], "HTTP 503");
        assert_eq!(a["consecutive_failures"], 1);
        assert_eq!(a["uptime_percentage"], 50.0);
        assert_eq!(a["breaker"], "open");
        assert_eq!(body["endpoints"][1]["breaker"], "closed");
        let oks: Vec<&Value> = a["recent_checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["ok"])
            .collect();
        assert_eq!(oks, [&json!(true), &json!(false)]);
        assert_eq!(a["recent_checks"][1]["latency_ms"], 2.0);
    }

    /// Outlier detection as the proxy would report it for `b`.
    struct Traffic;
    impl crate::BreakerView for Traffic {
        fn breaker_state(&self, _: &str) -> BreakerState {
            BreakerState::Closed
        }
        fn outlier(&self, endpoint: &str) -> Option<OutlierStats> {
            (endpoint == "b").then_some(OutlierStats {
                ejections: 2,
                recent_requests: 24,
                recent_failure_rate: 0.625,
                last_signal: Some("consecutive_5xx"),
            })
        }
    }

    #[tokio::test]
    async fn an_ejection_shows_its_end_and_the_traffic_behind_it() {
        let f = Fixture::with_state("", |s| s.with_breakers(Arc::new(Traffic)));
        f.ok("b");
        let ejected = f.store.eject(
            "b",
            Duration::from_secs(30),
            "5 consecutive 503 on /v1/chat/completions",
            100,
            Now::capture(),
        );
        assert!(matches!(ejected, hale_core::Ejected::Now(_)), "{ejected:?}");
        let body = f.get("/internal/status/endpoints", None).await.json();
        let b = &body["endpoints"][1];
        assert_eq!(b["status"], "unhealthy", "{b}");
        assert_eq!(b["reason"], "outlier");
        assert_eq!(b["error"], "5 consecutive 503 on /v1/chat/completions");
        assert_eq!(b["source"], "passive");
        assert_eq!(b["checked_by"], "pod-1");
        let o = &b["outlier"];
        assert!(is_rfc3339_ms(&o["ejected_until"]), "{o}");
        let until = humantime::parse_rfc3339(o["ejected_until"].as_str().unwrap()).unwrap();
        let left = until.duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(29) && left <= Duration::from_secs(30),
            "{left:?}"
        );
        assert_eq!(o["ejections"], 2);
        assert_eq!(o["recent_requests"], 24);
        assert_eq!(o["recent_failure_rate"], 0.625);
        assert_eq!(o["last_signal"], "consecutive_5xx");
        assert_eq!(body["endpoints"][0]["outlier"]["ejections"], 0);
    }

    #[tokio::test]
    async fn summary_reports_replica_and_routable_models() {
        let f = Fixture::new("");
        let r = f.get("/internal/status", None).await;
        assert_eq!(r.status, StatusCode::OK);
        let body = r.json();
        assert_eq!(body["version"], "0.1.0-test");
        assert_eq!(body["pod_id"], "pod-1");
        assert_eq!(body["uptime_seconds"], 0);
        assert!(is_rfc3339_ms(&body["started_at"]), "{body}");
        assert_eq!(body["ready"], false);
        assert_eq!(body["draining"], false);
        assert_eq!(body["mode"], "local");
        assert_eq!(body["replicas"], 1);
        assert_eq!(body["endpoints"]["unknown"], 3);
        assert_eq!(body["endpoints"]["total"], 3);
        assert_eq!(body["routable_models"], json!([]));

        f.ok("b");
        f.store.mark_ready();
        f.state.start_draining();
        let body = f.get("/internal/status", None).await.json();
        assert_eq!(body["ready"], true);
        assert_eq!(body["draining"], true);
        assert_eq!(body["endpoints"]["healthy"], 1);
        assert_eq!(body["routable_models"], json!(["m1", "m2"]));
    }

    #[tokio::test]
    async fn summary_mode_comes_from_the_shared_view() {
        let f = Fixture::with_state("", |s| s.with_shared(Arc::new(SharedFake)));
        let body = f.get("/internal/status", None).await.json();
        assert_eq!(body["mode"], "sharded");
    }

    #[test]
    fn credentials_in_urls_are_not_shown() {
        let url = url::Url::parse("http://user:hunter2@host:8000/base").unwrap();
        assert_eq!(display_url(&url), "http://host:8000/base");
        let url = url::Url::parse("https://host/").unwrap();
        assert_eq!(display_url(&url), "https://host/");
    }
}
