//! Values from Redis or the channel that coord refused: counted in
//! `hale_coord_rejected_total{kind}` and logged at WARN at most once a minute per kind.
//!
//! Kinds: `due` (a due time outside what this replica's own config can plan), `fence` (a
//! fencing token Redis's counter cannot have issued), `malformed` (a field that does not
//! parse, is out of range or too long, a key of the wrong type, garbage on the channel) and
//! `signature` (a result or event without a valid HMAC while `shared.signing_key` is set).

use crate::health::LogLimiter;
use std::sync::atomic::{AtomicU64, Ordering};

/// The metric name.
pub const REJECTED_TOTAL: &str = "hale_coord_rejected_total";

/// Why a value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Due,
    Fence,
    Malformed,
    Signature,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Due, Kind::Fence, Kind::Malformed, Kind::Signature];

    fn index(self) -> usize {
        self as usize
    }

    /// The kind of a value that did not read: `signature` or `malformed`.
    pub fn of(e: &crate::wire::WireError) -> Self {
        if e.is_signature() {
            Kind::Signature
        } else {
            Kind::Malformed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Due => "due",
            Kind::Fence => "fence",
            Kind::Malformed => "malformed",
            Kind::Signature => "signature",
        }
    }
}

/// Counts and logs refusals.
#[derive(Debug, Default)]
pub(crate) struct Rejected {
    log: LogLimiter,
    counts: [AtomicU64; 4],
}

impl Rejected {
    /// How many values of `kind` were refused since start.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts[kind.index()].load(Ordering::Relaxed)
    }

    pub fn reject(&self, kind: Kind, endpoint: &str, detail: &str) {
        self.counts[kind.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(REJECTED_TOTAL, "kind" => kind.as_str()).increment(1);
        let detail: String = detail.chars().take(200).collect();
        if self.log.allow(kind.as_str()) {
            tracing::warn!(
                kind = kind.as_str(),
                endpoint,
                detail = %detail,
                "refused a shared health value from Redis (logged once a minute per kind)"
            );
        } else {
            tracing::debug!(kind = kind.as_str(), endpoint, detail = %detail, "refused a shared value");
        }
    }
}
