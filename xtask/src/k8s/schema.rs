//! Validation of rendered manifests against the Kubernetes JSON schemas, offline.
//!
//! The schemas come with the `kubernetes-validate` Python package (pinned in setup.rs and
//! installed into `.venv` by `cargo xtask setup`), which ships those of every Kubernetes
//! minor version it knows inside its wheel, so nothing is fetched at test time. `--strict`
//! uses the strict schemas, which reject fields Kubernetes does not define: a misspelt
//! `readinesProbe` would otherwise pass, and the API server would silently drop it.
//!
//! kubernetes-validate only warns about a kind it has no schema for (a CRD, a misspelt
//! `apiVersion`) and still exits 0. Here every output line that is not a pass is a failure,
//! and the passes are counted: exactly one per resource and Kubernetes version, or the step
//! fails with everything the validator said.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::setup::KUBERNETES_VALIDATE_VERSION;

/// The validator inside the virtualenv setup creates.
const VALIDATOR: &str = ".venv/bin/kubernetes-validate";

/// The Kubernetes versions the manifests must be valid for: the oldest the base supports
/// (1.30: `lifecycle.preStop.sleep`, the image having no shell) and the newest the pinned
/// validator knows.
pub(crate) const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", KUBERNETES_VALIDATE_VERSION];

/// Validates every resource of the multi-document YAML `file`, which holds `resources` of them.
pub(crate) fn validate(file: &Path, resources: usize) -> anyhow::Result<()> {
    let mut command = Command::new(VALIDATOR);
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["-k", version]);
    }
    command.arg(file);
    println!(
        "$ {VALIDATOR} --strict -k {} {}",
        KUBERNETES_VERSIONS.join(" -k "),
        file.display()
    );
    let output = command.output().with_context(|| {
        format!("{VALIDATOR} could not be started: run `cargo xtask setup` to install it")
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    let mut passed = 0;
    let mut problems = Vec::new();
    for line in stdout.lines().chain(stderr.lines()) {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            passed += 1;
        } else if !line.trim().is_empty() {
            problems.push(line);
        }
    }
    let expected = resources * KUBERNETES_VERSIONS.len();
    if !output.status.success() || !problems.is_empty() || passed != expected {
        bail!(
            "the manifests in {} do not validate against the Kubernetes schemas \
             ({passed} of {expected} resource checks passed, {}):\n{}",
            file.display(),
            output.status,
            problems.join("\n")
        );
    }
    println!(
        "    {resources} resources valid (strict) for Kubernetes {}",
        KUBERNETES_VERSIONS.join(" and ")
    );
    Ok(())
}
