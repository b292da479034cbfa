//! Hostile and broken WebSocket clients: each is refused or closed with the protocol's code and
//! a clear reason, and a well-behaved client beside it still receives every killmail.

use std::time::Duration;

use killreport::killmail::{Killmail, Received, Source};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::ws::{Protocol, WsClient, graphql_url};
use crate::support::{TestEnv, fixtures};

const IDS: &str = "subscription { killmailAdded { killmailId } }";

/// A server for this test with `settings` (environment variables) and its WebSocket URL.
async fn server(env: &mut TestEnv, settings: &[(&str, &str)]) -> (tokio::process::Child, String) {
    for (name, value) in settings {
        env.vars.insert((*name).into(), (*value).into());
    }
    let (server, base) = env.start_server().await;
    (server, graphql_url(&base))
}

/// Stores `killmails` and announces them on the test's channel, as worker-killmails would
/// (the server delivers what its store holds).
async fn announce(env: &TestEnv, killmails: &[Killmail]) {
    announce_paced(env, killmails, Duration::ZERO).await;
}

/// [`announce`], waiting `gap` after each killmail, as a live feed would.
async fn announce_paced(env: &TestEnv, killmails: &[Killmail], gap: Duration) {
    for killmail in killmails {
        let received = Received {
            killmail: killmail.clone(),
            hash: format!("{:040x}", killmail.killmail_id.0),
            zkb: None,
            source: Source::Import,
        };
        let announced = env
            .store_and_announce(std::slice::from_ref(&received))
            .await;
        assert_eq!(
            announced.len(),
            1,
            "killmail {} is new",
            killmail.killmail_id
        );
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
}

/// A well-behaved subscriber, registered.
async fn watcher(url: &str) -> WsClient {
    let mut client = WsClient::connect(url, Protocol::TransportWs).await;
    client.subscribe("w", IDS, json!({})).await;
    client
}

/// Asserts `client` receives exactly `killmails`, in order.
async fn receives_all(client: &mut WsClient, killmails: &[Killmail]) {
    for killmail in killmails {
        let data = client.next_data("w").await;
        assert_eq!(
            data["killmailAdded"]["killmailId"],
            killmail.killmail_id.to_string()
        );
    }
}

/// Announces `n` killmails and asserts that `client`, well-behaved, receives every one.
async fn still_receives_everything(env: &TestEnv, client: &mut WsClient, n: usize) {
    let killmails = some_killmails(n);
    announce(env, &killmails).await;
    receives_all(client, &killmails).await;
}

fn some_killmails(n: usize) -> Vec<Killmail> {
    fixtures::killmails()
        .into_iter()
        .take(n)
        .map(|(k, _)| k)
        .collect()
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_1008_and_the_others_get_everything() {
    never_reads(&[("WS_SEND_QUEUE", "32")], "32 messages").await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_by_its_queued_bytes_too() {
    // Room for thousands of messages, but not for their bytes.
    let settings = [
        ("WS_SEND_QUEUE", "100000"),
        ("WS_SEND_QUEUE_BYTES", "262144"),
    ];
    never_reads(&settings, "262144 bytes").await;
}

/// A client that never reads, on a server with `settings`, is closed with 1008 and a reason
/// naming `bound`; a client beside it gets every killmail.
async fn never_reads(settings: &[(&str, &str)], bound: &str) {
    let mut env = TestEnv::new().await;
    let (_server, url) = server(&mut env, settings).await;
    // Structure-fight sized killmails: 500 attackers each, so the socket's buffers fill fast.
    let (template, _) = fixtures::killmails().swap_remove(0);
    let fight: Vec<Killmail> = (0..300)
        .map(|i| {
            let mut killmail = template.clone();
            killmail.killmail_id.0 += i;
            killmail.attackers = (0..500).map(|_| template.attackers[0].clone()).collect();
            killmail
        })
        .collect();
    let mut slow = WsClient::connect(&url, Protocol::TransportWs).await;
    let everything = "subscription { killmailAdded { killmailId attackers { damageDone finalBlow securityStatus character { id } corporation { id } alliance { id } shipType { id } weaponType { id } } } }";
    slow.subscribe("s", everything, json!({})).await;
    let mut good = watcher(&url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Paced and read as they come, so the well-behaved client is not slow itself on a busy
    // machine (a debug server beside the rest of the suite).
    tokio::join!(
        announce_paced(&env, &fight, Duration::from_millis(3)),
        receives_all(&mut good, &fight)
    );
    let (code, reason) = slow.close_frame().await.expect("a close frame");
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("too slow"), "{reason}");
    assert!(reason.contains(bound), "{reason}");
    assert!(reason.contains("after"), "says how to resume: {reason}");
    env.cleanup().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_with_503_and_held_ones_carry_on() {
    let mut env = TestEnv::new().await;
    let (_server, url) = server(&mut env, &[("WS_MAX_CONNECTIONS", "2")]).await;
    let mut good = watcher(&url).await;
    let other = WsClient::connect(&url, Protocol::TransportWs).await;
    match WsClient::open(&url, Protocol::TransportWs).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            assert!(body.contains("too many connections"), "{body}");
        }
        Err(other) => panic!("refused, but not with 503: {other}"),
        Ok(_) => panic!("a third connection was accepted"),
    }
    // A place freed is a place taken.
    other.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _third = WsClient::connect(&url, Protocol::TransportWs).await;

    tokio::time::sleep(Duration::from_millis(200)).await;
    still_receives_everything(&env, &mut good, 5).await;
    env.cleanup().await;
}

#[tokio::test]
async fn operations_over_the_limit_get_an_error_and_the_connection_carries_on() {
    let mut env = TestEnv::new().await;
    let (_server, url) = server(&mut env, &[("WS_MAX_SUBSCRIPTIONS", "2")]).await;
    let mut client = watcher(&url).await;
    client.subscribe("second", IDS, json!({})).await;
    client.subscribe("third", IDS, json!({})).await;
    let refused = client.receive().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["id"], "third");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "TOO_MANY_SUBSCRIPTIONS"
    );

    let killmails = some_killmails(3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    announce(&env, &killmails).await;
    let mut got = Vec::new();
    while got.len() < 2 * killmails.len() {
        let message = client.receive().await;
        assert_eq!(message["type"], "next", "{message}");
        got.push(message["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(got.iter().filter(|id| *id == "w").count(), 3);
    assert_eq!(got.iter().filter(|id| *id == "second").count(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn protocol_violations_get_graphql_ws_close_codes_and_others_are_untouched() {
    let mut env = TestEnv::new().await;
    let (_server, url) = server(&mut env, &[]).await;
    let mut good = watcher(&url).await;

    let big = "x".repeat(70 * 1024);
    let cases: Vec<(&str, bool, Message, u16, &str)> = vec![
        (
            "not JSON",
            true,
            Message::Text("{oops".into()),
            4400,
            "invalid message",
        ),
        (
            "unknown type",
            true,
            Message::Text(r#"{"type":"shout"}"#.into()),
            4400,
            "unknown variant `shout`",
        ),
        (
            "binary",
            true,
            Message::Binary(vec![1, 2, 3].into()),
            4400,
            "binary",
        ),
        (
            "subscribe before connection_init",
            false,
            Message::Text(
                json!({"id": "1", "type": "subscribe", "payload": {"query": IDS}})
                    .to_string()
                    .into(),
            ),
            4401,
            "Unauthorized",
        ),
        (
            "a second connection_init",
            true,
            Message::Text(r#"{"type":"connection_init"}"#.into()),
            4429,
            "Too many initialisation requests",
        ),
        (
            "an operation id over 128 bytes",
            true,
            Message::Text(
                json!({"id": "i".repeat(129), "type": "subscribe", "payload": {"query": IDS}})
                    .to_string()
                    .into(),
            ),
            4400,
            "operation id of 129 bytes: at most 128",
        ),
        (
            "oversized",
            true,
            Message::Text(
                json!({"id": "1", "type": "subscribe", "payload": {"query": big}})
                    .to_string()
                    .into(),
            ),
            1009,
            "at most 65536 bytes",
        ),
    ];
    for (case, initialised, frame, code, reason) in cases {
        let mut client = WsClient::open(&url, Protocol::TransportWs)
            .await
            .expect("connect");
        if initialised {
            client.init().await;
        }
        client.send_frame(frame).await;
        let (got_code, got_reason) = client
            .close_frame()
            .await
            .unwrap_or_else(|| panic!("{case}: no close frame"));
        assert_eq!(got_code, code, "{case}: {got_reason}");
        assert!(got_reason.contains(reason), "{case}: {got_reason}");
    }

    // The same id twice is 4409; an invalid document is an error for that operation only.
    let mut client = WsClient::connect(&url, Protocol::TransportWs).await;
    client
        .subscribe("x", "subscription { nope }", json!({}))
        .await;
    let error = client.receive().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["id"], "x");
    assert!(
        error["payload"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
        "{error}"
    );
    client.subscribe("d", IDS, json!({})).await;
    client.subscribe("d", IDS, json!({})).await;
    let (code, reason) = client.close_frame().await.expect("a close frame");
    assert_eq!(
        (code, reason.as_str()),
        (4409, "Subscriber for d already exists")
    );

    still_receives_everything(&env, &mut good, 3).await;
    env.cleanup().await;
}

#[tokio::test]
async fn keepalive_pings_drop_silent_peers_and_uninitialised_connections() {
    let mut env = TestEnv::new().await;
    let (_server, url) = server(&mut env, &[("WS_KEEPALIVE_SECS", "1")]).await;
    let mut good = watcher(&url).await;
    let mut silent = WsClient::connect(&url, Protocol::TransportWs).await;
    let mut mute = WsClient::open(&url, Protocol::TransportWs)
        .await
        .expect("connect");

    // The silent one reads nothing, so it answers no ping; the good one answers as it reads.
    let keep_reading = async {
        good.assert_quiet(Duration::from_secs(4)).await;
        good
    };
    let (mut good, (code, reason)) = tokio::join!(keep_reading, async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        silent.close_frame().await.expect("a close frame")
    });
    assert_eq!((code, reason.as_str()), (1001, "no answer to pings"));
    let (code, reason) = mute.close_frame().await.expect("a close frame");
    assert_eq!(
        (code, reason.as_str()),
        (4408, "Connection initialisation timeout")
    );

    still_receives_everything(&env, &mut good, 3).await;
    env.cleanup().await;
}

/// Frames drawn from valid client messages of both protocols, mutated byte by byte and field
/// by field (the decoders' fuzzing inputs), and well-formed messages of any type with odd ids,
/// documents and variables; `FUZZ_FRAMES` sets how many, for longer runs.
const FUZZED_FRAMES: usize = 400;

/// Well-formed messages that reach past the decoder: any type, reused and odd ids, valid and
/// broken documents, any variables.
fn well_formed() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    use proptest::sample::select;

    let kinds = select(vec![
        "connection_init",
        "subscribe",
        "start",
        "complete",
        "stop",
        "ping",
        "pong",
        "connection_terminate",
        "ka",
        "next",
    ]);
    let ids = select(vec!["1", "2", "3", "", "a\"b", "ü", "1 "]);
    let documents = select(vec![
        IDS,
        "subscription($f: KillmailFilter) { killmailAdded(filter: $f) { killmailId } }",
        "subscription($a: String) { killmailAdded(after: $a) { killmailId cursor } }",
        "subscription { killmailAdded(after: \"x\") { killmailId } }",
        "subscription A { killmailAdded { killmailId } } subscription B { killmailAdded { id } }",
        "{ killmails(first: 2) { edges { cursor } } }",
        "{ killmails(first: 1000) { edges { cursor } } }",
        "subscription { nope }",
        "query {",
        "",
    ]);
    let names = prop::option::of(select(vec!["A", "B", "C"]));
    (
        kinds,
        ids,
        documents,
        crate::support::fuzz::any_json(),
        names,
    )
        .prop_map(|(kind, id, query, variables, name)| {
            json!({"type": kind, "id": id,
                   "payload": {"query": query, "variables": variables, "operationName": name}})
            .to_string()
            .into_bytes()
        })
}

#[tokio::test]
async fn fuzzed_client_messages_are_answered_or_refused_with_a_reason_and_the_server_carries_on() {
    use std::collections::BTreeMap;

    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let frames = crate::support::env_or("FUZZ_FRAMES", &FUZZED_FRAMES.to_string())
        .parse::<usize>()
        .expect("FUZZ_FRAMES is a number");
    let mut env = TestEnv::new().await;
    // The neighbour reads only at the end: long runs must not drop it for unanswered pings.
    let (mut server, url) = server(&mut env, &[("WS_KEEPALIVE_SECS", "3600")]).await;
    let mut good = watcher(&url).await;
    let corpus: Vec<Vec<u8>> = [
        json!({"type": "connection_init", "payload": {}}),
        json!({"type": "subscribe", "id": "1", "payload": {"query": IDS, "variables": {"f": {"npc": true}}}}),
        json!({"type": "start", "id": "2", "payload": {"query": "subscription($f: KillmailFilter) { killmailAdded(filter: $f) { id } }", "operationName": null}}),
        json!({"type": "subscribe", "id": "3", "payload": {"query": "{ killmails(first: 2) { edges { cursor } } }"}}),
        json!({"type": "complete", "id": "1"}),
        json!({"type": "stop", "id": "2"}),
        json!({"type": "ping", "payload": {"at": 1}}),
        json!({"type": "pong"}),
        json!({"type": "connection_terminate"}),
    ]
    .iter()
    .map(|m| m.to_string().into_bytes())
    .collect();
    let strategy = proptest::prop_oneof![crate::support::fuzz::input(corpus), well_formed()];
    let mut runner = TestRunner::deterministic();
    // 1005 (a close frame without a code) answers the client's own `connection_terminate`.
    let allowed = [1005, 1009, 4400, 4401, 4409, 4429];
    // Close codes seen, by code; the rest were answered and the connection went on.
    let mut closes: BTreeMap<u16, usize> = BTreeMap::new();
    let mut client: Option<WsClient> = None;
    for n in 0..frames {
        let bytes = strategy.new_tree(&mut runner).expect("an input").current();
        let frame = match String::from_utf8(bytes) {
            Ok(text) => Message::Text(text.clone().into()),
            Err(bytes) => Message::Binary(bytes.into_bytes().into()),
        };
        // A connection goes on from frame to frame until one closes it; then the next frame
        // gets a new one, speaking the other protocol.
        let mut open = match client.take() {
            Some(open) => open,
            None => {
                let protocol = if n % 2 == 0 {
                    Protocol::TransportWs
                } else {
                    Protocol::LegacyWs
                };
                let mut open = WsClient::open(&url, protocol).await.expect("connect");
                open.init().await;
                open
            }
        };
        open.send_frame(frame.clone()).await;
        // Either the connection is closed with a protocol code and a reason, or it carries on
        // and answers a ping.
        open.send(json!({"type": "ping"})).await;
        match tokio::time::timeout(Duration::from_secs(5), open.close_or_pong()).await {
            Ok(Err(ended)) => {
                panic!("{frame:?}: the connection ended without a close frame: {ended}")
            }
            Ok(Ok(Some((code, reason)))) => {
                assert!(allowed.contains(&code), "{frame:?} → {code} {reason}");
                assert!(
                    code == 1005 || !reason.is_empty(),
                    "{frame:?} → {code} without a reason"
                );
                *closes.entry(code).or_default() += 1;
            }
            Ok(Ok(None)) => client = Some(open),
            Err(_) => panic!("{frame:?}: neither closed nor answered"),
        }
    }
    let closed: usize = closes.values().sum();
    println!(
        "{frames} fuzzed frames: {} answered, {closed} closed the connection {closes:?} (code: times)",
        frames - closed
    );
    assert!(closed > 0, "no fuzzed frame was refused");
    assert!(
        server.try_wait().expect("status").is_none(),
        "the server died"
    );
    still_receives_everything(&env, &mut good, 3).await;
    env.cleanup().await;
}

/// zKillboard's websocket URL of the server whose GraphQL WebSocket is at `url`.
fn zkb_url(url: &str) -> String {
    url.replace("/graphql", "/websocket/")
}

#[tokio::test]
async fn one_address_holds_its_share_of_websockets_across_endpoints_and_is_told_429() {
    let mut env = TestEnv::new().await;
    // The test's client is on loopback: its share is the loopback one.
    let (_server, url) = server(&mut env, &[("WS_MAX_CONNECTIONS_PER_LOOPBACK", "3")]).await;
    let mut good = watcher(&url).await;
    let _other = WsClient::connect(&url, Protocol::TransportWs).await;
    let (zkb, _) = tokio_tungstenite::connect_async(zkb_url(&url))
        .await
        .expect("a /websocket/ place");
    for refused in [
        WsClient::open(&url, Protocol::LegacyWs).await.map(|_| ()),
        tokio_tungstenite::connect_async(zkb_url(&url))
            .await
            .map(|_| ()),
    ] {
        match refused {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429);
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
                assert!(
                    body.contains("too many connections from your address: at most 3"),
                    "{body}"
                );
            }
            Err(other) => panic!("refused, but not with 429: {other}"),
            Ok(()) => panic!("a fourth connection was accepted"),
        }
    }
    // A place given back is the address's again.
    drop(zkb);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _again = WsClient::connect(&url, Protocol::LegacyWs).await;
    still_receives_everything(&env, &mut good, 3).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_websocket_that_never_subscribes_is_closed_and_a_subscribed_one_is_kept() {
    let mut env = TestEnv::new().await;
    let settings = [
        ("WS_SUBSCRIBE_WITHIN_SECS", "1"),
        ("ZKB_WS_SUBSCRIBE_WITHIN_SECS", "1"),
    ];
    let (_server, url) = server(&mut env, &settings).await;
    let mut good = watcher(&url).await;
    let started = tokio::time::Instant::now();
    let mut idle = WsClient::connect(&url, Protocol::TransportWs).await;
    // A query answered is asking for something too, but not for ever.
    idle.subscribe(
        "q",
        "{ killmails(first: 1) { edges { cursor } } }",
        json!({}),
    )
    .await;
    assert_eq!(idle.receive().await["type"], "next");
    let (code, reason) = idle.close_frame().await.expect("a close frame");
    assert_eq!(
        (code, reason.as_str()),
        (1000, "no subscription for 1 s; connect again to subscribe")
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let (mut zkb, _) = tokio_tungstenite::connect_async(zkb_url(&url))
        .await
        .expect("a /websocket/ connection");
    let close = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match futures::StreamExt::next(&mut zkb).await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed in time")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(
        close.reason.as_str(),
        "no subscription for 1 s; connect again to subscribe"
    );

    // The watcher, subscribed all along, is still served.
    still_receives_everything(&env, &mut good, 3).await;
    env.cleanup().await;
}
