//! mockllm: a mock LLM server for Hale's tests, demos and benchmarks (DESIGN.md §7).
//!
//! It imitates one server flavour at a time — OpenAI, Ollama, vLLM or llama.cpp — with that
//! server's real health and model-list paths and bodies, OpenAI and Ollama chat answers in
//! one piece or streamed, hit counters (`GET /__stats`) and failure modes switched at run
//! time (`POST /__mode`, `POST /__reset`). Once listening it prints exactly one line,
//! `mockllm listening on HOST:PORT`, which test harnesses read to learn the port (`--port 0`
//! picks a free one). SIGTERM or SIGINT ends it with exit status 0.
//!
//! It is built on hyper directly (HTTP/1.1 with keep-alive, multi-threaded tokio runtime)
//! and keeps the per-request path free of shared locks, so that a proxy benchmark measures
//! the proxy and not the mock. Decisions beyond the design page:
//! - requests for any model are answered unless `--strict-models` is given, in which case
//!   a model outside `--models` gets 404 (`model_not_found`);
//! - `POST /__models` changes the served models at run time, `GET /__models` shows them
//!   (see [`catalog`]);
//! - `POST /__reset` also restores the command-line `--chunks`, `--chunk-delay-ms` and
//!   `--models`;
//! - `GET /__mode` shows the current mode in the same shape `POST /__mode` echoes;
//! - a few extra real paths are served: llama.cpp `/v1/health` and `/models`, vLLM `/ping`
//!   and `/version`;
//! - the APIs beyond chat (module `apis`): OpenAI's Responses API with retrieve, delete and
//!   cancel by id (every flavour), Anthropic's `/v1/messages` and `count_tokens` (vLLM,
//!   llama.cpp, and `openai` as LiteLLM would), `/v1/rerank` (vLLM, llama.cpp),
//!   `/v1/audio/transcriptions` (multipart; `openai`, vLLM) and Ollama's `/api/show`,
//!   `/api/embeddings` and `/api/ps`.

mod apis;
mod body;
mod catalog;
mod chat;
mod flavor;
mod mode;
mod server;
mod service;
mod stats;

use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::flavor::Flavor;
use crate::service::State;

/// Command line; see the crate docs.
#[derive(Debug, Parser)]
#[command(
    name = "mockllm",
    version,
    about = "A mock LLM server for Hale's tests and benchmarks"
)]
struct Cli {
    /// Port to listen on; 0 picks a free one (announced on stdout).
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Which server to imitate.
    #[arg(long, value_enum)]
    flavor: Flavor,
    /// Comma-separated models to report and serve (default: mock-model).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Chunks in a streamed answer (and words in any answer).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    chunks: u32,
    /// Pause between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    chunk_delay_ms: u64,
    /// Answer 404 to requests for a model not in --models.
    #[arg(long)]
    strict_models: bool,
    /// Start out loading for this many seconds (health 503 "loading"), as a backend that
    /// restarts and loads its model.
    #[arg(long)]
    loading_for_s: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut models: Vec<String> = cli
        .models
        .iter()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect();
    if models.is_empty() {
        models.push("mock-model".to_owned());
    }

    let addr = tokio::net::lookup_host((cli.host.as_str(), cli.port))
        .await
        .with_context(|| format!("resolving --host {}", cli.host))?
        .next()
        .with_context(|| format!("--host {} resolves to no address", cli.host))?;
    let listener = server::bind(addr).with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;

    // One pending order is all that can be in flight: the listener is closed while one runs.
    let (refuse_tx, refuse_rx) = mpsc::channel(1);
    let state = State::new(
        cli.flavor,
        models,
        cli.strict_models,
        cli.chunks,
        cli.chunk_delay_ms,
        refuse_tx,
    )?;
    // The state lives as long as the process; leaking it gives every request a plain
    // `&'static` reference instead of a reference count to bump.
    let state: &'static State = Box::leak(Box::new(state));
    if let Some(seconds) = cli.loading_for_s {
        state
            .mode
            .start_loading(seconds)
            .map_err(|e| anyhow::anyhow!("--loading-for-s: {e}"))?;
    }

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "mockllm listening on {local}")?;
        out.flush()?;
    }

    tokio::select! {
        served = server::run(state, listener, refuse_rx) => served,
        _ = term.recv() => Ok(()),
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for SIGINT"),
    }
}
