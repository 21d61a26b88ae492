//! A running `hale serve` process for end-to-end tests: written config, captured output,
//! the address it announced, JSON helpers for its status routes, signals (`signal`,
//! `terminate`, `hangup`) and `wait_exit` for shutdown and reload tests, and kill-on-drop.
//!
//! Tests write the config with `server.listen: 127.0.0.1:0`; the gateway prints
//! `hale listening on <addr>` on stdout once its listener is bound, which is how the test
//! learns the port without a race.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use http::Method;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::binaries::bin_path;
use crate::http::{HttpReply, http_request};
use crate::output::CapturedOutput;
use crate::process::kill_and_wait;
use crate::temp_config::TempConfig;

/// The line the gateway prints once it listens.
const LISTENING: &str = "hale listening on ";
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// One gateway process.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    addr: SocketAddr,
    config: TempConfig,
    output: CapturedOutput,
    token: Option<String>,
}

impl Gateway {
    /// Starts `hale serve --config <yaml written to a temp file>`.
    pub async fn start(yaml: &str) -> anyhow::Result<Self> {
        Self::start_with_env(yaml, &[]).await
    }

    /// Starts the gateway with extra environment variables (the parent's are inherited, but
    /// `HALE_LOG` defaults to `info,hale=debug` for readable failures).
    pub async fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let program = bin_path("hale")?;
        let config = TempConfig::new(yaml)?;
        let output = CapturedOutput::new("hale")?;
        let (stdout, stderr, mark) = output.attach()?;
        let mut cmd = Command::new(&program);
        cmd.arg("serve")
            .arg("--config")
            .arg(config.path())
            .current_dir(output.dir())
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        if !env.iter().any(|(k, _)| *k == "HALE_LOG") {
            cmd.env("HALE_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        let deadline = Instant::now() + READY_DEADLINE;
        let addr = loop {
            let stdout = output.stdout_since(mark);
            let announced = stdout
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .find_map(|l| l.trim().strip_prefix(LISTENING).map(str::to_owned));
            if let Some(addr) = announced {
                break addr
                    .trim()
                    .parse::<SocketAddr>()
                    .with_context(|| format!("parsing the announced address {addr:?}"))?;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "hale exited with {status} before listening\n{}",
                    output.quote_since(mark)
                );
            }
            if Instant::now() >= deadline {
                let _ = kill_and_wait(&mut child).await;
                return Err(anyhow!(
                    "hale did not print `{LISTENING}<addr>` within {}s\n{}",
                    READY_DEADLINE.as_secs(),
                    output.quote_since(mark)
                ));
            }
            sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            child: Some(child),
            addr,
            config,
            output,
            token: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every helper request from now on.
    pub fn with_admin_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The config file, to edit for reload tests.
    pub fn config(&self) -> &TempConfig {
        &self.config
    }

    /// The process id, to send signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Everything the gateway printed so far (stdout then stderr), for assertions on logs.
    pub fn logs(&self) -> String {
        self.output.quote_since(Default::default())
    }

    /// Every log line the gateway wrote so far (its whole stderr, not cut like [`logs`]).
    ///
    /// [`logs`]: Self::logs
    pub fn full_logs(&self) -> String {
        self.output.stderr_since(Default::default())
    }

    /// `GET path` (with the admin token if one was set).
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpReply> {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        http_request(
            Method::GET,
            &format!("{}{path}", self.url()),
            &headers,
            None,
        )
        .await
    }

    /// `/internal/status/endpoints`, as a list.
    pub async fn endpoints(&self) -> anyhow::Result<Vec<Value>> {
        let reply = self.get("/internal/status/endpoints").await?;
        if reply.status != 200 {
            bail!(
                "GET /internal/status/endpoints: {} {}",
                reply.status,
                reply.text
            );
        }
        reply.body["endpoints"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("no endpoints array in {}", reply.text))
    }

    /// One endpoint's status object.
    pub async fn endpoint(&self, name: &str) -> anyhow::Result<Value> {
        self.endpoints()
            .await?
            .into_iter()
            .find(|e| e["name"] == name)
            .ok_or_else(|| anyhow!("no endpoint named {name}"))
    }

    /// `/internal/events`, oldest first.
    pub async fn events(&self) -> anyhow::Result<Vec<Value>> {
        let reply = self.get("/internal/events").await?;
        if reply.status != 200 {
            bail!("GET /internal/events: {} {}", reply.status, reply.text);
        }
        reply.body["events"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("no events array in {}", reply.text))
    }

    /// Sends the signal `name` (as `kill -s` spells it: `TERM`, `INT`, `HUP`, …) to the
    /// gateway. Returns once the signal has been sent; it is handled asynchronously.
    pub async fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("the gateway is not running"))?;
        let output = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(pid.to_string())
            .output()
            .await
            .context("running kill")?;
        if !output.status.success() {
            bail!(
                "kill -s {name} {pid}: {} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// SIGTERM: what Kubernetes sends to stop a pod.
    pub async fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM").await
    }

    /// SIGHUP: reload the config.
    pub async fn hangup(&self) -> anyhow::Result<()> {
        self.signal("HUP").await
    }

    /// Kills the gateway with SIGKILL and waits for it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            kill_and_wait(&mut child).await?;
        }
        Ok(())
    }

    /// Waits for the process to exit by itself (after a signal), up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("the gateway was already killed"))?;
        let status = tokio::time::timeout(limit, child.wait())
            .await
            .map_err(|_| anyhow!("hale did not exit within {}s", limit.as_secs_f64()))??;
        self.child = None;
        Ok(status)
    }
}
