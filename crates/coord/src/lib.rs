//! hale-coord: shared health state across gateway replicas, through Redis.
//!
//! When several Hale replicas run side by side (Kubernetes pods), each backend should be
//! probed once per interval by the whole fleet, every replica should know every result, and
//! nothing may break when Redis goes away. This crate is the only one that talks to Redis. It
//! implements core's [`Coordination`](hale_core::Coordination) seam: the scheduler asks
//! [`Coordinator`] before each check, and the health store hands it every local result and
//! passive failure. The request path never waits on it.
//!
//! # Keys
//!
//! Everything lives under `hale:{namespace}:` ([`keys`]); the braces are a Redis Cluster hash
//! tag, so all keys of a deployment share a slot and every script runs on single Redis,
//! Sentinel or Cluster alike, and two namespaces on one Redis share nothing:
//! `result:<endpoint>` (a hash per endpoint: state, reason, error, latency_ms, checked_at,
//! checked_by, fence, models, counters, due_at, written_at — TTL `cache_ttl`; see [`wire`]),
//! `lease:<endpoint>` (the round lease), `lease` (the global-mode lease), `fence` (the fencing
//! counter), `probe` (the rejoin probe's key), `resp:<id>` (which endpoint created a stored
//! response, for the proxy's follow-ups by id: module `responses`) and the channel `events`.
//!
//! # Rounds, leases and fences
//!
//! Each endpoint's checks are *rounds*. A round is due at `due_at` (Redis clock), which the
//! previous round's write set to `anchor + planned`, where `anchor` is that round's own due
//! time and `planned` the state machine's next delay (interval, startup period, backoff or
//! Retry-After). Anchoring to the due time, not to when the check happened to run, keeps the
//! fleet's cadence at `check_interval` exactly, however replicas' offsets vary. A round is
//! acquired by one Lua script ([`scripts`]): if it is not due → "not due, next in X"; if its
//! lease `SET NX PX` is held → "busy"; else take the lease and the next fence, in
//! the same script. The winner checks and writes its result with the fence; the write script
//! refuses a fence not newer than the stored one (a replica that lost its lease while stalled
//! cannot overwrite a newer result), advances `due_at`, releases the lease only if it still
//! owns it, refreshes the TTL and publishes the event — atomically. Each token is
//! `max(counter + 1, Redis's clock in µs)` ([`scripts`]), so tokens keep growing across a
//! Redis that restarted empty and across a failover to a replica (Sentinel, Cluster) whose
//! copy of the counter lags what the old master issued, as long as the two masters' clocks
//! agree within the failover's length.
//!
//! Round lease TTL: the endpoint's longest check timeout + 500 ms, capped at `lock_ttl`
//! ([`rounds::lease_ttl`]): a replica killed mid-check blocks that round for at most that long,
//! then the next replica to ask takes it over in the same round.
//!
//! # How work spreads (sharded mode, the default)
//!
//! Every replica asks for a round `offset` after it is due, where `spread` = a quarter
//! interval, at most 2 s ([`rounds`]). The offset comes from the replica's rank among the
//! replicas it knows to be live, by a hash of (pod id, endpoint, round): rank 0 asks at once,
//! rank 1 at half the spread, the rest after the whole spread. So the winner is a fair draw among
//! the live replicas, with no membership list to configure (pods are learned from the
//! results and announcements they publish), and a dead replica simply stops being ranked.
//! The winner's grant is announced on the channel (`taken`), and its result follows: the
//! others learn the next due time from it and skip locally ("Using cached health check
//! results", DEBUG). Redis traffic per endpoint and round is one acquire and one write, plus
//! the event fan-out, whatever the number of replicas, as long as announcements arrive within
//! half a spread (measured, script internals included: 16.0, 16.5 and 24.5 commands per
//! endpoint and round at 3, 10 and 20 replicas on one 2-core host, where at 20 replicas
//! announcements arrive late enough for 1.7 `Busy` answers per round; docs/BENCHMARKS.md).
//!
//! # Global mode
//!
//! LiteLLM's behaviour done right (module `lease`): one replica holds `hale:{ns}:lease` and checks
//! everything; the others read its results. The lease is held for the holder's tenure and
//! extended every `lock_ttl / 3` (at most 2 s) by an owner-checked script, so it never expires
//! mid-run; release is owner-checked too. The holder asks at offset 0 and the others only
//! after a spread, so the holder checks every round; rounds are still the per-endpoint rounds
//! above, so the cadence is `check_interval`, never the cache TTL; results carry the checker's
//! own `checked_at`, never re-stamped by readers; and if the holder dies, the others take the
//! rounds over within two spreads instead of waiting up to `lock_ttl` for its lease.
//!
//! # Remote results
//!
//! The subscriber task applies every event through
//! [`HealthStore::apply_remote`](hale_core::HealthStore::apply_remote), which adopts only newer
//! fences, and re-reads every result key on each (re)subscribe. A passive failure seen by one
//! replica's proxy is written with a fresh fence and reaches every replica the same way.
//!
//! # Redis is untrusted input
//!
//! Every value read from Redis or the channel is parsed into bounded types ([`wire`]) and
//! checked against what this replica's own config allows (module `adopt`): a
//! fence Redis's counter cannot have issued, a due time further than the endpoint can plan,
//! a malformed or oversize field, a key of the wrong type — refused and counted in
//! `hale_coord_rejected_total{kind}` ([`rejected`]), logged at most once a minute per kind.
//! The scripts treat a poisoned due time, lease, fence counter or stored fence as absent and
//! the next write overwrites the whole hash, so bad state heals within a round or two of the
//! bad value. A per-endpoint watchdog makes sure nothing from Redis delays this replica's own
//! check past its own planned delay plus the spread: past that it asks Redis, re-reads, and
//! checks locally if no fresh result can be had.
//!
//! With `shared.signing_key` set, results and events carry an HMAC-SHA256 ([`signing`]) and
//! unsigned or wrongly signed ones are refused (kind `signature`), so write access to Redis
//! without the key cannot forge health.
//!
//! # Fallback and rejoin
//!
//! One multiplexed connection ([`conn`]) carries every command — to one Redis, to the master
//! the sentinels name (asked again at every reconnect; `READONLY`/`MASTERDOWN` count as a
//! lost connection, so a failover is followed and no write goes to a replica), or to a
//! Cluster (redis-rs follows `MOVED`/`ASK` and failovers; events use sharded pub/sub on the
//! namespace's slot), with TLS in each case (`rediss://`, `shared.tls`); it opens nothing at start,
//! bounds connects and commands at 500 ms (the rejoin's probe and re-reads at 2 s) and
//! reconnects after a transport failure. Any failed operation (unreachable, timeout, script
//! error such as OOM, a malformed answer) makes that round local at this replica's own
//! cadence, counts in `errors_total` and sets `last_error` — except an acquire that timed out
//! before the watchdog's deadline, which skips to that deadline (a starved host reads answers
//! late; it should lean on the fleet's result, not add a check).
//! An *outage* is declared only on evidence that persists ([`health`]: three
//! failures in a row or a majority of ten or more in 10 s, timeouts counting only after 3 s
//! without any answer, at most once a minute): then it is
//! logged once, `hale_coord_redis_up` goes to 0, and `may_check` says "check locally" without
//! touching Redis, so every replica checks on its own schedule. The subscriber probes with a
//! small write every 500 ms; after 2 s of success (at once when a promoted replica answers,
//! with Sentinel or a Cluster) it re-subscribes, re-reads all results and
//! Redis is available again — a fleet is back to one check per interval within a few
//! seconds plus an interval. Results this replica made without a lease are not written.
//!
//! # Who owns what
//!
//! Each background task (writer, subscriber, status, global lease) gets only the handles it
//! needs, and each piece of state has one owning module that alone writes it: `book` (round
//! bookkeeping, the watchdog, the live replicas), [`health`] (availability, error counters),
//! [`rejected`], `adopt` (applying remote results), `lease` (the global lease), `status`
//! (its counters and cache). The coordinator wires them and answers the scheduler; no
//! module imports it.
//!
//! # Status and logs
//!
//! [`Coordinator::status`] is what `/health/shared-status` shows (module `status`), with
//! `last_error` and `errors_total` added to LiteLLM's fields (DESIGN §5). Log lines
//! follow LiteLLM's: `Initialized shared health check manager`; `Pod <id> acquired health
//! check lock` / `released` (INFO for the global lease, DEBUG per round: at INFO that would
//! be a line per endpoint per interval); `Cached health check results for N healthy and M
//! unhealthy endpoints` (INFO when the counts change or once a minute, else DEBUG); `Using
//! cached health check results` (DEBUG). Metrics: `hale_coord_redis_up`,
//! `hale_coord_checks_skipped_total`, `hale_coord_rejected_total{kind}`.

mod adopt;
mod book;
pub mod cache;
pub mod config;
pub mod conn;
mod coordinator;
pub mod health;
pub mod keys;
mod lease;
pub mod rejected;
mod responses;
pub mod rounds;
pub mod scripts;
pub mod signing;
mod status;
mod subscriber;
pub mod wire;
mod writer;

pub use adopt::FENCE_SKEW;
pub use cache::{Bounds, GlobalLease, ResultCache, RoundAnswer, RoundLease, WriteOutcome};
pub use config::{CoordMode, SentinelConfig, SharedConfig, TlsConfig, Topology};
pub use coordinator::{CHECKS_SKIPPED_TOTAL, CoordError, Coordinator, REDIS_UP};
pub use lease::renew_every;
pub use rejected::{Kind as RejectKind, REJECTED_TOTAL};
pub use status::CoordStatus;
pub use subscriber::RECONNECT_EVERY;

/// Locks `m`, taking the data of a poisoned lock as it is (every critical section in coord
/// leaves its state consistent at each step).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
