//! A gate for the futures that share a connection's task with the connection itself (the
//! drain signal, the deadline timer, the connection state's wake-up): they are polled when
//! one of them woke the task, not on every wake-up the connection causes.
//!
//! A streaming connection's task wakes once or twice per relayed chunk (the upstream socket
//! turned readable, the client socket writable). Polling the side futures each time cost a
//! lock in tokio's `Notify` and a waker registration in the timer for every chunk, which is
//! pure overhead: none of them can have changed unless it woke the task. They are polled with
//! the gate's own waker instead, which records that one of them fired before it wakes the
//! task; the task's waker is remembered, and should it ever change the side futures are
//! polled again so that they hold the new one. What this bought: docs/BENCHMARKS.md,
//! "Fourth pass".

use futures_util::task::AtomicWaker;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

/// Decides, on each wake-up of the task, whether the side futures are polled.
pub(super) struct Gate {
    inner: Arc<Inner>,
    /// The waker the side futures are polled with: [`Inner`]'s.
    waker: Waker,
    /// The task's waker as last seen (a clone of what [`Inner`] wakes).
    task: Option<Waker>,
}

struct Inner {
    /// A side future woke us (or [`Gate::force`] asked for a look) since the last look.
    fired: AtomicBool,
    /// Woken when a side future fires.
    task: AtomicWaker,
}

impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// A gate whose first look polls the side futures.
    pub(super) fn new() -> Self {
        let inner = Arc::new(Inner {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(inner.clone());
        Self {
            inner,
            waker,
            task: None,
        }
    }

    /// On a wake-up of the task whose waker is `task`: the context to poll the side futures
    /// with, if one of them fired since the last look (or the task's waker changed); `None`
    /// when polling them could only find them pending.
    pub(super) fn open(&mut self, task: &Waker) -> Option<Context<'_>> {
        let known = self.task.as_ref().is_some_and(|t| t.will_wake(task));
        if !known {
            self.inner.task.register(task);
            self.task = Some(task.clone());
            self.inner.fired.store(false, Ordering::Relaxed);
            return Some(Context::from_waker(&self.waker));
        }
        if !self.inner.fired.load(Ordering::Relaxed) {
            return None;
        }
        // A firing takes the registered waker as it wakes it: hand it back before looking, so
        // that a side future firing after this look wakes the task again.
        self.inner.task.register(task);
        if !self.inner.fired.swap(false, Ordering::Acquire) {
            return None;
        }
        Some(Context::from_waker(&self.waker))
    }

    /// Makes the next look poll the side futures: one of them was replaced or reset, and must
    /// be polled to register.
    pub(super) fn force(&self) {
        self.inner.fired.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_test::task::new_count_waker;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Poll;
    use tokio::sync::Notify;

    #[test]
    fn the_side_is_looked_at_first_then_only_after_it_fired_or_was_forced() {
        let notify = Notify::new();
        let mut notified = pin!(notify.notified());
        let mut gate = Gate::new();
        let (waker, count) = new_count_waker();

        let mut side = gate.open(&waker).expect("the first look polls the side");
        assert!(notified.as_mut().poll(&mut side).is_pending());
        // The connection woke the task; nothing beside it fired.
        assert!(gate.open(&waker).is_none());
        assert!(gate.open(&waker).is_none());
        assert_eq!(count.get(), 0);

        notify.notify_one();
        assert_eq!(count.get(), 1, "a side future that fires wakes the task");
        let mut side = gate.open(&waker).expect("a fired side is looked at");
        assert_eq!(notified.as_mut().poll(&mut side), Poll::Ready(()));
        assert!(gate.open(&waker).is_none(), "one look per firing");

        gate.force();
        assert!(gate.open(&waker).is_some(), "a forced look");
        assert!(gate.open(&waker).is_none());
    }

    #[test]
    fn every_firing_wakes_the_task_not_only_the_first() {
        let notify = Notify::new();
        let mut gate = Gate::new();
        let (waker, count) = new_count_waker();
        for round in 1..=3 {
            let mut notified = pin!(notify.notified());
            let mut side = gate.open(&waker).expect("a look after each firing");
            assert!(notified.as_mut().poll(&mut side).is_pending());
            notify.notify_one();
            assert_eq!(count.get(), round, "firing {round}");
            let mut side = gate.open(&waker).expect("the firing is seen");
            assert_eq!(notified.as_mut().poll(&mut side), Poll::Ready(()));
            gate.force();
        }
    }

    #[test]
    fn a_new_task_waker_is_handed_to_the_side_and_woken_from_then_on() {
        let notify = Notify::new();
        let mut notified = pin!(notify.notified());
        let mut gate = Gate::new();
        let (first_waker, first) = new_count_waker();
        let mut side = gate.open(&first_waker).expect("first look");
        assert!(notified.as_mut().poll(&mut side).is_pending());

        let (second_waker, second) = new_count_waker();
        assert!(
            gate.open(&second_waker).is_some(),
            "a changed task waker is a reason to look"
        );
        notify.notify_one();
        assert_eq!(second.get(), 1);
        assert_eq!(first.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_polled_through_the_gate_fires_on_time() {
        let timer = tokio::time::sleep(std::time::Duration::from_secs(5));
        let mut timer = pin!(timer);
        let mut gate = Gate::new();
        let started = tokio::time::Instant::now();
        std::future::poll_fn(|cx| {
            let Some(mut side) = gate.open(cx.waker()) else {
                return Poll::Pending;
            };
            timer.as_mut().poll(&mut side)
        })
        .await;
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
    }
}
