//! [`Book`]: this replica's round bookkeeping per endpoint — what it knows of the fleet's
//! next round, the round lease it holds, the watchdog — and the live replicas it ranks itself
//! among. Only this module writes that state; the coordinator, writer, subscriber and lease
//! tasks change it through the methods below, each named for the event it records.
//!
//! The watchdog: per endpoint, when this replica last saw a *fresh* result (its own check,
//! or a remote result its store adopted) and the delay its own config planned after it.
//! Every wait this module hands out ends by `fresh + planned + spread` (the *deadline*),
//! whatever Redis said, with one bounded exception: a round another replica announced it
//! took (`taken`) is waited for up to the round lease past the deadline, as a `Busy` answer
//! is; see [`crate::coordinator`] for what happens past it.

use crate::cache::RoundLease;
use crate::lock;
use crate::rounds::{self, Members};
use crate::wire;
use hale_core::{Endpoint, LocalResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// The most `e`'s config can plan between two checks: 24 intervals (backoff ≤ 12× with
/// jitter < 1), twice the startup period plus the initial delay, or the Retry-After cap.
pub(crate) fn max_plan(e: &Endpoint) -> Duration {
    e.check_interval
        .saturating_mul(24)
        .max(e.startup.period.saturating_mul(2) + e.startup.initial_delay)
        .max(wire::RETRY_AFTER_CAP)
}

/// One endpoint's round bookkeeping. Its settings are fixed; its state is private.
#[derive(Debug)]
pub(crate) struct Rounds {
    pub name: Arc<str>,
    pub interval: Duration,
    pub spread: Duration,
    pub lease_ttl: Duration,
    /// The most this replica's config can plan for the endpoint.
    pub max_plan: Duration,
    state: Mutex<RoundState>,
}

#[derive(Debug)]
struct RoundState {
    fresh_at: Instant,
    planned: Duration,
    /// When the fleet's next round is due, as this replica knows it, and that round's id
    /// (its `due_at` on the Redis clock).
    known_due: Option<Instant>,
    round: i64,
    /// The round lease this replica holds (acquired, not yet written), and when its anchor
    /// was on this replica's clock.
    lease: Option<RoundLease>,
    anchor_at: Option<Instant>,
    /// Another replica announced it took the current round: its result is expected by then.
    held_until: Option<Instant>,
}

impl Rounds {
    fn state(&self) -> std::sync::MutexGuard<'_, RoundState> {
        lock(&self.state)
    }

    /// This replica's next look at the endpoint is due by then, whatever Redis says.
    pub fn deadline(&self) -> Instant {
        let st = self.state();
        st.fresh_at + st.planned + self.spread
    }

    pub fn fresh_at(&self) -> Instant {
        self.state().fresh_at
    }

    /// A fresh result (own or adopted), after which this replica's config plans `planned`.
    pub fn fresh(&self, planned: Duration) {
        let mut st = self.state();
        st.fresh_at = Instant::now();
        st.planned = planned.min(self.max_plan);
    }

    /// This round is checked locally: the due time known is forgotten, so the next wait is
    /// the state machine's own.
    pub fn local(&self) {
        self.state().known_due = None;
    }

    /// Redis said the round is not due: the next one starts `due_in` from now.
    pub fn not_due(&self, now: Instant, due_in: Duration, due_at: i64) {
        let mut st = self.state();
        st.known_due = Some(now + due_in);
        st.round = due_at;
    }

    /// The round is ours under `lease`; its anchor was at `anchor_at` on this clock.
    pub fn granted(&self, lease: RoundLease, anchor_at: Instant) {
        let mut st = self.state();
        st.lease = Some(lease);
        st.anchor_at = Some(anchor_at);
        st.known_due = None;
    }

    /// The round lease held, spent by the write of its check (or given back at shutdown).
    pub fn take_lease(&self) -> Option<RoundLease> {
        self.state().lease.take()
    }

    pub fn holds_lease(&self) -> bool {
        self.state().lease.is_some()
    }

    /// A check made under the lease plans the next round (`anchor + planned`, as the write
    /// script will): noted now, so the scheduler's next wait lines up with it without
    /// waiting for the write. The write's answer corrects it.
    pub fn expect(&self, local: &LocalResult) {
        let mut st = self.state();
        let (Some(lease), Some(anchor_at)) = (st.lease, st.anchor_at) else {
            return;
        };
        let now = Instant::now();
        let planned = local.planned_next;
        let due = anchor_at + planned;
        st.known_due = Some(if due <= now { now + planned } else { due });
        st.round = lease.anchor + i64::try_from(planned.as_millis()).unwrap_or(0);
    }

    /// This replica's result was written; the next round is due in `due_in`.
    pub fn written(&self, due_in: Duration, due_at: i64) {
        let mut st = self.state();
        st.held_until = None;
        st.known_due = Some(Instant::now() + due_in);
        st.round = due_at;
    }

    /// A remote result was adopted, with the next round's due time if it was in range;
    /// this replica's config plans `planned` after it.
    pub fn adopted(&self, due: Option<(Duration, i64)>, planned: Duration) {
        let mut st = self.state();
        st.held_until = None;
        if let Some((due_in, due_at)) = due {
            st.known_due = Some(Instant::now() + due_in);
            st.round = due_at;
        }
        st.fresh_at = Instant::now();
        st.planned = planned.min(self.max_plan);
    }

    /// Another replica announced it took the round for at most `lease`.
    pub fn taken(&self, lease: Duration) {
        let mut st = self.state();
        if st.lease.is_none() {
            st.held_until = Some(Instant::now() + lease);
        }
    }

    /// Forgets what Redis said about rounds (an outage); keeps the watchdog.
    fn forget(&self) {
        let mut st = self.state();
        st.known_due = None;
        st.round = 0;
        st.lease = None;
        st.anchor_at = None;
        st.held_until = None;
    }
}

/// The endpoints coordinated: their round bookkeeping by name, and the names in
/// configuration order. Replaced whole when the config is reloaded.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    pub rounds: HashMap<Arc<str>, Arc<Rounds>>,
    pub order: Vec<Arc<str>>,
}

impl Roster {
    /// The roster for `endpoints`, keeping the bookkeeping (known due time, a lease held) of
    /// every endpoint in `previous` whose cadence did not change.
    fn build(endpoints: &[Arc<Endpoint>], lock_ttl: Duration, previous: Option<&Roster>) -> Self {
        let mut roster = Roster::default();
        for e in endpoints {
            let first = e
                .check_interval
                .max(e.startup.period)
                .max(e.startup.initial_delay + e.startup.period);
            let fresh = Rounds {
                name: e.name.clone(),
                interval: e.check_interval,
                spread: rounds::spread(e),
                lease_ttl: rounds::lease_ttl(e, lock_ttl),
                max_plan: max_plan(e),
                state: Mutex::new(RoundState {
                    fresh_at: Instant::now(),
                    planned: first,
                    known_due: None,
                    round: 0,
                    lease: None,
                    anchor_at: None,
                    held_until: None,
                }),
            };
            let kept = previous
                .and_then(|p| p.rounds.get(&e.name))
                .filter(|r| {
                    (r.interval, r.spread, r.lease_ttl, r.max_plan)
                        == (
                            fresh.interval,
                            fresh.spread,
                            fresh.lease_ttl,
                            fresh.max_plan,
                        )
                })
                .cloned();
            roster.order.push(e.name.clone());
            roster
                .rounds
                .insert(e.name.clone(), kept.unwrap_or_else(|| Arc::new(fresh)));
        }
        roster
    }
}

/// The bookkeeping of every coordinated endpoint and the live replicas; see the module docs.
#[derive(Debug)]
pub(crate) struct Book {
    pod_id: Arc<str>,
    lock_ttl: Duration,
    roster: RwLock<Arc<Roster>>,
    members: Mutex<Members>,
}

impl Book {
    pub fn new(pod_id: Arc<str>, endpoints: &[Arc<Endpoint>], lock_ttl: Duration) -> Self {
        Self {
            members: Mutex::new(Members::new(pod_id.clone())),
            pod_id,
            lock_ttl,
            roster: RwLock::new(Arc::new(Roster::build(endpoints, lock_ttl, None))),
        }
    }

    /// The endpoints coordinated now.
    pub fn roster(&self) -> Arc<Roster> {
        self.roster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The round bookkeeping of `name`, if it is coordinated.
    pub fn rounds_of(&self, name: &str) -> Option<Arc<Rounds>> {
        self.roster().rounds.get(name).cloned()
    }

    /// Follows a config reload (see [`Roster::build`]).
    pub fn replace(&self, endpoints: &[Arc<Endpoint>]) {
        let mut roster = self.roster.write().unwrap_or_else(PoisonError::into_inner);
        *roster = Arc::new(Roster::build(endpoints, self.lock_ttl, Some(&roster)));
    }

    /// Forgets every round (an outage was declared).
    pub fn forget_all(&self) {
        for r in self.roster().rounds.values() {
            r.forget();
        }
    }

    /// Whether this replica holds any round lease right now (a check in flight).
    pub fn any_lease(&self) -> bool {
        self.roster().rounds.values().any(|r| r.holds_lease())
    }

    /// Notes that `pod` is live (it published a result or took a round).
    pub fn saw(&self, pod: &str) {
        lock(&self.members).saw(pod);
    }

    /// When this replica asks for `round` of `r` after it is due; `holder` as in
    /// [`rounds::offset`].
    pub fn offset(&self, r: &Rounds, round: i64, holder: Option<bool>) -> Duration {
        let members = lock(&self.members).list();
        rounds::offset(&self.pod_id, &r.name, round, r.spread, holder, &members)
    }

    /// What this replica knows without asking Redis: `Ok(wait)` to skip for that long (the
    /// next round is not due for this replica yet, or someone announced they are checking
    /// it), or `Err(deadline)` to ask.
    pub fn cached(
        &self,
        r: &Rounds,
        now: Instant,
        holder: Option<bool>,
    ) -> Result<Duration, Instant> {
        let deadline = r.deadline();
        let (known, round, held) = {
            let st = r.state();
            (st.known_due, st.round, st.held_until)
        };
        if now >= deadline {
            // A round another replica announced it took is demonstrably in flight: its
            // result may come up to the round lease past the deadline (the same slack a
            // `Busy` answer gets), never later, however often the announcement repeats.
            let limit = deadline + r.lease_ttl;
            return match held {
                Some(until) if now < until && now < limit => {
                    Ok(until.min(limit).saturating_duration_since(now))
                }
                _ => Err(deadline),
            };
        }
        if let Some(due) = known {
            let at = due + self.offset(r, round, holder);
            if now < at {
                return Ok(at.min(deadline).saturating_duration_since(now));
            }
        }
        match held {
            Some(until) if now < until => Ok(until.min(deadline).saturating_duration_since(now)),
            _ => Err(deadline),
        }
    }

    /// The wait until this replica asks about the round due in `due_in`, cut at the deadline.
    pub fn retry(
        &self,
        r: &Rounds,
        now: Instant,
        due_in: Duration,
        due_at: i64,
        holder: Option<bool>,
    ) -> Duration {
        (now + due_in + self.offset(r, due_at, holder))
            .min(r.deadline())
            .saturating_duration_since(now)
    }

    /// The wait after a check this replica made, for which its state machine plans
    /// `planned`: aligned to the fleet's next round when one is known and ahead, never past
    /// the deadline; otherwise `planned`.
    pub fn next_wait(&self, r: &Rounds, planned: Duration, holder: Option<bool>) -> Duration {
        let now = Instant::now();
        let deadline = r.deadline();
        let (known, round) = {
            let st = r.state();
            (st.known_due, st.round)
        };
        match known {
            Some(due) => {
                let at = due + self.offset(r, round, holder);
                if at > now {
                    at.min(deadline).saturating_duration_since(now)
                } else {
                    planned
                }
            }
            None => planned,
        }
    }

    /// Takes every round lease this replica holds (to give them back); their endpoints.
    pub fn take_all_leases(&self) -> Vec<Arc<str>> {
        self.roster()
            .rounds
            .values()
            .filter(|r| r.take_lease().is_some())
            .map(|r| r.name.clone())
            .collect()
    }

    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hale_core::{EndpointConfig, EndpointKind};

    fn book() -> (Book, Arc<Rounds>) {
        let mut c = EndpointConfig::new("e", "http://127.0.0.1:9", EndpointKind::Vllm);
        c.check_interval = Duration::from_secs(1);
        c.check_timeout = Duration::from_millis(500);
        c.startup.timeout = Duration::from_millis(500);
        let e = Arc::new(c.resolve("e").unwrap());
        let book = Book::new(Arc::from("me"), &[e], Duration::from_secs(60));
        let r = book.rounds_of("e").unwrap();
        (book, r)
    }

    /// A `taken` announcement may hold this replica past its deadline by at most the round
    /// lease, however often it is repeated (a forged one included).
    #[tokio::test(start_paused = true)]
    async fn an_announced_round_is_waited_for_at_most_a_lease_past_the_deadline() {
        let (book, r) = book();
        r.fresh(Duration::from_secs(1));
        let deadline = r.deadline();
        let limit = deadline + r.lease_ttl;
        assert_eq!(r.lease_ttl, Duration::from_secs(1));
        // Not announced: past the deadline it asks.
        tokio::time::advance(Duration::from_millis(1300)).await;
        assert_eq!(book.cached(&r, Instant::now(), None), Err(deadline));
        // Announced over and over (each for a whole minute): it waits, but only to the limit.
        loop {
            r.taken(Duration::from_secs(60));
            let now = Instant::now();
            match book.cached(&r, now, None) {
                Ok(wait) => {
                    assert!(now < limit && now + wait <= limit, "{wait:?}");
                    tokio::time::advance(Duration::from_millis(100)).await;
                }
                Err(d) => {
                    assert_eq!(d, deadline);
                    assert!(now >= limit);
                    break;
                }
            }
        }
        // A fresh result resets the deadline and the announcement.
        r.adopted(None, Duration::from_secs(1));
        assert!(book.cached(&r, Instant::now(), None).is_err());
    }
}
