//! The one error type of Hale's HTTP surface: [`ApiError`] renders itself as OpenAI-shaped
//! JSON, `{"error":{"message":"…","type":"…","code":401}}`, with the matching status code.
//!
//! Every route that can refuse a request answers through this type, and the JSON itself is
//! rendered by `hale_proxy::json_error`, so clients and scripts see one shape whether the
//! refusal came from auth, an unknown path, a bad query string or the proxy. `code` repeats the HTTP status as a number, which is what OpenAI-compatible
//! clients print; `type` is the machine-readable class. A 401 also carries
//! `WWW-Authenticate: Bearer` as RFC 9110 requires, and a 405 carries `Allow`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

/// The `type` of an authentication failure.
pub const AUTHENTICATION_ERROR: &str = "authentication_error";
/// The `type` of a malformed request (bad query, wrong method).
pub const INVALID_REQUEST_ERROR: &str = "invalid_request_error";
/// The `type` of a request for something that does not exist.
pub const NOT_FOUND_ERROR: &str = "not_found_error";

/// An error answer: status, class and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    kind: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl ApiError {
    /// An error with any status and `type`; the named constructors below cover the common ones.
    pub fn new(
        status: StatusCode,
        kind: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            kind: kind.into(),
            message: message.into(),
        }
    }

    /// 401 `authentication_error`; the response also says `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, AUTHENTICATION_ERROR, message)
    }

    /// 404 `not_found_error`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, NOT_FOUND_ERROR, message)
    }

    /// 400 `invalid_request_error`.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, INVALID_REQUEST_ERROR, message)
    }

    /// 405 `invalid_request_error`.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            INVALID_REQUEST_ERROR,
            format!("method {method} is not allowed on {path}"),
        )
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable class, rendered as `error.type`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = hale_proxy::json_error(self.status, &self.kind, &self.message);
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn render(e: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let r = e.into_response();
        let (parts, body) = r.into_parts();
        let bytes = to_bytes(body, 1 << 16).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn renders_openai_shape() {
        let (status, headers, body) = render(ApiError::unauthorized("nope")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            body,
            serde_json::json!({"error": {"message": "nope", "type": "authentication_error", "code": 401}})
        );

        let (status, headers, body) = render(ApiError::not_found("no such thing")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(headers.get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(body["error"]["type"], "not_found_error");
        assert_eq!(body["error"]["code"], 404);

        let (status, _, body) = render(ApiError::method_not_allowed("POST", "/livez")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            body["error"]["message"],
            "method POST is not allowed on /livez"
        );
    }
}
