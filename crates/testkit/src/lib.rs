//! Test harness shared by Hale's unit, integration and end-to-end tests: it starts the real
//! processes a test needs (`redis-server`, `mockllm`) on free loopback ports with their output
//! captured, finds the workspace binaries, speaks just enough HTTP/1.1 to poke at them, stands
//! up a backend whose every answer a test writes by hand ([`serve_heads`]), writes temporary
//! config files, and waits for conditions with [`eventually()`] instead of fixed sleeps.
//!
//! Every process handle kills its process when dropped, so a failing test never leaves a
//! server behind, and every helper returns `anyhow::Result` with enough context (the command,
//! the port, the process's own output) that a failure can be understood from the test log
//! alone. Timers go through `tokio::time`, so [`eventually()`] also works in paused-time tests;
//! the process helpers, however, wait on real I/O and belong in tests that run in real time.

mod backend;
mod binaries;
mod eventually;
mod gateway;
mod http;
mod mockllm;
mod output;
mod pooled;
mod port;
mod proc_status;
mod process;
mod redis_ha;
mod redis_server;
mod temp_config;

pub use backend::{MAX_HEAD, closing_answer, read_head, serve_heads};
pub use binaries::bin_path;
pub use eventually::{Attempt, eventually};
pub use gateway::Gateway;
pub use http::{HttpReply, http_get_json, http_post_json, http_request};
pub use mockllm::{MockLlm, MockLlmBuilder};
pub use pooled::{OpenStream, PooledClient, StreamedReply, TimedChunk};
pub use port::{free_port, try_free_port};
pub use proc_status::rss_bytes;
pub use redis_ha::{
    CLUSTER_NODE_TIMEOUT, MASTER_NAME, RedisCluster, RedisNode, RedisSentinelSet, RedisTls, TestCa,
    install_crypto_provider,
};
pub use redis_server::RedisServer;
pub use temp_config::TempConfig;
