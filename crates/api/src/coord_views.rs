//! hale-coord's [`Coordinator`] as the api's [`SharedStatusView`]: its
//! [`CoordStatus`](hale_coord::CoordStatus) rendered in LiteLLM's `/health/shared-status`
//! shape (see DESIGN §5), plus `mode`, `checks_performed`, `checks_skipped`, `last_error` and
//! `errors_total`.
//!
//! TTLs are whole seconds where they are whole (LiteLLM prints `60`), fractional otherwise;
//! `cache_age_seconds` is rounded to a tenth of a second, as in LiteLLM's example.

use crate::SharedStatusView;
use hale_coord::{CoordMode, Coordinator};
use serde_json::{Value, json};
use std::time::Duration;

fn seconds(d: Duration) -> Value {
    if d.subsec_nanos() == 0 {
        json!(d.as_secs())
    } else {
        json!(d.as_secs_f64())
    }
}

fn mode(m: CoordMode) -> &'static str {
    match m {
        CoordMode::Global => "global",
        CoordMode::Sharded => "sharded",
    }
}

impl SharedStatusView for Coordinator {
    fn shared_status(&self) -> Value {
        let s = self.status();
        json!({
            "shared_health_check_enabled": true,
            "status": {
                "pod_id": &*s.pod_id,
                "mode": mode(s.mode),
                "redis_available": s.redis_available,
                "lock_ttl": seconds(s.lock_ttl),
                "cache_ttl": seconds(s.cache_ttl),
                "lock_owner": s.lock_owner.as_deref(),
                "lock_in_progress": s.lock_in_progress,
                "cache_available": s.cache_available,
                "cache_age_seconds": s.cache_age.map(|a| (a.as_secs_f64() * 10.0).round() / 10.0),
                "last_checked_by": s.last_checked_by.as_deref(),
                "checks_performed": s.checks_performed,
                "checks_skipped": s.checks_skipped,
                "last_error": s.last_error,
                "errors_total": s.errors_total,
            }
        })
    }

    fn mode(&self) -> String {
        mode(self.mode()).to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use hale_coord::SharedConfig;
    use hale_testkit::RedisServer;
    use std::sync::Arc;

    #[tokio::test]
    async fn renders_litellm_fields_from_a_live_coordinator() {
        let redis = RedisServer::start().await.unwrap();
        let mut coordinator = None;
        let f = Fixture::with_state("", |s| {
            let config = SharedConfig {
                enabled: true,
                redis_url: redis.url(),
                lock_ttl: Duration::from_millis(1500),
                ..SharedConfig::default()
            };
            let c = Coordinator::start(&config, "pod-1", s.store()).unwrap();
            coordinator = Some(c.clone());
            s.with_shared(Arc::new(c))
        });
        let c = coordinator.unwrap();
        c.first_contact(Duration::from_secs(2)).await;
        let body = f.get("/health/shared-status", None).await.json();
        assert_eq!(body["shared_health_check_enabled"], true);
        let s = &body["status"];
        assert_eq!(s["pod_id"], "pod-1");
        assert_eq!(s["mode"], "sharded");
        assert_eq!(s["redis_available"], true);
        assert_eq!(s["lock_ttl"], 1.5);
        assert_eq!(s["cache_ttl"], 300);
        assert_eq!(s["lock_owner"], Value::Null);
        assert_eq!(s["lock_in_progress"], false);
        assert_eq!(s["cache_available"], false, "nothing checked yet");
        assert_eq!(s["cache_age_seconds"], Value::Null);
        assert_eq!(s["checks_performed"], 0);
        assert_eq!(s["checks_skipped"], 0);
        assert_eq!(s["last_error"], Value::Null);
        assert_eq!(s["errors_total"], 0);
        let summary = f.get("/internal/status", None).await.json();
        assert_eq!(summary["mode"], "sharded");
        c.shutdown().await;
    }
}
