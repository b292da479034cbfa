//! The server process: health and readiness.

use std::time::Duration;

use crate::support::{PATIENCE, TestEnv};

/// Binds port 0 for the server by finding a free port first.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn the_server_reports_health_and_readiness() {
    let mut env = TestEnv::new().await;
    let port = free_port();
    env.vars
        .insert("LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    let _server = env.spawn("server", &[]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let health = loop {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(response) => break response,
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "server never came up: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(health.status(), 200);
    let ready = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("JSON");
    assert_eq!(body, serde_json::json!({"postgres": "up", "redis": "up"}));
    env.cleanup().await;
}
