//! Outlier detection from real traffic (Envoy-style): the per-endpoint [`OutlierDetector`]
//! that the proxy feeds with every request's [`Outcome`], its settings ([`OutlierConfig`],
//! `proxy.outlier`), and the [`Trigger`] it returns when the endpoint should be ejected.
//!
//! Rules (DESIGN §3, "Traffic is a source of health"):
//! - **Failures** ([`Signal`]): a 502/503/504 the backend answered, a request the backend
//!   dropped after it was sent (reset, closed, malformed head), a first-byte timeout, an idle
//!   timeout mid-body and a stream cut mid-way. 4xx is the client's fault: it never counts,
//!   and like any 2xx/3xx it ends a run of consecutive failures ([`Outcome::Success`]). Other
//!   5xx (500, 501, …) are [`Outcome::Neutral`]: counted as requests in the window, neither
//!   failure nor success.
//! - **Consecutive**: `consecutive_failures` failures in a row trigger. In a fleet sharing its
//!   health (shared mode), that budget is the fleet's, not each replica's: a replica that
//!   knows of `n` live replicas ([`HealthStore::fleet_size`](crate::HealthStore::fleet_size))
//!   triggers after its share, `ceil(consecutive_failures / n)` failures in a row on its own
//!   traffic, and its ejection reaches the others at once. With load spread evenly the fleet
//!   then spends about `consecutive_failures` failed requests on an outlier, not that many per
//!   replica; the price is that one replica's short run decides for all (each replica still
//!   sees only its slice of the traffic). The rate signal stays per replica.
//! - **Rate**: over the last `window` (ten buckets, so the window slides in tenths), at least
//!   `min_requests` requests of which at least `failure_rate` failed trigger.
//! - **Ejection time**: `base_ejection` × the number of recent ejections (this one included),
//!   capped at `max_ejection`. An ejection is *recent* while the previous one ended less than
//!   `max_ejection` ago; after a quiet `max_ejection` the count starts over at one.
//!
//! The detector only says "this endpoint should go"; whether it goes is the store's decision
//! ([`HealthStore::eject`](crate::HealthStore::eject), which enforces `max_ejection_percent`
//! and shares the ejection like a passive result). The caller then tells the detector what
//! happened ([`OutlierDetector::ejected`] or [`OutlierDetector::withheld`]), which starts
//! the counts over either way, so a withheld endpoint triggers again only after another full
//! run of failures. The detector is pure: time is passed in, and it is tested on paused tokio
//! time and with property tests.

use crate::config::{ConfigError, require_at_least_one, require_nonzero};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// `proxy.outlier` — see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive failures that eject an endpoint.
    pub consecutive_failures: u32,
    /// Share of failed requests (0 < rate ≤ 1) over `window` that ejects an endpoint.
    pub failure_rate: f64,
    /// The fewest requests in `window` for the rate to count.
    pub min_requests: u32,
    /// The sliding window of the failure rate.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The first ejection's length; the n-th recent one lasts n times as long.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// At most this share (percent) of a model's endpoints may be out of rotation after an
    /// ejection; an ejection that would take more is withheld.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        require_at_least_one(path, "consecutive_failures", self.consecutive_failures)?;
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(ConfigError::new(
                format!("{path}.failure_rate"),
                format!("must be in (0, 1], got {}", self.failure_rate),
            ));
        }
        require_at_least_one(path, "min_requests", self.min_requests)?;
        require_nonzero(path, "window", self.window)?;
        require_nonzero(path, "base_ejection", self.base_ejection)?;
        require_nonzero(path, "max_ejection", self.max_ejection)?;
        if self.max_ejection < self.base_ejection {
            return Err(ConfigError::new(
                format!("{path}.max_ejection"),
                "must not be shorter than base_ejection",
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(ConfigError::new(
                format!("{path}.max_ejection_percent"),
                format!("must be in 0..=100, got {}", self.max_ejection_percent),
            ));
        }
        Ok(())
    }
}

/// A way a request failed that counts against the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The backend answered 502, 503 or 504.
    Status(u16),
    /// The backend closed or reset the connection after the request was sent, or answered
    /// with a malformed head.
    Dropped,
    /// No response head within `first_byte_timeout`.
    FirstByteTimeout,
    /// Nothing more of the body within `idle_timeout`.
    IdleTimeout,
    /// The backend broke the body off (reset, closed before the end, malformed chunks).
    StreamCut,
}

impl Signal {
    /// The signal for an answer with `status`, if it counts.
    pub fn of_status(status: u16) -> Option<Signal> {
        matches!(status, 502..=504).then_some(Signal::Status(status))
    }

    /// The family, for the metric label: `5xx`, `reset` or `timeout`.
    pub fn family(self) -> &'static str {
        match self {
            Self::Status(_) => "5xx",
            Self::Dropped | Self::StreamCut => "reset",
            Self::FirstByteTimeout | Self::IdleTimeout => "timeout",
        }
    }

    /// A short human name: `503`, `dropped request`, …
    pub fn describe(self) -> String {
        match self {
            Self::Status(code) => code.to_string(),
            Self::Dropped => "dropped request".to_owned(),
            Self::FirstByteTimeout => "first-byte timeout".to_owned(),
            Self::IdleTimeout => "idle timeout".to_owned(),
            Self::StreamCut => "stream cut".to_owned(),
        }
    }
}

/// What one request's answer says about the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, 3xx or 4xx: ends a run of failures.
    Success,
    /// Counted as a request, neither failure nor success (a 5xx other than 502/503/504).
    Neutral,
    Failure(Signal),
}

impl Outcome {
    /// The outcome of an answer with `status` whose body was passed on in full.
    pub fn of_status(status: u16) -> Outcome {
        match Signal::of_status(status) {
            Some(s) => Outcome::Failure(s),
            None if status >= 500 => Outcome::Neutral,
            None => Outcome::Success,
        }
    }
}

/// Why the detector wants the endpoint out.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// `count` failures in a row; `signal` is the last one, `same` whether all were alike;
    /// `replicas` the fleet whose budget it was a share of (1 alone).
    Consecutive {
        count: u32,
        signal: Signal,
        same: bool,
        replicas: usize,
    },
    /// `failures` of `requests` failed within `window`.
    Rate {
        failures: u32,
        requests: u32,
        window: Duration,
    },
}

impl Trigger {
    /// The metric label: `consecutive_5xx`, `consecutive_reset`, `consecutive_timeout` or
    /// `failure_rate`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Consecutive { signal, .. } => match signal.family() {
                "5xx" => "consecutive_5xx",
                "reset" => "consecutive_reset",
                _ => "consecutive_timeout",
            },
            Self::Rate { .. } => "failure_rate",
        }
    }

    /// The human error shown on the endpoint, naming the signal and the route `path`:
    /// "5 consecutive 503 on /v1/chat/completions", "failure rate 62 % of 24 requests in 10s".
    pub fn describe(&self, path: &str) -> String {
        match self {
            Self::Consecutive {
                count,
                signal,
                same,
                replicas,
            } => {
                let what = if *same {
                    format!("{count} consecutive {} on {path}", signal.describe())
                } else {
                    format!(
                        "{count} consecutive failures on {path} (last: {})",
                        signal.describe()
                    )
                };
                if *replicas > 1 {
                    format!("{what}, this replica's share of the fleet's ({replicas} replicas)")
                } else {
                    what
                }
            }
            Self::Rate {
                failures,
                requests,
                window,
            } => format!(
                "failure rate {} % of {requests} requests in {} on {path}",
                (f64::from(*failures) * 100.0 / f64::from((*requests).max(1))).round(),
                humantime::format_duration(*window)
            ),
        }
    }
}

/// What the detector shows on the status page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutlierStats {
    /// Ejections this replica made of the endpoint since start.
    pub ejections: u64,
    /// Requests recorded within the window.
    pub recent_requests: u32,
    /// Their share of failures (0 when there were none).
    pub recent_failure_rate: f64,
    /// The trigger of the last ejection or withheld ejection (its metric label).
    pub last_signal: Option<&'static str>,
}

const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which tenth of the window since `origin` this bucket holds.
    epoch: u64,
    requests: u32,
    failures: u32,
}

/// One endpoint's detector; see the module docs.
#[derive(Debug, Clone)]
pub struct OutlierDetector {
    config: OutlierConfig,
    origin: Instant,
    bucket_len: Duration,
    buckets: [Bucket; BUCKETS],
    consecutive: u32,
    run_signal: Option<Signal>,
    run_mixed: bool,
    ejections: u64,
    /// Ejections in the current recent run (the multiplier of the ejection time).
    recent: u32,
    /// When the last ejection ends (or ended).
    last_end: Option<Instant>,
    last_signal: Option<&'static str>,
    /// When a withheld ejection was last worth logging.
    withheld_logged: Option<Instant>,
}

impl OutlierDetector {
    /// A detector with nothing recorded, its window starting at `now`.
    pub fn new(config: &OutlierConfig, now: Instant) -> Self {
        let window = config.window.max(Duration::from_millis(10));
        Self {
            config: config.clone(),
            origin: now,
            bucket_len: window / BUCKETS as u32,
            buckets: [Bucket::default(); BUCKETS],
            consecutive: 0,
            run_signal: None,
            run_mixed: false,
            ejections: 0,
            recent: 0,
            last_end: None,
            last_signal: None,
            withheld_logged: None,
        }
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// This replica's share of the consecutive budget in a fleet of `replicas` (module docs).
    pub fn consecutive_share(&self, replicas: usize) -> u32 {
        let n = u32::try_from(replicas.max(1)).unwrap_or(u32::MAX);
        self.config.consecutive_failures.div_ceil(n).max(1)
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        let len = self.bucket_len.as_nanos().max(1);
        u64::try_from(since / len).unwrap_or(u64::MAX)
    }

    /// Requests and failures within the window that ends at `now`.
    fn window(&self, now: Instant) -> (u32, u32) {
        let e = self.epoch(now);
        let oldest = e.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| (oldest..=e).contains(&b.epoch) && (b.requests > 0))
            .fold((0u32, 0u32), |(r, f), b| {
                (r.saturating_add(b.requests), f.saturating_add(b.failures))
            })
    }

    /// Records one request's outcome at `now`; returns the trigger if the endpoint should
    /// be ejected now.
    pub fn record(&mut self, outcome: Outcome, now: Instant) -> Option<Trigger> {
        self.record_in_fleet(outcome, now, 1)
    }

    /// [`OutlierDetector::record`] on one of `replicas` replicas sharing the consecutive
    /// budget (module docs).
    pub fn record_in_fleet(
        &mut self,
        outcome: Outcome,
        now: Instant,
        replicas: usize,
    ) -> Option<Trigger> {
        let e = self.epoch(now);
        let bucket = &mut self.buckets[(e % BUCKETS as u64) as usize];
        if bucket.epoch != e {
            *bucket = Bucket {
                epoch: e,
                ..Bucket::default()
            };
        }
        bucket.requests = bucket.requests.saturating_add(1);
        match outcome {
            Outcome::Success => {
                self.consecutive = 0;
                self.run_signal = None;
                self.run_mixed = false;
                return None;
            }
            Outcome::Neutral => return None,
            Outcome::Failure(signal) => {
                bucket.failures = bucket.failures.saturating_add(1);
                self.consecutive = self.consecutive.saturating_add(1);
                if self.run_signal.is_some_and(|s| s != signal) {
                    self.run_mixed = true;
                }
                self.run_signal = Some(signal);
            }
        }
        if let Some(signal) = self.run_signal
            && self.consecutive >= self.consecutive_share(replicas)
        {
            return Some(Trigger::Consecutive {
                count: self.consecutive,
                signal,
                same: !self.run_mixed,
                replicas: replicas.max(1),
            });
        }
        let (requests, failures) = self.window(now);
        if requests >= self.config.min_requests
            && f64::from(failures) >= self.config.failure_rate * f64::from(requests)
        {
            return Some(Trigger::Rate {
                failures,
                requests,
                window: self.config.window,
            });
        }
        None
    }

    /// How long an ejection made at `now` would last (see the module docs).
    pub fn ejection_time(&self, now: Instant) -> Duration {
        let n = self.next_multiplier(now);
        self.config
            .base_ejection
            .saturating_mul(n)
            .min(self.config.max_ejection)
    }

    fn next_multiplier(&self, now: Instant) -> u32 {
        match self.last_end {
            Some(end) if now.saturating_duration_since(end) < self.config.max_ejection => {
                self.recent.saturating_add(1)
            }
            _ => 1,
        }
    }

    /// The store ejected the endpoint at `now` for `trigger`, lasting `length`: counts it
    /// and starts the counts over.
    pub fn ejected(&mut self, trigger: &Trigger, length: Duration, now: Instant) {
        self.recent = self.next_multiplier(now);
        self.last_end = Some(now + crate::config::clock_safe(length));
        self.ejections = self.ejections.saturating_add(1);
        self.last_signal = Some(trigger.label());
        self.start_over();
    }

    /// The store withheld the ejection (`max_ejection_percent`) or the endpoint was already
    /// out of rotation: the counts start over. Returns whether this is worth a log line (at
    /// most one per window).
    pub fn withheld(&mut self, trigger: &Trigger, now: Instant) -> bool {
        self.last_signal = Some(trigger.label());
        self.start_over();
        let due = self
            .withheld_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= self.config.window);
        if due {
            self.withheld_logged = Some(now);
        }
        due
    }

    /// The endpoint was out of rotation anyway (ejected elsewhere, or failing its checks):
    /// the counts start over without a verdict.
    pub fn start_over(&mut self) {
        self.consecutive = 0;
        self.run_signal = None;
        self.run_mixed = false;
        self.buckets = [Bucket::default(); BUCKETS];
    }

    /// What the status page shows, as of `now`.
    pub fn stats(&self, now: Instant) -> OutlierStats {
        let (requests, failures) = self.window(now);
        OutlierStats {
            ejections: self.ejections,
            recent_requests: requests,
            recent_failure_rate: if requests == 0 {
                0.0
            } else {
                f64::from(failures) / f64::from(requests)
            },
            last_signal: self.last_signal,
        }
    }
}

#[cfg(test)]
mod tests;
