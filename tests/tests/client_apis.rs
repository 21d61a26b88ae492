//! End to end: every API Hale's clients speak, through a real `hale serve` to real mockllm
//! backends, driven by the real client libraries (the OpenAI and Anthropic Python SDKs and
//! ollama-python from the workspace's `.venv`, ollama-js from `tests/js/node_modules`, all
//! installed by `cargo xtask setup`; scripts in tests/python/client_apis.py and
//! tests/js/ollama_client.mjs):
//! - OpenAI Responses API: `responses.create` plain and streamed (the events arrive as the
//!   backend spaces them), `retrieve`/`cancel`/`delete` reach the endpoint that made the
//!   response (two endpoints serve the model), also through a second replica that learned the
//!   ids through a real Redis; `models.retrieve`; unknown model and unknown id → `NotFoundError`.
//!   Garbage in Redis for a response id, an absurd id, odd bytes: a 404 in OpenAI's shape.
//! - Anthropic SDK: `messages.create` plain and streamed (deltas arrive spaced as sent),
//!   `count_tokens`, an unknown model →
//!   `NotFoundError` in Anthropic's error shape, the key sent as `x-api-key`; a stream through
//!   a gateway that holds tokens (`server.stream_coalesce`) arrives whole.
//! - ollama-python and ollama-js: `version`, `show`, `ps`, `embeddings`, `list`, `chat`,
//!   `generate`, `embed`; an unknown model raises `ResponseError` carrying the message text.
//! - The generic route: `POST /v1/rerank` and a multipart audio transcription are routed by
//!   their model; hostile bodies and paths get a 4xx in the route's API shape and never reach
//!   a backend.

use hale_testkit::{Gateway, MockLlm, RedisServer, serve_heads};
use hale_tests::wait_status;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KEY: &str = "sk-hale-clients";

/// One `endpoints:` entry, checked every second.
fn endpoint(name: &str, url: &str, kind: &str) -> String {
    format!(
        "  - name: {name}\n    url: {url}\n    type: {kind}\n    check_interval: 1s\n    check_timeout: 500ms\n    startup: {{ period: 1s, timeout: 500ms, failure_threshold: 3 }}\n"
    )
}

fn config(extra: &str, endpoints: &[String]) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  api_keys: [{KEY}]\n  max_body: 64KiB\nhealth:\n  jitter: 0\nproxy:\n  connect_timeout: 500ms\n{extra}endpoints:\n{}",
        endpoints.concat()
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Runs a client script (`program` with `args`) and parses the one JSON line it prints.
async fn run_json(program: &PathBuf, args: &[&str]) -> anyhow::Result<Value> {
    anyhow::ensure!(
        program.is_file(),
        "{} is missing: run `cargo xtask setup`",
        program.display()
    );
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(root())
            .output(),
    )
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "{} {args:?} failed ({}):\n{stdout}\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_str(stdout.trim())?;
    eprintln!("{args:?}: {out}");
    Ok(out)
}

async fn python(args: &[&str]) -> anyhow::Result<Value> {
    let script = root().join("tests/python/client_apis.py");
    let script = script.to_string_lossy().into_owned();
    let mut all = vec![script.as_str()];
    all.extend_from_slice(args);
    run_json(&root().join(".venv/bin/python"), &all).await
}

/// `node`, which `cargo xtask setup` requires.
fn node() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("node"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/node"))
}

/// A raw HTTP/1.1 exchange (`connection: close`): status, lower-case headers, body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn raw(
    gw: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Raw> {
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nhost: hale\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut all)).await??;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no response head: {}", String::from_utf8_lossy(&all)))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line: {head}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = all[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Raw {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || data.len() < nl + 2 + size {
            break;
        }
        out.extend_from_slice(&data[nl + 2..nl + 2 + size]);
        data = &data[(nl + 4 + size).min(data.len())..];
    }
    out
}

const AUTH: (&str, &str) = ("authorization", "Bearer sk-hale-clients");

#[tokio::test]
async fn openai_responses_follow_their_endpoint_across_replicas() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let a = MockLlm::builder("vllm")
        .models(&["m-resp"])
        .chunk_delay_ms(200)
        .start()
        .await?;
    let b = MockLlm::builder("llamacpp")
        .models(&["m-resp"])
        .chunk_delay_ms(200)
        .start()
        .await?;
    let endpoints = [
        endpoint("a", &a.url(), "vllm"),
        endpoint("b", &b.url(), "llamacpp"),
    ];
    let shared = |pod: &str| {
        format!(
            "pod_id: {pod}\nshared:\n  enabled: true\n  redis_url: {}\n  namespace: clients\n",
            redis.url()
        )
    };
    let gw1 = Gateway::start(&config(&shared("one"), &endpoints)).await?;
    let gw2 = Gateway::start(&config(&shared("two"), &endpoints)).await?;
    for gw in [&gw1, &gw2] {
        wait_status(gw, "a", "healthy", Duration::from_secs(10)).await?;
        wait_status(gw, "b", "healthy", Duration::from_secs(10)).await?;
    }

    let out = python(&["openai", &gw1.url(), KEY, "m-resp", &gw2.url()]).await?;
    let created = out["created"].as_array().unwrap();
    let retrieved = out["retrieved"].as_array().unwrap();
    assert_eq!(created.len(), 6);
    for (made, got) in created.iter().zip(retrieved) {
        assert!(made["endpoint"] == "a" || made["endpoint"] == "b", "{made}");
        assert_eq!(made["text"], "This is a mock reply");
        assert_eq!(got["id"], made["id"]);
        assert_eq!(
            got["endpoint"], made["endpoint"],
            "retrieve reached its maker"
        );
        assert_eq!(got["text"], made["text"]);
    }
    // Through the second replica, which learned the ids through Redis.
    for (made, got) in created[2..].iter().zip(out["second"].as_array().unwrap()) {
        assert_eq!(got["id"], made["id"]);
        assert_eq!(got["endpoint"], made["endpoint"]);
    }
    // The stream: every event, spaced as the backend sent them (200 ms apart), not buffered.
    let stream = &out["stream"];
    let events = stream["events"].as_array().unwrap();
    assert_eq!(events.first().unwrap()["type"], "response.created");
    assert_eq!(events.last().unwrap()["type"], "response.completed");
    assert_eq!(stream["text"], "This is a mock reply");
    let first = events.first().unwrap()["at"].as_f64().unwrap();
    let last = events.last().unwrap()["at"].as_f64().unwrap();
    eprintln!("stream: first event at {first:.3}s, last at {last:.3}s");
    assert!(
        last - first >= 1.0,
        "events arrived together ({first:.3}s, {last:.3}s): buffered"
    );
    assert_eq!(stream["retrieved_id"], stream["id"]);
    assert_eq!(out["cancelled_status"], "cancelled");
    assert_eq!(out["after_delete"], 404);
    assert_eq!(out["model"], json!({"id": "m-resp", "object": "model"}));
    for what in [
        "model_not_found",
        "responses_unknown_model",
        "unknown_response",
    ] {
        assert_eq!(out[what]["status"], 404, "{what}: {}", out[what]);
        assert_eq!(out[what]["body"]["type"], "not_found_error", "{what}");
    }

    // Hostile values in Redis for a response id: each is an unknown id, 404 in OpenAI's
    // shape, and the replica keeps serving.
    let mut r = redis.client().await?;
    let _: () = redis::cmd("SET")
        .arg("hale:{clients}:resp:resp_garbage")
        .arg(b"\xff\xfe\x00garbage".as_slice())
        .query_async(&mut r)
        .await?;
    let _: () = redis::cmd("SET")
        .arg("hale:{clients}:resp:resp_ghost")
        .arg("no-such-endpoint")
        .query_async(&mut r)
        .await?;
    let _: () = redis::cmd("SET")
        .arg("hale:{clients}:resp:resp_huge")
        .arg("x".repeat(100_000))
        .query_async(&mut r)
        .await?;
    let _: () = redis::cmd("HSET")
        .arg("hale:{clients}:resp:resp_hash")
        .arg("f")
        .arg("a")
        .query_async(&mut r)
        .await?;
    let long = format!("/v1/responses/{}", "r".repeat(20_000));
    for target in [
        "/v1/responses/resp_garbage",
        "/v1/responses/resp_ghost",
        "/v1/responses/resp_huge",
        "/v1/responses/resp_hash",
        "/v1/responses/resp_hash/cancel",
        "/v1/responses/%00%ff%2e%2e",
        "/v1/responses/..",
        long.as_str(),
    ] {
        let method = if target.ends_with("/cancel") {
            "POST"
        } else {
            "GET"
        };
        let got = raw(&gw2, method, target, &[AUTH], b"").await?;
        assert_eq!(got.status, 404, "{target}");
        let body = got.json();
        assert_eq!(body["error"]["type"], "not_found_error", "{target}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().len() < 200);
    }
    // The malformed values (garbage bytes, 100 kB, a hash) were refused and counted.
    let metrics = gw2.get("/metrics").await?;
    let malformed: f64 = metrics
        .text
        .lines()
        .find(|l| l.starts_with("hale_coord_rejected_total{kind=\"malformed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        malformed >= 3.0,
        "hale_coord_rejected_total malformed = {malformed}"
    );
    let got = raw(&gw2, "DELETE", "/v1/responses/resp_ghost", &[], b"").await?;
    assert_eq!(got.status, 401, "follow-ups need the key too");
    let reply = gw2.get("/health/shared-status").await?;
    assert_eq!(reply.status, 200);

    // Redis gone: a replica still serves the follow-ups of what it saw created; the other
    // cannot know the id (404), and neither request fails otherwise.
    redis.stop().await?;
    let json_ct = ("content-type", "application/json");
    let made = raw(
        &gw1,
        "POST",
        "/v1/responses",
        &[AUTH, json_ct],
        br#"{"model":"m-resp","input":"hi"}"#,
    )
    .await?;
    assert_eq!(made.status, 200, "{}", String::from_utf8_lossy(&made.body));
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let got = raw(&gw1, "GET", &format!("/v1/responses/{id}"), &[AUTH], b"").await?;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id.as_str());
    assert_eq!(
        got.header("x-hale-endpoint"),
        made.header("x-hale-endpoint")
    );
    let started = tokio::time::Instant::now();
    let got = raw(&gw2, "GET", &format!("/v1/responses/{id}"), &[AUTH], b"").await?;
    assert_eq!(got.status, 404);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn anthropic_sdk_through_hale() -> anyhow::Result<()> {
    let vllm = MockLlm::builder("vllm")
        .models(&["claude-mock"])
        .chunk_delay_ms(200)
        .arg("--strict-models")
        .start()
        .await?;
    let gw = Gateway::start(&config("", &[endpoint("vllm", &vllm.url(), "vllm")])).await?;
    wait_status(&gw, "vllm", "healthy", Duration::from_secs(10)).await?;
    // The SDK sends the key as `x-api-key`.
    let out = python(&["anthropic", &gw.url(), KEY, "claude-mock"]).await?;
    assert_eq!(out["plain"]["text"], "This is a mock reply");
    assert_eq!(out["plain"]["stop_reason"], "end_turn");
    assert_eq!(out["plain"]["endpoint"], "vllm");
    assert_eq!(out["stream"]["text"], out["plain"]["text"]);
    assert!(out["stream"]["pieces"].as_u64().unwrap() >= 5);
    // Text deltas 200 ms apart at the backend arrive spread out, not in one piece.
    let (first, last) = (
        out["stream"]["first_at"].as_f64().unwrap(),
        out["stream"]["last_at"].as_f64().unwrap(),
    );
    assert!(last - first >= 0.5, "buffered: {first:.3}s .. {last:.3}s");
    assert_eq!(out["stream"]["stop_reason"], "end_turn");
    assert!(out["count_tokens"].as_u64().unwrap() > 0);
    let nf = &out["not_found"];
    assert_eq!(nf["status"], 404, "{nf}");
    assert_eq!(nf["body"]["type"], "error");
    assert_eq!(nf["body"]["error"]["type"], "not_found_error");
    assert!(
        nf["body"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-model")
    );
    // A wrong key, either way, is Anthropic-shaped too.
    let got = raw(
        &gw,
        "POST",
        "/v1/messages",
        &[("x-api-key", "wrong"), ("content-type", "application/json")],
        br#"{"model":"claude-mock","max_tokens":8,"messages":[]}"#,
    )
    .await?;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["error"]["type"], "authentication_error");
    let got = raw(
        &gw,
        "POST",
        "/v1/messages",
        &[("x-api-key", KEY), ("content-type", "application/json")],
        br#"{"model":7}"#,
    )
    .await?;
    assert_eq!(got.status, 400);
    assert_eq!(
        got.json()["error"]["type"],
        "invalid_request_error",
        "{:?}",
        got.json()
    );
    assert_eq!(got.json()["type"], "error");
    Ok(())
}

/// A gateway that holds streamed tokens (`server.stream_coalesce`, shorter than the kernel's
/// own hold so that Hale's push is what sends them) still hands the SDK the whole stream:
/// every delta, the same text as the plain answer, the stop reason.
#[tokio::test]
async fn an_sdk_reads_a_coalesced_stream_whole() -> anyhow::Result<()> {
    let vllm = MockLlm::builder("vllm")
        .models(&["claude-mock"])
        .chunks(40)
        .chunk_delay_ms(10)
        .start()
        .await?;
    let text = config("", &[endpoint("vllm", &vllm.url(), "vllm")]).replace(
        "  max_body: 64KiB\n",
        "  max_body: 64KiB\n  stream_coalesce: 150ms\n",
    );
    assert!(text.contains("stream_coalesce"), "{text}");
    let gw = Gateway::start(&text).await?;
    wait_status(&gw, "vllm", "healthy", Duration::from_secs(10)).await?;
    let out = python(&["anthropic", &gw.url(), KEY, "claude-mock"]).await?;
    let plain = out["plain"]["text"].as_str().unwrap();
    println!("{}", out["stream"]);
    assert!(plain.len() > 100, "{plain}");
    assert_eq!(out["stream"]["text"], plain);
    assert!(out["stream"]["pieces"].as_u64().unwrap() >= 40, "{out}");
    assert_eq!(out["stream"]["stop_reason"], "end_turn");
    Ok(())
}

#[tokio::test]
async fn ollama_clients_through_hale() -> anyhow::Result<()> {
    let o1 = MockLlm::start("ollama", &["llama3"]).await?;
    let o2 = MockLlm::start("ollama", &["llama3", "qwen2"]).await?;
    let vllm = MockLlm::start("vllm", &["m-chat"]).await?;
    let gw = Gateway::start(&config(
        "",
        &[
            endpoint("o1", &o1.url(), "ollama"),
            endpoint("o2", &o2.url(), "ollama"),
            endpoint("vllm", &vllm.url(), "vllm"),
        ],
    ))
    .await?;
    for name in ["o1", "o2", "vllm"] {
        wait_status(&gw, name, "healthy", Duration::from_secs(10)).await?;
    }
    let py = python(&["ollama", &gw.url(), KEY, "llama3"]).await?;
    let js_script = root().join("tests/js/ollama_client.mjs");
    let js = run_json(
        &node(),
        &[
            js_script.to_string_lossy().as_ref(),
            &gw.url(),
            KEY,
            "llama3",
        ],
    )
    .await?;
    for out in [&py, &js] {
        assert_eq!(out["version"], "0.5.0");
        assert_eq!(out["show"]["family"], "llama");
        assert_eq!(out["ps"], json!(["llama3", "qwen2"]), "each model once");
        assert_eq!(out["embeddings"], 8);
        assert_eq!(out["list"], json!(["llama3", "qwen2"]));
        assert_eq!(out["chat"], "This is a mock reply");
        assert_eq!(out["chat_stream"], "This is a mock reply");
        assert_eq!(out["generate"], "This is a mock reply");
        assert_eq!(out["embed"], 2);
        assert_eq!(out["not_found"]["status"], 404);
    }
    assert_eq!(py["not_found"]["is_str"], true);
    assert!(
        py["not_found"]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-model")
    );
    let shown = js["not_found"]["shown"].as_str().unwrap();
    assert_eq!(js["not_found"]["name"], "ResponseError");
    assert!(shown.contains("no-such-model"), "{shown}");
    assert!(!shown.contains("[object Object]"), "{shown}");

    // `/` answers like Ollama; every Ollama-route error is `{"error":"<text>"}`.
    let got = raw(&gw, "GET", "/", &[], b"").await?;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, &b"Ollama is running"[..])
    );
    let got = raw(&gw, "HEAD", "/", &[], b"").await?;
    assert_eq!(got.status, 200);
    for (method, target, body, status) in [
        ("POST", "/api/show", &br#"{"name":7}"#[..], 400),
        ("POST", "/api/embeddings", b"not json", 400),
        ("POST", "/api/show", br#"{"model":"m-chat"}"#, 404),
        ("GET", "/api/show", b"", 405),
        ("GET", "/api/nothing", b"", 404),
    ] {
        let got = raw(&gw, method, target, &[AUTH], body).await?;
        assert_eq!(got.status, status, "{method} {target}");
        assert!(
            got.json()["error"].is_string(),
            "{method} {target}: {:?}",
            got.json()
        );
    }
    for target in ["/api/ps", "/api/tags", "/api/version"] {
        let got = raw(&gw, "GET", target, &[], b"").await?;
        assert_eq!(got.status, 401, "{target}");
        assert!(
            got.json()["error"].is_string(),
            "{target}: {:?}",
            got.json()
        );
    }
    let got = raw(
        &gw,
        "POST",
        "/api/chat",
        &[("authorization", "Bearer wrong")],
        b"{}",
    )
    .await?;
    assert_eq!(got.status, 401);
    assert!(got.json()["error"].is_string(), "{:?}", got.json());
    Ok(())
}

#[tokio::test]
async fn any_model_routed_post_reaches_a_backend_that_serves_it() -> anyhow::Result<()> {
    let vllm = MockLlm::builder("vllm")
        .models(&["rr"])
        .arg("--strict-models")
        .start()
        .await?;
    let openai = MockLlm::builder("openai")
        .models(&["whisper"])
        .arg("--strict-models")
        .start()
        .await?;
    let gw = Gateway::start(&config(
        "",
        &[
            endpoint("vllm", &vllm.url(), "vllm"),
            endpoint("openai", &openai.url(), "openai"),
        ],
    ))
    .await?;
    wait_status(&gw, "vllm", "healthy", Duration::from_secs(10)).await?;
    wait_status(&gw, "openai", "healthy", Duration::from_secs(10)).await?;
    let json_ct = ("content-type", "application/json");

    let got = raw(
        &gw,
        "POST",
        "/v1/rerank",
        &[AUTH, json_ct],
        br#"{"model":"rr","query":"q","documents":["a","b","c"]}"#,
    )
    .await?;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.header("x-hale-endpoint"), Some("vllm"));
    assert_eq!(got.json()["results"].as_array().map(Vec::len), Some(3));

    let form = "--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF\x00\x01fake-audio\r\n--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b0undary--\r\n";
    let multipart = ("content-type", "multipart/form-data; boundary=b0undary");
    let got = raw(
        &gw,
        "POST",
        "/v1/audio/transcriptions",
        &[AUTH, multipart],
        form.as_bytes(),
    )
    .await?;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.header("x-hale-endpoint"), Some("openai"));
    assert_eq!(got.json()["model"], "whisper");

    // Hostile requests: a clear 4xx in OpenAI's shape; none reaches a backend.
    let paths = ["/v1/rerank", "/v1/audio/transcriptions"];
    let mut before = Vec::new();
    for p in paths {
        before.push((vllm.hits(p).await?, openai.hits(p).await?));
    }
    let huge = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n{}\r\n--b0undary--\r\n",
        "x".repeat(100_000)
    );
    let garbled = b"--b0undary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper";
    type Case<'a> = (&'a str, &'a str, (&'a str, &'a str), &'a [u8], u16);
    let cases: Vec<Case<'_>> = vec![
        ("POST", "/v1/rerank", json_ct, br#"{"query":"q"}"#, 400),
        ("POST", "/v1/rerank", json_ct, br#"{"model":{"x":1}}"#, 400),
        ("POST", "/v1/rerank", json_ct, br#"{"model":null}"#, 400),
        ("POST", "/v1/rerank", json_ct, b"[1,2]", 400),
        ("POST", "/v1/rerank", json_ct, br#"{"model":"nobody"}"#, 404),
        (
            "POST",
            "/v1/audio/transcriptions",
            multipart,
            huge.as_bytes(),
            413,
        ),
        ("POST", "/v1/audio/transcriptions", multipart, garbled, 400),
        (
            "POST",
            "/v1/audio/transcriptions",
            ("content-type", "multipart/form-data"),
            form.as_bytes(),
            400,
        ),
        (
            "POST",
            "/v1/a/../rerank",
            json_ct,
            br#"{"model":"rr"}"#,
            404,
        ),
        (
            "POST",
            "/v1/%2e%2e/rerank",
            json_ct,
            br#"{"model":"rr"}"#,
            404,
        ),
        ("POST", "/v1//rerank", json_ct, br#"{"model":"rr"}"#, 404),
        (
            "POST",
            "http://127.0.0.1:1/v1/../../x",
            json_ct,
            br#"{"model":"rr"}"#,
            404,
        ),
        ("GET", "/v1/rerank", json_ct, b"", 404),
    ];
    for (method, target, ct, body, status) in cases {
        let got = raw(&gw, method, target, &[AUTH, ct], body).await?;
        assert_eq!(
            got.status,
            status,
            "{method} {target}: {}",
            String::from_utf8_lossy(&got.body)
        );
        let err = got.json();
        assert!(err["error"]["message"].is_string(), "{target}: {err}");
        assert_eq!(err["error"]["code"], status);
    }
    for (p, was) in paths.iter().zip(before) {
        let now = (vllm.hits(p).await?, openai.hits(p).await?);
        assert_eq!(now, was, "a hostile {p} reached a backend");
    }
    Ok(())
}

/// The README's client snippets: the fenced block after each `<!-- snippet: LANG -->`.
fn readme_snippets() -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(root().join("README.md"))?;
    let mut lines = text.lines();
    let mut snippets = Vec::new();
    while let Some(line) = lines.next() {
        let Some(lang) = line
            .trim()
            .strip_prefix("<!-- snippet:")
            .and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        anyhow::ensure!(
            fence.starts_with("```"),
            "README: a snippet marker must be followed by a fenced block, not {fence:?}"
        );
        let code: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        snippets.push((lang.trim().to_owned(), code.join("\n")));
    }
    Ok(snippets)
}

#[tokio::test]
async fn every_readme_snippet_runs_against_hale() -> anyhow::Result<()> {
    let snippets = readme_snippets()?;
    let langs: Vec<&str> = snippets.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(
        langs,
        ["python", "python", "python", "node", "sh"],
        "OpenAI SDK, Anthropic SDK, ollama-python, ollama-js, curl"
    );
    let vllm = MockLlm::start("vllm", &["qwen2.5"]).await?;
    let ollama = MockLlm::start("ollama", &["llama3"]).await?;
    let gw = Gateway::start(&config(
        "",
        &[
            endpoint("vllm", &vllm.url(), "vllm"),
            endpoint("ollama", &ollama.url(), "ollama"),
        ],
    ))
    .await?;
    wait_status(&gw, "vllm", "healthy", Duration::from_secs(10)).await?;
    wait_status(&gw, "ollama", "healthy", Duration::from_secs(10)).await?;
    for (lang, code) in &snippets {
        let (program, args, dir): (PathBuf, Vec<&str>, PathBuf) = match lang.as_str() {
            "python" => (root().join(".venv/bin/python"), vec!["-c", code], root()),
            // From tests/js, where `cargo xtask setup` installed ollama-js.
            "node" => (
                node(),
                vec!["--input-type=module", "-e", code],
                root().join("tests/js"),
            ),
            "sh" => (PathBuf::from("sh"), vec!["-c", code], root()),
            other => anyhow::bail!("README: unknown snippet language {other}"),
        };
        let output = tokio::time::timeout(
            Duration::from_secs(120),
            tokio::process::Command::new(&program)
                .args(&args)
                .current_dir(dir)
                .env("HALE_URL", gw.url())
                .env("HALE_API_KEY", KEY)
                .output(),
        )
        .await??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("This is a mock reply"),
            "README {lang} snippet failed ({}):\n{code}\n--- stdout\n{stdout}\n--- stderr\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A hand-made "Ollama" that passes Hale's checks (`/`, `/api/tags` with `model`) but answers
/// `/api/ps` and `/api/version` with `ps` and `version`, whatever they are.
async fn fake_ollama(
    model: &'static str,
    ps: &'static str,
    version: &'static str,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    serve_heads(listener, move |head| {
        let path = head.split(' ').nth(1).unwrap_or("");
        let tags = format!(r#"{{"models":[{{"name":"{model}","model":"{model}"}}]}}"#);
        let body = match path {
            "/" => "Ollama is running",
            "/api/tags" => tags.as_str(),
            "/api/ps" => ps,
            "/api/version" => version,
            _ => "{}",
        };
        Some(format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ))
    });
    Ok(url)
}

#[tokio::test]
async fn ollama_ps_and_version_survive_garbage_and_take_the_lowest_version() -> anyhow::Result<()> {
    let good = MockLlm::start("ollama", &["llama3"]).await?;
    let old = fake_ollama(
        "old-model",
        r#"{"models":[{"name":"old-model","model":"old-model"},{"name":"llama3:latest"},{"no":"name"},7]}"#,
        r#"{"version":"0.4.10"}"#,
    )
    .await?;
    let weird = fake_ollama(
        "weird-model",
        "<html>not json</html>",
        r#"{"version":"banana"}"#,
    )
    .await?;
    let gw = Gateway::start(&config(
        "",
        &[
            endpoint("good", &good.url(), "ollama"),
            endpoint("old", &old, "ollama"),
            endpoint("weird", &weird, "ollama"),
        ],
    ))
    .await?;
    for name in ["good", "old", "weird"] {
        wait_status(&gw, name, "healthy", Duration::from_secs(10)).await?;
    }
    let got = raw(&gw, "GET", "/api/version", &[AUTH], b"").await?;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.json(),
        json!({"version": "0.4.10"}),
        "semver order: 0.4.10 < 0.5.0"
    );
    let got = raw(&gw, "GET", "/api/ps", &[AUTH], b"").await?;
    assert_eq!(got.status, 200);
    let mut names: Vec<String> = got.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["llama3", "old-model"],
        "each model once, garbage skipped"
    );
    let metrics = gw.get("/metrics").await?;
    let rejected: Vec<&str> = metrics
        .text
        .lines()
        .filter(|l| l.starts_with("hale_proxy_backend_rejected_total"))
        .collect();
    assert!(
        rejected.iter().any(|l| l.contains("endpoint=\"weird\"")),
        "{rejected:?}"
    );
    assert!(
        rejected.iter().any(|l| l.contains("endpoint=\"old\"")),
        "{rejected:?}"
    );

    // No ollama endpoint left that tells its version: 503, Ollama-shaped.
    let gw = Gateway::start(&config("", &[endpoint("weird", &weird, "ollama")])).await?;
    wait_status(&gw, "weird", "healthy", Duration::from_secs(10)).await?;
    let got = raw(&gw, "GET", "/api/version", &[AUTH], b"").await?;
    assert_eq!(got.status, 503);
    assert!(got.json()["error"].is_string(), "{:?}", got.json());
    Ok(())
}
