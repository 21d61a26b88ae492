//! Prometheus metrics: the recorder every crate's `metrics::counter!`/`histogram!` calls reach,
//! the `HELP` text of every `hale_` series, and `GET /metrics`.
//!
//! [`install_metrics`] builds the recorder — `metrics-exporter-prometheus` recorders with
//! histogram buckets that fit health checks (1 ms … 10 s) and proxied LLM requests
//! (10 ms … 5 min), one per endpoint plus a common one ([`by_endpoint`]) — and installs it
//! globally; [`Metrics::detached`] builds the same recorder without installing it, so tests
//! running in parallel each get their own. The [`Metrics`] value keeps the recorder itself:
//! the per-endpoint gauges are written through it (as a local recorder) at scrape time, which
//! makes them exact for the snapshot being scraped and keeps a detached recorder's gauges out
//! of every other test's way.
//!
//! Removed endpoints are forgotten: each scrape drops every series of the endpoints its
//! snapshot no longer lists (a reload removed them), so `/metrics` and the process's memory
//! do not grow with every endpoint a long-lived pod has ever had; live endpoints keep all
//! their series however idle they are (see [`by_endpoint`]).
//!
//! Gauges set at scrape time from the current snapshot:
//! `hale_endpoint_up{endpoint}` (1 when health says routable now — state and rate limit; the
//! breaker has its own gauge), `hale_endpoint_state{endpoint}` (0 unknown, 1 healthy,
//! 2 degraded, 3 recovering, 4 unhealthy) and `hale_breaker_open{endpoint}` (1 only while
//! open; half-open reads 0 since it admits a trial request). The other series are recorded by
//! the crates that own them and only described here.

use crate::ApiState;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hale_core::{BreakerState, Snapshot};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusRecorder};

pub mod by_endpoint;
use by_endpoint::ByEndpoint;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const ENDPOINT_UP: &str = "hale_endpoint_up";
pub const ENDPOINT_STATE: &str = "hale_endpoint_state";
pub const BREAKER_OPEN: &str = "hale_breaker_open";
pub const ENDPOINT_DRAINED: &str = "hale_endpoint_drained";
pub const HEALTH_CHECKS_TOTAL: &str = "hale_health_checks_total";
pub const HEALTH_CHECK_DURATION_SECONDS: &str = "hale_health_check_duration_seconds";
pub const STATE_TRANSITIONS_TOTAL: &str = "hale_state_transitions_total";
pub const PROXY_REQUESTS_TOTAL: &str = "hale_proxy_requests_total";
pub const PROXY_REQUEST_DURATION_SECONDS: &str = "hale_proxy_request_duration_seconds";
pub const PROXY_RETRIES_TOTAL: &str = "hale_proxy_retries_total";
pub const PROXY_BACKEND_REJECTED_TOTAL: &str = "hale_proxy_backend_rejected_total";
pub const COORD_REDIS_UP: &str = "hale_coord_redis_up";
pub const COORD_CHECKS_SKIPPED_TOTAL: &str = "hale_coord_checks_skipped_total";
pub const COORD_REJECTED_TOTAL: &str = "hale_coord_rejected_total";
pub const OUTLIER_EJECTIONS_TOTAL: &str = "hale_outlier_ejections_total";
pub const OUTLIER_WITHHELD_TOTAL: &str = "hale_outlier_ejections_withheld_total";
pub const PROXY_ENDPOINT_RUNTIMES: &str = "hale_proxy_endpoint_runtimes";

/// Buckets of `hale_health_check_duration_seconds`: a local check answers in a millisecond, a
/// check that times out takes seconds.
const CHECK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `hale_proxy_request_duration_seconds`: generations run for minutes.
const REQUEST_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The media type of the Prometheus text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("could not build the Prometheus recorder")]
    Build(#[source] BuildError),
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
}

/// Builds the recorder, installs it as the process's global recorder and returns it.
/// Call once, from the binary; a second call fails with [`MetricsError::AlreadyInstalled`].
pub fn install_metrics() -> Result<Metrics, MetricsError> {
    let m = Metrics::detached()?;
    metrics::set_global_recorder(m.recorder.clone()).map_err(|_| MetricsError::AlreadyInstalled)?;
    Ok(m)
}

/// The Prometheus recorder and the handle that renders it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    recorder: Arc<ByEndpoint>,
}

/// One recorder with Hale's buckets.
fn build_recorder() -> Result<PrometheusRecorder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HEALTH_CHECK_DURATION_SECONDS.to_owned()),
            CHECK_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(PROXY_REQUEST_DURATION_SECONDS.to_owned()),
            REQUEST_BUCKETS,
        )?
        .build_recorder())
}

impl Metrics {
    /// A recorder with Hale's buckets and descriptions that is not installed globally:
    /// only what is recorded through [`recorder`](Self::recorder) (and the gauges
    /// `/metrics` sets itself) reaches it. For tests.
    pub fn detached() -> Result<Self, MetricsError> {
        let recorder = ByEndpoint::new(build_recorder).map_err(MetricsError::Build)?;
        metrics::with_local_recorder(&recorder, describe_all);
        Ok(Self {
            recorder: Arc::new(recorder),
        })
    }

    /// The recorder itself, e.g. for `metrics::with_local_recorder` in a test.
    pub fn recorder(&self) -> &ByEndpoint {
        &self.recorder
    }

    /// Drains histogram samples every `period` so memory stays bounded between scrapes.
    /// The exporter crate leaves this to whoever installs the recorder.
    pub fn spawn_upkeep(&self, period: Duration) -> JoinHandle<()> {
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                recorder.run_upkeep();
            }
        })
    }

    /// Forgets every series of the endpoints `store` no longer lists (see [`by_endpoint`]):
    /// each scrape does, and so does a config reload, so memory does not wait for a scrape.
    pub fn forget_removed_endpoints(&self, store: &hale_core::HealthStore) -> Arc<Snapshot> {
        // The mark before the snapshot: an endpoint added after it keeps its series.
        let mark = self.recorder.mark();
        let snapshot = store.snapshot();
        self.recorder
            .retain(|name| snapshot.get(name).is_some(), mark);
        snapshot
    }

    /// Sets the per-endpoint gauges from `snapshot` as it stands at `now`.
    pub(crate) fn set_endpoint_gauges(
        &self,
        snapshot: &Snapshot,
        now: Instant,
        breaker: impl Fn(&str) -> BreakerState,
    ) {
        metrics::with_local_recorder(self.recorder.as_ref(), || {
            for e in &snapshot.endpoints {
                let name = &e.endpoint.name;
                let up = if e.health.is_routable(now) { 1.0 } else { 0.0 };
                let open = if breaker(name) == BreakerState::Open {
                    1.0
                } else {
                    0.0
                };
                gauge!(ENDPOINT_UP, "endpoint" => name.to_string()).set(up);
                gauge!(ENDPOINT_STATE, "endpoint" => name.to_string())
                    .set(f64::from(e.health.state.code()));
                gauge!(BREAKER_OPEN, "endpoint" => name.to_string()).set(open);
                gauge!(ENDPOINT_DRAINED, "endpoint" => name.to_string()).set(if e.health.drained {
                    1.0
                } else {
                    0.0
                });
            }
        });
    }

    pub fn render(&self) -> String {
        self.recorder.render()
    }
}

/// Gives every `hale_` series its `HELP` line.
fn describe_all() {
    describe_gauge!(
        ENDPOINT_UP,
        "1 if the endpoint may receive traffic now (health state, rate limit, not drained), else 0."
    );
    describe_gauge!(
        ENDPOINT_STATE,
        "Health state of the endpoint: 0 unknown, 1 healthy, 2 degraded, 3 recovering, 4 unhealthy."
    );
    describe_gauge!(
        ENDPOINT_DRAINED,
        "1 while an operator has drained the endpoint (no new requests), else 0."
    );
    describe_gauge!(
        BREAKER_OPEN,
        "1 while the endpoint's request-path circuit breaker is open, else 0."
    );
    describe_counter!(
        HEALTH_CHECKS_TOTAL,
        "Health checks this replica ran, by endpoint and outcome."
    );
    describe_histogram!(
        HEALTH_CHECK_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one health check, by endpoint."
    );
    describe_counter!(
        STATE_TRANSITIONS_TOTAL,
        "Health state changes, by endpoint, from and to."
    );
    describe_counter!(
        PROXY_REQUESTS_TOTAL,
        "Proxied requests, by model, endpoint and status."
    );
    describe_histogram!(
        PROXY_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of one proxied request, until its last byte."
    );
    describe_counter!(
        PROXY_RETRIES_TOTAL,
        "Requests sent once more to another endpoint, by the endpoint that failed them and the reason (connect_failure, 429, 502, 503, 504, first_byte_timeout)."
    );
    describe_counter!(
        PROXY_BACKEND_REJECTED_TOTAL,
        "Backend answers to the Ollama routes Hale merges (/api/ps, /api/version) skipped as malformed, by endpoint and route."
    );
    describe_gauge!(COORD_REDIS_UP, "1 while Redis answers, else 0.");
    describe_counter!(
        COORD_CHECKS_SKIPPED_TOTAL,
        "Checks this replica skipped because another replica ran them."
    );
    describe_counter!(
        COORD_REJECTED_TOTAL,
        "Values read from Redis or its channel that were refused, by kind (due, fence, malformed, signature)."
    );
    describe_counter!(
        OUTLIER_EJECTIONS_TOTAL,
        "Endpoints this replica ejected from its traffic, by endpoint and signal."
    );
    describe_counter!(
        OUTLIER_WITHHELD_TOTAL,
        "Ejections refused because too few of a model's endpoints would remain."
    );
    describe_gauge!(
        PROXY_ENDPOINT_RUNTIMES,
        "Per-endpoint proxy runtimes alive: the configured endpoints plus retired ones still finishing requests."
    );
}

/// `GET /metrics`: the gauges are set from the current snapshot, then everything is rendered.
pub(crate) async fn scrape(State(state): State<ApiState>) -> Response {
    let snapshot = state.metrics().forget_removed_endpoints(state.store());
    state
        .metrics()
        .set_endpoint_gauges(&snapshot, Instant::now(), |name| state.breaker_state(name));
    let body = state.metrics().render();
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fixture, OpenBreakers};
    use axum::http::StatusCode;
    use hale_core::{CheckOutcome, CheckResult, Now};
    use std::sync::Arc;

    #[tokio::test]
    async fn gauges_follow_the_snapshot_at_scrape_time() {
        let f = Fixture::new("");
        f.ok("a");
        let r = f.get("/metrics", None).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.header("content-type").starts_with("text/plain"));
        let text = r.text();
        assert!(
            text.contains(r#"hale_endpoint_up{endpoint="a"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_endpoint_up{endpoint="b"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_endpoint_state{endpoint="a"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_endpoint_state{endpoint="b"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_breaker_open{endpoint="a"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("# HELP hale_endpoint_state Health state of the endpoint: 0 unknown"),
            "{text}"
        );

        // A passive failure is visible at the very next scrape.
        f.store
            .passive_failure("a", &CheckResult::ConnectRefused, Now::capture());
        let text = f.get("/metrics", None).await.text();
        assert!(
            text.contains(r#"hale_endpoint_up{endpoint="a"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_endpoint_state{endpoint="a"} 4"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn breaker_gauge_and_described_series() {
        let f = Fixture::with_state("", |s| s.with_breakers(Arc::new(OpenBreakers(&["b"]))));
        let text = f.get("/metrics", None).await.text();
        assert!(
            text.contains(r#"hale_breaker_open{endpoint="b"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_breaker_open{endpoint="a"} 0"#),
            "{text}"
        );

        // Series recorded by other crates carry their HELP text and Hale's buckets.
        metrics::with_local_recorder(f.state.metrics().recorder(), || {
            metrics::counter!(HEALTH_CHECKS_TOTAL, "endpoint" => "a", "outcome" => "ok")
                .increment(1);
            metrics::histogram!(HEALTH_CHECK_DURATION_SECONDS, "endpoint" => "a").record(0.003);
        });
        let text = f.get("/metrics", None).await.text();
        assert!(
            text.contains("# HELP hale_health_checks_total Health checks this replica ran"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"hale_health_check_duration_seconds_bucket{endpoint="a",le="0.005"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"hale_health_check_duration_seconds_bucket{endpoint="a",le="0.001"} 0"#
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_removed_endpoints_series_leave_at_the_next_scrape_and_the_rest_stay() {
        let f = Fixture::new("");
        metrics::with_local_recorder(f.state.metrics().recorder(), || {
            for e in ["a", "b"] {
                metrics::counter!(HEALTH_CHECKS_TOTAL, "endpoint" => e, "outcome" => "ok")
                    .increment(1);
                metrics::histogram!(PROXY_REQUEST_DURATION_SECONDS, "endpoint" => e).record(0.2);
            }
        });
        let text = f.get("/metrics", None).await.text();
        assert!(text.contains(r#"endpoint="b""#), "{text}");
        // A reload keeps a and c only.
        let keep: Vec<_> = f
            .store
            .snapshot()
            .endpoints
            .iter()
            .filter(|e| &*e.endpoint.name != "b")
            .map(|e| (*e.endpoint).clone())
            .collect();
        f.store.reconcile(keep, Now::capture());
        let text = f.get("/metrics", None).await.text();
        assert!(!text.contains(r#"endpoint="b""#), "{text}");
        // a's series stay although a saw nothing new, each family under one header.
        assert!(
            text.contains(r#"hale_health_checks_total{endpoint="a",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_proxy_request_duration_seconds_count{endpoint="a"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hale_endpoint_up{endpoint="c"} 0"#),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE hale_endpoint_up gauge").count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn the_proxy_records_the_name_described_here() {
        assert_eq!(
            PROXY_BACKEND_REJECTED_TOTAL,
            hale_proxy::BACKEND_REJECTED_TOTAL
        );
    }

    #[test]
    fn installs_once() {
        // The only test that touches the global recorder; every other test uses a detached
        // one, which `with_local_recorder` puts ahead of the global one anyway.
        let m = install_metrics().unwrap();
        metrics::counter!(PROXY_RETRIES_TOTAL).increment(2);
        assert!(
            m.render().contains("hale_proxy_retries_total 2"),
            "{}",
            m.render()
        );
        assert!(matches!(
            install_metrics(),
            Err(MetricsError::AlreadyInstalled)
        ));
    }

    #[tokio::test]
    async fn detached_recorders_do_not_share_values() {
        let one = Fixture::new("");
        let two = Fixture::new("");
        one.store.observe(
            "a",
            &CheckOutcome::ok(std::time::Duration::from_millis(3)),
            Now::capture(),
        );
        let _ = one.get("/metrics", None).await;
        let text = two.get("/metrics", None).await.text();
        assert!(
            text.contains(r#"hale_endpoint_up{endpoint="a"} 0"#),
            "{text}"
        );
    }
}
