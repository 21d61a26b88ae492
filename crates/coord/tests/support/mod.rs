//! Helpers shared by coord's integration tests.

use hale_core::{EndpointConfig, EndpointKind, HealthConfig, HealthStore, Now};
use std::sync::Arc;
use std::time::Duration;

/// A store for `pod` with endpoints `names`, each checked every second (200 ms timeouts),
/// no jitter, unhealthy after one failure.
#[expect(
    clippy::unwrap_used,
    reason = "a test fixture that cannot resolve is a bug"
)]
pub fn store(pod: &str, names: &[&str]) -> Arc<HealthStore> {
    let endpoints = names
        .iter()
        .map(|n| {
            let mut c = EndpointConfig::new(*n, "http://127.0.0.1:9", EndpointKind::Vllm);
            c.check_interval = Duration::from_secs(1);
            c.check_timeout = Duration::from_millis(200);
            c.startup.period = Duration::from_secs(1);
            c.startup.timeout = Duration::from_millis(200);
            c.resolve("e").unwrap()
        })
        .collect();
    let health = HealthConfig {
        unhealthy_threshold: 1,
        jitter: 0.0,
        ..HealthConfig::default()
    };
    Arc::new(HealthStore::new(pod, endpoints, &health, Now::capture()))
}
