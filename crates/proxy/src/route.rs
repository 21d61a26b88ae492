//! The generation routes Hale proxies, as one small enum: which path a client calls, which
//! backends may answer it, and the path the request is sent to upstream.
//!
//! The upstream path is always the route's own path joined to the endpoint's base URL, never
//! anything the client wrote: the client picks a route, Hale picks the backend, so no request
//! can reach an address that is not configured. The catalog routes (`GET /v1/models`,
//! `GET /api/tags`) are not listed here because they are answered by Hale itself.

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
}

impl Route {
    /// Every route, in [`index`](Self::index) order.
    pub const ALL: [Route; 6] = [
        Route::ChatCompletions,
        Route::Completions,
        Route::Embeddings,
        Route::OllamaChat,
        Route::OllamaGenerate,
        Route::OllamaEmbed,
    ];

    /// The path, the same on Hale and upstream.
    pub const fn path(self) -> &'static str {
        match self {
            Route::ChatCompletions => "/v1/chat/completions",
            Route::Completions => "/v1/completions",
            Route::Embeddings => "/v1/embeddings",
            Route::OllamaChat => "/api/chat",
            Route::OllamaGenerate => "/api/generate",
            Route::OllamaEmbed => "/api/embed",
        }
    }

    /// Whether only `ollama` endpoints can answer it (the Ollama-native API); OpenAI routes
    /// go to endpoints of any type.
    pub const fn ollama_only(self) -> bool {
        matches!(
            self,
            Route::OllamaChat | Route::OllamaGenerate | Route::OllamaEmbed
        )
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
    }
}
