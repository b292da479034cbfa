//! Days of EVE Ref's archives imported whole (table `backfill_days`), so a backfill skips them.

use chrono::NaiveDate;
use sqlx::PgExecutor;

/// Of `from..=to`, the days already imported whole.
pub async fn imported(
    db: impl PgExecutor<'_>,
    from: NaiveDate,
    to: NaiveDate,
) -> sqlx::Result<Vec<NaiveDate>> {
    sqlx::query_scalar!(
        "SELECT day FROM backfill_days WHERE day BETWEEN $1 AND $2 ORDER BY day",
        from,
        to
    )
    .fetch_all(db)
    .await
}

/// Records `day` as imported whole, with its counts (replacing an earlier record).
pub async fn record(
    db: impl PgExecutor<'_>,
    day: NaiveDate,
    killmails: usize,
    rejected: usize,
) -> sqlx::Result<()> {
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    sqlx::query!(
        "INSERT INTO backfill_days (day, killmails, rejected) VALUES ($1, $2, $3)
         ON CONFLICT (day) DO UPDATE
         SET killmails = EXCLUDED.killmails, rejected = EXCLUDED.rejected, imported_at = now()",
        day,
        count(killmails),
        count(rejected)
    )
    .execute(db)
    .await?;
    Ok(())
}
