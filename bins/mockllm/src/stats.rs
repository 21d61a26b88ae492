//! Hit counters and the recent-request log behind `GET /__stats`, plus the count of
//! generation requests dropped for their `close_on` marker (`closed_on_marker`).
//!
//! Recording a hit must not serialise the server's cores, because mockllm sits under proxy
//! benchmarks. So each known path has its own atomic counter, and the log of the last
//! [`RECENT`] hits is a ring of individually locked slots: a hit takes a sequence number
//! with one atomic add and then locks only its own slot, which no other writer wants at the
//! same moment. Only paths no flavour knows (404s) go through a shared map behind a mutex,
//! and that map stops growing at [`MAX_OTHER_PATHS`] entries so a path scanner cannot eat
//! memory. Reading the stats walks the ring slot by slot; it is an admin path and may be slow.
//!
//! A reset moves a base sequence number forward instead of wiping the ring, so writers
//! racing with it never resurrect entries from before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use crate::flavor::Known;

/// How many recent hits `/__stats` reports.
pub const RECENT: usize = 10_000;
/// How many distinct unknown paths are counted individually; later ones share one entry.
const MAX_OTHER_PATHS: usize = 1_000;
/// The entry that counts unknown paths beyond [`MAX_OTHER_PATHS`].
const OVERFLOW_PATH: &str = "(other)";

/// The path of one hit: a known path by index, anything else by its text.
#[derive(Clone, Debug)]
pub enum PathKey {
    Known(Known),
    Other(Box<str>),
}

impl PathKey {
    fn as_str(&self) -> &str {
        match self {
            PathKey::Known(k) => k.as_str(),
            PathKey::Other(p) => p,
        }
    }
}

/// One logged hit.
#[derive(Clone, Debug)]
struct Hit {
    path: PathKey,
    /// Arrival time, milliseconds since the Unix epoch.
    t_ms: u64,
    /// The `x-hale-pod` request header, when present.
    pod: Option<Box<str>>,
}

/// One ring slot: the sequence number of the hit it holds, so readers can tell a current
/// entry from one a lap older.
#[derive(Debug, Default)]
struct Slot {
    seq: u64,
    hit: Option<Hit>,
}

/// Hit counters and the recent log; see the module docs.
#[derive(Debug)]
pub struct Stats {
    known: [AtomicU64; Known::ALL.len()],
    other: Mutex<HashMap<Box<str>, u64>>,
    next_seq: AtomicU64,
    base_seq: AtomicU64,
    ring: Box<[Mutex<Slot>]>,
    /// Generation requests dropped for carrying the `close_on` marker.
    closed_on_marker: AtomicU64,
}

/// Locks a mutex, carrying on with the data if a panicking holder poisoned it: every value
/// guarded here stays consistent after any single assignment.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty stats.
    pub fn new() -> Self {
        Stats {
            known: std::array::from_fn(|_| AtomicU64::new(0)),
            other: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(0),
            base_seq: AtomicU64::new(0),
            ring: (0..RECENT).map(|_| Mutex::new(Slot::default())).collect(),
            closed_on_marker: AtomicU64::new(0),
        }
    }

    /// Counts one request dropped for its `close_on` marker.
    pub fn closed_on_marker(&self) {
        self.closed_on_marker.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one non-admin hit that arrived at `t_ms` (ms since the Unix epoch).
    pub fn record(&self, path: PathKey, t_ms: u64, pod: Option<Box<str>>) {
        match &path {
            PathKey::Known(k) => {
                self.known[k.index()].fetch_add(1, Ordering::Relaxed);
            }
            PathKey::Other(p) => {
                let mut other = lock(&self.other);
                if let Some(n) = other.get_mut(p) {
                    *n += 1;
                } else if other.len() < MAX_OTHER_PATHS {
                    other.insert(p.clone(), 1);
                } else {
                    *other.entry(OVERFLOW_PATH.into()).or_insert(0) += 1;
                }
            }
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut slot = lock(&self.ring[ring_index(seq)]);
        // A writer delayed by a whole lap must not overwrite the newer hit in its slot.
        if slot.hit.is_none() || slot.seq <= seq {
            *slot = Slot {
                seq,
                hit: Some(Hit { path, t_ms, pod }),
            };
        }
    }

    /// Forgets every hit so far.
    pub fn reset(&self) {
        self.base_seq
            .store(self.next_seq.load(Ordering::Relaxed), Ordering::Relaxed);
        for counter in &self.known {
            counter.store(0, Ordering::Relaxed);
        }
        self.closed_on_marker.store(0, Ordering::Relaxed);
        lock(&self.other).clear();
    }

    /// The `/__stats` document.
    pub fn render(&self) -> serde_json::Result<Vec<u8>> {
        let mut hits: BTreeMap<&str, u64> = BTreeMap::new();
        for k in Known::ALL {
            let n = self.known[k.index()].load(Ordering::Relaxed);
            if n > 0 {
                hits.insert(k.as_str(), n);
            }
        }
        let other = lock(&self.other);
        for (path, n) in other.iter() {
            *hits.entry(path).or_insert(0) += n;
        }
        let total = hits.values().sum();

        let end = self.next_seq.load(Ordering::Relaxed);
        let start = self
            .base_seq
            .load(Ordering::Relaxed)
            .max(end.saturating_sub(RECENT as u64));
        let mut logged: Vec<(u64, Hit)> = Vec::with_capacity((end - start.min(end)) as usize);
        for seq in start..end {
            let slot = lock(&self.ring[ring_index(seq)]);
            // A slot whose writer has not finished yet, or that already holds a newer lap,
            // is skipped rather than reported with the wrong hit.
            if slot.seq == seq
                && let Some(hit) = &slot.hit
            {
                logged.push((seq, hit.clone()));
            }
        }
        // Sequence numbers are taken just after the arrival stamp, so two cores may swap
        // neighbours; the log promises arrival order.
        logged.sort_by_key(|(seq, hit)| (hit.t_ms, *seq));
        let recent: Vec<RecentOut<'_>> = logged
            .iter()
            .map(|(_, hit)| RecentOut {
                path: hit.path.as_str(),
                t: hit.t_ms as f64 / 1000.0,
                pod: hit.pod.as_deref(),
            })
            .collect();
        serde_json::to_vec(&StatsOut {
            total,
            closed_on_marker: self.closed_on_marker.load(Ordering::Relaxed),
            hits,
            recent,
        })
    }
}

fn ring_index(seq: u64) -> usize {
    (seq % RECENT as u64) as usize
}

#[derive(Serialize)]
struct StatsOut<'a> {
    total: u64,
    closed_on_marker: u64,
    hits: BTreeMap<&'a str, u64>,
    recent: Vec<RecentOut<'a>>,
}

#[derive(Serialize)]
struct RecentOut<'a> {
    path: &'a str,
    t: f64,
    pod: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(stats: &Stats) -> serde_json::Value {
        serde_json::from_slice(&stats.render().unwrap()).unwrap()
    }

    #[test]
    fn counts_known_and_unknown_paths_and_logs_in_order() {
        let s = Stats::new();
        s.record(
            PathKey::Known(Known::Health),
            1_000_500,
            Some("pod-a".into()),
        );
        s.record(PathKey::Other("/nope".into()), 1_000_000, None);
        s.record(PathKey::Known(Known::Health), 1_001_000, None);
        let v = parse(&s);
        assert_eq!(v["total"], 3);
        assert_eq!(v["hits"]["/health"], 2);
        assert_eq!(v["hits"]["/nope"], 1);
        let recent = v["recent"].as_array().unwrap();
        assert_eq!(recent.len(), 3);
        assert_eq!(recent[0]["path"], "/nope");
        assert_eq!(recent[1]["pod"], "pod-a");
        assert_eq!(recent[1]["t"], 1000.5);
        assert!(recent[2]["pod"].is_null());
    }

    #[test]
    fn keeps_only_the_last_ring_full_and_resets() {
        let s = Stats::new();
        for i in 0..(RECENT as u64 + 5) {
            s.record(PathKey::Known(Known::V1Models), i, None);
        }
        let v = parse(&s);
        let recent = v["recent"].as_array().unwrap();
        assert_eq!(recent.len(), RECENT);
        assert_eq!(recent[0]["t"], 0.005);
        assert_eq!(v["total"], RECENT as u64 + 5);
        s.reset();
        let v = parse(&s);
        assert_eq!(v["total"], 0);
        assert!(v["recent"].as_array().unwrap().is_empty());
        s.record(PathKey::Known(Known::Root), 7, None);
        assert_eq!(parse(&s)["recent"].as_array().unwrap().len(), 1);
    }
}
