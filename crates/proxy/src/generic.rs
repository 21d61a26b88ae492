//! The generic model-routed route: any `POST /v1/...` Hale has no route of its own for is
//! routed by the `model` its body names, like chat (same selection, failover, retries and
//! outlier rules), so the next API a backend learns (rerank, score, tokenize, audio, images)
//! needs no change here.
//!
//! Two things are decided here:
//! - [`clean_path`]: which client paths may be relayed. The upstream request line is always
//!   the configured endpoint's base URL joined to this path (axum hands us only the path of
//!   an absolute-form request line, and the `Host` header is never used), so the only risk
//!   left is the path itself: it must be under `/v1/`, at most 256 bytes of unreserved ASCII
//!   (`A-Z a-z 0-9 - . _ ~ /`, plus `:` and `@` which some APIs use), with no empty, `.` or
//!   `..` segment and no percent-escapes (which a backend might decode into one). Anything
//!   else is a 404 in OpenAI's shape, since no route could serve it.
//! - [`fields`]: where `model` comes from. A `multipart/form-data` body (audio
//!   transcriptions and translations) is parsed with `multer` and routed by its `model` form
//!   field (at most 1 KiB; every other part is skipped unread beyond its boundary); any other
//!   body must be a JSON object with a string `model` (see `body`). The body is forwarded
//!   byte for byte either way; it was already bounded by `server.max_body`.

use crate::body::{self, Fields};
use crate::error::ProxyError;
use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use std::borrow::Cow;

/// The longest path the generic route relays.
const MAX_PATH: usize = 256;
/// The longest `model` form field read from a multipart body.
const MAX_MODEL_FIELD: u64 = 1024;

/// Whether `path` may be relayed upstream; see the module docs.
pub fn clean_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return false;
    };
    path.len() <= MAX_PATH
        && !rest.is_empty()
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b))
        && rest
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// `model` (and `stream`) of a request body, JSON or multipart; see the module docs.
pub async fn fields<'a>(headers: &HeaderMap, bytes: &'a Bytes) -> Result<Fields<'a>, ProxyError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return body::parse(bytes);
    }
    let boundary = multer::parse_boundary(content_type).map_err(|e| {
        ProxyError::BadRequest(Cow::Owned(format!("invalid multipart content type: {e}")))
    })?;
    let model = multipart_model(bytes.clone(), boundary).await?;
    Ok(Fields {
        model: Cow::Owned(model),
        stream: None,
    })
}

async fn multipart_model(bytes: Bytes, boundary: String) -> Result<String, ProxyError> {
    let bad = |e: multer::Error| {
        ProxyError::BadRequest(Cow::Owned(format!("invalid multipart body: {e}")))
    };
    let stream =
        futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(bytes) });
    let constraints = multer::Constraints::new()
        .size_limit(multer::SizeLimit::new().for_field("model", MAX_MODEL_FIELD));
    let mut form = multer::Multipart::with_constraints(stream, boundary, constraints);
    while let Some(field) = form.next_field().await.map_err(bad)? {
        if field.name() == Some("model") {
            let model = field.text().await.map_err(bad)?;
            if model.trim().is_empty() {
                return Err(ProxyError::BadRequest(Cow::Borrowed(
                    "`model` must not be empty",
                )));
            }
            return Ok(model);
        }
    }
    Err(ProxyError::BadRequest(Cow::Borrowed(
        "the multipart body has no `model` field",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_plain_paths_under_v1_are_relayed() {
        for good in [
            "/v1/rerank",
            "/v1/audio/transcriptions",
            "/v1/images/generations",
            "/v1/models:score",
        ] {
            assert!(clean_path(good), "{good}");
        }
        let long = format!("/v1/{}", "a".repeat(300));
        for bad in [
            "/v1/",
            "/v1",
            "/v2/rerank",
            "/v1/../admin",
            "/v1/a/../../x",
            "/v1/./rerank",
            "/v1//rerank",
            "/v1/rerank/",
            "/v1/%2e%2e/admin",
            "/v1/a b",
            "/v1/a?b",
            "/v1/é",
            "/api/x",
            long.as_str(),
        ] {
            assert!(!clean_path(bad), "{bad}");
        }
    }

    fn multipart(content_type: &'static str) -> HeaderMap {
        HeaderMap::from_iter([(CONTENT_TYPE, HeaderValue::from_static(content_type))])
    }

    #[tokio::test]
    async fn multipart_bodies_route_by_their_model_field() {
        let h = multipart("multipart/form-data; boundary=XyZ");
        let body = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
              Content-Type: audio/wav\r\n\r\nRIFF....\r\n\
              --XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n",
        );
        assert_eq!(fields(&h, &body).await.unwrap().model, "whisper-1");

        let no_model = Bytes::from_static(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc\r\n--XyZ--\r\n",
        );
        let e = fields(&h, &no_model).await.unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("no `model`"), "{e}");

        for garbled in [
            &b"garbage without boundaries"[..],
            b"--XyZ\r\nno headers end",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nunterminated",
        ] {
            let e = fields(&h, &Bytes::copy_from_slice(garbled))
                .await
                .unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
        }
        let huge_model = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{}\r\n--XyZ--\r\n",
            "m".repeat(5000)
        );
        let e = fields(&h, &Bytes::from(huge_model)).await.unwrap_err();
        assert_eq!(e.status(), 400);
        let e = fields(&multipart("multipart/form-data"), &body)
            .await
            .unwrap_err();
        assert_eq!(e.status(), 400, "no boundary");
    }

    #[tokio::test]
    async fn json_bodies_need_a_string_model() {
        let h = HeaderMap::new();
        let ok = Bytes::from_static(br#"{"model":"rr","query":"q"}"#);
        assert_eq!(fields(&h, &ok).await.unwrap().model, "rr");
        for bad in [
            &br#"{"query":"q"}"#[..],
            br#"{"model":7}"#,
            br#"{"model":["a"]}"#,
            b"[]",
        ] {
            let e = fields(&h, &Bytes::copy_from_slice(bad)).await.unwrap_err();
            assert_eq!(e.status(), 400);
        }
    }
}
