//! worker-killmails as a real process: jobs in, killmails stored once, events out once, bad jobs
//! dead-lettered with their reason, ESI outages retried.

use std::time::Duration;

use killreport::killmail::Zkb;
use killreport::queue::IngestJob;

use crate::support::fakes::esi::FakeEsi;
use crate::support::{TestEnv, assert_no_more_events, fixtures, receive_events};

/// A job for the fixture killmail `id`, and that killmail's ESI JSON.
fn job(id: i64, with_body: bool) -> (IngestJob, serde_json::Value) {
    let (killmail, hash) = fixtures::killmails()
        .into_iter()
        .find(|(k, _)| k.killmail_id.0 == id)
        .expect("a fixture with that id");
    let body = serde_json::to_value(&killmail).expect("killmail JSON");
    let zkb = Zkb(
        serde_json::json!({"hash": hash, "totalValue": 12_345_678.9, "npc": false, "solo": false, "awox": false, "points": 3, "labels": ["pvp"], "locationID": 40_000_001}),
    );
    (
        fixtures::job_with(killmail, hash, Some(zkb), with_body),
        body,
    )
}

#[tokio::test]
async fn the_same_job_twice_stores_one_killmail_and_announces_it_once() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);

    let (job, body) = job(97_089_202, true);
    publisher.publish(&job).await.expect("publish");
    publisher.publish(&job).await.expect("publish again");

    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(serde_json::to_value(&event.killmail).expect("JSON"), body);
    assert_eq!(event.zkb, job.zkb);
    assert_eq!(event.hash.as_deref(), Some(job.hash.as_str()));
    assert_no_more_events(&mut events, Duration::from_secs(2)).await;
    assert_eq!(env.killmail_count().await, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn malformed_jobs_are_dead_lettered_with_their_reason_and_the_next_job_is_stored() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);

    let (good, _) = job(97_089_206, true);
    let mut mismatched = serde_json::to_value(&good).expect("JSON");
    mismatched["killmail_id"] = serde_json::json!(1);
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "not a killmail.ingest job"),
        (
            br#"{"killmail_id": 5, "source": "redisq"}"#.to_vec(),
            "missing field `hash`",
        ),
        (
            br#"{"killmail_id": 5, "hash": "xyz", "source": "redisq"}"#.to_vec(),
            "is not a 40-character hex string",
        ),
        (
            serde_json::to_vec(&mismatched).expect("JSON"),
            "job is for killmail 1 but carries killmail",
        ),
    ];
    for (body, _) in &bad {
        publisher.publish_raw(body).await.expect("publish");
    }
    publisher.publish(&good).await.expect("publish");

    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(event.killmail.killmail_id, good.killmail_id);
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), bad.len(), "dead letters: {dead:?}");
    for ((body, expected), (dead_body, reason)) in bad.iter().zip(&dead) {
        assert_eq!(body, dead_body);
        let reason = reason.as_deref().expect("a reason header");
        assert!(
            reason.contains(expected),
            "reason {reason:?} should mention {expected:?}"
        );
    }
    assert_eq!(env.killmail_count().await, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_without_its_body_is_fetched_from_esi_retried_through_an_outage_and_named() {
    let mut env = TestEnv::new().await;
    let esi = FakeEsi::default();
    let (job, body) = job(97_089_215, false);
    esi.add_killmail(body.clone(), &job.hash);
    let victim = body["victim"]["character_id"]
        .as_i64()
        .expect("a victim character");
    esi.add_name(victim, "character", "Some Pilot");
    esi.fail_next_killmail_requests(&[503, 502]);
    let _served = esi.serve_for(&mut env).await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);

    publisher.publish(&job).await.expect("publish");
    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(serde_json::to_value(&event.killmail).expect("JSON"), body);
    assert_eq!(
        event.names.get(&victim.to_string()).map(String::as_str),
        Some("Some Pilot")
    );
    let ship = body["victim"]["ship_type_id"].as_i64().expect("ship");
    assert!(
        event.names.contains_key(&ship.to_string()),
        "the ship type is named from static data"
    );
    let fetches = esi
        .requests()
        .iter()
        .filter(|r| r.starts_with("/killmails/"))
        .count();
    assert_eq!(fetches, 3, "two failures, then the body");
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn while_esi_cannot_name_people_killmails_go_out_at_once_and_esi_is_asked_again_later() {
    let mut env = TestEnv::new().await;
    let esi = FakeEsi::default();
    let killmails: Vec<_> = fixtures::killmails()
        .into_iter()
        .filter(|(k, _)| k.victim.character_id.is_some())
        .take(6)
        .collect();
    for (killmail, _) in &killmails {
        for id in killmail.entity_ids() {
            esi.add_name(id, "character", &format!("Pilot {id}"));
        }
    }
    esi.fail_next_names_requests(&[503]);
    let _served = esi.serve_for(&mut env).await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);
    let jobs: Vec<IngestJob> = killmails.into_iter().map(fixtures::job).collect();
    let victim_named = |event: &killreport::events::KillmailAdded| {
        event
            .killmail
            .victim
            .character_id
            .is_some_and(|id| event.names.contains_key(&id.to_string()))
    };
    let names_asked = || {
        esi.requests()
            .iter()
            .filter(|r| r.starts_with("/universe/names/"))
            .count()
    };

    // The first announcement asks ESI, which fails; the next ones do not wait on it.
    let started = tokio::time::Instant::now();
    for job in &jobs[..5] {
        publisher.publish(job).await.expect("publish");
        let event = receive_events(&mut events, 1).await.remove(0);
        assert_eq!(event.killmail.killmail_id, job.killmail_id);
        assert!(!victim_named(&event), "named while ESI was failing");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(names_asked(), 1, "ESI asked once while it was failing");

    // Once the pause is over, ESI is asked again and names the next one.
    tokio::time::sleep(Duration::from_secs(10)).await;
    publisher.publish(&jobs[5]).await.expect("publish");
    let event = receive_events(&mut events, 1).await.remove(0);
    assert!(victim_named(&event), "named once ESI answers again");
    assert_eq!(names_asked(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn a_killmail_esi_does_not_know_is_dead_lettered() {
    let mut env = TestEnv::new().await;
    let esi = FakeEsi::default();
    let _served = esi.serve_for(&mut env).await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);

    let (unknown, _) = job(97_089_228, false);
    let (good, _) = job(97_089_248, true);
    publisher.publish(&unknown).await.expect("publish");
    publisher.publish(&good).await.expect("publish");

    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(event.killmail.killmail_id, good.killmail_id);
    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 1);
    let reason = dead[0].1.as_deref().expect("a reason");
    assert!(
        reason.contains("422"),
        "reason {reason:?} should give ESI's answer"
    );
    assert!(reason.contains(&unknown.killmail_id.to_string()));
    env.cleanup().await;
}

#[tokio::test]
async fn a_killmail_committed_but_never_announced_is_announced_once_by_the_next_worker() {
    let env = TestEnv::new().await;
    let mut events = env.subscribe().await;
    // A worker that died between its commit and its publish.
    let (job, _) = job(97_089_301, true);
    let killmail = job.killmail.clone().expect("body");
    let stored = killreport::ingest::store(&env.pool, &[job.into_received(killmail)])
        .await
        .expect("store");
    assert_eq!(stored.len(), 1);

    let _worker = env.spawn("worker-killmails", &[]);
    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(event.seq, stored[0].seq);
    assert!(
        !event.names.is_empty(),
        "an overdue announcement still carries names"
    );
    assert_no_more_events(&mut events, Duration::from_secs(6)).await;
    env.cleanup().await;
}

/// Runs the real `queue` binary to completion and returns its stdout.
async fn queue_command(env: &TestEnv, args: &[&str]) -> String {
    let output = env.run("queue", args).await;
    assert!(
        output.status.success(),
        "queue {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

#[tokio::test]
async fn dead_letters_can_be_listed_replayed_and_purged() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let (job, _) = job(97_089_243, true);
    let mut broken = job.clone();
    broken.hash = "not-a-hash".into();
    publisher
        .dead_letter_body(&broken.encode(), "hash is bad")
        .await
        .expect("dead-letter");
    publisher
        .dead_letter_body(&job.encode(), "ESI was down too long")
        .await
        .expect("dead-letter");

    let listed = queue_command(&env, &["dlq", "list"]).await;
    assert!(
        listed.contains("hash is bad") && listed.contains("ESI was down too long"),
        "{listed}"
    );
    assert!(listed.contains("2 dead letters shown"), "{listed}");
    // Listing leaves them in place.
    assert!(
        queue_command(&env, &["dlq", "list"])
            .await
            .contains("2 dead letters shown")
    );

    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);
    let replayed = queue_command(&env, &["dlq", "replay"]).await;
    assert!(replayed.contains("2 dead letters moved"), "{replayed}");
    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(event.killmail.killmail_id, job.killmail_id);
    // The broken one failed again and is back, with its reason.
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    loop {
        let listed = queue_command(&env, &["dlq", "list"]).await;
        if listed.contains("1 dead letters shown") {
            assert!(listed.contains("40-character hex"), "{listed}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken job never came back: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        queue_command(&env, &["dlq", "purge"])
            .await
            .contains("1 dead letters deleted")
    );
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}
