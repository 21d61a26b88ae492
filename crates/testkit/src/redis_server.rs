//! A real `redis-server` for tests: started on a free loopback port with persistence off,
//! stopped with SIGKILL to simulate Redis going away, restarted on the same port to simulate
//! it coming back, and killed when the handle is dropped.
//!
//! A real server rather than a fake is used because the coordination layer's correctness
//! rests on Redis semantics (`SET NX PX`, Lua scripts, pub/sub, key expiry) that a fake would
//! only approximate. The server runs with `--save "" --appendonly no`, so nothing is written
//! to disk and a restart comes back empty, like a Redis that lost its memory.
//!
//! Readiness is "answers PING", and the answering server must report our child's pid in
//! `INFO server`: otherwise a different server that won a port race could pass for ours.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use redis::aio::MultiplexedConnection;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

use crate::output::{CapturedOutput, Mark};
use crate::port::try_free_port;
use crate::process::{find_on_path, kill_and_wait, kill_blocking};

/// How long a freshly spawned server may take to answer PING.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// How long one readiness probe may take before it counts as "not yet".
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often readiness is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// How many ports to try when the chosen one is taken between choosing and binding.
const PORT_ATTEMPTS: usize = 5;
/// How long dropping a [`RedisServer`] waits for the killed process to exit.
const DROP_WAIT: Duration = Duration::from_secs(2);

const NOT_FOUND: &str = "redis-server not found on PATH: run `cargo xtask test` (installs it as \
                         root) or `apt-get install redis-server`";

/// A `redis-server` child process on `127.0.0.1:<port>`; see the module docs.
#[derive(Debug)]
pub struct RedisServer {
    program: PathBuf,
    port: u16,
    child: Option<Child>,
    output: CapturedOutput,
}

/// Why one spawn did not produce a ready server.
enum SpawnError {
    /// The port was taken by someone else: worth retrying on another port.
    PortTaken(anyhow::Error),
    /// Anything else: retrying would fail the same way.
    Fatal(anyhow::Error),
}

// === impl RedisServer ===

impl RedisServer {
    /// Starts `redis-server` from `PATH` on a free loopback port and waits until it answers
    /// PING (at most 10 s). If the port is taken between choosing and binding it, another
    /// port is tried.
    pub async fn start() -> anyhow::Result<Self> {
        let program = find_on_path("redis-server").ok_or_else(|| anyhow!(NOT_FOUND))?;
        let output = CapturedOutput::new("redis")?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = try_free_port().context("choosing a port for redis-server")?;
            match spawn_ready(&program, port, &output).await {
                Ok(child) => {
                    return Ok(Self {
                        program,
                        port,
                        child: Some(child),
                        output,
                    });
                }
                Err(SpawnError::PortTaken(err)) => last_error = Some(err),
                Err(SpawnError::Fatal(err)) => return Err(err),
            }
        }
        let err = last_error.unwrap_or_else(|| anyhow!("no attempt was made"));
        Err(err.context(format!(
            "redis-server could not get a free port in {PORT_ATTEMPTS} attempts"
        )))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running (it is not after [`stop`](Self::stop)).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Opens a new multiplexed connection to the server.
    pub async fn client(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to {}", self.url()))
    }

    /// Kills the server with SIGKILL and waits for it to exit, as if Redis crashed or its
    /// node vanished. Open connections see a reset; new ones are refused. Stopping a stopped
    /// server does nothing.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child)
                .await
                .with_context(|| format!("stopping redis-server on port {}", self.port))?;
        }
        Ok(())
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits
    /// until it answers PING. The data is gone: nothing was persisted.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        // The old process released the port when it died, but a client of the test may grab
        // it in between; a few attempts ride out such a blip before declaring failure.
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match spawn_ready(&self.program, self.port, &self.output).await {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(SpawnError::PortTaken(err)) => {
                    last_error = Some(err);
                    sleep(Duration::from_millis(200)).await;
                }
                Err(SpawnError::Fatal(err)) => return Err(err),
            }
        }
        let err = last_error.unwrap_or_else(|| anyhow!("no attempt was made"));
        Err(err.context(format!(
            "restarting redis-server on port {}: the port stayed taken",
            self.port
        )))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_blocking(child, DROP_WAIT);
        }
    }
}

// === spawning ===

/// Spawns one server on `port` and waits until it answers PING with our pid.
async fn spawn_ready(
    program: &Path,
    port: u16,
    output: &CapturedOutput,
) -> Result<Child, SpawnError> {
    let (stdout, stderr, mark) = output.attach().map_err(SpawnError::Fatal)?;
    let mut child = Command::new(program)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--protected-mode", "yes", "--daemonize", "no"])
        // Any file Redis decides to write lands in the private directory, not the checkout.
        .arg("--dir")
        .arg(output.dir())
        .current_dir(output.dir())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            SpawnError::Fatal(
                anyhow!(err).context(format!("spawning {} on port {port}", program.display())),
            )
        })?;
    match wait_ready(&mut child, port, output, mark).await {
        Ok(()) => Ok(child),
        Err(err) => {
            // A half-started server must not linger and hold the port for the next attempt.
            let _ = kill_and_wait(&mut child).await;
            Err(err)
        }
    }
}

/// Polls until the server on `port` answers PING and is our child, or fails.
async fn wait_ready(
    child: &mut Child,
    port: u16,
    output: &CapturedOutput,
    mark: Mark,
) -> Result<(), SpawnError> {
    let deadline = Instant::now() + READY_DEADLINE;
    let url = format!("redis://127.0.0.1:{port}");
    let our_pid = child.id();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| SpawnError::Fatal(e.into()))? {
            let quoted = output.quote_since(mark);
            let err = anyhow!(
                "redis-server on port {port} exited with {status} before answering PING\n{quoted}"
            );
            return Err(if quoted.contains("Address already in use") {
                SpawnError::PortTaken(err)
            } else {
                SpawnError::Fatal(err)
            });
        }
        match timeout(PROBE_TIMEOUT, server_pid(&url)).await {
            Ok(Ok(pid)) if Some(pid) == our_pid => return Ok(()),
            Ok(Ok(pid)) => {
                return Err(SpawnError::PortTaken(anyhow!(
                    "port {port} is served by another redis-server (pid {pid}, ours is {our_pid:?})"
                )));
            }
            Ok(Err(_)) | Err(_) => {}
        }
        if Instant::now() >= deadline {
            let quoted = output.quote_since(mark);
            return Err(SpawnError::Fatal(anyhow!(
                "redis-server on port {port} did not answer PING within {}s\n{quoted}",
                READY_DEADLINE.as_secs()
            )));
        }
        sleep(PROBE_INTERVAL).await;
    }
}

/// PINGs the server at `url` and returns the pid it reports in `INFO server`.
async fn server_pid(url: &str) -> anyhow::Result<u32> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    if pong != "PONG" {
        bail!("PING answered {pong:?}");
    }
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .context("INFO server has no process_id")?
        .trim()
        .parse()
        .context("parsing process_id")
}
