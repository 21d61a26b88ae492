//! The subscriber task: receives every result the fleet writes and applies it to this
//! replica's store, and is the watchdog that brings a replica back when Redis returns.
//!
//! It holds a dedicated pub/sub connection (bb8 pools multiplexed connections, which cannot
//! subscribe). On every (re)subscription it first re-reads all result keys of the configured
//! endpoints, so nothing written while it was away is missed, and only then declares Redis
//! available: from that moment `may_check` coordinates again. While Redis is unreachable it
//! retries every [`RECONNECT_EVERY`], so a replica rejoins well within one interval of Redis
//! coming back. When another task finds Redis unreachable (a failed operation), the
//! subscription is dropped and rebuilt the same way, so a half-dead connection cannot leave a
//! replica believing it is coordinated.
//!
//! Applying follows core's rule: only results with a newer fence are adopted; each adopted
//! check made by another replica counts as a check skipped here.

use crate::coordinator::{Inner, lock};
use crate::pool::{CONNECT_TIMEOUT, OP_TIMEOUT, RedisFailure};
use crate::wire::{self, StoredResult};
use futures_util::StreamExt as _;
use hale_core::{Adoption, Event, Now, ResultKind};
use redis::aio::PubSub;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};

/// How often a replica without Redis tries to reach it again.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(500);

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut outages = inner.outages.subscribe();
    loop {
        match subscribe(&inner).await {
            Ok(mut pubsub) => {
                outages.borrow_and_update();
                let synced = match inner.flush_pool().await {
                    Ok(()) => inner.resync().await,
                    Err(e) => Err(e),
                };
                match synced {
                    Ok(()) => {
                        inner.regained();
                        inner.contacted.send_replace(true);
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                message = messages.next() => match message {
                                    Some(m) => inner.on_message(&m),
                                    None => {
                                        inner.lost("the pub/sub connection closed");
                                        break;
                                    }
                                },
                                changed = outages.changed() => {
                                    if changed.is_err() {
                                        return;
                                    }
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        inner.failed("re-reading shared results", &e);
                        inner.contacted.send_replace(true);
                    }
                }
            }
            Err(e) => {
                inner.lost(&e.to_string());
                inner.contacted.send_replace(true);
            }
        }
        sleep(RECONNECT_EVERY).await;
    }
}

/// Opens the dedicated pub/sub connection and subscribes to the namespace's channel.
async fn subscribe(inner: &Inner) -> Result<PubSub, RedisFailure> {
    let client =
        redis::Client::open(inner.cache.pool().info().clone()).map_err(RedisFailure::from_redis)?;
    let mut pubsub = timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| RedisFailure::Unreachable("pub/sub connect timed out".to_owned()))?
        .map_err(RedisFailure::from_redis)?;
    timeout(OP_TIMEOUT, pubsub.subscribe(inner.cache.keys().channel()))
        .await
        .map_err(|_| RedisFailure::Unreachable("SUBSCRIBE timed out".to_owned()))?
        .map_err(RedisFailure::from_redis)?;
    Ok(pubsub)
}

/// Logs and counts a transition adopted from another replica.
pub(crate) fn log_transition(event: &Event) {
    metrics::counter!(
        "hale_state_transitions_total",
        "endpoint" => event.endpoint.to_string(),
        "from" => event.from.as_str(),
        "to" => event.to.as_str()
    )
    .increment(1);
    tracing::info!(
        endpoint = %event.endpoint,
        from = %event.from,
        to = %event.to,
        reason = %event.reason.as_ref().map(|r| r.as_str()).unwrap_or_default(),
        checked_by = %event.pod_id,
        source = "shared",
        "endpoint state changed"
    );
}

impl Inner {
    /// Gets a working pooled connection: connections that died with the old Redis fail at
    /// once and are dropped, so a few PINGs are enough to flush them.
    async fn flush_pool(&self) -> Result<(), RedisFailure> {
        let mut last = None;
        for _ in 0..6 {
            match self.cache.ping().await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_unreachable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RedisFailure::Unreachable("no connection".to_owned())))
    }

    /// Re-reads the result of every configured endpoint and applies it.
    async fn resync(&self) -> Result<(), RedisFailure> {
        let roster = self.roster();
        let stored = self.cache.read_all(&roster.order).await?;
        let found = stored.len();
        let adopted = stored.into_iter().filter(|s| self.apply(s.clone())).count();
        tracing::debug!(
            found,
            adopted,
            endpoints = roster.order.len(),
            "re-read shared results"
        );
        Ok(())
    }

    fn on_message(&self, message: &redis::Msg) {
        let payload: String = match message.get_payload() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable shared event");
                return;
            }
        };
        match wire::from_message(&payload) {
            Ok(stored) => {
                self.apply(stored);
            }
            Err(e) => tracing::warn!(error = %e, "unreadable shared event"),
        }
    }

    /// Applies a result read or received; returns whether the store adopted it.
    fn apply(&self, stored: StoredResult) -> bool {
        let Some(r) = self.rounds_of(&stored.endpoint) else {
            return false;
        };
        if stored.due_at > 0 {
            let mut st = lock(&r.state);
            let due_in = Duration::from_millis(u64::try_from(stored.due_in_ms).unwrap_or(0));
            st.known_due = Some(Instant::now() + due_in);
            st.round = stored.due_at;
        }
        let Some(store) = self.store.upgrade() else {
            return false;
        };
        let result = &stored.result;
        match store.apply_remote(&stored.endpoint, result, Now::capture()) {
            Adoption::Adopted(event) => {
                if matches!(result.kind, ResultKind::Check { .. })
                    && result.checked_by != self.pod_id
                {
                    self.checks_skipped.fetch_add(1, Ordering::Relaxed);
                    self.skipped_metric.increment(1);
                }
                if let Some(event) = event {
                    log_transition(&event);
                }
                true
            }
            Adoption::Stale | Adoption::UnknownEndpoint => false,
        }
    }
}
