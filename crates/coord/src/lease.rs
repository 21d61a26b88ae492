//! The global lease (global mode) and giving leases back at shutdown.
//!
//! In global mode one replica holds `hale:{ns}:lease` and checks every endpoint; the others
//! read its results. Unlike LiteLLM's lock, which is taken per run and may expire mid-run, the
//! lease is held for the holder's whole tenure and extended every [`renew_every`] (a third of
//! `lock_ttl`, at most 2 s) with an owner-checked script, so it never lapses under a live
//! holder, and its release is owner-checked too. Taking it takes a fencing token like any
//! acquisition. Non-holders try to take it on the same cadence, which also tells them who
//! holds it (`lock_owner`).
//!
//! The lease decides who goes *first* in each round (see [`crate::rounds`]); the per-round
//! leases and due times still decide who checks. So a holder that dies costs each endpoint at
//! most one late round — the others take rounds over after their offsets — instead of a wait
//! of up to `lock_ttl` for the lease to expire.

use crate::cache::GlobalLease;
use crate::config::CoordMode;
use crate::coordinator::{Inner, lock};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// How often the holder extends the global lease (and others try to take it).
pub fn renew_every(lock_ttl: Duration) -> Duration {
    (lock_ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(renew_every(inner.lock_ttl));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !inner.is_available() {
            continue;
        }
        inner.renew_global().await;
    }
}

impl Inner {
    /// Takes, extends or learns the owner of the global lease.
    async fn renew_global(&self) {
        match self.cache.renew_global(self.lock_ttl).await {
            Err(e) => self.failed("renewing the global lease", &e),
            Ok(GlobalLease::Acquired(fence)) => {
                self.ok();
                self.holder.store(true, Ordering::Release);
                *lock(&self.global_owner) = Some(self.pod_id.clone());
                tracing::info!(fence = %fence, "Pod {} acquired health check lock", self.pod_id);
            }
            Ok(GlobalLease::Extended) => {
                self.ok();
                self.holder.store(true, Ordering::Release);
                *lock(&self.global_owner) = Some(self.pod_id.clone());
            }
            Ok(GlobalLease::HeldBy(owner)) => {
                self.ok();
                if self.holder.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        owner = %owner,
                        "Pod {} lost health check lock: it expired and was taken",
                        self.pod_id
                    );
                }
                *lock(&self.global_owner) = Some(Arc::from(owner));
            }
        }
    }
}

/// Gives back, owner-checked, the global lease and every round lease this replica holds.
pub(crate) async fn release_all(inner: &Inner) {
    if !inner.is_available() {
        return;
    }
    if inner.mode == CoordMode::Global && inner.holder.swap(false, Ordering::AcqRel) {
        match inner.cache.release_global().await {
            Ok(true) => tracing::info!("Pod {} released health check lock", inner.pod_id),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, "global lease not released; it expires by itself")
            }
        }
    }
    let held: Vec<Arc<str>> = inner
        .roster()
        .rounds
        .values()
        .filter(|r| lock(&r.state).lease.take().is_some())
        .map(|r| r.name.clone())
        .collect();
    for name in held {
        if let Err(e) = inner.cache.release_round(&name).await {
            tracing::debug!(endpoint = %name, error = %e, "round lease not released; it expires by itself");
        }
    }
}
