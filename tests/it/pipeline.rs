//! Jobs and the store under faults a user would not see coming (issue 11): a publish no queue
//! takes, a confirm that never comes, a PostgreSQL outage longer than the retry ladder, a job
//! that kills its worker, a malformed `zkb`, ids ESI cannot name, the store's lock timeouts.

use killreport::db::killmails::Encoded;
use std::time::Duration;

use killreport::killmail::{KillmailId, Zkb};
use killreport::queue::{IngestJob, PublishError, Publisher};
use lapin::options::QueueDeleteOptions;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support::fakes::esi::FakeEsi;
use crate::support::proxy::{SilentProxy, host_port};
use crate::support::{PATIENCE, TestEnv, fixtures, receive_events};

/// The fixture killmail `n` as a job with its body.
fn job(n: usize) -> IngestJob {
    fixtures::job(fixtures::killmails().swap_remove(n))
}

#[tokio::test]
async fn a_publish_that_no_queue_takes_is_an_error_not_a_success() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let (_connection, channel) = env.rabbitmq().await;
    channel
        .queue_delete(&env.topology().queue, QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let error = publisher
        .publish(&job(0))
        .await
        .expect_err("the broker returns it");
    assert!(matches!(error, PublishError::Returned { .. }), "{error:?}");
    assert!(error.to_string().contains("no queue took it"), "{error}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_confirm_that_never_comes_is_an_error_within_the_timeout() {
    let env = TestEnv::new().await;
    let proxy = SilentProxy::start(&host_port(&env.rabbit.rabbitmq_url)).await;
    let connection = killreport::queue::connect(&proxy.url_for(&env.rabbit.rabbitmq_url), "test")
        .await
        .expect("connecting through the proxy");
    let publisher = Publisher::new(&connection, env.topology())
        .await
        .expect("publisher")
        .with_confirm_timeout(Duration::from_millis(500));
    publisher
        .publish(&job(0))
        .await
        .expect("published while heard");
    proxy.silence();
    let started = Instant::now();
    let error = publisher
        .publish(&job(1))
        .await
        .expect_err("no confirm comes");
    assert!(matches!(error, PublishError::Unconfirmed(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "gave up after {:?}",
        started.elapsed()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_postgresql_outage_longer_than_the_retry_ladder_dead_letters_nothing() {
    let mut env = TestEnv::new().await;
    // A ladder of 0.2 s in all: the outage below outlasts it fifteen times.
    env.rabbit.retry_delays_ms = vec![100, 100];
    let proxy = SilentProxy::start(&host_port(&env.database_url)).await;
    env.vars
        .insert("DATABASE_URL".into(), proxy.url_for(&env.database_url));
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);
    publisher.publish(&job(0)).await.expect("publish");
    receive_events(&mut events, 1).await;

    proxy.cut();
    for n in 1..8 {
        publisher.publish(&job(n)).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        env.dead_letters().await.is_empty(),
        "dead-lettered while down"
    );
    proxy.restore();

    let stored = receive_events(&mut events, 7).await;
    assert_eq!(stored.len(), 7);
    assert_eq!(env.killmail_count().await, 8);
    assert!(env.dead_letters().await.is_empty(), "nothing dead-lettered");
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_that_kills_its_worker_is_dead_lettered_after_the_delivery_limit() {
    let mut env = TestEnv::new().await;
    // An ESI that takes the request and never answers: the worker holds the job until killed.
    let silent_esi = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let esi_url = format!("http://{}", silent_esi.local_addr().expect("address"));
    env.vars.insert("ESI_BASE_URL".into(), esi_url);
    env.vars.insert("ESI_TIMEOUT_SECS".into(), "600".into());
    env.vars.insert("DELIVERY_LIMIT".into(), "2".into());
    let publisher = env.publisher().await;
    let mut poison = job(0);
    poison.killmail = None;
    publisher.publish(&poison).await.expect("publish");

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut worker = env.spawn("worker-killmails", &[]);
        let (socket, _) = tokio::time::timeout(PATIENCE, silent_esi.accept())
            .await
            .expect("the worker asks ESI")
            .expect("accept");
        held.push(socket);
        worker.kill().await.expect("SIGKILL");
    }
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);
    publisher.publish(&job(1)).await.expect("publish");
    receive_events(&mut events, 1).await;
    let deadline = Instant::now() + PATIENCE;
    let letters = loop {
        let letters = env.dead_letters().await;
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "the poison job was never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = letters[0].1.clone().unwrap_or_default();
    assert!(
        reason.contains("handed out 2 times and never settled"),
        "{reason}"
    );
    let body: IngestJob = serde_json::from_slice(&letters[0].0).expect("the job");
    assert_eq!(body.killmail_id, poison.killmail_id);
    env.cleanup().await;
}

#[tokio::test]
async fn a_killmail_with_a_malformed_zkb_is_stored_with_its_bad_fields_dropped() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);
    let mut malformed = job(0);
    malformed.zkb = Some(Zkb(serde_json::json!({
        "totalValue": "a lot", "npc": "false", "solo": "maybe", "points": "7",
        "labels": ["pvp\u{0}"], "hash": malformed.hash, "locationID": 40_000_001
    })));
    publisher.publish(&malformed).await.expect("publish");

    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(event.killmail.killmail_id, malformed.killmail_id);
    let mut db = env.pool.acquire().await.expect("a connection");
    let stored = killreport::db::killmails::load(&mut db, &[malformed.killmail_id])
        .await
        .expect("load")
        .remove(0);
    assert_eq!(
        stored.zkb.map(|z| z.0),
        Some(serde_json::json!({
            "npc": false, "points": 7, "labels": ["pvp"], "hash": malformed.hash,
            "locationID": 40_000_001
        })),
        "the bad fields dropped or read, the rest kept"
    );
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn ids_esi_cannot_name_are_not_asked_again_with_every_killmail() {
    let mut env = TestEnv::new().await;
    let esi = FakeEsi::default();
    let _esi = esi.serve_for(&mut env).await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let _worker = env.spawn("worker-killmails", &[]);

    let first = job(0);
    publisher.publish(&first).await.expect("publish");
    receive_events(&mut events, 1).await;
    let names_asked = |requests: Vec<String>| {
        requests
            .iter()
            .filter(|r| r.starts_with("/universe/names/"))
            .count()
    };
    let asked = names_asked(esi.requests());
    assert!(asked > 0, "ESI was asked for the names once");

    // Another killmail with the same people, whom ESI cannot name either.
    let mut again = first.clone();
    let mut killmail = again.killmail.take().expect("a body");
    killmail.killmail_id = KillmailId(first.killmail_id.0 + 1_000_000_000);
    again.killmail_id = killmail.killmail_id;
    again.killmail = Some(killmail);
    publisher.publish(&again).await.expect("publish");
    let event = receive_events(&mut events, 1).await.remove(0);
    assert_eq!(event.killmail.killmail_id, again.killmail_id);
    assert_eq!(
        names_asked(esi.requests()),
        asked,
        "not asked again: {:?}",
        esi.requests()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_store_sets_lock_and_idle_in_transaction_timeouts_unless_the_url_does() {
    let env = TestEnv::new().await;
    let show = |pool: sqlx::PgPool, setting: &'static str| async move {
        sqlx::query_scalar::<_, String>(&format!("SHOW {setting}"))
            .fetch_one(&pool)
            .await
            .expect("SHOW")
    };
    assert_eq!(show(env.pool.clone(), "lock_timeout").await, "1min");
    assert_eq!(
        show(env.pool.clone(), "idle_in_transaction_session_timeout").await,
        "5min"
    );
    let url = format!("{}?options=-c%20lock_timeout%3D5s", env.database_url);
    let pool = killreport::db::connect(&url, 1).await.expect("pool");
    assert_eq!(show(pool.clone(), "lock_timeout").await, "5s");
    assert_eq!(
        show(pool.clone(), "idle_in_transaction_session_timeout").await,
        "5min"
    );

    // A transaction left idle holding the store's write lock is ended, and writers go on.
    let url = format!(
        "{}?options=-c%20idle_in_transaction_session_timeout%3D1s",
        env.database_url
    );
    let stalled = killreport::db::connect(&url, 1).await.expect("pool");
    let mut tx = stalled.begin().await.expect("begin");
    let encoded = Encoded::new(&fixtures::received(0..1, None));
    killreport::db::killmails::store_encoded(&mut tx, encoded, true)
        .await
        .expect("store");
    let started = Instant::now();
    killreport::ingest::store(&env.pool, &fixtures::received(1..2, None))
        .await
        .expect("stored once the stalled session is ended");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(tx.commit().await.is_err(), "the stalled session was ended");
    env.cleanup().await;
}
