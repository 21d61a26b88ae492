//! [`ProxyError`]: every answer Hale gives itself on a proxy route instead of a backend's,
//! rendered as OpenAI-shaped JSON, `{"error":{"message":"…","type":"…","code":404}}` — or, by
//! [`render`], in the shape of the route's own API: Anthropic's
//! `{"type":"error","error":{"type":"not_found_error",…,"message":"…"}}` on `/v1/messages*`
//! (the type from the status: 400/405/408/413 `invalid_request_error`, 401
//! `authentication_error`, 404 `not_found_error`, 503 `overloaded_error`, 502/504 and anything
//! else `api_error`) and Ollama's `{"error":"…"}` on `/api/*`. The status and headers
//! (`Retry-After`, `WWW-Authenticate`, `Allow`) are the same in every shape.
//!
//! [`json_error`] renders the shape, here and for hale-api's `ApiError` (the api crate sits
//! above this one), so a client sees one error format on every path of the listener: `code` repeats the HTTP status as a number, `type` is the machine-readable class.
//! The statuses follow DESIGN §5/§6: unknown model 404, every candidate down 503 with
//! `Retry-After`, body too large 413, a body slower than `server.header_timeout` 408 (so a
//! client trickling its body cannot hold a request open), malformed JSON or a missing `model` 400, a missing or
//! wrong API key 401 with `WWW-Authenticate: Bearer`, a wrong method 405 with `Allow`; a
//! backend that dropped the request after it was sent, or answered with a malformed head, 502;
//! one that sent no response head within `first_byte_timeout` 504. The messages of 502 and
//! 504 name the endpoint.

use crate::route::Api;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use std::borrow::Cow;
use std::time::Duration;

/// `type` of a malformed request.
pub const INVALID_REQUEST_ERROR: &str = "invalid_request_error";
/// `type` of a missing or wrong API key.
pub const AUTHENTICATION_ERROR: &str = "authentication_error";
/// `type` of a model (or path) nothing serves.
pub const NOT_FOUND_ERROR: &str = "not_found_error";
/// `type` of a model whose every endpoint is down.
pub const SERVICE_UNAVAILABLE_ERROR: &str = "service_unavailable_error";
/// `type` of a backend that dropped the request or answered something malformed.
pub const BAD_GATEWAY_ERROR: &str = "bad_gateway_error";
/// `type` of a backend that did not answer in time.
pub const GATEWAY_TIMEOUT_ERROR: &str = "gateway_timeout_error";

/// An answer Hale gives itself; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("request body larger than {limit} bytes (server.max_body)")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {}s of its head (server.header_timeout)", .0.as_secs_f64())]
    BodyTimeout(Duration),
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    #[error("{0}")]
    ModelNotFound(String),
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    /// Something named by the request (a response id, a model id) that Hale does not know.
    #[error("{0}")]
    NotFound(String),
    /// The message names the endpoint.
    #[error("{0}")]
    BadGateway(String),
    /// The message names the endpoint.
    #[error("{0}")]
    GatewayTimeout(String),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::ModelNotFound(_) | Self::NoRoute { .. } | Self::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The machine-readable class, rendered as `error.type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized => AUTHENTICATION_ERROR,
            Self::BodyTooLarge { .. }
            | Self::BodyTimeout(_)
            | Self::BadRequest(_)
            | Self::MethodNotAllowed { .. } => INVALID_REQUEST_ERROR,
            Self::ModelNotFound(_) | Self::NoRoute { .. } | Self::NotFound(_) => NOT_FOUND_ERROR,
            Self::Unavailable { .. } => SERVICE_UNAVAILABLE_ERROR,
            Self::BadGateway(_) => BAD_GATEWAY_ERROR,
            Self::GatewayTimeout(_) => GATEWAY_TIMEOUT_ERROR,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: u16,
}

/// `{"error":{"message","type","code"}}` with `status` and `Content-Type: application/json`:
/// the one error shape of the listener, rendered here for the proxy and for hale-api.
pub fn json_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::to_vec(&Envelope {
        error: Body {
            message,
            kind,
            code: status.as_u16(),
        },
    })
    // Serialising three plain fields cannot fail; an empty body would still carry the
    // status, which is what matters most.
    .unwrap_or_default();
    let mut response = (status, Bytes::from(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `error` as the clients of `api` expect it; see the module docs.
pub fn render(api: Api, error: ProxyError) -> Response {
    let message = error.to_string();
    let status = error.status();
    let mut response = error.into_response();
    let body = match api {
        Api::OpenAi => return response,
        Api::Anthropic => serde_json::to_vec(&AnthropicEnvelope {
            kind: "error",
            error: AnthropicBody {
                kind: anthropic_type(status),
                message: &message,
            },
        }),
        Api::Ollama => serde_json::to_vec(&OllamaEnvelope { error: &message }),
    }
    // Plain strings always serialise; an empty body would still carry the status.
    .unwrap_or_default();
    *response.body_mut() = axum::body::Body::from(body);
    response
}

/// Anthropic's `error.type` for a status.
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 413 | 422 => INVALID_REQUEST_ERROR,
        401 => AUTHENTICATION_ERROR,
        403 => "permission_error",
        404 => NOT_FOUND_ERROR,
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

#[derive(Serialize)]
struct AnthropicEnvelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicBody<'a>,
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

#[derive(Serialize)]
struct OllamaEnvelope<'a> {
    error: &'a str,
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status(), self.kind(), &self.to_string());
        let headers = response.headers_mut();
        match &self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unavailable { retry_after, .. } => {
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Self::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn render(e: ProxyError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let (parts, body) = e.into_response().into_parts();
        let bytes = to_bytes(body, 1 << 16).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn renders_openai_shape_with_the_right_headers() {
        let (status, headers, body) = render(ProxyError::Unauthorized).await;
        assert_eq!(status, 401);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "missing or invalid API key",
                "type": "authentication_error",
                "code": 401
            }})
        );

        let (status, headers, body) = render(ProxyError::Unavailable {
            message: "all down".into(),
            retry_after: Duration::from_millis(1500),
        })
        .await;
        assert_eq!(status, 503);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(body["error"]["type"], "service_unavailable_error");

        let (status, _, body) = render(ProxyError::BodyTooLarge { limit: 10 }).await;
        assert_eq!(status, 413);
        assert_eq!(body["error"]["code"], 413);

        let (status, headers, _) = render(ProxyError::MethodNotAllowed {
            method: "GET".into(),
            path: "/v1/chat/completions".into(),
            allow: "POST",
        })
        .await;
        assert_eq!(status, 405);
        assert_eq!(headers[header::ALLOW], "POST");

        let (status, _, body) = render(ProxyError::BadGateway("endpoint 'a' hung up".into())).await;
        assert_eq!(status, 502);
        assert_eq!(body["error"]["type"], "bad_gateway_error");
        assert_eq!(body["error"]["message"], "endpoint 'a' hung up");
        let (status, _, body) = render(ProxyError::GatewayTimeout("slow".into())).await;
        assert_eq!(status, 504);
        assert_eq!(body["error"]["code"], 504);
    }

    async fn shaped(
        api: Api,
        e: ProxyError,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let (parts, body) = super::render(api, e).into_parts();
        let bytes = to_bytes(body, 1 << 16).await.unwrap();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn renders_anthropic_and_ollama_shapes() {
        let (status, headers, body) =
            shaped(Api::Anthropic, ProxyError::ModelNotFound("no m".into())).await;
        assert_eq!(status, 404);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            body,
            serde_json::json!({"type": "error", "error": {"type": "not_found_error", "message": "no m"}})
        );
        let (status, headers, body) = shaped(Api::Anthropic, ProxyError::Unauthorized).await;
        assert_eq!(
            (status.as_u16(), &body["error"]["type"]),
            (401, &serde_json::json!("authentication_error"))
        );
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        for (e, kind) in [
            (ProxyError::BadRequest("x".into()), "invalid_request_error"),
            (
                ProxyError::BodyTooLarge { limit: 1 },
                "invalid_request_error",
            ),
            (ProxyError::BadGateway("x".into()), "api_error"),
            (ProxyError::GatewayTimeout("x".into()), "api_error"),
            (
                ProxyError::Unavailable {
                    message: "x".into(),
                    retry_after: Duration::from_secs(1),
                },
                "overloaded_error",
            ),
        ] {
            let (_, _, body) = shaped(Api::Anthropic, e).await;
            assert_eq!(body["error"]["type"], kind);
        }
        let (status, headers, body) = shaped(
            Api::Ollama,
            ProxyError::Unavailable {
                message: "all down".into(),
                retry_after: Duration::from_secs(3),
            },
        )
        .await;
        assert_eq!(status, 503);
        assert_eq!(headers[header::RETRY_AFTER], "3");
        assert_eq!(body, serde_json::json!({"error": "all down"}));
        let (_, _, body) = shaped(Api::OpenAi, ProxyError::NotFound("gone".into())).await;
        assert_eq!(body["error"]["type"], "not_found_error");
    }
}
