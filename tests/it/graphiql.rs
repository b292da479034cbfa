//! GraphiQL in a real headless Chromium that can reach nothing but 127.0.0.1: the page loads
//! from the binary alone, and the DESIGN.md example subscription, run as it is, shows a live
//! killmail with its names. A screenshot is left in tests/it/output/graphiql.png.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use killreport::events::KillmailAdded;
use killreport::killmail::{Received, Source};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{PATIENCE, TestEnv, env_or, fixtures};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One Chrome DevTools Protocol call; events arriving meanwhile are skipped.
async fn cdp(socket: &mut Socket, id: u64, method: &str, params: Value) -> Value {
    let call = json!({"id": id, "method": method, "params": params});
    socket
        .send(Message::Text(call.to_string().into()))
        .await
        .expect("CDP send");
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a CDP answer in time")
            .expect("CDP socket open")
            .expect("CDP frame");
        let Message::Text(text) = frame else { continue };
        let message: Value = serde_json::from_str(&text).expect("CDP JSON");
        if message["id"] == id {
            assert!(message["error"].is_null(), "{method}: {message}");
            return message["result"].clone();
        }
    }
}

/// Evaluates `expression` in the page until it yields a non-empty string or `true`.
async fn wait_for(socket: &mut Socket, next_id: &mut u64, expression: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        *next_id += 1;
        let result = cdp(
            socket,
            *next_id,
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        )
        .await;
        let value = result["result"]["value"].clone();
        if value == true || value.as_str().is_some_and(|s| !s.is_empty()) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never true in the page: {expression}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn graphiql_loads_offline_and_streams_the_design_example_subscription() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let chromium = env_or("CHROMIUM", "/usr/bin/chromium");
    assert!(
        std::path::Path::new(&chromium).exists(),
        "this test needs Chromium at {chromium} (apt-get install chromium; .ci/run does)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let profile = std::env::temp_dir().join(format!(
        "killreport-chromium-{}",
        env.database_url.rsplit('_').next().unwrap_or("x")
    ));
    let _browser = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Every host but this machine is unreachable: GraphiQL must come from the server.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1400,900",
            &format!("--remote-debugging-port={port}"),
            &format!("--user-data-dir={}", profile.display()),
            "about:blank",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting Chromium");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let page_socket = loop {
        if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await
            && let Ok(targets) = response.json::<Vec<Value>>().await
            && let Some(url) = targets
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        {
            break url.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Chromium's DevTools never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (mut socket, _) = tokio_tungstenite::connect_async(page_socket.as_str())
        .await
        .expect("DevTools socket");
    let mut id = 1;
    cdp(
        &mut socket,
        id,
        "Page.navigate",
        json!({"url": format!("{base}/graphql")}),
    )
    .await;
    wait_for(
        &mut socket,
        &mut id,
        "document.querySelector('.graphiql-execute-button') !== null",
    )
    .await;
    let editor = wait_for(
        &mut socket,
        &mut id,
        "document.querySelector('.graphiql-query-editor')?.innerText ?? ''",
    )
    .await;
    assert!(
        editor.as_str().expect("text").contains("killmailAdded"),
        "the DESIGN example is the default query: {editor}"
    );

    id += 1;
    cdp(
        &mut socket,
        id,
        "Runtime.evaluate",
        json!({"expression": "document.querySelector('.graphiql-execute-button').click()"}),
    )
    .await;
    // Let the subscription reach the server, then announce a killmail as worker-killmails would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (killmail, hash) = fixtures::killmails()
        .into_iter()
        .find(|(k, _)| k.killmail_id.0 == 97_089_202)
        .expect("fixture");
    let received = Received {
        killmail: killmail.clone(),
        hash: hash.clone(),
        zkb: None,
        source: Source::Import,
    };
    // The server takes names (and the killmail) from the store, not from the event.
    let victim = killmail.victim.character_id.expect("a victim");
    let pilot = killreport::esi::Name {
        id: victim,
        category: "character".to_owned(),
        name: "Screenshot Pilot".to_owned(),
    };
    killreport::db::names::save(&env.pool, &[pilot])
        .await
        .expect("a name");
    let stored = killreport::ingest::store(&env.pool, &[received])
        .await
        .expect("store");
    let event = KillmailAdded {
        seq: stored[0].seq,
        killmail: killmail.clone(),
        zkb: None,
        hash: Some(hash),
        names: [(victim.to_string(), "Screenshot Pilot".to_owned())]
            .into_iter()
            .collect(),
    };
    env.event_publisher()
        .await
        .publish(&[event])
        .await
        .expect("publish");

    let result = wait_for(
        &mut socket,
        &mut id,
        "(() => { const t = document.querySelector('.result-window')?.innerText ?? ''; return t.includes('Screenshot Pilot') ? t : ''; })()",
    )
    .await;
    let result = result.as_str().expect("text");
    assert!(result.contains("97089202"), "{result}");
    assert!(result.contains("shipTypeName"), "{result}");

    id += 1;
    let shot = cdp(
        &mut socket,
        id,
        "Page.captureScreenshot",
        json!({"format": "png"}),
    )
    .await;
    let png = shot["data"].as_str().expect("base64 PNG");
    let output = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/output");
    std::fs::create_dir_all(&output).expect("output dir");
    let png = base64::engine::general_purpose::STANDARD
        .decode(png)
        .expect("base64");
    std::fs::write(output.join("graphiql.png"), png).expect("screenshot");
    println!(
        "GraphiQL screenshot: {}",
        output.join("graphiql.png").display()
    );
    env.cleanup().await;
}
