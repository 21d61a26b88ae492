//! Which endpoint created a stored response (OpenAI's Responses API), shared through Redis so
//! a follow-up by id (`GET /v1/responses/{id}`, …) reaches that endpoint from any replica.
//!
//! Key: `hale:{ns}:resp:<id>` (a string: the endpoint's name), under the namespace's hash tag,
//! with the lifetime the proxy asks for (`PX`). The proxy only hands over ids it checked
//! (1–256 bytes of `A-Z a-z 0-9 - _ . :`), so the key cannot leave the namespace.
//!
//! Best effort, never in the way:
//! - [`remember`] writes in a task of its own (one `SET`, bounded by the connection's
//!   operation timeout); at most [`MAX_PENDING`] writes are pending, beyond that an id is only
//!   remembered locally. A failed write is logged at DEBUG and otherwise ignored: it does not
//!   count toward Redis's availability, which is about health coordination.
//! - [`recall`] is one `GET`. Its value is untrusted input: it must be 1–256 bytes of UTF-8
//!   without control characters (the proxy then also requires a configured endpoint of that
//!   name); anything else, or a key of the wrong type, is refused and counted in
//!   `hale_coord_rejected_total{kind="malformed"}`, and the id reads as unknown. Any failure
//!   reads as unknown.

use crate::cache::ResultCache;
use crate::conn::RedisFailure;
use crate::rejected::{Kind, Rejected};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The most response-id writes pending at once, process-wide.
pub const MAX_PENDING: usize = 256;
/// The longest endpoint name accepted from Redis.
const MAX_VALUE: usize = 256;

static PENDING: AtomicUsize = AtomicUsize::new(0);

fn key(cache: &ResultCache, id: &str) -> String {
    format!("{}resp:{id}", cache.keys().prefix())
}

/// Writes `id` → `endpoint` with lifetime `ttl`, in the background; see the module docs.
pub(crate) fn remember(cache: &ResultCache, id: &str, endpoint: &str, ttl: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if PENDING.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING {
        PENDING.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!("too many response ids pending for Redis; this one stays local");
        return;
    }
    let cache = cache.clone();
    let key = key(&cache, id);
    let endpoint = endpoint.to_owned();
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    runtime.spawn(async move {
        let written = cache
            .conn()
            .run(async |c: &mut crate::conn::Connection| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&endpoint)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(c)
                    .await
            })
            .await;
        PENDING.fetch_sub(1, Ordering::AcqRel);
        if let Err(e) = written {
            tracing::debug!(error = %e.summary(), "a response id was not shared through Redis");
        }
    });
}

/// The endpoint Redis names for `id`; see the module docs.
pub(crate) async fn recall(cache: &ResultCache, rejected: &Rejected, id: &str) -> Option<Arc<str>> {
    let key = key(cache, id);
    let read = cache
        .conn()
        .run(async |c: &mut crate::conn::Connection| {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<Vec<u8>>>(c)
                .await
        })
        .await;
    let value = match read {
        Ok(value) => value?,
        Err(RedisFailure::Server(e)) if e.code() == Some("WRONGTYPE") => {
            rejected.reject(Kind::Malformed, id, "response id key of the wrong type");
            return None;
        }
        Err(e) => {
            tracing::debug!(error = %e.summary(), "could not read a response id from Redis");
            return None;
        }
    };
    match parse(&value) {
        Some(name) => Some(name),
        None => {
            rejected.reject(
                Kind::Malformed,
                id,
                "response id value is not an endpoint name",
            );
            None
        }
    }
}

fn parse(value: &[u8]) -> Option<Arc<str>> {
    if value.is_empty() || value.len() > MAX_VALUE {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(Arc::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_must_be_short_plain_names() {
        assert_eq!(parse(b"vllm-a").as_deref(), Some("vllm-a"));
        for bad in [&b""[..], b"\xff\xfe", b"a\nb", b"\0", &[b'x'; 300][..]] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
