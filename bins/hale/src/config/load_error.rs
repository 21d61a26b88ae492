//! The one error every load or validation failure becomes: where the bad value came from (the
//! file and line, or the environment variable), the key path, and what is wrong — printed by
//! `hale check-config` and `hale serve` as a single `error: …` line. Credentials written into
//! a URL never show in it (see [`hale_core::secret::redact_userinfo`]).

use super::key_path::KeyPath;
use std::fmt;
use std::path::PathBuf;

/// Where a value that failed came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file, with the line of the key when it could be found.
    File { path: PathBuf, line: Option<usize> },
    /// An environment variable: a `HALE_…` key or a compatibility name such as `REDIS_URL`.
    Env(String),
    /// Nothing the operator wrote: the built-in defaults.
    Defaults,
}

/// A configuration that cannot be loaded, named by origin and key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub origin: Origin,
    /// The key the message is about; `None` for file-level problems (unreadable, bad YAML).
    pub path: Option<KeyPath>,
    pub message: String,
}

impl LoadError {
    pub fn new(origin: Origin, path: Option<KeyPath>, message: impl Into<String>) -> Self {
        // The error is printed as one line that scripts can grep, so line breaks inside
        // messages (serde_yaml writes some) become spaces. A message may quote the value it
        // refuses: credentials in any URL there are hidden, as in `check-config`'s output.
        let message =
            hale_core::secret::redact_userinfo(&message.into().replace(['\r', '\n'], " "));
        Self {
            origin,
            path: path.filter(|p| !p.is_root()),
            message,
        }
    }

    /// The 1-based line in the config file, when the error is about one.
    pub fn line(&self) -> Option<usize> {
        match &self.origin {
            Origin::File { line, .. } => *line,
            _ => None,
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line } => {
                write!(f, "{}: ", path.display())?;
                if let Some(line) = line {
                    write!(f, "line {line}: ")?;
                }
            }
            Origin::Env(var) => write!(f, "env {var}: ")?,
            Origin::Defaults => {}
        }
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_one_line_with_origin_line_and_path() {
        let err = LoadError::new(
            Origin::File {
                path: "deploy/hale.yaml".into(),
                line: Some(14),
            },
            Some(KeyPath::parse("endpoints[1].check_interval")),
            "invalid duration\n\"5 sekonds\"",
        );
        assert_eq!(
            err.to_string(),
            "deploy/hale.yaml: line 14: endpoints[1].check_interval: invalid duration \"5 sekonds\""
        );
        let err = LoadError::new(
            Origin::Env("HALE_HEALTH__JITTER".into()),
            Some(KeyPath::parse("health.jitter")),
            "must be in [0, 1), got 2",
        );
        assert_eq!(
            err.to_string(),
            "env HALE_HEALTH__JITTER: health.jitter: must be in [0, 1), got 2"
        );
    }
}
