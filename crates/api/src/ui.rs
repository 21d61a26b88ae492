//! `GET /ui`: the status page, plain HTML, CSS and JavaScript embedded in the binary from
//! `crates/api/assets/` (no framework, no build step, nothing fetched from elsewhere).
//!
//! The page and its assets ([`ASSETS`]) are served without the admin token: a browser cannot
//! send an `Authorization` header when it navigates, and they hold no data, only the code
//! that reads it. All data comes from the `/internal/*` routes and
//! `/internal/events/stream`, which follow the admin-token rules: when they answer 401 the
//! page asks for the token once, keeps it in `sessionStorage` (this tab only, gone when it
//! closes) and sends it as `Authorization: Bearer`, never in a URL. That is also why the page
//! reads the event stream with `fetch()` and a stream parser rather than `EventSource`, which
//! cannot send headers. It refreshes the JSON every second and at once on each event, so a
//! change shows within a second without a reload.
//!
//! Every answer carries a strict `Content-Security-Policy` ([`CSP`]: scripts, styles, images
//! and connections from this origin only, no inline script or style, no framing, no form
//! targets), `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, and
//! `Cache-Control: no-cache` with an `ETag` (a hash of the asset), so a browser revalidates
//! and gets a 304 until the binary changes. The assets weigh [`page_weight`] bytes; a test
//! keeps that under 100 KB.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The page's Content-Security-Policy.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One embedded file of the page.
pub struct Asset {
    /// Its name under `/ui/` (`""` is the page itself, at `/ui`).
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    etag: &'static str,
}

impl std::fmt::Debug for Asset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asset")
            .field("name", &self.name)
            .field("content_type", &self.content_type)
            .field("bytes", &self.body.len())
            .field("etag", &self.etag)
            .finish()
    }
}

macro_rules! asset {
    ($name:literal, $file:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../assets/", $file)),
            etag: {
                const HASH: [u8; 18] = etag_of(include_bytes!(concat!("../assets/", $file)));
                match std::str::from_utf8(&HASH) {
                    Ok(s) => s,
                    Err(_) => "\"0\"",
                }
            },
        }
    };
}

/// Everything the page loads.
pub const ASSETS: &[Asset] = &[
    asset!("", "index.html", "text/html; charset=utf-8"),
    asset!("app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "icon.svg", "image/svg+xml"),
];

/// The page's total weight in bytes: the sum of [`ASSETS`].
pub fn page_weight() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

/// A quoted 16-hex-digit FNV-1a hash of `bytes`, computed at compile time.
const fn etag_of(bytes: &[u8]) -> [u8; 18] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut j = 0;
    while j < 16 {
        out[1 + j] = HEX[((hash >> (60 - 4 * j)) & 0xf) as usize];
        j += 1;
    }
    out
}

/// `GET /ui`.
pub(crate) async fn page(headers: HeaderMap) -> Response {
    serve("", &headers)
}

/// `GET /ui/{name}`.
pub(crate) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    if name.is_empty() {
        return ApiError::not_found("no asset named \"\"").into_response();
    }
    serve(&name, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return ApiError::not_found(format!("no asset named {name:?}")).into_response();
    };
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use axum::body::Body;
    use axum::http::Request;

    #[test]
    fn the_page_weighs_under_100_kb() {
        let weight = page_weight();
        assert!(weight < 100 * 1000, "the page weighs {weight} bytes");
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.name);
        }
    }

    #[test]
    fn etags_are_quoted_hashes_that_differ() {
        for a in ASSETS {
            assert_eq!(a.etag.len(), 18, "{}", a.etag);
            assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        }
        assert_ne!(ASSETS[0].etag, ASSETS[1].etag);
        assert_eq!(&etag_of(b""), b"\"cbf29ce484222325\"");
    }

    #[test]
    fn nothing_is_loaded_from_elsewhere() {
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).unwrap();
            // Nor is any text a backend or an operator wrote ever parsed as HTML.
            for needle in [
                "http://",
                "https://",
                "//cdn",
                "<script>",
                " style=\"",
                "eval(",
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                let allowed = a.name == "icon.svg" && needle == "http://";
                assert!(
                    allowed || !text.contains(needle),
                    "{} contains {needle:?}",
                    a.name
                );
            }
        }
    }

    #[tokio::test]
    async fn serves_the_page_and_its_assets_with_a_strict_policy() {
        // With an admin token set: the page itself needs none, it holds no data.
        let f = Fixture::new("t0ken");
        for (path, kind) in [
            ("/ui", "text/html; charset=utf-8"),
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/app.css", "text/css; charset=utf-8"),
            ("/ui/icon.svg", "image/svg+xml"),
        ] {
            let r = f.get(path, None).await;
            assert_eq!(r.status, StatusCode::OK, "{path}");
            assert_eq!(r.header("content-type"), kind, "{path}");
            assert_eq!(r.header("content-security-policy"), CSP, "{path}");
            assert_eq!(r.header("x-content-type-options"), "nosniff");
            assert_eq!(r.header("cache-control"), "no-cache");
            assert!(!r.body.is_empty());
            let etag = r.header("etag").to_owned();
            let again = f
                .request(
                    Request::get(path)
                        .header("if-none-match", &etag)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
            assert!(again.body.is_empty());
            let stale = f
                .request(
                    Request::get(path)
                        .header("if-none-match", "\"0000000000000000\"")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(stale.status, StatusCode::OK, "{path}");
        }
        assert!(CSP.contains("default-src 'none'"));
        assert!(!CSP.contains("unsafe"));
    }

    #[tokio::test]
    async fn unknown_assets_are_404s() {
        let f = Fixture::new("");
        for path in ["/ui/nope.js", "/ui/..%2Fapp.js", "/ui/index.html"] {
            let r = f.get(path, None).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(r.json()["error"]["code"], 404, "{path}");
        }
        let r = f
            .request(Request::post("/ui").body(Body::empty()).unwrap())
            .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
