//! The sync of pilots' own history (worker-user-killmails): which logins are due (claimed by
//! one scheduler at a time), what a sync needs to know of a login, and what it records after:
//! `sso_logins.last_sync_at` and `newest_killmail_id`, and the newest killmail of each
//! director's corporation (`user_sync_corporations`).

use std::time::Duration;

use sqlx::{PgExecutor, Postgres, Transaction};

use crate::killmail::KillmailId;

/// Arbitrary, but fixed: the advisory lock a scheduler takes for its claim.
const SCHEDULE_LOCK: i64 = 0x006b_7275_7379_6e63;

/// What a sync reads of a login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub character_id: i64,
    pub scopes: Vec<String>,
    pub needs_login: bool,
    pub newest_killmail_id: Option<KillmailId>,
}

pub async fn login(db: impl PgExecutor<'_>, character_id: i64) -> sqlx::Result<Option<Login>> {
    let row = sqlx::query!(
        "SELECT character_id, scopes, needs_login, newest_killmail_id
         FROM sso_logins WHERE character_id = $1",
        character_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|row| Login {
        character_id: row.character_id,
        scopes: row.scopes,
        needs_login: row.needs_login,
        newest_killmail_id: row.newest_killmail_id.map(KillmailId),
    }))
}

/// The logins among `ids` (every login when `None`), each with whether it needs its pilot
/// to log in again.
pub async fn logins(
    db: impl PgExecutor<'_>,
    ids: Option<&[i64]>,
) -> sqlx::Result<Vec<(i64, bool)>> {
    let rows = sqlx::query!(
        "SELECT character_id, needs_login FROM sso_logins
         WHERE $1::int8[] IS NULL OR character_id = ANY($1)
         ORDER BY character_id",
        ids as Option<&[i64]>
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.character_id, row.needs_login))
        .collect())
}

/// Records the corporation and alliance of `character_id` as ESI gave them.
pub async fn set_affiliation(
    db: impl PgExecutor<'_>,
    character_id: i64,
    corporation_id: i64,
    alliance_id: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE sso_logins SET corporation_id = $2, alliance_id = $3, updated_at = now()
         WHERE character_id = $1
           AND (corporation_id, alliance_id) IS DISTINCT FROM ($2, $3)",
        character_id,
        corporation_id,
        alliance_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The newest killmail of `corporation_id` a director's sync found.
pub async fn corporation_newest(
    db: impl PgExecutor<'_>,
    corporation_id: i64,
) -> sqlx::Result<Option<KillmailId>> {
    let newest = sqlx::query_scalar!(
        "SELECT newest_killmail_id FROM user_sync_corporations WHERE corporation_id = $1",
        corporation_id
    )
    .fetch_optional(db)
    .await?;
    Ok(newest.map(KillmailId))
}

/// Records a finished sync of `character_id`: synced now, its newest killmail `newest` (kept
/// if older than the one recorded: syncs may overlap), and its corporation's newest when it
/// read that too.
pub async fn record_sync(
    tx: &mut Transaction<'_, Postgres>,
    character_id: i64,
    newest: Option<KillmailId>,
    corporation: Option<(i64, KillmailId)>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE sso_logins
         SET last_sync_at = now(),
             newest_killmail_id = GREATEST(newest_killmail_id, $2),
             updated_at = now()
         WHERE character_id = $1",
        character_id,
        newest.map(|id| id.0)
    )
    .execute(&mut **tx)
    .await?;
    if let Some((corporation_id, newest)) = corporation {
        sqlx::query!(
            "INSERT INTO user_sync_corporations (corporation_id, newest_killmail_id)
             VALUES ($1, $2)
             ON CONFLICT (corporation_id) DO UPDATE
             SET newest_killmail_id = GREATEST(user_sync_corporations.newest_killmail_id,
                                               excluded.newest_killmail_id),
                 synced_at = now()",
            corporation_id,
            newest.0
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Claims up to `limit` logins due for a sync, oldest sync first, in `tx`: those never synced
/// (a pilot who just logged in) and those last synced longer than `interval` ago, unless
/// their pilot must log in again or their job was queued within `interval`. Returns `None`
/// when another scheduler holds the claim (its transaction still open).
pub async fn claim_due(
    tx: &mut Transaction<'_, Postgres>,
    interval: Duration,
    limit: i64,
) -> sqlx::Result<Option<Vec<i64>>> {
    let locked = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
        SCHEDULE_LOCK
    )
    .fetch_one(&mut **tx)
    .await?;
    if !locked {
        return Ok(None);
    }
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let claimed = sqlx::query_scalar!(
        "WITH due AS (
             SELECT l.character_id
             FROM sso_logins l LEFT JOIN user_sync_queued q USING (character_id)
             WHERE NOT l.needs_login
               AND (l.last_sync_at IS NULL
                    OR l.last_sync_at < now() - $1::int8 * interval '1 millisecond')
               AND (q.queued_at IS NULL
                    OR q.queued_at < now() - $1::int8 * interval '1 millisecond')
             ORDER BY l.last_sync_at NULLS FIRST, l.character_id
             LIMIT $2
         )
         INSERT INTO user_sync_queued (character_id, queued_at)
         SELECT character_id, now() FROM due
         ON CONFLICT (character_id) DO UPDATE SET queued_at = excluded.queued_at
         RETURNING character_id",
        interval_ms,
        limit
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(Some(claimed))
}
