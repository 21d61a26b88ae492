//! hale-core: the health model of Hale, with no I/O in it.
//!
//! Everything that decides *whether a backend may get traffic* lives here and nowhere else:
//! the endpoint model resolved from configuration ([`Endpoint`]), what one health check saw
//! ([`CheckOutcome`]), the per-endpoint state machine that folds outcomes into one of five
//! states ([`HealthMachine`]), the backoff schedule for failing backends ([`Backoff`]), the
//! request-path circuit breaker ([`Breaker`]), outlier detection from real traffic
//! ([`OutlierDetector`]) and the shared snapshot that the proxy reads
//! lock-free ([`HealthStore`], [`Snapshot`]), and the seam to shared coordination across
//! replicas ([`Coordination`], [`Decision`], [`SharedResult`]), with no Redis behind it here.
//!
//! The crate is pure: callers pass time in (`tokio::time::Instant` for decisions, `SystemTime`
//! only for stamps shown to people), so every rule is testable on paused tokio time and with
//! property tests. Probing, Redis and HTTP live in the crates above this one.

pub mod backoff;
pub mod breaker;
pub mod config;
pub mod coordination;
pub mod discovery;
pub mod endpoint;
pub mod history;
pub mod machine;
pub mod outcome;
pub mod outlier;
pub mod secret;
pub mod state;
pub mod store;

pub use backoff::Backoff;
pub use breaker::{Admission, Breaker, BreakerState};
pub use config::{BreakerConfig, ConfigError, HealthConfig, StartupConfig};
pub use coordination::{
    Coordination, Decision, FenceToken, LocalOnly, LocalResult, ResultKind, SharedResult,
};
pub use endpoint::{CheckMode, Endpoint, EndpointConfig, EndpointKind, same_model};
pub use history::{CHECK_HISTORY, CheckHistory, CheckSample};
pub use machine::{HealthMachine, Phase};
pub use outcome::{CheckOutcome, CheckResult};
pub use outlier::{Outcome, OutlierConfig, OutlierDetector, OutlierStats, Signal, Trigger};
pub use secret::Secret;
pub use state::{HealthState, Reason, Transition};
pub use store::{
    Adoption, Ejected, EndpointHealth, Event, EventFollow, Gap, HealthStore, Now, Reconciled,
    Resume, Snapshot, Source,
};
