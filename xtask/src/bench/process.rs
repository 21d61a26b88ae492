//! The servers a benchmark starts: each one a [`Server`] in its own process group with its
//! stderr in a log file, stopped (group and all) when dropped, so an error or a panic half-way
//! through a suite never leaves a proxy, its workers or a mock behind. Also the small loopback
//! plumbing around them: free ports, waiting for a port to accept, one-off HTTP requests for
//! checking that a target answers before it is measured.
#![expect(
    clippy::disallowed_types,
    clippy::disallowed_methods,
    reason = "xtask has no tokio runtime: std Instant and thread::sleep bound the waits"
)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

/// How long a server may take to announce itself or open its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server process (and whatever it forks: nginx workers) in a process group of its own.
pub(crate) struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    /// Starts `command` as `name`, its stdout and stderr going to `log`.
    pub(crate) fn spawn(name: &str, command: Command, log: &Path) -> anyhow::Result<Self> {
        Self::start(name, command, log, false)
    }

    fn start(
        name: &str,
        mut command: Command,
        log: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(stderr.try_clone()?)
        };
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // A group of its own, so that stopping it reaches every process it forked.
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// Starts `command` with stdout piped and waits (bounded) for its first line, which must
    /// start with `prefix`; returns the server and the rest of that line (its address).
    pub(crate) fn spawn_announcing(
        name: &str,
        command: Command,
        log: &Path,
        prefix: &str,
    ) -> anyhow::Result<(Self, String)> {
        let mut server = Self::start(name, command, log, true)?;
        let stdout = server
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout of {name}"))?;
        let (tx, rx) = mpsc::channel();
        // Reads the announcement, then keeps draining stdout so the child never blocks on a
        // full pipe; the thread ends when the child closes its stdout.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => bail!(
                "{name} exited before announcing its address{}",
                server.log_tail()
            ),
            Err(_) => bail!(
                "{name} did not announce its address within {} s{}",
                START_TIMEOUT.as_secs(),
                server.log_tail()
            ),
        };
        let addr = line
            .strip_prefix(prefix)
            .ok_or_else(|| anyhow!("unexpected first line from {name}: {line}"))?
            .trim()
            .to_owned();
        server.ensure_running()?;
        Ok((server, addr))
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its process and its direct children (nginx's workers).
    pub(crate) fn pids(&self) -> Vec<u32> {
        super::procfs::with_children(self.pid())
    }

    /// CPU time (user + system) of its processes' live threads so far, in seconds.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.pids()
            .into_iter()
            .map(super::procfs::thread_cpu_seconds)
            .sum()
    }

    /// Fails, with the end of its log, if the server has exited.
    pub(crate) fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited with {status}{}", self.name, self.log_tail()),
            Err(err) => bail!("cannot tell whether {} runs: {err}", self.name),
        }
    }

    /// Waits (bounded) until `addr` accepts TCP connections, failing early if the server dies.
    pub(crate) fn wait_for_port(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.ensure_running()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not open {addr} within {} s{}",
                    self.name,
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the server's log, formatted to follow an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n    ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log ({}) ends:\n    {tail}", self.log.display())
        }
    }
}

impl Drop for Server {
    /// SIGTERM to the whole group (nginx's master then stops its workers), a short grace,
    /// then SIGKILL to whatever is left.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory for one run's configs and logs, removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Keeps the directory (for a look at the logs after the run) and returns its path.
    pub(crate) fn keep(self) -> PathBuf {
        let path = self.0.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port that was free a moment ago, for servers that cannot bind port 0 and
/// report it (HAProxy, nginx). The window in which another process could take it is short.
pub(crate) fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?)
}

/// The status code and body of one `POST path` with a JSON body, on a fresh connection.
/// Chunked bodies are returned as sent (chunk sizes included), which is enough for looking
/// for a marker in them.
pub(crate) fn http_post(addr: &str, path: &str, json: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to POST {addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from POST {addr}{path}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line in the answer from {addr}{path}"))?;
    Ok((status, body.to_owned()))
}
