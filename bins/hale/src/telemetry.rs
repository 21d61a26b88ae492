//! Logging set-up: `tracing` to stderr, filtered by `HALE_LOG` (then `RUST_LOG`, default
//! `info`), as text or, with `HALE_LOG_FORMAT=json`, one JSON object per line for log
//! shippers.
//!
//! The `h2` crate logs at WARN when a client misbehaves (too many stream resets, an
//! unsolicited PING ack): one line per abusive connection, which a scanner could turn into a
//! flood. Unless the filter names `h2` itself, `h2=error` is added to it, so a bad connection
//! is never logged above DEBUG by Hale's own listener (see `hale_api::server`) nor above
//! ERROR by the protocol library.

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("HALE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = with_quiet_h2(&filter);
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info,h2=error"));
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

/// `filter` with `h2=error` added, unless it already says something about `h2`.
fn with_quiet_h2(filter: &str) -> String {
    let names_h2 = filter
        .split(',')
        .any(|d| d.trim() == "h2" || d.trim().starts_with("h2=") || d.trim().starts_with("h2::"));
    match names_h2 {
        true => filter.to_owned(),
        false if filter.trim().is_empty() => "h2=error".to_owned(),
        false => format!("{filter},h2=error"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_quiet_h2;

    #[test]
    fn h2_is_capped_at_error_unless_named() {
        assert_eq!(with_quiet_h2("info"), "info,h2=error");
        assert_eq!(with_quiet_h2("info,hale=debug"), "info,hale=debug,h2=error");
        assert_eq!(with_quiet_h2(""), "h2=error");
        assert_eq!(with_quiet_h2("debug,h2=trace"), "debug,h2=trace");
        assert_eq!(with_quiet_h2("h2::proto=debug"), "h2::proto=debug");
        // A target that merely starts with the letters is not h2.
        assert_eq!(with_quiet_h2("h2o=debug"), "h2o=debug,h2=error");
    }
}
