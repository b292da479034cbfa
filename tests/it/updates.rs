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

use killreport::killmail::Received;

use crate::support::ws::{PlainSocket, Protocol, WsClient, graphql_url, next_json};
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

/// The `i`-th event of a mixed run, sent: every third one a killmail stored and announced as
/// worker-killmails does, the others posted to `POST /events`. Gives its key (see [`key`]).
async fn send_mixed(env: &TestEnv, i: usize, killmails: &[Received]) -> String {
    if i.is_multiple_of(3) {
        let killmail = &killmails[i / 3];
        env.store_and_announce(std::slice::from_ref(killmail)).await;
        return format!("killmail {}", killmail.killmail.killmail_id.0);
    }
    let body = json!({"type": "statistics", "data": {"n": i}}).to_string();
    assert_eq!(post_event(env, &body).await.0, 200);
    format!("statistics {i}")
}

/// What tells an event of a mixed run apart: its type and its killmail id or number.
fn key(event: &Value) -> String {
    match event["type"].as_str() {
        Some("killmail") => format!("killmail {}", event["data"]["killmailId"]),
        kind => format!("{} {}", kind.unwrap_or("?"), event["data"]["n"]),
    }
}

/// Checks that `received` holds each of `sent` once and nothing else, each side in the order
/// it was sent.
fn assert_each_once(received: &[String], sent: &[String]) {
    let mut counts = std::collections::HashMap::new();
    for key in received {
        *counts.entry(key.as_str()).or_insert(0) += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "received more than once: {twice:?}");
    let missing: Vec<_> = sent
        .iter()
        .filter(|k| !counts.contains_key(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "never received: {missing:?} of {received:?}"
    );
    assert_eq!(received.len(), sent.len(), "{received:?}");
    for side in ["killmail", "statistics"] {
        let of_side = |keys: &[String]| -> Vec<String> {
            keys.iter()
                .filter(|k| k.starts_with(side))
                .cloned()
                .collect()
        };
        assert_eq!(
            of_side(received),
            of_side(sent),
            "{side} events out of order"
        );
    }
}

const EVENTS: &str = "subscription($after: String, $types: [String!]) {
    events(after: $after, types: $types) { type data timestamp cursor } }";

/// The next event of GraphQL subscription `id`, as `/updates` gives it, and its cursor.
async fn next_event(client: &mut WsClient, id: &str) -> (Value, String) {
    let data = client.next_data(id).await;
    let event = &data["events"];
    let timestamp = event["timestamp"].as_str().expect("a DateTime");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("RFC 3339");
    let cursor = event["cursor"].as_str().expect("a cursor").to_owned();
    (event.clone(), cursor)
}

#[tokio::test]
async fn an_events_subscriber_that_reconnects_mid_stream_gets_every_event_once() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let killmails = fixtures::received(0..4, None);
    let url = graphql_url(&base);
    // From the start of the log: nothing sent after subscribing is missed, however long the
    // subscription takes to register.
    let mut client = WsClient::connect(&url, Protocol::TransportWs).await;
    client.subscribe("1", EVENTS, json!({"after": "0.0"})).await;
    let mut typed = WsClient::connect(&url, Protocol::TransportWs).await;
    typed
        .subscribe("1", EVENTS, json!({"after": "0.0", "types": ["killmail"]}))
        .await;
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(send_mixed(&env, i, &killmails).await);
    }
    let mut received = Vec::new();
    let mut cursor = String::new();
    for _ in 0..4 {
        let (event, at) = next_event(&mut client, "1").await;
        received.push(key(&event));
        cursor = at;
    }
    // Gone mid-stream: what was on its way is lost with the socket, and more comes meanwhile.
    client.close().await;
    for i in 6..12 {
        sent.push(send_mixed(&env, i, &killmails).await);
    }
    let mut client = WsClient::connect(&url, Protocol::TransportWs).await;
    client
        .subscribe("2", EVENTS, json!({"after": cursor}))
        .await;
    while received.len() < sent.len() {
        received.push(key(&next_event(&mut client, "2").await.0));
    }
    // Live after the replay, and nothing more came before it.
    sent.push(send_mixed(&env, 13, &killmails).await);
    received.push(key(&next_event(&mut client, "2").await.0));
    assert_each_once(&received, &sent);

    // Only killmails for the subscriber that asked for them.
    let killmail_keys: Vec<String> = sent
        .iter()
        .filter(|k| k.starts_with("killmail"))
        .cloned()
        .collect();
    let mut only = Vec::new();
    while only.len() < killmail_keys.len() {
        only.push(key(&next_event(&mut typed, "1").await.0));
    }
    assert_eq!(only, killmail_keys);
    env.cleanup().await;
}

/// A client of `/updates` as Server-Sent Events, reading the stream as an `EventSource` does.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
    /// Comments received (keep-alives and the last word of a stream).
    comments: Vec<String>,
}

impl SseClient {
    /// Asks `/updates` for `text/event-stream`, resuming after `last_event_id` if given; the
    /// server's refusal is the error (status and body).
    async fn open(base: &str, last_event_id: Option<&str>) -> Result<Self, (u16, Value)> {
        let mut request = reqwest::Client::new()
            .get(format!("{base}/updates"))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::time::timeout(PATIENCE, request.send())
            .await
            .expect("an answer within PATIENCE")
            .expect("an answer");
        let status = response.status().as_u16();
        if status != 200 {
            return Err((status, response.json().await.unwrap_or(Value::Null)));
        }
        let content_type = response.headers()["content-type"].to_str().expect("text");
        assert_eq!(content_type, "text/event-stream");
        Ok(Self {
            response,
            buffer: String::new(),
            comments: Vec::new(),
        })
    }

    /// The next event: its `id` and its data as JSON; `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut data) = (None, None);
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        self.comments.push(comment.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(value.trim()).expect("JSON data"));
                    }
                }
                if let Some(data) = data {
                    return Some((id.expect("every event has an id"), data));
                }
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("a chunk within PATIENCE")
                .ok()??;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).expect("UTF-8"));
        }
    }
}

#[tokio::test]
async fn an_sse_client_that_reconnects_with_last_event_id_gets_every_event_once() {
    let mut env = TestEnv::new().await;
    env.vars.insert("UPDATES_IDLE_SECS".into(), "3".into());
    let (_server, base) = env.start_server().await;
    let killmails = fixtures::received(0..4, None);
    // Subscribed once the answer's head has come.
    let mut client = SseClient::open(&base, None).await.expect("an event stream");
    let mut sent = Vec::new();
    for i in 0..6 {
        sent.push(send_mixed(&env, i, &killmails).await);
    }
    let mut received = Vec::new();
    let mut last_id = String::new();
    for _ in 0..4 {
        let (id, event) = client.next().await.expect("an event");
        let timestamp = event["timestamp"].as_i64().expect("ms since epoch");
        assert!(timestamp > 1_600_000_000_000, "{event}");
        received.push(key(&event));
        last_id = id;
    }
    drop(client);
    for i in 6..12 {
        sent.push(send_mixed(&env, i, &killmails).await);
    }
    let mut client = SseClient::open(&base, Some(&last_id))
        .await
        .expect("resumed");
    while received.len() < sent.len() {
        received.push(key(&client.next().await.expect("an event").1));
    }
    sent.push(send_mixed(&env, 13, &killmails).await);
    received.push(key(&client.next().await.expect("an event").1));
    assert_each_once(&received, &sent);
    // A quiet stream is kept alive with comments (every idle / 3 = 1 s here).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sent.push(send_mixed(&env, 14, &killmails).await);
    assert_eq!(
        key(&client.next().await.expect("an event").1),
        "statistics 14"
    );
    assert!(
        client.comments.iter().any(|c| c == "keep-alive"),
        "{:?}",
        client.comments
    );
    env.cleanup().await;
}

/// Why the server refused an `events` subscription with `variables`: an `error` message when it
/// could tell at once, else a result carrying only the error, then `complete`.
async fn refusal(base: &str, variables: Value) -> String {
    let mut client = WsClient::connect(&graphql_url(base), Protocol::TransportWs).await;
    client.subscribe("1", EVENTS, variables).await;
    let message = client.receive().await;
    let errors = match message["type"].as_str() {
        Some("error") => message["payload"].clone(),
        Some("next") => {
            assert!(message["payload"]["data"].is_null(), "{message}");
            assert_eq!(client.receive().await["type"], "complete");
            message["payload"]["errors"].clone()
        }
        _ => panic!("not a refusal: {message}"),
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "BAD_USER_INPUT",
        "{errors}"
    );
    errors[0]["message"].as_str().expect("a reason").to_owned()
}

#[tokio::test]
async fn bad_cursors_are_answered_with_their_reason() {
    let mut env = TestEnv::new().await;
    env.vars
        .insert("TRUSTED_PROXIES".into(), "127.0.0.1".into());
    let (_server, base) = env.start_server().await;
    let ahead = "1000000.0";
    for (cursor, reason) in [
        ("nope", "not an event cursor"),
        ("12", "not an event cursor"),
        ("1.-2", "not an event cursor"),
        (ahead, "ahead of the event log"),
    ] {
        let (status, body) = SseClient::open(&base, Some(cursor))
            .await
            .err()
            .expect("refused");
        assert_eq!(status, 400, "{cursor}: {body}");
        let error = body["error"].as_str().expect("a reason");
        assert!(
            error.contains("Last-Event-ID") && error.contains(reason),
            "{cursor}: {error}"
        );

        let error = refusal(&base, json!({"after": cursor})).await;
        assert!(error.contains(reason), "{cursor}: {error}");
    }
    let error = refusal(&base, json!({"types": ["statistics", ""]})).await;
    assert!(error.contains("non-empty"), "{error}");
    // The event stream keeps the peer rule: a public client through the proxy is refused.
    let refused = reqwest::Client::new()
        .get(format!("{base}/updates"))
        .header("accept", "text/event-stream")
        .header("x-forwarded-for", "8.8.8.8")
        .send()
        .await
        .expect("an answer");
    assert_eq!(refused.status(), 403);
    env.cleanup().await;
}

#[tokio::test]
async fn events_past_their_retention_are_deleted_and_killmail_events_kept() {
    let mut env = TestEnv::new().await;
    env.vars.insert("EVENT_RETENTION_DAYS".into(), "2".into());
    let killmails = fixtures::received(0..1, None);
    env.store_and_announce(&killmails).await;
    // A killmail stored long ago: its event lasts as long as the killmail.
    sqlx::query("UPDATE killmails SET ingested_at = now() - interval '30 days'")
        .execute(&env.pool)
        .await
        .expect("backdating the killmail");
    for (n, age) in [(1, "5 days"), (2, "3 days"), (3, "1 day")] {
        sqlx::query(
            "INSERT INTO events (type, data, sent_at) VALUES ('statistics', $1, now() - $2::interval)",
        )
        .bind(json!({"n": n}))
        .bind(age)
        .execute(&env.pool)
        .await
        .expect("an event");
    }
    let (_server, base) = env.start_server().await;
    let remaining = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&env.pool)
            .await
            .expect("counting events")
    };
    crate::support::wait_until("the old events to go", PATIENCE, || async {
        remaining().await == 1
    })
    .await;
    // Replayed from the start of the log: the killmail and the event within its retention.
    let mut client = SseClient::open(&base, Some("0.0")).await.expect("a stream");
    let mut replayed = vec![
        key(&client.next().await.expect("an event").1),
        key(&client.next().await.expect("an event").1),
    ];
    replayed.sort();
    let killmail = format!("killmail {}", killmails[0].killmail.killmail_id.0);
    assert_eq!(replayed, [killmail, "statistics 3".to_owned()]);
    env.cleanup().await;
}

#[tokio::test]
async fn what_redis_says_is_not_delivered_and_an_event_whose_ring_was_lost_still_is() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let mut browser = open(&base, &[]).await.expect("let in");
    let mut redis = killreport::events::connect(&env.redis_url)
        .await
        .expect("Redis");
    // Anyone who can publish on the channel: an event in the old format, a ring for an event
    // the log does not hold, a huge message.
    let huge = "x".repeat(100_000);
    for forged in [
        r#"{"type": "forged", "data": 1, "timestamp": 1}"#,
        r#"{"id": 999999999}"#,
        huge.as_str(),
    ] {
        redis::cmd("PUBLISH")
            .arg(env.bus_channel())
            .arg(forged)
            .query_async::<()>(&mut redis)
            .await
            .expect("published");
    }
    // An event in the log whose ring never came (Redis failed after the commit).
    sqlx::query(
        "INSERT INTO events (type, data, sent_at) VALUES ('statistics', '{\"n\": 1}', now())",
    )
    .execute(&env.pool)
    .await
    .expect("an event");
    let event = next_json(&mut browser).await;
    assert_eq!(
        (&event["type"], &event["data"]["n"]),
        (&json!("statistics"), &json!(1))
    );
    let (status, _) = post_event(&env, r#"{"type": "statistics", "data": {"n": 2}}"#).await;
    assert_eq!(status, 200);
    let event = next_json(&mut browser).await;
    assert_eq!(event["data"]["n"], 2, "{event}");
    env.cleanup().await;
}
