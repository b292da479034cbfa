//! The server's live hub: one Redis subscription fanned out in order; `after` replays from the
//! store with no gap and no duplicate at the seam; events published out of order (two workers)
//! or lost come out in order all the same.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use killreport::events::{EventPublisher, KillmailAdded};
use killreport::killmail::{Received, Seq};
use killreport::live::Hub;
use tokio_util::sync::CancellationToken;

use crate::support::{PATIENCE, TestEnv, fixtures, redis_url};

/// What a hub subscription yields.
type Event = anyhow::Result<Arc<KillmailAdded>>;

fn received(range: std::ops::Range<usize>) -> Vec<Received> {
    fixtures::received(range, None)
}

/// Stores the killmails and returns their events, without publishing them.
async fn store(env: &TestEnv, batch: &[Received]) -> Vec<KillmailAdded> {
    let stored = killreport::ingest::store(&env.pool, batch)
        .await
        .expect("store");
    stored
        .iter()
        .zip(batch)
        .map(|(s, r)| KillmailAdded {
            seq: s.seq,
            killmail: r.killmail.clone(),
            zkb: None,
            hash: Some(r.hash.clone()),
            names: Default::default(),
        })
        .collect()
}

async fn take(stream: &mut (impl Stream<Item = Event> + Unpin), n: usize) -> Vec<i64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        match tokio::time::timeout(PATIENCE, stream.next()).await {
            Ok(Some(Ok(event))) => seqs.push(event.seq.0),
            _ => panic!("got {} of {n} events: {seqs:?}", seqs.len()),
        }
    }
    seqs
}

/// A hub on this test's channel reading the store through `pool`, and the token that stops it.
async fn hub_on(env: &TestEnv, pool: sqlx::PgPool) -> (Hub, CancellationToken) {
    let shutdown = CancellationToken::new();
    let hub = Hub::start(
        pool,
        Arc::default(),
        &redis_url(),
        &env.channel,
        shutdown.clone(),
    )
    .await
    .expect("hub");
    (hub, shutdown)
}

/// A hub on this test's channel, a publisher to feed it, and the token that stops it.
async fn hub_and_publisher(env: &TestEnv) -> (Hub, EventPublisher, CancellationToken) {
    let (hub, shutdown) = hub_on(env, env.pool.clone()).await;
    (hub, env.event_publisher().await, shutdown)
}

async fn quiet(stream: &mut (impl Stream<Item = Event> + Unpin)) {
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
        panic!("unexpected {event:?}");
    }
}

#[tokio::test]
async fn subscribers_get_every_event_in_order_even_when_published_out_of_order_or_lost() {
    let env = TestEnv::new().await;
    let (hub, publisher, shutdown) = hub_and_publisher(&env).await;
    let mut first = Box::pin(hub.subscribe(Arc::default(), None));
    let mut second = Box::pin(hub.subscribe(Arc::default(), None));

    let events = store(&env, &received(0..10)).await;
    let first_seq = events[0].seq.0;
    // Two workers finishing out of order, one event lost on the way, one published twice.
    publisher.publish(&events[5..8]).await.expect("publish");
    publisher.publish(&events[0..4]).await.expect("publish");
    publisher.publish(&events[9..10]).await.expect("publish");
    publisher.publish(&events[9..10]).await.expect("publish");

    let expected: Vec<i64> = (first_seq..first_seq + 10).collect();
    assert_eq!(take(&mut first, 10).await, expected);
    assert_eq!(take(&mut second, 10).await, expected);
    quiet(&mut first).await;
    shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn after_replays_what_was_missed_then_continues_live_without_duplicates() {
    let env = TestEnv::new().await;
    let (hub, publisher, shutdown) = hub_and_publisher(&env).await;

    let early = store(&env, &received(0..6)).await;
    publisher.publish(&early).await.expect("publish");
    let resume_after = early[1].seq;
    let mut resumed = Box::pin(hub.subscribe(Arc::default(), Some(resume_after)));
    let late = store(&env, &received(6..9)).await;
    publisher.publish(&late).await.expect("publish");

    let expected: Vec<i64> = (resume_after.0 + 1..=late[2].seq.0).collect();
    assert_eq!(expected.len(), 7);
    assert_eq!(take(&mut resumed, 7).await, expected);
    quiet(&mut resumed).await;

    // A replayed event carries the killmail and the names the store has.
    let mut again = Box::pin(hub.subscribe(Arc::default(), Some(Seq(resume_after.0 - 1))));
    let event = tokio::time::timeout(PATIENCE, again.next())
        .await
        .expect("in time")
        .expect("an event")
        .expect("replayed from the store");
    assert_eq!(event.killmail, early[1].killmail);
    let system = early[1].killmail.solar_system_id.to_string();
    assert!(
        event.names.contains_key(&system),
        "the solar system is named"
    );
    shutdown.cancel();
    env.cleanup().await;
}

/// A hub on this test's channel whose store has gone away (its own pool, closed), and the
/// token that stops it.
async fn hub_without_store(env: &TestEnv) -> (Hub, CancellationToken) {
    let pool = sqlx::PgPool::connect(&env.database_url)
        .await
        .expect("pool");
    let (hub, shutdown) = hub_on(env, pool.clone()).await;
    pool.close().await;
    (hub, shutdown)
}

/// Asserts that `stream`'s next item is the store's error, and its last.
async fn ends_with_store_error(stream: &mut (impl Stream<Item = Event> + Unpin)) {
    let error = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("in time")
        .expect("an item")
        .expect_err("the store is closed");
    assert!(format!("{error:#}").contains("closed pool"), "{error:#}");
    let end = tokio::time::timeout(PATIENCE, stream.next()).await;
    assert!(end.expect("in time").is_none(), "the subscription ends");
}

#[tokio::test]
async fn a_replay_the_store_cannot_serve_ends_the_subscription_with_its_error() {
    let env = TestEnv::new().await;
    let (hub, shutdown) = hub_without_store(&env).await;
    let mut resumed = Box::pin(hub.subscribe(Arc::default(), Some(Seq(0))));
    ends_with_store_error(&mut resumed).await;
    shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn a_gap_the_store_cannot_fill_is_not_skipped() {
    let env = TestEnv::new().await;
    let (hub, shutdown) = hub_without_store(&env).await;
    let mut live = Box::pin(hub.subscribe(Arc::default(), None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Sequence 5 after nothing: 1 to 4 are missing, and the store cannot say what they were.
    let (killmail, hash) = fixtures::killmails().swap_remove(0);
    let event = KillmailAdded {
        seq: Seq(5),
        killmail,
        zkb: None,
        hash: Some(hash),
        names: Default::default(),
    };
    env.event_publisher()
        .await
        .publish(&[event])
        .await
        .expect("publish");
    // Not sequence 5 as if nothing were missing: the subscription tries to replay the gap.
    ends_with_store_error(&mut live).await;
    shutdown.cancel();
    env.cleanup().await;
}
