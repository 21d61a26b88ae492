//! The writer task: every result this replica produces goes to Redis from here. Results of
//! one endpoint are written one at a time and in order, so they never overtake each other;
//! results of different endpoints are written concurrently, up to [`MAX_IN_FLIGHT`] at once.
//! (One write at a time made the writer's throughput one result per Redis round trip: on a
//! starved host, where a round trip takes hundreds of milliseconds, results queued for
//! seconds, round leases ran out before their results were written, and the other replicas
//! checked those rounds again.)
//!
//! - A check made under a round lease is written with that lease's fence. The write script
//!   refuses it if the stored result carries the same or a newer fence (a replica that lost
//!   its lease while paused cannot overwrite what replaced it); the refusal returns the stored
//!   result, which this replica then adopts. An accepted write sets the next round's due time
//!   (`anchor + planned`), releases the round lease (owner-checked), refreshes the key's TTL
//!   (`cache_ttl`) and publishes the change event, all in one script.
//! - A passive failure takes a fresh fence inside the script, so it is newer than any result
//!   already stored, and leaves the round's due time and lease alone.
//! - A check made without a lease (Redis was away) is not written: its fence orders nothing.
//!   Except a check run for a rediscovery (the request path asked for the models now): it is
//!   written like a passive result (a fresh fence, the round left alone), so one replica's
//!   rediscovery gives the whole fleet the new model list.
//!
//! Log lines, after LiteLLM's: "Cached health check results for N healthy and M unhealthy
//! endpoints" at INFO when those counts change, or once a minute at most; DEBUG otherwise.

use crate::adopt::Adopter;
use crate::book::Book;
use crate::cache::{ResultCache, WriteOutcome};
use crate::health::Health;
use crate::lock;
use crate::rejected::Kind;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use hale_core::{HealthStore, LocalResult, Now, ResultKind};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often the cache summary is logged at INFO while the counts stay the same.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The most writes in flight at once (each of a different endpoint).
pub const MAX_IN_FLIGHT: usize = 64;

/// When the cache summary was last logged at INFO, and what it said.
#[derive(Debug, Default)]
struct SummaryLog {
    last: Option<(usize, usize)>,
    at: Option<Instant>,
}

/// The writer task's handles and its own state (the summary log).
#[derive(Debug)]
pub(crate) struct Writer {
    pub cache: ResultCache,
    pub health: Arc<Health>,
    pub book: Arc<Book>,
    pub adopter: Arc<Adopter>,
    pub store: Weak<HealthStore>,
    pub pod_id: Arc<str>,
    summary: Mutex<SummaryLog>,
}

impl Writer {
    pub fn new(
        cache: ResultCache,
        health: Arc<Health>,
        book: Arc<Book>,
        adopter: Arc<Adopter>,
        store: Weak<HealthStore>,
        pod_id: Arc<str>,
    ) -> Self {
        Self {
            cache,
            health,
            book,
            adopter,
            store,
            pod_id,
            summary: Mutex::new(SummaryLog::default()),
        }
    }

    /// Writes what arrives on `rx` (see the module docs) until the channel closes and every
    /// write has finished.
    pub(crate) async fn run(self, mut rx: mpsc::UnboundedReceiver<LocalResult>) {
        let mut in_flight = FuturesUnordered::new();
        // Endpoints with a write in flight, and what waits behind it.
        let mut behind: HashMap<Arc<str>, VecDeque<LocalResult>> = HashMap::new();
        let mut open = true;
        loop {
            tokio::select! {
                local = rx.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match local {
                    Some(local) => {
                        let name = local.endpoint.clone();
                        match behind.get_mut(&name) {
                            Some(queue) => queue.push_back(local),
                            None => {
                                behind.insert(name.clone(), VecDeque::new());
                                in_flight.push(self.write_then(name, local));
                            }
                        }
                    }
                    None => open = false,
                },
                Some(name) = in_flight.next() => {
                    match behind.get_mut(&name).and_then(VecDeque::pop_front) {
                        Some(next) => in_flight.push(self.write_then(name, next)),
                        None => {
                            behind.remove(&name);
                        }
                    }
                }
                else => break,
            }
        }
    }

    /// Writes `local`, then names its endpoint.
    async fn write_then(&self, name: Arc<str>, local: LocalResult) -> Arc<str> {
        self.write(local).await;
        name
    }

    async fn write(&self, local: LocalResult) {
        let Some(r) = self.book.rounds_of(&local.endpoint) else {
            return;
        };
        // A passive result, or a check run for a rediscovery, takes a fresh fence and leaves
        // the round alone.
        let passive = local.result.kind == ResultKind::Passive || local.discovery;
        // A check's round lease is spent by this write whatever happens to it.
        let lease = if passive { None } else { r.take_lease() };
        if !passive && (local.result.fence.is_local() || lease.is_none()) {
            // Made without a lease (Redis was away): its fence orders nothing.
            return;
        }
        if !self.health.is_available() {
            return;
        }
        let round = lease.map(|l| (l, local.planned_next));
        let outcome = self
            .cache
            .write(&local.endpoint, &local.result, round)
            .await;
        let Some(store) = self.store.upgrade() else {
            return;
        };
        match outcome {
            Err(e) => {
                self.health.failed("writing a shared result", &e);
            }
            Ok(WriteOutcome::Written {
                fence,
                due_at,
                due_in,
            }) => {
                self.health.ok();
                if passive {
                    // Hold the fence our passive result went out under, as the others will.
                    let mut result = local.result.clone();
                    result.fence = fence;
                    store.apply_remote(&local.endpoint, &result, Now::capture());
                } else {
                    r.written(due_in, due_at);
                    tracing::debug!(
                        endpoint = %local.endpoint,
                        fence = %fence,
                        "Pod {} released health check lock",
                        self.pod_id
                    );
                }
                self.log_summary(&store);
            }
            Ok(WriteOutcome::Refused(stored)) => {
                self.health.ok();
                r.local();
                match stored {
                    Ok(stored) => {
                        tracing::debug!(
                            endpoint = %local.endpoint,
                            ours = %local.result.fence,
                            stored = %stored.result.fence,
                            "result refused: a newer one is stored; adopting it"
                        );
                        self.adopter.apply(*stored);
                    }
                    Err(e) => self.adopter.rejected().reject(
                        Kind::of(&e),
                        &local.endpoint,
                        &e.to_string(),
                    ),
                }
            }
        }
    }

    fn log_summary(&self, store: &HealthStore) {
        let snapshot = store.snapshot();
        let healthy = snapshot
            .endpoints
            .iter()
            .filter(|e| e.health.state.is_routable())
            .count();
        let unhealthy = snapshot.endpoints.len() - healthy;
        let now = Instant::now();
        let mut log = lock(&self.summary);
        let due = log.last != Some((healthy, unhealthy))
            || log
                .at
                .is_none_or(|at| now.duration_since(at) >= SUMMARY_EVERY);
        if due {
            log.last = Some((healthy, unhealthy));
            log.at = Some(now);
            tracing::info!(
                "Cached health check results for {healthy} healthy and {unhealthy} unhealthy endpoints"
            );
        } else {
            tracing::debug!(
                "Cached health check results for {healthy} healthy and {unhealthy} unhealthy endpoints"
            );
        }
    }
}
