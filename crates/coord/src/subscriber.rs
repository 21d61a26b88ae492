//! The subscriber task: receives every result the fleet writes and applies it to this
//! replica's store, and is what brings a replica back when Redis returns.
//!
//! It holds a dedicated pub/sub connection (a multiplexed connection cannot subscribe). On
//! every (re)subscription it first proves Redis usable — a small write probe every
//! [`RECONNECT_EVERY`], for [`REJOIN_AFTER`](crate::health::REJOIN_AFTER) while an outage is
//! declared (at once at start-up or when Redis never went down) — then re-reads all result
//! keys of the configured endpoints, so nothing written while it was away is missed, and
//! only then declares Redis available: from that moment `may_check` coordinates again. With
//! Sentinel or a Cluster, a probe answered by another server than at the last rejoin (a
//! promoted replica: see `rejoin`) skips the wait, so a failover costs the fleet about the
//! promotion time plus a probe period of local checks. When
//! an outage is declared (see [`crate::health`]), the subscription is dropped and rebuilt the
//! same way, so a half-dead connection cannot leave a replica believing it is coordinated.
//!
//! Applying follows core's rule (only results with a newer fence are adopted) after the
//! bounds of [`crate::adopt`]; each adopted check made by another
//! replica counts as a check skipped here. Unreadable messages are refused and counted
//! (`hale_coord_rejected_total{kind="malformed"}`), never fatal.

use crate::adopt::Adopter;
use crate::book::Book;
use crate::cache::ResultCache;
use crate::config::Topology;
use crate::conn::{CONNECT_TIMEOUT, Event, Events, REJOIN_OP_TIMEOUT, RedisFailure};
use crate::health::Health;
use crate::rejected::Kind;
use crate::wire;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::sleep;

/// How often a replica without Redis tries to reach it again.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// How many result keys one re-read reads per round trip.
pub const RESYNC_CHUNK: usize = 100;

/// The subscriber task's handles; it alone says when the first contact is done.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub cache: ResultCache,
    pub health: Arc<Health>,
    pub book: Arc<Book>,
    pub adopter: Arc<Adopter>,
    pub contacted: watch::Sender<bool>,
}

impl Subscriber {
    pub(crate) async fn run(self) {
        let mut outages = self.health.outages();
        let mut node = None;
        loop {
            match self.subscribe().await {
                Ok(mut pubsub) => {
                    if outages.has_changed().unwrap_or(false) {
                        // An outage was declared since the last rejoin: what Redis said
                        // about rounds then is not to be trusted now.
                        self.book.forget_all();
                    }
                    outages.borrow_and_update();
                    if self.rejoin(&mut node).await {
                        loop {
                            tokio::select! {
                                message = pubsub.next() => match message {
                                    Some(m) => self.on_message(&m),
                                    None => {
                                        self.health.failed(
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
                                    self.book.forget_all();
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    self.health.failed("subscribing to shared events", &e);
                }
            }
            self.contacted.send_replace(true);
            sleep(RECONNECT_EVERY).await;
        }
    }

    /// Opens the dedicated pub/sub connection and subscribes to the namespace's channel
    /// (sharded on a Cluster; see [`crate::conn`]).
    async fn subscribe(&self) -> Result<Events, RedisFailure> {
        self.cache
            .conn()
            .subscribe(
                &self.cache.keys().channel(),
                CONNECT_TIMEOUT.max(REJOIN_OP_TIMEOUT),
            )
            .await
    }

    /// Proves Redis usable (see the module docs), re-reads every result and declares Redis
    /// available. Returns false on a failure (counted).
    ///
    /// `node` is the run id of the server of the last rejoin. With Sentinel or a Cluster, a
    /// probe answered by another server is a failover done (the sentinels or the cluster
    /// promoted a replica, and only a master accepts the probe's write): the wait of
    /// [`REJOIN_AFTER`](crate::health::REJOIN_AFTER), which guards against a flapping
    /// server, is skipped, so the fleet is coordinated again within about a probe period of
    /// the promotion. A single Redis that restarted keeps the wait.
    async fn rejoin(&self, node: &mut Option<String>) -> bool {
        let failover_aware = self.cache.conn().topology() != Topology::Single;
        loop {
            let id = match self.cache.probe().await {
                Ok(id) => id,
                Err(e) => {
                    self.health.failed("probing Redis", &e);
                    return false;
                }
            };
            let promoted = failover_aware && node.is_some() && id.is_some() && id != *node;
            let ready = self.health.probed();
            if ready || promoted {
                if promoted {
                    tracing::info!(
                        "Redis: another server is the master now (failover); rejoining at once"
                    );
                }
                *node = id;
                break;
            }
            self.contacted.send_replace(true);
            sleep(RECONNECT_EVERY).await;
        }
        if let Err(e) = self.resync().await {
            self.health.failed("re-reading shared results", &e);
            return false;
        }
        self.health.rejoin();
        self.contacted.send_replace(true);
        true
    }

    /// Re-reads the result of every configured endpoint and applies it, [`RESYNC_CHUNK`]
    /// keys per round trip, each within [`REJOIN_OP_TIMEOUT`]: one pipeline of every key
    /// (thousands) could not be answered and parsed within one operation's timeout on a
    /// starved host, so a replica would never rejoin.
    async fn resync(&self) -> Result<(), RedisFailure> {
        let roster = self.book.roster();
        let (mut found, mut adopted) = (0, 0);
        for chunk in roster.order.chunks(RESYNC_CHUNK) {
            let stored = self.cache.read_all_within(chunk, REJOIN_OP_TIMEOUT).await?;
            self.health.ok();
            found += stored.len();
            for (name, parsed) in stored {
                match parsed {
                    Ok(s) => adopted += usize::from(self.adopter.apply(s)),
                    Err(e) => self
                        .adopter
                        .rejected()
                        .reject(Kind::of(&e), &name, &e.to_string()),
                }
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

    fn on_message(&self, message: &Event) {
        let rejected = self.adopter.rejected();
        let payload = match message {
            Ok(p) => p,
            Err(e) => {
                let e = wire::WireError(format!("payload: {e}"));
                return rejected.reject(Kind::Malformed, "", &e.to_string());
            }
        };
        match wire::taken(payload) {
            Some(Ok((endpoint, owner, lease))) => {
                return self.adopter.taken(endpoint, owner, lease);
            }
            Some(Err(e)) => return rejected.reject(Kind::Malformed, "", &e.to_string()),
            None => {}
        }
        match wire::from_message(payload, self.cache.signer()) {
            Ok(stored) => {
                self.adopter.apply(stored);
            }
            Err(e) => rejected.reject(Kind::of(&e), "", &e.to_string()),
        }
    }
}
