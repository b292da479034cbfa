//! Storing killmails and announcing them: the work of `worker-killmails` (jobs from RabbitMQ)
//! and of `queue import` (files), which share one validated path into the store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use futures::{StreamExt, stream};
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::db::killmails::{Stored, StoredKillmail};
use crate::esi::{Esi, EsiError};
use crate::events::{EventPublisher, KillmailAdded};
use crate::killmail::{Killmail, KillmailId, Received, Seq};
use crate::queue::{IngestJob, Publisher, RetryOutcome};

/// Announces newly stored killmails on Redis, with every name the store has or can get in time.
#[derive(Clone)]
pub struct Announcer {
    pub pool: PgPool,
    pub events: EventPublisher,
    /// Where unknown character, corporation and alliance names are resolved, and how long an
    /// announcement may wait for them. Without it, only names already stored are sent.
    pub resolve_names: Option<(Esi, Duration)>,
}

impl Announcer {
    /// Publishes one event per stored killmail, in ingest order.
    pub async fn announce(&self, received: &[Received], stored: &[Stored]) -> anyhow::Result<()> {
        if stored.is_empty() {
            return Ok(());
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
        if let Some((esi, budget)) = &self.resolve_names {
            self.resolve(esi, *budget, &entities).await;
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
        self.events.publish(&events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Announces killmails whose announcement has been pending longer than `older_than`
    /// (Redis was down, or a worker died between commit and publish), oldest first; returns
    /// how many. Consumers see them out of order; the server puts them back in order by `seq`.
    pub async fn announce_overdue(&self, older_than: Duration) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let ids = db::announcements::claim_overdue(&mut tx, older_than_ms, 500).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut stored = db::killmails::load(&mut tx, &ids).await?;
        stored.sort_by_key(|s| s.seq);
        let events = events_for_stored(&mut tx, stored).await?;
        self.events.publish(&events).await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// Runs [`Self::announce_overdue`] every `every` until `shutdown`.
    pub async fn sweep(&self, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.announce_overdue(every).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(announced = n, "announced overdue killmails"),
                Err(error) => tracing::warn!(
                    error = format!("{error:#}"),
                    "overdue announcements failed; will retry"
                ),
            }
        }
    }

    /// Asks ESI for the names the store lacks, giving up quietly when the budget runs out:
    /// an event without a name is better than a late event.
    async fn resolve(&self, esi: &Esi, budget: Duration, entities: &[i64]) {
        let work = async {
            let unnamed = db::names::unnamed(&self.pool, entities).await?;
            if unnamed.is_empty() {
                return Ok(());
            }
            let names = esi.names(&unnamed).await?;
            db::names::save(&self.pool, &names).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(budget, work).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = format!("{error:#}"), "names not resolved"),
            Err(_) => tracing::warn!(?budget, "names not resolved in time"),
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

/// Whether a database error is the data's fault (retrying the same data cannot help).
fn is_permanent(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
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
            self.process(deliveries).await?;
        }
    }

    /// Handles one batch of deliveries; returns an error only when the broker itself fails.
    pub async fn process(&self, deliveries: Vec<Delivery>) -> anyhow::Result<()> {
        let mut ready = Vec::with_capacity(deliveries.len());
        let mut to_fetch = Vec::new();
        for delivery in deliveries {
            match IngestJob::decode(&delivery.data) {
                Err(reason) => self.reject(&delivery, &reason).await?,
                Ok(mut job) => match job.killmail.take() {
                    Some(killmail) => ready.push((delivery, job.into_received(killmail))),
                    None => to_fetch.push((delivery, job)),
                },
            }
        }

        let fetched: Vec<_> = stream::iter(to_fetch)
            .map(|(delivery, job)| async move {
                let result = self.esi.killmail(job.killmail_id, &job.hash).await;
                (delivery, job, result)
            })
            .buffer_unordered(self.batch.fetch_concurrency.max(1))
            .collect()
            .await;
        for (delivery, job, result) in fetched {
            match result {
                Ok(killmail) => ready.push((delivery, job.into_received(killmail))),
                Err(EsiError::Permanent(reason)) => self.reject(&delivery, &reason).await?,
                Err(EsiError::Transient(reason)) => self.retry(&delivery, &reason).await?,
            }
        }
        self.store_and_ack(ready).await
    }

    /// Stores the batch in one transaction; if that fails, each job on its own, so one bad
    /// killmail cannot hold back the others.
    async fn store_and_ack(&self, ready: Vec<(Delivery, Received)>) -> anyhow::Result<()> {
        if ready.is_empty() {
            return Ok(());
        }
        let (deliveries, received): (Vec<Delivery>, Vec<Received>) = ready.into_iter().unzip();
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
                if is_permanent(&error) {
                    self.reject(&deliveries[0], &reason).await
                } else {
                    self.retry(&deliveries[0], &reason).await
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
