//! Child processes for the benchmark suites that announce their address on stdout (mockllm,
//! `hale serve`), killed when dropped, and the minimal HTTP GET the suites poll them with.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, anyhow};

/// A child process killed when dropped, so an error never leaves servers behind.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `program args`, reads its stdout until a line starting with `prefix`, returns the
/// process and the rest of that line (an address).
pub(crate) fn spawn_announcing(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    prefix: &str,
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout of {}", program.display()))?;
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    let line = lines
        .next()
        .ok_or_else(|| anyhow!("{} exited before announcing", program.display()))??;
    let addr = line
        .strip_prefix(prefix)
        .ok_or_else(|| anyhow!("unexpected first line from {}: {line}", program.display()))?
        .trim()
        .to_owned();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((proc, addr))
}

/// A minimal HTTP/1.1 GET on loopback, returning the body.
pub(crate) fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (_, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}{path}"))?;
    Ok(body.to_owned())
}
