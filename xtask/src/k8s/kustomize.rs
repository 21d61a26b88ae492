//! A small kustomize: renders a kustomization directory the way `kubectl kustomize` does, for
//! exactly the fields `deploy/k8s` uses, so the test command can validate the manifests on a
//! machine without kustomize or kubectl.
//!
//! Supported: `resources` (YAML files in the directory, one or more documents each),
//! `configMapGenerator` and `secretGenerator` entries with `name`, `files` (`path` or
//! `key=path`), `literals` (`key=value`) and, for secrets, `type`. Generated names get
//! kustomize's content-hash suffix (`hale-config-d82b45f2kd`), computed as kustomize computes
//! it, and references to them in pod templates (volumes, `env`, `envFrom`,
//! `imagePullSecrets`) are rewritten, so a changed config file rolls the Deployment just as
//! with the real tool. Any other field, in the kustomization or in a generator, is an error
//! that names it: a base that outgrows this renderer must fail here, never be half-rendered.
//! `cargo xtask k8s --against-kubectl` compares the result with the real tool's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde::Deserialize as _;
use serde_yaml::{Mapping, Value};
use sha2::{Digest as _, Sha256};

/// The kustomization fields this renderer understands.
const FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "configMapGenerator",
    "secretGenerator",
];

/// The fields of a generator entry it understands.
const GENERATOR_FIELDS: &[&str] = &["name", "files", "literals", "type"];

/// Renders `dir/kustomization.yaml`: the generated ConfigMaps and Secrets first (so that
/// `kubectl apply -f` creates them before the pods that mount them), then the resources in
/// the order listed.
pub(crate) fn render(dir: &Path) -> anyhow::Result<Vec<Value>> {
    let path = dir.join("kustomization.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kustomization: Mapping = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a YAML mapping", path.display()))?;
    for key in kustomization.keys() {
        let key = key.as_str().unwrap_or_default();
        if !FIELDS.contains(&key) {
            bail!(
                "{}: `{key}` is not supported by xtask's kustomize renderer (it knows {}); \
                 keep the base within those fields or teach xtask/src/k8s/kustomize.rs",
                path.display(),
                FIELDS.join(", ")
            );
        }
    }
    expect_str(
        &kustomization,
        "apiVersion",
        "kustomize.config.k8s.io/v1beta1",
        &path,
    )?;
    expect_str(&kustomization, "kind", "Kustomization", &path)?;

    let mut generated = Vec::new();
    let mut renames = HashMap::new();
    for (field, kind) in [
        ("configMapGenerator", GeneratedKind::ConfigMap),
        ("secretGenerator", GeneratedKind::Secret),
    ] {
        for (i, entry) in list(&kustomization, field, &path)?.iter().enumerate() {
            let generator = Generator::parse(entry, kind, dir)
                .with_context(|| format!("{}: {field}[{i}]", path.display()))?;
            let (resource, name) = generator.render()?;
            renames.insert((kind.as_str(), generator.name.clone()), name);
            generated.push(resource);
        }
    }

    let mut resources = generated;
    for entry in list(&kustomization, "resources", &path)? {
        let Some(file) = entry.as_str() else {
            bail!("{}: resources must be file names", path.display());
        };
        let file = contained(dir, file).with_context(|| format!("{}", path.display()))?;
        resources.extend(read_resources(&file)?);
    }

    let mut seen = HashSet::new();
    for resource in &mut resources {
        let id = resource_id(resource)?;
        if !seen.insert(id.clone()) {
            bail!("{id} is defined twice");
        }
        rewrite_references(resource, &renames);
    }
    Ok(resources)
}

/// The rendered resources as one multi-document YAML stream.
pub(crate) fn to_yaml(resources: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, resource) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(resource)?);
    }
    Ok(out)
}

/// Every non-empty document of a YAML stream.
pub(crate) fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document)?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// `Kind/name` of a resource, for messages and comparisons.
pub(crate) fn resource_id(resource: &Value) -> anyhow::Result<String> {
    let kind = resource.get("kind").and_then(Value::as_str);
    let name = resource
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    match (kind, name) {
        (Some(kind), Some(name)) => Ok(format!("{kind}/{name}")),
        _ => bail!("a resource without kind or metadata.name:\n{resource:?}"),
    }
}

fn read_resources(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let documents =
        parse_documents(&text).with_context(|| format!("{} is not valid YAML", file.display()))?;
    for document in &documents {
        resource_id(document).with_context(|| format!("in {}", file.display()))?;
        if document.get("apiVersion").and_then(Value::as_str).is_none() {
            bail!("{}: a resource without apiVersion", file.display());
        }
    }
    Ok(documents)
}

/// `file` inside `dir`: kustomize, too, refuses to load files from outside the
/// kustomization's directory.
fn contained(dir: &Path, file: &str) -> anyhow::Result<std::path::PathBuf> {
    let relative = Path::new(file);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("{file}: only files inside the kustomization directory are supported");
    }
    let path = dir.join(relative);
    if !path.is_file() {
        bail!(
            "{file}: not a file (directories, remote bases and globs are not supported by \
             xtask's renderer)"
        );
    }
    Ok(path)
}

fn expect_str(map: &Mapping, key: &str, want: &str, path: &Path) -> anyhow::Result<()> {
    match map.get(key) {
        None => Ok(()),
        Some(v) if v.as_str() == Some(want) => Ok(()),
        Some(v) => bail!("{}: {key} must be {want}, got {v:?}", path.display()),
    }
}

fn list<'a>(map: &'a Mapping, key: &str, path: &Path) -> anyhow::Result<&'a [Value]> {
    match map.get(key) {
        None => Ok(&[]),
        Some(Value::Sequence(items)) => Ok(items),
        Some(_) => bail!("{}: {key} must be a list", path.display()),
    }
}

// === impl Generator ===

#[derive(Debug, Clone, Copy)]
enum GeneratedKind {
    ConfigMap,
    Secret,
}

impl GeneratedKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }
}

/// One `configMapGenerator` or `secretGenerator` entry, its data read.
#[derive(Debug)]
struct Generator {
    kind: GeneratedKind,
    name: String,
    secret_type: String,
    /// Key to value, as written (not yet base64 for secrets).
    data: BTreeMap<String, String>,
}

impl Generator {
    fn parse(entry: &Value, kind: GeneratedKind, dir: &Path) -> anyhow::Result<Self> {
        let Some(map) = entry.as_mapping() else {
            bail!("a generator must be a mapping");
        };
        for key in map.keys() {
            let key = key.as_str().unwrap_or_default();
            let allowed = GENERATOR_FIELDS.contains(&key)
                && (key != "type" || matches!(kind, GeneratedKind::Secret));
            if !allowed {
                bail!("`{key}` is not supported by xtask's kustomize renderer");
            }
        }
        let name = map
            .get("name")
            .and_then(Value::as_str)
            .context("a generator needs a name")?
            .to_owned();
        let secret_type = map
            .get("type")
            .map(|t| t.as_str().context("type must be a string"))
            .transpose()?
            .unwrap_or("Opaque")
            .to_owned();
        let mut data = BTreeMap::new();
        let mut add = |key: String, value: String| -> anyhow::Result<()> {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                bail!("{key:?} is not a valid {} key", kind.as_str());
            }
            if data.insert(key.clone(), value).is_some() {
                bail!("the key {key:?} is given twice");
            }
            Ok(())
        };
        for item in list(map, "files", dir)? {
            let spec = item.as_str().context("files must be strings")?;
            let (key, file) = match spec.split_once('=') {
                Some((key, file)) => (key.to_owned(), file),
                None => {
                    let base = Path::new(spec)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .with_context(|| format!("{spec}: no file name"))?;
                    (base.to_owned(), spec)
                }
            };
            let path = contained(dir, file)?;
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("reading {} (binary data is not supported)", path.display())
            })?;
            add(key, text)?;
        }
        for item in list(map, "literals", dir)? {
            let literal = item.as_str().context("literals must be strings")?;
            let Some((key, value)) = literal.split_once('=') else {
                bail!("the literal {literal:?} is not key=value");
            };
            add(key.to_owned(), unquote(value).to_owned())?;
        }
        Ok(Self {
            kind,
            name,
            secret_type,
            data,
        })
    }

    /// The resource and its name with the hash suffix.
    fn render(&self) -> anyhow::Result<(Value, String)> {
        let mut data = Mapping::new();
        let mut hashed = BTreeMap::new();
        for (key, value) in &self.data {
            let value = match self.kind {
                GeneratedKind::ConfigMap => value.clone(),
                GeneratedKind::Secret => {
                    base64::engine::general_purpose::STANDARD.encode(value.as_bytes())
                }
            };
            hashed.insert(key.clone(), value.clone());
            data.insert(Value::from(key.as_str()), Value::from(value));
        }
        // What kustomize hashes (api/hasher): the JSON of these fields, keys sorted as Go's
        // encoding/json sorts map keys. The name is hashed as "": kustomize looks it up as
        // the single field "metadata/name", which finds nothing, and hashes an empty string
        // instead. The expected names in the tests, made by kubectl kustomize, confirm it.
        let data_json = serde_json::to_string(&hashed)?;
        let encoded = match self.kind {
            GeneratedKind::ConfigMap => {
                format!(r#"{{"data":{data_json},"kind":"ConfigMap","name":""}}"#)
            }
            GeneratedKind::Secret => {
                let type_json = serde_json::to_string(&self.secret_type)?;
                format!(r#"{{"data":{data_json},"kind":"Secret","name":"","type":{type_json}}}"#)
            }
        };
        let name = format!("{}-{}", self.name, name_hash(&encoded));

        let mut metadata = Mapping::new();
        metadata.insert("name".into(), Value::from(name.as_str()));
        let mut resource = Mapping::new();
        resource.insert("apiVersion".into(), "v1".into());
        resource.insert("kind".into(), self.kind.as_str().into());
        resource.insert("metadata".into(), Value::Mapping(metadata));
        resource.insert("data".into(), Value::Mapping(data));
        if matches!(self.kind, GeneratedKind::Secret) {
            resource.insert("type".into(), Value::from(self.secret_type.as_str()));
        }
        Ok((Value::Mapping(resource), name))
    }
}

/// kustomize drops one pair of matching quotes around a literal's value.
fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

/// kustomize's name suffix for `encoded`: Go's JSON escapes `<`, `>`, `&`, U+2028 and U+2029
/// where serde_json does not, then the first ten hex digits of its SHA-256 with the digits
/// and letters that could spell words (0 1 3 a e) swapped for others.
fn name_hash(encoded: &str) -> String {
    let mut escaped = String::with_capacity(encoded.len());
    for c in encoded.chars() {
        match c {
            '<' => escaped.push_str("\\u003c"),
            '>' => escaped.push_str("\\u003e"),
            '&' => escaped.push_str("\\u0026"),
            '\u{2028}' => escaped.push_str("\\u2028"),
            '\u{2029}' => escaped.push_str("\\u2029"),
            c => escaped.push(c),
        }
    }
    let digest = Sha256::digest(escaped.as_bytes());
    digest
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(10)
        .map(|nibble| match nibble {
            0 => 'g',
            1 => 'h',
            3 => 'k',
            10 => 'm',
            14 => 't',
            n => char::from_digit(u32::from(n), 16).unwrap_or('?'),
        })
        .collect()
}

// === references ===

/// Points references to generated ConfigMaps and Secrets (by their names before the hash)
/// at the hashed names, in every pod template of `resource`.
fn rewrite_references(resource: &mut Value, renames: &HashMap<(&'static str, String), String>) {
    let kind = resource.get("kind").and_then(Value::as_str).unwrap_or("");
    let pod_spec = match kind {
        "Pod" => resource.get_mut("spec"),
        "CronJob" => resource
            .get_mut("spec")
            .and_then(|s| s.get_mut("jobTemplate"))
            .and_then(|s| s.get_mut("spec"))
            .and_then(|s| s.get_mut("template"))
            .and_then(|s| s.get_mut("spec")),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => resource
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|s| s.get_mut("spec")),
        _ => None,
    };
    let Some(spec) = pod_spec else {
        return;
    };
    let rename = |value: Option<&mut Value>, kind: &'static str| {
        if let Some(value) = value
            && let Some(new) = value
                .as_str()
                .and_then(|old| renames.get(&(kind, old.to_owned())))
        {
            *value = Value::from(new.as_str());
        }
    };
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        for container in items_mut(spec.get_mut(field)) {
            for env in items_mut(container.get_mut("env")) {
                if let Some(from) = env.get_mut("valueFrom") {
                    rename(name_of(from, "configMapKeyRef"), "ConfigMap");
                    rename(name_of(from, "secretKeyRef"), "Secret");
                }
            }
            for from in items_mut(container.get_mut("envFrom")) {
                rename(name_of(from, "configMapRef"), "ConfigMap");
                rename(name_of(from, "secretRef"), "Secret");
            }
        }
    }
    for volume in items_mut(spec.get_mut("volumes")) {
        rename(name_of(volume, "configMap"), "ConfigMap");
        rename(
            volume
                .get_mut("secret")
                .and_then(|s| s.get_mut("secretName")),
            "Secret",
        );
        let sources = volume
            .get_mut("projected")
            .and_then(|p| p.get_mut("sources"));
        for source in items_mut(sources) {
            rename(name_of(source, "configMap"), "ConfigMap");
            rename(name_of(source, "secret"), "Secret");
        }
    }
    for secret in items_mut(spec.get_mut("imagePullSecrets")) {
        rename(secret.get_mut("name"), "Secret");
    }
}

fn name_of<'a>(value: &'a mut Value, field: &str) -> Option<&'a mut Value> {
    value.get_mut(field).and_then(|v| v.get_mut("name"))
}

fn items_mut(value: Option<&mut Value>) -> impl Iterator<Item = &mut Value> {
    value.and_then(Value::as_sequence_mut).into_iter().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// A fresh directory for one test, removed when dropped (xtask has no tempfile
    /// dependency).
    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    // The expected names were produced by `kubectl kustomize` (kustomize v5.5.0) on the
    // same input, including the characters Go's JSON escapes.
    #[test]
    fn generated_names_match_kustomize() {
        let dir = scratch("kustomize-names");
        write(&dir, "conf.txt", "a: <b> & \"c\"\nline2\n");
        write(
            &dir,
            "kustomization.yaml",
            r#"
configMapGenerator:
  - name: example
    files:
      - conf.txt
      - renamed=conf.txt
    literals:
      - greeting=hello world
      - quoted="x=y"
secretGenerator:
  - name: creds
    literals:
      - password=p<&>
"#,
        );
        let rendered = render(&dir).unwrap();
        let ids: Vec<String> = rendered.iter().map(|r| resource_id(r).unwrap()).collect();
        assert_eq!(
            ids,
            ["ConfigMap/example-72kmd7b844", "Secret/creds-29276tf4ch"]
        );
        assert_eq!(rendered[0]["data"]["quoted"], Value::from("x=y"));
        assert_eq!(rendered[1]["data"]["password"], Value::from("cDwmPg=="));
        assert_eq!(rendered[1]["type"], Value::from("Opaque"));
    }

    #[test]
    fn references_follow_the_hashed_names() {
        let dir = scratch("kustomize-refs");
        write(
            &dir,
            "kustomization.yaml",
            "resources: [app.yaml]\nsecretGenerator:\n  - name: s\n    literals: [k=v]\n",
        );
        write(
            &dir,
            "app.yaml",
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  template:
    spec:
      containers:
        - name: c
          env:
            - name: A
              valueFrom: {secretKeyRef: {name: s, key: k}}
            - name: B
              valueFrom: {secretKeyRef: {name: other, key: k}}
          envFrom: [{secretRef: {name: s}}]
      volumes:
        - name: v
          secret: {secretName: s}
"#,
        );
        let rendered = render(&dir).unwrap();
        let secret = resource_id(&rendered[0]).unwrap();
        let hashed = secret.strip_prefix("Secret/").unwrap();
        assert!(hashed.starts_with("s-") && hashed.len() == 12, "{hashed}");
        let spec = &rendered[1]["spec"]["template"]["spec"];
        let env = &spec["containers"][0]["env"];
        assert_eq!(env[0]["valueFrom"]["secretKeyRef"]["name"], hashed);
        assert_eq!(env[1]["valueFrom"]["secretKeyRef"]["name"], "other");
        assert_eq!(
            spec["containers"][0]["envFrom"][0]["secretRef"]["name"],
            hashed
        );
        assert_eq!(spec["volumes"][0]["secret"]["secretName"], hashed);
    }

    #[test]
    fn unsupported_fields_are_refused_by_name() {
        let dir = scratch("kustomize-unsupported");
        write(&dir, "kustomization.yaml", "namePrefix: x-\n");
        let err = format!("{:#}", render(&dir).unwrap_err());
        assert!(err.contains("`namePrefix` is not supported"), "{err}");

        write(
            &dir,
            "kustomization.yaml",
            "configMapGenerator:\n  - name: c\n    behavior: merge\n",
        );
        let err = format!("{:#}", render(&dir).unwrap_err());
        assert!(err.contains("`behavior` is not supported"), "{err}");

        write(&dir, "kustomization.yaml", "resources: [../outside.yaml]\n");
        let err = format!("{:#}", render(&dir).unwrap_err());
        assert!(err.contains("only files inside"), "{err}");
    }
}
