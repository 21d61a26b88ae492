//! The library half of the `hale` binary: what `main.rs` needs and tests want to reach
//! without a process. Configuration loading ([`config`]), the pod id ([`pod`]), logging
//! ([`telemetry`]), the serving threads ([`workers`]), the wiring of `serve` and the one-off
//! `probe` command; the gateway's logic
//! stays in the crates, so this stays thin.

pub mod config;
pub mod pod;
pub mod probe_cmd;
pub mod reload;
pub mod serve;
pub mod telemetry;
pub mod workers;
