//! The four server flavours mockllm imitates, the paths each one really serves, and the
//! fixed bodies of their health and model-list answers.
//!
//! Paths are resolved in two steps: [`Known::from_path`] maps a request path to one of the
//! paths any flavour knows (that index doubles as the slot of its hit counter, so counting a
//! known path is one atomic add), then [`route`] says what the chosen flavour does with it.
//! A path that some other flavour serves but this one does not answers 404, as the real
//! server would. The bodies that never change (health, model lists, versions) are rendered
//! once at start-up into [`Bytes`], so answering them is a reference-count increment.

use bytes::Bytes;
use http::Method;
use serde::Serialize;

/// Which real server mockllm pretends to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// api.openai.com and OpenAI-compatible servers without a health path.
    Openai,
    /// Ollama: `/` health text, `/api/*` native routes plus the OpenAI-compatible ones.
    Ollama,
    /// vLLM: `/health` with an empty 200, `/v1/models`, OpenAI routes.
    Vllm,
    /// llama.cpp's `llama-server`: `/health` JSON that turns 503 while a model loads.
    Llamacpp,
}

impl Flavor {
    /// The `owned_by` value this flavour puts into its OpenAI model list.
    fn owned_by(self) -> &'static str {
        match self {
            Flavor::Openai => "openai",
            Flavor::Ollama => "library",
            Flavor::Vllm => "vllm",
            Flavor::Llamacpp => "llamacpp",
        }
    }
}

/// Every non-admin path that at least one flavour serves. The discriminant is the index of
/// the path's hit counter in the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Known {
    Root,
    Health,
    V1Health,
    Ping,
    Version,
    Models,
    V1Models,
    ApiTags,
    ApiVersion,
    ChatCompletions,
    Completions,
    Embeddings,
    ApiChat,
    ApiGenerate,
    ApiEmbed,
    Responses,
    Messages,
    CountTokens,
    Rerank,
    Transcriptions,
    ApiShow,
    ApiEmbeddings,
    ApiPs,
}

impl Known {
    /// All known paths, in discriminant order.
    pub const ALL: [Known; 23] = [
        Known::Root,
        Known::Health,
        Known::V1Health,
        Known::Ping,
        Known::Version,
        Known::Models,
        Known::V1Models,
        Known::ApiTags,
        Known::ApiVersion,
        Known::ChatCompletions,
        Known::Completions,
        Known::Embeddings,
        Known::ApiChat,
        Known::ApiGenerate,
        Known::ApiEmbed,
        Known::Responses,
        Known::Messages,
        Known::CountTokens,
        Known::Rerank,
        Known::Transcriptions,
        Known::ApiShow,
        Known::ApiEmbeddings,
        Known::ApiPs,
    ];

    /// The known path a request path names, if any (exact match, no trailing slash games).
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/" => Known::Root,
            "/health" => Known::Health,
            "/v1/health" => Known::V1Health,
            "/ping" => Known::Ping,
            "/version" => Known::Version,
            "/models" => Known::Models,
            "/v1/models" => Known::V1Models,
            "/api/tags" => Known::ApiTags,
            "/api/version" => Known::ApiVersion,
            "/v1/chat/completions" => Known::ChatCompletions,
            "/v1/completions" => Known::Completions,
            "/v1/embeddings" => Known::Embeddings,
            "/api/chat" => Known::ApiChat,
            "/api/generate" => Known::ApiGenerate,
            "/api/embed" => Known::ApiEmbed,
            "/v1/responses" => Known::Responses,
            "/v1/messages" => Known::Messages,
            "/v1/messages/count_tokens" => Known::CountTokens,
            "/v1/rerank" => Known::Rerank,
            "/v1/audio/transcriptions" => Known::Transcriptions,
            "/api/show" => Known::ApiShow,
            "/api/embeddings" => Known::ApiEmbeddings,
            "/api/ps" => Known::ApiPs,
            _ => return None,
        })
    }

    /// The path itself, as counted in `/__stats`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Known::Root => "/",
            Known::Health => "/health",
            Known::V1Health => "/v1/health",
            Known::Ping => "/ping",
            Known::Version => "/version",
            Known::Models => "/models",
            Known::V1Models => "/v1/models",
            Known::ApiTags => "/api/tags",
            Known::ApiVersion => "/api/version",
            Known::ChatCompletions => "/v1/chat/completions",
            Known::Completions => "/v1/completions",
            Known::Embeddings => "/v1/embeddings",
            Known::ApiChat => "/api/chat",
            Known::ApiGenerate => "/api/generate",
            Known::ApiEmbed => "/api/embed",
            Known::Responses => "/v1/responses",
            Known::Messages => "/v1/messages",
            Known::CountTokens => "/v1/messages/count_tokens",
            Known::Rerank => "/v1/rerank",
            Known::Transcriptions => "/v1/audio/transcriptions",
            Known::ApiShow => "/api/show",
            Known::ApiEmbeddings => "/api/embeddings",
            Known::ApiPs => "/api/ps",
        }
    }

    /// The slot of this path's hit counter.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The admin paths, which work in every mode and are never counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    Stats,
    Reset,
    Mode,
    Models,
}

impl Admin {
    /// The admin path a request path names, if any.
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/__stats" => Some(Admin::Stats),
            "/__reset" => Some(Admin::Reset),
            "/__mode" => Some(Admin::Mode),
            "/__models" => Some(Admin::Models),
            _ => None,
        }
    }
}

/// What a flavour does with a known path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Ollama's `GET /`: `Ollama is running`.
    OllamaRoot,
    /// The flavour's health answer (vLLM: empty 200; llama.cpp: `{"status":"ok"}`).
    Health,
    /// The OpenAI model list.
    ModelList,
    /// Ollama's `GET /api/tags`.
    OllamaTags,
    /// Ollama's `GET /api/version`.
    OllamaVersion,
    /// vLLM's `GET /version`.
    VllmVersion,
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// Ollama's `POST /api/chat`.
    OllamaChat,
    /// Ollama's `POST /api/generate`.
    OllamaGenerate,
    /// Ollama's `POST /api/embed`.
    OllamaEmbed,
    /// OpenAI's `POST /v1/responses` (plain or SSE).
    Responses,
    /// Anthropic's `POST /v1/messages` (plain or SSE).
    Messages,
    /// Anthropic's `POST /v1/messages/count_tokens`.
    CountTokens,
    /// `POST /v1/rerank` (vLLM, llama.cpp).
    Rerank,
    /// `POST /v1/audio/transcriptions`, a multipart upload.
    Transcriptions,
    /// Ollama's `POST /api/show`.
    OllamaShow,
    /// Ollama's legacy `POST /api/embeddings`.
    OllamaEmbeddings,
    /// Ollama's `GET /api/ps`.
    OllamaPs,
}

impl Handler {
    /// Whether it generates (chat, completion, embeddings): what `generation_only` fails.
    pub fn generates(self) -> bool {
        matches!(
            self,
            Self::Chat
                | Self::Completion
                | Self::Embeddings
                | Self::OllamaChat
                | Self::OllamaGenerate
                | Self::OllamaEmbed
                | Self::Responses
                | Self::Messages
                | Self::CountTokens
                | Self::Rerank
                | Self::Transcriptions
                | Self::OllamaShow
                | Self::OllamaEmbeddings
        )
    }
}

impl Handler {
    /// The one method this handler answers; anything else gets 405.
    pub fn method(self) -> Method {
        match self {
            Handler::OllamaRoot
            | Handler::Health
            | Handler::ModelList
            | Handler::OllamaTags
            | Handler::OllamaVersion
            | Handler::OllamaPs
            | Handler::VllmVersion => Method::GET,
            Handler::Chat
            | Handler::Completion
            | Handler::Embeddings
            | Handler::OllamaChat
            | Handler::OllamaGenerate
            | Handler::OllamaEmbed
            | Handler::Responses
            | Handler::Messages
            | Handler::CountTokens
            | Handler::Rerank
            | Handler::Transcriptions
            | Handler::OllamaShow
            | Handler::OllamaEmbeddings => Method::POST,
        }
    }
}

/// What `flavor` serves at `known`; `None` means the real server has no such path (404).
pub fn route(flavor: Flavor, known: Known) -> Option<Handler> {
    use Flavor::{Llamacpp, Ollama, Openai, Vllm};
    Some(match (flavor, known) {
        (Ollama, Known::Root) => Handler::OllamaRoot,
        (Vllm | Llamacpp, Known::Health) => Handler::Health,
        (Llamacpp, Known::V1Health) => Handler::Health,
        (Vllm, Known::Ping) => Handler::Health,
        (Vllm, Known::Version) => Handler::VllmVersion,
        (Llamacpp, Known::Models) => Handler::ModelList,
        (_, Known::V1Models) => Handler::ModelList,
        (Ollama, Known::ApiTags) => Handler::OllamaTags,
        (Ollama, Known::ApiVersion) => Handler::OllamaVersion,
        (_, Known::ChatCompletions) => Handler::Chat,
        (_, Known::Completions) => Handler::Completion,
        (_, Known::Embeddings) => Handler::Embeddings,
        (Ollama, Known::ApiChat) => Handler::OllamaChat,
        (Ollama, Known::ApiGenerate) => Handler::OllamaGenerate,
        (Ollama, Known::ApiEmbed) => Handler::OllamaEmbed,
        // Every flavour's server has grown the Responses API (llama.cpp, vLLM, Ollama,
        // LiteLLM in front of OpenAI).
        (_, Known::Responses) => Handler::Responses,
        // Anthropic's API: vLLM, llama.cpp and LiteLLM (the `openai` flavour) serve it.
        (Vllm | Llamacpp | Openai, Known::Messages) => Handler::Messages,
        (Vllm | Llamacpp | Openai, Known::CountTokens) => Handler::CountTokens,
        (Vllm | Llamacpp, Known::Rerank) => Handler::Rerank,
        (Vllm | Openai, Known::Transcriptions) => Handler::Transcriptions,
        (Ollama, Known::ApiShow) => Handler::OllamaShow,
        (Ollama, Known::ApiEmbeddings) => Handler::OllamaEmbeddings,
        (Ollama, Known::ApiPs) => Handler::OllamaPs,
        _ => return None,
    })
}

/// llama.cpp's exact answer while it loads a model (field order included).
pub const LLAMACPP_LOADING: &str =
    r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;
/// Every other flavour's answer while "loading", in the usual error shape.
pub const GENERIC_LOADING: &str =
    r#"{"error":{"message":"Loading model","type":"unavailable_error","code":503}}"#;
/// The body of a 404 for a path this flavour does not serve.
pub const NOT_FOUND: &str = r#"{"error":{"message":"not found","type":"not_found","code":404}}"#;

/// The fixed bodies, rendered once at start-up.
#[derive(Debug)]
pub struct Bodies {
    /// The OpenAI model list (`/v1/models`).
    pub model_list: Bytes,
    /// Ollama's `/api/tags`.
    pub ollama_tags: Bytes,
    /// Ollama's `/api/version`.
    pub ollama_version: Bytes,
    /// vLLM's `/version`.
    pub vllm_version: Bytes,
    /// The health body (empty for vLLM, whose `/health` answers an empty 200).
    pub health: Bytes,
    /// The loading body for this flavour.
    pub loading: Bytes,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelEntry<'a>>,
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct Tags<'a> {
    models: Vec<Tag<'a>>,
}

#[derive(Serialize)]
struct Tag<'a> {
    name: &'a str,
    model: &'a str,
    modified_at: &'static str,
    size: u64,
    digest: String,
    details: TagDetails,
}

#[derive(Serialize)]
struct TagDetails {
    format: &'static str,
    family: &'static str,
    parameter_size: &'static str,
    quantization_level: &'static str,
}

impl Bodies {
    /// Renders the fixed bodies of `flavor` serving `models`.
    pub fn new(flavor: Flavor, models: &[String]) -> anyhow::Result<Self> {
        let model_list = ModelList {
            object: "list",
            data: models
                .iter()
                .map(|id| ModelEntry {
                    id,
                    object: "model",
                    created: 0,
                    owned_by: flavor.owned_by(),
                })
                .collect(),
        };
        let tags = Tags {
            models: models
                .iter()
                .map(|name| Tag {
                    name,
                    model: name,
                    modified_at: "2024-01-01T00:00:00Z",
                    size: 1,
                    digest: fake_digest(name),
                    details: TagDetails {
                        format: "gguf",
                        family: "llama",
                        parameter_size: "1B",
                        quantization_level: "Q4_0",
                    },
                })
                .collect(),
        };
        let health: &'static str = match flavor {
            Flavor::Llamacpp => r#"{"status":"ok"}"#,
            Flavor::Openai | Flavor::Ollama | Flavor::Vllm => "",
        };
        let loading = match flavor {
            Flavor::Llamacpp => LLAMACPP_LOADING,
            Flavor::Openai | Flavor::Ollama | Flavor::Vllm => GENERIC_LOADING,
        };
        Ok(Bodies {
            model_list: serde_json::to_vec(&model_list)?.into(),
            ollama_tags: serde_json::to_vec(&tags)?.into(),
            ollama_version: Bytes::from_static(br#"{"version":"0.5.0"}"#),
            vllm_version: Bytes::from_static(br#"{"version":"0.6.3"}"#),
            health: Bytes::from_static(health.as_bytes()),
            loading: Bytes::from_static(loading.as_bytes()),
        })
    }
}

/// A stable, well-formed `sha256:` digest derived from the model name, so that Ollama clients
/// which parse digests see 64 hex digits and two models never share one.
fn fake_digest(name: &str) -> String {
    // FNV-1a, then a splitmix-style sequence from it: not a real hash of anything, only
    // deterministic and distinct per name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for _ in 0..4 {
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.push_str(&format!("{z:016x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_path_round_trips() {
        for (i, k) in Known::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
            assert_eq!(Known::from_path(k.as_str()), Some(*k));
        }
    }

    #[test]
    fn digests_are_sha256_shaped() {
        let d = fake_digest("llama3");
        assert_eq!(d.len(), 71);
        assert!(d["sha256:".len()..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(d, fake_digest("llama4"));
    }
}
