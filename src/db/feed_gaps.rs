//! Stretches of a live feed skipped rather than read (table `feed_gaps`): what an outage longer
//! than the feed keeps its files made the poller jump over, and whether the hours it lost have
//! been repaired from zKillboard's history since.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A stretch skipped: sequences `first_sequence..=last_sequence`, killed between `lost_from`
/// and `lost_to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub id: i64,
    pub feed: String,
    pub first_sequence: i64,
    pub last_sequence: i64,
    pub lost_from: DateTime<Utc>,
    pub lost_to: DateTime<Utc>,
}

/// Records a gap of `feed`, not repaired yet, and returns it.
pub async fn record(
    db: impl PgExecutor<'_>,
    feed: &str,
    sequences: (i64, i64),
    lost: (DateTime<Utc>, DateTime<Utc>),
) -> sqlx::Result<Gap> {
    sqlx::query_as!(
        Gap,
        "INSERT INTO feed_gaps (feed, first_sequence, last_sequence, lost_from, lost_to)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, feed, first_sequence, last_sequence, lost_from, lost_to",
        feed,
        sequences.0,
        sequences.1,
        lost.0,
        lost.1
    )
    .fetch_one(db)
    .await
}

/// The gaps of `feed` whose hours were not repaired yet, oldest first.
pub async fn unrepaired(db: impl PgExecutor<'_>, feed: &str) -> sqlx::Result<Vec<Gap>> {
    sqlx::query_as!(
        Gap,
        "SELECT id, feed, first_sequence, last_sequence, lost_from, lost_to
         FROM feed_gaps WHERE feed = $1 AND repaired_at IS NULL ORDER BY id",
        feed
    )
    .fetch_all(db)
    .await
}

/// Marks a gap repaired, with the number of killmails the repair found missing and queued.
pub async fn repaired(db: impl PgExecutor<'_>, id: i64, queued: usize) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE feed_gaps SET repaired_at = now(), queued = $2 WHERE id = $1",
        id,
        i32::try_from(queued).unwrap_or(i32::MAX)
    )
    .execute(db)
    .await?;
    Ok(())
}
