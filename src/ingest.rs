//! Storing killmails and announcing them: the work of `worker-killmails` (jobs from RabbitMQ)
//! and of `queue import` (files), which share one validated path into the store.
//!
//! Whatever befalls a job, it ends settled exactly once, or unsettled and back on the queue:
//! acked after its commit, sent round the retry queues after a transient failure, or
//! dead-lettered with its reason when it can never succeed, including when handling it panics.

use std::any::Any;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures::{FutureExt, StreamExt, stream};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::db::killmails::{Stored, StoredKillmail};
use crate::esi::{Esi, EsiError};
use crate::events::{EventPublisher, KillmailAdded};
use crate::health::Broker;
use crate::killmail::{Killmail, KillmailId, Received, Seq};
use crate::queue::{IngestJob, Publisher, RetryOutcome};

/// While Redis is down, how often the sweep tries to announce what waits for it.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// Announcements one sweep transaction claims.
const SWEEP_BATCH: i64 = 500;

/// Announces newly stored killmails on Redis, with every name the store has or can get in time.
///
/// When a publish fails, Redis counts as down (logged once): new killmails are still stored
/// and acked, their announcements wait in the outbox, and [`Self::sweep`] announces all that
/// waited, oldest first, as soon as Redis answers again.
#[derive(Clone)]
pub struct Announcer {
    pool: PgPool,
    events: EventPublisher,
    /// Where unknown character, corporation and alliance names are resolved. Without it, only
    /// names already stored are sent.
    names: Option<Names>,
    /// Whether the last publish went through; shared by clones.
    redis_up: Arc<AtomicBool>,
}

/// While ESI fails to name people, how often an announcement asks it again; the others go out
/// at once with the names the store has.
const NAMES_PROBE: Duration = Duration::from_secs(10);

/// ESI's names for the announcer: how long an announcement may wait for them, and when ESI
/// last failed to give them, while it fails (shared by clones).
#[derive(Clone)]
struct Names {
    esi: Esi,
    budget: Duration,
    failing: Arc<Mutex<Option<Instant>>>,
}

impl Announcer {
    pub fn new(
        pool: PgPool,
        events: EventPublisher,
        resolve_names: Option<(Esi, Duration)>,
    ) -> Self {
        Self {
            pool,
            events,
            names: resolve_names.map(|(esi, budget)| Names {
                esi,
                budget,
                failing: Arc::default(),
            }),
            redis_up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Publishes events (the Redis client gives up within seconds: see
    /// [`EventPublisher::connect`]); a failure marks Redis down, logged when it goes down rather
    /// than on every attempt.
    async fn publish(&self, events: &[KillmailAdded]) -> anyhow::Result<()> {
        let Err(error) = self.events.publish(events).await else {
            return Ok(());
        };
        let error = anyhow::Error::new(error);
        if self.redis_up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                error = format!("{error:#}"),
                "Redis is down: killmails are still stored, their announcements wait until it is back"
            );
        }
        Err(error.context("publishing on Redis"))
    }

    /// Publishes one event per stored killmail, in ingest order; returns how many. While
    /// Redis is down the announcements are left waiting for the sweep, at once: a failed
    /// publish is not an error of the batch's, and the worker stores on at full speed.
    pub async fn announce(
        &self,
        received: &[Received],
        stored: &[Stored],
    ) -> anyhow::Result<usize> {
        if stored.is_empty() || !self.redis_up.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let by_id: HashMap<KillmailId, &Received> = received
            .iter()
            .map(|r| (r.killmail.killmail_id, r))
            .collect();
        let new: Vec<(&Stored, &Received)> = stored
            .iter()
            .filter_map(|s| by_id.get(&s.killmail_id).map(|r| (s, *r)))
            .collect();

        let entities: BTreeSet<i64> = new
            .iter()
            .flat_map(|(_, r)| r.killmail.entity_ids())
            .collect();
        let entities: Vec<i64> = entities.into_iter().collect();
        if let Some(names) = &self.names {
            self.resolve(names, &entities).await;
        }

        // Claimed in a transaction that commits only once Redis has the events: if publishing
        // fails, the announcements stay pending for `announce_overdue`.
        let mut tx = self.pool.begin().await?;
        let seqs: Vec<Seq> = new.iter().map(|(s, _)| s.seq).collect();
        let claimed: HashSet<Seq> = db::announcements::claim(&mut tx, &seqs)
            .await?
            .into_iter()
            .collect();
        let new: Vec<(&Stored, &Received)> = new
            .into_iter()
            .filter(|(s, _)| claimed.contains(&s.seq))
            .collect();
        let killmails: Vec<&Killmail> = new.iter().map(|(_, r)| &r.killmail).collect();
        let names = db::names::for_killmails(&mut *tx, &killmails).await?;
        let events: Vec<KillmailAdded> = new
            .into_iter()
            .zip(names)
            .map(|((s, r), names)| KillmailAdded {
                seq: s.seq,
                killmail: r.killmail.clone(),
                zkb: r.zkb.clone(),
                hash: Some(r.hash.clone()),
                names,
            })
            .collect();
        if self.publish(&events).await.is_err() {
            // Logged by `publish`; the rolled-back claim leaves them for the sweep.
            return Ok(0);
        }
        tx.commit().await?;
        Ok(events.len())
    }

    /// Announces every killmail whose announcement has been pending longer than `older_than`
    /// (Redis was down, or a worker died between commit and publish), oldest first, in
    /// transactions of [`SWEEP_BATCH`]; returns how many. Consumers see them out of order;
    /// the server puts them back in order by `seq`.
    pub async fn announce_overdue(&self, older_than: Duration) -> anyhow::Result<usize> {
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let mut announced = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let ids = db::announcements::claim_overdue(&mut tx, older_than_ms, SWEEP_BATCH).await?;
            if ids.is_empty() {
                return Ok(announced);
            }
            let claimed = ids.len();
            let mut stored = db::killmails::load(&mut tx, &ids).await?;
            stored.sort_by_key(|s| s.seq);
            let events = events_for_stored(&mut tx, stored).await?;
            self.publish(&events).await?;
            tx.commit().await?;
            announced += events.len();
            if i64::try_from(claimed).unwrap_or(i64::MAX) < SWEEP_BATCH {
                return Ok(announced);
            }
        }
    }

    /// Runs [`Self::announce_overdue`] every `every` until `shutdown`; while Redis is down,
    /// every [`REDIS_RETRY`] and for every waiting announcement, quietly until one goes
    /// through. A round that panics is rolled back and logged like a failed one, so that the
    /// announcements it held stay pending and the sweep, beside the worker, carries on.
    pub async fn sweep(&self, every: Duration, shutdown: CancellationToken) {
        let mut last_round = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REDIS_RETRY) => {}
            }
            let down = !self.redis_up.load(Ordering::Relaxed);
            if !down && last_round.elapsed() < every {
                continue;
            }
            last_round = Instant::now();
            let older_than = if down { Duration::ZERO } else { every };
            let round = AssertUnwindSafe(self.announce_overdue(older_than)).catch_unwind();
            match round.await {
                Ok(Ok(n)) if down => {
                    self.redis_up.store(true, Ordering::Relaxed);
                    tracing::info!(announced = n, "Redis is back; announced what waited for it");
                }
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(announced = n, "announced overdue killmails"),
                Ok(Err(error)) if down => {
                    tracing::debug!(error = format!("{error:#}"), "Redis still down")
                }
                Ok(Err(error)) => tracing::warn!(
                    error = format!("{error:#}"),
                    "overdue announcements failed; will retry"
                ),
                Err(panic) => tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "overdue announcements panicked; will retry"
                ),
            }
        }
    }

    /// Asks ESI for the names the store lacks, giving up when the budget runs out: an event
    /// without a name is better than a late event. While ESI fails, only one announcement in
    /// [`NAMES_PROBE`] asks (and waits); the outage is logged when it starts and ends.
    async fn resolve(&self, names: &Names, entities: &[i64]) {
        let lock = || names.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if lock().is_some_and(|failed| failed.elapsed() < NAMES_PROBE) {
            return;
        }
        // Whether ESI was asked: with every name stored already, nothing is learnt of it.
        let work = async {
            let unnamed = db::names::unnamed(&self.pool, entities).await?;
            if unnamed.is_empty() {
                return Ok(false);
            }
            let found = names.esi.names(&unnamed).await?;
            db::names::save(&self.pool, &found).await?;
            anyhow::Ok(true)
        };
        let error = match tokio::time::timeout(names.budget, work).await {
            Ok(Ok(false)) => return,
            Ok(Ok(true)) => {
                if lock().take().is_some() {
                    tracing::info!("ESI names characters and corporations again");
                }
                return;
            }
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => format!("no answer within {:?}", names.budget),
        };
        if lock().replace(Instant::now()).is_none() {
            tracing::warn!(
                %error,
                "names not resolved: events go out with the names the store has, and ESI is asked again every {NAMES_PROBE:?} until it answers"
            );
        }
    }
}

/// Stored killmails as events, with the names the store has.
pub async fn events_for_stored(
    db: &mut PgConnection,
    stored: Vec<StoredKillmail>,
) -> sqlx::Result<Vec<KillmailAdded>> {
    let killmails: Vec<&Killmail> = stored.iter().map(|s| &s.killmail).collect();
    let names = db::names::for_killmails(&mut *db, &killmails).await?;
    Ok(stored
        .into_iter()
        .zip(names)
        .map(|(s, names)| KillmailAdded {
            seq: s.seq,
            hash: Some(s.hash),
            killmail: s.killmail,
            zkb: s.zkb,
            names,
        })
        .collect())
}

/// Stores a batch in one transaction and returns what was new.
pub async fn store(pool: &PgPool, batch: &[Received]) -> sqlx::Result<Vec<Stored>> {
    let mut tx = pool.begin().await?;
    let stored = db::killmails::store_batch(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Settings of [`KillmailWorker`].
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// At most this many jobs are stored in one transaction.
    pub max_jobs: usize,
    /// How long a batch waits to fill once its first job has arrived.
    pub max_wait: Duration,
    /// ESI fetches in flight at once for jobs without a killmail.
    pub fetch_concurrency: usize,
}

/// Consumes `killmail.ingest`: decodes each job, fetches missing bodies from ESI, stores jobs in
/// batches, acks them after the commit and announces what was new.
pub struct KillmailWorker {
    pub pool: PgPool,
    pub esi: Esi,
    pub publisher: Publisher,
    pub announcer: Announcer,
    pub batch: BatchSettings,
}

impl KillmailWorker {
    /// Runs until `shutdown` is cancelled or the consumer ends. Deliveries not yet acked when
    /// it returns go back to the queue when the channel closes.
    pub async fn run(
        &self,
        mut consumer: lapin::Consumer,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let Some(first) = first else {
                anyhow::bail!("the RabbitMQ consumer was cancelled");
            };
            let mut deliveries = vec![first?];
            let deadline = Instant::now() + self.batch.max_wait;
            while deliveries.len() < self.batch.max_jobs {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(delivery)) => deliveries.push(delivery?),
                    Ok(None) | Err(_) => break,
                }
            }
            self.process(&deliveries, &shutdown).await?;
        }
    }

    /// Handles one batch of deliveries; returns an error only when the broker itself fails.
    /// A job whose handling panics is dead-lettered with the panic's message, and the others
    /// are handled as usual. Once `shutdown` is cancelled, a batch still waiting for ESI is
    /// given up unacked, since nothing of it is committed yet.
    pub async fn process(
        &self,
        deliveries: &[Delivery],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let poison = contain_panics(deliveries, |batch| self.handle(batch, shutdown)).await?;
        for (delivery, message) in poison {
            self.reject(delivery, &format!("handler panicked: {message}"))
                .await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        deliveries: &[Delivery],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut ready = Vec::with_capacity(deliveries.len());
        let mut to_fetch = Vec::new();
        for delivery in deliveries {
            match IngestJob::decode(&delivery.data) {
                Err(reason) => self.reject(delivery, &reason).await?,
                Ok(mut job) => match job.killmail.take() {
                    Some(killmail) => ready.push((delivery, job.into_received(killmail))),
                    None => to_fetch.push((delivery, job)),
                },
            }
        }

        let waiting = to_fetch.len();
        let fetches = stream::iter(to_fetch)
            .map(|(delivery, job)| async move {
                let result = self.esi.killmail(job.killmail_id, &job.hash).await;
                (delivery, job, result)
            })
            .buffer_unordered(self.batch.fetch_concurrency.max(1))
            .collect::<Vec<_>>();
        // ESI may hold a fetch for its whole timeout, or pause for its error limit; the batch
        // is not worth a slow exit, as its jobs return to the queue unacked.
        let fetched = tokio::select! {
            biased;
            fetched = fetches => fetched,
            () = shutdown.cancelled() => {
                tracing::info!(jobs = ready.len() + waiting, "shutting down while fetching from ESI; the batch goes back to the queue");
                return Ok(());
            }
        };
        for (delivery, job, result) in fetched {
            match result {
                Ok(killmail) => ready.push((delivery, job.into_received(killmail))),
                Err(EsiError::Permanent(reason)) => self.reject(delivery, &reason).await?,
                Err(EsiError::Transient(reason)) => self.retry(delivery, &reason).await?,
            }
        }
        self.store_and_ack(ready).await
    }

    /// Stores the batch in one transaction; if that fails, each job on its own, so one bad
    /// killmail cannot hold back the others.
    async fn store_and_ack(&self, ready: Vec<(&Delivery, Received)>) -> anyhow::Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        let (deliveries, received): (Vec<&Delivery>, Vec<Received>) = ready.into_iter().unzip();
        match store(&self.pool, &received).await {
            Ok(stored) => {
                for delivery in &deliveries {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                for s in &stored {
                    tracing::info!(killmail.id = %s.killmail_id, killmail.seq = s.seq.0, "stored");
                }
                if let Err(error) = self.announcer.announce(&received, &stored).await {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "stored killmails not announced"
                    );
                }
                Ok(())
            }
            Err(error) if deliveries.len() > 1 => {
                tracing::warn!(error = %error, jobs = deliveries.len(), "batch not stored; storing its jobs one by one");
                for pair in deliveries.into_iter().zip(received) {
                    Box::pin(self.store_and_ack(vec![pair])).await?;
                }
                Ok(())
            }
            Err(error) => {
                let reason = format!(
                    "storing killmail {}: {error}",
                    received[0].killmail.killmail_id
                );
                if db::is_data_error(&error) {
                    self.reject(deliveries[0], &reason).await
                } else {
                    self.retry(deliveries[0], &reason).await
                }
            }
        }
    }

    async fn reject(&self, delivery: &Delivery, reason: &str) -> anyhow::Result<()> {
        tracing::warn!(%reason, "job dead-lettered");
        self.publisher.dead_letter(delivery, reason).await?;
        Ok(())
    }

    async fn retry(&self, delivery: &Delivery, reason: &str) -> anyhow::Result<()> {
        match self.publisher.retry_later(delivery, reason).await? {
            RetryOutcome::Delayed(secs) => {
                tracing::warn!(%reason, retry_in_secs = secs, "job failed; will retry")
            }
            RetryOutcome::DeadLettered => {
                tracing::error!(%reason, "job failed too often; dead-lettered")
            }
        }
        Ok(())
    }
}

/// Runs `handle` on a batch, catching a panic. After one, runs it again on each delivery the
/// batch left unsettled, alone, and returns those that panic even alone, with the panic's
/// message, for the caller to dead-letter. Uncaught, such a job would end the worker, go back
/// to the queue and end the next worker too, for ever.
async fn contain_panics<'a, H, F>(
    deliveries: &'a [Delivery],
    handle: H,
) -> anyhow::Result<Vec<(&'a Delivery, String)>>
where
    H: Fn(&'a [Delivery]) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    // Unwind safety: what a handler shares (pools, channels, clients) stays usable after a
    // panic, and a transaction it had open is rolled back when dropped.
    match AssertUnwindSafe(handle(deliveries)).catch_unwind().await {
        Ok(result) => return result.map(|()| Vec::new()),
        Err(panic) => tracing::error!(
            panic = panic_message(panic.as_ref()),
            jobs = deliveries.len(),
            "handling a batch panicked; handling its jobs one by one"
        ),
    }
    let mut poison = Vec::new();
    for delivery in deliveries {
        // Settled before the panic (acked, retried or dead-lettered): settling it twice would
        // fail, and its work is done.
        if delivery.acker.used() {
            continue;
        }
        let alone = std::slice::from_ref(delivery);
        match AssertUnwindSafe(handle(alone)).catch_unwind().await {
            Ok(result) => result?,
            Err(panic) if delivery.acker.used() => tracing::error!(
                panic = panic_message(panic.as_ref()),
                "a job panicked after it was settled"
            ),
            Err(panic) => poison.push((delivery, panic_message(panic.as_ref()))),
        }
    }
    Ok(poison)
}

/// The message a panic was raised with, as `panic!` and `expect` leave it.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use lapin::BasicProperties;
    use lapin::acker::Acker;

    use super::*;

    fn delivery(tag: u64, body: &str) -> Delivery {
        Delivery {
            delivery_tag: tag,
            exchange: "".into(),
            routing_key: "".into(),
            redelivered: false,
            properties: BasicProperties::default(),
            data: body.as_bytes().to_vec(),
            // An acker without a channel: acking only marks it used, and a second ack fails.
            acker: Acker::default(),
        }
    }

    /// Acks each job in turn, panicking at `panic` jobs, and records every batch it is given.
    async fn ack_each(batch: &[Delivery], seen: &Mutex<Vec<Vec<u64>>>) -> anyhow::Result<()> {
        seen.lock()
            .expect("not poisoned")
            .push(batch.iter().map(|d| d.delivery_tag).collect());
        for delivery in batch {
            match delivery.data.as_slice() {
                b"panic" => panic!("job {} is poison", delivery.delivery_tag),
                b"ack, then panic" => {
                    delivery.acker.ack(BasicAckOptions::default()).await?;
                    panic!("job {} failed after its ack", delivery.delivery_tag);
                }
                _ => delivery.acker.ack(BasicAckOptions::default()).await?,
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_batch_that_does_not_panic_is_handled_once() {
        let batch = vec![delivery(1, "ok"), delivery(2, "ok")];
        let seen = Mutex::new(Vec::new());
        let poison = contain_panics(&batch, |b| ack_each(b, &seen))
            .await
            .expect("no broker error");
        assert!(poison.is_empty());
        assert_eq!(*seen.lock().expect("not poisoned"), vec![vec![1, 2]]);
        assert!(batch.iter().all(|d| d.acker.used()));
    }

    #[tokio::test]
    async fn a_panicking_job_is_singled_out_and_the_others_are_settled_once() {
        let batch = vec![
            delivery(1, "ok"),
            delivery(2, "panic"),
            delivery(3, "ok"),
            delivery(4, "ack, then panic"),
            delivery(5, "ok"),
        ];
        let seen = Mutex::new(Vec::new());
        // A job settled twice would make the second ack fail, and this an error.
        let poison = contain_panics(&batch, |b| ack_each(b, &seen))
            .await
            .expect("no job settled twice");
        let poison: Vec<(u64, String)> = poison
            .into_iter()
            .map(|(d, message)| (d.delivery_tag, message))
            .collect();
        assert_eq!(poison, vec![(2, "job 2 is poison".to_owned())]);
        assert_eq!(
            *seen.lock().expect("not poisoned"),
            vec![vec![1, 2, 3, 4, 5], vec![2], vec![3], vec![4], vec![5]],
            "the batch, then each job it left unsettled, alone"
        );
        assert!(!batch[1].acker.used(), "left for the caller to dead-letter");
        for i in [0, 2, 3, 4] {
            assert!(batch[i].acker.used(), "job {} settled", i + 1);
        }
    }

    #[tokio::test]
    async fn a_broker_error_after_a_panic_is_returned() {
        let batch = vec![delivery(1, "panic"), delivery(2, "ok")];
        let poison = contain_panics(&batch, |b| async move {
            if b.len() > 1 {
                panic!("the whole batch");
            }
            anyhow::bail!("RabbitMQ is gone")
        })
        .await;
        assert!(poison.is_err());
    }

    #[test]
    fn panic_messages_are_read_from_both_kinds_of_payload() {
        let payload = std::panic::catch_unwind(|| panic!("static text")).expect_err("panics");
        assert_eq!(panic_message(payload.as_ref()), "static text");
        let n = 7;
        let payload = std::panic::catch_unwind(|| panic!("formatted {n}")).expect_err("panics");
        assert_eq!(panic_message(payload.as_ref()), "formatted 7");
        let payload = std::panic::catch_unwind(|| std::panic::panic_any(5_u8)).expect_err("panics");
        assert_eq!(panic_message(payload.as_ref()), "a panic without a message");
    }
}

/// How `worker-killmails` reaches its queue.
#[derive(Debug, Clone)]
pub struct Consuming {
    pub rabbitmq_url: String,
    pub topology: crate::queue::Topology,
    /// Jobs RabbitMQ hands the worker before it has acked them.
    pub prefetch: u16,
    /// How long the batch in hand may take to finish once shutdown is asked for.
    pub grace: Duration,
    /// The connection consumed on, for `/readyz`.
    pub broker: Broker,
}

/// Consumes until `shutdown`, reconnecting with backoff and jitter whenever the connection to
/// RabbitMQ is lost (what was unacked went back to the queue with the old connection); logs
/// once per outage.
pub async fn consume(
    pool: PgPool,
    esi: Esi,
    announcer: Announcer,
    batch: BatchSettings,
    consuming: &Consuming,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let backoff = crate::feed::Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    let mut failures = 0;
    loop {
        let session = async {
            let name = format!("worker-killmails {}", consuming.topology.queue);
            let connection = crate::queue::connect(&consuming.rabbitmq_url, &name)
                .await
                .context("connecting to RabbitMQ")?;
            let publisher = Publisher::new(&connection, consuming.topology.clone())
                .await
                .context("declaring the RabbitMQ topology")?;
            let channel = connection
                .create_channel()
                .await
                .context("opening a channel")?;
            channel
                .basic_qos(consuming.prefetch, Default::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    &consuming.topology.queue,
                    "worker-killmails",
                    Default::default(),
                    Default::default(),
                )
                .await
                .with_context(|| format!("consuming {}", consuming.topology.queue))?;
            consuming.broker.hold(&connection);
            if failures > 0 {
                tracing::info!("RabbitMQ is back; consuming again");
            }
            failures = 0;
            tracing::info!(queue = %consuming.topology.queue, "worker-killmails consuming");
            let worker = KillmailWorker {
                pool: pool.clone(),
                esi: esi.clone(),
                publisher,
                announcer: announcer.clone(),
                batch,
            };
            let worked = crate::shutdown::finish_within(
                shutdown,
                consuming.grace,
                worker.run(consumer, shutdown.clone()),
            )
            .await;
            if worked.is_none() {
                tracing::warn!(grace = ?consuming.grace, "the batch in hand did not finish in time; its unacked jobs go back to the queue");
            }
            // Still connected after an error: the broker cancelled the consumer (its queue was
            // deleted), which reconnecting would only paper over.
            let fatal = connection.status().connected() && matches!(worked, Some(Err(_)));
            // Closing hands every delivery not acked back to the queue.
            connection.close(200, "worker-killmails closing").await.ok();
            anyhow::Ok((worked.unwrap_or(Ok(())), fatal))
        };
        let (outcome, fatal) = session.await.unwrap_or_else(|error| (Err(error), false));
        consuming.broker.release();
        if fatal || shutdown.is_cancelled() {
            return outcome;
        }
        failures += 1;
        let delay = backoff.delay(failures);
        if failures == 1 {
            let error = outcome.err().map(|e| format!("{e:#}")).unwrap_or_default();
            tracing::error!(%error, retry_in = ?delay, "lost RabbitMQ; reconnecting until it is back");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}
