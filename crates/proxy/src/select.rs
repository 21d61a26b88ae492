//! Candidate selection: which endpoint gets a request for a model.
//!
//! Candidates are the endpoints that serve the model (core's `serves`: the static list, else
//! the discovered one, `:latest` implied), that speak the route's API (Ollama-native routes:
//! `ollama` endpoints only), that are routable now (state and rate limit from the lock-free
//! snapshot), whose breaker would admit a request, and that this request has not tried yet.
//! Among them only the highest `priority` tier is considered; within it:
//!
//! - `balancer: priority` (the default) — weighted least outstanding requests: the endpoint
//!   with the smallest `(outstanding + 1) / weight` wins. Ties (typically everything idle) are
//!   broken uniformly at random (the k-th tied candidate of the scan replaces the pick with
//!   probability 1/k), with a per-thread generator so no cache line is shared between cores.
//!   (Starting the scan at a random position instead is not uniform: the candidate after an
//!   ineligible one would win the ties of both positions.)
//! - `balancer: round-robin` — weighted round robin over one process-wide counter: plain
//!   rotation when the weights in the tier are equal; otherwise the counter's golden-ratio
//!   sequence (`frac(n·φ)`) is mapped onto the cumulative weights, which gives every endpoint
//!   its share smoothly interleaved rather than in bursts.
//!
//! Health shapes the share:
//! - `degraded` endpoints count at a quarter of their weight ([`DEGRADED_WEIGHT_FACTOR`]):
//!   under round robin they get a quarter of their share; under least-outstanding they are
//!   picked only once the healthy ones carry four times their load, so a slow backend still
//!   takes overflow but is not loaded like a fast one.
//! - `recovering` endpoints take trial traffic only: at most one request in flight (the claim
//!   is a compare-and-swap of the outstanding count from 0 to 1), at full weight, until the
//!   checks call them `healthy` again.
//!
//! A candidate whose claim fails (a recovering endpoint that got its one request an instant
//! earlier, a breaker that tripped) is skipped and selection runs again, at most once per
//! endpoint. "No candidate" is a 404 when no endpoint serves the model at all and a 503 when
//! some do but none can take the request now.
//!
//! Before such a 404, [`rediscover`] asks every routable endpoint of the route whose models
//! are discovered to re-read its list and waits for them (a model pulled onto a running
//! backend is served on the first request naming it). The store rate-limits this per
//! endpoint (one per `discovery_interval`; see `hale_core::discovery`), so a flood of
//! made-up names costs one model-list request per endpoint per interval, and every request
//! beyond the first is answered at once (or joins the rediscovery under way). The wait is
//! bounded by twice the longest `check_timeout` of the endpoints asked: a check already
//! running on an endpoint's task finishes first, then the discovery runs, each within its
//! timeout.

use crate::config::Balancer;
use crate::route::Route;
use crate::runtime::{Claim, EndpointRuntime};
use hale_core::store::EndpointStatus;
use hale_core::{HealthState, HealthStore, Snapshot};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// The share of its weight a `degraded` endpoint keeps.
pub const DEGRADED_WEIGHT_FACTOR: f64 = 0.25;

/// The `Retry-After` of a 503 when no serving endpoint says better.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many excluded runtimes a request holds without allocating.
const INLINE_EXCLUDED: usize = 6;

/// The endpoints one request must not be sent to (already tried, or just refused a claim),
/// by runtime id (unique for the process, so stable across a reload mid-request). Its size
/// is the number of endpoints this request tried or lost a claim on — not the size of the
/// id space, which grows with every reload — so it lives inline, allocation-free, until a
/// request has been turned away by more than [`INLINE_EXCLUDED`] endpoints.
#[derive(Debug, Default, Clone)]
pub struct Excluded {
    inline: [usize; INLINE_EXCLUDED],
    len: usize,
    more: Vec<usize>,
}

impl Excluded {
    pub fn insert(&mut self, id: usize) {
        if self.contains(id) {
            return;
        }
        match self.inline.get_mut(self.len) {
            Some(slot) => {
                *slot = id;
                self.len += 1;
            }
            None => self.more.push(id),
        }
    }

    pub fn contains(&self, id: usize) -> bool {
        self.inline.iter().take(self.len).any(|&i| i == id) || self.more.contains(&id)
    }
}

/// The outcome of one selection.
#[derive(Debug)]
pub enum Selection {
    /// Send the request to the claimed endpoint, holding `claim` until the answer ends.
    Picked { claim: Claim },
    /// No configured endpoint serves the model on this route: 404.
    NotServed,
    /// Endpoints serve it, but none can take the request now: 503.
    Unavailable { retry_after: Duration },
}

/// One eligible endpoint, as the balancer sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate<'t> {
    rt: &'t Arc<EndpointRuntime>,
    priority: i32,
    weight: f64,
    outstanding: usize,
    exclusive: bool,
}

/// Picks endpoints for requests; see the module docs.
#[derive(Debug)]
pub struct Selector {
    balancer: Balancer,
    turn: AtomicUsize,
}

impl Selector {
    pub fn new(balancer: Balancer) -> Self {
        Self {
            balancer,
            turn: AtomicUsize::new(0),
        }
    }

    /// Selects and claims an endpoint for `model` on `route`, skipping `excluded` (which
    /// grows by the endpoints whose claim failed here).
    pub fn select(
        &self,
        snapshot: &Snapshot,
        runtimes: &[Arc<EndpointRuntime>],
        model: &str,
        route: Route,
        excluded: &mut Excluded,
        now: Instant,
    ) -> Selection {
        loop {
            let mut scan = Scan::default();
            let picked = match self.balancer {
                Balancer::Priority => self
                    .least_outstanding(snapshot, runtimes, model, route, excluded, now, &mut scan),
                Balancer::RoundRobin => {
                    self.round_robin(snapshot, runtimes, model, route, excluded, now, &mut scan)
                }
            };
            let Some(c) = picked else {
                return if scan.serving {
                    Selection::Unavailable {
                        retry_after: scan.retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                    }
                } else {
                    Selection::NotServed
                };
            };
            match c.rt.try_claim(c.exclusive, now) {
                Some(claim) => return Selection::Picked { claim },
                // Lost a race for a recovering endpoint's one slot or a breaker's trial:
                // try the others.
                None => excluded.insert(c.rt.id),
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one private scan, its inputs spelled out"
    )]
    fn least_outstanding<'t>(
        &self,
        snapshot: &Snapshot,
        runtimes: &'t [Arc<EndpointRuntime>],
        model: &str,
        route: Route,
        excluded: &Excluded,
        now: Instant,
        scan: &mut Scan,
    ) -> Option<Candidate<'t>> {
        let mut best: Option<(Candidate, f64)> = None;
        // Candidates tied with `best` so far, `best` included.
        let mut tied = 0_usize;
        for i in 0..snapshot.endpoints.len() {
            let Some(c) = eligible(snapshot, runtimes, i, model, route, excluded, now, scan) else {
                continue;
            };
            let score = (c.outstanding as f64 + 1.0) / c.weight;
            let take = match &best {
                None => true,
                Some((b, s))
                    if c.priority > b.priority || (c.priority == b.priority && score < *s) =>
                {
                    true
                }
                Some((b, s)) if c.priority == b.priority && score == *s => {
                    tied += 1;
                    if random_below(tied) == 0 {
                        best = Some((c, score));
                    }
                    continue;
                }
                Some(_) => false,
            };
            if take {
                best = Some((c, score));
                tied = 1;
            }
        }
        best.map(|(c, _)| c)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one private scan, its inputs spelled out"
    )]
    fn round_robin<'t>(
        &self,
        snapshot: &Snapshot,
        runtimes: &'t [Arc<EndpointRuntime>],
        model: &str,
        route: Route,
        excluded: &Excluded,
        now: Instant,
        scan: &mut Scan,
    ) -> Option<Candidate<'t>> {
        // Pass 1: the top tier, its size, total weight and whether its weights are equal.
        let mut top: Option<i32> = None;
        let (mut count, mut total, mut first_weight, mut equal) = (0_usize, 0.0_f64, 0.0_f64, true);
        for i in 0..snapshot.endpoints.len() {
            let Some(c) = eligible(snapshot, runtimes, i, model, route, excluded, now, scan) else {
                continue;
            };
            if top.is_none_or(|p| c.priority > p) {
                top = Some(c.priority);
                (count, total, first_weight, equal) = (0, 0.0, c.weight, true);
            }
            if Some(c.priority) == top {
                count += 1;
                total += c.weight;
                equal &= c.weight == first_weight;
            }
        }
        let top = top?;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        // Pass 2: walk the tier to the chosen position.
        let mut target_rank = turn % count;
        let mut target_weight = golden_fraction(turn) * total;
        let mut last = None;
        let mut ignored = Scan::default();
        for i in 0..snapshot.endpoints.len() {
            let Some(c) = eligible(
                snapshot,
                runtimes,
                i,
                model,
                route,
                excluded,
                now,
                &mut ignored,
            ) else {
                continue;
            };
            if c.priority != top {
                continue;
            }
            last = Some(c);
            if equal {
                if target_rank == 0 {
                    return Some(c);
                }
                target_rank -= 1;
            } else {
                if target_weight < c.weight {
                    return Some(c);
                }
                target_weight -= c.weight;
            }
        }
        // Rounding at the very end of the cumulative weights lands on the last candidate.
        last
    }
}

/// What a scan learnt besides its pick: whether anything serves the model, and the soonest
/// a serving endpoint is checked again (the 503's `Retry-After`).
#[derive(Debug, Default)]
struct Scan {
    serving: bool,
    retry_after: Option<Duration>,
}

/// Whether endpoint `i` may take this request, and as what candidate.
#[expect(
    clippy::too_many_arguments,
    reason = "one private predicate, its inputs spelled out"
)]
fn eligible<'t>(
    snapshot: &Snapshot,
    runtimes: &'t [Arc<EndpointRuntime>],
    i: usize,
    model: &str,
    route: Route,
    excluded: &Excluded,
    now: Instant,
    scan: &mut Scan,
) -> Option<Candidate<'t>> {
    let status: &EndpointStatus = snapshot.endpoints.get(i)?;
    let endpoint = &status.endpoint;
    if route.ollama_only() && !endpoint.kind.speaks_ollama() {
        return None;
    }
    // The runtime must be this very endpoint (same `Arc`). Positions match except in the
    // instant between a reload's new snapshot and the proxy's new table: then search, and
    // accept the runtime of the same name and destination (an endpoint whose settings
    // changed), so that instant costs no request a 404 or a 503.
    let rt = match runtimes.get(i) {
        Some(rt) if Arc::ptr_eq(&rt.endpoint, endpoint) => rt,
        _ => runtimes
            .iter()
            .find(|rt| Arc::ptr_eq(&rt.endpoint, endpoint))
            .or_else(|| {
                runtimes.iter().find(|rt| {
                    rt.endpoint.name == endpoint.name
                        && rt.endpoint.url == endpoint.url
                        && rt.endpoint.api_key == endpoint.api_key
                })
            })?,
    };
    if !rt.usable() || !status.serves(model) {
        return None;
    }
    scan.serving = true;
    let interval = endpoint.check_interval;
    scan.retry_after = Some(scan.retry_after.map_or(interval, |r| r.min(interval)));
    if excluded.contains(rt.id) || !status.health.is_routable(now) {
        return None;
    }
    let state = status.health.state;
    let exclusive = state == HealthState::Recovering;
    let outstanding = rt.outstanding();
    if (exclusive && outstanding > 0) || !rt.would_admit(now) {
        return None;
    }
    let factor = if state == HealthState::Degraded {
        DEGRADED_WEIGHT_FACTOR
    } else {
        1.0
    };
    Some(Candidate {
        rt,
        priority: endpoint.priority,
        weight: endpoint.weight * factor,
        outstanding,
        exclusive,
    })
}

/// Asks the endpoints that could serve `route` (routable, speaking its API, with discovered
/// models) for a rediscovery and waits for those that start one, bounded (see the module
/// docs). Returns whether any was asked: only then can selecting again find more.
pub async fn rediscover(store: &HealthStore, snapshot: &Snapshot, route: Route) -> bool {
    let now = Instant::now();
    let mut waits = Vec::new();
    let mut bound = Duration::ZERO;
    for status in &snapshot.endpoints {
        let endpoint = &status.endpoint;
        if (route.ollama_only() && !endpoint.kind.speaks_ollama())
            || !endpoint.discovers()
            || !status.health.is_routable(now)
        {
            continue;
        }
        if let Some(wait) = store.request_discovery(&endpoint.name, now) {
            bound = bound.max(endpoint.check_timeout.saturating_mul(2));
            waits.push(wait);
        }
    }
    if waits.is_empty() {
        return false;
    }
    let deadline = now + hale_core::config::clock_safe(bound);
    for wait in waits {
        if tokio::time::timeout_at(deadline, wait.done())
            .await
            .is_err()
        {
            break;
        }
    }
    true
}

/// `frac(n · φ)`: a low-discrepancy sequence in [0, 1).
fn golden_fraction(n: usize) -> f64 {
    const PHI_FRAC: f64 = 0.618_033_988_749_894_8;
    (n as f64 * PHI_FRAC).fract()
}

/// A number in `0..n` (0 when `n` is 0) from a per-thread xorshift generator.
fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
    }
    if n <= 1 {
        return 0;
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_core::{
        CheckOutcome, CheckResult, EndpointConfig, EndpointKind, HealthConfig, HealthStore, Now,
    };
    use std::collections::HashMap;

    struct Fixture {
        store: Arc<HealthStore>,
        runtimes: Vec<Arc<EndpointRuntime>>,
    }

    /// Endpoints as (name, kind, priority, weight, models); all start healthy.
    fn fixture(eps: &[(&str, EndpointKind, i32, f64, &[&str])]) -> Fixture {
        let endpoints = eps
            .iter()
            .map(|(name, kind, priority, weight, models)| {
                let mut c = EndpointConfig::new(*name, "http://127.0.0.1:9", *kind);
                c.priority = *priority;
                c.weight = *weight;
                c.models = models.iter().map(|m| (*m).to_owned()).collect();
                c.resolve("e").unwrap()
            })
            .collect();
        let health = HealthConfig {
            unhealthy_threshold: 1,
            healthy_threshold: 2,
            jitter: 0.0,
            ..Default::default()
        };
        let store = Arc::new(HealthStore::new("pod", endpoints, &health, Now::capture()));
        for (name, ..) in eps {
            ok(&store, name, 1);
        }
        let runtimes = store
            .snapshot()
            .endpoints
            .iter()
            .map(|s| {
                Arc::new(EndpointRuntime::new(
                    s.endpoint.clone(),
                    &crate::ProxyConfig::default(),
                    1,
                    &store,
                ))
            })
            .collect();
        Fixture { store, runtimes }
    }

    fn ok(store: &HealthStore, name: &str, latency_ms: u64) {
        store.observe(
            name,
            &CheckOutcome::ok(Duration::from_millis(latency_ms)),
            Now::capture(),
        );
    }

    impl Fixture {
        fn pick(&self, sel: &Selector, model: &str, route: Route) -> Selection {
            sel.select(
                &self.store.snapshot(),
                &self.runtimes,
                model,
                route,
                &mut Excluded::default(),
                Instant::now(),
            )
        }

        fn name<'s>(&self, s: &'s Selection) -> &'s str {
            match s {
                Selection::Picked { claim } => claim.runtime().name(),
                other => panic!("nothing picked: {other:?}"),
            }
        }

        /// Picks `n` times, each claim dropped at once, and counts picks per endpoint.
        fn shares(&self, sel: &Selector, n: usize) -> HashMap<String, usize> {
            let mut counts = HashMap::new();
            for _ in 0..n {
                let s = self.pick(sel, "m", Route::ChatCompletions);
                *counts.entry(self.name(&s).to_owned()).or_default() += 1;
            }
            counts
        }
    }

    use EndpointKind::{Ollama, Vllm};

    #[test]
    fn highest_priority_tier_first_then_the_next() {
        let f = fixture(&[
            ("low", Vllm, 10, 1.0, &["m"]),
            ("high-a", Vllm, 100, 1.0, &["m"]),
            ("high-b", Vllm, 100, 1.0, &["m"]),
        ]);
        for balancer in [Balancer::Priority, Balancer::RoundRobin] {
            let sel = Selector::new(balancer);
            let shares = f.shares(&sel, 200);
            assert_eq!(shares.get("low"), None, "{balancer:?}: {shares:?}");
            // An even split (100 each, ±7 for the random tie-breaks): the lower tier before
            // them in the config must not tilt it.
            assert!(shares["high-a"] > 70 && shares["high-b"] > 70, "{shares:?}");
        }
        f.store
            .passive_failure("high-a", &CheckResult::ConnectRefused, Now::capture());
        f.store
            .passive_failure("high-b", &CheckResult::ConnectRefused, Now::capture());
        let sel = Selector::new(Balancer::Priority);
        assert_eq!(f.name(&f.pick(&sel, "m", Route::ChatCompletions)), "low");
    }

    #[test]
    fn least_outstanding_prefers_the_idle_endpoint_by_weight() {
        let f = fixture(&[("a", Vllm, 100, 1.0, &["m"]), ("b", Vllm, 100, 2.0, &["m"])]);
        let sel = Selector::new(Balancer::Priority);
        // Holding every claim: b (weight 2) takes two for each one a takes.
        let mut held = Vec::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..30 {
            let s = f.pick(&sel, "m", Route::ChatCompletions);
            *counts.entry(f.name(&s).to_owned()).or_default() += 1;
            held.push(s);
        }
        assert_eq!((counts["a"], counts["b"]), (10, 20), "{counts:?}");
        assert_eq!(f.runtimes[1].outstanding(), 20);
        drop(held);
        assert_eq!(f.runtimes[1].outstanding(), 0);
    }

    #[test]
    fn idle_ties_are_spread() {
        let f = fixture(&[
            ("a", Vllm, 100, 1.0, &["m"]),
            ("b", Vllm, 100, 1.0, &["m"]),
            ("c", Vllm, 100, 1.0, &["m"]),
        ]);
        let shares = f.shares(&Selector::new(Balancer::Priority), 3000);
        for name in ["a", "b", "c"] {
            assert!((800..1200).contains(&shares[name]), "{shares:?}");
        }
    }

    #[test]
    fn round_robin_rotates_and_weights_smoothly() {
        let f = fixture(&[("a", Vllm, 100, 1.0, &["m"]), ("b", Vllm, 100, 1.0, &["m"])]);
        let sel = Selector::new(Balancer::RoundRobin);
        let order: Vec<String> = (0..4)
            .map(|_| {
                f.name(&f.pick(&sel, "m", Route::ChatCompletions))
                    .to_owned()
            })
            .collect();
        assert_eq!(order, ["a", "b", "a", "b"]);

        let f = fixture(&[("a", Vllm, 100, 1.0, &["m"]), ("b", Vllm, 100, 3.0, &["m"])]);
        let shares = f.shares(&Selector::new(Balancer::RoundRobin), 4000);
        assert!((950..1050).contains(&shares["a"]), "{shares:?}");
        // Smooth: never a long burst of the heavy endpoint.
        let sel = Selector::new(Balancer::RoundRobin);
        let mut run = 0;
        for _ in 0..400 {
            if f.name(&f.pick(&sel, "m", Route::ChatCompletions)) == "b" {
                run += 1;
                assert!(run <= 4, "a run of {run} picks of b");
            } else {
                run = 0;
            }
        }
    }

    #[test]
    fn degraded_endpoints_get_a_reduced_share() {
        let f = fixture(&[
            ("fast", Vllm, 100, 1.0, &["m"]),
            ("slow", Vllm, 100, 1.0, &["m"]),
        ]);
        // A good check slower than degraded_latency (2 s) makes it degraded.
        ok(&f.store, "slow", 2500);
        assert_eq!(
            f.store.snapshot().get("slow").unwrap().health.state,
            HealthState::Degraded
        );
        let shares = f.shares(&Selector::new(Balancer::RoundRobin), 5000);
        let slow = shares["slow"] as f64 / 5000.0;
        assert!(
            (slow - 0.2).abs() < 0.02,
            "quarter weight is 1/5 of picks: {shares:?}"
        );

        // Least-outstanding: the degraded one takes a request only when the fast one
        // carries four times its load.
        let sel = Selector::new(Balancer::Priority);
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(f.pick(&sel, "m", Route::ChatCompletions));
        }
        assert_eq!(f.runtimes[0].outstanding(), 8);
        assert_eq!(f.runtimes[1].outstanding(), 2);
    }

    #[test]
    fn recovering_endpoints_take_one_request_at_a_time() {
        let f = fixture(&[("a", Vllm, 100, 1.0, &["m"]), ("r", Vllm, 200, 1.0, &["m"])]);
        f.store
            .passive_failure("r", &CheckResult::ConnectRefused, Now::capture());
        ok(&f.store, "r", 1);
        assert_eq!(
            f.store.snapshot().get("r").unwrap().health.state,
            HealthState::Recovering
        );
        let sel = Selector::new(Balancer::Priority);
        let first = f.pick(&sel, "m", Route::ChatCompletions);
        assert_eq!(f.name(&first), "r", "the higher tier gets its trial");
        // While the trial runs, everything else goes to the lower tier.
        for _ in 0..5 {
            let s = f.pick(&sel, "m", Route::ChatCompletions);
            assert_eq!(f.name(&s), "a");
        }
        drop(first);
        assert_eq!(f.name(&f.pick(&sel, "m", Route::ChatCompletions)), "r");
        // Healthy again: no limit.
        ok(&f.store, "r", 1);
        let held: Vec<_> = (0..3)
            .map(|_| f.pick(&sel, "m", Route::ChatCompletions))
            .collect();
        assert!(held.iter().all(|s| f.name(s) == "r"));
    }

    #[test]
    fn open_breakers_and_tried_endpoints_are_skipped() {
        let f = fixture(&[("a", Vllm, 100, 1.0, &["m"]), ("b", Vllm, 100, 1.0, &["m"])]);
        for _ in 0..5 {
            f.runtimes[0]
                .try_claim(false, Instant::now())
                .unwrap()
                .failure(Instant::now());
        }
        let sel = Selector::new(Balancer::Priority);
        for _ in 0..20 {
            assert_eq!(f.name(&f.pick(&sel, "m", Route::ChatCompletions)), "b");
        }
        let mut excluded = Excluded::default();
        excluded.insert(f.runtimes[1].id);
        let s = sel.select(
            &f.store.snapshot(),
            &f.runtimes,
            "m",
            Route::ChatCompletions,
            &mut excluded,
            Instant::now(),
        );
        assert!(matches!(s, Selection::Unavailable { .. }), "{s:?}");
    }

    #[test]
    fn between_a_reload_and_the_new_table_a_changed_endpoint_still_serves() {
        let f = fixture(&[("a", Vllm, 100, 1.0, &["m"])]);
        // The store took a new weight for a (same backend); the proxy's table is the old one.
        let mut c = EndpointConfig::new("a", "http://127.0.0.1:9", Vllm);
        c.weight = 3.0;
        c.models = vec!["m".to_owned()];
        let change = f
            .store
            .reconcile(vec![c.resolve("e").unwrap()], Now::capture());
        assert_eq!(change.updated.len(), 1);
        let sel = Selector::new(Balancer::Priority);
        assert_eq!(f.name(&f.pick(&sel, "m", Route::ChatCompletions)), "a");
        // Another destination under the same name is not served through the old runtime.
        let moved = EndpointConfig::new("a", "http://127.0.0.1:10", Vllm);
        let mut moved = moved;
        moved.models = vec!["m".to_owned()];
        f.store
            .reconcile(vec![moved.resolve("e").unwrap()], Now::capture());
        ok(&f.store, "a", 1);
        assert!(matches!(
            f.pick(&sel, "m", Route::ChatCompletions),
            Selection::NotServed
        ));
    }

    #[test]
    fn not_served_versus_unavailable() {
        let f = fixture(&[
            ("o", Ollama, 100, 1.0, &["llama3:latest"]),
            ("v", Vllm, 100, 1.0, &["m"]),
        ]);
        let sel = Selector::new(Balancer::Priority);
        assert!(matches!(
            f.pick(&sel, "nope", Route::ChatCompletions),
            Selection::NotServed
        ));
        // Ollama-native routes never go to other types.
        assert!(matches!(
            f.pick(&sel, "m", Route::OllamaChat),
            Selection::NotServed
        ));
        assert_eq!(f.name(&f.pick(&sel, "llama3", Route::OllamaChat)), "o");
        assert_eq!(f.name(&f.pick(&sel, "llama3", Route::ChatCompletions)), "o");
        f.store
            .passive_failure("o", &CheckResult::ConnectRefused, Now::capture());
        match f.pick(&sel, "llama3", Route::OllamaChat) {
            Selection::Unavailable { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(5), "the check interval");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rediscovery_asks_the_routes_discovering_endpoints_and_waits_bounded() {
        // `d` (vllm) and `o` (ollama) discover; `s` has a static list.
        let f = fixture(&[
            ("d", EndpointKind::Vllm, 100, 1.0, &[]),
            ("o", EndpointKind::Ollama, 100, 1.0, &[]),
            ("s", EndpointKind::Vllm, 100, 1.0, &["m1"]),
        ]);
        let snapshot = f.store.snapshot();
        let d = f.store.discovery_requests("d").unwrap();
        assert!(f.store.discovery_requests("s").is_none());
        // An Ollama-native route asks only `o`; nobody serves it, so the wait runs out at
        // twice the check timeout (2 s by default).
        let started = Instant::now();
        assert!(rediscover(&f.store, &snapshot, Route::OllamaChat).await);
        assert_eq!(started.elapsed(), Duration::from_secs(4));
        assert!(
            tokio::time::timeout(Duration::from_millis(1), d.requested())
                .await
                .is_err(),
            "d does not speak the Ollama API"
        );
        // An OpenAI route asks `d` (and joins `o`'s pending one); `d`'s task answers at once.
        let task = tokio::spawn(async move {
            d.requested().await;
            d.finished();
        });
        let started = Instant::now();
        let waiting = rediscover(&f.store, &snapshot, Route::ChatCompletions);
        let o = f.store.discovery_requests("o").unwrap();
        o.finished();
        assert!(waiting.await);
        assert!(started.elapsed() < Duration::from_millis(10));
        task.await.unwrap();
        // Within the interval nothing is asked: answered at once, nothing to select again.
        assert!(!rediscover(&f.store, &snapshot, Route::ChatCompletions).await);
        assert!(!rediscover(&f.store, &snapshot, Route::OllamaChat).await);
    }

    #[test]
    fn excluded_set_holds_any_ids_inline_and_spills_only_past_its_size() {
        let mut e = Excluded::default();
        // Ids from a process that reloaded for months: large numbers stay inline.
        for i in [0, 63, 64, 1_000_000, usize::MAX, 1_000_000] {
            e.insert(i);
        }
        assert!(e.contains(0) && e.contains(63) && e.contains(64) && e.contains(usize::MAX));
        assert!(!e.contains(1) && !e.contains(65));
        assert_eq!(e.len, 5, "the duplicate is not stored twice");
        assert!(e.more.is_empty(), "no allocation for five ids");
        e.insert(7);
        assert!(e.more.is_empty(), "six fit inline");
        e.insert(8);
        assert_eq!(e.more, [8], "a seventh endpoint turned the request away");
        assert!(e.contains(8) && e.contains(7));
    }
}
