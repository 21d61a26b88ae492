//! `cargo xtask <command>`: the project's automation in plain Rust, run from the workspace
//! root, so that CI (`.ci/run`) and a developer run exactly the same steps.
//!
//! Commands: `setup` installs or checks the tools the tests need, `tidy` checks conventions
//! the compiler cannot, `test` is the whole gate (setup, tidy, fmt, clippy, build, all
//! tests), `it` runs only the end-to-end suites, `k8s` validates what `deploy/` ships
//! (kustomize base, dashboard, alerts) offline. `bench` runs a measurement suite into
//! docs/BENCHMARKS.md; `dist` is a placeholder.
//! Each step prints `==> step` and the first failing step stops the run with a non-zero exit
//! code; a missing tool is always an error, never a silently skipped step.

mod bench;
mod k8s;
mod setup;
mod steps;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::steps::{Steps, cargo};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup             install (as root) or check the tools the tests need (redis-server, ...)
  setup bench       the same for the benchmark tools (oha, haproxy, nginx)
  tidy              check that every .rs file opens with a `//!` doc comment
  test              setup, tidy, fmt, clippy, build the binaries, check deploy/ (as k8s
                    does), run every test
  k8s [--against-kubectl]
                    render deploy/k8s and validate it against the Kubernetes schemas
                    offline, check its config, the Grafana dashboard and the alert rules;
                    --against-kubectl also compares the rendering with kubectl kustomize
  it [ARGS...]      setup, build the binaries, run the end-to-end suites (-p hale-tests);
                    ARGS go to the test runner (e.g. a test name filter)
  bench SUITE       measure and write docs/BENCHMARKS.md (suites: health, shared, proxy)
  dist              not implemented yet";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.collect();
    let root = match workspace_root() {
        Ok(root) => root,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut steps = Steps::new();
    let result = match command.as_str() {
        "setup" if rest.first().is_some_and(|a| a == "bench") => setup::run_bench(&mut steps),
        "setup" => setup::run(&mut steps),
        "tidy" => steps.run("tidy", || tidy::run(&root)),
        "test" => test(&mut steps, &root),
        "it" => it(&mut steps, &rest),
        "k8s" => k8s::run(&mut steps, &root, &rest),
        "bench" => steps.run("bench", || bench::run(&root, &rest)),
        "dist" => {
            eprintln!("not implemented yet: {command}");
            return ExitCode::from(2);
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!("unknown command: {other}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    steps.finish(&command, result)
}

/// The whole gate, in the order that fails fastest on the commonest mistakes.
fn test(steps: &mut Steps, root: &Path) -> anyhow::Result<()> {
    setup::run(steps)?;
    steps.run("tidy", || tidy::run(root))?;
    steps.run("fmt", || cargo(&["fmt", "--all", "--", "--check"]))?;
    steps.run("clippy", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    // The A/B build of the upstream client on hyper's client connection (hale-proxy's
    // `hyper-upstream` feature, docs/BENCHMARKS.md): linted and its unit tests run, so the
    // variant the benchmark row is measured with keeps building and behaving.
    steps.run("hyper-upstream variant", || {
        let feature = ["--package", "hale-proxy", "--features", "hyper-upstream"];
        cargo(
            &[
                &["clippy"][..],
                &feature,
                &["--all-targets", "--", "-D", "warnings"],
            ]
            .concat(),
        )?;
        if nextest_available() {
            cargo(&[&["nextest", "run"][..], &feature, &["--profile", "ci"]].concat())
        } else {
            cargo(&[&["test"][..], &feature].concat())
        }
    })?;
    build_bins(steps)?;
    k8s::checks(steps, root)?;
    if nextest_available() {
        steps.run("nextest", || {
            cargo(&[
                "nextest",
                "run",
                "--workspace",
                "--profile",
                "ci",
                "--no-fail-fast",
            ])
        })?;
        steps.run("doc tests", || cargo(&["test", "--workspace", "--doc"]))
    } else {
        println!("note: cargo-nextest is not installed; running the tests with cargo test");
        steps.run("cargo test", || {
            cargo(&["test", "--workspace", "--no-fail-fast"])
        })
    }
}

/// Only the end-to-end suites; `extra` goes to the test runner.
fn it(steps: &mut Steps, extra: &[String]) -> anyhow::Result<()> {
    setup::run(steps)?;
    build_bins(steps)?;
    let mut args: Vec<&str> = if nextest_available() {
        vec![
            "nextest",
            "run",
            "--package",
            "hale-tests",
            "--profile",
            "ci",
            "--no-fail-fast",
        ]
    } else {
        vec!["test", "--package", "hale-tests", "--no-fail-fast"]
    };
    if !extra.is_empty() && !nextest_available() {
        // cargo test wants test-binary arguments after `--`; nextest takes filters directly.
        args.push("--");
    }
    args.extend(extra.iter().map(String::as_str));
    steps.run("e2e tests", || cargo(&args))
}

/// The end-to-end suites start `hale` and `mockllm` as processes, and cargo builds other
/// packages' binaries only when asked.
fn build_bins(steps: &mut Steps) -> anyhow::Result<()> {
    steps.run("build binaries", || {
        cargo(&["build", "--workspace", "--bins"])
    })
}

fn nextest_available() -> bool {
    steps::quiet_success(
        std::process::Command::new(steps::cargo_program()).args(["nextest", "--version"]),
    )
}

/// The workspace root: the parent of this package's directory. Every command runs there, so
/// relative paths in steps mean the same thing wherever `cargo xtask` was started.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask's manifest directory has no parent")?
        .to_path_buf();
    std::env::set_current_dir(&root)
        .with_context(|| format!("changing into the workspace root {}", root.display()))?;
    Ok(root)
}
