//! Live reload: SIGHUP and `POST /internal/reload` re-read the config file the gateway started
//! with (environment variables applied again, as at start) and apply its `endpoints:`.
//!
//! A reload that loads and validates is applied in three steps, each of which leaves requests
//! in flight alone: the store takes the new endpoint set ([`HealthStore::reconcile`]: unchanged
//! endpoints keep their health, new ones start `unknown`, removed ones leave the snapshot),
//! the proxy builds its new runtime table ([`Proxy::reload`]), and the scheduler stops, starts
//! or restarts the tasks that changed ([`SchedulerHandle::apply`]); coord follows through the
//! store. Removed endpoints' metric series are dropped right after
//! ([`hale_api::Metrics::forget_removed_endpoints`]), and their proxy runtimes are freed when
//! their last request ends. A request already sent to a removed endpoint finishes there; new ones go to the new
//! set. A file that does not load or validate is refused with one WARN line that names the key
//! and line, and the running config stays in force.
//!
//! Two files that load are refused the same way, because applying them would empty the
//! gateway (every request a 404 until the next reload): an empty file (no bytes, or only
//! comments — what a reader sees in the middle of a non-atomic write), and a config without
//! endpoints while the running one has some. Starting with either is still allowed (the
//! gateway serves its own routes with no backends); only the reload is refused.
//!
//! Only `endpoints:` is applied live. The other sections (`server`, `pod_id`, `health`,
//! `proxy`, `shared`) are read at start: a reload that changes them applies the endpoints,
//! keeps their running values, and says which keys need a restart — in a WARN line and in the
//! `restart_required` field of the answer. Reloads run one at a time.

use crate::config::{self, HaleConfig};
use hale_api::{AdminActions, ReloadReport};
use hale_core::coordination::BoxFuture;
use hale_core::{HealthStore, Now};
use hale_probe::{CheckNowError, ManualCheck, SchedulerHandle};
use hale_proxy::Proxy;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

/// Re-reads and applies the config; see the module docs.
pub struct Reloader {
    file: Option<PathBuf>,
    store: Arc<HealthStore>,
    proxy: Proxy,
    scheduler: Arc<SchedulerHandle>,
    /// Where removed endpoints' series are dropped (none in tests that need no metrics).
    metrics: Option<hale_api::Metrics>,
    /// The config in force (its `endpoints:` updated by every applied reload); the lock also
    /// makes reloads run one at a time.
    running: tokio::sync::Mutex<HaleConfig>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    pub fn new(
        file: Option<PathBuf>,
        running: HaleConfig,
        store: Arc<HealthStore>,
        proxy: Proxy,
        scheduler: Arc<SchedulerHandle>,
    ) -> Self {
        Self {
            file,
            store,
            proxy,
            scheduler,
            metrics: None,
            running: tokio::sync::Mutex::new(running),
        }
    }

    /// Drops removed endpoints' metric series after each reload.
    pub fn with_metrics(mut self, metrics: hale_api::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Re-reads the file and applies it; `trigger` names what asked (for the log).
    pub async fn apply_file(&self, trigger: &str) -> Result<ReloadReport, String> {
        let mut running = self.running.lock().await;
        let file = self.file.as_deref();
        let loaded = match config::load(file, &config::process_env()) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::warn!(
                    trigger,
                    error = %e,
                    "config reload refused; the running config stays in force"
                );
                return Err(e.to_string());
            }
        };
        if let Some(why) = emptying(&running, &loaded) {
            tracing::warn!(
                trigger,
                error = %why,
                "config reload refused; the running config stays in force"
            );
            return Err(why);
        }
        let restart_required = restart_required(&running, &loaded.config);
        let change = self.store.reconcile(loaded.endpoints, Now::capture());
        let made = self.proxy.reload();
        self.scheduler.apply(&change);
        if let Some(metrics) = &self.metrics {
            metrics.forget_removed_endpoints(&self.store);
        }
        running.endpoints = loaded.config.endpoints;
        tracing::info!(
            trigger,
            added = ?names(&change.added),
            removed = ?names(&change.removed),
            updated = ?names(&change.updated),
            replaced = ?names(&change.replaced),
            unchanged = change.unchanged,
            new_runtimes = made,
            "config reloaded"
        );
        if !restart_required.is_empty() {
            tracing::warn!(
                keys = %restart_required.join(", "),
                "config reloaded, but these settings only change at the next start; their running values stay"
            );
        }
        Ok(ReloadReport::new(change, restart_required))
    }
}

/// Why applying `loaded` over `running` would empty the gateway, if it would.
fn emptying(running: &HaleConfig, loaded: &config::LoadedConfig) -> Option<String> {
    let file = || {
        loaded
            .file
            .as_ref()
            .map_or_else(|| "the config".to_owned(), |f| f.display().to_string())
    };
    if loaded.file_is_empty {
        return Some(format!(
            "{}: the file is empty (a write still in progress?); applying it would remove every endpoint",
            file()
        ));
    }
    if loaded.endpoints.is_empty() && !running.endpoints.is_empty() {
        return Some(format!(
            "{}: endpoints: the new config has no endpoints; applying it would remove all {} running ones",
            file(),
            running.endpoints.len()
        ));
    }
    None
}

fn names(list: &[Arc<str>]) -> Vec<&str> {
    list.iter().map(|n| &**n).collect()
}

/// The keys outside `endpoints:` whose value differs between `running` and `loaded`, as
/// `section.key` (or the section alone when only a secret in it changed: secrets serialize
/// redacted, so their values are never compared as text or shown).
fn restart_required(running: &HaleConfig, loaded: &HaleConfig) -> Vec<String> {
    let mut keys = Vec::new();
    section(&mut keys, "server", &running.server, &loaded.server);
    section(&mut keys, "pod_id", &running.pod_id, &loaded.pod_id);
    section(&mut keys, "health", &running.health, &loaded.health);
    section(&mut keys, "proxy", &running.proxy, &loaded.proxy);
    section(&mut keys, "shared", &running.shared, &loaded.shared);
    keys
}

fn section<T: PartialEq + Serialize>(keys: &mut Vec<String>, name: &str, old: &T, new: &T) {
    if old == new {
        return;
    }
    let (Ok(a), Ok(b)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        keys.push(name.to_owned());
        return;
    };
    let before = keys.len();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
        fields.sort();
        fields.dedup();
        for field in fields {
            if a.get(field) != b.get(field) {
                keys.push(format!("{name}.{field}"));
            }
        }
    }
    if keys.len() == before {
        keys.push(name.to_owned());
    }
}

impl AdminActions for Reloader {
    fn reload(&self) -> BoxFuture<'_, Result<ReloadReport, String>> {
        Box::pin(self.apply_file("POST /internal/reload"))
    }

    fn check<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Result<ManualCheck, CheckNowError>> {
        Box::pin(self.scheduler.check_now(endpoint))
    }

    fn in_flight(&self, endpoint: &str) -> usize {
        self.proxy.outstanding(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(text: &str) -> config::LoadedConfig {
        let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(file.path(), text).unwrap();
        config::load(Some(file.path()), &config::EnvMap::new()).unwrap()
    }

    #[test]
    fn a_reload_that_would_empty_the_gateway_is_refused() {
        let one = "endpoints:\n  - name: a\n    url: http://127.0.0.1:1\n";
        let running = loaded(one).config;
        for empty in [
            "",
            "\n  \n",
            "# all commented out\n# endpoints:\n",
            "{}\n",
            "~\n",
        ] {
            let why = emptying(&running, &loaded(empty)).unwrap();
            assert!(why.contains("the file is empty"), "{empty:?}: {why}");
            // Even with nothing running: an empty file is never a config someone meant.
            assert!(emptying(&HaleConfig::default(), &loaded(empty)).is_some());
        }
        let none = loaded("endpoints: []\nhealth:\n  jitter: 0\n");
        let why = emptying(&running, &none).unwrap();
        assert!(
            why.contains("no endpoints") && why.contains("all 1 running"),
            "{why}"
        );
        // Nothing running: a config without endpoints changes nothing that serves.
        assert!(emptying(&HaleConfig::default(), &none).is_none());
        assert!(emptying(&running, &loaded(one)).is_none());
    }

    #[test]
    fn names_the_keys_that_need_a_restart() {
        let running = HaleConfig::default();
        let mut loaded = HaleConfig::default();
        assert!(restart_required(&running, &loaded).is_empty());
        loaded.server.listen = "127.0.0.1:9999".to_owned();
        loaded.health.healthy_threshold = 5;
        loaded.endpoints.push(hale_core::EndpointConfig::new(
            "a",
            "http://127.0.0.1:1",
            hale_core::EndpointKind::Vllm,
        ));
        assert_eq!(
            restart_required(&running, &loaded),
            ["server.listen", "health.healthy_threshold"]
        );
        // A secret is named by its section only; its value is never shown.
        let mut secret = HaleConfig::default();
        secret.server.admin_token = hale_core::Secret::new("one");
        let mut other = HaleConfig::default();
        other.server.admin_token = hale_core::Secret::new("two");
        assert_eq!(restart_required(&secret, &other), ["server"]);
    }
}
