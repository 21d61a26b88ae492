//! Rediscovery on request: the request path asks an endpoint's check task to re-read its
//! model list now, and may wait, with its own deadline, until that has run.
//!
//! One [`Rediscovery`] per endpoint, held by the store (see
//! [`HealthStore::request_discovery`](crate::HealthStore::request_discovery)). The proxy
//! asks when a request names a model no endpoint serves, and after a backend answered a
//! routed request "model not found"; the scheduler's task of the endpoint waits on
//! [`Rediscovery::requested`] next to its timer, runs a check with discovery and calls
//! [`Rediscovery::finished`], which wakes every waiter (whatever the check found: a failed
//! discovery ends the wait too, and the request is answered with what is known).
//!
//! Rate limit: at most one rediscovery per `discovery_interval` per endpoint, counted from
//! when it was asked for. While one is asked for and not finished, every further request
//! joins it (waits for the same one); after it finished, requests within the interval get
//! nothing to wait for (`None`) and are answered at once. The state is two fields per
//! endpoint, whatever the requests name, so a flood of made-up model names costs at most one
//! model-list request per endpoint per interval and no memory. A request left unfinished for
//! a whole interval (its task was replaced by a reload mid-check) no longer holds the next
//! one back.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// One endpoint's rediscovery requests; see the module docs.
#[derive(Debug)]
pub struct Rediscovery {
    wake: Notify,
    /// How many requested rediscoveries have finished.
    done: watch::Sender<u64>,
    state: Mutex<Asked>,
}

#[derive(Debug, Default)]
struct Asked {
    /// When the last rediscovery was asked for.
    last: Option<Instant>,
    /// It has not finished yet.
    pending: bool,
}

/// A rediscovery to wait for: [`DiscoveryWait::done`] resolves once it has run.
#[derive(Debug)]
pub struct DiscoveryWait {
    done: watch::Receiver<u64>,
    seen: u64,
}

impl DiscoveryWait {
    /// Resolves when the rediscovery asked for has run (or the endpoint is gone). Callers
    /// bound it with their own deadline.
    pub async fn done(mut self) {
        let seen = self.seen;
        let _ = self.done.wait_for(|finished| *finished > seen).await;
    }
}

impl Default for Rediscovery {
    fn default() -> Self {
        Self::new()
    }
}

impl Rediscovery {
    pub fn new() -> Self {
        Self {
            wake: Notify::new(),
            done: watch::Sender::new(0),
            state: Mutex::new(Asked::default()),
        }
    }

    /// Asks for a rediscovery at `now`, at most one per `interval` (see the module docs):
    /// what to wait for, or `None` when one ran within the interval.
    pub fn request(&self, interval: Duration, now: Instant) -> Option<DiscoveryWait> {
        let mut asked = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = asked
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < interval);
        if !(asked.pending && recent) {
            if recent {
                return None;
            }
            asked.last = Some(now);
            asked.pending = true;
            self.wake.notify_one();
        }
        // Read under the lock `finished` takes too, so a waiter never misses the end of the
        // rediscovery it joined.
        let done = self.done.subscribe();
        let seen = *done.borrow();
        Some(DiscoveryWait { done, seen })
    }

    /// Resolves when a rediscovery was asked for (the check task waits on it). A request
    /// made while nobody waits is kept.
    pub async fn requested(&self) {
        self.wake.notified().await;
    }

    /// The rediscovery asked for has run: every waiter wakes.
    pub fn finished(&self) {
        let mut asked = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        asked.pending = false;
        self.done.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const INTERVAL: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn one_rediscovery_per_interval_and_waiters_join_the_pending_one() {
        let r = Arc::new(Rediscovery::new());
        let t0 = Instant::now();
        let first = r.request(INTERVAL, t0).expect("the first request is taken");
        // While it has not run, every request joins it, whatever it names.
        let joined: Vec<_> = (0..1000)
            .map(|_| {
                r.request(INTERVAL, Instant::now())
                    .expect("joins the pending one")
            })
            .collect();
        // The task sees exactly one request (one permit), however many asked.
        tokio::time::timeout(Duration::from_millis(1), r.requested())
            .await
            .expect("the task is woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(1), r.requested())
                .await
                .is_err(),
            "a thousand requests wake the task once"
        );
        let waiter = tokio::spawn(first.done());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "nothing ran yet");
        r.finished();
        waiter.await.expect("the waiter ends");
        for w in joined {
            tokio::time::timeout(Duration::from_millis(1), w.done())
                .await
                .expect("every joined waiter ends with it");
        }
        // Finished within the interval: nothing to wait for, answered at once.
        assert!(r.request(INTERVAL, Instant::now()).is_none());
        tokio::time::advance(INTERVAL - Duration::from_secs(2)).await;
        assert!(r.request(INTERVAL, Instant::now()).is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        let next = r.request(INTERVAL, Instant::now()).expect("a new interval");
        r.finished();
        tokio::time::timeout(Duration::from_millis(1), next.done())
            .await
            .expect("ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_left_unfinished_for_an_interval_does_not_block_the_next() {
        let r = Rediscovery::new();
        let stuck = r.request(INTERVAL, Instant::now()).expect("taken");
        r.requested().await;
        // Its task went away mid-check: nobody calls `finished`.
        tokio::time::advance(INTERVAL).await;
        let again = r.request(INTERVAL, Instant::now()).expect("asked again");
        tokio::time::timeout(Duration::from_millis(1), r.requested())
            .await
            .expect("the task is woken again");
        r.finished();
        tokio::time::timeout(Duration::from_millis(1), stuck.done())
            .await
            .expect("the old waiter ends too");
        tokio::time::timeout(Duration::from_millis(1), again.done())
            .await
            .expect("ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_whose_endpoint_is_gone_ends() {
        let r = Rediscovery::new();
        let w = r.request(INTERVAL, Instant::now()).expect("taken");
        drop(r);
        tokio::time::timeout(Duration::from_millis(1), w.done())
            .await
            .expect("ends when the endpoint is removed");
    }
}
