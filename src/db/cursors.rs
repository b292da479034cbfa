//! Feed cursors: the last sequence of a live feed whose job RabbitMQ has confirmed.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

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
