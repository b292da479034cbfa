//! zKillboard's APIs served from the store, driven as their clients drive them: a RedisQ loop
//! as zKillboard's README shows it (on two servers), and killreport's own worker-redisq
//! following another killreport's R2Z2; bad input answered with its reason.

use std::time::{Duration, Instant};

use killreport::killmail::{Received, Seq, Source, Zkb};
use serde_json::{Value, json};

use crate::support::ws::{PlainSocket, next_json};
use crate::support::{PATIENCE, TestEnv, fixtures};

fn received(range: std::ops::Range<usize>) -> Vec<Received> {
    let zkb = json!({"totalValue": 1.5e9, "points": 10, "npc": false});
    fixtures::received(range, Some(Zkb(zkb)))
}

/// Draws a sequence number and keeps none, as a rolled-back batch does.
async fn skip_a_number(env: &TestEnv) {
    sqlx::query("SELECT nextval('killmail_seq')")
        .execute(&env.pool)
        .await
        .expect("nextval");
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PATIENCE)
        .build()
        .expect("a client");
    let response = client.get(url).send().await.expect("an answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// One RedisQ poll: the package (or null), as the README's loop reads it.
async fn listen(base: &str, query: &str) -> Value {
    let (status, _, body) = get(&format!("{base}/listen.php?{query}")).await;
    assert_eq!(status, 200, "{body}");
    body["package"].clone()
}

#[tokio::test]
async fn a_redisq_loop_gets_every_killmail_once_in_order_from_any_server() {
    let mut env = TestEnv::new().await;
    let (_first, first) = env.start_server().await;
    let (_second, second) = env.start_server().await;
    let queue = format!("queueID=test-{}&ttw=1", env.id);
    // First seen now: nothing stored before counts.
    env.store_and_announce(&received(0..1)).await;
    assert_eq!(listen(&first, &queue).await, Value::Null);

    let batch = received(1..5);
    env.store_and_announce(&batch[..2]).await;
    skip_a_number(&env).await;
    env.store_and_announce(&batch[2..]).await;
    // The README's loop: poll until the package is null, alternating servers.
    let mut ids = Vec::new();
    for base in [&first, &second].into_iter().cycle() {
        let package = listen(base, &queue).await;
        if package.is_null() {
            break;
        }
        let job = killreport::zkb::redisq_package(package.clone(), Source::Redisq)
            .expect("a package RedisQ readers decode")
            .expect("a package");
        assert_eq!(package["zkb"]["totalValue"], 1.5e9);
        ids.push(job.killmail_id.0);
        assert!(ids.len() <= batch.len(), "{ids:?}");
    }
    let expected: Vec<i64> = batch.iter().map(|r| r.killmail.killmail_id.0).collect();
    assert_eq!(ids, expected);

    // A waiting poll is answered as soon as a killmail is stored, not after its ttw.
    let waiting = tokio::spawn({
        let (first, queue) = (first.clone(), format!("queueID=test-{}&ttw=10", env.id));
        async move {
            let started = Instant::now();
            (listen(&first, &queue).await, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.store_and_announce(&received(5..6)).await;
    let (package, waited) = waiting.await.expect("the poll");
    assert_eq!(package["killID"], fixtures::killmails()[5].0.killmail_id.0);
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn redisq_answers_bad_polls_with_their_reason() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let long = "q".repeat(10 * 1024);
    for (query, reason) in [
        ("ttw=1", "queueID is required"),
        ("queueID=&ttw=1", "queueID is required"),
        (&format!("queueID={long}") as &str, "too long"),
        ("queueID=a&ttw=soon", "ttw"),
        ("queueID=a&ttw=-3", "ttw"),
    ] {
        let (status, headers, body) = get(&format!("{base}/redisq?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["error"].as_str().expect("a reason").contains(reason),
            "{body}"
        );
        assert_eq!(headers["cache-control"], "no-store");
    }
    // An absurd wait is held to RedisQ's range: ttw=0 waits a second at most.
    let started = Instant::now();
    let queue = format!("queueID=zero-{}&ttw=0", env.id);
    assert_eq!(listen(&base, &queue).await, Value::Null);
    assert!(started.elapsed() < Duration::from_secs(5));

    // One poll per queue at a time: the second gets 429, as RedisQ answered.
    let queue = format!("queueID=busy-{}&ttw=3", env.id);
    let polling = tokio::spawn({
        let url = format!("{base}/listen.php?{queue}");
        async move { get(&url).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _, body) = get(&format!("{base}/listen.php?{queue}")).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .expect("a reason")
            .contains("one at a time")
    );
    assert_eq!(polling.await.expect("the first poll"), 200);
    // Once it has answered, the queue is free again.
    assert_eq!(
        listen(&base, &queue.replace("ttw=3", "ttw=1")).await,
        Value::Null
    );
    env.cleanup().await;
}

#[tokio::test]
async fn another_killreports_worker_redisq_follows_this_servers_r2z2() {
    let mut source = TestEnv::new().await;
    let (_server, base) = source.start_server().await;
    let (status, headers, body) = get(&format!("{base}/ephemeral/sequence.json")).await;
    assert_eq!((status, body), (200, json!({"sequence": 0})));
    assert_eq!(headers["cache-control"], "public, max-age=1");
    assert_eq!(get(&format!("{base}/ephemeral/1.json")).await.0, 404);

    let batch = received(0..6);
    source.store_and_announce(&batch[..3]).await;
    skip_a_number(&source).await;
    skip_a_number(&source).await;
    source.store_and_announce(&batch[3..]).await;

    let (_, _, body) = get(&format!("{base}/ephemeral/sequence.json")).await;
    assert_eq!(body, json!({"sequence": 8}));
    let (status, headers, object) = get(&format!("{base}/ephemeral/1.json")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(object["sequence_id"], 1);
    assert_eq!(object["killmail_id"], batch[0].killmail.killmail_id.0);
    assert_eq!(object["hash"], batch[0].hash);
    assert!(object["uploaded_at"].as_i64().is_some());
    killreport::zkb::r2z2_object(object, Source::Redisq).expect("an object R2Z2 readers decode");
    // The two numbers the store skipped lead to the next stored one, for good.
    for skipped in [4, 5] {
        let (status, headers, _) = get(&format!("{base}/ephemeral/{skipped}.json")).await;
        assert_eq!(status, 302);
        assert_eq!(headers["location"], "6.json");
        assert_eq!(
            headers["cache-control"],
            "public, max-age=31536000, immutable"
        );
    }
    let (status, headers, body) = get(&format!("{base}/ephemeral/9.json")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(headers["cache-control"], "public, max-age=1");
    for bad in ["0.json", "-1.json", "x.json", "7"] {
        let (status, _, body) = get(&format!("{base}/ephemeral/{bad}")).await;
        assert_eq!(status, 404, "{bad}");
        assert!(body["error"].as_str().is_some(), "{bad}: {body}");
    }

    // A second killreport, following the first from its beginning.
    let mut follower = TestEnv::new().await;
    follower.vars.insert("R2Z2_BASE_URL".into(), base.clone());
    follower
        .vars
        .insert("R2Z2_IDLE_WAIT_MS".into(), "200".into());
    killreport::db::cursors::save(&follower.pool, "r2z2", 0)
        .await
        .expect("a cursor at the start");
    let _killmails = follower.spawn("worker-killmails", &[]);
    let _feed = follower.spawn("worker-redisq", &[]);
    follower.wait_for_killmails(batch.len() as i64).await;
    let stored = |env: &TestEnv| {
        let pool = env.pool.clone();
        async move {
            let mut connection = pool.acquire().await.expect("a connection");
            killreport::db::killmails::since(&mut connection, Seq(0), 100)
                .await
                .expect("the stored killmails")
        }
    };
    let (originals, copies) = (stored(&source).await, stored(&follower).await);
    assert_eq!(copies.len(), originals.len());
    for (copy, original) in copies.iter().zip(&originals) {
        assert_eq!(copy.killmail, original.killmail);
        assert_eq!(copy.hash, original.hash);
        let zkb = &copy.zkb.as_ref().expect("the zkb block").0;
        assert_eq!(zkb["totalValue"], 1.5e9);
    }
    follower.cleanup().await;
    source.cleanup().await;
}

/// A zKillboard websocket client, as the Discord bots hold one.
struct ZkbSocket(PlainSocket);

impl ZkbSocket {
    async fn connect(base: &str) -> Self {
        let url = format!("{}/websocket/", base.replace("http://", "ws://"));
        let (socket, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("the handshake within PATIENCE")
            .expect("a websocket");
        Self(socket)
    }

    async fn send(&mut self, text: &str) {
        use futures::SinkExt;
        self.0
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await
            .expect("send");
    }

    async fn receive(&mut self) -> Value {
        next_json(&mut self.0).await
    }

    /// What the server answered to `text`: everything it said before has been received.
    async fn error_for(&mut self, text: &str) -> String {
        self.send(text).await;
        let answer = self.receive().await;
        assert_eq!(answer["action"], "error", "{answer}");
        answer["error"].as_str().expect("a reason").to_owned()
    }

    /// Every message until the answer to a malformed one (sent now), keyed by (killID, channel).
    async fn drain(&mut self) -> Vec<(i64, String)> {
        self.send("sync").await;
        let mut messages = Vec::new();
        loop {
            let message = self.receive().await;
            if message["action"] == "error" {
                return messages;
            }
            let key = match message["action"].as_str() {
                Some("littlekill") => (
                    message["killID"].as_i64().expect("killID"),
                    message["channel"].as_str().expect("channel").to_owned(),
                ),
                _ => (
                    message["killmail_id"].as_i64().expect("killmail_id"),
                    "killstream".to_owned(),
                ),
            };
            messages.push(key);
        }
    }
}

#[tokio::test]
async fn a_zkillboard_websocket_client_gets_its_channels_once_each_and_can_unsub() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let statics = killreport::statics::Statics::load(&env.pool)
        .await
        .expect("statics");
    let batch = received(0..3);
    // A character among the first killmail's attackers: the channel matches any party.
    let character = batch[0]
        .killmail
        .attackers
        .iter()
        .find_map(|a| a.character_id)
        .expect("an attacker with a character");
    let system = batch[1].killmail.solar_system_id;
    let region = statics
        .region_of(batch[2].killmail.solar_system_id)
        .expect("a region");
    let mut client = ZkbSocket::connect(&base).await;
    for channel in [
        "killstream".to_owned(),
        "all:*".to_owned(),
        format!("character:{character}"),
        format!("system:{system}"),
    ] {
        client
            .send(&json!({"action": "sub", "channel": channel}).to_string())
            .await;
    }
    // Subscribed twice to one channel: still one message per killmail.
    client
        .send(&json!({"action": "sub", "channel": "killstream"}).to_string())
        .await;
    client.drain().await;

    env.store_and_announce(&batch[..2]).await;
    let subscribed = |channels: &[String], added: &Received| {
        let event = killreport::events::KillmailAdded {
            seq: Seq(0),
            killmail: added.killmail.clone(),
            zkb: added.zkb.clone(),
            hash: Some(added.hash.clone()),
            names: Default::default(),
        };
        let of = killreport::zkb_api::websocket::Channel::of(&event, &statics);
        let mut keys: Vec<(i64, String)> = channels
            .iter()
            .filter(|c| of.iter().any(|o| &o.to_string() == *c))
            .map(|c| (added.killmail.killmail_id.0, c.clone()))
            .collect();
        keys.sort();
        keys
    };
    let mut channels = vec![
        "killstream".to_owned(),
        "all:*".to_owned(),
        format!("character:{character}"),
        format!("system:{system}"),
    ];
    let mut got = Vec::new();
    while got.len()
        < subscribed(&channels, &batch[0]).len() + subscribed(&channels, &batch[1]).len()
    {
        let message = client.receive().await;
        if message["action"] == "littlekill" {
            let id = message["killID"].as_i64().expect("killID");
            assert_eq!(message["url"], format!("https://zkillboard.com/kill/{id}/"));
            let killmail = &batch
                .iter()
                .find(|r| r.killmail.killmail_id.0 == id)
                .expect("ours")
                .killmail;
            assert_eq!(message["character_id"], json!(killmail.victim.character_id));
            assert_eq!(message["ship_type_id"], killmail.victim.ship_type_id);
            assert_eq!(
                message["group_id"],
                json!(statics.group_of(killmail.victim.ship_type_id))
            );
            got.push((id, message["channel"].as_str().expect("channel").to_owned()));
        } else {
            // killstream: the ESI killmail with its zkb, hash included.
            let id = message["killmail_id"].as_i64().expect("an ESI killmail");
            assert!(message["victim"].is_object(), "{message}");
            assert_eq!(message["zkb"]["totalValue"], 1.5e9);
            assert!(message["zkb"]["hash"].is_string(), "{message}");
            got.push((id, "killstream".to_owned()));
        }
    }
    got.extend(client.drain().await);
    got.sort();
    let mut expected = [
        subscribed(&channels, &batch[0]),
        subscribed(&channels, &batch[1]),
    ]
    .concat();
    expected.sort();
    assert_eq!(got, expected);

    for channel in ["killstream", "all:*"] {
        client
            .send(&json!({"action": "unsub", "channel": channel}).to_string())
            .await;
    }
    client
        .send(&json!({"action": "sub", "channel": format!("region:{region}")}).to_string())
        .await;
    channels.drain(..2);
    channels.push(format!("region:{region}"));
    client.drain().await;
    env.store_and_announce(&batch[2..3]).await;
    let mut want = subscribed(&channels, &batch[2]);
    let mut got = Vec::new();
    while got.len() < want.len() {
        let message = client.receive().await;
        got.push((
            message["killID"].as_i64().expect("a littlekill"),
            message["channel"].as_str().expect("channel").to_owned(),
        ));
    }
    got.extend(client.drain().await);
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(got.contains(&(batch[2].killmail.killmail_id.0, format!("region:{region}"))));
    env.cleanup().await;
}

#[tokio::test]
async fn the_zkillboard_websocket_answers_mistakes_and_caps_channels() {
    let mut env = TestEnv::new().await;
    env.vars.insert("ZKB_WS_MAX_CHANNELS".into(), "2".into());
    let (_server, base) = env.start_server().await;
    let mut client = ZkbSocket::connect(&base).await;
    for (message, reason) in [
        ("{not json", "not a message"),
        (
            r#"{"action": "dance", "channel": "killstream"}"#,
            "unknown action `dance`",
        ),
        (r#"{"action": "sub"}"#, "needs a `channel`"),
        (
            r#"{"action": "sub", "channel": "planet:5"}"#,
            "unknown channel",
        ),
        (
            r#"{"action": "sub", "channel": "character:abc"}"#,
            "not an id",
        ),
    ] {
        let error = client.error_for(message).await;
        assert!(error.contains(reason), "{message}: {error}");
    }
    client
        .send(r#"{"action":"sub","channel":"killstream"}"#)
        .await;
    client
        .send(r#"{"action":"sub","channel":"region:10000002"}"#)
        .await;
    let error = client
        .error_for(r#"{"action":"sub","channel":"system:30000142"}"#)
        .await;
    assert!(error.contains("too many channels"), "{error}");
    // Leaving one makes room.
    client
        .send(r#"{"action":"unsub","channel":"killstream"}"#)
        .await;
    client
        .send(r#"{"action":"sub","channel":"system:30000142"}"#)
        .await;
    assert!(client.drain().await.is_empty());
    env.cleanup().await;
}
