//! The server's live hub: one Redis subscription fanned out in order; `after` replays from the
//! store with no gap and no duplicate at the seam; events published out of order (two workers)
//! or lost come out in order all the same.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use killreport::events::{EventPublisher, KillmailAdded};
use killreport::killmail::{Received, Seq};
use killreport::live::Hub;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::proxy::{SilentProxy, host_port};
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

/// How often the hubs of these tests check their subscription.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// A hub on this test's channel reading the store through `pool`, and the token that stops it.
async fn hub_on(env: &TestEnv, pool: sqlx::PgPool) -> (Hub, CancellationToken) {
    hub_at(env, pool, &redis_url()).await.expect("hub")
}

/// [`hub_on`], through Redis at `url`.
async fn hub_at(
    env: &TestEnv,
    pool: sqlx::PgPool,
    url: &str,
) -> anyhow::Result<(Hub, CancellationToken)> {
    let shutdown = CancellationToken::new();
    let hub = Hub::start(
        pool,
        Arc::default(),
        url,
        &env.channel,
        CHECK_EVERY,
        shutdown.clone(),
    )
    .await?;
    Ok((hub, shutdown))
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

/// An event on the channel as anyone with access to Redis could publish it.
fn forged(seq: i64, killmail: killreport::killmail::Killmail) -> KillmailAdded {
    KillmailAdded {
        seq: Seq(seq),
        killmail,
        zkb: None,
        hash: Some("0".repeat(40)),
        names: [("1".to_owned(), "Forged Name".to_owned())].into(),
    }
}

#[tokio::test]
async fn an_event_the_store_cannot_confirm_is_not_delivered() {
    let env = TestEnv::new().await;
    let (hub, shutdown) = hub_without_store(&env).await;
    let mut live = Box::pin(hub.subscribe(Arc::default(), None));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killmail = received(0..1).remove(0).killmail;
    env.event_publisher()
        .await
        .publish(&[forged(5, killmail)])
        .await
        .expect("publish");
    // The store cannot say what sequence 5 is: nothing is delivered on Redis's word alone.
    quiet(&mut live).await;
    shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn a_forged_event_neither_reaches_subscribers_nor_holds_back_the_real_ones() {
    let env = TestEnv::new().await;
    let (hub, publisher, shutdown) = hub_and_publisher(&env).await;
    let mut live = Box::pin(hub.subscribe(Arc::default(), None));
    let unstored = received(5..6).remove(0).killmail;
    // A sequence far ahead of the store, a killmail the store does not hold, forged names.
    publisher
        .publish(&[forged(1_000_000_000_000, unstored.clone())])
        .await
        .expect("publish");
    let mut redis = killreport::events::connect(&redis_url())
        .await
        .expect("redis");
    redis::cmd("PUBLISH")
        .arg(&env.channel)
        .arg("{\"seq\": \"corrupt\"")
        .query_async::<i64>(&mut redis)
        .await
        .expect("publish");
    let real = store(&env, &received(0..5)).await;
    // The real first sequence, announced with another killmail and forged names.
    publisher
        .publish(&[forged(real[0].seq.0, unstored)])
        .await
        .expect("publish");
    publisher.publish(&real).await.expect("publish");

    let mut delivered = Vec::new();
    for _ in 0..5 {
        match tokio::time::timeout(PATIENCE, live.next()).await {
            Ok(Some(Ok(event))) => delivered.push(event),
            other => panic!("after {} events: {other:?}", delivered.len()),
        }
    }
    let seqs: Vec<Seq> = delivered.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, real.iter().map(|e| e.seq).collect::<Vec<_>>());
    for (event, real) in delivered.iter().zip(&real) {
        assert_eq!(event.killmail, real.killmail, "the store's killmail");
        assert!(
            !event.names.values().any(|name| name == "Forged Name"),
            "the store's names: {:?}",
            event.names
        );
    }
    quiet(&mut live).await;
    assert_eq!(
        hub.last(),
        real[4].seq,
        "the hub waits for no forged sequence"
    );
    shutdown.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn a_subscription_gone_silent_is_noticed_and_healed_within_seconds() {
    let env = TestEnv::new().await;
    let proxy = SilentProxy::start(&host_port(&redis_url())).await;
    let (hub, shutdown) = hub_at(&env, env.pool.clone(), &proxy.url_for(&redis_url()))
        .await
        .expect("hub");
    let publisher = env.event_publisher().await;
    let mut live = Box::pin(hub.subscribe(Arc::default(), None));
    let before = store(&env, &received(0..2)).await;
    publisher.publish(&before).await.expect("publish");
    take(&mut live, 2).await;

    // Half-open: the hub's connection stays up and carries nothing either way.
    proxy.silence();
    let after = store(&env, &received(2..5)).await;
    publisher.publish(&after).await.expect("publish");
    let silenced = Instant::now();
    let seqs = take(&mut live, 3).await;
    assert_eq!(seqs, after.iter().map(|e| e.seq.0).collect::<Vec<_>>());
    let healed = silenced.elapsed();
    assert!(
        healed < CHECK_EVERY * 3 + Duration::from_secs(1),
        "delivered {healed:?} after the subscription went silent"
    );
    // And it is live again, not only caught up.
    let later = store(&env, &received(5..6)).await;
    publisher.publish(&later).await.expect("publish");
    assert_eq!(take(&mut live, 1).await, vec![later[0].seq.0]);
    shutdown.cancel();
    env.cleanup().await;
}

/// Removes a Redis ACL user when the test ends, however it ends.
struct AclUser(String);

impl Drop for AclUser {
    fn drop(&mut self) {
        let removed = redis::Client::open(redis_url()).and_then(|client| {
            let mut connection = client.get_connection()?;
            redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.0)
                .query::<i64>(&mut connection)
        });
        if let Err(error) = removed {
            eprintln!("removing Redis user {}: {error}", self.0);
        }
    }
}

#[tokio::test]
async fn redis_url_with_an_acl_user_and_password_works() {
    let env = TestEnv::new().await;
    let user = AclUser(format!("killreport-test-{}", env.id));
    let mut admin = killreport::events::connect(&redis_url())
        .await
        .expect("redis");
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user.0)
        .arg("on")
        .arg(">s3cret")
        .arg("resetchannels")
        .arg(format!("&{}", env.channel))
        .arg("+@all")
        .query_async::<()>(&mut admin)
        .await
        .expect("ACL SETUSER");
    let address = host_port(&redis_url());

    let wrong = hub_at(
        &env,
        env.pool.clone(),
        &format!("redis://{}:wrong@{address}", user.0),
    )
    .await
    .err()
    .expect("a wrong password is refused");
    assert!(
        format!("{wrong:#}").contains("Password authentication failed"),
        "says why: {wrong:#}"
    );

    let url = format!("redis://{}:s3cret@{address}", user.0);
    let (hub, shutdown) = hub_at(&env, env.pool.clone(), &url).await.expect("hub");
    let publisher = EventPublisher::connect(&url, &env.channel)
        .await
        .expect("publisher");
    let mut live = Box::pin(hub.subscribe(Arc::default(), None));
    let events = store(&env, &received(0..3)).await;
    publisher.publish(&events).await.expect("publish");
    assert_eq!(
        take(&mut live, 3).await,
        events.iter().map(|e| e.seq.0).collect::<Vec<_>>()
    );
    tokio::time::sleep(CHECK_EVERY * 2).await;
    quiet(&mut live).await;
    shutdown.cancel();
    env.cleanup().await;
}
