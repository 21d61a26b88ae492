//! How times and durations look in Hale's JSON, in one place so every route agrees.
//!
//! Wall-clock stamps are RFC 3339 in UTC with milliseconds (`2024-01-15T10:30:45.123Z`);
//! latencies are milliseconds as a float with microsecond precision (`15.042`); the human
//! uptime of `/internal/health` is Go's duration notation (`2h15m3s`), as Olla prints it.

use std::time::{Duration, SystemTime};

/// `2024-01-15T10:30:45.123Z`.
pub(crate) fn rfc3339_ms(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds with microsecond precision: 15.042 for 15 042 µs.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// A percentage rounded to two decimals, so `66.67` rather than `66.66666666666667`.
pub(crate) fn percent(p: f64) -> f64 {
    (p * 100.0).round() / 100.0
}

/// Go's `time.Duration` notation truncated to whole seconds: `3s`, `1m0s`, `2h15m3s`.
/// Hours do not roll over into days, as in Go.
pub(crate) fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_notation() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(3_900)), "3s");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(
            go_duration(Duration::from_secs(2 * 3600 + 15 * 60 + 3)),
            "2h15m3s"
        );
        assert_eq!(go_duration(Duration::from_secs(49 * 3600)), "49h0m0s");
    }

    #[test]
    fn numbers_and_stamps() {
        assert_eq!(millis(Duration::from_micros(15_042)), 15.042);
        assert_eq!(millis(Duration::from_nanos(1_500)), 0.001);
        assert_eq!(percent(200.0 / 3.0), 66.67);
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_705_314_645_123);
        assert_eq!(rfc3339_ms(t), "2024-01-15T10:30:45.123Z");
    }
}
