//! The subscriber task: receives every result the fleet writes and applies it to this
//! replica's store, and is what brings a replica back when Redis returns.
//!
//! It holds a dedicated pub/sub connection (a multiplexed connection cannot subscribe). On
//! every (re)subscription it first proves Redis usable — a small write probe every
//! [`RECONNECT_EVERY`], for [`REJOIN_AFTER`](crate::health::REJOIN_AFTER) while an outage is
//! declared (at once at start-up or when Redis never went down) — then re-reads all result
//! keys of the configured endpoints, so nothing written while it was away is missed, and
//! only then declares Redis available: from that moment `may_check` coordinates again. When
//! an outage is declared (see [`crate::health`]), the subscription is dropped and rebuilt the
//! same way, so a half-dead connection cannot leave a replica believing it is coordinated.
//!
//! Applying follows core's rule (only results with a newer fence are adopted) after the
//! coordinator's bounds (see [`crate::coordinator`]); each adopted check made by another
//! replica counts as a check skipped here. Unreadable messages are refused and counted
//! (`hale_coord_rejected_total{kind="malformed"}`), never fatal.

use crate::conn::{CONNECT_TIMEOUT, OP_TIMEOUT, RedisFailure};
use crate::coordinator::Inner;
use crate::rejected::Kind;
use crate::wire;
use futures_util::StreamExt as _;
use hale_core::Event;
use redis::aio::PubSub;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout};

/// How often a replica without Redis tries to reach it again.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(500);

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut outages = inner.health.outages();
    loop {
        match subscribe(&inner).await {
            Ok(mut pubsub) => {
                outages.borrow_and_update();
                if inner.rejoin().await {
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(m) => inner.on_message(&m),
                                None => {
                                    inner.failed(
                                        "the pub/sub connection",
                                        &RedisFailure::Unreachable("closed".to_owned()),
                                    );
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
            }
            Err(e) => inner.failed("subscribing to shared events", &e),
        }
        inner.contacted.send_replace(true);
        sleep(RECONNECT_EVERY).await;
    }
}

/// Opens the dedicated pub/sub connection and subscribes to the namespace's channel.
async fn subscribe(inner: &Inner) -> Result<PubSub, RedisFailure> {
    let mut pubsub = timeout(
        CONNECT_TIMEOUT,
        inner.cache.conn().client().get_async_pubsub(),
    )
    .await
    .map_err(|_| RedisFailure::Unreachable("pub/sub connect timed out".to_owned()))?
    .map_err(RedisFailure::from_redis)?;
    timeout(OP_TIMEOUT, pubsub.subscribe(inner.cache.keys().channel()))
        .await
        .map_err(|_| RedisFailure::Timeout)?
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
    /// Proves Redis usable (see the module docs), re-reads every result and declares Redis
    /// available. Returns false on a failure (counted).
    async fn rejoin(&self) -> bool {
        loop {
            if let Err(e) = self.cache.probe().await {
                self.failed("probing Redis", &e);
                return false;
            }
            if self.health.probed() {
                break;
            }
            self.contacted.send_replace(true);
            sleep(RECONNECT_EVERY).await;
        }
        if let Err(e) = self.resync().await {
            self.failed("re-reading shared results", &e);
            return false;
        }
        self.health.rejoin();
        self.contacted.send_replace(true);
        true
    }

    /// Re-reads the result of every configured endpoint and applies it.
    async fn resync(&self) -> Result<(), RedisFailure> {
        let roster = self.roster();
        let stored = self.cache.read_all(&roster.order).await?;
        self.ok();
        let found = stored.len();
        let mut adopted = 0;
        for (name, parsed) in stored {
            match parsed {
                Ok(s) => adopted += usize::from(self.apply(s)),
                Err(e) => self.rejected.reject(Kind::of(&e), &name, &e.to_string()),
            }
        }
        tracing::debug!(
            found,
            adopted,
            endpoints = roster.order.len(),
            "re-read shared results"
        );
        Ok(())
    }

    fn on_message(&self, message: &redis::Msg) {
        let payload = match message.get_payload::<String>() {
            Ok(p) => p,
            Err(e) => {
                let e = wire::WireError(format!("payload: {e}"));
                return self.rejected.reject(Kind::Malformed, "", &e.to_string());
            }
        };
        match wire::taken(&payload) {
            Some(Ok((endpoint, owner, lease))) => return self.taken(endpoint, owner, lease),
            Some(Err(e)) => return self.rejected.reject(Kind::Malformed, "", &e.to_string()),
            None => {}
        }
        let parsed = wire::from_message(&payload, self.cache.signer());
        match parsed {
            Ok(stored) => {
                self.apply(stored);
            }
            Err(e) => self.rejected.reject(Kind::of(&e), "", &e.to_string()),
        }
    }
}
