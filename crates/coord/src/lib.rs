//! hale-coord: shared health state across gateway replicas, through Redis.
//!
//! When several Hale replicas run side by side (Kubernetes pods), each backend should be
//! probed once per interval by the whole fleet, and every replica should know every result.
//! This crate is the only one that talks to Redis: leases with fencing tokens (`SET NX PX` +
//! `INCR` in one script; owner-checked release and extend), a fenced result cache (one hash
//! per endpoint under `hale:{namespace}:`, TTL `cache_ttl`), change events on pub/sub, and a
//! clean fallback to local checks when Redis is away. Modes: `local` (no Redis), `global`
//! (one lease for all checks, LiteLLM's behaviour done right) and `sharded` (a lease per
//! endpoint per interval, the default when shared). The request path never waits on it.
//!
//! Today the crate holds its configuration section; the coordination itself arrives with the
//! shared-state work (DESIGN §4).

pub mod config;

pub use config::{CoordMode, SharedConfig};
