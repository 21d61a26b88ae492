//! hale-probe: checks each backend with the right probe for its type and drives core.
//!
//! - [`kinds`]: one small probe type per backend type (Ollama, LM Studio, vLLM, llama.cpp,
//!   SGLang, TGI, OpenAI-compatible, plain HTTP): how each says it is healthy, which models it
//!   serves.
//! - [`client`]: the probe HTTP client, a fresh connection per check (a pooled connection
//!   hides L4 failures), every failure classified.
//! - [`check`]: one check of one endpoint, with model discovery and the `model_missing` rule.
//! - [`scheduler`]: one timer per endpoint, folding outcomes into core's [`hale_core::HealthStore`].

pub mod check;
pub mod client;
pub mod kinds;
pub mod scheduler;

pub use check::run_check;
pub use client::{ProbeClient, ProbeResponse};
pub use kinds::{Probe, probe_for};
pub use scheduler::{CheckNowError, ManualCheck, Scheduler, SchedulerHandle};
