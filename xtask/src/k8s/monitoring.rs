//! Checks of the monitoring files under `deploy/`: the Grafana dashboard
//! (`deploy/grafana/hale-dashboard.json`) and the Prometheus alert rules
//! (`deploy/prometheus/hale-alerts.yaml`).
//!
//! Neither Grafana nor Prometheus is at hand, so the checks are the mistakes that make a
//! dashboard or an alert silently useless: the file does not parse; a query names a `hale_`
//! metric that does not exist (a typo, or a series renamed in code — the names are read from
//! `crates/api/src/metrics.rs`, so the check follows the code); brackets or quotes in a query
//! do not balance; a panel does not use the `${datasource}` variable; a metric has no panel;
//! a rule has fields Prometheus rejects, no severity or no description; an alert has no entry
//! in docs/OPERATIONS.md, where the on-call person looks up what to do.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// Where the `hale_` metric names are defined.
const METRICS_SOURCE: &str = "crates/api/src/metrics.rs";

/// The suffixes Prometheus adds to a histogram's name.
const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// The `hale_` metric names: the `pub const X: &str = "hale_…";` lines of [`METRICS_SOURCE`].
pub(crate) fn known_metrics(root: &Path) -> anyhow::Result<BTreeSet<String>> {
    let path = root.join(METRICS_SOURCE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const "))
        .filter_map(|rest| rest.split_once("&str = \"hale_"))
        .filter_map(|(_, name)| name.split_once('"'))
        .map(|(name, _)| format!("hale_{name}"))
        .collect();
    if names.is_empty() {
        bail!("found no `pub const …: &str = \"hale_…\"` lines in {METRICS_SOURCE}");
    }
    Ok(names)
}

/// Checks the Grafana dashboard; see the module docs.
pub(crate) fn check_dashboard(path: &Path, known: &BTreeSet<String>) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let dashboard: Json = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let shown = path.display();
    for key in ["title", "uid"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            bail!("{shown}: the dashboard has no {key}");
        }
    }
    let variables = dashboard["templating"]["list"].as_array();
    let has_datasource = variables.into_iter().flatten().any(|v| {
        v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"
    });
    if !has_datasource {
        bail!("{shown}: no `datasource` template variable of type datasource (query prometheus)");
    }

    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        let Some(id) = panel["id"].as_u64() else {
            bail!("{shown}: panel {title:?} has no numeric id");
        };
        if !ids.insert(id) {
            bail!("{shown}: panel id {id} is used twice");
        }
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        if panel["datasource"]["uid"] != "${datasource}" {
            bail!("{shown}: panel {title:?} does not use the ${{datasource}} variable");
        }
        for target in targets {
            if !target["datasource"].is_null() && target["datasource"]["uid"] != "${datasource}" {
                bail!("{shown}: a query of panel {title:?} does not use ${{datasource}}");
            }
            let expr = target["expr"].as_str().unwrap_or_default();
            let metrics = check_expr(expr, known)
                .with_context(|| format!("{shown}: panel {title:?}, query {expr:?}"))?;
            if metrics.is_empty() {
                bail!("{shown}: panel {title:?} has a query without a hale_ metric: {expr:?}");
            }
            used.extend(metrics);
        }
    }
    let missing: Vec<&String> = known.difference(&used).collect();
    if !missing.is_empty() {
        bail!(
            "{shown}: no panel shows {} (every hale_ metric should have one)",
            missing
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "    {shown}: {} panels over all {} hale_ metrics",
        ids.len(),
        known.len()
    );
    Ok(())
}

/// Checks the Prometheus rules file and that `runbook` (docs/OPERATIONS.md) explains every
/// alert in it; see the module docs.
pub(crate) fn check_alerts(
    path: &Path,
    known: &BTreeSet<String>,
    runbook: &Path,
) -> anyhow::Result<()> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let rules: Yaml =
        serde_yaml::from_str(&text).with_context(|| format!("{shown} is not valid YAML"))?;
    let runbook_text = std::fs::read_to_string(runbook)
        .with_context(|| format!("reading {}", runbook.display()))?;

    only_fields(&rules, &["groups"]).with_context(|| format!("{shown}: the top level"))?;
    let groups = rules["groups"]
        .as_sequence()
        .filter(|g| !g.is_empty())
        .with_context(|| format!("{shown}: no groups"))?;
    let mut names = BTreeSet::new();
    for group in groups {
        let group_name = group["name"]
            .as_str()
            .with_context(|| format!("{shown}: a group without a name"))?;
        only_fields(
            group,
            &[
                "name",
                "interval",
                "limit",
                "query_offset",
                "labels",
                "rules",
            ],
        )
        .with_context(|| format!("{shown}: group {group_name}"))?;
        let group_rules = group["rules"]
            .as_sequence()
            .filter(|r| !r.is_empty())
            .with_context(|| format!("{shown}: group {group_name} has no rules"))?;
        for rule in group_rules {
            let alert = rule["alert"]
                .as_str()
                .with_context(|| format!("{shown}: group {group_name}: a rule without `alert`"))?;
            let context = || format!("{shown}: alert {alert}");
            only_fields(
                rule,
                &[
                    "alert",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ],
            )
            .with_context(context)?;
            if !names.insert(alert.to_owned()) {
                bail!("{shown}: alert {alert} is defined twice");
            }
            let expr = rule["expr"].as_str().unwrap_or_default();
            check_expr(expr, known).with_context(context)?;
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            if !["critical", "warning", "info"].contains(&severity) {
                bail!("{shown}: alert {alert}: labels.severity must be critical, warning or info");
            }
            for key in ["summary", "description"] {
                if rule["annotations"][key].as_str().is_none_or(str::is_empty) {
                    bail!("{shown}: alert {alert} has no annotations.{key}");
                }
            }
            if !runbook_text.contains(alert) {
                bail!(
                    "{shown}: alert {alert} is not explained in {} (add it to the alert table)",
                    runbook.display()
                );
            }
        }
    }
    println!(
        "    {shown}: {} alerts, each explained in {}",
        names.len(),
        runbook.display()
    );
    Ok(())
}

fn only_fields(value: &Yaml, allowed: &[&str]) -> anyhow::Result<()> {
    let Some(map) = value.as_mapping() else {
        bail!("expected a mapping");
    };
    for key in map.keys() {
        let key = key.as_str().unwrap_or_default();
        if !allowed.contains(&key) {
            bail!("unknown field `{key}` (allowed: {})", allowed.join(", "));
        }
    }
    Ok(())
}

/// Checks one PromQL expression as far as can be done without a PromQL parser: brackets and
/// quotes balance, and every `hale_` name outside quotes is a known metric (or a histogram
/// series of one). Returns the metrics it uses.
fn check_expr(expr: &str, known: &BTreeSet<String>) -> anyhow::Result<BTreeSet<String>> {
    if expr.trim().is_empty() {
        bail!("empty query");
    }
    let chars: Vec<char> = expr.chars().collect();
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut open = Vec::new();
    let mut words = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                loop {
                    match chars.get(i) {
                        None => bail!("unterminated string"),
                        Some('\\') => i += 2,
                        Some(&q) if q == c => break,
                        Some(_) => i += 1,
                    }
                }
            }
            '(' | '{' | '[' => open.push(c),
            ')' | '}' | ']' => {
                let want = match c {
                    ')' => '(',
                    '}' => '{',
                    _ => '[',
                };
                if open.pop() != Some(want) {
                    bail!("unbalanced `{c}` at character {i}");
                }
            }
            c if is_word(c) => {
                let start = i;
                while chars.get(i + 1).is_some_and(|&c| is_word(c)) {
                    i += 1;
                }
                let word: String = chars.get(start..=i).unwrap_or_default().iter().collect();
                // `$hale_x` would be a Grafana variable, not a metric.
                let is_variable = start > 0 && chars.get(start - 1) == Some(&'$');
                if word.starts_with("hale_") && !is_variable {
                    words.push(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    if let Some(c) = open.last() {
        bail!("unclosed `{c}`");
    }
    let mut used = BTreeSet::new();
    for word in words {
        let base = HISTOGRAM_SUFFIXES
            .iter()
            .find_map(|s| word.strip_suffix(s))
            .filter(|base| known.contains(*base))
            .unwrap_or(&word);
        if !known.contains(base) {
            bail!(
                "unknown metric {word} (Hale's metrics, from {METRICS_SOURCE}: {})",
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        used.insert(base.to_owned());
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        ["hale_endpoint_up", "hale_proxy_request_duration_seconds"]
            .map(String::from)
            .into()
    }

    #[test]
    fn expressions_are_checked_for_names_and_balance() {
        let used = check_expr(
            r#"histogram_quantile(0.99, sum by (le) (rate(hale_proxy_request_duration_seconds_bucket{endpoint=~"$endpoint"}[$__rate_interval]))) and on() max(hale_endpoint_up{x="hale_nope"})"#,
            &known(),
        )
        .unwrap();
        assert_eq!(used.len(), 2);

        let err = check_expr("max(hale_endpoint_upp)", &known()).unwrap_err();
        assert!(
            err.to_string().contains("unknown metric hale_endpoint_upp"),
            "{err}"
        );
        let err = check_expr("sum(rate(hale_endpoint_up[5m])", &known()).unwrap_err();
        assert!(err.to_string().contains("unclosed `(`"), "{err}");
        let err = check_expr(r#"hale_endpoint_up{endpoint="a}"#, &known()).unwrap_err();
        assert!(err.to_string().contains("unterminated string"), "{err}");
    }

    #[test]
    fn metric_names_come_from_the_api_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let names = known_metrics(root).unwrap();
        assert!(names.contains("hale_endpoint_up"), "{names:?}");
        assert!(
            names.contains("hale_coord_checks_skipped_total"),
            "{names:?}"
        );
    }
}
