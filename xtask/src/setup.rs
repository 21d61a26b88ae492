//! `cargo xtask setup`: makes sure the tools the test suites need are present, installing
//! them when it can (as root, through apt or rustup) and otherwise failing with one line that
//! says what to install. Each tool is a [`Requirement`] in [`REQUIREMENTS`]; adding a tool is
//! adding an entry.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::steps::{Steps, cargo_program, first_line_of, run_command};

/// A tool the tests need, how to tell it is there, and how to get it.
struct Requirement {
    /// The tool's name in messages.
    name: &'static str,
    /// A command that succeeds and prints a version line when the tool works; `cargo` means
    /// the cargo that runs xtask.
    check: &'static [&'static str],
    /// Where it comes from.
    source: Source,
}

enum Source {
    /// A Debian/Ubuntu package, installed with apt-get when running as root.
    Apt { package: &'static str },
    /// A rustup component of the active toolchain.
    Rustup { component: &'static str },
}

/// Everything `cargo xtask test` relies on beyond cargo itself.
const REQUIREMENTS: &[Requirement] = &[
    // The coordination tests and the e2e suites start real Redis servers (hale-testkit).
    Requirement {
        name: "redis-server",
        check: &["redis-server", "--version"],
        source: Source::Apt {
            package: "redis-server",
        },
    },
    Requirement {
        name: "rustfmt",
        check: &["cargo", "fmt", "--version"],
        source: Source::Rustup {
            component: "rustfmt",
        },
    },
    Requirement {
        name: "clippy",
        check: &["cargo", "clippy", "--version"],
        source: Source::Rustup {
            component: "clippy",
        },
    },
];

/// The `setup` step: checks every requirement, installing what is missing where possible.
pub(crate) fn run(steps: &mut Steps) -> anyhow::Result<()> {
    steps.run("setup", || {
        for requirement in REQUIREMENTS {
            ensure(requirement)?;
        }
        Ok(())
    })
}

fn ensure(requirement: &Requirement) -> anyhow::Result<()> {
    if let Some(version) = version(requirement) {
        println!("    {}: {version}", requirement.name);
        return Ok(());
    }
    println!("    {}: missing", requirement.name);
    match requirement.source {
        Source::Apt { package } => install_apt(requirement.name, package)?,
        Source::Rustup { component } => install_rustup(requirement.name, component)?,
    }
    match version(requirement) {
        Some(version) => {
            println!("    {}: installed, {version}", requirement.name);
            Ok(())
        }
        None => bail!(
            "{} was installed but `{}` still fails",
            requirement.name,
            requirement.check.join(" ")
        ),
    }
}

/// The tool's version line, or `None` when its check command fails.
fn version(requirement: &Requirement) -> Option<String> {
    let (program, args) = requirement.check.split_first()?;
    let program = if *program == "cargo" {
        cargo_program()
    } else {
        (*program).to_owned()
    };
    first_line_of(Command::new(program).args(args))
}

fn install_apt(name: &str, package: &str) -> anyhow::Result<()> {
    if !is_root()? {
        bail!("{name} is missing: install it (sudo apt-get install {package}) and run again");
    }
    if first_line_of(Command::new("apt-get").arg("--version")).is_none() {
        bail!("{name} is missing and apt-get is not available: install {package} and run again");
    }
    println!("    installing {package} with apt-get (running as root)");
    run_command(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn install_rustup(name: &str, component: &str) -> anyhow::Result<()> {
    if first_line_of(Command::new("rustup").arg("--version")).is_none() {
        bail!("{name} is missing: install it (rustup component add {component}) and run again");
    }
    println!("    installing the {component} component with rustup");
    run_command(Command::new("rustup").args(["component", "add", component]))
}

/// Whether we run as root, asked of `id -u` so that xtask needs no libc bindings.
fn is_root() -> anyhow::Result<bool> {
    let uid = first_line_of(Command::new("id").arg("-u"))
        .context("cannot tell whether this is root: `id -u` failed")?;
    Ok(uid == "0")
}
