//! The announcement outbox (table `pending_announcements`): filled by `killmails::store_encoded`
//! in the killmail's own transaction, emptied by whoever publishes the event. Claiming deletes
//! the rows inside the publisher's transaction, so two publishers never both announce one
//! killmail, and a failed publish (rolled back) leaves the rows for the next attempt.

use sqlx::PgConnection;

use crate::killmail::{KillmailId, Seq};

/// Claims these killmails' announcements; returns the ones still pending (not yet claimed).
pub async fn claim(tx: &mut PgConnection, seqs: &[Seq]) -> sqlx::Result<Vec<Seq>> {
    let seqs: Vec<i64> = seqs.iter().map(|s| s.0).collect();
    let claimed = sqlx::query_scalar!(
        "DELETE FROM pending_announcements WHERE seq = ANY($1) RETURNING seq",
        &seqs
    )
    .fetch_all(tx)
    .await?;
    Ok(claimed.into_iter().map(Seq).collect())
}

/// Claims up to `limit` announcements pending for longer than `older_than_ms`, oldest first,
/// skipping any another publisher holds.
pub async fn claim_overdue(
    tx: &mut PgConnection,
    older_than_ms: i64,
    limit: i64,
) -> sqlx::Result<Vec<KillmailId>> {
    let claimed = sqlx::query_scalar!(
        "DELETE FROM pending_announcements WHERE seq IN (
             SELECT seq FROM pending_announcements
             WHERE created_at < now() - make_interval(secs => $1::float8 / 1000)
             ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING killmail_id",
        older_than_ms as f64,
        limit
    )
    .fetch_all(tx)
    .await?;
    Ok(claimed.into_iter().map(KillmailId).collect())
}
