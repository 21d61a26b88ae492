//! The request body: buffered whole (up to `server.max_body`) so it can be replayed on the
//! next candidate after a connection failure, and read for the only two fields routing needs.
//!
//! Decisions:
//! - A `Content-Length` above the limit is refused with 413 before a byte of the body is
//!   read; a chunked body is counted as it arrives and refused the moment it passes the limit.
//! - Only `model` and `stream` are deserialised, into a borrowed struct; serde skips every
//!   other field without building it, so a long prompt costs one scan and no allocation. The
//!   body is forwarded byte for byte as received, never re-serialised.
//! - The body must be one JSON object with a non-empty string `model`; anything else is a 400
//!   that says what is wrong. `stream` is read leniently: a value that is not a boolean is
//!   left for the backend to judge (Hale only uses it for its own bookkeeping).

use crate::error::ProxyError;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The most [`read_limited`] reserves for a body on the strength of its `Content-Length`.
const UPFRONT_MAX: usize = 1024 * 1024;

/// What routing reads from a request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub model: Cow<'a, str>,
    /// `stream` when it is a boolean; `None` when absent or of another type.
    pub stream: Option<bool>,
}

/// Reads the whole body, refusing one larger than `limit` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    // Frames are counted as they arrive; the usual single-frame body is kept as it came,
    // without a copy or a list of buffers. A longer one is copied into one buffer of the
    // declared length, up to [`UPFRONT_MAX`] (the server's reads are under 8 KiB, so a 60 KB
    // prompt comes in eight frames or more): no doubling, and no frame kept alive holding the
    // server's read buffer.
    let mut body = body;
    let mut collected = Collected::Empty;
    let mut total = 0_usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ProxyError::BadRequest(Cow::Owned(format!("could not read the request body: {e}")))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        collected = match collected {
            Collected::Empty => Collected::One(data),
            Collected::One(first) => {
                let mut joined = BytesMut::with_capacity(upfront(declared, total));
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Collected::Many(joined)
            }
            Collected::Many(mut joined) => {
                joined.extend_from_slice(&data);
                Collected::Many(joined)
            }
        };
    }
    Ok(match collected {
        Collected::Empty => Bytes::new(),
        Collected::One(only) => only,
        Collected::Many(joined) => joined.freeze(),
    })
}

/// What to reserve for a body of several frames once `total` bytes of it are in: its declared
/// length, but at most [`UPFRONT_MAX`] on the client's word alone (past that the buffer grows
/// as the bytes arrive).
fn upfront(declared: Option<u64>, total: usize) -> usize {
    declared
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
        .min(UPFRONT_MAX)
        .max(total)
}

/// A request body as [`read_limited`] gathers it.
enum Collected {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// Parses `model` and `stream` out of a JSON object body; see the module docs.
pub fn parse(body: &[u8]) -> Result<Fields<'_>, ProxyError> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ProxyError::BadRequest(Cow::Borrowed(
            "the request body must be a JSON object",
        )));
    }
    let raw: Raw<'_> = serde_json::from_slice(body)
        .map_err(|e| ProxyError::BadRequest(Cow::Owned(format!("invalid JSON body: {e}"))))?;
    match raw.model.map(|n| n.0) {
        Some(model) if !model.trim().is_empty() => Ok(Fields {
            model,
            stream: raw.stream.0,
        }),
        Some(_) => Err(ProxyError::BadRequest(Cow::Borrowed(
            "`model` must not be empty",
        ))),
        None => Err(ProxyError::BadRequest(Cow::Borrowed(
            "the request body has no `model`",
        ))),
    }
}

/// The fields as serde sees them; unknown fields are skipped (no `deny_unknown_fields`).
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow, default)]
    model: Option<Name<'a>>,
    #[serde(default)]
    stream: Lenient,
}

/// A string borrowed from the body when it has no escapes, owned otherwise. (serde's own
/// `Cow` support does not borrow through an `Option`.)
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Name<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A boolean if the value is one, `None` for any other value (which is skipped unread).
#[derive(Default)]
struct Lenient(Option<bool>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Lenient;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Lenient, E> {
                Ok(Lenient(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        match parse(body.as_bytes()) {
            Err(ProxyError::BadRequest(m)) => m.into_owned(),
            other => panic!("expected a 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn reads_model_and_stream_and_skips_the_rest() {
        let f = parse(br#"{"messages":[{"role":"user","content":"hi \"there\""}],"model":"llama3","stream":true,"n":1}"#).unwrap();
        assert_eq!(f.model, "llama3");
        assert!(
            matches!(f.model, Cow::Borrowed(_)),
            "no copy of a plain name"
        );
        assert_eq!(f.stream, Some(true));
        let f = parse(br#" {"model":"a\u0062c"}"#).unwrap();
        assert_eq!(f.model, "abc");
        assert_eq!(f.stream, None);
        for odd in [r#""yes""#, "1", "null", "[true]", r#"{"x":true}"#] {
            let body = format!(r#"{{"model":"m","stream":{odd}}}"#);
            assert_eq!(parse(body.as_bytes()).unwrap().stream, None, "{odd}");
        }
    }

    #[test]
    fn malformed_bodies_are_400s_that_say_why() {
        assert_eq!(err(""), "the request body must be a JSON object");
        assert_eq!(err("[1]"), "the request body must be a JSON object");
        assert!(err(r#"{"model":"m""#).starts_with("invalid JSON body: "));
        assert!(err(r#"{"model":3}"#).starts_with("invalid JSON body: invalid type"));
        assert_eq!(err(r#"{"messages":[]}"#), "the request body has no `model`");
        assert_eq!(err(r#"{"model":" "}"#), "`model` must not be empty");
        assert!(err(r#"{"model":"m"} trailing"#).starts_with("invalid JSON body"));
    }

    /// A body that yields the given pieces as separate frames.
    struct Pieces(std::collections::VecDeque<&'static str>);

    impl http_body::Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(
                self.0
                    .pop_front()
                    .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes())))),
            )
        }
    }

    #[tokio::test]
    async fn joins_pieces_up_to_the_limit() {
        let h = HeaderMap::new();
        let body = Body::new(Pieces(["{\"model\"", ":\"m\"", "}"].into()));
        let got = read_limited(&h, body, 100).await.unwrap();
        assert_eq!(&got[..], br#"{"model":"m"}"#);
        let body = Body::new(Pieces(["12345", "6"].into()));
        assert_eq!(
            read_limited(&h, body, 5).await.unwrap_err(),
            ProxyError::BodyTooLarge { limit: 5 }
        );
        assert!(read_limited(&h, Body::empty(), 5).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_of_many_frames_with_a_declared_length_arrives_whole() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, "13".parse().unwrap());
        let body = Body::new(Pieces(["{\"mo", "del\":", "\"m\"", "}"].into()));
        let got = read_limited(&h, body, 100).await.unwrap();
        assert_eq!(&got[..], br#"{"model":"m"}"#);
    }

    #[test]
    fn a_declared_length_reserves_at_most_a_mebibyte_up_front() {
        assert_eq!(upfront(Some(60_000), 16_000), 60_000);
        assert_eq!(upfront(None, 16_000), 16_000);
        // A claim the bytes have already passed, and hostile claims.
        assert_eq!(upfront(Some(10), 16_000), 16_000);
        assert_eq!(upfront(Some(10 * 1024 * 1024), 16_000), UPFRONT_MAX);
        assert_eq!(upfront(Some(u64::MAX), 16_000), UPFRONT_MAX);
    }

    #[tokio::test]
    async fn limits_declared_and_streamed_sizes() {
        let mut headers = HeaderMap::new();
        let ok = read_limited(&headers, Body::from("12345"), 5)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"12345");
        let e = read_limited(&headers, Body::from("123456"), 5)
            .await
            .unwrap_err();
        assert_eq!(e, ProxyError::BodyTooLarge { limit: 5 });
        headers.insert(CONTENT_LENGTH, "999".parse().unwrap());
        let e = read_limited(&headers, Body::from("1"), 5)
            .await
            .unwrap_err();
        assert_eq!(e, ProxyError::BodyTooLarge { limit: 5 });
    }
}
