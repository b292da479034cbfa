//! R2Z2 after an outage longer than it keeps its files (about a day): the file after the cursor
//! answers 404 while the pointer is far ahead, and so would every file up to the ones R2Z2 still
//! holds. Rather than skip them one by one, for hours of requests that can only fail, the poller
//! resynchronises to the newest sequence, records the stretch it jumped over and the hours it
//! lost (`db::feed_gaps`), and repairs those hours from zKillboard's daily history in the
//! background (see [`crate::repair`]): what the history lists and the store lacks is queued for
//! ESI. A gap whose repair did not finish (zKillboard down, a restart) is repaired again when
//! the poller next starts, and `queue repair` can always repair it by hand.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::R2z2Poller;
use crate::db::cursors;
use crate::db::feed_gaps::{self, Gap};
use crate::repair::Repair;

/// The wait before a history that failed to arrive is asked again.
const HISTORY_RETRY_PAUSE: Duration = Duration::from_secs(5);

impl R2z2Poller {
    /// Called when the file `next` is missing below the `newest` sequence: when the cursor has
    /// not moved for longer than R2Z2 keeps its files, resynchronises (the gap recorded, its
    /// repair started) and returns the sequence to go on from; `None` for a single missing
    /// file, which the poller deals with as before.
    pub(super) async fn resync_after_outage(
        &self,
        lock: &mut PgConnection,
        next: i64,
        newest: i64,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<i64>> {
        let feed = &self.settings.feed;
        let moved_at = cursors::moved_at(&self.pool, feed)
            .await
            .context("reading when the R2Z2 cursor last moved")?;
        let now = Utc::now();
        let Some(moved_at) = moved_at
            .filter(|at| (now - *at).to_std().unwrap_or_default() >= self.settings.retention)
        else {
            return Ok(None);
        };
        let gap = feed_gaps::record(&self.pool, feed, (next, newest - 1), (moved_at, now))
            .await
            .context("recording the R2Z2 gap")?;
        tracing::warn!(
            feed.sequence = next,
            feed.newest = newest,
            lost_from = %moved_at,
            lost_hours = (now - moved_at).num_hours(),
            "R2Z2 no longer holds the files after the cursor: the feed was away longer than \
             R2Z2 keeps them. Resynchronising to the newest sequence; the lost hours are \
             repaired from zKillboard's history"
        );
        self.save_cursor(lock, newest - 1).await?;
        self.repair_in_background(gap, shutdown.clone());
        Ok(Some(newest))
    }

    /// Starts repairing the gaps whose repair an earlier run did not finish.
    pub(super) async fn repair_unfinished(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let gaps = feed_gaps::unrepaired(&self.pool, &self.settings.feed)
            .await
            .context("reading the R2Z2 gaps not repaired yet")?;
        for gap in gaps {
            self.repair_in_background(gap, shutdown.clone());
        }
        Ok(())
    }

    fn repair_in_background(&self, gap: Gap, shutdown: CancellationToken) {
        let (from, to) = (gap.lost_from.date_naive(), gap.lost_to.date_naive());
        let Some(base_url) = self.settings.zkb_base_url.clone() else {
            tracing::warn!(
                gap.id,
                "no zKillboard to repair the R2Z2 gap from; it stays recorded for \
                 `queue repair --from {from} --to {to}`"
            );
            return;
        };
        let repair = Repair {
            http: self.http.clone(),
            base_url,
            pool: self.pool.clone(),
            publisher: self.publisher.clone(),
            retry_pause: HISTORY_RETRY_PAUSE,
        };
        tokio::spawn(async move {
            let summary = repair
                .run(from, to, &shutdown, |day| {
                    tracing::info!(gap.id, "repairing an R2Z2 gap: {day}");
                })
                .await;
            let done = match summary {
                Ok(summary) if !summary.interrupted && summary.not_compared() == 0 => summary,
                Ok(summary) if summary.interrupted => return,
                Ok(summary) => {
                    tracing::warn!(
                        gap.id,
                        days = summary.not_compared(),
                        "some days of the R2Z2 gap could not be compared with zKillboard's \
                         history; it is repaired again at the next start, or by \
                         `queue repair --from {from} --to {to}`"
                    );
                    return;
                }
                Err(error) => {
                    tracing::warn!(
                        gap.id,
                        error = format!("{error:#}"),
                        "repairing the R2Z2 gap failed; it is repaired again at the next \
                         start, or by `queue repair --from {from} --to {to}`"
                    );
                    return;
                }
            };
            match feed_gaps::repaired(&repair.pool, gap.id, done.queued).await {
                Ok(()) => tracing::info!(
                    gap.id,
                    listed = done.listed,
                    queued = done.queued,
                    "R2Z2 gap repaired: what zKillboard's history lists and the store lacked \
                     is queued for ESI"
                ),
                Err(error) => tracing::warn!(gap.id, %error, "recording the R2Z2 gap repaired"),
            }
        });
    }
}
