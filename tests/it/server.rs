//! The server process: health and readiness.

use crate::support::TestEnv;

#[tokio::test]
async fn the_server_reports_health_and_readiness() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
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
