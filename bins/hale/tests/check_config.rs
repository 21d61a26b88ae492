//! `hale check-config` through the real binary: the shipped example passes and shows no
//! secret, and each kind of bad input — a misspelt key, impossible timings, duplicate names,
//! bad durations, types and URLs, durations and sizes beyond their bound, bad environment
//! values, missing variables, unreadable files and broken YAML — exits 2 with one line naming
//! the key path and, where it is in the file, the line. Credentials in endpoint URLs never
//! show, on success or on error.
//!
//! Every run clears the environment and starts in an empty directory, so neither the
//! developer's shell nor a stray `hale.yaml` can change what is tested.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns fail loudly on setup errors"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

const SECRET: &str = "sk-example-not-a-real-key";

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/hale.yaml")
}

fn example() -> String {
    std::fs::read_to_string(example_path()).unwrap()
}

#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts a failed load: exit 2 and exactly one `error:` line, which is returned.
    fn error_line(&self) -> &str {
        assert_eq!(self.code, Some(2), "{self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        lines[0]
    }

    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        assert!(self.stderr.is_empty(), "{self:#?}");
        &self.stdout
    }
}

/// Runs `hale <args>` with only `env` set, in a fresh empty working directory.
fn hale(args: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> Run {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hale"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd.unwrap_or(empty.path()))
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn check_file(path: &Path, env: &[(&str, &str)]) -> Run {
    hale(
        &["check-config", "--config", path.to_str().unwrap()],
        env,
        None,
    )
}

/// Writes `text` to a temporary config file and checks it; returns the file with the run so
/// the file lives until the assertions are done.
fn check_text(text: &str, env: &[(&str, &str)]) -> (tempfile::NamedTempFile, Run) {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let run = check_file(file.path(), env);
    (file, run)
}

/// The example with `from` (which must occur exactly once) replaced by `to`.
fn example_with(from: &str, to: &str) -> String {
    let text = example();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur once in the example"
    );
    text.replace(from, to)
}

/// The 1-based line of the only line of `text` that contains `needle` and is not a comment.
fn line_of(text: &str, needle: &str) -> usize {
    let found: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle) && !l.trim_start().starts_with('#'))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(found.len(), 1, "{needle:?} must occur on one line");
    found[0]
}

#[test]
fn the_example_passes_and_shows_no_secret() {
    let run = check_file(&example_path(), &[]);
    let out = run.ok();
    assert!(out.contains("api_key: <redacted>"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    // Per-type defaults are filled in, so the operator sees what will be checked.
    assert!(out.contains("name: local-ollama"), "{out}");
    assert!(out.contains("model_url: /api/tags"), "{out}");
    assert!(out.contains("name: cpu-llamacpp"), "{out}");
    assert_eq!(out.matches("health_check_url: /health").count(), 2, "{out}");
    assert!(out.contains("initial_delay: 30s"), "{out}");
    assert!(out.contains("enabled: false"), "{out}");
}

#[test]
fn the_effective_config_loads_again() {
    let first = check_file(&example_path(), &[]);
    let (_file, second) = check_text(first.ok(), &[]);
    // Only the header line names the file it came from.
    let body = |out: &str| out.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(second.ok()), body(first.ok()));
}

#[test]
fn a_misspelt_key_is_named_with_its_path_and_line() {
    let text = example_with("    check_interval: 30s", "    chek_interval: 30s");
    let (file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let expected = format!(
        "error: {}: line {}: endpoints[3]: unknown field `chek_interval`",
        file.path().display(),
        line_of(&text, "chek_interval")
    );
    assert!(line.starts_with(&expected), "{line}");
    assert!(line.contains("did you mean `check_interval`?"), "{line}");
}

#[test]
fn a_misspelt_section_is_named() {
    let (_file, run) = check_text("endpoint:\n  - name: a\n    url: http://h:1\n", &[]);
    let line = run.error_line();
    assert!(
        line.contains("line 1: unknown field `endpoint` (did you mean `endpoints`?)"),
        "{line}"
    );
}

#[test]
fn a_timeout_not_below_the_interval_is_refused() {
    let text = example_with("    check_timeout: 5s", "    check_timeout: 30s");
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let expected = format!(
        "line {}: endpoints[3].check_timeout: must be less than check_interval (30s >= 30s)",
        line_of(&text, "check_timeout: 30s")
    );
    assert!(line.contains(&expected), "{line}");
}

/// `u64::MAX` seconds: humantime parses it, and any clock it is added to overflows.
const HUGE: &str = "18446744073709551615s";

/// The example with the line `from` given each value in turn: loads when `ok`, else fails
/// with `error` on that line.
fn check_bound(from: &str, values: &[(&str, bool)], error: &str) {
    let (key, _) = from.trim().split_once(": ").unwrap();
    let indent = &from[..from.len() - from.trim_start().len()];
    for (value, ok) in values {
        let written = format!("{indent}{key}: {value}");
        let text = example_with(from, &written);
        let (_file, run) = check_text(&text, &[]);
        if *ok {
            run.ok();
            continue;
        }
        let line = run.error_line();
        let expected = format!("line {}: {error}", line_of(&text, &written));
        assert!(line.contains(&expected), "{value}: {line}");
    }
}

#[test]
fn durations_and_sizes_beyond_their_bound_are_refused_naming_the_key() {
    let cases = [
        ("  header_timeout: 10s", "server.header_timeout"),
        ("  idle_timeout: 75s", "server.idle_timeout"),
        ("    check_interval: 30s", "endpoints[3].check_interval"),
        (
            "      initial_delay: 30s",
            "endpoints[1].startup.initial_delay",
        ),
        ("  max_backoff: 60s", "health.max_backoff"),
        ("    open_for: 30s", "proxy.breaker.open_for"),
        ("  lock_ttl: 60s", "shared.lock_ttl"),
    ];
    for (from, key) in cases {
        check_bound(
            from,
            &[(HUGE, false)],
            &format!("{key}: must be at most 1day (1 day), got "),
        );
    }

    // 100EiB does not fit in 64 bits: the parser saturates, and the bound names the key.
    check_bound(
        "  max_body: 10MiB",
        &[("100EiB", false), ("1025MiB", false), ("1GiB", true)],
        "server.max_body: must be at most 1GiB",
    );
    // Holding streamed tokens has its own, much lower bound.
    check_bound(
        "  stream_coalesce: 0s",
        &[("1s", true), ("1001ms", false), (HUGE, false)],
        "server.stream_coalesce: must be at most 1s (0s turns it off), got ",
    );

    // A number too large for a duration at all is named as well.
    let text = example_with(
        "  idle_timeout: 75s",
        "  idle_timeout: 99999999999999999999999s",
    );
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    assert!(
        line.contains("server.idle_timeout: invalid duration"),
        "{line}"
    );

    // Just inside and just outside the bound, here and from the environment.
    let text = example_with("    check_interval: 30s", "    check_interval: 1day");
    check_text(&text, &[]).1.ok();
    let text = example_with("    check_interval: 30s", "    check_interval: 1day 1s");
    let (_file, run) = check_text(&text, &[]);
    assert!(
        run.error_line()
            .contains("endpoints[3].check_interval: must be at most 1day (1 day), got 1day 1s"),
        "{run:?}"
    );
    let run = check_file(&example_path(), &[("HALE_SERVER__HEADER_TIMEOUT", HUGE)]);
    assert!(
        run.error_line().starts_with(
            "error: env HALE_SERVER__HEADER_TIMEOUT: server.header_timeout: must be at most"
        ),
        "{run:?}"
    );
}

#[test]
fn an_empty_file_is_the_defaults() {
    // Starting on an empty file is allowed (only a live reload of one is refused).
    for text in ["", "# nothing yet\n"] {
        let (_file, run) = check_text(text, &[]);
        let out = run.ok();
        assert!(out.contains("endpoints: []"), "{out}");
    }
}

#[test]
fn credentials_in_endpoint_urls_are_never_printed() {
    const CREDS: &str = "user:S3CRET@";
    let with_creds = example_with(
        "url: http://127.0.0.1:8000",
        &format!("url: http://{CREDS}127.0.0.1:8000"),
    )
    .replace(
        "health_check_url: /health",
        &format!("health_check_url: http://{CREDS}127.0.0.1:8000/health"),
    );
    let (_file, run) = check_text(&with_creds, &[]);
    let out = run.ok();
    assert!(!out.contains("S3CRET"), "{out}");
    assert!(
        out.contains("url: http://<redacted>@127.0.0.1:8000")
            && out.contains("health_check_url: http://<redacted>@127.0.0.1:8000/health"),
        "{out}"
    );

    // Error paths: another key invalid, the URL itself invalid, a bad health path.
    let errors = [
        with_creds.replace("  jitter: 0.1", "  jitter: 7"),
        with_creds.replace("127.0.0.1:8000\n", "127.0.0.1:99999\n"),
        with_creds.replace(
            &format!("health_check_url: http://{CREDS}127.0.0.1:8000/health"),
            &format!("health_check_url: {CREDS}127.0.0.1:8000/health"),
        ),
        with_creds.replace("    type: vllm", "    type: vllm\n    url2: x"),
    ];
    for text in errors {
        assert_ne!(text, with_creds);
        let (_file, run) = check_text(&text, &[]);
        let line = run.error_line();
        assert!(!line.contains("S3CRET"), "{line}");
    }
    // From the environment too.
    let run = check_file(
        &example_path(),
        &[("HALE_ENDPOINTS__1__URL", "http://u:S3CRET@127.0.0.1:99999")],
    );
    let line = run.error_line();
    assert!(
        !line.contains("S3CRET") && line.contains("<redacted>@"),
        "{line}"
    );
}

#[test]
fn duplicate_endpoint_names_are_refused() {
    let text = example_with("name: cpu-llamacpp", "name: gpu-vllm");
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("name: gpu-vllm"))
        .nth(1)
        .map(|(i, _)| i + 1)
        .unwrap();
    let expected = format!(
        "line {second}: endpoints[2].name: duplicate endpoint name \"gpu-vllm\", already used by endpoints[1]"
    );
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn a_bad_duration_is_named() {
    let text = example_with("    check_interval: 30s", "    check_interval: 5 sekonds");
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let expected = format!(
        "line {}: endpoints[3].check_interval: invalid duration \"5 sekonds\"",
        line_of(&text, "5 sekonds")
    );
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn a_wrong_type_and_a_bad_url_are_named() {
    let text = example_with("  unhealthy_threshold: 3", "  unhealthy_threshold: three");
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let expected = format!(
        "line {}: health.unhealthy_threshold: invalid type: found string \"three\"",
        line_of(&text, "unhealthy_threshold: three")
    );
    assert!(line.contains(&expected), "{line}");

    let text = example_with("url: http://127.0.0.1:8080", "url: 127.0.0.1:8080");
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let expected = format!(
        "line {}: endpoints[2].url: ",
        line_of(&text, "url: 127.0.0.1:8080")
    );
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn hale_env_keys_override_the_file_and_other_hale_vars_are_ignored() {
    let run = check_file(
        &example_path(),
        &[
            ("HALE_SERVER__LISTEN", "0.0.0.0:4199"),
            ("HALE_SHARED__ENABLED", "true"),
            ("HALE_HEALTH__JITTER", "0"),
            ("HALE_ENDPOINTS__2__PRIORITY", "75"),
            ("HALE_LOG", "debug"),
            ("HALE_BIN_DIR", "/nowhere"),
        ],
    );
    let out = run.ok();
    assert!(out.contains("listen: 0.0.0.0:4199"), "{out}");
    assert!(out.contains("enabled: true"), "{out}");
    assert!(out.contains("jitter: 0.0"), "{out}");
    assert!(out.contains("priority: 75"), "{out}");
}

#[test]
fn compatibility_names_turn_on_shared_mode() {
    let run = check_file(
        &example_path(),
        &[
            ("USE_SHARED_HEALTH_CHECK", "true"),
            ("DEFAULT_SHARED_HEALTH_CHECK_TTL", "120"),
            ("DEFAULT_SHARED_HEALTH_CHECK_LOCK_TTL", "30"),
            ("REDIS_HOST", "redis.internal"),
            ("REDIS_PORT", "6380"),
        ],
    );
    let out = run.ok();
    assert!(out.contains("enabled: true"), "{out}");
    assert!(out.contains("cache_ttl: 2m"), "{out}");
    assert!(out.contains("lock_ttl: 30s"), "{out}");
    assert!(
        out.contains("redis_url: redis://redis.internal:6380"),
        "{out}"
    );
}

#[test]
fn redis_passwords_are_never_shown() {
    let run = check_file(
        &example_path(),
        &[
            ("REDIS_PASSWORD", "hunter2"),
            ("REDIS_URL", "redis://:s3cret-pw@redis:6379/0"),
        ],
    );
    let out = run.ok();
    assert!(out.contains("redis_password: <redacted>"), "{out}");
    assert!(
        out.contains("redis_url: redis://:%3Credacted%3E@redis:6379/0"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2") && !out.contains("s3cret-pw"),
        "{out}"
    );
}

#[test]
fn bad_environment_values_name_the_variable() {
    let run = check_file(&example_path(), &[("HALE_HEALTH__JITTER", "lots")]);
    let line = run.error_line();
    assert!(
        line.starts_with("error: env HALE_HEALTH__JITTER: health.jitter: "),
        "{line}"
    );

    let run = check_file(
        &example_path(),
        &[("DEFAULT_SHARED_HEALTH_CHECK_TTL", "2m")],
    );
    let line = run.error_line();
    assert!(
        line.starts_with("error: env DEFAULT_SHARED_HEALTH_CHECK_TTL: shared.cache_ttl: "),
        "{line}"
    );

    let run = check_file(&example_path(), &[("USE_SHARED_HEALTH_CHECK", "perhaps")]);
    assert!(
        run.error_line().contains("USE_SHARED_HEALTH_CHECK"),
        "{run:?}"
    );

    let run = check_file(&example_path(), &[("HALE_HEALTH__JITER", "0")]);
    let line = run.error_line();
    assert!(
        line.contains("env HALE_HEALTH__JITER: health: unknown field `jiter`"),
        "{line}"
    );
}

#[test]
fn os_environ_references_resolve_and_a_missing_one_is_named() {
    let text = example_with(
        &format!("api_key: \"{SECRET}\""),
        "api_key: os.environ/OPENAI_API_KEY",
    );
    let (_file, run) = check_text(&text, &[("OPENAI_API_KEY", "sk-live-from-env")]);
    let out = run.ok();
    assert!(out.contains("api_key: <redacted>"), "{out}");
    assert!(
        !out.contains("sk-live-from-env") && !out.contains("os.environ"),
        "{out}"
    );

    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let expected = format!(
        "line {}: endpoints[3].api_key: environment variable OPENAI_API_KEY is not set",
        line_of(&text, "os.environ/OPENAI_API_KEY")
    );
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn os_environ_works_in_list_items_too() {
    let text = example_with("  api_keys: []", "  api_keys:\n    - os.environ/CLIENT_KEY");
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    let expected = format!(
        "line {}: server.api_keys[0]: environment variable CLIENT_KEY is not set",
        line_of(&text, "os.environ/CLIENT_KEY")
    );
    assert!(line.contains(&expected), "{line}");
    let (_file, run) = check_text(&text, &[("CLIENT_KEY", "client-secret")]);
    let out = run.ok();
    assert!(
        out.contains("- <redacted>") && !out.contains("client-secret"),
        "{out}"
    );
}

#[test]
fn a_missing_file_and_broken_yaml_are_reported() {
    let run = check_file(Path::new("/nonexistent/hale.yaml"), &[]);
    let line = run.error_line();
    assert!(
        line.starts_with("error: /nonexistent/hale.yaml: cannot read the config file"),
        "{line}"
    );

    let text = example_with("  listen: 127.0.0.1:4100", "  listen: [127.0.0.1:4100");
    let (_file, run) = check_text(&text, &[]);
    let line = run.error_line();
    assert!(
        line.contains(": line ") && line.contains("invalid YAML"),
        "{line}"
    );
}

#[test]
fn hale_yaml_in_the_working_directory_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let run = hale(&["check-config"], &[], Some(dir.path()));
    assert!(
        run.ok()
            .starts_with("# hale check-config: OK. Effective configuration: no config file")
    );

    std::fs::write(dir.path().join("hale.yaml"), "pod_id: from-cwd\n").unwrap();
    let run = hale(&["check-config"], &[], Some(dir.path()));
    let out = run.ok();
    assert!(
        out.contains("file hale.yaml") && out.contains("pod_id: from-cwd"),
        "{out}"
    );

    // HALE_CONFIG names the file as --config does, for containers.
    let example = example_path();
    let run = hale(
        &["check-config"],
        &[("HALE_CONFIG", example.to_str().unwrap())],
        Some(dir.path()),
    );
    assert!(run.ok().contains("name: gpu-vllm"));
}

#[test]
fn version_is_printed() {
    let run = hale(&["--version"], &[], None);
    assert_eq!(
        run.ok().trim(),
        format!("hale {}", env!("CARGO_PKG_VERSION"))
    );
}
