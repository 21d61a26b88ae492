//! Key paths such as `endpoints[1].check_interval`: the one way the loader names a
//! configuration key, whether the name comes from figment (a list of strings), from a section's
//! `validate()` (a dotted string) or from an environment variable (`__`-separated).
//!
//! Numeric segments are list indices. No section of Hale's config is a map with numeric keys,
//! so reading a digit-only segment as an index is never ambiguous.

use std::fmt;

/// One step of a key path: a mapping key or a list index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

impl Segment {
    /// Reads a segment from figment or an env name, where list indices are plain digits.
    fn from_raw(raw: &str) -> Self {
        match raw.parse::<usize>() {
            Ok(i) if raw.bytes().all(|b| b.is_ascii_digit()) => Self::Index(i),
            _ => Self::Key(raw.to_owned()),
        }
    }
}

/// A path from the root of the config to one key, printed as `endpoints[1].check_interval`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The root of the config (the empty path).
    pub fn root() -> Self {
        Self::default()
    }

    /// A path from raw segments where digit-only segments are indices, as figment reports
    /// them (`["endpoints", "1", "url"]`).
    pub fn from_raw<S: AsRef<str>>(raw: &[S]) -> Self {
        Self(raw.iter().map(|s| Segment::from_raw(s.as_ref())).collect())
    }

    /// Reads the printed form back (`endpoints[1].startup.timeout`), as `validate()` writes it.
    pub fn parse(printed: &str) -> Self {
        let mut segments = Vec::new();
        for part in printed.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
            if !key.is_empty() {
                segments.push(Segment::Key(key.to_owned()));
            }
            // Each `[n]` suffix is one index; anything else in brackets is not ours and ends
            // the parse of this part rather than guessing.
            while let Some((index, after)) = rest.split_once(']') {
                match index.parse::<usize>() {
                    Ok(i) => segments.push(Segment::Index(i)),
                    Err(_) => break,
                }
                rest = after.strip_prefix('[').unwrap_or(after);
            }
        }
        Self(segments)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// This path extended by one mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// This path extended by one list index.
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }

    /// The path without its last segment; the root is its own parent.
    pub fn parent(&self) -> Self {
        let mut parent = self.clone();
        parent.0.pop();
        parent
    }

    /// This path, its parent, and so on up to (not including) the root.
    pub fn ancestors(&self) -> impl Iterator<Item = KeyPath> + '_ {
        (1..=self.0.len())
            .rev()
            .map(|len| Self(self.0[..len].to_vec()))
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_and_parsed_forms_agree() {
        for printed in [
            "endpoints[1].check_interval",
            "server.api_keys[0]",
            "endpoints[0].models[2]",
            "shared",
            "",
        ] {
            assert_eq!(KeyPath::parse(printed).to_string(), printed);
        }
    }

    #[test]
    fn digit_segments_from_figment_are_indices() {
        let path = KeyPath::from_raw(&["endpoints", "3", "startup", "timeout"]);
        assert_eq!(path.to_string(), "endpoints[3].startup.timeout");
        assert_eq!(path.parent().parent().to_string(), "endpoints[3]");
        assert!(path.starts_with(&KeyPath::parse("endpoints[3]")));
        assert!(!path.starts_with(&KeyPath::parse("endpoints[2]")));
        let up: Vec<String> = path.ancestors().map(|p| p.to_string()).collect();
        assert_eq!(
            up,
            [
                "endpoints[3].startup.timeout",
                "endpoints[3].startup",
                "endpoints[3]",
                "endpoints"
            ]
        );
    }
}
