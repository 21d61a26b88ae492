//! One probe type per kind of backend: how it says it is healthy and which models it serves.
//!
//! Each probe judges the answer to the endpoint's health URL and, where the type can list
//! models, reads the answer to its model URL. Anything unexpected — a wrong status, a body
//! that is not what this server sends, JSON of the wrong shape — is a failed check with a
//! reason, never a panic. The defaults each probe implies (paths, expected bodies) are
//! documented at its `new`; the paths themselves live in [`hale_core::EndpointKind`].

use crate::client::ProbeResponse;
use hale_core::{CheckResult, EndpointKind};
use http::header;
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How one type of server shows health and lists models.
pub trait Probe: Send + Sync + fmt::Debug {
    fn kind(&self) -> EndpointKind;

    /// Judges the health-check answer: `Ok` when the server is serving.
    fn judge(&self, response: &ProbeResponse) -> Result<(), CheckResult> {
        expect_success(response)
    }

    /// Reads the model names from the model-list answer; `Err` is a sentence for operators.
    fn models(&self, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
        openai_models(body)
    }
}

/// The probe for `kind`.
pub fn probe_for(kind: EndpointKind) -> Arc<dyn Probe> {
    match kind {
        EndpointKind::Ollama => Arc::new(OllamaProbe::new()),
        EndpointKind::Lmstudio => Arc::new(LmStudioProbe::new()),
        EndpointKind::Vllm => Arc::new(VllmProbe::new()),
        EndpointKind::Llamacpp => Arc::new(LlamaCppProbe::new()),
        EndpointKind::Sglang => Arc::new(SglangProbe::new()),
        EndpointKind::Tgi => Arc::new(TgiProbe::new()),
        EndpointKind::Openai => Arc::new(OpenAiProbe::new()),
        EndpointKind::Http => Arc::new(HttpProbe::new()),
    }
}

// === impl OllamaProbe ===

/// Ollama.
#[derive(Debug, Clone, Copy, Default)]
pub struct OllamaProbe;

impl OllamaProbe {
    /// Health: `GET /` must answer 200 with "Ollama is running". Models: `GET /api/tags`,
    /// `{"models":[{"name":…}]}`.
    pub fn new() -> Self {
        Self
    }
}

impl Probe for OllamaProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Ollama
    }

    fn judge(&self, response: &ProbeResponse) -> Result<(), CheckResult> {
        expect_success(response)?;
        if contains(&response.body, b"Ollama is running") {
            Ok(())
        } else {
            Err(CheckResult::BadResponse {
                message: format!(
                    "expected \"Ollama is running\", got {}",
                    excerpt(&response.body)
                ),
            })
        }
    }

    fn models(&self, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
        #[derive(Deserialize)]
        struct Tags {
            models: Vec<Tag>,
        }
        // Ollama sends both `name` and `model` (the same value); older versions only `name`.
        #[derive(Deserialize)]
        struct Tag {
            name: Option<String>,
            model: Option<String>,
        }
        let tags: Tags = parse_json(body, "an Ollama tag list")?;
        tags.models
            .into_iter()
            .map(|t| {
                t.name
                    .or(t.model)
                    .map(Arc::from)
                    .ok_or_else(|| "an Ollama tag without a name".to_owned())
            })
            .collect()
    }
}

// === impl LmStudioProbe ===

/// LM Studio.
#[derive(Debug, Clone, Copy, Default)]
pub struct LmStudioProbe;

impl LmStudioProbe {
    /// Health and models: `GET /v1/models`, 200 with an OpenAI model list.
    pub fn new() -> Self {
        Self
    }
}

impl Probe for LmStudioProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Lmstudio
    }

    fn judge(&self, response: &ProbeResponse) -> Result<(), CheckResult> {
        judge_model_list(response)
    }
}

// === impl VllmProbe ===

/// vLLM.
#[derive(Debug, Clone, Copy, Default)]
pub struct VllmProbe;

impl VllmProbe {
    /// Health: `GET /health`, any 2xx (vLLM answers 200 with an empty body). Models:
    /// `GET /v1/models`, an OpenAI model list.
    pub fn new() -> Self {
        Self
    }
}

impl Probe for VllmProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Vllm
    }
}

// === impl LlamaCppProbe ===

/// llama.cpp's `llama-server`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LlamaCppProbe;

impl LlamaCppProbe {
    /// Health: `GET /health`, 200 `{"status":"ok"}`; 503 with "Loading model" (the server's
    /// `{"error":{"code":503,"message":"Loading model",…}}`) means loading, which is not a
    /// failure. Models: `GET /v1/models`.
    pub fn new() -> Self {
        Self
    }
}

impl Probe for LlamaCppProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Llamacpp
    }

    fn judge(&self, response: &ProbeResponse) -> Result<(), CheckResult> {
        if response.status == http::StatusCode::SERVICE_UNAVAILABLE
            && contains_ignore_case(&response.body, b"loading model")
        {
            return Err(CheckResult::Loading {
                message: "Loading model".to_owned(),
            });
        }
        expect_success(response)
    }
}

// === impl SglangProbe ===

/// SGLang.
#[derive(Debug, Clone, Copy, Default)]
pub struct SglangProbe;

impl SglangProbe {
    /// Health: `GET /health`, any 2xx; a 503 whose body speaks of loading, starting or warming
    /// up means the server is starting. Models: `GET /v1/models`.
    pub fn new() -> Self {
        Self
    }
}

impl Probe for SglangProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Sglang
    }

    fn judge(&self, response: &ProbeResponse) -> Result<(), CheckResult> {
        if response.status == http::StatusCode::SERVICE_UNAVAILABLE
            && [&b"loading"[..], b"starting", b"warm"]
                .iter()
                .any(|w| contains_ignore_case(&response.body, w))
        {
            return Err(CheckResult::Loading {
                message: excerpt(&response.body),
            });
        }
        expect_success(response)
    }
}

// === impl TgiProbe ===

/// Hugging Face Text Generation Inference.
#[derive(Debug, Clone, Copy, Default)]
pub struct TgiProbe;

impl TgiProbe {
    /// Health: `GET /health`, any 2xx. Model: `GET /info`, `{"model_id":…}` (TGI serves one).
    pub fn new() -> Self {
        Self
    }
}

impl Probe for TgiProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Tgi
    }

    fn models(&self, body: &[u8]) -> Result<Vec<Arc<str>>, String> {
        #[derive(Deserialize)]
        struct Info {
            model_id: String,
        }
        let info: Info = parse_json(body, "a TGI /info object")?;
        Ok(vec![Arc::from(info.model_id)])
    }
}

// === impl OpenAiProbe ===

/// Any OpenAI-compatible server.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiProbe;

impl OpenAiProbe {
    /// Health and models: `GET /v1/models`, 200 with `{"data":[{"id":…}]}`.
    pub fn new() -> Self {
        Self
    }
}

impl Probe for OpenAiProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Openai
    }

    fn judge(&self, response: &ProbeResponse) -> Result<(), CheckResult> {
        judge_model_list(response)
    }
}

// === impl HttpProbe ===

/// A plain HTTP service.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpProbe;

impl HttpProbe {
    /// Health: `GET` the configured path (default `/`), any 2xx. No model list.
    pub fn new() -> Self {
        Self
    }
}

impl Probe for HttpProbe {
    fn kind(&self) -> EndpointKind {
        EndpointKind::Http
    }

    fn models(&self, _body: &[u8]) -> Result<Vec<Arc<str>>, String> {
        Ok(Vec::new())
    }
}

// === shared judgements ===

/// 2xx passes; anything else is an HTTP failure (429 with its Retry-After).
pub fn expect_success(response: &ProbeResponse) -> Result<(), CheckResult> {
    if response.status.is_success() {
        return Ok(());
    }
    let retry_after = response
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Err(CheckResult::Http {
        status: response.status.as_u16(),
        retry_after,
        message: excerpt(&response.body),
    })
}

fn judge_model_list(response: &ProbeResponse) -> Result<(), CheckResult> {
    expect_success(response)?;
    openai_models(&response.body)
        .map(drop)
        .map_err(|message| CheckResult::BadResponse { message })
}

/// Reads an OpenAI model list: `{"data":[{"id":…}]}`.
pub fn openai_models(body: &[u8]) -> Result<Vec<Arc<str>>, String> {
    #[derive(Deserialize)]
    struct List {
        data: Vec<Model>,
    }
    #[derive(Deserialize)]
    struct Model {
        id: String,
    }
    let list: List = parse_json(body, "an OpenAI model list")?;
    Ok(list.data.into_iter().map(|m| Arc::from(m.id)).collect())
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("expected {what} ({e}), got {}", excerpt(body)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The start of a body, printable, for error messages.
pub fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > MAX {
        s.push('…');
    }
    if s.trim().is_empty() {
        "an empty body".to_owned()
    } else {
        format!("{:?}", s.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, StatusCode};

    fn resp(status: u16, body: &'static str) -> ProbeResponse {
        ProbeResponse {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[test]
    fn ollama() {
        let p = OllamaProbe::new();
        assert!(p.judge(&resp(200, "Ollama is running")).is_ok());
        assert!(matches!(
            p.judge(&resp(200, "<html>nginx</html>")),
            Err(CheckResult::BadResponse { .. })
        ));
        let models = p
            .models(br#"{"models":[{"name":"llama3:latest","model":"llama3:latest","size":1},{"model":"qwen"}]}"#)
            .unwrap();
        assert_eq!(models, [Arc::from("llama3:latest"), Arc::from("qwen")]);
        assert!(p.models(b"garbage").is_err());
    }

    #[test]
    fn llamacpp_loading_is_not_a_failure() {
        let p = LlamaCppProbe::new();
        assert!(p.judge(&resp(200, r#"{"status":"ok"}"#)).is_ok());
        let loading =
            r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;
        assert!(matches!(
            p.judge(&resp(503, loading)),
            Err(CheckResult::Loading { .. })
        ));
        assert!(matches!(
            p.judge(&resp(503, "overloaded")),
            Err(CheckResult::Http { status: 503, .. })
        ));
    }

    #[test]
    fn openai_list_must_parse() {
        let p = OpenAiProbe::new();
        assert!(
            p.judge(&resp(200, r#"{"object":"list","data":[{"id":"gpt"}]}"#))
                .is_ok()
        );
        assert!(matches!(
            p.judge(&resp(200, r#"{"data":"nope"}"#)),
            Err(CheckResult::BadResponse { .. })
        ));
        assert!(matches!(
            p.judge(&resp(401, "")),
            Err(CheckResult::Http { status: 401, .. })
        ));
    }

    #[test]
    fn rate_limit_carries_retry_after() {
        let mut r = resp(429, "slow down");
        r.headers
            .insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        match VllmProbe::new().judge(&r) {
            Err(CheckResult::Http {
                status: 429,
                retry_after,
                ..
            }) => assert_eq!(retry_after, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tgi_and_sglang() {
        assert_eq!(
            TgiProbe::new()
                .models(br#"{"model_id":"bigcode/starcoder"}"#)
                .unwrap(),
            [Arc::from("bigcode/starcoder")]
        );
        assert!(matches!(
            SglangProbe::new().judge(&resp(503, "server is starting")),
            Err(CheckResult::Loading { .. })
        ));
    }

    #[test]
    fn garbage_never_panics() {
        let bodies: [&[u8]; 5] = [b"", b"\xff\xfe\x00", b"{", b"[]", &[0u8; 300]];
        for kind in EndpointKind::ALL {
            let p = probe_for(kind);
            for body in bodies {
                let r = ProbeResponse {
                    status: StatusCode::OK,
                    headers: HeaderMap::new(),
                    body: Bytes::copy_from_slice(body),
                };
                let _ = p.judge(&r);
                let _ = p.models(body);
            }
        }
        assert_eq!(excerpt(b""), "an empty body");
    }
}
