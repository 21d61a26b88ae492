//! The `mockllm` binary as a test fixture: spawned on a port of its own choosing, its address
//! read from its first stdout line (`mockllm listening on 127.0.0.1:PORT`), its failure modes
//! driven through its admin API, killed on drop.
//!
//! Letting mockllm bind port 0 itself avoids the race between choosing a port and binding
//! it. A restart passes the learned port explicitly, because a test of "the backend comes
//! back" needs it back at the same address the gateway was configured with.
//!
//! Admin API (see DESIGN.md §7): `POST /__mode` with a JSON body such as `{"status":503}`,
//! `{"mode":"healthy"}` or `{"loading_for_s":5}`; `GET /__stats` returning
//! `{"total":N,"hits":{"/health":12,…},"recent":[…]}`; `POST /__reset`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::binaries::bin_path;
use crate::http::{HttpReply, http_get_json, http_post_json};
use crate::output::{CapturedOutput, Mark};
use crate::process::{kill_and_wait, kill_blocking};

/// How long mockllm may take to print its listening line.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How often its stdout is checked for that line.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The prefix of the line that announces the address.
const LISTENING: &str = "mockllm listening on ";
/// How long a restart keeps trying to get the old port back.
const RESTART_DEADLINE: Duration = Duration::from_secs(5);
/// How long dropping a [`MockLlm`] waits for the killed process to exit.
const DROP_WAIT: Duration = Duration::from_secs(2);

/// A running `mockllm` process; see the module docs.
#[derive(Debug)]
pub struct MockLlm {
    program: PathBuf,
    /// Every argument except `--port`, which is chosen per spawn.
    args: Vec<String>,
    addr: SocketAddr,
    child: Option<Child>,
    output: CapturedOutput,
}

/// Options for [`MockLlm`], from [`MockLlm::builder`].
#[derive(Debug, Clone)]
pub struct MockLlmBuilder {
    flavor: String,
    models: Vec<String>,
    port: u16,
    extra: Vec<String>,
}

// === impl MockLlmBuilder ===

impl MockLlmBuilder {
    /// The models mockllm reports and serves (`--models a,b`); none by default, which leaves
    /// the choice to mockllm.
    pub fn models(mut self, models: &[&str]) -> Self {
        self.models = models.iter().map(|m| (*m).to_owned()).collect();
        self
    }

    /// The number of chunks in a streamed answer (`--chunks N`).
    pub fn chunks(self, chunks: u32) -> Self {
        self.arg("--chunks").arg(chunks.to_string())
    }

    /// The pause between streamed chunks (`--chunk-delay-ms MS`).
    pub fn chunk_delay_ms(self, ms: u64) -> Self {
        self.arg("--chunk-delay-ms").arg(ms.to_string())
    }

    /// A fixed port instead of one mockllm picks (`--port P`); 0, the default, lets it pick.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Any further command-line argument, passed through as is.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// Spawns mockllm and waits (at most 10 s) until it announces its address.
    pub async fn start(self) -> anyhow::Result<MockLlm> {
        let program = bin_path("mockllm")?;
        let mut args = vec!["--flavor".to_owned(), self.flavor];
        if !self.models.is_empty() {
            args.push("--models".to_owned());
            args.push(self.models.join(","));
        }
        args.extend(self.extra);
        let output = CapturedOutput::new("mockllm")?;
        let (child, addr) = spawn_listening(&program, &args, self.port, &output).await?;
        Ok(MockLlm {
            program,
            args,
            addr,
            child: Some(child),
            output,
        })
    }
}

// === impl MockLlm ===

impl MockLlm {
    /// Starts mockllm with a flavour (`openai`, `ollama`, `vllm`, `llamacpp`) and models.
    pub async fn start(flavor: &str, models: &[&str]) -> anyhow::Result<Self> {
        Self::builder(flavor).models(models).start().await
    }

    /// Options beyond flavour and models: streaming chunks, a fixed port, extra arguments.
    pub fn builder(flavor: &str) -> MockLlmBuilder {
        MockLlmBuilder {
            flavor: flavor.to_owned(),
            models: Vec::new(),
            port: 0,
            extra: Vec::new(),
        }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The port mockllm listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address mockllm listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the failure mode (`POST /__mode`), for example `{"status":503}`.
    pub async fn set_mode(&self, mode: Value) -> anyhow::Result<()> {
        let reply = http_post_json(&format!("{}/__mode", self.url()), &mode).await?;
        expect_success("POST /__mode", &reply)
    }

    /// Hit counters and recent requests (`GET /__stats`).
    pub async fn stats(&self) -> anyhow::Result<Value> {
        let reply = http_get_json(&format!("{}/__stats", self.url())).await?;
        expect_success("GET /__stats", &reply)?;
        Ok(reply.body)
    }

    /// How many requests reached `path` since the start or the last reset.
    pub async fn hits(&self, path: &str) -> anyhow::Result<u64> {
        let stats = self.stats().await?;
        Ok(stats["hits"][path].as_u64().unwrap_or(0))
    }

    /// Clears counters and returns to healthy behaviour (`POST /__reset`).
    pub async fn reset(&self) -> anyhow::Result<()> {
        let reply = http_post_json(&format!("{}/__reset", self.url()), &json!({})).await?;
        expect_success("POST /__reset", &reply)
    }

    /// Kills mockllm with SIGKILL and waits for it to exit: the backend dies without a
    /// goodbye, connections are reset and new ones refused. Killing twice does nothing.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child)
                .await
                .with_context(|| format!("killing mockllm on {}", self.addr))?;
        }
        Ok(())
    }

    /// Starts mockllm again (killing it first if it runs) on the same port, with the same
    /// arguments, and waits until it listens. Counters and modes start afresh.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        let deadline = Instant::now() + RESTART_DEADLINE;
        loop {
            match spawn_listening(&self.program, &self.args, self.port(), &self.output).await {
                Ok((child, addr)) => {
                    self.child = Some(child);
                    self.addr = addr;
                    return Ok(());
                }
                // The port is normally free at once, but a test's own client may hold it for
                // a moment; give it a few tries before failing.
                Err(_retried) if Instant::now() < deadline => {
                    sleep(Duration::from_millis(100)).await;
                }
                Err(err) => {
                    return Err(err.context(format!("restarting mockllm on {}", self.addr)));
                }
            }
        }
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_blocking(child, DROP_WAIT);
        }
    }
}

// === spawning ===

/// Spawns mockllm on `port` (0: its choice) and waits for its listening line.
async fn spawn_listening(
    program: &Path,
    args: &[String],
    port: u16,
    output: &CapturedOutput,
) -> anyhow::Result<(Child, SocketAddr)> {
    let (stdout, stderr, mark) = output.attach()?;
    let mut child = Command::new(program)
        .arg("--port")
        .arg(port.to_string())
        .args(args)
        .current_dir(output.dir())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    match wait_listening(&mut child, output, mark).await {
        Ok(addr) => Ok((child, addr)),
        Err(err) => {
            // A mockllm that did not announce itself must not linger holding the port.
            let _ = kill_and_wait(&mut child).await;
            Err(err.context(format!(
                "starting {} --port {port} {}",
                program.display(),
                args.join(" ")
            )))
        }
    }
}

/// Polls the child's stdout for the listening line; fails if it exits or the deadline passes.
async fn wait_listening(
    child: &mut Child,
    output: &CapturedOutput,
    mark: Mark,
) -> anyhow::Result<SocketAddr> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        // Only complete lines count: the announcement may be caught half-written.
        let stdout = output.stdout_since(mark);
        let announced = stdout
            .split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .find_map(|line| line.trim().strip_prefix(LISTENING));
        if let Some(addr) = announced {
            return addr
                .trim()
                .parse()
                .with_context(|| format!("parsing the announced address {addr:?}"));
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "mockllm exited with {status} before announcing its address\n{}",
                output.quote_since(mark)
            );
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "mockllm did not print `{LISTENING}<addr>` within {}s\n{}",
                READY_DEADLINE.as_secs(),
                output.quote_since(mark)
            ));
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Turns a non-2xx admin reply into an error quoting the body.
fn expect_success(what: &str, reply: &HttpReply) -> anyhow::Result<()> {
    if reply.is_success() {
        Ok(())
    } else {
        bail!(
            "mockllm answered {what} with {}: {}",
            reply.status,
            reply.text
        )
    }
}
