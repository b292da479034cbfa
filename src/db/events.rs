//! The event log's table (`events`): every event of the bus other than `killmail`, each with
//! its id, which is its place in the log; ids become visible in the order they were drawn.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};

/// Arbitrary, but fixed: writers hold it while drawing event ids, so the ids become visible in
/// the order they were drawn.
const ID_LOCK: i64 = 0x6b72_5f65_7674;

/// An event as the log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRow {
    pub id: i64,
    pub kind: String,
    pub data: Value,
    pub sent_at: DateTime<Utc>,
}

/// Appends an event and gives its id; `tx` must be a transaction, whose commit makes the id
/// visible (the id lock is held until then).
pub async fn append(
    tx: &mut PgConnection,
    kind: &str,
    data: &Value,
    sent_at: DateTime<Utc>,
) -> sqlx::Result<i64> {
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", ID_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query_scalar!(
        "INSERT INTO events (type, data, sent_at) VALUES ($1, $2, $3) RETURNING id",
        kind,
        data,
        sent_at
    )
    .fetch_one(&mut *tx)
    .await
}

/// The events after id `after`, in order, at most `limit`; only those of `types` when given.
pub async fn after(
    db: impl PgExecutor<'_>,
    after: i64,
    types: Option<&[String]>,
    limit: i64,
) -> sqlx::Result<Vec<LoggedRow>> {
    sqlx::query_as!(
        LoggedRow,
        r#"SELECT id, type AS kind, data AS "data!: Value", sent_at FROM events
           WHERE id > $1 AND ($2::text[] IS NULL OR type = ANY($2))
           ORDER BY id LIMIT $3"#,
        after,
        types as Option<&[String]>,
        limit
    )
    .fetch_all(db)
    .await
}

/// The newest event id in the log (0 when it is empty).
pub async fn latest_id(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"SELECT coalesce(max(id), 0) AS "id!" FROM events"#)
        .fetch_one(db)
        .await
}

/// The highest event id ever drawn, committed or not, still kept or deleted (0 before the
/// first): no cursor of the log's can be past it.
pub async fn last_drawn(db: impl PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'id')::regclass), 0) AS "id!""#
    )
    .fetch_one(db)
    .await
}

/// Deletes at most `limit` of the events sent before `before`, oldest first; gives how many.
pub async fn delete_sent_before(
    db: impl PgExecutor<'_>,
    before: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<u64> {
    let deleted = sqlx::query!(
        "DELETE FROM events WHERE id IN
           (SELECT id FROM events WHERE sent_at < $1 ORDER BY id LIMIT $2)",
        before,
        limit
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}
