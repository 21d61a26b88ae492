//! The global lease (global mode) and giving leases back at shutdown.
//!
//! In global mode one replica holds `hale:{ns}:lease` and checks every endpoint; the others
//! read its results. Unlike LiteLLM's lock, which is taken per run and may expire mid-run, the
//! lease is held for the holder's whole tenure and extended every [`renew_every`] (a third of
//! `lock_ttl`, at most 2 s) with an owner-checked script, so it never lapses under a live
//! holder, and its release is owner-checked too. Taking it takes a fencing token like any
//! acquisition. Non-holders try to take it on the same cadence, which also tells them who
//! holds it (`lock_owner`). While Redis is declared unavailable the holder gives it up
//! locally (it may lapse in Redis), and takes or learns it again once Redis is back.
//!
//! The lease decides who goes *first* in each round (see [`crate::rounds`]); the per-round
//! leases and due times still decide who checks. So a holder that dies costs each endpoint at
//! most one late round — the others take rounds over after their offsets — instead of a wait
//! of up to `lock_ttl` for its lease to expire.
//!
//! [`Global`] is this module's state: only the lease task writes it; the coordinator reads it.

use crate::book::Book;
use crate::cache::{GlobalLease, ResultCache};
use crate::health::Health;
use crate::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::MissedTickBehavior;

/// How often the holder extends the global lease (and others try to take it).
pub fn renew_every(lock_ttl: Duration) -> Duration {
    (lock_ttl / 3).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// Whether this replica holds the global lease, and who does as last seen.
#[derive(Debug, Default)]
pub(crate) struct Global {
    holder: AtomicBool,
    owner: Mutex<Option<Arc<str>>>,
}

impl Global {
    pub fn is_holder(&self) -> bool {
        self.holder.load(Ordering::Acquire)
    }

    pub fn owner(&self) -> Option<Arc<str>> {
        lock(&self.owner).clone()
    }

    fn hold(&self, pod_id: &Arc<str>) {
        self.holder.store(true, Ordering::Release);
        *lock(&self.owner) = Some(pod_id.clone());
    }

    /// Gives the lease up locally; returns whether this replica held it.
    fn drop_hold(&self) -> bool {
        self.holder.swap(false, Ordering::AcqRel)
    }
}

/// The lease task's handles.
#[derive(Debug)]
pub(crate) struct LeaseTask {
    pub cache: ResultCache,
    pub health: Arc<Health>,
    pub global: Arc<Global>,
    pub pod_id: Arc<str>,
    pub lock_ttl: Duration,
}

impl LeaseTask {
    pub(crate) async fn run(self) {
        let mut tick = tokio::time::interval(renew_every(self.lock_ttl));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.health.is_available() {
                if self.global.drop_hold() {
                    tracing::info!(
                        "Pod {} released health check lock (Redis unreachable)",
                        self.pod_id
                    );
                }
                continue;
            }
            self.renew().await;
        }
    }

    /// Takes, extends or learns the owner of the global lease.
    async fn renew(&self) {
        match self.cache.renew_global(self.lock_ttl).await {
            Err(e) => {
                self.health.failed("renewing the global lease", &e);
            }
            Ok(GlobalLease::Acquired(fence)) => {
                self.health.ok();
                self.global.hold(&self.pod_id);
                tracing::info!(fence = %fence, "Pod {} acquired health check lock", self.pod_id);
            }
            Ok(GlobalLease::Extended) => {
                self.health.ok();
                self.global.hold(&self.pod_id);
            }
            Ok(GlobalLease::HeldBy(owner)) => {
                self.health.ok();
                if self.global.drop_hold() {
                    tracing::warn!(
                        owner = %owner,
                        "Pod {} lost health check lock: it expired and was taken",
                        self.pod_id
                    );
                }
                *lock(&self.global.owner) = Some(Arc::from(owner));
            }
        }
    }
}

/// Gives back, owner-checked, the global lease and every round lease this replica holds.
pub(crate) async fn release_all(
    cache: &ResultCache,
    health: &Health,
    book: &Book,
    global: &Global,
    pod_id: &str,
) {
    if !health.is_available() {
        return;
    }
    if global.drop_hold() {
        match cache.release_global().await {
            Ok(true) => tracing::info!("Pod {pod_id} released health check lock"),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(error = %e, "global lease not released; it expires by itself")
            }
        }
    }
    for name in book.take_all_leases() {
        if let Err(e) = cache.release_round(&name).await {
            tracing::debug!(endpoint = %name, error = %e, "round lease not released; it expires by itself");
        }
    }
}
