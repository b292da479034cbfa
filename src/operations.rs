//! Operational work that admins start over GraphQL (`ADMIN_CHARACTER_IDS`): the dead letters
//! listed, replayed or purged (see `queue::dlq`), and repairs of days from zKillboard's history
//! and backfills from EVE Ref started (see `repair`, `backfill`), and entities described again or snapshotted by worker-enrich (see
//! `enrich`). Admin calls are rare: each opens a RabbitMQ connection of its own
//! and closes it, rather than the server holding one open for them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::backfill::Backfill;
use crate::enrich::{self, Kind};
use crate::queue::dlq::{self, DeadLetter};
use crate::queue::{Publisher, Topology};
use crate::repair::Repair;

/// Days one repair may span.
pub const MAX_REPAIR_DAYS: i64 = 366;

/// Where the operational work happens; cheap to clone.
#[derive(Clone)]
pub struct Operations {
    pub rabbitmq_url: String,
    pub topology: Topology,
    /// worker-enrich's queue.
    pub enrich_topology: Topology,
    pub pool: PgPool,
    /// zKillboard's site, whose daily history a repair compares with the store.
    pub zkb_base_url: String,
    /// The backfill admins start: from EVE Ref, stored unannounced.
    pub backfill: Arc<Backfill>,
    /// Whether a backfill started here is under way: one at a time.
    pub backfilling: Arc<AtomicBool>,
    /// Repairs and backfills under way stop when it is cancelled.
    pub shutdown: CancellationToken,
}

impl Operations {
    /// A connection and a publisher (which declares the queues, the dead-letter one among them).
    async fn connect(&self, what: &str) -> anyhow::Result<(lapin::Connection, Publisher)> {
        self.connect_to(&self.topology, what).await
    }

    async fn connect_to(
        &self,
        topology: &Topology,
        what: &str,
    ) -> anyhow::Result<(lapin::Connection, Publisher)> {
        Publisher::open(
            &self.rabbitmq_url,
            &format!("server {what}"),
            topology.clone(),
        )
        .await
    }

    /// Up to `limit` dead letters, left where they are.
    pub async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<DeadLetter>> {
        let (connection, _publisher) = self.connect("dead letters").await?;
        let channel = connection.create_channel().await?;
        let letters = dlq::list(&channel, &self.topology, limit).await;
        connection.close(200, "done").await.ok();
        Ok(letters?)
    }

    /// Moves up to `limit` dead letters back onto the work queue; returns how many moved.
    pub async fn replay(&self, limit: usize) -> anyhow::Result<usize> {
        let (connection, publisher) = self.connect("replay").await?;
        let channel = connection.create_channel().await?;
        let moved = dlq::replay(&channel, &publisher, limit).await;
        connection.close(200, "done").await.ok();
        moved
    }

    /// Deletes every dead letter; returns how many there were.
    pub async fn purge(&self) -> anyhow::Result<u32> {
        let (connection, _publisher) = self.connect("purge").await?;
        let channel = connection.create_channel().await?;
        let purged = dlq::purge(&channel, &self.topology).await;
        connection.close(200, "done").await.ok();
        Ok(purged?)
    }

    /// Starts repairing the days `from` to `to` (both included) in the background: each day's
    /// history compared with the store, the missing killmails queued. Its outcome is logged.
    pub async fn start_repair(&self, from: NaiveDate, to: NaiveDate) -> anyhow::Result<()> {
        let (connection, publisher) = self.connect("repair").await?;
        let repair = Repair {
            http: crate::feed::http_client(Duration::from_secs(30))?,
            base_url: self.zkb_base_url.clone(),
            pool: self.pool.clone(),
            publisher,
            retry_pause: Duration::from_secs(2),
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let ran = repair
                .run(from, to, &shutdown, |day| tracing::info!(%day, "repaired"))
                .await;
            match ran {
                Ok(summary) => tracing::info!(%summary, "a repair started by an admin ended"),
                Err(error) => tracing::error!(error = format!("{error:#}"), "a repair failed"),
            }
            connection.close(200, "done").await.ok();
        });
        Ok(())
    }

    /// Queues `ids` of `kind` (all the store knows with `None`) for worker-enrich to describe
    /// again; with `snapshot`, corporations or alliances whose description records the day's
    /// counts. Returns how many jobs were queued.
    pub async fn refresh(&self, kind: Kind, ids: Option<&[i64]>) -> anyhow::Result<usize> {
        let (connection, publisher) = self.connect_to(&self.enrich_topology, "refresh").await?;
        let queued = match ids {
            Some(ids) => enrich::queue_refresh(&publisher, kind, ids)
                .await
                .map_err(anyhow::Error::from),
            None => enrich::queue_all(&self.pool, &publisher, kind).await,
        };
        connection.close(200, "done").await.ok();
        queued
    }

    /// Starts backfilling the days `from` to `to` (both included) from EVE Ref in the
    /// background, as `queue backfill` does (history stored and counted, not announced); its
    /// outcome is logged. `Ok(false)`: one started here is still under way.
    pub fn start_backfill(&self, from: NaiveDate, to: NaiveDate) -> bool {
        if self.backfilling.swap(true, Ordering::AcqRel) {
            return false;
        }
        let backfill = Arc::clone(&self.backfill);
        let (backfilling, shutdown) = (self.backfilling.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let progress = indicatif::ProgressBar::hidden();
            let ran = backfill
                .run(from, to, &progress, &shutdown, |day| {
                    tracing::info!(day = %day.day, "backfilled");
                })
                .await;
            match ran {
                Ok(summary) => tracing::info!(%summary, "a backfill started by an admin ended"),
                Err(error) => tracing::error!(error = format!("{error:#}"), "a backfill failed"),
            }
            backfilling.store(false, Ordering::Release);
        });
        true
    }
}
