//! `cargo xtask setup`: makes sure the tools the test suites need are present, installing
//! them when it can (as root, through apt, rustup, `cargo install`, or pip into the
//! workspace's `.venv` for the Python SDK tests and the Kubernetes schema validator) and
//! otherwise failing with one line that says what to install. Each tool is a
//! [`Requirement`] in [`REQUIREMENTS`]; adding a tool is adding an entry.
//!
//! The benchmarks need more (a load generator, reference proxies) that the tests never use;
//! those are a separate set, [`BENCH_REQUIREMENTS`], installed by `cargo xtask setup bench`
//! and by the bench suites that drive them, never by `cargo xtask test`.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::steps::{Steps, cargo_program, first_line_of, run_command};

/// The pinned kubernetes-validate release; a macro so that `concat!` can use it.
macro_rules! kubernetes_validate_version {
    () => {
        "1.37.0"
    };
}

/// The pinned kubernetes-validate release, which is also the newest Kubernetes version whose
/// schemas it ships.
pub(crate) const KUBERNETES_VALIDATE_VERSION: &str = kubernetes_validate_version!();

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
    /// A crate with a binary, installed with `cargo install --locked` into cargo's bin
    /// directory (which must be on PATH, as rustup sets it up).
    Cargo { krate: &'static str },
    /// Python packages in a virtualenv at `dir` (relative to the workspace root), created
    /// with `python3 -m venv` when missing and filled with `pip install`.
    PythonVenv {
        dir: &'static str,
        packages: &'static [&'static str],
    },
    /// Node packages from the `package.json` and `package-lock.json` in `dir` (relative to
    /// the workspace root), installed with `npm ci` into its git-ignored `node_modules`.
    Npm { dir: &'static str },
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
    // The Redis failover suite (tests/tests/redis_ha.rs): sentinels, `redis-cli --cluster
    // create`, and a redis-server built with TLS (Debian's is, linked to OpenSSL).
    Requirement {
        name: "redis-sentinel",
        check: &["redis-sentinel", "--version"],
        source: Source::Apt {
            package: "redis-sentinel",
        },
    },
    Requirement {
        name: "redis-cli",
        check: &["redis-cli", "--version"],
        source: Source::Apt {
            package: "redis-tools",
        },
    },
    Requirement {
        name: "redis-server with TLS",
        check: &[
            "sh",
            "-c",
            "ldd \"$(command -v redis-server)\" | grep -q libssl && echo redis-server has TLS",
        ],
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
    // The proxy suite drives Hale with the official OpenAI Python SDK (tests/python/).
    Requirement {
        name: "openai (Python SDK in .venv)",
        check: &[
            ".venv/bin/python",
            "-c",
            "import openai; print('openai', openai.__version__)",
        ],
        source: Source::PythonVenv {
            dir: ".venv",
            packages: &["openai"],
        },
    },
    // The status page suite (tests/tests/ui.rs) drives Debian's Chromium headless through
    // chromedriver (WebDriver, the `fantoccini` crate).
    // The same suite reads the event stream with the real `curl -N`.
    Requirement {
        name: "curl",
        check: &["curl", "--version"],
        source: Source::Apt { package: "curl" },
    },
    Requirement {
        name: "chromium",
        check: &["chromium", "--version"],
        source: Source::Apt {
            package: "chromium",
        },
    },
    Requirement {
        name: "chromedriver",
        check: &["chromedriver", "--version"],
        source: Source::Apt {
            package: "chromium-driver",
        },
    },
    // The client-API suite (tests/tests/client_apis.rs) drives Hale with the Anthropic SDK
    // and ollama-python, as users' programs would.
    Requirement {
        name: "anthropic and ollama (Python SDKs in .venv)",
        check: &[
            ".venv/bin/python",
            "-c",
            "import anthropic, importlib.metadata as m; print('anthropic', anthropic.__version__, 'ollama', m.version('ollama'))",
        ],
        source: Source::PythonVenv {
            dir: ".venv",
            packages: &["anthropic", "ollama"],
        },
    },
    // ... and with ollama-js (tests/js), which needs node and npm.
    Requirement {
        name: "node",
        check: &["node", "--version"],
        source: Source::Apt { package: "nodejs" },
    },
    Requirement {
        name: "npm",
        check: &["npm", "--version"],
        source: Source::Apt { package: "npm" },
    },
    Requirement {
        name: "ollama-js (tests/js/node_modules)",
        check: &[
            "node",
            "-p",
            "'ollama-js ' + require('./tests/js/node_modules/ollama/package.json').version",
        ],
        source: Source::Npm { dir: "tests/js" },
    },
    // `cargo xtask k8s` validates the manifests against the Kubernetes JSON schemas that ship
    // inside this package (k8s/schema.rs), offline. Pinned: which Kubernetes versions it
    // knows comes with the release, and the validation names the newest of them.
    Requirement {
        name: "kubernetes-validate (in .venv)",
        check: &[
            ".venv/bin/python",
            "-c",
            concat!(
                "import importlib.metadata as m; v = m.version('kubernetes-validate'); ",
                "assert v == '",
                kubernetes_validate_version!(),
                "', f'kubernetes-validate {v} is not the pinned ",
                kubernetes_validate_version!(),
                "'; print('kubernetes-validate', v)"
            ),
        ],
        source: Source::PythonVenv {
            dir: ".venv",
            packages: &[concat!(
                "kubernetes-validate==",
                kubernetes_validate_version!()
            )],
        },
    },
];

/// What `cargo xtask bench proxy` drives besides our own binaries. Not part of
/// [`REQUIREMENTS`]: the tests never need them, so `cargo xtask test` never installs them.
const BENCH_REQUIREMENTS: &[Requirement] = &[
    // The HTTP load generator: closed loop (`-c`), fixed rate with latency correction
    // (`-q --latency-correction`), JSON output.
    Requirement {
        name: "oha",
        check: &["oha", "--version"],
        source: Source::Cargo { krate: "oha" },
    },
    // The reference proxies the gateway is compared with.
    Requirement {
        name: "haproxy",
        check: &["haproxy", "-v"],
        source: Source::Apt { package: "haproxy" },
    },
    Requirement {
        name: "nginx",
        // `nginx -v` prints its version on stderr.
        check: &["sh", "-c", "nginx -v 2>&1"],
        source: Source::Apt { package: "nginx" },
    },
];

/// The `setup` step: checks every requirement, installing what is missing where possible.
pub(crate) fn run(steps: &mut Steps) -> anyhow::Result<()> {
    steps.run("setup", || ensure_all(REQUIREMENTS))
}

/// The `setup bench` step: the same for the benchmark tools.
pub(crate) fn run_bench(steps: &mut Steps) -> anyhow::Result<()> {
    steps.run("setup bench", ensure_bench)
}

/// Checks (and installs where missing) the benchmark tools; for bench suites, which run
/// inside a step of their own.
pub(crate) fn ensure_bench() -> anyhow::Result<()> {
    ensure_all(BENCH_REQUIREMENTS)
}

fn ensure_all(requirements: &[Requirement]) -> anyhow::Result<()> {
    for requirement in requirements {
        ensure(requirement)?;
    }
    Ok(())
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
        Source::Cargo { krate } => install_cargo(requirement.name, krate)?,
        Source::PythonVenv { dir, packages } => install_venv(requirement.name, dir, packages)?,
        Source::Npm { dir } => install_npm(requirement.name, dir)?,
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

fn install_cargo(name: &str, krate: &str) -> anyhow::Result<()> {
    println!("    installing {krate} with cargo install --locked");
    run_command(Command::new(cargo_program()).args(["install", "--locked", krate]))
        .with_context(|| format!("{name} is missing and could not be installed"))
}

fn install_venv(name: &str, dir: &str, packages: &[&str]) -> anyhow::Result<()> {
    let python = std::path::Path::new(dir).join("bin").join("python");
    if !python.is_file() {
        println!("    creating the virtualenv {dir} with python3 -m venv");
        run_command(Command::new("python3").args(["-m", "venv", dir])).with_context(|| {
            format!("{name} is missing: install python3 with its venv module (apt-get install python3-venv) and run again")
        })?;
    }
    println!("    installing {} into {dir} with pip", packages.join(" "));
    run_command(
        Command::new(std::path::Path::new(dir).join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
    )
    .with_context(|| format!("{name} could not be installed"))
}

fn install_npm(name: &str, dir: &str) -> anyhow::Result<()> {
    println!("    installing {dir}/package-lock.json with npm ci");
    run_command(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir),
    )
    .with_context(|| format!("{name} could not be installed (is npm installed?)"))
}

/// Whether we run as root, asked of `id -u` so that xtask needs no libc bindings.
fn is_root() -> anyhow::Result<bool> {
    let uid = first_line_of(Command::new("id").arg("-u"))
        .context("cannot tell whether this is root: `id -u` failed")?;
    Ok(uid == "0")
}
