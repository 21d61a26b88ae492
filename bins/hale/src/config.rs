//! The gateway's whole configuration: the sections each crate owns, merged into [`HaleConfig`],
//! loaded from defaults, a YAML file and the environment, validated, and resolved into the
//! [`Endpoint`]s the rest of the gateway runs on ([`LoadedConfig`]).
//!
//! Layers, lowest to highest: built-in defaults (every section is `#[serde(default)]`), the
//! YAML file, `HALE_` keys, the compatibility names (see `env_layer`); then every string
//! written `os.environ/NAME`, anywhere in the tree, is replaced by that variable. figment reads
//! the YAML into a value tree and extracts the typed config from it, lossily, so strings from
//! the environment become numbers and booleans where a key wants one. The environment layers
//! are applied to that tree by key path rather than through figment's `Env` provider, because
//! they must read a map instead of the process environment (tests cannot safely mutate it)
//! and must be able to address list items (`HALE_ENDPOINTS__0__URL`), which figment's merge
//! of a dictionary into a list cannot.
//!
//! A key written with an empty value (`shared:` with everything under it commented out, or
//! `admin_token:`) means "the default", not null.
//!
//! Every failure is one [`LoadError`]: the file and line (or the environment variable) and the
//! key path. Every duration and size is bounded by the sections' `validate` (durations at most
//! a day, sizes at most 1 GiB: see [`hale_core::config`]), so what loads is what `serve` can
//! run; credentials written into a URL never show in an error or in [`HaleConfig::effective`]. figment and serde know key paths but not lines, so lines come from serde_yaml for
//! syntax errors and from a small scanner of the file (`yaml_lines`) for everything else.

mod env_layer;
mod key_path;
mod load_error;
mod yaml_lines;

pub use env_layer::{EnvMap, SECTIONS};
pub use key_path::{KeyPath, Segment};
pub use load_error::{LoadError, Origin};

use figment::error::{Actual, Kind};
use figment::providers::{Format as _, Serialized, Yaml};
use figment::value::{Dict, Value};
use figment::{Figment, Profile, Provider as _};
use hale_api::ServerConfig;
use hale_coord::SharedConfig;
use hale_core::{ConfigError, Endpoint, EndpointConfig, HealthConfig};
use hale_proxy::ProxyConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The config file used when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "hale.yaml";

/// The prefix that makes a string value a reference to an environment variable.
const ENVIRON_PREFIX: &str = "os.environ/";

/// The whole configuration, as written (see DESIGN §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaleConfig {
    pub server: ServerConfig,
    /// This replica's identity in shared mode; `auto` is hostname plus a random suffix.
    pub pod_id: String,
    pub endpoints: Vec<EndpointConfig>,
    pub health: HealthConfig,
    pub proxy: ProxyConfig,
    pub shared: SharedConfig,
}

impl Default for HaleConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            pod_id: "auto".to_owned(),
            endpoints: Vec::new(),
            health: HealthConfig::default(),
            proxy: ProxyConfig::default(),
            shared: SharedConfig::default(),
        }
    }
}

// === impl HaleConfig ===

impl HaleConfig {
    /// Checks every section, top to bottom as DESIGN §5 lists them, and refuses duplicate
    /// endpoint names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resolve().map(drop)
    }

    /// Validates (as [`Self::validate`]) and resolves the endpoints, in configured order.
    pub fn resolve(&self) -> Result<Vec<Endpoint>, ConfigError> {
        self.server.validate("server")?;
        validate_pod_id(&self.pod_id)?;
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(self.endpoints.len());
        for (i, config) in self.endpoints.iter().enumerate() {
            let path = format!("endpoints[{i}]");
            let endpoint = config.resolve(&path)?;
            // Names are identities: in status, metrics labels and Redis keys, two endpoints
            // with one name would overwrite each other's health.
            if let Some(first) = endpoints.iter().position(|e| e.name == endpoint.name) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!(
                        "duplicate endpoint name {:?}, already used by endpoints[{first}]",
                        &*endpoint.name
                    ),
                ));
            }
            endpoints.push(endpoint);
        }
        self.health.validate("health")?;
        self.proxy.validate("proxy")?;
        self.shared.validate("shared")?;
        Ok(endpoints)
    }

    /// This config as `check-config` shows it: each endpoint's `health_check_url` and
    /// `model_url` filled in with the per-type default when not set (`""` where the type has
    /// no model list). Secrets and the Redis password are masked by their own serializers;
    /// credentials written into an endpoint's URLs (`http://user:pass@host`) are shown as
    /// `<redacted>`.
    pub fn effective(&self) -> Self {
        let mut shown = self.clone();
        for endpoint in &mut shown.endpoints {
            use hale_core::secret::redact_userinfo;
            endpoint.url = redact_userinfo(&endpoint.url);
            for url in [&mut endpoint.health_check_url, &mut endpoint.model_url]
                .into_iter()
                .flatten()
            {
                *url = redact_userinfo(url);
            }
            endpoint
                .health_check_url
                .get_or_insert_with(|| endpoint.kind.default_health_path().to_owned());
            endpoint
                .model_url
                .get_or_insert_with(|| endpoint.kind.default_model_path().unwrap_or("").to_owned());
        }
        shown
    }
}

fn validate_pod_id(pod_id: &str) -> Result<(), ConfigError> {
    // The pod id is written into Redis results and shown in status JSON; spaces or control
    // characters there would only confuse whoever reads them. Empty counts as `auto`, as a
    // manifest that templates POD_NAME into HALE_POD_ID may leave it empty.
    if pod_id.len() > 128 || pod_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            "pod_id",
            format!("must be `auto` or at most 128 characters without spaces, got {pod_id:?}"),
        ));
    }
    Ok(())
}

/// A configuration that loaded and validated, with its endpoints resolved.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: HaleConfig,
    /// `config.endpoints`, resolved, in the same order.
    pub endpoints: Vec<Endpoint>,
    /// The file it was read from; `None` for built-in defaults (plus environment).
    pub file: Option<PathBuf>,
    /// The file was read but holds no settings: no bytes, only blank lines and comments, or
    /// an empty document. Loads as the defaults; a live reload refuses it (a truncated write).
    pub file_is_empty: bool,
}

impl LoadedConfig {
    /// The effective config as YAML, secrets redacted (see [`HaleConfig::effective`]).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(&self.config.effective())
    }
}

/// The file to load: `explicit` if given, else [`DEFAULT_FILE`] when it exists in the working
/// directory, else none (built-in defaults).
pub fn config_file(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_owned()),
        // An existing but unreadable hale.yaml is reported by load(), not silently skipped.
        None => Path::new(DEFAULT_FILE)
            .try_exists()
            .unwrap_or(true)
            .then(|| PathBuf::from(DEFAULT_FILE)),
    }
}

/// The process environment as an [`EnvMap`]; variables that are not UTF-8 are left out,
/// since no config key could use them.
pub fn process_env() -> EnvMap {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// Loads the configuration from `file` (or defaults when `None`) and the environment `env`,
/// validates it and resolves its endpoints.
pub fn load(file: Option<&Path>, env: &EnvMap) -> Result<LoadedConfig, LoadError> {
    let source = match file {
        Some(path) => Some(FileText::read(path)?),
        None => None,
    };
    let mut tree = match &source {
        Some(source) => source.parse()?,
        None => Dict::new(),
    };
    let file_is_empty = source.is_some() && tree.is_empty();

    let mut blame = Blame {
        file: source.as_ref(),
        env_paths: Vec::new(),
    };
    let settings = env_layer::hale_settings(env)?
        .into_iter()
        .chain(env_layer::compat_settings(env)?);
    for setting in settings {
        env_layer::apply(&mut tree, &setting)?;
        blame.env_paths.push((setting.path, setting.var));
    }

    for (key, value) in &mut tree {
        resolve_strings(value, &KeyPath::root().key(key), env)
            .map_err(|(path, message)| blame.error(&path, &path, message))?;
    }
    tree.retain(|_, v| !matches!(v, Value::Empty(..)));

    let config: HaleConfig = Figment::from(Serialized::defaults(&tree))
        .extract_lossy()
        .map_err(|e| blame.figment_error(&e))?;
    let endpoints = config.resolve().map_err(|e| {
        let path = KeyPath::parse(&e.path);
        blame.error(&path, &path, e.message)
    })?;
    Ok(LoadedConfig {
        config,
        endpoints,
        file: file.map(Path::to_owned),
        file_is_empty,
    })
}

/// Replaces `os.environ/NAME` strings and drops keys written with an empty value, so they
/// take their defaults.
fn resolve_strings(
    value: &mut Value,
    path: &KeyPath,
    env: &EnvMap,
) -> Result<(), (KeyPath, String)> {
    match value {
        Value::String(_, s) => {
            if let Some(name) = s.strip_prefix(ENVIRON_PREFIX) {
                if name.is_empty() {
                    return Err((
                        path.clone(),
                        format!("{ENVIRON_PREFIX} needs a variable name"),
                    ));
                }
                let Some(found) = env.get(name) else {
                    return Err((
                        path.clone(),
                        format!("environment variable {name} is not set (written {s})"),
                    ));
                };
                *s = found.clone();
            }
        }
        Value::Dict(_, dict) => {
            dict.retain(|_, v| !matches!(v, Value::Empty(..)));
            for (key, child) in dict.iter_mut() {
                resolve_strings(child, &path.key(key), env)?;
            }
        }
        Value::Array(_, items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve_strings(item, &path.index(i), env)?;
            }
        }
        Value::Char(..) | Value::Bool(..) | Value::Num(..) | Value::Empty(..) => {}
    }
    Ok(())
}

// === impl FileText ===

/// The config file's path and text, kept to find the lines of keys in errors.
#[derive(Debug)]
struct FileText {
    path: PathBuf,
    text: String,
}

impl FileText {
    fn read(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoadError::new(
                Origin::File {
                    path: path.to_owned(),
                    line: None,
                },
                None,
                format!("cannot read the config file: {e}"),
            )
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
        })
    }

    fn origin(&self, line: Option<usize>) -> Origin {
        Origin::File {
            path: self.path.clone(),
            line,
        }
    }

    /// Parses the file into a value tree. serde_yaml runs first because it knows the line of
    /// a syntax error; figment's YAML provider then builds the tree that extraction reads.
    fn parse(&self) -> Result<Dict, LoadError> {
        let document: serde_yaml::Value = serde_yaml::from_str(&self.text).map_err(|e| {
            let location = e.location();
            let mut message = e.to_string();
            if let Some(at) = &location {
                let suffix = format!(" at line {} column {}", at.line(), at.column());
                message = message.replace(&suffix, &format!(" (column {})", at.column()));
            }
            LoadError::new(
                self.origin(location.map(|at| at.line())),
                None,
                format!("invalid YAML: {message}"),
            )
        })?;
        match document {
            serde_yaml::Value::Null => return Ok(Dict::new()),
            serde_yaml::Value::Mapping(_) => {}
            other => {
                let found = match other {
                    serde_yaml::Value::Sequence(_) => "a list",
                    _ => "a single value",
                };
                let first = yaml_lines::first_content_line(&self.text);
                return Err(LoadError::new(
                    self.origin(first),
                    None,
                    format!(
                        "the file must be a mapping of sections ({}), found {found}",
                        SECTIONS.join(", ")
                    ),
                ));
            }
        }
        let mut profiles = Yaml::string(&self.text)
            .data()
            .map_err(|e| LoadError::new(self.origin(None), None, e.kind.to_string()))?;
        Ok(profiles.remove(&Profile::Default).unwrap_or_default())
    }
}

// === impl Blame ===

/// Decides where a failing key came from: the environment variable that set it (or one of
/// its ancestors), else the file and the key's line, else the defaults.
#[derive(Debug)]
struct Blame<'a> {
    file: Option<&'a FileText>,
    /// Paths set from the environment, in the order they were applied.
    env_paths: Vec<(KeyPath, String)>,
}

impl Blame<'_> {
    /// An error about `shown` (the key path printed), located by `located` (the key whose
    /// line is wanted; for an unknown field, the field itself rather than its parent).
    fn error(&self, shown: &KeyPath, located: &KeyPath, message: impl Into<String>) -> LoadError {
        let from_env = self
            .env_paths
            .iter()
            .rev()
            .find(|(path, _)| located.starts_with(path));
        let origin = match (from_env, self.file) {
            (Some((_, var)), _) => Origin::Env(var.clone()),
            (None, Some(file)) => file.origin(yaml_lines::nearest_line(&file.text, located)),
            (None, None) => Origin::Defaults,
        };
        LoadError::new(origin, Some(shown.clone()), message)
    }

    fn figment_error(&self, error: &figment::Error) -> LoadError {
        let path = KeyPath::from_raw(&error.path);
        match &error.kind {
            Kind::UnknownField(found, expected) => {
                let message = format!("unknown field `{found}`{}", one_of(found, expected));
                self.error(&path.parent(), &path, message)
            }
            Kind::UnknownVariant(found, expected) => {
                let message = format!("unknown value `{found}`{}", one_of(found, expected));
                self.error(&path, &path, message)
            }
            Kind::InvalidValue(Actual::Str(raw), expected) if expected == "a duration" => {
                // humantime says what is wrong ("unknown time unit \"sekonds\"") and then
                // lists every unit it knows; the example that follows is shorter and clearer.
                let why = humantime::parse_duration(raw)
                    .err()
                    .map(|e| {
                        let e = e.to_string();
                        let short = e.split(", supported units").next().unwrap_or_default();
                        format!(" ({short})")
                    })
                    .unwrap_or_default();
                let message =
                    format!("invalid duration {raw:?}{why}; write it like 500ms, 5s, 2m or 1h30m");
                self.error(&path, &path, message)
            }
            other => self.error(&path, &path, other.to_string()),
        }
    }
}

/// ", expected one of `a`, `b`", preceded by a suggestion when `found` looks like a typo.
fn one_of(found: &str, expected: &[&str]) -> String {
    let hint = closest(found, expected)
        .map(|near| format!(" (did you mean `{near}`?)"))
        .unwrap_or_default();
    let expected: Vec<String> = expected.iter().map(|e| format!("`{e}`")).collect();
    format!("{hint}, expected one of {}", expected.join(", "))
}

/// The expected name closest to a misspelt one, when it is close enough to be a likely typo.
fn closest<'a>(found: &str, expected: &[&'a str]) -> Option<&'a str> {
    expected
        .iter()
        .map(|e| (edit_distance(found, e), *e))
        .filter(|(d, e)| *d <= (e.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn load_text(text: &str, pairs: &[(&str, &str)]) -> Result<LoadedConfig, LoadError> {
        let f = file(text);
        load(Some(f.path()), &env(pairs))
    }

    const TWO: &str = "\
endpoints:
  - name: a
    url: http://127.0.0.1:1
    type: ollama
  - name: b
    url: http://127.0.0.1:2
    type: vllm
";

    #[test]
    fn sections_are_the_fields() {
        let value = serde_json::to_value(HaleConfig::default()).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sections = SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(keys, sections);
    }

    #[test]
    fn defaults_load_without_a_file() {
        let loaded = load(None, &EnvMap::new()).unwrap();
        assert_eq!(loaded.config, HaleConfig::default());
        assert!(loaded.endpoints.is_empty());
    }

    #[test]
    fn env_overrides_file_and_compat_overrides_env() {
        let loaded = load_text(
            "shared:\n  enabled: false\n  cache_ttl: 10s\n",
            &[
                ("HALE_SHARED__ENABLED", "true"),
                ("HALE_SHARED__CACHE_TTL", "20s"),
                ("DEFAULT_SHARED_HEALTH_CHECK_TTL", "30"),
                ("HALE_HEALTH__JITTER", "0"),
                ("HALE_SERVER__API_KEYS", "[k1, 007]"),
            ],
        )
        .unwrap();
        let c = loaded.config;
        assert!(c.shared.enabled);
        assert_eq!(c.shared.cache_ttl.as_secs(), 30);
        assert_eq!(c.health.jitter, 0.0);
        assert_eq!(
            c.server
                .api_keys
                .iter()
                .map(|k| k.expose())
                .collect::<Vec<_>>(),
            ["k1", "007"]
        );
    }

    #[test]
    fn env_can_change_one_endpoint() {
        let loaded = load_text(TWO, &[("HALE_ENDPOINTS__1__URL", "http://10.0.0.9:8000")]).unwrap();
        assert_eq!(loaded.endpoints[1].url.as_str(), "http://10.0.0.9:8000/");
        let err = load_text(TWO, &[("HALE_ENDPOINTS__2__URL", "http://x:1")]).unwrap_err();
        assert_eq!(err.origin, Origin::Env("HALE_ENDPOINTS__2__URL".into()));
    }

    #[test]
    fn environ_references_resolve_anywhere() {
        let text = format!(
            "server:\n  api_keys:\n    - os.environ/KEY\n{TWO}    api_key: os.environ/VLLM_KEY\n"
        );
        let loaded = load_text(&text, &[("KEY", "k"), ("VLLM_KEY", "v")]).unwrap();
        assert_eq!(loaded.config.server.api_keys[0].expose(), "k");
        assert_eq!(loaded.endpoints[1].api_key.expose(), "v");
        let err = load_text(&text, &[("KEY", "k")]).unwrap_err();
        assert_eq!(
            err.path.as_ref().unwrap().to_string(),
            "endpoints[1].api_key"
        );
        assert_eq!(err.line(), Some(11));
        assert!(err.message.contains("VLLM_KEY"), "{err}");
    }

    #[test]
    fn empty_values_mean_default() {
        let loaded = load_text(
            "server:\n  admin_token:\nshared:\n# all commented out\n",
            &[],
        )
        .unwrap();
        assert_eq!(loaded.config, HaleConfig::default());
    }

    #[test]
    fn unknown_field_names_key_path_and_line() {
        let text = TWO.replace("    type: vllm", "    type: vllm\n    chek_interval: 5s");
        let err = load_text(&text, &[]).unwrap_err();
        assert_eq!(err.path.as_ref().unwrap().to_string(), "endpoints[1]");
        assert_eq!(err.line(), Some(8));
        assert!(
            err.message
                .contains("`chek_interval` (did you mean `check_interval`?)"),
            "{err}"
        );
    }

    #[test]
    fn bounds_apply_to_compatibility_names_too() {
        let err = load_text(
            TWO,
            &[("DEFAULT_SHARED_HEALTH_CHECK_TTL", "18446744073709551615")],
        )
        .unwrap_err();
        assert_eq!(
            err.origin,
            Origin::Env("DEFAULT_SHARED_HEALTH_CHECK_TTL".into())
        );
        assert_eq!(err.path.as_ref().unwrap().to_string(), "shared.cache_ttl");
        assert!(err.message.starts_with("must be at most 1day"), "{err}");
        // Exactly a day is accepted.
        let loaded = load_text(TWO, &[("DEFAULT_SHARED_HEALTH_CHECK_TTL", "86400")]).unwrap();
        assert_eq!(loaded.config.shared.cache_ttl.as_secs(), 86_400);
    }

    #[test]
    fn redis_topologies_load_from_yaml_and_env() {
        let yaml = format!(
            "{TWO}shared:\n  enabled: true\n  sentinel:\n    master_name: mymaster\n    nodes: [\"10.0.0.1:26379\", \"10.0.0.2:26379\"]\n    password: os.environ/SENTINEL_PW\n  tls:\n    ca_file: /etc/ca.pem\n"
        );
        let loaded = load_text(&yaml, &[("SENTINEL_PW", "pw")]).unwrap();
        let shared = &loaded.config.shared;
        let sentinel = shared.sentinel.as_ref().unwrap();
        assert_eq!(sentinel.nodes.len(), 2);
        assert_eq!(sentinel.password.expose(), "pw");
        assert!(shared.uses_tls());
        let shown = serde_json::to_string(&loaded.config.effective()).unwrap();
        assert!(!shown.contains("\"pw\""), "{shown}");
        // A bad node names its key, from the file and from the environment.
        let err = load_text(
            &yaml.replace("10.0.0.2:26379", "10.0.0.2"),
            &[("SENTINEL_PW", "pw")],
        )
        .unwrap_err();
        assert_eq!(
            err.path.as_ref().unwrap().to_string(),
            "shared.sentinel.nodes"
        );
        let err = load_text(TWO, &[("REDIS_CLUSTER_NODES", "c1:7000,c2")]).unwrap_err();
        assert_eq!(
            err.path.as_ref().unwrap().to_string(),
            "shared.cluster_nodes"
        );
        let loaded = load_text(
            TWO,
            &[
                ("REDIS_SENTINEL_NODES", "s1:26379,s2:26379"),
                ("REDIS_SERVICE_NAME", "mymaster"),
            ],
        )
        .unwrap();
        let sentinel = loaded.config.shared.sentinel.unwrap();
        assert_eq!(sentinel.master_name, "mymaster");
        assert_eq!(sentinel.nodes, ["s1:26379", "s2:26379"]);
    }

    #[test]
    fn duplicate_names_point_at_the_second() {
        let err = load_text(&TWO.replace("name: b", "name: a"), &[]).unwrap_err();
        assert_eq!(err.path.as_ref().unwrap().to_string(), "endpoints[1].name");
        assert_eq!(err.line(), Some(5));
        assert!(err.message.contains("endpoints[0]"), "{err}");
    }

    #[test]
    fn validation_errors_blame_the_env_var_that_set_them() {
        let err = load_text(TWO, &[("HALE_HEALTH__JITTER", "1.5")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "env HALE_HEALTH__JITTER: health.jitter: must be in [0, 1), got 1.5"
        );
        let err = load_text(TWO, &[("DEFAULT_SHARED_HEALTH_CHECK_LOCK_TTL", "0")]).unwrap_err();
        assert_eq!(
            err.origin,
            Origin::Env("DEFAULT_SHARED_HEALTH_CHECK_LOCK_TTL".into())
        );
    }

    #[test]
    fn syntax_errors_and_bad_shapes_have_lines() {
        let err = load_text("server:\n  listen: [oops\n", &[]).unwrap_err();
        assert!(err.line().is_some(), "{err}");
        assert!(err.message.starts_with("invalid YAML"), "{err}");
        let err = load_text("# comment\n- a\n- b\n", &[]).unwrap_err();
        assert_eq!(err.line(), Some(2));
        let err = load(Some(Path::new("/nonexistent/hale.yaml")), &EnvMap::new()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/hale.yaml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn effective_fills_default_urls() {
        let shown = load_text(TWO, &[]).unwrap().config.effective();
        assert_eq!(shown.endpoints[0].health_check_url.as_deref(), Some("/"));
        assert_eq!(shown.endpoints[0].model_url.as_deref(), Some("/api/tags"));
        assert_eq!(
            shown.endpoints[1].health_check_url.as_deref(),
            Some("/health")
        );
    }

    #[test]
    fn unknown_values_are_listed_with_a_suggestion() {
        let text = "proxy:\n  balancer: round_robin\n";
        let err = load_text(text, &[]).unwrap_err();
        assert_eq!(
            err.to_string().split_once(": line").unwrap().1,
            " 2: proxy.balancer: unknown value `round_robin` (did you mean `round-robin`?), \
             expected one of `priority`, `round-robin`"
        );
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let fields = ["check_interval", "check_timeout", "url", "name"];
        assert_eq!(closest("chek_interval", &fields), Some("check_interval"));
        assert_eq!(closest("nmae", &fields), Some("name"));
        assert_eq!(closest("completely_else", &fields), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
