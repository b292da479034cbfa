//! Storing killmails: the work of `worker-killmails` (the [`KillmailHandler`] of
//! `killmail.ingest` jobs, run by the job runner) and of `queue import` (files), which share
//! one validated path into the store, [`store`], which also writes killreport's own value of
//! each killmail that came without zKillboard's (see `valuation`). What was new is then
//! announced (see `announce`).

use std::collections::HashSet;

use chrono::Utc;
use futures::{StreamExt, stream};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::announce::Announcer;
use crate::db;
use crate::db::killmails::{Encoded, Stored};
use crate::esi::{Esi, EsiError};
use crate::killmail::{KillmailId, Received};
use crate::queue::IngestJob;
use crate::queue::runner::{Failure, Handler, Outcome};
use crate::telemetry;
use crate::valuation;

/// Stores a batch in one transaction and returns what was new, its announcements queued,
/// counted with how long after its fight each new killmail was stored.
pub async fn store(pool: &PgPool, batch: &[Received]) -> sqlx::Result<Vec<Stored>> {
    store_with(pool, batch, true).await
}

/// [`store`], with the announcements of what was new queued only when `announced` (a backfill's
/// history is stored without any).
pub async fn store_with(
    pool: &PgPool,
    batch: &[Received],
    announced: bool,
) -> sqlx::Result<Vec<Stored>> {
    store_encoded(pool, batch, Encoded::new(batch), announced).await
}

/// [`store_with`] of a batch whose rows were encoded already (`encoded` made of `batch`), as an
/// import encodes the next batch while the last one is written.
pub async fn store_encoded(
    pool: &PgPool,
    batch: &[Received],
    encoded: Encoded,
    announced: bool,
) -> sqlx::Result<Vec<Stored>> {
    let mut encoded = encoded;
    let mut tx = pool.begin().await?;
    // Valued under the store's lock, so that a revaluation waiting for it sees this batch
    // (see `valuation`).
    db::killmails::lock_ingest(&mut tx).await?;
    let without_zkb = batch.iter().filter(|r| r.zkb.is_none());
    let estimates = valuation::estimates(&mut tx, without_zkb.map(|r| &r.killmail)).await?;
    encoded.set_estimates(estimates);
    let stored = db::killmails::store_encoded(&mut tx, encoded, announced).await?;
    tx.commit().await?;
    let now = Utc::now();
    let new: HashSet<KillmailId> = stored.iter().map(|s| s.killmail_id).collect();
    let lag = metrics::histogram!(telemetry::STORE_LAG);
    for received in batch
        .iter()
        .filter(|r| new.contains(&r.killmail.killmail_id))
    {
        let since = now - received.killmail.killmail_time;
        lag.record(since.to_std().unwrap_or_default());
    }
    metrics::counter!(telemetry::KILLMAILS_STORED).increment(stored.len() as u64);
    Ok(stored)
}

/// `killmail.ingest`: fetches the bodies jobs lack from ESI, stores the batch in one
/// transaction and announces what was new.
pub struct KillmailHandler {
    pub pool: PgPool,
    pub esi: Esi,
    pub announcer: Announcer,
    /// ESI fetches in flight at once for jobs without a killmail.
    pub fetch_concurrency: usize,
}

impl Handler for KillmailHandler {
    type Job = IngestJob;
    const NAME: &'static str = "worker-killmails";

    /// A fetch that fails is that job's outcome; a store that fails is the batch's. Once
    /// `shutdown` is cancelled, a batch still waiting for ESI is given up unsettled, since
    /// nothing of it is committed yet.
    async fn handle(
        &self,
        jobs: Vec<IngestJob>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Outcome>, Failure> {
        let count = jobs.len();
        let mut outcomes = vec![Outcome::Done; count];
        let mut ready = Vec::with_capacity(count);
        let mut to_fetch = Vec::new();
        for (position, mut job) in jobs.into_iter().enumerate() {
            match job.killmail.take() {
                Some(killmail) => ready.push(job.into_received(killmail)),
                None => to_fetch.push((position, job)),
            }
        }

        let fetches = stream::iter(to_fetch)
            .map(|(position, job)| async move {
                let result = self.esi.killmail(job.killmail_id, &job.hash).await;
                (position, job, result)
            })
            .buffer_unordered(self.fetch_concurrency.max(1))
            .collect::<Vec<_>>();
        // ESI may hold a fetch for its whole timeout, or pause for its error limit; the batch
        // is not worth a slow exit, as its jobs return to the queue unacked.
        let fetched = tokio::select! {
            biased;
            fetched = fetches => fetched,
            () = shutdown.cancelled() => {
                tracing::info!(jobs = count, "shutting down while fetching from ESI; the batch goes back to the queue");
                return Ok(vec![Outcome::Unsettled; count]);
            }
        };
        for (position, job, result) in fetched {
            match result {
                Ok(killmail) => ready.push(job.into_received(killmail)),
                Err(EsiError::Permanent(reason)) => {
                    outcomes[position] = Outcome::Failed(Failure::Permanent(reason));
                }
                Err(EsiError::Transient(reason)) => {
                    outcomes[position] = Outcome::Failed(Failure::Transient(reason));
                }
            }
        }
        if ready.is_empty() {
            return Ok(outcomes);
        }

        let stored = store(&self.pool, &ready).await.map_err(|error| {
            let reason = match ready.as_slice() {
                [alone] => format!("storing killmail {}: {error}", alone.killmail.killmail_id),
                _ => format!("storing a batch of {} killmails: {error}", ready.len()),
            };
            if db::is_data_error(&error) {
                Failure::Permanent(reason)
            } else {
                Failure::Transient(reason)
            }
        })?;
        for s in &stored {
            tracing::info!(killmail.id = %s.killmail_id, killmail.seq = s.seq.0, "stored");
        }
        if let Err(error) = self.announcer.announce(&ready, &stored).await {
            tracing::error!(
                error = format!("{error:#}"),
                "stored killmails not announced"
            );
        }
        Ok(outcomes)
    }

    /// The store answers (a batch that cannot reach it waits for it, see the job runner).
    async fn available(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}
