//! The probe client and checks against real sockets on loopback: each way a backend can
//! fail (refused, hung, reset, garbage) becomes its own reason, and a good answer is judged by
//! the type's probe, models included.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly on setup errors"
)]

use hale_core::store::CheckPlan;
use hale_core::{CheckResult, EndpointConfig, EndpointKind, Secret};
use hale_probe::{ProbeClient, probe_for, run_check};
use hale_testkit::{closing_answer, serve_heads};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use url::Url;

/// A one-trick server: answers every connection with `respond(request_text)`, or does
/// something rude when it returns `None` (closes at once).
async fn serve(
    respond: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (format!("http://{addr}"), serve_heads(listener, respond))
}

fn plan(url: &str, kind: EndpointKind, models: &[&str], discover: bool) -> CheckPlan {
    let mut c = EndpointConfig::new("e", url, kind);
    c.models = models.iter().map(|m| m.to_string()).collect();
    c.api_key = Secret::new("sk-test");
    CheckPlan {
        endpoint: Arc::new(c.resolve("e").unwrap()),
        timeout: Duration::from_millis(800),
        discover,
    }
}

#[tokio::test]
async fn connection_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url = Url::parse(&format!("http://{addr}/health")).unwrap();
    let err = ProbeClient::new()
        .get(&url, &Secret::default(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err, CheckResult::ConnectRefused);
}

#[tokio::test]
async fn hung_server_times_out_within_the_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            socks.push(s);
        }
    });
    let url = Url::parse(&format!("http://{addr}/health")).unwrap();
    let start = tokio::time::Instant::now();
    let err = ProbeClient::new()
        .get(&url, &Secret::default(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err, CheckResult::Timeout);
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn closed_without_answer_is_reset() {
    let (url, _t) = serve(|_| None).await;
    let url = Url::parse(&format!("{url}/health")).unwrap();
    let err = ProbeClient::new()
        .get(&url, &Secret::default(), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CheckResult::ConnectionReset { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_is_a_bad_response() {
    let (url, _t) = serve(|_| Some("SSH-2.0-OpenSSH_9.6\r\n\r\n".to_owned())).await;
    let outcome = run_check(
        &ProbeClient::new(),
        probe_for(EndpointKind::Vllm).as_ref(),
        &plan(&url, EndpointKind::Vllm, &[], false),
    )
    .await;
    assert!(
        matches!(outcome.result, CheckResult::BadResponse { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn sends_user_agent_and_bearer_and_discovers_models() {
    let (url, _t) = serve(|req| {
        let ok = req.contains("user-agent: hale/") && req.contains("authorization: Bearer sk-test");
        if !ok {
            return Some(closing_answer("400 Bad Request", "missing headers"));
        }
        if req.starts_with("GET /health ") {
            Some(closing_answer("200 OK", ""))
        } else if req.starts_with("GET /v1/models ") {
            Some(closing_answer(
                "200 OK",
                r#"{"object":"list","data":[{"id":"m1"},{"id":"m2"}]}"#,
            ))
        } else {
            Some(closing_answer("404 Not Found", ""))
        }
    })
    .await;
    let client = ProbeClient::new();
    let vllm = probe_for(EndpointKind::Vllm);
    let outcome = run_check(
        &client,
        vllm.as_ref(),
        &plan(&url, EndpointKind::Vllm, &[], true),
    )
    .await;
    match outcome.result {
        CheckResult::Ok { models: Some(m) } => assert_eq!(m, [Arc::from("m1"), Arc::from("m2")]),
        other => panic!("{other:?}"),
    }
    // Without discovery due and without static models, only the health URL is read.
    let outcome = run_check(
        &client,
        vllm.as_ref(),
        &plan(&url, EndpointKind::Vllm, &[], false),
    )
    .await;
    assert_eq!(outcome.result, CheckResult::Ok { models: None });
    // A static model the backend does not list fails the check.
    let outcome = run_check(
        &client,
        vllm.as_ref(),
        &plan(&url, EndpointKind::Vllm, &["m1", "m3"], false),
    )
    .await;
    assert_eq!(
        outcome.result,
        CheckResult::ModelMissing {
            missing: vec![Arc::from("m3")]
        }
    );
}

#[tokio::test]
async fn http_errors_and_loading() {
    let (url, _t) = serve(|_| {
        Some(closing_answer(
            "503 Service Unavailable",
            r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#,
        ))
    })
    .await;
    let client = ProbeClient::new();
    let outcome = run_check(
        &client,
        probe_for(EndpointKind::Llamacpp).as_ref(),
        &plan(&url, EndpointKind::Llamacpp, &[], false),
    )
    .await;
    assert!(
        matches!(outcome.result, CheckResult::Loading { .. }),
        "{outcome:?}"
    );
    let outcome = run_check(
        &client,
        probe_for(EndpointKind::Vllm).as_ref(),
        &plan(&url, EndpointKind::Vllm, &[], false),
    )
    .await;
    assert!(
        matches!(outcome.result, CheckResult::Http { status: 503, .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn names_the_replica_when_given_a_pod_id() {
    let (url, _t) = serve(|req| {
        if req.contains("x-hale-pod: pod-7\r\n") {
            Some(closing_answer("200 OK", ""))
        } else {
            Some(closing_answer("400 Bad Request", "no pod header"))
        }
    })
    .await;
    let vllm = probe_for(EndpointKind::Vllm);
    let p = plan(&url, EndpointKind::Vllm, &[], false);
    let named = run_check(&ProbeClient::new().with_pod_id("pod-7"), vllm.as_ref(), &p).await;
    assert_eq!(named.result, CheckResult::Ok { models: None });
    let anonymous = run_check(&ProbeClient::new(), vllm.as_ref(), &p).await;
    assert!(matches!(
        anonymous.result,
        CheckResult::Http { status: 400, .. }
    ));
}
