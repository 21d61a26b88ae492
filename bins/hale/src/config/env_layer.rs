//! The two environment layers over the config file: `HALE_` + key path joined by `__`
//! (`HALE_SHARED__ENABLED=true`, `HALE_ENDPOINTS__0__URL=…`), and above it the compatibility
//! names LiteLLM deployments already set (`USE_SHARED_HEALTH_CHECK`, `REDIS_URL`, …).
//!
//! Both read from an [`EnvMap`] rather than the process environment, so tests can load a
//! config without mutating global state. Only `HALE_` names whose first segment is a
//! top-level section are taken: `HALE_LOG`, `HALE_BIN_DIR` or `HALE_CONFIG` belong to other
//! parts of the system and must never break loading. `HALE_` values stay strings (figment's
//! lossy extraction turns `"true"` or `"120"` into a bool or number where the key wants one,
//! so a numeric-looking token stays a token); a value written `[a, b]` is a list of strings.
//! Compatibility values are parsed here, and one that does not parse is an error naming it.

use super::key_path::{KeyPath, Segment};
use super::load_error::{LoadError, Origin};
use figment::value::{Dict, Tag, Value};
use std::collections::BTreeMap;

/// Environment variables by name; what [`super::load`] reads instead of `std::env`.
pub type EnvMap = BTreeMap<String, String>;

/// The top-level keys of the config; a `HALE_` variable must start with one to be read.
pub const SECTIONS: [&str; 6] = ["server", "pod_id", "endpoints", "health", "proxy", "shared"];

/// The prefix of environment variables that set config keys.
const PREFIX: &str = "HALE_";

/// One value the environment sets, at a key path, and the variable it came from.
#[derive(Debug, Clone)]
pub struct EnvSetting {
    pub var: String,
    pub path: KeyPath,
    pub value: Value,
}

/// The `HALE_…` settings, shallowest path first so that `HALE_SHARED__ENABLED` refines a
/// whole-section `HALE_SHARED` rather than being replaced by it.
pub fn hale_settings(env: &EnvMap) -> Result<Vec<EnvSetting>, LoadError> {
    let mut settings = Vec::new();
    for (var, raw) in env {
        let Some(name) = var.strip_prefix(PREFIX) else {
            continue;
        };
        let name = name.to_ascii_lowercase();
        let parts: Vec<&str> = name.split("__").collect();
        if !parts.first().is_some_and(|first| SECTIONS.contains(first)) {
            continue;
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(LoadError::new(
                Origin::Env(var.clone()),
                None,
                "not a key path: segments are joined by exactly two underscores, \
                 as in HALE_SHARED__REDIS_URL",
            ));
        }
        settings.push(EnvSetting {
            var: var.clone(),
            path: KeyPath::from_raw(&parts),
            value: env_value(raw),
        });
    }
    settings.sort_by_key(|s| s.path.segments().len());
    Ok(settings)
}

/// The compatibility names, which take precedence over the file and `HALE_` keys. Empty
/// values count as unset, as Kubernetes manifests often template variables to "".
pub fn compat_settings(env: &EnvMap) -> Result<Vec<EnvSetting>, LoadError> {
    let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let setting = |var: &str, path: &str, value: Value| EnvSetting {
        var: var.to_owned(),
        path: KeyPath::parse(path),
        value,
    };
    let mut settings = Vec::new();

    let var = "USE_SHARED_HEALTH_CHECK";
    if let Some(raw) = get(var) {
        let enabled = parse_bool(raw).ok_or_else(|| {
            compat_error(
                var,
                "shared.enabled",
                format!("expected true or false, got {raw:?}"),
            )
        })?;
        settings.push(setting(var, "shared.enabled", Value::from(enabled)));
    }
    for (var, path) in [
        ("DEFAULT_SHARED_HEALTH_CHECK_TTL", "shared.cache_ttl"),
        ("DEFAULT_SHARED_HEALTH_CHECK_LOCK_TTL", "shared.lock_ttl"),
    ] {
        if let Some(raw) = get(var) {
            let seconds: u64 = raw.parse().map_err(|_| {
                compat_error(
                    var,
                    path,
                    format!("expected a whole number of seconds, got {raw:?}"),
                )
            })?;
            settings.push(setting(var, path, Value::from(format!("{seconds}s"))));
        }
    }

    // The port is checked whenever it is set, even when REDIS_URL wins over it, so a typo
    // in a manifest is caught before the day REDIS_URL is removed.
    let port = match get("REDIS_PORT") {
        Some(raw) => Some(redis_port(raw).ok_or_else(|| {
            compat_error(
                "REDIS_PORT",
                "shared.redis_url",
                format!("expected a port number (1-65535) or tcp://<host>:<port>, got {raw:?}"),
            )
        })?),
        None => None,
    };
    if let Some(url) = get("REDIS_URL") {
        settings.push(setting(
            "REDIS_URL",
            "shared.redis_url",
            Value::from(url.to_owned()),
        ));
    } else if let Some(host) = get("REDIS_HOST") {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let url = format!("redis://{host}:{}", port.unwrap_or(6379));
        settings.push(setting("REDIS_HOST", "shared.redis_url", Value::from(url)));
    }
    // A password is taken as written: spaces at its ends may be part of it.
    if let Some(password) = env.get("REDIS_PASSWORD").filter(|p| !p.is_empty()) {
        let value = Value::from(password.clone());
        settings.push(setting("REDIS_PASSWORD", "shared.redis_password", value));
    }
    settings.extend(redis_topology(env));
    Ok(settings)
}

/// Sentinel and Cluster, as LiteLLM names them: `REDIS_SENTINEL_NODES` (comma-separated
/// `host:port`) turns Sentinel on, with `REDIS_SERVICE_NAME` (the master's name) and
/// `REDIS_SENTINEL_PASSWORD`, which mean nothing without it; `REDIS_CLUSTER_NODES` lists a
/// Cluster's seed nodes. The nodes are checked by `shared`'s validation, which names the key.
fn redis_topology(env: &EnvMap) -> Vec<EnvSetting> {
    let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let list = |raw: &str| {
        Value::from(
            raw.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(Value::from)
                .collect::<Vec<_>>(),
        )
    };
    let setting = |var: &str, path: &str, value: Value| EnvSetting {
        var: var.to_owned(),
        path: KeyPath::parse(path),
        value,
    };
    let mut settings = Vec::new();
    if let Some(nodes) = get("REDIS_SENTINEL_NODES") {
        settings.push(setting(
            "REDIS_SENTINEL_NODES",
            "shared.sentinel.nodes",
            list(nodes),
        ));
        if let Some(name) = get("REDIS_SERVICE_NAME") {
            let value = Value::from(name.to_owned());
            settings.push(setting(
                "REDIS_SERVICE_NAME",
                "shared.sentinel.master_name",
                value,
            ));
        }
        if let Some(password) = env.get("REDIS_SENTINEL_PASSWORD").filter(|p| !p.is_empty()) {
            let value = Value::from(password.clone());
            settings.push(setting(
                "REDIS_SENTINEL_PASSWORD",
                "shared.sentinel.password",
                value,
            ));
        }
    }
    if let Some(nodes) = get("REDIS_CLUSTER_NODES") {
        settings.push(setting(
            "REDIS_CLUSTER_NODES",
            "shared.cluster_nodes",
            list(nodes),
        ));
    }
    settings
}

/// `REDIS_PORT` as a port number, or in the form Kubernetes' service links (and Docker's
/// links) give it, `tcp://<ip>:<port>`, for a Service named `redis` in the pod's namespace:
/// its port is taken (the host still comes from `REDIS_HOST`), so such a pod starts instead
/// of failing on a variable it did not set.
fn redis_port(raw: &str) -> Option<u16> {
    let port = match raw.strip_prefix("tcp://") {
        Some(addr) => addr.rsplit_once(':')?.1,
        None => raw,
    };
    port.parse::<u16>().ok().filter(|p| *p != 0)
}

fn compat_error(var: &str, path: &str, message: String) -> LoadError {
    LoadError::new(
        Origin::Env(var.to_owned()),
        Some(KeyPath::parse(path)),
        message,
    )
}

fn parse_bool(raw: &str) -> Option<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A `HALE_` value: a string, or a list of strings when written `[a, "b, c"]`.
fn env_value(raw: &str) -> Value {
    let trimmed = raw.trim();
    match trimmed.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) => Value::from(
            split_list(inner)
                .into_iter()
                .map(Value::from)
                .collect::<Vec<_>>(),
        ),
        None => Value::from(raw.to_owned()),
    }
}

/// Splits `a, "b, c", 'd'` on commas outside quotes; quotes are removed.
fn split_list(inner: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    let mut quoted = false;
    for c in inner.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                quoted = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                items.push(std::mem::take(&mut current));
                quoted = false;
            }
            _ => current.push(c),
        }
    }
    if quoted || !current.trim().is_empty() || !items.is_empty() {
        items.push(current);
    }
    // Padding around commas is not part of an item; quote an item to keep a comma in it.
    items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .collect()
}

/// Puts `setting` into the value tree at its path, replacing what is there, as a higher
/// layer does. Lists can be changed item by item but not grown: an index past the end is an
/// error, because an endpoint made of a few env keys would silently miss the rest.
pub fn apply(root: &mut Dict, setting: &EnvSetting) -> Result<(), LoadError> {
    let Some((Segment::Key(first), rest)) = setting.path.segments().split_first() else {
        return Ok(());
    };
    let slot = root.entry(first.clone()).or_insert_with(empty_dict);
    set_at(slot, rest, &setting.value, &KeyPath::root().key(first)).map_err(|(path, message)| {
        LoadError::new(Origin::Env(setting.var.clone()), Some(path), message)
    })
}

fn empty_dict() -> Value {
    Value::Dict(Tag::Default, Dict::new())
}

fn set_at(
    slot: &mut Value,
    segments: &[Segment],
    value: &Value,
    here: &KeyPath,
) -> Result<(), (KeyPath, String)> {
    let Some((first, rest)) = segments.split_first() else {
        *slot = value.clone();
        return Ok(());
    };
    match first {
        Segment::Key(key) => {
            if !matches!(slot, Value::Dict(..)) {
                *slot = empty_dict();
            }
            let Value::Dict(_, dict) = slot else {
                return Ok(());
            };
            let child = dict.entry(key.clone()).or_insert_with(empty_dict);
            set_at(child, rest, value, &here.key(key))
        }
        Segment::Index(i) => {
            let len = match slot {
                Value::Array(_, items) => items.len(),
                _ => 0,
            };
            match slot {
                Value::Array(_, items) if *i < len => {
                    set_at(&mut items[*i], rest, value, &here.index(*i))
                }
                _ => Err((
                    here.index(*i),
                    format!(
                        "there is no such item to change ({here} has {len}); the environment \
                         can change list items but not add them"
                    ),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_section_keys_are_taken() {
        let settings = hale_settings(&env(&[
            ("HALE_LOG", "debug"),
            ("HALE_BIN_DIR", "/x"),
            ("HALE_CONFIG", "/etc/hale.yaml"),
            ("HALE_SHARED__ENABLED", "true"),
            ("HALE_ENDPOINTS__1__API_KEY", "k"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
        let paths: Vec<String> = settings.iter().map(|s| s.path.to_string()).collect();
        assert_eq!(paths, ["shared.enabled", "endpoints[1].api_key"]);
        assert!(hale_settings(&env(&[("HALE_SHARED__", "x")])).is_err());
    }

    #[test]
    fn lists_are_lists_of_strings() {
        assert_eq!(split_list("a, \"b, c\" ,'007'"), ["a", "b, c", "007"]);
        assert!(split_list(" ").is_empty());
        assert_eq!(split_list("\"\""), [""]);
        assert!(matches!(env_value("[x, y]"), Value::Array(_, v) if v.len() == 2));
        assert!(matches!(env_value("plain [x]"), Value::String(..)));
    }

    #[test]
    fn compat_names_map_to_shared() {
        let settings = compat_settings(&env(&[
            ("USE_SHARED_HEALTH_CHECK", "True"),
            ("DEFAULT_SHARED_HEALTH_CHECK_TTL", "120"),
            ("REDIS_HOST", "redis.svc"),
            ("REDIS_PORT", "6380"),
            ("REDIS_PASSWORD", "hunter2"),
        ]))
        .unwrap();
        assert_eq!(settings.len(), 4);
        assert_eq!(settings[0].value.to_bool(), Some(true));
        let url = settings.iter().find(|s| s.var == "REDIS_HOST").unwrap();
        assert_eq!(url.value.as_str(), Some("redis://redis.svc:6380"));
        let ttl = settings
            .iter()
            .find(|s| s.path.to_string() == "shared.cache_ttl")
            .unwrap();
        assert_eq!(ttl.value.as_str(), Some("120s"));
        // REDIS_URL wins over host and port.
        let settings =
            compat_settings(&env(&[("REDIS_URL", "redis://a:1"), ("REDIS_HOST", "b")])).unwrap();
        assert_eq!(settings.len(), 1);
        assert_eq!(settings[0].value.as_str(), Some("redis://a:1"));
    }

    #[test]
    fn sentinel_and_cluster_compat_names() {
        let settings = compat_settings(&env(&[
            ("REDIS_SENTINEL_NODES", "s1:26379, s2:26379,"),
            ("REDIS_SERVICE_NAME", "mymaster"),
            ("REDIS_SENTINEL_PASSWORD", "pw"),
        ]))
        .unwrap();
        let paths: Vec<String> = settings.iter().map(|s| s.path.to_string()).collect();
        assert_eq!(
            paths,
            [
                "shared.sentinel.nodes",
                "shared.sentinel.master_name",
                "shared.sentinel.password"
            ]
        );
        assert!(matches!(&settings[0].value, Value::Array(_, v) if v.len() == 2));
        let mut root = Dict::new();
        for s in &settings {
            apply(&mut root, s).unwrap();
        }
        assert!(root["shared"].find_ref("sentinel.nodes").is_some());
        // The service name and sentinel password mean nothing without the nodes.
        let settings = compat_settings(&env(&[
            ("REDIS_SERVICE_NAME", "mymaster"),
            ("REDIS_SENTINEL_PASSWORD", "pw"),
            ("REDIS_CLUSTER_NODES", "c1:7000,c2:7001"),
        ]))
        .unwrap();
        assert_eq!(settings.len(), 1);
        assert_eq!(settings[0].path.to_string(), "shared.cluster_nodes");
    }

    #[test]
    fn a_kubernetes_service_link_in_redis_port_gives_its_port() {
        let settings = compat_settings(&env(&[
            ("REDIS_HOST", "redis.svc"),
            ("REDIS_PORT", "tcp://10.0.0.7:6380"),
        ]))
        .unwrap();
        assert_eq!(settings.len(), 1);
        assert_eq!(settings[0].value.as_str(), Some("redis://redis.svc:6380"));
    }

    #[test]
    fn bad_compat_values_name_the_variable() {
        for (var, value) in [
            ("USE_SHARED_HEALTH_CHECK", "maybe"),
            ("DEFAULT_SHARED_HEALTH_CHECK_TTL", "2m"),
            ("DEFAULT_SHARED_HEALTH_CHECK_LOCK_TTL", "-1"),
            ("REDIS_PORT", "redis"),
            ("REDIS_PORT", "tcp://10.0.0.7"),
            ("REDIS_PORT", "udp://10.0.0.7:6379"),
        ] {
            let err = compat_settings(&env(&[(var, value)])).unwrap_err();
            assert_eq!(err.origin, Origin::Env(var.to_owned()));
            assert!(err.message.contains(value), "{err}");
        }
    }

    #[test]
    fn list_items_can_be_changed_but_not_added() {
        let mut root = Dict::new();
        let list = Value::from(vec![Value::from(Dict::new())]);
        root.insert("endpoints".into(), list);
        let set = |path: &str| EnvSetting {
            var: "HALE_X".into(),
            path: KeyPath::parse(path),
            value: Value::from("v".to_owned()),
        };
        apply(&mut root, &set("endpoints[0].url")).unwrap();
        let err = apply(&mut root, &set("endpoints[1].url")).unwrap_err();
        assert_eq!(err.path.unwrap().to_string(), "endpoints[1]");
        apply(&mut root, &set("shared.enabled")).unwrap();
        assert!(root["shared"].find_ref("enabled").is_some());
    }
}
