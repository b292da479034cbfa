//! The server process: health and readiness, the WebSocket handshake, shutdown.

use crate::support::TestEnv;
use crate::support::ws::{Protocol, WsClient, graphql_url};

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

#[tokio::test]
async fn sigterm_closes_websockets_with_going_away_and_stops_the_server_promptly() {
    let mut env = TestEnv::new().await;
    let (mut server, base) = env.start_server().await;
    let ws_url = graphql_url(&base);
    let mut client = WsClient::connect(&ws_url, Protocol::TransportWs).await;
    client
        .subscribe(
            "1",
            "subscription { killmailAdded { killmailId } }",
            serde_json::json!({}),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let pid = server.id().expect("a running server").to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    assert_eq!(
        client.close_code().await,
        Some(1001),
        "subscribers are told the server is going away"
    );
    let exited = tokio::time::timeout(std::time::Duration::from_secs(10), server.wait())
        .await
        .expect("the server exits within 10 s of SIGTERM")
        .expect("exit status");
    assert!(exited.success(), "{exited}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_websocket_handshake_that_is_not_one_gets_400_with_its_reason() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let http = reqwest::Client::new();
    let handshake = |version: &'static str, key: Option<&'static str>| {
        let request = http
            .get(format!("{base}/graphql"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", version)
            .header("sec-websocket-protocol", "graphql-transport-ws");
        match key {
            Some(key) => request.header("sec-websocket-key", key),
            None => request,
        }
    };
    for (request, reason) in [
        (handshake("13", None), "Sec-WebSocket-Key is missing"),
        (
            handshake("8", Some("dGhlIHNhbXBsZSBub25jZQ==")),
            "version 13",
        ),
    ] {
        let response = request.send().await.expect("an answer");
        assert_eq!(response.status(), 400);
        let body = response.text().await.expect("a body");
        assert!(body.contains(reason), "{body}");
    }
    // The same server still upgrades a real client.
    let ws_url = graphql_url(&base);
    WsClient::connect(&ws_url, Protocol::LegacyWs).await;
    env.cleanup().await;
}
