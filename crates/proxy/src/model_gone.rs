//! Whether a backend's 404 says "this model is not here" (the backend did not act on the
//! request), as opposed to any other 404 (an unknown path, a missing file, ...), which is
//! relayed as it is.
//!
//! Only a small body is looked at: an answer framed by `Content-Length` of at most
//! [`MAX_BODY`] bytes (a chunked or read-until-close 404 is relayed untouched, never
//! parsed), read whole within the caller's deadline. The shapes recognised:
//! - OpenAI, vLLM, LiteLLM: `{"error":{"code":"model_not_found",…}}`, or an `error.message`
//!   (vLLM also a top-level `message`) such as "The model `x` does not exist.";
//! - Ollama: `{"error":"model 'x' not found"}` (with "try pulling it first" on older ones);
//! - llama.cpp (router mode): `{"error":{"code":404,"message":"model not found",…}}`.
//!
//! A message counts when it mentions "model" and says "does not exist" or "not found", or
//! the `code`/`type` is `model_not_found`. Anything else — garbage, JSON of another shape,
//! a text page — is not a model-not-found.

use serde::Deserialize;

/// The largest 404 body looked at (bytes); a bigger one is relayed untouched.
pub const MAX_BODY: u64 = 16 * 1024;

/// Whether `body`, a 404's, says the model is not served there; see the module docs.
pub fn says_model_not_found(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Answer {
        error: Option<serde_json::Value>,
        message: Option<serde_json::Value>,
        code: Option<serde_json::Value>,
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    if body.len() as u64 > MAX_BODY {
        return false;
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return false;
    };
    let (message, code, kind) = match answer.error {
        Some(serde_json::Value::String(message)) => (Some(message), None, None),
        Some(serde_json::Value::Object(error)) => (
            error
                .get("message")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            error.get("code").cloned(),
            error.get("type").cloned(),
        ),
        _ => (
            answer
                .message
                .as_ref()
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
            answer.code,
            answer.kind,
        ),
    };
    let named = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .and_then(serde_json::Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("model_not_found"))
    };
    if named(&code) || named(&kind) {
        return true;
    }
    message.is_some_and(|m| {
        let m = m.to_ascii_lowercase();
        m.contains("model") && (m.contains("does not exist") || m.contains("not found"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backends_shapes_are_recognised() {
        for body in [
            // OpenAI
            r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#,
            // vLLM, old and new
            r#"{"object":"error","message":"The model `m` does not exist.","type":"NotFoundError","param":null,"code":404}"#,
            r#"{"error":{"message":"The model `m` does not exist.","type":"NotFoundError","param":"model","code":404}}"#,
            // Ollama
            r#"{"error":"model 'llama9' not found"}"#,
            r#"{"error":"model \"llama9\" not found, try pulling it first"}"#,
            // llama.cpp router
            r#"{"error":{"code":404,"message":"model not found","type":"not_found_error"}}"#,
            // mockllm, LiteLLM-like
            r#"{"error":{"message":"model 'x' not found","type":"model_not_found","code":404}}"#,
        ] {
            assert!(says_model_not_found(body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn other_404s_and_garbage_are_not() {
        for body in [
            r#"{"error":{"message":"not found","type":"not_found","code":404}}"#,
            r#"{"detail":"Not Found"}"#,
            r#"{"error":"file not found"}"#,
            "404 page not found",
            "",
            "{",
            "\u{0}\u{1}garbage\u{ff}",
            r#"{"error":["model not found"]}"#,
            r#"{"error":{"message":17}}"#,
            "[1,2,3]",
        ] {
            assert!(!says_model_not_found(body.as_bytes()), "{body}");
        }
        let huge = format!(
            r#"{{"error":"model not found{}"}}"#,
            " ".repeat(MAX_BODY as usize)
        );
        assert!(!says_model_not_found(huge.as_bytes()), "too big to look at");
        let deep = "[".repeat(100_000);
        assert!(!says_model_not_found(deep.as_bytes()));
    }
}
