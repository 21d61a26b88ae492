//! Running named steps and external commands: each step is announced with `==> name`, each
//! command is echoed before it runs, a failure names the command and its exit status, and the
//! total time is printed whether the run passed or failed.

#![expect(
    clippy::disallowed_types,
    reason = "xtask has no tokio runtime and paused time; std's clock only times steps for a person"
)]

use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::bail;

/// The steps of one `cargo xtask` run and when it started.
pub(crate) struct Steps {
    started: Instant,
    passed: Vec<String>,
}

impl Steps {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            passed: Vec::new(),
        }
    }

    /// Announces and runs one step; the error carries the step's name.
    pub(crate) fn run(
        &mut self,
        name: &str,
        step: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        println!("==> {name}");
        let started = Instant::now();
        match step() {
            Ok(()) => {
                println!("    {name}: ok ({:.1}s)", started.elapsed().as_secs_f64());
                self.passed.push(name.to_owned());
                Ok(())
            }
            Err(err) => Err(err.context(format!("step `{name}` failed"))),
        }
    }

    /// Prints the outcome and total time and turns it into the process's exit code.
    pub(crate) fn finish(self, command: &str, result: anyhow::Result<()>) -> ExitCode {
        let total = self.started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                println!("==> xtask {command}: ok in {total:.1}s");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                if !self.passed.is_empty() {
                    eprintln!("passed before the failure: {}", self.passed.join(", "));
                }
                eprintln!("==> xtask {command}: FAILED after {total:.1}s");
                ExitCode::FAILURE
            }
        }
    }
}

/// The cargo that runs us (`$CARGO`), so that steps use the same toolchain.
pub(crate) fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs `cargo <args>` with inherited output; fails unless it exits with success.
pub(crate) fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new(cargo_program());
    command.args(args);
    run_command(&mut command)
}

/// Echoes and runs a command with inherited output; fails unless it exits with success.
pub(crate) fn run_command(command: &mut Command) -> anyhow::Result<()> {
    let line = render(command);
    println!("$ {line}");
    let status = match command.status() {
        Ok(status) => status,
        Err(err) => bail!("`{line}` could not be started: {err}"),
    };
    if !status.success() {
        bail!("`{line}` failed with {status}");
    }
    Ok(())
}

/// Whether a command runs and exits with success, its output discarded: for probing tools.
pub(crate) fn quiet_success(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The first line of a command's stdout if it exits with success.
pub(crate) fn first_line_of(command: &mut Command) -> Option<String> {
    let output = command.stdin(Stdio::null()).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().next().unwrap_or("").trim().to_owned())
}

/// A command as a shell-like line, for echoing and error messages.
fn render(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    // `$CARGO` is an absolute path into the toolchain; `cargo` reads better and means the same.
    if line == cargo_program() {
        line = "cargo".to_owned();
    }
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(' ') {
            line.push_str(&format!(" {arg:?}"));
        } else {
            line.push(' ');
            line.push_str(&arg);
        }
    }
    line
}
