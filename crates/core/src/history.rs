//! [`CheckHistory`]: a bounded ring of one endpoint's recent checks (when, how long, passed or
//! not), for the status page's sparkline and `/internal/status/endpoints`' `recent_checks`.
//!
//! It holds at most [`CHECK_HISTORY`] samples and drops the oldest first, so its size never
//! depends on how long Hale runs or on anything a backend or another replica sends. The
//! store records this replica's checks and the checks of other replicas it adopts (so in
//! shared mode the sparkline shows the fleet's checks of the endpoint, not only this pod's);
//! passive results and ejections are not checks and are not recorded. A sample's latency is
//! what its check measured, bounded on the wire by coord, and shown as is.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// How many checks [`CheckHistory`] keeps per endpoint.
pub const CHECK_HISTORY: usize = 60;

/// One check: when it was made, how long it took (when known), and whether it passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSample {
    pub at: SystemTime,
    pub latency: Option<Duration>,
    pub ok: bool,
}

/// The last [`CHECK_HISTORY`] checks of one endpoint, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckHistory {
    samples: VecDeque<CheckSample>,
}

impl CheckHistory {
    /// Appends `sample`, dropping the oldest when full.
    pub fn record(&mut self, sample: CheckSample) {
        if self.samples.len() >= CHECK_HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &CheckSample> {
        self.samples.iter()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> CheckSample {
        CheckSample {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(i),
            latency: Some(Duration::from_millis(i)),
            ok: i.is_multiple_of(2),
        }
    }

    #[test]
    fn keeps_the_last_sixty_oldest_first() {
        let mut h = CheckHistory::default();
        assert!(h.is_empty());
        for i in 0..10 {
            h.record(sample(i));
        }
        assert_eq!(h.len(), 10);
        for i in 10..1000 {
            h.record(sample(i));
        }
        assert_eq!(h.len(), CHECK_HISTORY);
        let kept: Vec<_> = h.iter().copied().collect();
        let expected: Vec<_> = (940..1000).map(sample).collect();
        assert_eq!(kept, expected);
    }
}
