//! Test fixtures shared by this crate's unit tests: a store with three endpoints, the state and
//! router around it, and a one-call way to send a request through the router (no sockets).
//!
//! The endpoints: `a` (vllm, models `m1`, an upstream `api_key` that must never be shown),
//! `b` (ollama, priority 50, models `m1`, `m2`) and `c` (openai, models discovered, so none
//! yet). One failed check turns a running endpoint unhealthy, and jitter is off.

use crate::{ApiState, BreakerView, Metrics, ServerConfig, SharedStatusView, router};
use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use hale_core::{
    BreakerState, CheckOutcome, EndpointConfig, EndpointKind, HealthConfig, HealthStore, Now,
    Secret,
};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// The upstream key of endpoint `a`.
pub(crate) const SECRET_KEY: &str = "sk-upstream-key-do-not-show";
/// An admin token for tests that set one.
pub(crate) const ADMIN_TOKEN: &str = "admin-t0ken-do-not-show";

pub(crate) struct Fixture {
    pub store: Arc<HealthStore>,
    pub state: ApiState,
    router: Router,
}

impl Fixture {
    /// The three endpoints, with `admin_token` (empty for none).
    pub fn new(admin_token: &str) -> Self {
        Self::with_state(admin_token, |s| s)
    }

    /// As [`new`](Self::new), with `wire` adding views to the state before the router is built.
    pub fn with_state(admin_token: &str, wire: impl FnOnce(ApiState) -> ApiState) -> Self {
        let mut a = EndpointConfig::new("a", "http://127.0.0.1:9001", EndpointKind::Vllm);
        a.models = vec!["m1".into()];
        a.api_key = Secret::new(SECRET_KEY);
        let mut b = EndpointConfig::new("b", "http://127.0.0.1:9002", EndpointKind::Ollama);
        b.models = vec!["m1".into(), "m2".into()];
        b.priority = 50;
        let c = EndpointConfig::new("c", "http://127.0.0.1:9003", EndpointKind::Openai);
        let endpoints = [a, b, c]
            .iter()
            .map(|c| c.resolve("endpoints").unwrap())
            .collect();
        Self::build(admin_token, endpoints, wire)
    }

    /// No endpoints at all.
    pub fn empty() -> Self {
        Self::build("", Vec::new(), |s| s)
    }

    fn build(
        admin_token: &str,
        endpoints: Vec<hale_core::Endpoint>,
        wire: impl FnOnce(ApiState) -> ApiState,
    ) -> Self {
        let health = HealthConfig {
            unhealthy_threshold: 1,
            jitter: 0.0,
            ..HealthConfig::default()
        };
        let store = Arc::new(HealthStore::new(
            "pod-1",
            endpoints,
            &health,
            Now::capture(),
        ));
        let server = ServerConfig {
            admin_token: Secret::new(admin_token),
            ..ServerConfig::default()
        };
        let state = wire(ApiState::new(
            store.clone(),
            server,
            "0.1.0-test",
            Metrics::detached().unwrap(),
        ));
        Self {
            router: router(state.clone()),
            store,
            state,
        }
    }

    /// One good 3 ms check of `name`.
    pub fn ok(&self, name: &str) {
        self.store.observe(
            name,
            &CheckOutcome::ok(Duration::from_millis(3)),
            Now::capture(),
        );
    }

    /// `GET path`, with `Authorization: Bearer <token>` when a token is given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        self.get_with(path, auth.as_deref()).await
    }

    /// `GET path` with this exact `Authorization` header, if any.
    pub async fn get_with(&self, path: &str, authorization: Option<&str>) -> Reply {
        let mut req = Request::get(path);
        if let Some(value) = authorization {
            req = req.header(header::AUTHORIZATION, value);
        }
        self.request(req.body(Body::empty()).unwrap()).await
    }

    /// The response as the router made it, its body unread (for streams).
    pub async fn raw_request(&self, req: Request<Body>) -> axum::response::Response {
        self.router.clone().oneshot(req).await.unwrap()
    }

    pub async fn request(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: to_bytes(body, 1 << 20).await.unwrap(),
        }
    }
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, or "" when it is absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Breakers that are open for the named endpoints and closed for the rest.
pub(crate) struct OpenBreakers(pub &'static [&'static str]);

impl BreakerView for OpenBreakers {
    fn breaker_state(&self, endpoint: &str) -> BreakerState {
        if self.0.contains(&endpoint) {
            BreakerState::Open
        } else {
            BreakerState::Closed
        }
    }
}

/// A shared status as coord would report it in sharded mode.
pub(crate) struct SharedFake;

impl SharedStatusView for SharedFake {
    fn shared_status(&self) -> serde_json::Value {
        serde_json::json!({
            "shared_health_check_enabled": true,
            "status": {"pod_id": "pod-1", "mode": "sharded", "redis_available": true, "lock_ttl": 60}
        })
    }
}
