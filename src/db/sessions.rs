//! `sessions` (the API sessions handed out at login, kept as SHA-256 hashes of their tokens)
//! and `sso_states` (logins under way: the hash of each `state` with its PKCE verifier).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A session that is neither ended nor expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSession {
    pub character_id: i64,
    pub expires_at: DateTime<Utc>,
}

pub async fn create(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    character_id: i64,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO sessions (token_hash, character_id, expires_at) VALUES ($1, $2, $3)",
        token_hash,
        character_id,
        expires_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The session of `token_hash`, if it is live.
pub async fn find(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<LiveSession>> {
    sqlx::query_as!(
        LiveSession,
        "SELECT character_id, expires_at FROM sessions
         WHERE token_hash = $1 AND ended_at IS NULL AND expires_at > now()",
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// Ends the session of `token_hash`; returns its character if it was live.
pub async fn end(db: impl PgExecutor<'_>, token_hash: &[u8]) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "UPDATE sessions SET ended_at = now()
         WHERE token_hash = $1 AND ended_at IS NULL AND expires_at > now()
         RETURNING character_id",
        token_hash
    )
    .fetch_optional(db)
    .await
}

/// Ends every live session of `character_id`.
pub async fn end_all(db: impl PgExecutor<'_>, character_id: i64) -> sqlx::Result<u64> {
    let ended = sqlx::query!(
        "UPDATE sessions SET ended_at = now()
         WHERE character_id = $1 AND ended_at IS NULL AND expires_at > now()",
        character_id
    )
    .execute(db)
    .await?;
    Ok(ended.rows_affected())
}

/// Which of `token_hashes` are still live sessions.
pub async fn live_among(
    db: impl PgExecutor<'_>,
    token_hashes: &[Vec<u8>],
) -> sqlx::Result<Vec<Vec<u8>>> {
    sqlx::query_scalar!(
        "SELECT token_hash FROM sessions
         WHERE token_hash = ANY($1) AND ended_at IS NULL AND expires_at > now()",
        token_hashes
    )
    .fetch_all(db)
    .await
}

/// Forgets sessions that ended or expired before `before`.
pub async fn delete_dead(db: impl PgExecutor<'_>, before: DateTime<Utc>) -> sqlx::Result<u64> {
    let deleted = sqlx::query!(
        "DELETE FROM sessions WHERE expires_at < $1 OR ended_at < $1",
        before
    )
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}

/// Keeps a login under way: the hash of its `state` and its PKCE verifier; forgets those
/// that expired.
pub async fn insert_state(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
    code_verifier: &str,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query!(
        "WITH gone AS (DELETE FROM sso_states WHERE expires_at < now())
         INSERT INTO sso_states (state_hash, code_verifier, expires_at) VALUES ($1, $2, $3)",
        state_hash,
        code_verifier,
        expires_at
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Takes the login of `state_hash`: its PKCE verifier if it exists and has not expired. It is
/// gone afterwards either way, so a `state` works once.
pub async fn take_state(
    db: impl PgExecutor<'_>,
    state_hash: &[u8],
) -> sqlx::Result<Option<String>> {
    let taken = sqlx::query!(
        "DELETE FROM sso_states WHERE state_hash = $1
         RETURNING code_verifier, expires_at > now() AS \"live!\"",
        state_hash
    )
    .fetch_optional(db)
    .await?;
    Ok(taken.filter(|t| t.live).map(|t| t.code_verifier))
}
