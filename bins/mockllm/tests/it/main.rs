//! Integration tests of the `mockllm` binary: real processes over loopback, one per test,
//! checking each flavour's paths and bodies, streams and their timing, the admin API and
//! every failure mode.

mod common;
mod flavors;
mod modes;
