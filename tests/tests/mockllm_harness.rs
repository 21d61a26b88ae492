//! Proves that the mockllm harness of hale-testkit starts the real `mockllm` binary, learns
//! its address from its first stdout line, and that the server answers its flavour's health
//! path and counts the hit in its admin stats, which the end-to-end suites use to tell
//! whether the gateway probed a backend.

use hale_testkit::{MockLlm, http_get_json};

#[tokio::test]
async fn llamacpp_flavour_answers_health_and_counts_the_hit() {
    let mock = MockLlm::start("llamacpp", &["m1"]).await.unwrap();
    assert_eq!(mock.url(), format!("http://127.0.0.1:{}", mock.port()));

    let reply = http_get_json(&format!("{}/health", mock.url()))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "GET /health answered {}", reply.text);
    assert!(
        mock.hits("/health").await.unwrap() >= 1,
        "stats: {}",
        mock.stats().await.unwrap()
    );
}

#[tokio::test]
async fn kill_refuses_connections_and_restart_serves_on_the_same_port() {
    let mut mock = MockLlm::start("llamacpp", &["m1"]).await.unwrap();
    let port = mock.port();
    mock.kill().await.unwrap();
    assert!(
        http_get_json(&format!("{}/health", mock.url()))
            .await
            .is_err(),
        "a killed mockllm must refuse connections"
    );
    mock.restart().await.unwrap();
    assert_eq!(mock.port(), port);
    let reply = http_get_json(&format!("{}/health", mock.url()))
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "GET /health answered {}", reply.text);
}

#[tokio::test]
async fn admin_api_switches_failure_modes_and_resets_counters() {
    let mock = MockLlm::builder("openai")
        .models(&["m1", "m2"])
        .chunks(3)
        .chunk_delay_ms(1)
        .start()
        .await
        .unwrap();
    let models = http_get_json(&format!("{}/v1/models", mock.url()))
        .await
        .unwrap();
    assert_eq!(
        models.status, 200,
        "GET /v1/models answered {}",
        models.text
    );

    mock.set_mode(serde_json::json!({"status": 503}))
        .await
        .unwrap();
    let failing = http_get_json(&format!("{}/v1/models", mock.url()))
        .await
        .unwrap();
    assert_eq!(failing.status, 503, "answered {}", failing.text);
    assert_eq!(mock.hits("/v1/models").await.unwrap(), 2);

    // A typo in a mode must fail the test instead of leaving the backend healthy.
    assert!(
        mock.set_mode(serde_json::json!({"stauts": 503}))
            .await
            .is_err()
    );

    mock.reset().await.unwrap();
    assert_eq!(mock.hits("/v1/models").await.unwrap(), 0);
    let healthy = http_get_json(&format!("{}/v1/models", mock.url()))
        .await
        .unwrap();
    assert_eq!(healthy.status, 200, "answered {}", healthy.text);
}
