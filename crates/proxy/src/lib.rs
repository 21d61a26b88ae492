//! hale-proxy: carries client traffic to healthy backends.
//!
//! Routes OpenAI-style (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/models`) and Ollama-style (`/api/chat`, `/api/generate`, `/api/embed`, `/api/tags`)
//! requests by the model named in the body, only to endpoints that are routable and serve that
//! model: highest priority tier first, weighted within it. A connection failure moves the
//! request to the next candidate before the client sees anything and marks the endpoint
//! unhealthy at once (a passive signal through core); streams pass through chunk by chunk.
//! The request path reads core's snapshot lock-free and never waits on Redis.
//!
//! Today the crate holds its configuration section; routing arrives with the proxy work.

pub mod config;

pub use config::{Balancer, ProxyConfig};
