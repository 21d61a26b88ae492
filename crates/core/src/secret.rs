//! A string that must never be shown: API keys, the admin token, the Redis password.
//!
//! `Secret` deserializes from a plain string (so it works in YAML, env and `os.environ/NAME`
//! values) but its `Debug`, `Display` and `Serialize` all print `<redacted>` when set, so a
//! secret cannot leak through logs, status JSON or `hale check-config` by accident. The only
//! way to the value is [`Secret::expose`], which names the intent at the call site.
//!
//! Credentials written into a URL (`http://user:pass@host`) are secrets too:
//! [`redact_userinfo`] hides them wherever a URL written in the config is shown as text
//! (`hale check-config`, config error messages and the log lines that carry them).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The text printed in place of a secret that is set.
pub const REDACTED: &str = "<redacted>";

/// A secret string; empty means "not set".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that must send it (an upstream header, a Redis AUTH).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("")
        } else {
            f.write_str(REDACTED)
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            serializer.serialize_str("")
        } else {
            serializer.serialize_str(REDACTED)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// `text` with the user name and password of every URL in it (`scheme://user:pass@host`)
/// replaced by `<redacted>`: `http://<redacted>@host`. Works on text that is not a valid URL
/// too (a config value being reported as invalid), and on longer text holding several URLs.
/// The authority ends at the first `/`, `?`, `#`, `\`, quote or white space after `://`, and the
/// last `@` in it ends the credentials, so a password with an unescaped `@` is hidden whole.
/// A single value without `://` (no white space in it) is read as a URL written without its
/// scheme, `user:pass@host/path`, and hidden the same way.
pub fn redact_userinfo(text: &str) -> String {
    if !text.contains("://") && !text.contains(char::is_whitespace) {
        let authority = text.split(['/', '?', '#', '\\']).next().unwrap_or_default();
        if let Some(at) = authority.rfind('@') {
            return format!("{REDACTED}{}", &text[at..]);
        }
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '\\' | '"' | '\'' | '`') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_in_urls_and_in_text() {
        assert_eq!(
            redact_userinfo("http://user:S3CRET@h:1/p?q=a@b"),
            "http://<redacted>@h:1/p?q=a@b"
        );
        assert_eq!(redact_userinfo("https://h:1/base"), "https://h:1/base");
        assert_eq!(redact_userinfo("http://u:p@ss@h"), "http://<redacted>@h");
        assert_eq!(
            redact_userinfo("bad \"http://a:S3CRET@h:99999\", and ftp://:S3CRET@x/ too"),
            "bad \"http://<redacted>@h:99999\", and ftp://<redacted>@x/ too"
        );
        assert_eq!(redact_userinfo("no url here"), "no url here");
        assert_eq!(redact_userinfo("u:S3CRET@h:1/p@x"), "<redacted>@h:1/p@x");
        assert_eq!(redact_userinfo("/health@x"), "/health@x");
        assert_eq!(
            redact_userinfo("mail me@example.com"),
            "mail me@example.com"
        );
        assert_eq!(redact_userinfo("trailing ://"), "trailing ://");
        assert_eq!(redact_userinfo("é://ü:S3CRET@ö"), "é://<redacted>@ö");
    }

    #[test]
    fn never_printed() {
        let s = Secret::new("sk-live-123");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), "sk-live-123");
        assert_eq!(serde_json::to_string(&Secret::default()).unwrap(), "\"\"");
    }
}
