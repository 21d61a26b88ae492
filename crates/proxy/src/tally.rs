//! A response body's bookkeeping, shared by the upstream clients' bodies (the hand-written
//! one in `stream` and the `hyper-upstream` A/B variant's): the request's claim on its
//! endpoint and its outlier-detection watch until the body ends, the request duration
//! recorded exactly once, the failure counted when the body breaks off, the lazily moved
//! `idle_timeout` timer, and the body counted as being read on its thread (`upstream`'s
//! `Reading`) until it ends.

use crate::QuietSleep;
use crate::runtime::{Claim, Watch};
use crate::upstream::Reading;
use hale_core::Signal;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// A response body's bookkeeping, whichever client read it: the request's [`Claim`] and
/// [`Watch`] until the body ends, the duration recorded once, and the lazy idle timer (see
/// [`Tally::poll_idle`]). The `hyper-upstream` A/B variant's body keeps the same.
#[derive(Debug)]
pub struct Tally {
    open: Option<Open>,
    /// The longest wait for more of the body.
    idle: Duration,
    /// Fires `idle` after the body started to wait with nothing new; moved on
    /// lazily, only when it fires (see [`Tally::poll_idle`]).
    idle_timer: Option<QuietSleep>,
    /// When the body last started to wait after data had arrived.
    waiting_since: Instant,
    /// Data arrived since `waiting_since`.
    progressed: bool,
}

#[derive(Debug)]
struct Open {
    claim: Claim,
    started: Instant,
    watch: Watch,
    /// Counted on this thread until the bookkeeping ends.
    _reading: Reading,
}

impl Tally {
    pub fn new(claim: Claim, started: Instant, watch: Watch) -> Self {
        let idle = claim.runtime().dest.deadlines.idle;
        Self {
            open: Some(Open {
                claim,
                started,
                watch,
                _reading: Reading::start(),
            }),
            idle,
            idle_timer: None,
            waiting_since: started,
            progressed: false,
        }
    }

    /// The request's claim, until the bookkeeping ends.
    pub fn claim(&self) -> Option<&Claim> {
        self.open.as_ref().map(|open| &open.claim)
    }

    /// Data arrived.
    pub fn progressed(&mut self) {
        self.progressed = true;
    }

    /// The body was read to its end: its outcome goes to outlier detection.
    pub fn ended(&mut self) {
        if let Some(open) = &mut self.open {
            open.watch.ended(open.claim.runtime());
        }
    }

    /// Ends the bookkeeping once: the duration is recorded, the claim released.
    pub fn finish(&mut self) {
        if self.open.is_some() {
            self.finish_at(Instant::now());
        }
    }

    pub fn finish_at(&mut self, now: Instant) {
        if let Some(open) = self.open.take() {
            let took = now.saturating_duration_since(open.started);
            open.claim.runtime().duration.record(took.as_secs_f64());
        }
    }

    /// The body broke off (`signal`): the failure is counted on the endpoint's breaker and
    /// for outlier detection (which asks for a prompt probe check), and the bookkeeping ends.
    pub fn cut(&mut self, signal: Signal, message: &str) {
        if let Some(open) = &mut self.open {
            open.watch.cut(open.claim.runtime(), signal);
            tracing::debug!(
                endpoint = open.claim.runtime().name(),
                error = %message,
                "backend body broke off mid-answer"
            );
            if open.claim.failure(Instant::now()) {
                tracing::warn!(
                    endpoint = open.claim.runtime().name(),
                    "circuit breaker opened after repeated failures"
                );
            }
        }
        self.idle_timer = None;
        self.finish();
    }

    /// The body has nothing to hand on: pending (the timer armed the first time), or, once
    /// `idle` has passed since the body started to wait with nothing new, the message to
    /// fail it with.
    ///
    /// The timer is not moved on each chunk: a stream's chunks would each cost a timer
    /// re-registration (a lock and a timer-wheel move). It is armed for the first wait and,
    /// when it fires, moved to `idle` after the latest wait's start if data came since; so it
    /// fires at most once per `idle` of a stream that keeps flowing.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        let idle = self.idle;
        let now = Instant::now();
        if self.progressed || self.idle_timer.is_none() {
            self.waiting_since = now;
            self.progressed = false;
        }
        // Beyond the clock's range (a config allows at most a day): no idle limit.
        let Some(deadline) = self.waiting_since.checked_add(idle) else {
            return Poll::Pending;
        };
        // Polled on each wait between a stream's chunks, the timer registers the task's waker
        // only once per firing (see `QuietSleep`).
        let timer = self
            .idle_timer
            .get_or_insert_with(|| QuietSleep::until(deadline));
        loop {
            if timer.poll_elapsed(now, cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                break;
            }
            // Fired at an earlier wait's deadline; data came since.
            timer.reset(deadline);
        }
        Poll::Ready(format!(
            "the backend sent nothing for {} (idle_timeout)",
            humantime::format_duration(idle)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;
    use crate::route::Route;
    use crate::runtime::EndpointRuntime;
    use crate::upstream::Reading;
    use hale_core::{EndpointConfig, EndpointKind, HealthStore};
    use std::sync::Arc;

    fn runtime() -> Arc<EndpointRuntime> {
        let c = EndpointConfig::new("a", "http://127.0.0.1:9", EndpointKind::Vllm);
        let store = Arc::new(HealthStore::new(
            "pod-1",
            vec![c.resolve("e").unwrap()],
            &hale_core::HealthConfig::default(),
            hale_core::Now::capture(),
        ));
        let e = store.snapshot().get("a").unwrap().endpoint.clone();
        Arc::new(EndpointRuntime::new(e, &ProxyConfig::default(), 1, &store))
    }

    fn tally(rt: &Arc<EndpointRuntime>) -> Tally {
        let now = Instant::now();
        let claim = rt.try_claim(false, now).unwrap();
        Tally::new(claim, now, rt.watch(Route::ChatCompletions.path(), 200))
    }

    #[test]
    fn a_body_counts_as_read_on_its_thread_until_it_finishes_or_is_dropped() {
        // A thread of its own: the count is per thread.
        std::thread::spawn(|| {
            let rt = runtime();
            assert_eq!(Reading::on_this_thread(), 0);
            let mut finished = tally(&rt);
            let dropped = tally(&rt);
            assert_eq!(Reading::on_this_thread(), 2);
            finished.finish();
            assert_eq!(Reading::on_this_thread(), 1, "finished: no longer read");
            drop(dropped);
            assert_eq!(Reading::on_this_thread(), 0, "dropped mid-answer");
            let mut cut = tally(&rt);
            cut.cut(Signal::StreamCut, "reset");
            assert_eq!(Reading::on_this_thread(), 0, "broken off");
            drop((finished, cut));
        })
        .join()
        .unwrap();
    }
}
