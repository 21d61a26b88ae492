//! The seam between the scheduler and shared (Redis) coordination: the [`Coordination`] trait
//! the scheduler asks before each check and the store tells about every local result, the
//! [`Decision`] it answers with, and [`SharedResult`], one endpoint's health as replicas
//! exchange it.
//!
//! Core defines the seam and does no I/O behind it: [`LocalOnly`] (the embedded default) always
//! says "check", and hale-coord implements the shared modes on Redis. Keeping the trait here
//! lets hale-probe drive checks without depending on hale-coord, and lets the proxy report a
//! passive failure to the store without knowing that replicas exist: the store forwards every
//! local result to the attached coordination ([`HealthStore::attach`](crate::HealthStore::attach)).
//! The same seam carries one thing for the proxy: which endpoint created a stored response
//! (`remember_response` / `recall_response`), so a follow-up by id reaches it from any replica.
//!
//! A [`FenceToken`] orders results across replicas: every lease acquisition takes a larger one,
//! a result carries the token it was produced under, and replicas adopt only results whose
//! token is larger than the one they hold. Local results (no lease) carry [`FenceToken::LOCAL`].

use crate::endpoint::Endpoint;
use crate::machine::Phase;
use crate::state::{HealthState, Reason};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A fencing token: larger means more recent. Zero marks a result made without a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FenceToken(pub u64);

impl FenceToken {
    /// The token of a check made without coordination (local mode, or Redis away).
    pub const LOCAL: FenceToken = FenceToken(0);

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn is_local(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for FenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What the scheduler should do with an endpoint that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run the check; its result is published under `fence`.
    Check { fence: FenceToken },
    /// Do not check now (another replica has this round, or it is not due fleet-wide yet);
    /// ask again after `retry_in`.
    Skip { retry_in: Duration },
}

/// Why a result was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// A health check; `ok` when it passed.
    Check { ok: bool },
    /// A failure on the request path: a connection failure, or an outlier ejection.
    Passive,
}

/// One endpoint's health as one replica produced it, in the form replicas exchange: enough
/// for another replica's state machine to continue from it (counters and phase, so thresholds
/// and backoff carry on consistently), plus who produced it, when, and under which fence.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedResult {
    pub state: HealthState,
    pub phase: Phase,
    pub reason: Option<Reason>,
    pub error: Option<Arc<str>>,
    pub latency: Option<Duration>,
    /// When the producing replica made the check (its wall clock). Never re-stamped.
    pub checked_at: SystemTime,
    pub checked_by: Arc<str>,
    pub fence: FenceToken,
    /// Models the backend reported, when the check listed them.
    pub models: Option<Arc<[Arc<str>]>>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Failures since the endpoint entered `unhealthy` (drives the backoff).
    pub unhealthy_failures: u32,
    /// Not routable before this moment (429 with Retry-After).
    pub rate_limited_until: Option<SystemTime>,
    /// Ejected by outlier detection until this moment: probe successes do not bring it back
    /// before then. A receiver bounds it by its own `proxy.outlier.max_ejection`.
    pub ejected_until: Option<SystemTime>,
    pub kind: ResultKind,
}

/// A result this replica produced, as the store hands it to the coordination.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalResult {
    pub endpoint: Arc<str>,
    pub result: SharedResult,
    /// The wait until the next check that the state machine plans after this result, without
    /// jitter: the fleet's next round is due this long after this round was due.
    pub planned_next: Duration,
    /// A check run out of schedule to re-read the endpoint's models (the request path asked):
    /// made under no lease, yet worth sharing, so it is written under a fresh fence like a
    /// passive result and the fleet adopts the model list.
    pub discovery: bool,
}

/// A boxed future, so the trait stays object-safe without an async-trait dependency.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How checks are coordinated with other replicas. See the module docs.
///
/// Implementations must answer `may_check` promptly (bounded by short timeouts of their own)
/// and must not block in `publish`: it is called right after the store's writer lock is
/// released, on the scheduler's or the proxy's task.
pub trait Coordination: Send + Sync + fmt::Debug + 'static {
    /// Asked when `endpoint` is due by this replica's own schedule.
    fn may_check<'a>(&'a self, endpoint: &'a str) -> BoxFuture<'a, Decision>;

    /// Told about every result this replica produced: checks (with the fence `may_check`
    /// gave) and passive failures that changed the state.
    fn publish(&self, result: LocalResult);

    /// The wait before this replica next asks about `endpoint`, after a check it just made
    /// for which the state machine plans `planned`. Shared modes align it to the fleet's next
    /// round; the default keeps `planned`.
    fn next_wait(&self, endpoint: &str, planned: Duration) -> Duration {
        let _ = endpoint;
        planned
    }

    /// Told, after a config reload, the endpoints now configured (in order), so per-endpoint
    /// bookkeeping can follow. The default keeps none.
    fn endpoints_changed(&self, endpoints: &[Arc<Endpoint>]) {
        let _ = endpoints;
    }

    /// Told that the proxy saw endpoint `endpoint` create the stored response `id` (OpenAI's
    /// Responses API), to be remembered for `ttl` so any replica can send its follow-ups
    /// there. Must not block (shared modes write in the background, best effort); the
    /// default keeps nothing (the proxy's own map is enough for one replica).
    fn remember_response(&self, id: &str, endpoint: &str, ttl: Duration) {
        let _ = (id, endpoint, ttl);
    }

    /// The endpoint that created response `id`, if the shared state knows it. Asked only for
    /// ids this replica does not know itself; implementations bound the wait and answer
    /// `None` on any failure. The proxy still checks the name against its configuration.
    fn recall_response<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<Arc<str>>> {
        let _ = id;
        Box::pin(std::future::ready(None))
    }
}

/// The embedded default: no other replicas, every due check runs, nothing is published.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalOnly;

impl Coordination for LocalOnly {
    fn may_check<'a>(&'a self, _endpoint: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(Decision::Check {
            fence: FenceToken::LOCAL,
        }))
    }

    fn publish(&self, _result: LocalResult) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_only_always_checks_unfenced() {
        assert_eq!(
            LocalOnly.next_wait("a", Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        let d = LocalOnly.may_check("a").await;
        assert_eq!(
            d,
            Decision::Check {
                fence: FenceToken::LOCAL
            }
        );
        assert!(FenceToken::LOCAL.is_local());
        assert!(FenceToken(2) > FenceToken(1));
        assert_eq!(FenceToken(7).to_string(), "7");
        LocalOnly.remember_response("resp_1", "a", Duration::from_secs(1));
        assert_eq!(LocalOnly.recall_response("resp_1").await, None);
    }
}
