//! What worker-enrich queues by itself, in rounds: the characters, corporations, alliances and
//! item types first seen on killmails stored since the last round (read by ingest sequence, so
//! imports count as much as the live feed), the affiliations of pilots seen lately once they
//! are older than the refresh interval, and once a day the snapshots. One worker does a round
//! at a time (it holds the schedule's row lock), and whatever it queues is shared out among
//! all the workers by RabbitMQ.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Kind, queue_refresh, queue_snapshot};
use crate::db;
use crate::queue::Publisher;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Between rounds (a round that found a full batch of killmails is followed at once).
    pub every: Duration,
    /// Killmails looked through per round.
    pub scan_batch: i64,
    /// Pilots seen on a killmail within this long have their affiliation kept fresh...
    pub recent: Duration,
    /// ... read again once it is this old.
    pub affiliation_max_age: Duration,
    /// Whether the worker queues every corporation's and alliance's snapshot once a day.
    pub daily_snapshots: bool,
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// Runs rounds until `shutdown`; a failed round is logged and tried again next time, except a
/// failure to publish, which ends the run (the caller reconnects to RabbitMQ).
pub async fn run(
    pool: &PgPool,
    publisher: &Publisher,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let busy = match round(pool, publisher, settings).await {
            Ok(busy) => busy,
            Err(error) if error.downcast_ref::<sqlx::Error>().is_some() => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "an enrichment round failed; will retry"
                );
                false
            }
            Err(error) => return Err(error),
        };
        if busy {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(settings.every) => {}
        }
    }
}

/// One round; returns whether it stopped at a full batch (more killmails wait).
pub async fn round(
    pool: &PgPool,
    publisher: &Publisher,
    settings: &Settings,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    let Some(mut schedule) = db::enrichment::lock_schedule(&mut tx).await? else {
        return Ok(false);
    };
    let after = schedule.scanned_seq;
    let (upto, scanned) = db::enrichment::scan_end(&mut *tx, after, settings.scan_batch).await?;
    if let Some(upto) = upto {
        let seen = db::enrichment::record_seen(&mut tx, after, upto).await?;
        let types = db::enrichment::unknown_types(&mut *tx, after, upto).await?;
        for kind in Kind::ALL {
            let new: Vec<i64> = match kind {
                Kind::Types => types.clone(),
                _ => seen
                    .iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, id)| *id)
                    .collect(),
            };
            if !new.is_empty() {
                let jobs = queue_refresh(publisher, kind, &new).await?;
                tracing::info!(ids = new.len(), jobs, ?kind, "queued ids first seen");
            }
        }
        schedule.scanned_seq = upto;
    }
    let now = Utc::now();
    let refresh = chrono::Duration::from_std(settings.affiliation_max_age)?;
    if schedule
        .affiliations_at
        .is_none_or(|at| at + refresh <= now)
    {
        let stale = db::enrichment::stale_affiliations(
            &mut *tx,
            secs(settings.recent),
            secs(settings.affiliation_max_age),
        )
        .await?;
        if !stale.is_empty() {
            let jobs = queue_refresh(publisher, Kind::Characters, &stale).await?;
            tracing::info!(
                characters = stale.len(),
                jobs,
                "queued affiliations to refresh"
            );
        }
        schedule.affiliations_at = Some(now);
    }
    let today = now.date_naive();
    if settings.daily_snapshots && schedule.snapshots_on.is_none_or(|day| day < today) {
        for kind in [Kind::Corporations, Kind::Alliances] {
            let jobs = queue_snapshot(pool, publisher, kind).await?;
            tracing::info!(jobs, ?kind, "queued the daily snapshot");
        }
        schedule.snapshots_on = Some(today);
    }
    db::enrichment::save_schedule(&mut tx, &schedule).await?;
    tx.commit().await?;
    Ok(scanned >= settings.scan_batch)
}
