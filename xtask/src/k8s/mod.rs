//! `cargo xtask k8s`: checks what `deploy/` ships to operators, offline, so a broken manifest
//! fails the test command rather than a rollout.
//!
//! 1. Render the kustomize base `deploy/k8s` with our own renderer ([`kustomize`]: CI has no
//!    kustomize or kubectl) into `target/k8s/hale.yaml`.
//! 2. Validate every rendered resource against the Kubernetes JSON schemas ([`schema`]).
//! 3. Check the gateway's config in the base: `hale check-config` accepts it with the
//!    environment the Deployment provides; every `os.environ/NAME` it reads is set in the
//!    Deployment; secrets given through the environment never show in check-config's output;
//!    and `terminationGracePeriodSeconds` leaves room for the preStop sleep plus
//!    `server.shutdown_grace`, so Kubernetes never kills a pod that is still draining.
//! 4. Check the Grafana dashboard and the Prometheus alerts ([`monitoring`]).
//!
//! `cargo xtask test` runs steps 1–4 after building the binaries. `cargo xtask k8s` runs
//! setup, builds `hale`, then the same steps; with `--against-kubectl` it also renders the
//! base with `kubectl kustomize` and fails unless both renderings parse to the same
//! resources — for whoever changes the base or the renderer on a machine that has kubectl.

mod kustomize;
mod monitoring;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_yaml::Value;

use crate::steps::{Steps, cargo};

/// The kustomize base, relative to the workspace root.
const BASE: &str = "deploy/k8s";
/// The gateway's config file in the base.
const CONFIG: &str = "deploy/k8s/hale.yaml";
/// The Deployment (and its container) that runs the gateway.
const DEPLOYMENT: &str = "hale";
const DASHBOARD: &str = "deploy/grafana/hale-dashboard.json";
const ALERTS: &str = "deploy/prometheus/hale-alerts.yaml";
const RUNBOOK: &str = "docs/OPERATIONS.md";
/// Prefix of the values check-config gets for the variables the config reads.
const SENTINEL: &str = "xtask-sentinel-";

/// `cargo xtask k8s [--against-kubectl]`.
pub(crate) fn run(steps: &mut Steps, root: &Path, args: &[String]) -> anyhow::Result<()> {
    let against_kubectl = match args {
        [] => false,
        [flag] if flag == "--against-kubectl" => true,
        _ => bail!("usage: cargo xtask k8s [--against-kubectl]"),
    };
    crate::setup::run(steps)?;
    steps.run("build hale", || {
        cargo(&["build", "--package", "hale", "--bin", "hale"])
    })?;
    checks(steps, root)?;
    if against_kubectl {
        steps.run("compare with kubectl kustomize", || {
            compare_with_kubectl(root)
        })?;
    }
    Ok(())
}

/// Steps 1–4 of the module docs; needs the `hale` binary built and `.venv` set up.
pub(crate) fn checks(steps: &mut Steps, root: &Path) -> anyhow::Result<()> {
    let mut rendered = Vec::new();
    let mut file = PathBuf::new();
    steps.run("k8s render", || {
        rendered = kustomize::render(&root.join(BASE))?;
        let dir = target_dir(root).join("k8s");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        file = dir.join("hale.yaml");
        std::fs::write(&file, kustomize::to_yaml(&rendered)?)
            .with_context(|| format!("writing {}", file.display()))?;
        let ids = rendered
            .iter()
            .map(kustomize::resource_id)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let shown = file.strip_prefix(root).unwrap_or(&file);
        println!("    {BASE} -> {}: {}", shown.display(), ids.join(", "));
        Ok(())
    })?;
    steps.run("k8s schemas", || schema::validate(&file, rendered.len()))?;
    steps.run("k8s config", || check_config(root, &rendered))?;
    steps.run("dashboard and alerts", || {
        let known = monitoring::known_metrics(root)?;
        // Relative paths (the working directory is the root) read better in messages.
        monitoring::check_dashboard(Path::new(DASHBOARD), &known)?;
        monitoring::check_alerts(Path::new(ALERTS), &known, Path::new(RUNBOOK))
    })
}

/// Step 3 of the module docs.
fn check_config(root: &Path, rendered: &[Value]) -> anyhow::Result<()> {
    let deployment = rendered
        .iter()
        .find(|r| r["kind"] == "Deployment" && r["metadata"]["name"] == DEPLOYMENT)
        .with_context(|| format!("{BASE} has no Deployment named {DEPLOYMENT}"))?;
    let pod = &deployment["spec"]["template"]["spec"];
    let container = pod["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == DEPLOYMENT)
        .with_context(|| format!("the {DEPLOYMENT} Deployment has no container {DEPLOYMENT}"))?;
    // The container's variables, and whether each comes from a Secret.
    let env: BTreeMap<&str, bool> = container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e["name"].as_str()?;
            Some((name, !e["valueFrom"]["secretKeyRef"].is_null()))
        })
        .collect();

    let text =
        std::fs::read_to_string(root.join(CONFIG)).with_context(|| format!("reading {CONFIG}"))?;
    let config: Value =
        serde_yaml::from_str(&text).with_context(|| format!("{CONFIG} is not valid YAML"))?;
    let mut wanted = Vec::new();
    environ_references(&config, &mut wanted);
    for name in &wanted {
        if !env.contains_key(name.as_str()) {
            bail!(
                "{CONFIG} reads os.environ/{name}, but the {DEPLOYMENT} container does not \
                 set {name}: the pod would fail to start"
            );
        }
    }

    let hale = target_dir(root).join("debug").join("hale");
    let mut command = Command::new(&hale);
    command
        .args(["check-config", "--config", CONFIG])
        .env_clear()
        .envs(wanted.iter().map(|n| (n, format!("{SENTINEL}{n}"))));
    println!(
        "$ {} {} check-config --config {CONFIG}",
        wanted
            .iter()
            .map(|n| format!("{n}={SENTINEL}{n}"))
            .collect::<Vec<_>>()
            .join(" "),
        hale.display()
    );
    let output = command
        .output()
        .with_context(|| format!("{} could not be started", hale.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "hale check-config rejects {CONFIG} ({}):\n{stderr}{stdout}",
            output.status
        );
    }
    for name in wanted.iter().filter(|n| env.get(n.as_str()) == Some(&true)) {
        let value = format!("{SENTINEL}{name}");
        if stdout.contains(&value) || stderr.contains(&value) {
            bail!("hale check-config printed the value of {name}, which comes from a Secret");
        }
    }
    println!("    hale check-config accepts {CONFIG}; secrets stay redacted");

    let grace = config["server"]["shutdown_grace"]
        .as_str()
        .map_or(Ok(30), seconds)
        .with_context(|| format!("{CONFIG}: server.shutdown_grace"))?;
    let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    if pre_stop + grace >= termination {
        bail!(
            "terminationGracePeriodSeconds ({termination}) must exceed the preStop sleep \
             ({pre_stop}s) plus server.shutdown_grace ({grace}s), or Kubernetes kills pods \
             that are still draining"
        );
    }
    println!(
        "    drain fits: preStop {pre_stop}s + shutdown_grace {grace}s < \
         terminationGracePeriodSeconds {termination}s"
    );
    Ok(())
}

/// The variable names of every `os.environ/NAME` string in `value`.
fn environ_references(value: &Value, names: &mut Vec<String>) {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("os.environ/")
                && !names.iter().any(|n| n == name)
            {
                names.push(name.to_owned());
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| environ_references(v, names)),
        Value::Mapping(map) => map.values().for_each(|v| environ_references(v, names)),
        Value::Tagged(tagged) => environ_references(&tagged.value, names),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Whole seconds of a duration written `90s` or `2m` (what the base uses; anything else is
/// refused rather than guessed).
fn seconds(duration: &str) -> anyhow::Result<u64> {
    let parse = |digits: &str| digits.parse::<u64>().ok();
    let value = if let Some(s) = duration.strip_suffix("ms") {
        parse(s).map(|ms| ms.div_ceil(1000))
    } else if let Some(s) = duration.strip_suffix('s') {
        parse(s)
    } else if let Some(m) = duration.strip_suffix('m') {
        parse(m).map(|m| m * 60)
    } else {
        None
    };
    value.with_context(|| {
        format!("cannot read {duration:?}: xtask understands durations like 30s, 1500ms or 2m")
    })
}

/// `--against-kubectl`: our rendering and `kubectl kustomize`'s must parse to the same
/// resources (order and formatting aside).
fn compare_with_kubectl(root: &Path) -> anyhow::Result<()> {
    println!("$ kubectl kustomize {BASE}");
    let output = Command::new("kubectl")
        .args(["kustomize", BASE])
        .output()
        .context("kubectl could not be started (--against-kubectl needs it on PATH)")?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize {BASE} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let theirs = by_id(kustomize::parse_documents(&String::from_utf8_lossy(
        &output.stdout,
    ))?)?;
    let ours = by_id(kustomize::render(&root.join(BASE))?)?;
    let mut differences = Vec::new();
    for (id, resource) in &ours {
        match theirs.get(id) {
            None => differences.push(format!("only xtask renders {id}")),
            Some(other) if other != resource => differences.push(format!(
                "{id} differs:\n--- xtask\n{}--- kubectl\n{}",
                serde_yaml::to_string(resource)?,
                serde_yaml::to_string(other)?
            )),
            Some(_) => {}
        }
    }
    for id in theirs.keys().filter(|id| !ours.contains_key(*id)) {
        differences.push(format!("only kubectl renders {id}"));
    }
    if !differences.is_empty() {
        bail!(
            "xtask's rendering of {BASE} differs from kubectl kustomize:\n{}",
            differences.join("\n")
        );
    }
    println!(
        "    {} resources, identical to kubectl kustomize's once parsed: {}",
        ours.len(),
        ours.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

fn by_id(resources: Vec<Value>) -> anyhow::Result<BTreeMap<String, Value>> {
    resources
        .into_iter()
        .map(|r| Ok((kustomize::resource_id(&r)?, r)))
        .collect()
}

/// Cargo's target directory: `CARGO_TARGET_DIR` or `target` in the workspace.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_whole_seconds() {
        assert_eq!(seconds("30s").unwrap(), 30);
        assert_eq!(seconds("2m").unwrap(), 120);
        assert_eq!(seconds("1500ms").unwrap(), 2);
        assert!(seconds("1h").is_err());
    }

    #[test]
    fn environ_references_are_found_anywhere() {
        let config: Value =
            serde_yaml::from_str("a: os.environ/A\nb: [x, os.environ/B]\nc: {d: os.environ/A}\n")
                .unwrap();
        let mut names = Vec::new();
        environ_references(&config, &mut names);
        assert_eq!(names, ["A", "B"]);
    }
}
