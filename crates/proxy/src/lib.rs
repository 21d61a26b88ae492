//! hale-proxy: carries client traffic to healthy backends.
//!
//! Routes OpenAI-style (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/responses` and its follow-ups by id, any other `POST /v1/...` naming a model, JSON or
//! multipart), Anthropic-style (`/v1/messages`, `/v1/messages/count_tokens`) and Ollama-style
//! (`/api/chat`, `/api/generate`, `/api/embed`, `/api/show`, `/api/embeddings`) requests by the
//! model named in the body, and answers the catalogs (`/v1/models`, `/v1/models/{id}`,
//! `/api/tags`) and Ollama's `/api/ps`, `/api/version` and `/` itself; requests go only to
//! endpoints that are routable and serve that model: highest priority tier first, weighted within it. A connect failure moves the
//! request to the next candidate before the client sees anything and marks the endpoint
//! unhealthy at once (a passive signal through core); an answer `proxy.retry_on` lists (429,
//! 502, 503, 504 by default) is retried once on another endpoint within the retry budget,
//! before any byte reaches the client; a request a backend dropped is never sent again (502
//! if dropped or answered with garbage, 504 past `first_byte_timeout`); a request whose
//! endpoints are all about to recover waits up to `queue_timeout` instead of a 503;
//! streams pass through chunk by chunk and are cut after `idle_timeout` without data.
//! The request path reads core's snapshot lock-free and never waits on Redis.
//!
//! The binary builds one [`Proxy`] from the health store, [`ProxyConfig`] and
//! [`ServerSettings`], merges [`Proxy::router`] into its listener, and gives the api crate the
//! proxy's breaker states and request counts for the status pages.
//!
//! One module per concept: `route` (the proxied routes), `body` (buffering and reading
//! `model`), `auth` (`server.api_keys`), `select` (candidate selection and balancing),
//! `runtime` (per-endpoint live state: outstanding requests, breaker), `upstream` (the
//! HTTP/1.1 client to the backends, driven in the request's own task, and its connection
//! pools), `forward` (the failover and retry loop), `retry` (the retry budget), `queue` (the
//! short wait for an endpoint about to recover), `stream` (the pass-through response body),
//! `tally` (a response body's bookkeeping: claim, outlier watch, duration, idle timer),
//! `hygiene` (headers and request ids), `catalog` (model lists), `generic` (the generic
//! route's path check and multipart `model`), `responses` (response ids → the endpoint that
//! made them), `ollama` (`/api/ps`, `/api/version`, `/`), `error` (Hale's own answers, in each
//! API's shape), `metrics` (the proxy's series and per-model counts), `proxy` (the public entry),
//! `router` (the axum routes) and `worker` (which serving thread the code runs on). Each module's top comment records its decisions.
//!
//! Decisions that span modules:
//! - The upstream side is a small HTTP/1.1 client of our own rather than hyper's pooled
//!   client: measured under `cargo xtask bench proxy`, hyper's client cost a task hand-off
//!   and a client-side `writev` per streamed chunk (see `upstream` for the figures).
//! - A failure on a reused keep-alive connection that the backend cannot have read (the write
//!   failed, the end of input was there at the first look, a reset before any answer) is
//!   retried once on a new connection to the same endpoint and is not held against it. Any
//!   other failure after sending is final for the request: it counts on the breaker and asks
//!   for a prompt probe check, and only connect failures mark the endpoint at once.
//! - Nothing is leaked: the shared state and the per-endpoint runtimes are reference-counted
//!   (one `Arc` clone per request for each, their counts on cache lines of their own), so a
//!   reload's retired runtimes are freed when their last request ends; per-endpoint counters
//!   that every request writes sit on cache lines of their own.
//! - The binary serves connections on several threads, each with its own current-thread
//!   runtime; what belongs to one thread's event loop (idle upstream connections, the count of
//!   requests waiting for an answer) is kept per thread ([`worker`]).

#![cfg_attr(
    feature = "hyper-upstream",
    allow(
        dead_code,
        unused_imports,
        reason = "the A/B build leaves the hand-written client compiled but unused"
    )
)]

pub mod auth;
mod body;
mod catalog;
pub mod config;
pub mod error;
mod forward;
mod generic;
mod hygiene;
pub mod metrics;
mod model_gone;
mod ollama;
mod proxy;
mod queue;
pub mod quiet_sleep;
mod responses;
mod retry;
pub mod route;
mod router;
mod runtime;
mod select;
#[cfg(not(feature = "hyper-upstream"))]
mod stream;
/// With the `hyper-upstream` feature the body comes from the A/B variant of the upstream
/// client (see `upstream::hyper_client`).
#[cfg(feature = "hyper-upstream")]
mod stream {
    pub use crate::upstream::hyper_client::UpstreamBody;
}
mod tally;
mod upstream;
pub mod worker;

pub use config::{Balancer, ProxyConfig, RetryBudget, RetryOn};
pub use error::{ProxyError, json_error};
pub use hygiene::{X_HALE_ENDPOINT, X_REQUEST_ID};
pub use ollama::BACKEND_REJECTED_TOTAL;
pub use proxy::{Proxy, ServerSettings};
pub use quiet_sleep::QuietSleep;
pub use route::{Api, Route};
pub use select::DEGRADED_WEIGHT_FACTOR;
