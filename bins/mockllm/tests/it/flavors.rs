//! Each flavour's health, model-list and generation paths, streams, and `/__stats`.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;

use crate::common::{Mock, eventually};

const LLAMACPP_LOADING: &str =
    r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;

#[tokio::test]
async fn llamacpp_health_turns_503_while_loading_then_recovers() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "llamacpp", "--models", "qwen"]).await?;
    let mut health_hits = 0;

    let reply = mock.get("/health").await?;
    health_hits += 1;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), r#"{"status":"ok"}"#);

    let echo = mock.set_mode(r#"{"loading_for_s":2}"#).await?;
    assert_eq!(echo["mode"], "loading");
    let reply = mock.get("/health").await?;
    health_hits += 1;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), LLAMACPP_LOADING);
    // Chat answers 503 too while loading.
    let chat = mock
        .post("/v1/chat/completions", r#"{"model":"qwen","messages":[]}"#)
        .await?;
    assert_eq!(chat.status, StatusCode::SERVICE_UNAVAILABLE);

    let mut hits_while_waiting = 0;
    eventually(Duration::from_secs(6), "health back to 200", || {
        hits_while_waiting += 1;
        let mock = &mock;
        async move {
            let reply = mock.get("/health").await?;
            Ok((reply.status == StatusCode::OK).then_some(()))
        }
    })
    .await?;
    health_hits += hits_while_waiting;
    assert_eq!(mock.get("/health").await?.text(), r#"{"status":"ok"}"#);
    health_hits += 1;

    let stats = mock.stats().await?;
    assert_eq!(stats["hits"]["/health"], health_hits);
    assert_eq!(stats["hits"]["/v1/chat/completions"], 1);
    assert_eq!(stats["total"], health_hits + 1);
    let recent = stats["recent"].as_array().expect("recent is an array");
    assert_eq!(recent.len() as u64, health_hits + 1);
    // The loading period lasted about 2 s, so the logged arrivals must span at least that.
    let first = recent[0]["t"].as_f64().expect("t is a number");
    let last = recent[recent.len() - 1]["t"]
        .as_f64()
        .expect("t is a number");
    assert!(last - first >= 1.9, "the log spans {first}..{last}");
    Ok(())
}

#[tokio::test]
async fn ollama_serves_root_tags_version_and_native_chat() -> anyhow::Result<()> {
    let mock = Mock::start(&[
        "--flavor",
        "ollama",
        "--models",
        "llama3,qwen2",
        "--chunks",
        "4",
    ])
    .await?;

    let root = mock.get("/").await?;
    assert_eq!(root.status, StatusCode::OK);
    assert_eq!(root.text(), "Ollama is running");

    let tags = mock.get("/api/tags").await?.json()?;
    let models = tags["models"].as_array().expect("models is an array");
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["name"], "llama3");
    assert_eq!(models[0]["model"], "llama3");
    assert_eq!(models[1]["name"], "qwen2");
    assert!(
        models[0]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:"))
    );
    assert_eq!(models[0]["details"]["family"], "llama");
    assert_eq!(models[0]["details"]["quantization_level"], "Q4_0");
    assert_eq!(
        mock.get("/api/version").await?.json()?,
        json!({"version": "0.5.0"})
    );
    // Real Ollama also speaks the OpenAI model list.
    let list = mock.get("/v1/models").await?.json()?;
    assert_eq!(list["data"][1]["id"], "qwen2");

    // /api/chat streams by default: NDJSON, one line per chunk, then the done line.
    let streamed = mock
        .stream(
            "/api/chat",
            r#"{"model":"qwen2","messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await?;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.content_type, "application/x-ndjson");
    assert!(streamed.error.is_none());
    let lines = streamed.ndjson_lines()?;
    assert_eq!(lines.len(), 5);
    for line in &lines[..4] {
        assert_eq!(line["done"], false);
        assert_eq!(line["model"], "qwen2");
        assert_eq!(line["message"]["role"], "assistant");
    }
    let last = &lines[4];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();

    // With "stream": false the same text comes as one object.
    let single = mock
        .post(
            "/api/chat",
            r#"{"model":"qwen2","stream":false,"messages":[]}"#,
        )
        .await?
        .json()?;
    assert_eq!(single["done"], true);
    assert_eq!(single["message"]["content"], text.as_str());

    let generated = mock
        .stream("/api/generate", r#"{"model":"llama3","prompt":"hi"}"#)
        .await?;
    let lines = generated.ndjson_lines()?;
    assert_eq!(lines.len(), 5);
    assert!(lines[0]["response"].is_string());
    assert_eq!(lines[4]["done"], true);

    let embed = mock
        .post("/api/embed", r#"{"model":"llama3","input":["a","b"]}"#)
        .await?
        .json()?;
    assert_eq!(embed["model"], "llama3");
    assert_eq!(embed["embeddings"].as_array().map(Vec::len), Some(2));
    assert_eq!(embed["embeddings"][0].as_array().map(Vec::len), Some(8));

    // Ollama has no /health.
    assert_eq!(mock.get("/health").await?.status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn openai_sse_stream_sends_spaced_chunks_then_done() -> anyhow::Result<()> {
    const CHUNKS: u32 = 5;
    const DELAY_MS: u64 = 60;
    let mock = Mock::start(&[
        "--flavor",
        "openai",
        "--chunks",
        &CHUNKS.to_string(),
        "--chunk-delay-ms",
        &DELAY_MS.to_string(),
    ])
    .await?;
    let streamed = mock
        .stream(
            "/v1/chat/completions",
            r#"{"model":"gpt-x","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .await?;
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.content_type, "text/event-stream");
    assert!(streamed.error.is_none());
    let (events, done) = streamed.sse_events()?;
    assert!(done, "the stream ends with [DONE]");
    assert_eq!(events.len(), CHUNKS as usize);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["object"], "chat.completion.chunk");
        assert_eq!(event["model"], "gpt-x");
        let choice = &event["choices"][0];
        assert_eq!(choice["delta"]["role"].is_string(), i == 0, "{event}");
        let last = i + 1 == CHUNKS as usize;
        assert_eq!(
            choice["finish_reason"].as_str(),
            last.then_some("stop"),
            "{event}"
        );
    }

    let gaps = Duration::from_millis(DELAY_MS * u64::from(CHUNKS - 1));
    assert!(streamed.elapsed >= gaps, "took {:?}", streamed.elapsed);
    // The first chunk came long before the end: the body was streamed, not built up front.
    let first_at = streamed.frames[0].0;
    assert!(
        streamed.elapsed - first_at >= gaps,
        "first chunk at {first_at:?}, end at {:?}",
        streamed.elapsed
    );
    assert!(streamed.frames.len() >= CHUNKS as usize);

    // The stream shape can change at run time.
    mock.set_mode(r#"{"chunks":2,"chunk_delay_ms":0}"#).await?;
    let streamed = mock
        .stream("/v1/completions", r#"{"prompt":"x","stream":true}"#)
        .await?;
    let (events, done) = streamed.sse_events()?;
    assert!(done);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["object"], "text_completion");
    assert_eq!(events[1]["choices"][0]["finish_reason"], "stop");
    Ok(())
}

#[tokio::test]
async fn openai_json_answers_errors_and_request_ids() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "openai", "--models", "gpt-a,gpt-b"]).await?;

    let list = mock.get("/v1/models").await?.json()?;
    assert_eq!(
        list,
        json!({"object":"list","data":[
            {"id":"gpt-a","object":"model","created":0,"owned_by":"openai"},
            {"id":"gpt-b","object":"model","created":0,"owned_by":"openai"}]})
    );

    let chat = mock
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(r#"{"model":"gpt-b","messages":[{"role":"user","content":"hi"}]}"#),
            &[("x-request-id", "req-42")],
        )
        .await?;
    assert_eq!(chat.status, StatusCode::OK);
    assert_eq!(chat.header("x-request-id"), Some("req-42"));
    let chat = chat.json()?;
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "gpt-b");
    assert!(chat["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(chat["created"].as_u64().is_some());
    assert_eq!(chat["choices"][0]["message"]["role"], "assistant");
    assert!(chat["choices"][0]["message"]["content"].is_string());
    assert_eq!(chat["choices"][0]["finish_reason"], "stop");
    assert!(chat["usage"]["total_tokens"].as_u64().is_some());

    let completion = mock
        .post("/v1/completions", r#"{"model":"gpt-a","prompt":"x"}"#)
        .await?
        .json()?;
    assert_eq!(completion["object"], "text_completion");
    assert!(completion["choices"][0]["text"].is_string());

    let embeddings = mock
        .post("/v1/embeddings", r#"{"model":"gpt-a","input":"x"}"#)
        .await?
        .json()?;
    assert_eq!(embeddings["object"], "list");
    assert_eq!(embeddings["model"], "gpt-a");
    assert_eq!(embeddings["data"][0]["object"], "embedding");
    assert_eq!(embeddings["data"][0]["index"], 0);
    assert_eq!(
        embeddings["data"][0]["embedding"].as_array().map(Vec::len),
        Some(8)
    );

    let bad = mock.post("/v1/chat/completions", "{not json").await?;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()?["error"]["code"], 400);

    let missing = mock.get("/nowhere").await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.text(),
        r#"{"error":{"message":"not found","type":"not_found","code":404}}"#
    );
    // OpenAI has no /health.
    assert_eq!(mock.get("/health").await?.status, StatusCode::NOT_FOUND);
    // A POST route asked with GET is refused, not answered.
    assert_eq!(
        mock.get("/v1/chat/completions").await?.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let stats = mock.stats().await?;
    assert_eq!(stats["hits"]["/nowhere"], 1);
    assert_eq!(stats["hits"]["/health"], 1);
    Ok(())
}

#[tokio::test]
async fn vllm_health_is_an_empty_200() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "vllm"]).await?;
    let health = mock.get("/health").await?;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.body.is_empty());
    let list = mock.get("/v1/models").await?.json()?;
    assert_eq!(
        list,
        json!({"object":"list","data":[{"id":"mock-model","object":"model","created":0,"owned_by":"vllm"}]})
    );
    Ok(())
}

#[tokio::test]
async fn stats_log_recent_hits_with_their_pod_and_reset_clears_them() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "vllm"]).await?;
    for _ in 0..3 {
        mock.request(Method::GET, "/health", None, &[("x-hale-pod", "hale-0")])
            .await?;
    }
    mock.get("/v1/models").await?;
    let stats = mock.stats().await?;
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["hits"], json!({"/health": 3, "/v1/models": 1}));
    let recent = stats["recent"].as_array().expect("recent is an array");
    assert_eq!(recent.len(), 4);
    assert_eq!(recent[0]["path"], "/health");
    assert_eq!(recent[0]["pod"], "hale-0");
    assert_eq!(recent[3]["path"], "/v1/models");
    assert!(recent[3]["pod"].is_null());
    let times: Vec<f64> = recent.iter().filter_map(|r| r["t"].as_f64()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );

    let reset = mock.post("/__reset", "{}").await?;
    assert_eq!(reset.json()?, json!({"ok": true}));
    assert_eq!(
        mock.stats().await?,
        json!({"total": 0, "closed_on_marker": 0, "hits": {}, "recent": []})
    );
    Ok(())
}
