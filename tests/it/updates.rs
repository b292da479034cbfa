//! The event bus: `POST /events` on the management API, `/updates` for browsers on the local
//! network (posted events and every stored killmail as a `killmail` event), the peer rule
//! behind a trusted proxy, events sent by the library (`bus::send_event`), silent clients
//! dropped and a client that does not read cut off without slowing the others.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use killreport::bus::{SendError, send_event, send_event_retrying};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::ws::{PlainSocket, next_json};
use crate::support::{PATIENCE, TestEnv, fixtures};

/// Opens `/updates` as a browser's `new WebSocket(url)` does (an Origin, no subprotocol), with
/// any extra headers; the server's refusal is the error.
async fn open(
    base: &str,
    headers: &[(&'static str, &str)],
) -> Result<PlainSocket, tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}/updates", base.replace("http://", "ws://"));
    let mut request = url.into_client_request().expect("a WebSocket URL");
    request
        .headers_mut()
        .insert("origin", "http://localhost:3000".parse().expect("header"));
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header"));
    }
    let (socket, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake within PATIENCE")?;
    Ok(socket)
}

async fn post_event(env: &TestEnv, body: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/events", env.management_url()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_browser_on_updates_receives_posted_events_and_every_stored_killmail() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    // A forged X-Forwarded-For from a peer that is no trusted proxy changes nothing.
    let mut browser = open(&base, &[("x-forwarded-for", "203.0.113.9")])
        .await
        .expect("a local browser is let in");
    // What the browser says is ignored.
    browser
        .send(Message::Text("hello?".into()))
        .await
        .expect("send");

    let (status, body) = post_event(
        &env,
        r#"{"type": "statistics", "data": {"kills": 3, "top": ["a", "b"]}}"#,
    )
    .await;
    assert_eq!((status, body), (200, json!({"success": true})));
    let event = next_json(&mut browser).await;
    assert_eq!(event["type"], "statistics");
    assert_eq!(event["data"], json!({"kills": 3, "top": ["a", "b"]}));
    let now = chrono::Utc::now().timestamp_millis();
    let timestamp = event["timestamp"].as_i64().expect("ms since epoch");
    assert!((now - 60_000..=now).contains(&timestamp), "{timestamp}");

    // A killmail stored and announced as worker-killmails does.
    let batch = fixtures::received(0..1, None);
    env.store_and_announce(&batch).await;
    let killmail = &batch[0].killmail;
    let event = next_json(&mut browser).await;
    assert_eq!(event["type"], "killmail", "{event}");
    let data = &event["data"];
    assert_eq!(data["killmailId"], killmail.killmail_id.0);
    assert_eq!(data["victimId"], json!(killmail.victim.character_id));
    assert_eq!(
        data["victimCorporationId"],
        json!(killmail.victim.corporation_id)
    );
    assert_eq!(data["victimAllianceId"], json!(killmail.victim.alliance_id));
    assert_eq!(data["systemId"], killmail.solar_system_id);
    assert_eq!(data["shipTypeId"], killmail.victim.ship_type_id);
    assert_eq!(data["attackerCount"], killmail.attackers.len());
    let sent = data["timestamp"].as_str().expect("an ISO time");
    chrono::DateTime::parse_from_rfc3339(sent).expect("RFC 3339");
    env.cleanup().await;
}

#[tokio::test]
async fn bad_event_posts_are_answered_with_their_reason() {
    let mut env = TestEnv::new().await;
    let (_server, _base) = env.start_server().await;
    for (body, reason) in [
        ("{not json", "not JSON"),
        (r#"{"data": 1}"#, "type"),
        (r#"{"type": "", "data": 1}"#, "non-empty"),
        (r#"{"type": 7}"#, "type"),
        (r#"["statistics"]"#, "type"),
    ] {
        let (status, answer) = post_event(&env, body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let error = answer["error"].as_str().expect("a reason");
        assert!(error.contains(reason), "{body}: {error}");
    }
    let http = reqwest::Client::new();
    let management = env.management_url();
    for request in [
        http.get(format!("{management}/events")),
        http.post(format!("{management}/other")),
        http.delete(format!("{management}/events")),
    ] {
        let response = request.send().await.expect("an answer");
        assert_eq!(response.status(), 404);
    }
    let huge = format!(
        r#"{{"type": "statistics", "data": "{}"}}"#,
        "x".repeat(100_000)
    );
    assert_eq!(post_event(&env, &huge).await.0, 413);
    env.cleanup().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_only_forwarded_clients_on_the_local_network_get_updates() {
    let mut env = TestEnv::new().await;
    env.vars
        .insert("TRUSTED_PROXIES".into(), "127.0.0.1, 10.0.0.0/8".into());
    let (_server, base) = env.start_server().await;
    let refused = open(&base, &[("x-forwarded-for", "8.8.8.8")]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("a JSON reason");
            let reason = body["error"].as_str().expect("a reason");
            assert!(reason.contains("8.8.8.8"), "{reason}");
        }
        other => panic!("a public client through the proxy is refused: {other:?}"),
    }
    // The client wrote a private address first; the proxy 10.1.1.1 saw it come from 8.8.4.4.
    assert!(
        open(
            &base,
            &[("x-forwarded-for", "192.168.0.2, 8.8.4.4, 10.1.1.1")]
        )
        .await
        .is_err()
    );
    open(&base, &[("x-forwarded-for", "192.168.0.2, 10.1.1.1")])
        .await
        .expect("a client on the local network is let in");
    env.cleanup().await;
}

#[tokio::test]
async fn a_silent_updates_client_is_dropped_and_a_listening_one_stays() {
    let mut env = TestEnv::new().await;
    env.vars.insert("UPDATES_IDLE_SECS".into(), "1".into());
    let (_server, base) = env.start_server().await;
    let mut silent = open(&base, &[]).await.expect("let in");
    let mut listening = open(&base, &[]).await.expect("let in");
    // Reading answers the server's pings (the client library pongs), as a browser does.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    loop {
        match tokio::time::timeout_at(deadline, listening.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => {}
            Ok(other) => panic!("the listening client lost its socket: {other:?}"),
        }
    }

    // The silent one has read nothing for 2.5 s: it was closed.
    let close = loop {
        let frame = tokio::time::timeout(PATIENCE, silent.next())
            .await
            .expect("a close within PATIENCE");
        match frame {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(u16::from(close.code), 1001);
    assert!(close.reason.contains("idle"), "{}", close.reason);
    env.cleanup().await;
}

#[tokio::test]
async fn any_process_sends_events_with_the_library_and_a_bad_type_is_refused() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let mut browser = open(&base, &[]).await.expect("let in");
    let mut redis = killreport::events::connect(&env.redis_url)
        .await
        .expect("Redis");
    let channel = env.bus_channel();
    let backoff = killreport::backoff::Backoff::RECONNECT;
    let pool = &env.pool;
    let refused = send_event_retrying(pool, &mut redis, &channel, "", json!(1), 3, backoff).await;
    assert!(matches!(refused, Err(SendError::Invalid(_))), "{refused:?}");
    let sent = send_event_retrying(
        pool,
        &mut redis,
        &channel,
        "entity-activity",
        json!({"characterId": 1}),
        3,
        backoff,
    )
    .await
    .expect("sent");
    let event = next_json(&mut browser).await;
    assert_eq!(event, serde_json::to_value(&sent.event).expect("JSON"));
    send_event(pool, &mut redis, &channel, "statistics", Value::Null)
        .await
        .expect("sent");
    assert_eq!(next_json(&mut browser).await["type"], "statistics");
    env.cleanup().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off_and_the_others_get_everything() {
    let mut env = TestEnv::new().await;
    env.vars.insert("UPDATES_SEND_QUEUE".into(), "8".into());
    let (_server, base) = env.start_server().await;
    let mut reading = open(&base, &[]).await.expect("let in");
    let mut stalled = open(&base, &[]).await.expect("let in");
    let mut redis = killreport::events::connect(&env.redis_url)
        .await
        .expect("Redis");
    // Far more than the sockets' buffers hold: the stalled client's queue fills.
    let filler = "x".repeat(60_000);
    let channel = env.bus_channel();
    for n in 0..300 {
        send_event(
            &env.pool,
            &mut redis,
            &channel,
            "statistics",
            json!({"n": n, "filler": filler}),
        )
        .await
        .expect("sent");
        assert_eq!(next_json(&mut reading).await["data"]["n"], n);
    }
    // The stalled client finds some events, then the end of its connection.
    let mut received = 0;
    loop {
        match tokio::time::timeout(PATIENCE, stalled.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => received += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                let frame = frame.expect("a close code");
                assert_eq!(u16::from(frame.code), 1008, "{}", frame.reason);
                assert!(frame.reason.contains("too slow"), "{}", frame.reason);
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(None | Some(Err(_))) => break,
            Err(_) => panic!("the stalled client is still connected after {received} events"),
        }
    }
    assert!(received < 300, "the stalled client was not cut off");
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_closes_updates_and_zkillboard_websockets_with_going_away() {
    let mut env = TestEnv::new().await;
    let (mut server, base) = env.start_server().await;
    let mut browser = open(&base, &[]).await.expect("let in");
    let url = format!("{}/websocket/", base.replace("http://", "ws://"));
    let (mut bot, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("a websocket");
    let stopped = crate::support::terminate(&mut server, Duration::from_secs(15)).await;
    assert!(
        stopped.is_some_and(|status| status.success()),
        "{stopped:?}"
    );
    for socket in [&mut browser, &mut bot] {
        let close = loop {
            match tokio::time::timeout(PATIENCE, socket.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => {}
                other => panic!("no close frame: {other:?}"),
            }
        };
        assert_eq!(close.map(|c| u16::from(c.code)), Some(1001));
    }
    env.cleanup().await;
}
