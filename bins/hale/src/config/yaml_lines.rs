//! Finds the line of a key path in a YAML file, so an error about `endpoints[1].url` can say
//! "line 14". figment and serde report key paths but not lines, and serde_yaml reports lines
//! only for syntax errors, so this is a small scanner of block-style YAML of its own.
//!
//! It understands what config files are written with: mapping keys (`key:`, `"key":`), block
//! sequences (`- item`, also at the same indentation as their parent key), comments and blank
//! lines. Block scalars (`|`, `>`) are skipped as the deeper-indented lines they are. Flow style
//! (`{ a: 1 }`, `[a, b]`) is not entered: a key inside it is not found, and callers fall back
//! to the nearest ancestor, which is the line holding the flow collection — the right line.

use super::key_path::{KeyPath, Segment};

/// One line that carries YAML content: its 1-based number, its indentation and its text
/// without the indentation. Sequence items produce virtual lines for their inline content.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    number: usize,
    indent: usize,
    text: &'a str,
}

/// The 1-based line where `path` is written in `text`, if it is written there in block style.
pub fn line_of(text: &str, path: &KeyPath) -> Option<usize> {
    if path.is_root() {
        return None;
    }
    find(&content_lines(text), path.segments())
}

/// The line of `path` or, when it is not written in the file (a default, a flow collection),
/// of its nearest ancestor that is.
pub fn nearest_line(text: &str, path: &KeyPath) -> Option<usize> {
    path.ancestors().find_map(|p| line_of(text, &p))
}

/// The line of the first content in `text`: not blank, a comment or a document marker.
pub fn first_content_line(text: &str) -> Option<usize> {
    content_lines(text).first().map(|l| l.number)
}

fn content_lines(text: &str) -> Vec<Line<'_>> {
    text.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let raw = raw.trim_end();
            let body = raw.trim_start_matches(' ');
            let skip = body.is_empty()
                || body.starts_with('#')
                || raw == "---"
                || raw.starts_with("--- ")
                || raw == "...";
            (!skip).then(|| Line {
                number: i + 1,
                indent: raw.len() - body.len(),
                text: body,
            })
        })
        .collect()
}

/// Looks for `segments` in a block: the lines of one mapping or sequence, all at least as
/// indented as the block's own entries.
fn find(block: &[Line<'_>], segments: &[Segment]) -> Option<usize> {
    let (first, rest) = segments.split_first()?;
    let indent = block.iter().map(|l| l.indent).min()?;
    match first {
        Segment::Key(key) => {
            let at = block
                .iter()
                .position(|l| l.indent == indent && value_after_key(l.text, key).is_some())?;
            let line = block[at];
            if rest.is_empty() {
                return Some(line.number);
            }
            // A key with an inline value has no block below it; a key without one owns the
            // deeper lines after it, and also a sequence written at its own indentation
            // (`endpoints:` followed by `- name: a` in the same column), which YAML allows.
            let inline = value_after_key(line.text, key).unwrap_or_default();
            let children = block[at + 1..]
                .iter()
                .take_while(|l| {
                    l.indent > indent
                        || (inline.is_empty() && l.indent == indent && is_item(l.text))
                })
                .count();
            find(&block[at + 1..at + 1 + children], rest)
        }
        Segment::Index(n) => {
            let at = block
                .iter()
                .enumerate()
                .filter(|(_, l)| l.indent == indent && is_item(l.text))
                .nth(*n)
                .map(|(i, _)| i)?;
            let line = block[at];
            if rest.is_empty() {
                return Some(line.number);
            }
            // The item's inline content (`- name: a`) starts a block whose entries sit at the
            // column after the dash; the item's further lines follow at that column.
            let inline = line
                .text
                .get(1..)
                .unwrap_or_default()
                .trim_start_matches(' ');
            let mut item = Vec::new();
            if !inline.is_empty() {
                item.push(Line {
                    number: line.number,
                    indent: indent + line.text.len() - inline.len(),
                    text: inline,
                });
            }
            item.extend(block[at + 1..].iter().take_while(|l| l.indent > indent));
            find(&item, rest)
        }
    }
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// If `text` is the mapping entry for `key` (plain or quoted), the value written after the
/// colon, trimmed; comments after the value are left in, as only emptiness matters.
fn value_after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let after = [("\"", "\""), ("'", "'"), ("", "")]
        .iter()
        .find_map(|(open, close)| {
            text.strip_prefix(open)?
                .strip_prefix(key)?
                .strip_prefix(close)?
                .strip_prefix(':')
        })?;
    if after.is_empty() {
        return Some("");
    }
    let value = after.strip_prefix(' ')?.trim();
    Some(if value.starts_with('#') { "" } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# Hale config
server:
  listen: 127.0.0.1:4100
  api_keys:
    - first
    - os.environ/SECOND

endpoints:
- name: a            # same column as the parent key
  url: http://a:1
  startup: { initial_delay: 5s }
  models: [x, y]
-   name: b
    url: http://b:1
    models:
      - m1
      - m2
    notes: |
      url: not a key
shared:
  \"enabled\": true
";

    fn line(path: &str) -> Option<usize> {
        line_of(TEXT, &KeyPath::parse(path))
    }

    #[test]
    fn finds_mapping_keys_and_sequence_items() {
        assert_eq!(line("server"), Some(2));
        assert_eq!(line("server.listen"), Some(3));
        assert_eq!(line("server.api_keys[0]"), Some(5));
        assert_eq!(line("server.api_keys[1]"), Some(6));
        assert_eq!(line("endpoints"), Some(8));
        assert_eq!(line("endpoints[0]"), Some(9));
        assert_eq!(line("endpoints[0].name"), Some(9));
        assert_eq!(line("endpoints[0].url"), Some(10));
        assert_eq!(line("endpoints[1].name"), Some(13));
        assert_eq!(line("endpoints[1].url"), Some(14));
        assert_eq!(line("endpoints[1].models[1]"), Some(17));
        assert_eq!(line("shared.enabled"), Some(21));
    }

    #[test]
    fn does_not_confuse_siblings_or_block_scalars() {
        // `url:` inside the block scalar of endpoints[1] is text, not a key of endpoints[1].
        assert_eq!(line("endpoints[1].notes"), Some(18));
        assert_eq!(line("endpoints[2]"), None);
        assert_eq!(line("endpoints[0].check_interval"), None);
        assert_eq!(line("server.api_keys[2]"), None);
        assert_eq!(line("health"), None);
        // `listen` is a key of server, not of the root.
        assert_eq!(line("listen"), None);
    }

    #[test]
    fn flow_collections_fall_back_to_their_line() {
        assert_eq!(line("endpoints[0].startup.initial_delay"), None);
        let nearest = |p| nearest_line(TEXT, &KeyPath::parse(p));
        assert_eq!(nearest("endpoints[0].startup.initial_delay"), Some(11));
        assert_eq!(nearest("endpoints[0].models[1]"), Some(12));
        assert_eq!(nearest("endpoints[1].check_timeout"), Some(13));
        assert_eq!(nearest("health.jitter"), None);
    }

    #[test]
    fn keys_are_matched_whole() {
        let text = "health:\n  unhealthy_threshold: 3\n  healthy_threshold: 2\n";
        assert_eq!(
            line_of(text, &KeyPath::parse("health.healthy_threshold")),
            Some(3)
        );
        assert_eq!(
            line_of(text, &KeyPath::parse("health.unhealthy_threshold")),
            Some(2)
        );
        // A key that only starts like another, or a value that contains the key, is no match.
        let text = "a:\n  check_interval_x: 1\n  other: check_interval:\n  check_interval: 2\n";
        assert_eq!(line_of(text, &KeyPath::parse("a.check_interval")), Some(4));
    }

    #[test]
    fn nested_sequences_and_documents() {
        let text = "---\nendpoints:\n  -\n    name: a\n  - - nested\n    - second\n";
        assert_eq!(line_of(text, &KeyPath::parse("endpoints[0].name")), Some(4));
        assert_eq!(line_of(text, &KeyPath::parse("endpoints[1][0]")), Some(5));
        assert_eq!(line_of(text, &KeyPath::parse("endpoints[1][1]")), Some(6));
    }
}
