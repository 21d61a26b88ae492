//! Whether this replica coordinates through Redis: the outage detector, the error counters
//! `/health/shared-status` shows, and the `hale_coord_redis_up` gauge. Only this module
//! writes them; every other task reports each Redis operation's outcome here.
//!
//! A slow Redis or a busy host is not an outage. One failed operation (a timeout, a script
//! error such as `OOM command not allowed`, a malformed answer, a broken connection) only
//! makes that one round local: the caller checks at its own cadence. Redis is declared
//! *down* on evidence that persists — [`FAILS_TO_DOWN`] consecutive failed operations, or
//! more than half of at least [`WINDOW_MIN_OPS`] operations in the last [`WINDOW`] — and at
//! most once per [`MIN_DOWN_GAP`]: failures within that time of the last outage keep the
//! replica coordinating, each failed round checked locally. A *timeout* is evidence only
//! when Redis has answered nothing for [`SILENT_FOR`]: while other operations on the same
//! connection get answers, a late one is a starved event loop (a replica sharing a
//! saturated host), not an unreachable Redis, and declaring an outage then would make the
//! replica check every endpoint itself, the opposite of what an overloaded fleet needs.
//! While down no task touches
//! Redis except the subscriber, which probes with a small write every
//! [`RECONNECT_EVERY`](crate::RECONNECT_EVERY); Redis is *up* again once the probes have
//! succeeded for [`REJOIN_AFTER`] without a failure and the subscriber has re-subscribed and
//! re-read every result. The very first contact after start needs no such wait, and neither
//! does a probe answered by a newly promoted master (Sentinel, Cluster: see the subscriber).
//!
//! Every failure counts in `errors_total` and sets `last_error` (an error text from Redis or
//! the client, which carries no password); each kind of failure is logged at WARN at most
//! once a minute, and the outage itself once when it starts and once when it ends.

use crate::conn::RedisFailure;
use crate::lock;
use metrics::Gauge;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Consecutive failed operations that make an outage.
pub const FAILS_TO_DOWN: u32 = 3;
/// The window over which the failure rate is measured.
pub const WINDOW: Duration = Duration::from_secs(10);
/// The fewest operations in [`WINDOW`] for the failure rate to count.
pub const WINDOW_MIN_OPS: usize = 10;
/// How long the subscriber's probes must succeed before a replica that was down rejoins.
pub const REJOIN_AFTER: Duration = Duration::from_secs(2);
/// The least time between two outages being declared.
pub const MIN_DOWN_GAP: Duration = Duration::from_secs(60);
/// How often one kind of failure or refusal is logged at WARN at most.
pub const LOG_EVERY: Duration = Duration::from_secs(60);
/// A timeout counts toward an outage only when no operation succeeded for this long.
pub const SILENT_FOR: Duration = Duration::from_secs(3);
/// Operations remembered for the failure rate (the window is also bounded by time).
const WINDOW_CAP: usize = 1024;

/// A change of availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    Down,
    Up,
}

/// The state machine alone, on tokio's clock (tested on paused time).
#[derive(Debug)]
pub struct Detector {
    up: bool,
    ever_up: bool,
    consecutive: u32,
    window: VecDeque<(Instant, bool)>,
    last_down: Option<Instant>,
    healthy_since: Option<Instant>,
    last_ok: Option<Instant>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

impl Detector {
    /// Starts down: nothing has answered yet.
    pub fn new() -> Self {
        Self {
            up: false,
            ever_up: false,
            consecutive: 0,
            window: VecDeque::new(),
            last_down: None,
            healthy_since: None,
            last_ok: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one operation's outcome; returns `Down` if this makes an outage.
    pub fn record(&mut self, ok: bool, now: Instant) -> Option<Flip> {
        while self
            .window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
            || self.window.len() >= WINDOW_CAP
        {
            self.window.pop_front();
        }
        self.window.push_back((now, ok));
        if ok {
            self.last_ok = Some(now);
            self.consecutive = 0;
            return None;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.healthy_since = None;
        if !self.up {
            return None;
        }
        let failed = self.window.iter().filter(|(_, ok)| !ok).count();
        let rate_bad = self.window.len() >= WINDOW_MIN_OPS && failed * 2 > self.window.len();
        let may_flip = self
            .last_down
            .is_none_or(|at| now.duration_since(at) >= MIN_DOWN_GAP);
        if (self.consecutive >= FAILS_TO_DOWN || rate_bad) && may_flip {
            self.up = false;
            self.last_down = Some(now);
            self.window.clear();
            return Some(Flip::Down);
        }
        None
    }

    /// An operation timed out: recorded as a failure only if Redis has answered nothing for
    /// [`SILENT_FOR`] (see the module docs); returns `Down` if this makes an outage.
    pub fn timed_out(&mut self, now: Instant) -> Option<Flip> {
        if self
            .last_ok
            .is_some_and(|at| now.saturating_duration_since(at) < SILENT_FOR)
        {
            return None;
        }
        self.record(false, now)
    }

    /// The subscriber's probe succeeded; returns whether Redis has now been healthy long
    /// enough to rejoin (always, before the first contact).
    pub fn probed(&mut self, now: Instant) -> bool {
        self.record(true, now);
        if self.up || !self.ever_up {
            return true;
        }
        let since = *self.healthy_since.get_or_insert(now);
        now.duration_since(since) >= REJOIN_AFTER
    }

    /// The subscriber re-subscribed and re-read everything after [`probed`](Self::probed)
    /// said yes: Redis is up. Returns `Up` if it was down.
    pub fn rejoin(&mut self) -> Option<Flip> {
        let was = self.up;
        self.up = true;
        self.ever_up = true;
        self.consecutive = 0;
        self.healthy_since = None;
        (!was).then_some(Flip::Up)
    }
}

/// Logs each kind of message at WARN at most once per [`LOG_EVERY`], at DEBUG otherwise.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Mutex<HashMap<&'static str, Instant>>,
}

impl LogLimiter {
    /// Whether a WARN of `kind` may be logged now (and notes that it is).
    pub fn allow(&self, kind: &'static str) -> bool {
        let now = Instant::now();
        let mut last = lock(&self.last);
        match last.get(kind) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                last.insert(kind, now);
                true
            }
        }
    }
}

/// Redis availability as this replica sees it; see the module docs.
#[derive(Debug)]
pub(crate) struct Health {
    pod_id: std::sync::Arc<str>,
    url_shown: String,
    detector: Mutex<Detector>,
    available: AtomicBool,
    errors_total: AtomicU64,
    last_error: Mutex<Option<String>>,
    redis_up: Gauge,
    log: LogLimiter,
    /// Bumped whenever an outage is declared; the subscriber rebuilds its subscription.
    outages: watch::Sender<u64>,
}

impl Health {
    pub fn new(pod_id: std::sync::Arc<str>, url_shown: String) -> Self {
        let redis_up = metrics::gauge!(crate::REDIS_UP);
        redis_up.set(0.0);
        Self {
            pod_id,
            url_shown,
            detector: Mutex::new(Detector::new()),
            available: AtomicBool::new(false),
            errors_total: AtomicU64::new(0),
            last_error: Mutex::new(None),
            redis_up,
            log: LogLimiter::default(),
            outages: watch::Sender::new(0),
        }
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors_total.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    pub fn outages(&self) -> watch::Receiver<u64> {
        self.outages.subscribe()
    }

    /// An operation succeeded.
    pub fn ok(&self) {
        lock(&self.detector).record(true, Instant::now());
    }

    /// An operation (`what`) failed with `e`; returns true if that declared an outage.
    pub fn failed(&self, what: &'static str, e: &RedisFailure) -> bool {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
        let text = format!("{what}: {}", e.summary());
        if self.log.allow(what) {
            tracing::warn!(
                pod_id = %self.pod_id,
                error = %text,
                "shared health checks: a Redis operation failed; this round is checked locally"
            );
        } else {
            tracing::debug!(error = %text, "Redis operation failed");
        }
        *lock(&self.last_error) = Some(text.clone());
        let flip = {
            let mut detector = lock(&self.detector);
            match e {
                RedisFailure::Timeout => detector.timed_out(Instant::now()),
                _ => detector.record(false, Instant::now()),
            }
        };
        if flip == Some(Flip::Down) && self.available.swap(false, Ordering::AcqRel) {
            self.redis_up.set(0.0);
            tracing::warn!(
                pod_id = %self.pod_id,
                redis = %self.url_shown,
                error = %text,
                "Redis unreachable: checking every endpoint locally until it is back"
            );
            self.outages.send_modify(|n| *n += 1);
            return true;
        }
        false
    }

    /// The subscriber's probe answered; whether it may rejoin now.
    pub fn probed(&self) -> bool {
        lock(&self.detector).probed(Instant::now())
    }

    /// The subscriber re-subscribed and re-read every result: coordinate again.
    pub fn rejoin(&self) {
        let flip = lock(&self.detector).rejoin();
        if !self.available.swap(true, Ordering::AcqRel) {
            self.redis_up.set(1.0);
            if flip == Some(Flip::Up) && lock(&self.detector).last_down.is_some() {
                tracing::info!(
                    pod_id = %self.pod_id,
                    redis = %self.url_shown,
                    "Redis reachable again: rejoining shared health checks"
                );
            } else {
                tracing::info!(pod_id = %self.pod_id, redis = %self.url_shown, "connected to Redis");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn up() -> Detector {
        let mut d = Detector::new();
        assert!(d.probed(Instant::now()), "the first contact needs no wait");
        assert_eq!(d.rejoin(), Some(Flip::Up));
        d
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_make_an_outage_and_single_ones_do_not() {
        let mut d = up();
        for _ in 0..20 {
            assert_eq!(d.record(false, Instant::now()), None);
            assert_eq!(d.record(true, Instant::now()), None);
            assert_eq!(d.record(true, Instant::now()), None);
            advance(Duration::from_millis(100)).await;
        }
        assert!(
            d.is_up(),
            "a third of the operations failing, never three in a row"
        );
        assert_eq!(d.record(false, Instant::now()), None);
        assert_eq!(d.record(false, Instant::now()), None);
        assert_eq!(d.record(false, Instant::now()), Some(Flip::Down));
        assert!(!d.is_up());
        assert_eq!(d.record(false, Instant::now()), None, "declared once");
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_while_redis_answers_are_no_outage_but_silence_is() {
        let mut d = up();
        // A starved event loop: most operations time out, a few get their answer.
        for _ in 0..50 {
            d.record(true, Instant::now());
            for _ in 0..10 {
                assert_eq!(d.timed_out(Instant::now()), None);
            }
            advance(Duration::from_millis(200)).await;
        }
        assert!(d.is_up());
        // A Redis that answers nothing: after SILENT_FOR, three timeouts in a row are one.
        advance(SILENT_FOR).await;
        assert_eq!(d.timed_out(Instant::now()), None);
        assert_eq!(d.timed_out(Instant::now()), None);
        assert_eq!(d.timed_out(Instant::now()), Some(Flip::Down));
        assert!(!d.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_failure_rate_makes_an_outage() {
        let mut d = up();
        // Two failures, one success, repeated: never three in a row, but 2/3 fail.
        let mut flipped = None;
        for i in 0..30 {
            let ok = i % 3 == 2;
            if let Some(f) = d.record(ok, Instant::now()) {
                flipped = Some((i, f));
                break;
            }
            advance(Duration::from_millis(100)).await;
        }
        assert_eq!(flipped.map(|(_, f)| f), Some(Flip::Down));
        assert!(flipped.unwrap().0 >= 9, "needs at least 10 operations");
    }

    #[tokio::test(start_paused = true)]
    async fn rejoining_needs_a_healthy_streak_and_outages_are_at_most_once_a_minute() {
        let mut d = up();
        for _ in 0..3 {
            d.record(false, Instant::now());
        }
        assert!(!d.is_up());
        // Probes every 500 ms: rejoin only after 2 s of successes; a failure restarts it.
        let mut waited = Duration::ZERO;
        while !d.probed(Instant::now()) {
            advance(Duration::from_millis(500)).await;
            waited += Duration::from_millis(500);
            if waited == Duration::from_secs(2) {
                d.record(false, Instant::now());
            }
        }
        assert!(
            waited >= Duration::from_secs(2) + REJOIN_AFTER,
            "{waited:?}"
        );
        assert_eq!(d.rejoin(), Some(Flip::Up));
        // Within a minute of the last outage, failures do not declare another one.
        for _ in 0..10 {
            assert_eq!(d.record(false, Instant::now()), None);
        }
        assert!(d.is_up());
        advance(MIN_DOWN_GAP).await;
        assert_eq!(d.record(false, Instant::now()), Some(Flip::Down));
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_limiter_allows_one_warn_a_minute_per_kind() {
        let l = LogLimiter::default();
        assert!(l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
        advance(LOG_EVERY).await;
        assert!(l.allow("a"));
    }
}
