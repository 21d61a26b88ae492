//! Waiting for a condition instead of sleeping for a guessed duration.
//!
//! Tests of a distributed system observe effects that arrive "soon": a probe notices a dead
//! backend, a replica receives an event, a port is released. [`eventually`] polls a check
//! until it passes or a deadline expires, and on failure reports the check's last error, which
//! says far more than "timed out". All timing goes through `tokio::time`, so the same helper
//! runs instantly in `#[tokio::test(start_paused = true)]` tests.

use std::future::Future;
use std::time::Duration;

use anyhow::anyhow;
use tokio::time::{Instant, sleep_until, timeout_at};

/// The result of one attempt at a condition: `Ok`/`Some` means it holds.
///
/// Implemented for `anyhow::Result<T>` (the error explains why the condition does not hold
/// yet) and for `Option<T>` (for checks with nothing to explain).
pub trait Attempt<T> {
    /// Turns the attempt into a result whose error says why the condition does not hold.
    fn into_result(self) -> anyhow::Result<T>;
}

impl<T> Attempt<T> for anyhow::Result<T> {
    fn into_result(self) -> anyhow::Result<T> {
        self
    }
}

impl<T> Attempt<T> for Option<T> {
    fn into_result(self) -> anyhow::Result<T> {
        self.ok_or_else(|| anyhow!("the check returned None"))
    }
}

/// Calls `check` every `poll` until it returns `Ok`/`Some`, and returns that value.
///
/// The first attempt starts at once. An attempt still running when `deadline` expires is
/// abandoned, so a hanging check cannot hang the test. On expiry the error is the last
/// attempt's error with the context `condition not met within <deadline>s`.
pub async fn eventually<T, A, F, Fut>(
    deadline: Duration,
    poll: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = A>,
    A: Attempt<T>,
{
    let expires = Instant::now() + deadline;
    let mut attempts = 0_u32;
    let last = loop {
        attempts += 1;
        let error = match timeout_at(expires, check()).await {
            Ok(attempt) => match attempt.into_result() {
                Ok(value) => return Ok(value),
                Err(error) => error,
            },
            Err(_elapsed) => anyhow!("attempt {attempts} was still running at the deadline"),
        };
        let next = Instant::now() + poll;
        if next >= expires {
            break error;
        }
        sleep_until(next).await;
    };
    let secs = deadline.as_secs_f64();
    Err(last.context(format!(
        "condition not met within {secs}s ({attempts} attempts)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn returns_the_value_once_the_condition_holds() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let value = eventually(Duration::from_secs(10), Duration::from_millis(100), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n >= 5 {
                    Ok(n * 10)
                } else {
                    Err(anyhow!("only {n} calls so far"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 50);
        assert_eq!(calls.get(), 5);
        // Four waits of one poll interval each separate the five attempts.
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn accepts_option_checks() {
        let calls = Cell::new(0);
        let value = eventually(Duration::from_secs(1), Duration::from_millis(10), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { (n == 3).then_some("ready") }
        })
        .await
        .unwrap();
        assert_eq!(value, "ready");
    }

    #[tokio::test(start_paused = true)]
    async fn reports_the_last_error_at_the_deadline() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let err = eventually(Duration::from_secs(2), Duration::from_millis(500), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { Err::<(), _>(anyhow!("backend still down after {n} checks")) }
        })
        .await
        .unwrap_err();
        let message = format!("{err:#}");
        assert!(
            message.starts_with("condition not met within 2s"),
            "unexpected message: {message}"
        );
        assert!(
            message.ends_with(": backend still down after 4 checks"),
            "unexpected message: {message}"
        );
        assert!(started.elapsed() <= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn abandons_a_hanging_attempt_at_the_deadline() {
        let started = Instant::now();
        let err = eventually(
            Duration::from_secs(3),
            Duration::from_millis(100),
            || async { std::future::pending::<anyhow::Result<()>>().await },
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("still running at the deadline"));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }
}
