//! The admin token: when `server.admin_token` is set, the `/internal/` routes (all but
//! `/internal/health`) need `Authorization: Bearer <token>`.
//!
//! The token is compared in constant time, including with respect to the length of what the
//! client sent: the comparison always walks the expected token's bytes, and the length check is
//! folded into the same result instead of returning early. So the time taken tells an attacker
//! neither how many leading bytes were right nor how long the token is (beyond what the
//! fixed per-request work leaks anyway). The scheme name is case-insensitive (RFC 9110 §11.1).
//! A refusal is a 401 with `WWW-Authenticate: Bearer` and the usual JSON error; it never says
//! whether the header was missing or the token wrong.

use crate::ApiState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

const REFUSAL: &str = "missing or invalid admin token";

/// Middleware for the `/internal` sub-router: passes the request on when no token is
/// configured or the right one is presented.
pub(crate) async fn require_admin_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state.server().admin_token.expose();
    if expected.is_empty() {
        return Ok(next.run(request).await);
    }
    match bearer_token(request.headers()) {
        Some(token) if token_matches(token, expected.as_bytes()) => Ok(next.run(request).await),
        _ => {
            tracing::debug!(path = %request.uri().path(), "admin token missing or wrong");
            Err(ApiError::unauthorized(REFUSAL))
        }
    }
}

pub use hale_proxy::auth::bearer_token;

/// Whether `provided` equals `expected`, in time that depends only on `expected.len()`: the
/// proxy's comparison (one implementation for API keys and the admin token).
pub fn token_matches(provided: &[u8], expected: &[u8]) -> bool {
    bool::from(hale_proxy::auth::token_matches(provided, expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Fixture;
    use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

    #[test]
    fn compares_whole_tokens() {
        assert!(token_matches(b"s3cret", b"s3cret"));
        assert!(!token_matches(b"s3cre", b"s3cret"));
        assert!(!token_matches(b"s3cret!", b"s3cret"));
        assert!(!token_matches(b"s3cres", b"s3cret"));
        assert!(!token_matches(b"", b"s3cret"));
        assert!(!token_matches(b"s3cret\0", b"s3cret"));
    }

    #[test]
    fn parses_bearer_headers() {
        let parse = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            bearer_token(&h).map(<[u8]>::to_vec)
        };
        assert_eq!(parse("Bearer abc"), Some(b"abc".to_vec()));
        assert_eq!(parse("bearer  abc "), Some(b"abc".to_vec()));
        assert_eq!(parse("Basic abc"), None);
        assert_eq!(parse("Bearer"), None);
        assert_eq!(parse("Bearer "), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    const GUARDED: [&str; 5] = [
        "/internal/status",
        "/internal/status/endpoints",
        "/internal/stats/models",
        "/internal/events",
        "/internal/no-such-route",
    ];

    const OPEN: [&str; 8] = [
        "/livez",
        "/readyz",
        "/health/liveliness",
        "/health/readiness",
        "/internal/health",
        "/health/shared-status",
        "/metrics",
        "/health/no-such-route",
    ];

    #[tokio::test]
    async fn guarded_routes_need_the_token() {
        let f = Fixture::new("t0ken");
        f.store.mark_ready();
        for path in GUARDED {
            for auth in [
                None,
                Some("Bearer wrong"),
                Some("Basic t0ken"),
                Some("Bearer t0ke"),
            ] {
                let r = f.get_with(path, auth).await;
                assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
                assert_eq!(r.header("www-authenticate"), "Bearer", "{path}");
                assert_eq!(
                    r.json(),
                    serde_json::json!({"error": {
                        "message": "missing or invalid admin token",
                        "type": "authentication_error",
                        "code": 401
                    }}),
                    "{path}"
                );
            }
            let r = f.get(path, Some("t0ken")).await;
            let expected = if path.ends_with("no-such-route") {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            assert_eq!(r.status, expected, "{path}");
            let r = f.get_with(path, Some("bearer t0ken")).await;
            assert_eq!(r.status, expected, "{path} with a lowercase scheme");
        }
    }

    #[tokio::test]
    async fn open_routes_never_need_it() {
        let f = Fixture::new("t0ken");
        f.store.mark_ready();
        for path in OPEN {
            for auth in [None, Some("Bearer wrong")] {
                let r = f.get_with(path, auth).await;
                assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            }
        }
    }

    #[tokio::test]
    async fn no_token_configured_means_open() {
        let f = Fixture::new("");
        for path in GUARDED {
            let r = f.get(path, None).await;
            assert_ne!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        }
    }
}
