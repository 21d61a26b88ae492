//! Optional signed results (`shared.signing_key`): with a key set, every result this replica
//! writes and every event it publishes carries `sig`, an HMAC-SHA256 over its fields, and
//! results or events without a valid one are refused and counted (kind `signature`). Someone
//! who can write to Redis but lacks the key cannot forge health.
//!
//! What the signature covers: the endpoint name, the fence, and every field the writer
//! supplies ([`SIGNED_FIELDS`]: state, phase, reason, error, latency, checked_at, checked_by,
//! counters, rate limit, kind, models, and `planned_ms`, the delay the writer planned), plus
//! [`OPTIONAL_SIGNED`] (`ej_until`, the end of an outlier ejection) when present: fed only
//! then, so results without it sign exactly as before it existed, while adding, removing or
//! changing it still breaks the signature. Lua
//! cannot compute an HMAC, so the fence is signed as the writer knows it: a round's fence
//! comes from its grant, and a passive result takes its fence first (one extra script call)
//! instead of inside the write.
//!
//! What it does not cover, and why that cannot hurt: `due_at` and `written_at`, which the
//! write script computes from Redis's clock. A forged `due_at` can at most delay this
//! replica's look at an endpoint until its own planned delay plus the spread (the watchdog in
//! `coordinator`), and the acquire script treats one beyond that as due; `written_at`
//! and the lease owners only feed `/health/shared-status`. A replayed old result carries an
//! old fence, which the fence order refuses. Round announcements (`taken`, published by the
//! acquire script) are not signed either: a forged one can at most make a replica wait for
//! the announced lease, bounded by its own longest lease and the watchdog deadline. The
//! signature is hex in the `sig` field of the hash and of the event's JSON body.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::fmt::Write as _;

type HmacSha256 = Hmac<Sha256>;

/// The fields a signature covers, in the order they are fed to the MAC.
pub const SIGNED_FIELDS: [&str; 14] = [
    "state",
    "phase",
    "reason",
    "error",
    "latency_ms",
    "checked_at",
    "checked_by",
    "cf",
    "cs",
    "uf",
    "rl_until",
    "kind",
    "models",
    "planned_ms",
];

/// Fields covered only when present (see the module docs).
pub const OPTIONAL_SIGNED: [&str; 1] = ["ej_until"];

/// The field holding the signature.
pub const SIG_FIELD: &str = "sig";

/// Signs and verifies with the configured key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// A signer for `key`; `None` for an empty key (signing off).
    pub fn new(key: &str) -> Option<Self> {
        (!key.is_empty()).then(|| Self {
            key: key.as_bytes().to_vec(),
        })
    }

    fn mac(&self, endpoint: &str, fence: u64, get: &dyn Fn(&str) -> Option<String>) -> HmacSha256 {
        // HMAC takes a key of any length, so this cannot fail; fall back to an empty key
        // rather than panic if it ever did (every signature would then fail to verify).
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| HmacSha256::new(&Default::default()));
        let mut feed = |part: &str| {
            mac.update(part.len().to_string().as_bytes());
            mac.update(b":");
            mac.update(part.as_bytes());
            mac.update(b";");
        };
        feed("hale-result-v1");
        feed(endpoint);
        feed(&fence.to_string());
        for key in SIGNED_FIELDS {
            match get(key) {
                Some(v) => {
                    feed(key);
                    feed(&v);
                }
                None => feed(&format!("{key}-")),
            }
        }
        for key in OPTIONAL_SIGNED {
            if let Some(v) = get(key) {
                feed(key);
                feed(&v);
            }
        }
        mac
    }

    /// The signature (hex) over `fields` as written for `endpoint` under `fence`.
    pub fn sign(&self, endpoint: &str, fence: u64, fields: &[(&'static str, String)]) -> String {
        let get = |k: &str| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| v.clone());
        let bytes = self.mac(endpoint, fence, &get).finalize().into_bytes();
        let mut hex = String::with_capacity(64);
        for b in bytes {
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// Whether `fields` (a hash or an event body) carry a valid signature for `endpoint`
    /// under `fence`. Compared in constant time.
    pub fn verify(&self, endpoint: &str, fence: u64, fields: &HashMap<String, String>) -> bool {
        let Some(sig) = fields.get(SIG_FIELD).and_then(|s| unhex(s)) else {
            return false;
        };
        let get = |k: &str| fields.get(k).cloned();
        self.mac(endpoint, fence, &get).verify_slice(&sig).is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<(&'static str, String)> {
        vec![
            ("state", "healthy".to_owned()),
            ("error", "a;b\nc".to_owned()),
            ("planned_ms", "1000".to_owned()),
        ]
    }

    fn map(f: &[(&'static str, String)], sig: &str) -> HashMap<String, String> {
        let mut m: HashMap<String, String> = f
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        m.insert(SIG_FIELD.to_owned(), sig.to_owned());
        m
    }

    #[test]
    fn signatures_verify_and_any_change_breaks_them() {
        let s = Signer::new("k1-0123456789abcdef").unwrap();
        let f = fields();
        let sig = s.sign("e", 7, &f);
        assert_eq!(sig.len(), 64);
        assert!(s.verify("e", 7, &map(&f, &sig)));
        assert!(!s.verify("e", 8, &map(&f, &sig)), "fence");
        assert!(!s.verify("f", 7, &map(&f, &sig)), "endpoint");
        let mut changed = map(&f, &sig);
        changed.insert("state".into(), "unhealthy".into());
        assert!(!s.verify("e", 7, &changed), "a field");
        let mut added = map(&f, &sig);
        added.insert("models".into(), "[]".into());
        assert!(!s.verify("e", 7, &added), "an added field");
        let mut ejected = map(&f, &sig);
        ejected.insert("ej_until".into(), "1718000030000".into());
        assert!(!s.verify("e", 7, &ejected), "an added ejection");
        let mut with_ej = f.clone();
        with_ej.push(("ej_until", "1718000030000".to_owned()));
        let sig_ej = s.sign("e", 7, &with_ej);
        assert_ne!(sig_ej, sig);
        assert!(s.verify("e", 7, &map(&with_ej, &sig_ej)));
        let mut stripped = map(&with_ej, &sig_ej);
        stripped.remove("ej_until");
        assert!(!s.verify("e", 7, &stripped), "a stripped ejection");
        let mut moved = map(&with_ej, &sig_ej);
        moved.insert("ej_until".into(), "1718000090000".into());
        assert!(!s.verify("e", 7, &moved), "a moved ejection");
        let other = Signer::new("another key").unwrap();
        assert!(!other.verify("e", 7, &map(&f, &sig)), "another key");
        assert!(!s.verify("e", 7, &map(&f, "zz")), "garbage");
        let mut unsigned = map(&f, &sig);
        unsigned.remove(SIG_FIELD);
        assert!(!s.verify("e", 7, &unsigned), "unsigned");
        assert!(Signer::new("").is_none());
        assert_eq!(format!("{s:?}"), "Signer(<redacted>)");
    }
}
