//! The recorder behind [`Metrics`](super::Metrics): a `metrics-exporter-prometheus` recorder
//! per endpoint, plus one for every series without an `endpoint` label, so that an endpoint a
//! reload removed can be forgotten whole — its recorder, with every series of it, is dropped.
//!
//! Why not the exporter's idle timeout: it forgets a series that has not changed for a while,
//! which would also forget the counters and histograms of a live endpoint that simply had no
//! traffic (and the handles the proxy keeps for the request path would then count into
//! series no longer rendered); and the exporter has no call to delete a series by label
//! (metrics-rs/metrics#243). Dropping a per-endpoint recorder frees its registry, its
//! histogram buckets and its label sets, so memory stays flat however many endpoints come
//! and go. A recorder costs about 6 KiB before its series (measured: 1,000 of them with one
//! gauge each, 6.4 MiB).
//!
//! Routing: each registration looks for an `endpoint` label and goes to that endpoint's
//! recorder (made on first sight, with Hale's buckets and every description given so far),
//! else to the common one. Descriptions go to all. Rendering renders each recorder and merges
//! the text by metric family, so every family has one `HELP`/`TYPE` header and its samples
//! together, as the exposition format requires.
//!
//! Forgetting ([`ByEndpoint::retain`]): the scrape takes a [`mark`](ByEndpoint::mark), then
//! reads the snapshot, and drops the recorders of endpoints the snapshot does not list —
//! except those that registered something after the mark. A runtime for an endpoint a reload
//! just added registers its series after the store took the new endpoint set, so either the
//! snapshot lists it or its registration is newer than the mark: a live endpoint's recorder
//! is never dropped under the handles it hands out. A request still finishing on a removed
//! endpoint after its recorder was dropped records into a handle no longer rendered, which is
//! what removal means.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{BuildError, PrometheusRecorder};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

/// The label that partitions the series.
const ENDPOINT_LABEL: &str = "endpoint";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

type Description = (Kind, KeyName, Option<Unit>, SharedString);

/// See the module docs.
pub struct ByEndpoint {
    build: fn() -> Result<PrometheusRecorder, BuildError>,
    common: PrometheusRecorder,
    endpoints: RwLock<HashMap<String, Part>>,
    descriptions: Mutex<Vec<Description>>,
    /// Orders registrations against marks.
    seq: AtomicU64,
}

struct Part {
    recorder: PrometheusRecorder,
    /// The `seq` of its latest registration.
    touched: AtomicU64,
}

impl std::fmt::Debug for ByEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByEndpoint")
            .field("endpoints", &self.endpoint_count())
            .finish_non_exhaustive()
    }
}

impl ByEndpoint {
    /// `build` makes each recorder (the same buckets for all).
    pub fn new(build: fn() -> Result<PrometheusRecorder, BuildError>) -> Result<Self, BuildError> {
        Ok(Self {
            common: build()?,
            build,
            endpoints: RwLock::new(HashMap::new()),
            descriptions: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
        })
    }

    /// A point in the order of registrations; see [`retain`](Self::retain).
    pub fn mark(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Drops the recorder (every series) of each endpoint `live` says no to and that
    /// registered nothing after `mark`.
    pub fn retain(&self, live: impl Fn(&str) -> bool, mark: u64) {
        let mut parts = self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        parts.retain(|name, part| live(name) || part.touched.load(Ordering::Acquire) > mark);
    }

    /// Endpoints with series now.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Every series, one header per family (see the module docs).
    pub fn render(&self) -> String {
        let mut texts = vec![self.common.handle().render()];
        let parts = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        texts.extend(parts.values().map(|p| p.recorder.handle().render()));
        drop(parts);
        merge(&texts)
    }

    /// Drains histogram samples in every recorder.
    pub fn run_upkeep(&self) {
        self.common.handle().run_upkeep();
        let parts = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for p in parts.values() {
            p.recorder.handle().run_upkeep();
        }
    }

    /// Runs `f` on the recorder that owns `key`'s series.
    fn with_owner<T>(&self, key: &Key, f: impl Fn(&PrometheusRecorder) -> T) -> T {
        let Some(name) = key
            .labels()
            .find(|l| l.key() == ENDPOINT_LABEL)
            .map(|l| l.value())
            // An empty value (an answer Hale made itself) belongs to no endpoint.
            .filter(|v| !v.is_empty())
        else {
            return f(&self.common);
        };
        let stamp = |part: &Part| {
            let now = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
            part.touched.fetch_max(now, Ordering::AcqRel);
        };
        {
            let parts = self
                .endpoints
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(part) = parts.get(name) {
                stamp(part);
                return f(&part.recorder);
            }
        }
        let mut parts = self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(part) = parts.get(name) {
            stamp(part);
            return f(&part.recorder);
        }
        // Building cannot fail once the common recorder was built the same way; if it did,
        // the series go to the common recorder rather than nowhere.
        let Ok(recorder) = (self.build)() else {
            return f(&self.common);
        };
        let descriptions = self
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for d in descriptions.iter() {
            describe(&recorder, d.clone());
        }
        drop(descriptions);
        let part = parts.entry(name.to_owned()).or_insert(Part {
            recorder,
            touched: AtomicU64::new(0),
        });
        stamp(part);
        f(&part.recorder)
    }

    fn describe_all(&self, d: Description) {
        let mut descriptions = self
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        describe(&self.common, d.clone());
        let parts = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for p in parts.values() {
            describe(&p.recorder, d.clone());
        }
        drop(parts);
        descriptions.push(d);
    }
}

fn describe(r: &PrometheusRecorder, (kind, key, unit, text): Description) {
    match kind {
        Kind::Counter => r.describe_counter(key, unit, text),
        Kind::Gauge => r.describe_gauge(key, unit, text),
        Kind::Histogram => r.describe_histogram(key, unit, text),
    }
}

impl Recorder for ByEndpoint {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe_all((Kind::Counter, key, unit, description));
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe_all((Kind::Gauge, key, unit, description));
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe_all((Kind::Histogram, key, unit, description));
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.with_owner(key, |r| r.register_counter(key, metadata))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.with_owner(key, |r| r.register_gauge(key, metadata))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.with_owner(key, |r| r.register_histogram(key, metadata))
    }
}

/// Merges Prometheus text renders by family: each family's `# HELP`/`# TYPE` lines once (from
/// its first render), then its samples from every render. Families are blocks ending in a
/// blank line, named by their `# TYPE` line.
fn merge(texts: &[String]) -> String {
    let mut families: BTreeMap<&str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
    for text in texts {
        for block in text.split("\n\n") {
            let lines: Vec<&str> = block.lines().filter(|l| !l.is_empty()).collect();
            let name = lines
                .iter()
                .find_map(|l| l.strip_prefix("# TYPE "))
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or("");
            if lines.is_empty() {
                continue;
            }
            let (header, samples) = families.entry(name).or_default();
            let (h, s): (Vec<&str>, Vec<&str>) = lines.iter().partition(|l| l.starts_with('#'));
            if header.is_empty() {
                *header = h;
            }
            samples.extend(s);
        }
    }
    let mut out = String::new();
    for (header, samples) in families.values() {
        for line in header.iter().chain(samples) {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn recorder() -> ByEndpoint {
        ByEndpoint::new(|| Ok(PrometheusBuilder::new().build_recorder())).unwrap()
    }

    #[test]
    fn a_forgotten_endpoint_loses_every_series_and_live_idle_ones_keep_theirs() {
        let r = recorder();
        metrics::with_local_recorder(&r, || {
            metrics::describe_counter!("requests", "Requests.");
            metrics::counter!("requests", "endpoint" => "a", "status" => "200").increment(3);
            metrics::counter!("requests", "endpoint" => "gone", "status" => "200").increment(1);
            metrics::histogram!("took", "endpoint" => "gone").record(0.5);
            metrics::gauge!("up", "endpoint" => "a").set(1.0);
            metrics::gauge!("runtimes").set(2.0);
            metrics::counter!("requests", "endpoint" => "", "status" => "404").increment(1);
        });
        let text = r.render();
        assert_eq!(text.matches("# TYPE requests counter").count(), 1, "{text}");
        assert_eq!(
            text.matches("# HELP requests Requests.").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(r#"requests{endpoint="gone",status="200"} 1"#),
            "{text}"
        );

        let mark = r.mark();
        r.retain(|name| name == "a", mark);
        assert_eq!(r.endpoint_count(), 1);
        let text = r.render();
        assert!(!text.contains("gone"), "{text}");
        assert!(
            !text.contains("took"),
            "the family went with its last series: {text}"
        );
        // a had no traffic since: its counter and gauge stay, and so does the common series.
        assert!(
            text.contains(r#"requests{endpoint="a",status="200"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"up{endpoint="a"} 1"#), "{text}");
        assert!(text.contains("runtimes 2"), "{text}");
        assert!(
            text.contains(r#"requests{endpoint="",status="404"} 1"#),
            "Hale's own answers name no endpoint and stay: {text}"
        );
        assert!(text.contains("# HELP requests Requests."), "{text}");
    }

    #[test]
    fn an_endpoint_registered_after_the_mark_is_kept_until_the_next_scrape() {
        let r = recorder();
        let mark = r.mark();
        // A reload added "new" after the scrape read its (older) snapshot.
        let c = metrics::with_local_recorder(&r, || metrics::counter!("x", "endpoint" => "new"));
        r.retain(|_| false, mark);
        c.increment(1);
        assert!(r.render().contains(r#"x{endpoint="new"} 1"#));
        // The next scrape's snapshot does not list it either: now it goes.
        let mark = r.mark();
        r.retain(|_| false, mark);
        assert_eq!(r.endpoint_count(), 0);
    }

    #[test]
    fn a_thousand_endpoints_come_and_go_and_nothing_stays() {
        let r = recorder();
        for i in 0..1000 {
            let name = format!("e{i}");
            metrics::with_local_recorder(&r, || {
                metrics::counter!("requests", "endpoint" => name.clone()).increment(1);
                metrics::histogram!("took", "endpoint" => name.clone()).record(0.1);
            });
            let mark = r.mark();
            r.retain(|n| n == name, mark);
        }
        assert_eq!(r.endpoint_count(), 1);
        let text = r.render();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("endpoint=")).collect();
        assert!(!lines.is_empty());
        assert!(
            lines.iter().all(|l| l.contains(r#"endpoint="e999""#)),
            "{text}"
        );
    }
}
