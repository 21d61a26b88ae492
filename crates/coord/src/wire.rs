//! How a [`SharedResult`] is written to Redis and sent on the channel.
//!
//! The result hash `hale:{ns}:result:<endpoint>` has one field per value, as text, so an
//! operator can read it with `HGETALL`:
//!
//! | field         | example            | meaning                                             |
//! |---------------|--------------------|-----------------------------------------------------|
//! | `state`       | `healthy`          | the health state                                    |
//! | `reason`      | `http_503`         | machine-readable reason, empty for none             |
//! | `error`       | `HTTP 503`         | human error text, empty for none                    |
//! | `latency_ms`  | `3.214`            | the check's latency, empty for none                 |
//! | `checked_at`  | `1718000000123`    | when the check ran, ms since the epoch (checker's clock) |
//! | `checked_by`  | `hale-7f9c2a`      | the pod id that produced it                         |
//! | `fence`       | `1718000000123456` | fencing token it was written under                  |
//! | `models`      | `["m1","m2"]`      | models the backend listed (JSON), absent if unknown |
//! | `phase`       | `running`          | `startup` or `running`                              |
//! | `cf`,`cs`,`uf`| `0`                | consecutive failures, successes, failures while unhealthy |
//! | `rl_until`    | `1718000005000`    | rate-limited until (ms since the epoch), empty for none |
//! | `ej_until`    | `1718000030000`    | ejected by outlier detection until (ms since the epoch); absent (or empty) for none |
//! | `kind`        | `check_ok`         | `check_ok`, `check_failed` or `passive`             |
//! | `due_at`      | `1718000001000`    | when the next round is due (Redis clock, ms)        |
//! | `written_at`  | `1718000000125`    | when it was written (Redis clock, ms)               |
//!
//! `fence`, `due_at` and `written_at` are set by the write script; the rest come from here.
//! A channel message is `<fence> <due_at> <due_in_ms>\n<JSON object of the other fields plus
//! "endpoint">`: the header is built by the script (it knows the fence and the due time), the
//! JSON by the writer.
//!
//! # Reading is bounded
//!
//! Whatever Redis holds or the channel carries is untrusted: [`from_hash`] and
//! [`from_message`] accept only known enum values, numbers in range and bounded lengths
//! ([`MAX_MESSAGE`], [`MAX_TEXT`], [`MAX_NAME`], [`MAX_MODELS`]), and fences in
//! `1..2^53`; anything else is a [`WireError`] (counted as `malformed`). A `checked_at` or
//! `rl_until` / `ej_until` further ahead of this replica's clock than [`MAX_AHEAD`] /
//! [`RETRY_AFTER_CAP`] / [`EJECTION_CAP`] is refused too (the store then holds an adopted
//! ejection for at most its own `proxy.outlier.max_ejection`).
//! `ej_until` is written only when there is an ejection, so a result without one reads, and
//! signs, exactly as before the field existed (replicas of the previous version accept it). Writing truncates to the same bounds, so what one
//! replica writes another always accepts (a model list is cut at [`MAX_MODELS_JSON`] bytes of
//! JSON, so the message carrying it fits [`MAX_MESSAGE`]). Whether a fence or due time is plausible is
//! decided by the coordinator, which knows the endpoint's config.

use crate::signing::Signer;
use hale_core::{FenceToken, HealthState, Phase, Reason, ResultKind, SharedResult};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest channel message or hash field accepted.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// The longest error text (bytes).
pub const MAX_TEXT: usize = 2048;
/// The longest pod id, reason or model name (bytes).
pub const MAX_NAME: usize = 256;
/// The most models one result may list.
pub const MAX_MODELS: usize = 4096;
/// The longest model list (as JSON) a result is written with; longer lists are cut, so a
/// replica never writes what the others refuse.
pub const MAX_MODELS_JSON: usize = 96 * 1024;
/// The most fields a result hash or message may have.
pub const MAX_FIELDS: usize = 64;
/// How far ahead of this replica's clock a `checked_at` may be (clock skew).
pub const MAX_AHEAD: Duration = Duration::from_secs(3600);
/// The longest rate limit (Retry-After) a shared result may carry.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// The longest ejection a shared result may carry: the largest `max_ejection` a config may
/// set (1 day).
pub const EJECTION_CAP: Duration = Duration::from_secs(24 * 3600);
/// Fences are below 2^53, so Lua's numbers hold them exactly.
pub const FENCE_LIMIT: u64 = 1 << 53;

/// A result as read back: the result itself plus the round bookkeeping of the hash.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResult {
    pub endpoint: Arc<str>,
    pub result: SharedResult,
    /// When the next round is due, on the Redis clock (ms since the epoch); 0 if unknown.
    pub due_at: i64,
    /// `due_at` minus Redis's clock when it was read or published.
    pub due_in_ms: i64,
    /// When it was written, on the Redis clock (ms); 0 if unknown.
    pub written_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed shared result: {0}")]
pub struct WireError(pub String);

const SIGNATURE_ERROR: &str = "signature missing or invalid";

impl WireError {
    /// The result is well-formed but not signed with this replica's `shared.signing_key`.
    pub fn signature() -> Self {
        Self(SIGNATURE_ERROR.to_owned())
    }

    pub fn is_signature(&self) -> bool {
        self.0 == SIGNATURE_ERROR
    }
}

fn err(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn kind_str(kind: ResultKind) -> &'static str {
    match kind {
        ResultKind::Check { ok: true } => "check_ok",
        ResultKind::Check { ok: false } => "check_failed",
        ResultKind::Passive => "passive",
    }
}

fn phase_str(phase: Phase) -> &'static str {
    match phase {
        Phase::Startup => "startup",
        Phase::Running => "running",
    }
}

fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// The fields the writer supplies (everything but `fence`, `due_at` and `written_at`).
pub fn to_fields(r: &SharedResult) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("state", r.state.as_str().to_owned()),
        ("phase", phase_str(r.phase).to_owned()),
        (
            "reason",
            r.reason
                .as_ref()
                .map(|x| truncated(&x.as_str(), MAX_NAME).to_owned())
                .unwrap_or_default(),
        ),
        (
            "error",
            truncated(r.error.as_deref().unwrap_or(""), MAX_TEXT).to_owned(),
        ),
        (
            "latency_ms",
            r.latency
                .map(|l| format!("{:.3}", l.as_secs_f64() * 1e3))
                .unwrap_or_default(),
        ),
        ("checked_at", millis(r.checked_at).to_string()),
        ("checked_by", truncated(&r.checked_by, MAX_NAME).to_owned()),
        ("cf", r.consecutive_failures.to_string()),
        ("cs", r.consecutive_successes.to_string()),
        ("uf", r.unhealthy_failures.to_string()),
        (
            "rl_until",
            r.rate_limited_until
                .map(|t| millis(t).to_string())
                .unwrap_or_default(),
        ),
        ("kind", kind_str(r.kind).to_owned()),
    ];
    if let Some(until) = r.ejected_until {
        fields.push(("ej_until", millis(until).to_string()));
    }
    if let Some(models) = &r.models {
        // The list as JSON stays within MAX_MODELS_JSON, so the message carrying it (where
        // it is escaped once more, at most doubling it) stays within MAX_MESSAGE.
        let mut budget = MAX_MODELS_JSON;
        let names: Vec<&str> = models
            .iter()
            .map(|m| m.as_ref())
            .filter(|m| m.len() <= MAX_NAME)
            .take(MAX_MODELS)
            .take_while(|m| {
                let cost = serde_json::to_string(m).map_or(usize::MAX, |j| j.len() + 1);
                budget = budget.saturating_sub(cost);
                cost <= MAX_MODELS_JSON && budget > 0
            })
            .collect();
        fields.push((
            "models",
            serde_json::to_string(&names).unwrap_or_else(|_| "[]".to_owned()),
        ));
    }
    fields
}

/// The JSON body of a channel message for `endpoint`.
pub fn message_body(endpoint: &str, r: &SharedResult) -> String {
    message_body_of(endpoint, &to_fields(r))
}

/// The JSON body of a channel message for `endpoint` carrying `fields`.
pub fn message_body_of(endpoint: &str, fields: &[(&'static str, String)]) -> String {
    let mut map = serde_json::Map::new();
    map.insert("endpoint".to_owned(), endpoint.into());
    for (k, v) in fields {
        map.insert((*k).to_owned(), v.clone().into());
    }
    serde_json::Value::Object(map).to_string()
}

fn get<'a>(f: &'a HashMap<String, String>, key: &str) -> &'a str {
    f.get(key).map_or("", String::as_str)
}

fn parse_num<T: std::str::FromStr>(f: &HashMap<String, String>, key: &str) -> Result<T, WireError> {
    get(f, key)
        .parse()
        .map_err(|_| err(format!("{key}={:?}", get(f, key))))
}

fn bounded<'a>(
    f: &'a HashMap<String, String>,
    key: &str,
    max: usize,
) -> Result<&'a str, WireError> {
    let v = get(f, key);
    if v.len() > max {
        return Err(err(format!("{key}: {} bytes, at most {max}", v.len())));
    }
    Ok(v)
}

fn wall_ms(f: &HashMap<String, String>, key: &str, ahead: Duration) -> Result<i64, WireError> {
    let ms: i64 = parse_num(f, key)?;
    let limit = millis(SystemTime::now() + ahead);
    if !(0..=limit).contains(&ms) {
        return Err(err(format!("{key}={ms} out of range")));
    }
    Ok(ms)
}

/// Reads a fence: an integer in `1..2^53`.
pub fn parse_fence(s: &str) -> Result<u64, WireError> {
    match s.parse::<u64>() {
        Ok(n) if (1..FENCE_LIMIT).contains(&n) => Ok(n),
        _ => Err(err(format!("fence={:?}", truncated(s, 32)))),
    }
}

/// Reads a result from the fields of its hash (or of a message); `fence` overrides the field
/// when given (messages carry it in their header). Bounded: see the module docs.
pub fn from_fields(
    f: &HashMap<String, String>,
    fence: Option<u64>,
) -> Result<SharedResult, WireError> {
    if f.len() > MAX_FIELDS {
        return Err(err(format!("{} fields", f.len())));
    }
    let state: HealthState = serde_json::from_value(get(f, "state").into())
        .map_err(|_| err(format!("state={:?}", truncated(get(f, "state"), 32))))?;
    let phase = match get(f, "phase") {
        "startup" => Phase::Startup,
        "running" => Phase::Running,
        other => return Err(err(format!("phase={:?}", truncated(other, 32)))),
    };
    let kind = match get(f, "kind") {
        "check_ok" => ResultKind::Check { ok: true },
        "check_failed" => ResultKind::Check { ok: false },
        "passive" => ResultKind::Passive,
        other => return Err(err(format!("kind={:?}", truncated(other, 32)))),
    };
    let fence = match fence {
        Some(f) => f,
        None => parse_fence(get(f, "fence"))?,
    };
    let latency = match Some(get(f, "latency_ms")).filter(|s| !s.is_empty()) {
        Some(ms) => {
            let ms: f64 = ms
                .parse()
                .map_err(|_| err(format!("latency_ms={:?}", truncated(ms, 32))))?;
            if !(ms.is_finite() && (0.0..=86_400_000.0).contains(&ms)) {
                return Err(err(format!("latency_ms={ms} out of range")));
            }
            Some(Duration::from_secs_f64(ms / 1e3))
        }
        None => None,
    };
    let models = match f.get("models") {
        Some(json) => {
            if json.len() > MAX_MESSAGE {
                return Err(err("models: too long"));
            }
            let names: Vec<String> =
                serde_json::from_str(json).map_err(|_| err("models: not a list of names"))?;
            if names.len() > MAX_MODELS || names.iter().any(|n| n.len() > MAX_NAME) {
                return Err(err("models: too many or too long"));
            }
            Some(names.into_iter().map(Arc::<str>::from).collect())
        }
        None => None,
    };
    let rate_limited_until = match get(f, "rl_until") {
        "" => None,
        _ => Some(from_millis(wall_ms(f, "rl_until", RETRY_AFTER_CAP)?)),
    };
    let ejected_until = match get(f, "ej_until") {
        "" => None,
        _ => Some(from_millis(wall_ms(f, "ej_until", EJECTION_CAP)?)),
    };
    let reason = bounded(f, "reason", MAX_NAME)?;
    let error = bounded(f, "error", MAX_TEXT)?;
    let checked_by = bounded(f, "checked_by", MAX_NAME)?;
    if checked_by.is_empty() {
        return Err(err("no checked_by"));
    }
    Ok(SharedResult {
        state,
        phase,
        reason: Some(reason).filter(|s| !s.is_empty()).map(Reason::parse),
        error: Some(error).filter(|s| !s.is_empty()).map(Arc::from),
        latency,
        checked_at: from_millis(wall_ms(f, "checked_at", MAX_AHEAD)?),
        checked_by: Arc::from(checked_by),
        fence: FenceToken(fence),
        models,
        consecutive_failures: parse_num(f, "cf")?,
        consecutive_successes: parse_num(f, "cs")?,
        unhealthy_failures: parse_num(f, "uf")?,
        rate_limited_until,
        ejected_until,
        kind,
    })
}

/// Reads a stored hash (as returned by HGETALL); `now_ms` is Redis's clock at the read. With
/// a `signer`, the hash must carry a valid signature ([`crate::signing`]).
pub fn from_hash(
    endpoint: Arc<str>,
    f: &HashMap<String, String>,
    now_ms: i64,
    signer: Option<&Signer>,
) -> Result<StoredResult, WireError> {
    let due_at: i64 = parse_num(f, "due_at")?;
    let written_at: i64 = parse_num(f, "written_at")?;
    let result = from_fields(f, None)?;
    if let Some(signer) = signer
        && !signer.verify(&endpoint, result.fence.get(), f)
    {
        return Err(WireError::signature());
    }
    Ok(StoredResult {
        endpoint,
        result,
        due_at,
        due_in_ms: due_at.saturating_sub(now_ms),
        written_at,
    })
}

/// A round-taken announcement (`taken <lease_ms> <owner>\n<endpoint>`): the endpoint, who
/// took it, and how long the lease runs at most. `None` if `payload` is not one.
pub fn taken(payload: &str) -> Option<Result<(&str, &str, Duration), WireError>> {
    let rest = payload.strip_prefix("taken ")?;
    let parsed = (|| {
        let (header, endpoint) = rest.split_once('\n')?;
        let (ms, owner) = header.split_once(' ')?;
        let ms: u64 = ms.parse().ok()?;
        let ok = !endpoint.is_empty()
            && endpoint.len() <= MAX_MESSAGE
            && !owner.is_empty()
            && owner.len() <= MAX_NAME;
        ok.then_some((endpoint, owner, Duration::from_millis(ms)))
    })();
    Some(parsed.ok_or_else(|| err("taken: malformed announcement")))
}

/// Reads a channel message. With a `signer`, it must carry a valid signature.
pub fn from_message(payload: &str, signer: Option<&Signer>) -> Result<StoredResult, WireError> {
    if payload.len() > MAX_MESSAGE {
        return Err(err(format!("message of {} bytes", payload.len())));
    }
    let (header, body) = payload
        .split_once('\n')
        .ok_or_else(|| err("no header line"))?;
    let mut parts = header.split(' ');
    let fence = parse_fence(parts.next().unwrap_or(""))?;
    let mut next = |name: &str| -> Result<i64, WireError> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| err(format!("header {:?}: no {name}", truncated(header, 64))))
    };
    let due_at = next("due_at")?;
    let due_in_ms = next("due_in")?;
    let map: HashMap<String, String> =
        serde_json::from_str(body).map_err(|e| err(format!("body: {e}")))?;
    let endpoint: Arc<str> = Arc::from(bounded(&map, "endpoint", MAX_MESSAGE)?);
    if endpoint.is_empty() {
        return Err(err("no endpoint"));
    }
    let result = from_fields(&map, Some(fence))?;
    if let Some(signer) = signer
        && !signer.verify(&endpoint, fence, &map)
    {
        return Err(WireError::signature());
    }
    Ok(StoredResult {
        endpoint,
        result,
        due_at,
        due_in_ms,
        written_at: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SharedResult {
        SharedResult {
            state: HealthState::Unhealthy,
            phase: Phase::Running,
            reason: Some(Reason::Http(503)),
            error: Some(Arc::from("HTTP 503: busy\nsecond line")),
            latency: Some(Duration::from_micros(3214)),
            checked_at: UNIX_EPOCH + Duration::from_millis(1_718_000_000_123),
            checked_by: Arc::from("pod-a"),
            fence: FenceToken(1_718_000_000_123_456),
            models: Some(Arc::from(vec![Arc::<str>::from("m,1"), Arc::from("m\"2")])),
            consecutive_failures: 4,
            consecutive_successes: 0,
            unhealthy_failures: 2,
            rate_limited_until: Some(UNIX_EPOCH + Duration::from_millis(1_718_000_005_000)),
            ejected_until: Some(UNIX_EPOCH + Duration::from_millis(1_718_000_030_000)),
            kind: ResultKind::Check { ok: false },
        }
    }

    #[test]
    fn hash_fields_round_trip() {
        let r = sample();
        let mut map: HashMap<String, String> = to_fields(&r)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        map.insert("fence".into(), r.fence.get().to_string());
        map.insert("due_at".into(), "1718000001000".into());
        map.insert("written_at".into(), "1718000000125".into());
        let back = from_hash(Arc::from("e"), &map, 1_718_000_000_500, None).unwrap();
        assert_eq!(back.result, r);
        assert_eq!((back.due_at, back.due_in_ms), (1_718_000_001_000, 500));
        assert_eq!(back.written_at, 1_718_000_000_125);
    }

    #[test]
    fn the_longest_model_lists_are_cut_to_what_every_replica_accepts() {
        let mut r = sample();
        // 4096 names of 256 bytes full of characters JSON escapes: 1 MiB raw, far more
        // escaped.
        let name = "\"\u{1}".repeat(MAX_NAME / 2);
        assert_eq!(name.len(), MAX_NAME);
        r.models = Some(
            (0..MAX_MODELS)
                .map(|_| Arc::<str>::from(name.as_str()))
                .collect(),
        );
        let body = message_body("e", &r);
        assert!(body.len() <= MAX_MESSAGE, "{} bytes", body.len());
        let payload = format!("{} 1718000001000 -20\n{body}", r.fence);
        let back = from_message(&payload, None).unwrap();
        let kept = back.result.models.unwrap();
        assert!(
            !kept.is_empty() && kept.len() < MAX_MODELS,
            "{}",
            kept.len()
        );
        assert!(kept.iter().all(|m| **m == *name));
        // Ordinary lists are written whole.
        r.models = Some(
            (0..MAX_MODELS)
                .map(|i| Arc::<str>::from(format!("m{i}")))
                .collect(),
        );
        let fields: HashMap<String, String> = to_fields(&r)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let back = from_fields(&fields, Some(1)).unwrap();
        assert_eq!(back.models.unwrap().len(), MAX_MODELS);
    }

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let mut r = sample();
        r.models = None;
        r.rate_limited_until = None;
        r.ejected_until = None;
        r.latency = None;
        r.reason = None;
        r.error = None;
        r.kind = ResultKind::Passive;
        let payload = format!(
            "{} 1718000001000 -20\n{}",
            r.fence,
            message_body("vllm-1", &r)
        );
        let m = from_message(&payload, None).unwrap();
        assert_eq!(&*m.endpoint, "vllm-1");
        assert_eq!(m.result, r);
        assert_eq!(m.due_in_ms, -20);
        for bad in [
            "",
            "1 2 3",
            "x 1 2\n{}",
            "1 2 3\n{\"endpoint\":\"e\"}",
            "1 2 3\nnot json",
        ] {
            assert!(from_message(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ejections_are_bounded_and_absent_when_none() {
        let mut r = sample();
        r.ejected_until = None;
        assert!(to_fields(&r).iter().all(|(k, _)| *k != "ej_until"));
        let fields = |until: &str| {
            let mut map: HashMap<String, String> = to_fields(&sample())
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            map.insert("ej_until".into(), until.into());
            map.insert("fence".into(), "7".into());
            map
        };
        let soon = millis(SystemTime::now() + Duration::from_secs(30));
        let back = from_fields(&fields(&soon.to_string()), None).unwrap();
        assert_eq!(back.ejected_until, Some(from_millis(soon)));
        assert_eq!(from_fields(&fields(""), None).unwrap().ejected_until, None);
        let far = millis(SystemTime::now() + EJECTION_CAP + Duration::from_secs(60));
        for bad in [far.to_string(), "-5".into(), "soon".into(), "1e99".into()] {
            assert!(from_fields(&fields(&bad), None).is_err(), "{bad}");
        }
    }
}
