//! The model-routed routes Hale proxies, as one small enum: which path a client calls, which
//! backends may answer it, which API's error shape its clients expect ([`Api`]), and the path
//! the request is sent to upstream.
//!
//! The upstream path is the route's own path joined to the endpoint's base URL; only
//! [`Route::Generic`] (any other `POST /v1/...` naming a `model`) relays the path the client
//! wrote, and only after `generic::clean_path` accepted it (no `..`, no empty or encoded
//! segments, a short plain ASCII path under `/v1/`), still joined to a configured endpoint's
//! base URL: the client picks a route, Hale picks the backend, so no request can reach an
//! address that is not configured. The catalog routes (`GET /v1/models`, `GET /api/tags`, …)
//! are not listed here because they are answered by Hale itself.

/// A proxied `POST` route; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/completions`.
    Completions,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// Ollama `POST /api/chat`.
    OllamaChat,
    /// Ollama `POST /api/generate`.
    OllamaGenerate,
    /// Ollama `POST /api/embed`.
    OllamaEmbed,
    /// OpenAI `POST /v1/responses` (its follow-ups by id go to the endpoint that made it).
    Responses,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Ollama `POST /api/show`.
    OllamaShow,
    /// Ollama's legacy `POST /api/embeddings`.
    OllamaEmbeddings,
    /// Any other `POST /v1/...` whose body names a `model` (JSON, or a multipart form field):
    /// rerank, score, tokenize, audio, images. The upstream path is the client's, checked.
    Generic,
}

/// Which API a route belongs to: the shape its clients expect Hale's own errors in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// `{"error":{"message","type","code"}}`.
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`.
    Anthropic,
    /// `{"error":"<message>"}`.
    Ollama,
}

impl Api {
    /// The API a request path belongs to (for answers on paths no route knows).
    pub fn of_path(path: &str) -> Self {
        if path == "/api" || path.starts_with("/api/") {
            Api::Ollama
        } else if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Api::Anthropic
        } else {
            Api::OpenAi
        }
    }
}

impl Route {
    /// Every route, in [`index`](Self::index) order.
    pub const ALL: [Route; 12] = [
        Route::ChatCompletions,
        Route::Completions,
        Route::Embeddings,
        Route::OllamaChat,
        Route::OllamaGenerate,
        Route::OllamaEmbed,
        Route::Responses,
        Route::Messages,
        Route::CountTokens,
        Route::OllamaShow,
        Route::OllamaEmbeddings,
        Route::Generic,
    ];

    /// The path, the same on Hale and upstream; for [`Route::Generic`] a label (`/v1/*`,
    /// what outlier detection and logs name), the real path being the client's.
    pub const fn path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::OllamaChat => "/api/chat",
            Route::OllamaGenerate => "/api/generate",
            Route::OllamaEmbed => "/api/embed",
            Route::Responses => "/v1/responses",
            Route::Messages => "/v1/messages",
            Route::CountTokens => "/v1/messages/count_tokens",
            Route::OllamaShow => "/api/show",
            Route::OllamaEmbeddings => "/api/embeddings",
            Route::Generic => "/v1/*",
        }
    }

    /// The API whose error shape this route answers in.
    pub const fn api(self) -> Api {
        match self {
            Route::OllamaChat
            | Route::OllamaGenerate
            | Route::OllamaEmbed
            | Route::OllamaShow
            | Route::OllamaEmbeddings => Api::Ollama,
            Route::Messages | Route::CountTokens => Api::Anthropic,
            Route::ChatCompletions
            | Route::Completions
            | Route::Embeddings
            | Route::Responses
            | Route::Generic => Api::OpenAi,
        }
    }

    /// The fixed routes the router registers by path (all but [`Route::Generic`]).
    pub fn fixed() -> impl Iterator<Item = Route> {
        Route::ALL.into_iter().filter(|r| *r != Route::Generic)
    }

    /// Whether only `ollama` endpoints can answer it (the Ollama-native API); OpenAI routes
    /// go to endpoints of any type.
    pub const fn ollama_only(self) -> bool {
        matches!(self.api(), Api::Ollama)
    }

    /// Whether the answer streams when the body does not say `stream`: Ollama's native chat
    /// and generate stream unless told not to, everything else answers in one piece.
    pub const fn streams_by_default(self) -> bool {
        matches!(self, Route::OllamaChat | Route::OllamaGenerate)
    }

    /// A dense index, for per-route tables.
    pub const fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_dense_and_paths_distinct() {
        for (i, r) in Route::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut paths: Vec<_> = Route::ALL.iter().map(|r| r.path()).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), Route::ALL.len());
        assert!(Route::OllamaEmbed.ollama_only() && !Route::Embeddings.ollama_only());
        assert!(Route::OllamaShow.ollama_only() && !Route::Messages.ollama_only());
        assert_eq!(Route::CountTokens.api(), Api::Anthropic);
        assert_eq!(Api::of_path("/api/nope"), Api::Ollama);
        assert_eq!(Api::of_path("/v1/messages/x"), Api::Anthropic);
        assert_eq!(Api::of_path("/v1/messagesx"), Api::OpenAi);
        assert_eq!(Route::fixed().count(), Route::ALL.len() - 1);
    }
}
