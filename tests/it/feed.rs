//! worker-redisq as a real process, next to a real worker-killmails, against a fake R2Z2 and a
//! fake RedisQ: every killmail stored once and announced once, after its commit; a restart
//! resumes at the cursor; 404s wait, refusals back off, malformed objects are dead-lettered.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use killreport::events::KillmailAdded;
use killreport::killmail::{Killmail, KillmailId, Zkb};
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::support::fakes::Served;
use crate::support::fakes::esi::FakeEsi;
use crate::support::fakes::r2z2::{self, FakeR2z2, R2z2Request};
use crate::support::fakes::redisq::FakeRedisq;
use crate::support::rabbitmqctl::close_rabbitmq_connections;
use crate::support::{PATIENCE, TestEnv, assert_no_more_events, fixtures, wait_until};

/// A realistic R2Z2 sequence number to start from.
const START: i64 = 96_599_404;

/// What a killmail must look like once stored and announced.
struct Expected {
    killmail: Killmail,
    hash: String,
    zkb: Option<Zkb>,
}

/// Adds what the killmail `esi` (ESI's body) must become: the same killmail, with `hash` and
/// `zkb`.
fn expect(expected: &mut HashMap<KillmailId, Expected>, esi: Value, hash: String, zkb: &Value) {
    let killmail: Killmail = serde_json::from_value(esi).expect("an ESI killmail");
    expected.insert(
        killmail.killmail_id,
        Expected {
            killmail,
            hash,
            zkb: Some(Zkb(zkb.clone())),
        },
    );
}

/// A fake R2Z2 holding `n` fixture killmails from [`START`] on, with what each must become.
fn r2z2_with_killmails(n: usize) -> (FakeR2z2, HashMap<KillmailId, Expected>) {
    let fake = FakeR2z2::default();
    let mut expected = HashMap::new();
    for (sequence, (esi, hash)) in (START..).zip(fixtures::esi_killmails(n)) {
        let mut object = r2z2::object(sequence, &esi, &hash);
        if (sequence - START) % 10 == 5 {
            // As on a re-issued object: it must not matter to decoding.
            object["sequence_updated"] = serde_json::json!(sequence + 1_000);
        }
        fake.add_object(sequence, &object);
        expect(&mut expected, esi, hash, &object["zkb"]);
    }
    fake.set_pointer(START);
    (fake, expected)
}

/// Serves `fake` to a worker-redisq with a worker-killmails behind it: the fake's server, the
/// test's events (subscribed to before either process starts), worker-killmails and
/// worker-redisq.
async fn run_on_r2z2(
    env: &mut TestEnv,
    fake: &FakeR2z2,
) -> (Served, UnboundedReceiver<KillmailAdded>, Child, Child) {
    let served = fake.serve_for(env).await;
    let events = env.subscribe().await;
    let killmails = env.spawn("worker-killmails", &[]);
    let feed = env.spawn("worker-redisq", &[]);
    (served, events, killmails, feed)
}

async fn cursor(env: &TestEnv) -> Option<i64> {
    killreport::db::cursors::load(&env.pool, "r2z2")
        .await
        .expect("loading the cursor")
}

/// Receives one event per expected killmail, checking each on receipt: it is already in the
/// store, and both the store and the event hold the killmail as the source delivered it.
async fn receive_checked(
    env: &TestEnv,
    events: &mut UnboundedReceiver<KillmailAdded>,
    expected: &HashMap<KillmailId, Expected>,
) -> Vec<KillmailAdded> {
    let mut received = Vec::with_capacity(expected.len());
    while received.len() < expected.len() {
        let event = match tokio::time::timeout(PATIENCE, events.recv()).await {
            Ok(Some(event)) => event,
            _ => panic!(
                "received {} of {} events before giving up",
                received.len(),
                expected.len()
            ),
        };
        let id = event.killmail.killmail_id;
        let mut db = env.pool.acquire().await.expect("a connection");
        let stored = killreport::db::killmails::load(&mut db, &[id])
            .await
            .expect("loading a killmail")
            .pop()
            .unwrap_or_else(|| panic!("killmail {id} was announced before it was stored"));
        let want = expected
            .get(&id)
            .unwrap_or_else(|| panic!("an event for killmail {id}, which no source delivered"));
        assert_eq!(stored.killmail, want.killmail, "killmail {id} as stored");
        assert_eq!(event.killmail, want.killmail, "killmail {id} as announced");
        assert_eq!(stored.hash, want.hash);
        assert_eq!(stored.seq, event.seq);
        if let Some(zkb) = &want.zkb {
            assert_eq!(stored.zkb.as_ref(), Some(zkb), "zkb of {id} as stored");
            assert_eq!(event.zkb.as_ref(), Some(zkb), "zkb of {id} as announced");
        }
        received.push(event);
    }
    received
}

/// One event per killmail, in increasing `seq`.
fn assert_once_each_in_order(events: &[KillmailAdded]) {
    let ids: HashSet<KillmailId> = events.iter().map(|e| e.killmail.killmail_id).collect();
    assert_eq!(ids.len(), events.len(), "a killmail was announced twice");
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "events out of order: seq {:?} then {:?}",
            pair[0].seq,
            pair[1].seq
        );
    }
}

fn object_requests(requests: &[R2z2Request]) -> impl Iterator<Item = (i64, &R2z2Request)> {
    requests
        .iter()
        .filter_map(|r| r.sequence.map(|sequence| (sequence, r)))
}

#[tokio::test]
async fn r2z2_killmails_are_stored_once_and_announced_after_their_commit() {
    let mut env = TestEnv::new().await;
    let (fake, expected) = r2z2_with_killmails(60);
    let last = START + 59;
    fake.reveal(last);
    let (_served, mut events, _killmails, _feed) = run_on_r2z2(&mut env, &fake).await;

    let received = receive_checked(&env, &mut events, &expected).await;
    assert_once_each_in_order(&received);
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(env.killmail_count().await, 60);
    wait_until("the cursor at the last sequence", PATIENCE, || async {
        cursor(&env).await == Some(last)
    })
    .await;

    let requests = fake.requests();
    assert_eq!(requests[0].sequence, None, "no cursor: sequence.json first");
    for sequence in START..=last {
        let served = object_requests(&requests)
            .filter(|(s, r)| *s == sequence && r.status == 200)
            .count();
        assert_eq!(served, 1, "sequence {sequence} fetched {served} times");
    }
    assert!(
        requests.iter().all(|r| r
            .user_agent
            .as_deref()
            .is_some_and(|ua| ua.starts_with("killreport/"))),
        "every request names killreport"
    );
    for window in requests.windows(11) {
        let span = window[10].at - window[0].at;
        assert!(
            span >= Duration::from_millis(1000),
            "11 requests within {span:?}: more than 10 a second"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn r2z2_restart_resumes_after_the_cursor_without_skipping_or_repeating() {
    let mut env = TestEnv::new().await;
    let (fake, expected) = r2z2_with_killmails(60);
    fake.reveal(START + 29);
    let (_served, mut events, _killmails, mut feed) = run_on_r2z2(&mut env, &fake).await;
    env.wait_for_killmails(20).await;
    feed.kill().await.expect("killing worker-redisq");
    let done = cursor(&env)
        .await
        .expect("a cursor once killmails are stored");
    let before_restart = fake.requests().len();

    fake.reveal(START + 59);
    let _feed = env.spawn("worker-redisq", &[]);
    let received = receive_checked(&env, &mut events, &expected).await;
    assert_once_each_in_order(&received);
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(env.killmail_count().await, 60);

    let requests = fake.requests();
    let after = &requests[before_restart..];
    assert_eq!(
        after.first().and_then(|r| r.sequence),
        Some(done + 1),
        "the restart asks for cursor + 1 first"
    );
    if let Some((sequence, _)) = object_requests(after).find(|(s, _)| *s <= done) {
        panic!("after the restart, sequence {sequence} was asked for again (cursor {done})");
    }
    for sequence in START..=START + 59 {
        assert!(
            object_requests(&requests).any(|(s, r)| s == sequence && r.status == 200),
            "sequence {sequence} was skipped"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn r2z2_waits_for_what_is_not_produced_yet_and_backs_off_when_refused() {
    let mut env = TestEnv::new().await;
    let (fake, expected) = r2z2_with_killmails(12);
    let last = START + 11;
    fake.reveal(START + 3);
    fake.fail(START + 5, &[429]);
    fake.fail(START + 8, &[403]);
    fake.fail(START + 10, &[500]);
    let (_served, mut events, _killmails, _feed) = run_on_r2z2(&mut env, &fake).await;
    let revealer = {
        let fake = fake.clone();
        tokio::spawn(async move {
            for sequence in START + 4..=last {
                tokio::time::sleep(Duration::from_millis(300)).await;
                fake.reveal(sequence);
            }
        })
    };

    let received = receive_checked(&env, &mut events, &expected).await;
    assert_once_each_in_order(&received);
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(env.killmail_count().await, 12);
    revealer.await.expect("revealing");

    let requests = fake.requests();
    let objects: Vec<(i64, &R2z2Request)> = object_requests(&requests).collect();
    let not_found: Vec<usize> = (0..objects.len())
        .filter(|&i| objects[i].1.status == 404)
        .collect();
    assert!(!not_found.is_empty(), "the fake never answered 404");
    for i in not_found {
        let (sequence, answered) = objects[i];
        if let Some((_, again)) = objects[i + 1..].iter().find(|(s, _)| *s == sequence) {
            let waited = again.at - answered.at;
            assert!(
                waited >= Duration::from_millis(180),
                "sequence {sequence} asked again {waited:?} after a 404"
            );
            assert_eq!(
                objects[i + 1].0,
                sequence,
                "after a 404 for {sequence}, another sequence was asked for first"
            );
        }
    }
    for (status, least) in [(429, 900), (403, 450), (500, 450)] {
        let refused: Vec<usize> = (0..requests.len())
            .filter(|&i| requests[i].status == status)
            .collect();
        assert_eq!(
            refused.len(),
            1,
            "{status} answered {} times",
            refused.len()
        );
        let i = refused[0];
        let next = requests.get(i + 1).expect("the worker carried on");
        let waited = next.at - requests[i].at;
        assert!(
            waited >= Duration::from_millis(least),
            "asked again {waited:?} after {status}"
        );
        assert_eq!(
            next.sequence, requests[i].sequence,
            "the same sequence again"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn r2z2_malformed_objects_are_dead_lettered_and_the_feed_carries_on() {
    let mut env = TestEnv::new().await;
    let fake = FakeR2z2::default();
    let mut expected = HashMap::new();
    let not_json = START + 3;
    let not_a_killmail = START + 6;
    let mut killmails = fixtures::esi_killmails(11).into_iter();
    let mut bodies = HashMap::new();
    for sequence in START..START + 12 {
        let body = if sequence == not_json {
            b"{\"killmail_id\": 97089999, \"esi\": <html>".to_vec()
        } else {
            let (esi, hash) = killmails.next().expect("a fixture");
            let mut object = r2z2::object(sequence, &esi, &hash);
            if sequence == not_a_killmail {
                object["esi"]["attackers"] = serde_json::json!([]);
            } else {
                expect(&mut expected, esi, hash, &object["zkb"]);
            }
            serde_json::to_vec(&object).expect("JSON")
        };
        bodies.insert(sequence, body.clone());
        fake.add_file(sequence, body);
    }
    fake.set_pointer(START);
    fake.reveal(START + 11);
    let (_served, mut events, _killmails, _feed) = run_on_r2z2(&mut env, &fake).await;

    let received = receive_checked(&env, &mut events, &expected).await;
    assert_eq!(received.len(), 10);
    assert_once_each_in_order(&received);
    wait_until(
        "the cursor past the malformed objects",
        PATIENCE,
        || async { cursor(&env).await == Some(START + 11) },
    )
    .await;
    let mut dead = env.dead_letters().await;
    dead.sort_by_key(|(_, reason)| reason.clone());
    assert_eq!(dead.len(), 2, "dead letters: {dead:?}");
    for ((body, reason), sequence) in dead.iter().zip([not_json, not_a_killmail]) {
        let reason = reason.as_deref().expect("a reason");
        assert!(
            reason.contains(&format!("R2Z2 sequence {sequence}")),
            "reason {reason:?} names sequence {sequence}"
        );
        assert_eq!(body, &bodies[&sequence], "the raw body is kept");
    }
    assert!(
        dead[1]
            .1
            .as_deref()
            .is_some_and(|r| r.contains("no attackers")),
        "the reason says what is wrong"
    );
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(env.killmail_count().await, 10);
    let requests = fake.requests();
    for sequence in [not_json, not_a_killmail] {
        let asked = object_requests(&requests)
            .filter(|(s, _)| *s == sequence)
            .count();
        assert_eq!(asked, 1, "malformed sequence {sequence} is not retried");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn r2z2_resumes_from_a_stored_cursor_and_skips_a_sequence_missing_upstream_only_after_a_while()
 {
    let mut env = TestEnv::new().await;
    let fake = FakeR2z2::default();
    let missing = START + 2;
    let mut expected = HashMap::new();
    let sequences = (START..=START + 8).filter(|s| *s != missing);
    for (sequence, (esi, hash)) in sequences.zip(fixtures::esi_killmails(8)) {
        let object = r2z2::object(sequence, &esi, &hash);
        fake.add_object(sequence, &object);
        expect(&mut expected, esi, hash, &object["zkb"]);
    }
    fake.set_pointer(START + 8);
    fake.reveal(START + 8);
    killreport::db::cursors::save(&env.pool, "r2z2", START - 1)
        .await
        .expect("saving a cursor");
    let (_served, mut events, _killmails, _feed) = run_on_r2z2(&mut env, &fake).await;

    let received = receive_checked(&env, &mut events, &expected).await;
    assert_once_each_in_order(&received);
    wait_until("the cursor at the last sequence", PATIENCE, || async {
        cursor(&env).await == Some(START + 8)
    })
    .await;
    let requests = fake.requests();
    assert_eq!(requests[0].sequence, Some(START), "resumed at cursor + 1");
    let asked: Vec<_> = object_requests(&requests)
        .filter(|(s, _)| *s == missing)
        .map(|(_, r)| r.at)
        .collect();
    let waited = *asked.last().expect("asked") - asked[0];
    assert!(
        waited >= Duration::from_millis(1500),
        "the missing sequence was skipped after {waited:?} ({} looks), not after it stayed missing for R2Z2_SKIP_AFTER_MS",
        asked.len()
    );
    let skips: Vec<(i64, String)> =
        sqlx::query_as("SELECT sequence, reason FROM feed_skips WHERE feed = 'r2z2'")
            .fetch_all(&env.pool)
            .await
            .expect("feed_skips");
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0].0, missing, "the skip is recorded for repair");
    assert!(skips[0].1.contains("missing for"), "{}", skips[0].1);
    env.cleanup().await;
}

#[tokio::test]
async fn two_worker_redisq_on_one_cursor_poll_one_at_a_time_and_the_second_takes_over() {
    let mut env = TestEnv::new().await;
    let (fake, expected) = r2z2_with_killmails(20);
    fake.reveal(START + 9);
    let (_served, mut events, _killmails, mut first) = run_on_r2z2(&mut env, &fake).await;
    wait_until("the first ten through", PATIENCE, || async {
        cursor(&env).await == Some(START + 9)
    })
    .await;
    // A second one on the same cursor waits while the first polls.
    let second = env.spawn("worker-redisq", &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = fake.requests().len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let polled = fake.requests().len() - before;
    assert!(polled < 15, "{polled} requests in a second: both poll");
    // The first dies; the second takes over where its cursor stopped.
    first.kill().await.expect("SIGKILL");
    fake.reveal(START + 19);
    let received = receive_checked(&env, &mut events, &expected).await;
    assert_once_each_in_order(&received);
    wait_until("the cursor at the last sequence", PATIENCE, || async {
        cursor(&env).await == Some(START + 19)
    })
    .await;
    let requests = fake.requests();
    for sequence in START..=START + 19 {
        let found = object_requests(&requests)
            .filter(|(s, r)| *s == sequence && r.status == 200)
            .count();
        assert_eq!(found, 1, "sequence {sequence} fetched {found} times");
    }
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    drop(second);
    env.cleanup().await;
}

#[tokio::test]
async fn redisq_packages_are_long_polled_through_redirects_with_or_without_their_killmail() {
    let mut env = TestEnv::new().await;
    let upstream = fixtures::dir().join("upstream/redisq");
    let read = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(upstream.join(name)).expect("fixture file");
        serde_json::from_str(&text).expect("fixture JSON")
    };
    let with_killmail = read("redisq-package-119455394.andimiller-killmail-router.json");
    // The real zkb-only package, moved onto a killmail the fake ESI can serve.
    let (esi_body, hash) = fixtures::esi_killmails(1).remove(0);
    let id = esi_body["killmail_id"].as_i64().expect("id");
    let mut zkb_only = read("redisq-package-130678514-zkb-only.zkillboard-redisq-readme.json");
    zkb_only["package"]["killID"] = serde_json::json!(id);
    zkb_only["package"]["zkb"]["hash"] = serde_json::json!(hash);
    zkb_only["package"]["zkb"]["href"] =
        serde_json::json!(format!("https://esi.evetech.net/v1/killmails/{id}/{hash}/"));

    let esi = FakeEsi::default();
    esi.add_killmail(esi_body.clone(), &hash);
    let _esi_served = esi.serve_for(&mut env).await;
    let redisq = FakeRedisq::default();
    redisq.push_null();
    redisq.push_answer(with_killmail.clone());
    redisq.push_null();
    redisq.push_answer(zkb_only.clone());
    let _redisq_served = redisq.serve_for(&mut env).await;
    let queue_id = format!("killreport-test-{}", env.id);
    env.vars.insert("REDISQ_QUEUE_ID".into(), queue_id.clone());

    let package = &with_killmail["package"];
    let mut expected = HashMap::new();
    expect(
        &mut expected,
        package["killmail"].clone(),
        package["zkb"]["hash"].as_str().expect("hash").to_owned(),
        &package["zkb"],
    );
    expect(
        &mut expected,
        esi_body,
        hash.clone(),
        &zkb_only["package"]["zkb"],
    );

    let mut events = env.subscribe().await;
    let _killmails = env.spawn("worker-killmails", &[]);
    let _feed = env.spawn("worker-redisq", &[]);

    let received = receive_checked(&env, &mut events, &expected).await;
    assert_once_each_in_order(&received);
    // A few empty polls more, to see the worker keeps polling after nulls.
    let polls = redisq.state().listens.len();
    wait_until("more polls", PATIENCE, || async {
        redisq.state().listens.len() >= polls + 2
    })
    .await;
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(env.killmail_count().await, 2);

    let (listens, objects_served) = {
        let state = redisq.state();
        (state.listens.clone(), state.objects_served.clone())
    };
    for query in &listens {
        assert_eq!(
            query.get("queueID"),
            Some(&queue_id),
            "queueID in {query:?}"
        );
        assert_eq!(
            query.get("ttw").map(String::as_str),
            Some("1"),
            "ttw in {query:?}"
        );
    }
    let nulls = objects_served
        .iter()
        .filter(|a| a["package"].is_null())
        .count();
    assert!(nulls >= 2, "{nulls} null packages served");
    assert!(
        objects_served.contains(&with_killmail) && objects_served.contains(&zkb_only),
        "both packages were fetched behind their redirects"
    );
    assert!(
        esi.requests().contains(&format!("/killmails/{id}/{hash}/")),
        "the killmail without its body was fetched from ESI by id and zkb.hash"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn worker_redisq_carries_on_from_its_cursor_when_rabbitmq_drops_its_connection() {
    let mut env = TestEnv::new().await;
    let (fake, expected) = r2z2_with_killmails(60);
    fake.reveal(START + 29);
    let (_served, mut events, _killmails, mut feed) = run_on_r2z2(&mut env, &fake).await;

    env.wait_for_killmails(20).await;
    let needle = format!("worker-redisq {}", env.topology().queue);
    assert_eq!(close_rabbitmq_connections(&needle).await, 1);
    fake.reveal(START + 59);

    let received = receive_checked(&env, &mut events, &expected).await;
    assert_once_each_in_order(&received);
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(env.killmail_count().await, 60);
    assert!(
        feed.try_wait().expect("status").is_none(),
        "worker-redisq is still running"
    );
    env.cleanup().await;
}
