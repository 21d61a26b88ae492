//! Logging set-up: `tracing` to stderr, filtered by `HALE_LOG` (then `RUST_LOG`, default
//! `info`), as text or, with `HALE_LOG_FORMAT=json`, one JSON object per line for log
//! shippers.

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("HALE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("HALE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // A second initialisation (only possible in tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
