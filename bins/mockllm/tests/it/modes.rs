//! The failure modes of `POST /__mode`, seen from a client: error statuses, refused and
//! dropped connections, hung requests, cut and stalled streams, a query of death
//! (`close_on`), slow answers, and bad mode requests.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::common::{Mock, eventually};

#[tokio::test]
async fn status_mode_answers_every_path_until_healthy_again() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "llamacpp"]).await?;
    let echo = mock.set_mode(r#"{"status":503}"#).await?;
    assert_eq!(echo["mode"], "status");
    assert_eq!(echo["status"], 503);
    for path in ["/health", "/v1/models", "/unknown"] {
        let reply = mock.get(path).await?;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(
            reply.text(),
            r#"{"error":{"message":"mock status 503","type":"mock","code":503}}"#
        );
        assert_eq!(reply.header("retry-after"), None);
    }

    mock.set_mode(r#"{"status":429}"#).await?;
    let reply = mock.get("/health").await?;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("1"));
    mock.set_mode(r#"{"status":429,"retry_after_s":7}"#).await?;
    assert_eq!(mock.get("/health").await?.header("retry-after"), Some("7"));

    let echo = mock.set_mode(r#"{"mode":"healthy"}"#).await?;
    assert_eq!(echo["mode"], "healthy");
    assert_eq!(echo["status"], serde_json::Value::Null);
    assert_eq!(mock.get("/health").await?.status, StatusCode::OK);

    // Admin paths were never affected, and failed hits were still counted.
    let stats = mock.stats().await?;
    assert_eq!(stats["hits"]["/health"], 4);
    assert_eq!(stats["hits"]["/unknown"], 1);
    Ok(())
}

#[tokio::test]
async fn refuse_closes_the_port_and_reopens_it() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "vllm"]).await?;

    // A keep-alive connection from before the refuse.
    let stream = TcpStream::connect(("127.0.0.1", mock.port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let mut old_conn = tokio::spawn(conn);
    let req = Request::builder()
        .uri("/health")
        .header("host", "mock")
        .body(Empty::<Bytes>::new())?;
    let first = sender.send_request(req).await?;
    assert_eq!(first.status(), StatusCode::OK);
    first.into_body().collect().await?;

    let echo = mock.set_mode(r#"{"mode":"refuse","for_s":1}"#).await?;
    assert_eq!(echo["mode"], "refuse");
    let ordered = Instant::now();

    // New connections are refused at the TCP level.
    let port = mock.port;
    eventually(
        Duration::from_secs(2),
        "connection refused",
        || async move {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Some(())),
                // A connect that raced the close: it reached the backlog just before the
                // listener went, and the kernel reset it. Not yet refused; look again.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
                Err(e) => Err(e.into()),
                Ok(_) => Ok(None),
            }
        },
    )
    .await?;
    // The old keep-alive connection was closed by the server.
    let closed = timeout(Duration::from_secs(2), &mut old_conn).await;
    assert!(closed.is_ok(), "the keep-alive connection stayed open");

    // The same port comes back, healthy.
    eventually(Duration::from_secs(6), "port open again", || {
        let mock = &mock;
        async move {
            Ok(match mock.get("/health").await {
                Ok(reply) if reply.status == StatusCode::OK => Some(()),
                _ => None,
            })
        }
    })
    .await?;
    let refused_for = ordered.elapsed();
    assert!(
        refused_for >= Duration::from_millis(800),
        "back after {refused_for:?}"
    );
    assert_eq!(mock.get("/__mode").await?.json()?["mode"], "healthy");
    Ok(())
}

#[tokio::test]
async fn drop_after_chunks_cuts_the_stream() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "openai", "--chunks", "5"]).await?;
    mock.set_mode(r#"{"drop_after_chunks":2}"#).await?;
    let streamed = mock
        .stream("/v1/chat/completions", r#"{"model":"m","stream":true}"#)
        .await?;
    assert_eq!(streamed.status, StatusCode::OK);
    assert!(streamed.error.is_some(), "the body must end in an error");
    let (events, done) = streamed.sse_events()?;
    assert_eq!(events.len(), 2);
    assert!(!done, "no [DONE] after a cut");

    // Ollama's NDJSON stream is cut the same way, without its done line.
    let mock = Mock::start(&["--flavor", "ollama", "--chunk-delay-ms", "10"]).await?;
    mock.set_mode(r#"{"drop_after_chunks":3}"#).await?;
    let streamed = mock.stream("/api/chat", r#"{"model":"m"}"#).await?;
    assert!(streamed.error.is_some());
    let lines = streamed.ndjson_lines()?;
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["done"] == false));
    Ok(())
}

#[tokio::test]
async fn stall_after_chunks_stops_the_stream_without_ending_it() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "openai", "--chunks", "5"]).await?;
    let echo = mock
        .set_mode(r#"{"mode":"stall","stall_after_chunks":2}"#)
        .await?;
    assert_eq!(echo["mode"], "stall");
    let resp = mock
        .send(
            Method::POST,
            "/v1/chat/completions",
            Some(r#"{"model":"m","stream":true}"#),
            &[],
        )
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut text = String::new();
    while text.matches("data: ").count() < 2 {
        let frame = timeout(Duration::from_secs(5), body.frame())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended: {text}"))??;
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    // Nothing more comes, and the stream does not end either.
    let more = timeout(Duration::from_millis(500), body.frame()).await;
    assert!(more.is_err(), "the stalled stream moved: {more:?}");
    assert_eq!(text.matches("data: ").count(), 2, "{text}");
    Ok(())
}

#[tokio::test]
async fn close_on_drops_only_the_marked_requests_and_counts_them() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "vllm", "--models", "m"]).await?;
    let echo = mock.set_mode(r#"{"close_on":"QUERY-OF-DEATH"}"#).await?;
    assert_eq!(echo["close_on"], "QUERY-OF-DEATH");
    let marked = r#"{"model":"m","messages":[{"role":"user","content":"QUERY-OF-DEATH"}]}"#;
    for _ in 0..2 {
        let dropped = mock.post("/v1/chat/completions", marked).await;
        assert!(
            dropped.is_err(),
            "a marked request was answered: {dropped:?}"
        );
    }
    let ordinary = mock
        .post("/v1/chat/completions", r#"{"model":"m","messages":[]}"#)
        .await?;
    assert_eq!(ordinary.status, StatusCode::OK);
    assert_eq!(mock.get("/health").await?.status, StatusCode::OK);
    let stats = mock.stats().await?;
    assert_eq!(stats["closed_on_marker"], 2);
    assert_eq!(stats["hits"]["/v1/chat/completions"], 3);
    // Cleared with the other failure fields, and by a reset.
    mock.set_mode(r#"{"mode":"healthy"}"#).await?;
    assert_eq!(
        mock.post("/v1/chat/completions", marked).await?.status,
        StatusCode::OK
    );
    mock.post("/__reset", "").await?;
    assert_eq!(mock.stats().await?["closed_on_marker"], 0);
    Ok(())
}

#[tokio::test]
async fn hang_never_answers_but_admin_paths_do() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "vllm"]).await?;
    mock.set_mode(r#"{"mode":"hang"}"#).await?;
    let waited = timeout(Duration::from_millis(500), mock.get("/health")).await;
    assert!(waited.is_err(), "a hung request was answered: {waited:?}");
    let stats = mock.stats().await?;
    assert_eq!(stats["hits"]["/health"], 1);
    mock.set_mode(r#"{"mode":"healthy"}"#).await?;
    assert_eq!(mock.get("/health").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn close_drops_connections_without_an_answer() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "openai"]).await?;
    mock.set_mode(r#"{"mode":"close"}"#).await?;
    let dropped = mock.get("/v1/models").await;
    assert!(
        dropped.is_err(),
        "a closed connection answered: {dropped:?}"
    );
    assert_eq!(mock.stats().await?["hits"]["/v1/models"], 1);
    mock.post("/__reset", "").await?;
    assert_eq!(mock.get("/v1/models").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn slow_mode_delays_the_answer() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "openai"]).await?;
    mock.set_mode(r#"{"slow_ms":300}"#).await?;
    let start = Instant::now();
    let reply = mock.get("/v1/models").await?;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    // Admin paths are never slowed.
    let start = Instant::now();
    mock.stats().await?;
    assert!(start.elapsed() < Duration::from_millis(300));
    Ok(())
}

#[tokio::test]
async fn bad_mode_requests_are_400_and_change_nothing() -> anyhow::Result<()> {
    let mock = Mock::start(&["--flavor", "openai"]).await?;
    for bad in [
        "{not json",
        "",
        "[]",
        r#"{"stauts":503}"#,
        r#"{"mode":"hang","status":503}"#,
        r#"{"mode":"sideways"}"#,
        r#"{"status":"503"}"#,
    ] {
        let reply = mock.post("/__mode", bad).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(reply.json()?["error"]["code"], 400, "{bad:?}");
    }
    assert_eq!(mock.get("/__mode").await?.json()?["mode"], "healthy");
    assert_eq!(
        mock.request(Method::GET, "/__reset", None, &[])
            .await?
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_exits_cleanly() -> anyhow::Result<()> {
    let mut mock = Mock::start(&["--flavor", "openai"]).await?;
    let pid = mock.pid().expect("the child is running");
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    assert!(killed.success());
    let status = mock.wait_exit(Duration::from_secs(5)).await?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}
