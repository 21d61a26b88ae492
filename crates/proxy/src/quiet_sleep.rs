//! [`QuietSleep`]: a tokio `Sleep` for a task that is woken far more often than its timer
//! fires (a streaming connection, once per chunk). Polling a `Sleep` registers the task's
//! waker each time; this one is polled again only when its deadline has passed, it has been
//! reset, or it is asked by a task whose waker it does not hold. Until then it does not touch
//! the `Sleep` at all: it compares the caller's clock reading with a copy of the deadline it
//! keeps inline. With thousands of streams the `Sleep` (an allocation of its own) is out of
//! the cache at every chunk, and reading its state was 2.8 % of the gateway's CPU samples at
//! 1,000 streams (docs/BENCHMARKS.md, "Sixth pass"). Used by the response body's idle timer
//! (`tally`) and by hale-api's held-bytes timer for `server.stream_coalesce`.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::time::{Instant, Sleep, sleep_until};

/// A timer polled on every wake-up of its task at the cost of a waker compare and an instant
/// compare while it has not fired.
#[derive(Debug)]
pub struct QuietSleep {
    /// `sleep`'s deadline, kept beside the waker so that looking costs no cache miss.
    deadline: Instant,
    sleep: Pin<Box<Sleep>>,
    /// The waker `sleep` was last polled with and holds (it wakes it when it fires), so long
    /// as it has neither fired nor been reset since.
    waker: Option<Waker>,
}

impl QuietSleep {
    /// A timer that fires at `deadline`.
    pub fn until(deadline: Instant) -> Self {
        Self {
            deadline,
            sleep: Box::pin(sleep_until(deadline)),
            waker: None,
        }
    }

    /// When it fires (or fired).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the timer to `deadline`, fired or not.
    pub fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.sleep.as_mut().reset(deadline);
        self.waker = None;
    }

    /// Ready once the deadline has passed; until then the task is woken when it does.
    ///
    /// `now` must be read in this same poll (not carried over from before the task was last
    /// woken): the timer wakes the task once, so a stale reading could miss that wake-up.
    /// The timer never fires before its deadline, so while `now` is earlier and the `Sleep`
    /// holds this task's waker, nothing has happened and it is not looked at.
    pub fn poll_elapsed(&mut self, now: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let holds_waker = self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if holds_waker && now < self.deadline {
            return Poll::Pending;
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            self.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.waker = None;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_test::task::new_count_waker;
    use std::future::poll_fn;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_on_time_however_often_it_is_polled_before() {
        let start = Instant::now();
        let mut t = QuietSleep::until(start + Duration::from_millis(100));
        for _ in 0..1_000 {
            poll_fn(|cx| Poll::Ready(t.poll_elapsed(Instant::now(), cx).is_pending())).await;
        }
        poll_fn(|cx| t.poll_elapsed(Instant::now(), cx)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_waker_it_holds_is_woken_once_per_firing_and_a_reset_arms_it_again() {
        let (waker, count) = new_count_waker();
        let mut cx = Context::from_waker(&waker);
        let mut t = QuietSleep::until(Instant::now() + Duration::from_millis(10));
        assert!(t.poll_elapsed(Instant::now(), &mut cx).is_pending());
        assert!(t.poll_elapsed(Instant::now(), &mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(count.get(), 1);
        assert!(t.poll_elapsed(Instant::now(), &mut cx).is_ready());

        let next = Instant::now() + Duration::from_millis(10);
        t.reset(next);
        assert_eq!(t.deadline(), next);
        assert!(t.poll_elapsed(Instant::now(), &mut cx).is_pending());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(count.get(), 2);
        assert!(t.poll_elapsed(Instant::now(), &mut cx).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_with_another_waker_is_registered_and_woken() {
        let (first_waker, first) = new_count_waker();
        let (second_waker, second) = new_count_waker();
        let mut t = QuietSleep::until(Instant::now() + Duration::from_millis(10));
        assert!(
            t.poll_elapsed(Instant::now(), &mut Context::from_waker(&first_waker))
                .is_pending()
        );
        assert!(
            t.poll_elapsed(Instant::now(), &mut Context::from_waker(&second_waker))
                .is_pending()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(first.get(), 0);
        assert_eq!(second.get(), 1);
    }
}
