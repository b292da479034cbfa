//! Feed cursors: the last sequence of a live feed whose job RabbitMQ has confirmed; the lock
//! that lets one poller at a time follow a cursor; and the sequences a poller skipped
//! (`feed_skips`), kept so they can be repaired.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

/// The first key of the advisory locks on feed cursors (the second is the feed's hash), apart
/// from the store's other advisory locks, which take one key.
const CURSOR_LOCK_CLASS: i32 = 0x6b72_6663;

pub async fn load(db: impl PgExecutor<'_>, feed: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!("SELECT sequence FROM feed_cursors WHERE feed = $1", feed)
        .fetch_optional(db)
        .await
}

pub async fn save(db: impl PgExecutor<'_>, feed: &str, sequence: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO feed_cursors (feed, sequence) VALUES ($1, $2)
         ON CONFLICT (feed) DO UPDATE SET sequence = excluded.sequence, updated_at = now()",
        feed,
        sequence
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Every feed's cursor with when it last moved, by feed name.
pub async fn all(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, i64, DateTime<Utc>)>> {
    let rows = sqlx::query!("SELECT feed, sequence, updated_at FROM feed_cursors ORDER BY feed")
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.feed, row.sequence, row.updated_at))
        .collect())
}

/// When the cursor of `feed` last moved; `None` when it has none.
pub async fn moved_at(db: impl PgExecutor<'_>, feed: &str) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar!("SELECT updated_at FROM feed_cursors WHERE feed = $1", feed)
        .fetch_optional(db)
        .await
}

/// Takes the lock on `feed`'s cursor for as long as `connection` lives, if no other session
/// holds it; false when one does. A connection that closes (its process died) releases it.
pub async fn try_lock(connection: &mut PgConnection, feed: &str) -> sqlx::Result<bool> {
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock($1, hashtext($2)) AS "locked!""#,
        CURSOR_LOCK_CLASS,
        feed
    )
    .fetch_one(connection)
    .await?;
    Ok(locked)
}

/// Records that `sequence` of `feed` was skipped, and why; recording it again changes nothing.
pub async fn record_skip(
    db: impl PgExecutor<'_>,
    feed: &str,
    sequence: i64,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO feed_skips (feed, sequence, reason) VALUES ($1, $2, $3)
         ON CONFLICT (feed, sequence) DO NOTHING",
        feed,
        sequence,
        reason
    )
    .execute(db)
    .await?;
    Ok(())
}
