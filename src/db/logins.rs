//! `sso_logins`: one row per character that logged in with EVE SSO. Tokens come and go here
//! only sealed (see `auth::cipher`); this module never sees them in clear.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A login as the token endpoint just granted it, tokens sealed.
#[derive(Debug)]
pub struct NewLogin<'a> {
    pub character_id: i64,
    pub character_name: &'a str,
    pub owner_hash: &'a str,
    pub scopes: &'a [String],
    pub refresh_token: &'a [u8],
    pub access_token: &'a [u8],
    pub access_expires_at: DateTime<Utc>,
}

/// A character's sealed tokens.
#[derive(Debug)]
pub struct SealedTokens {
    pub refresh_token: Vec<u8>,
    pub access_token: Vec<u8>,
    pub access_expires_at: DateTime<Utc>,
    pub needs_login: bool,
}

/// What killreport knows of a logged-in character (no tokens).
#[derive(Debug, Clone)]
pub struct Login {
    pub character_id: i64,
    pub character_name: String,
    pub scopes: Vec<String>,
    pub corporation_id: Option<i64>,
    pub alliance_id: Option<i64>,
    pub needs_login: bool,
    pub last_sync_at: Option<DateTime<Utc>>,
}

/// Records a login (a new one, or the same character again: its tokens replaced and any
/// earlier refusal forgotten). Returns the owner hash the row had before, if any.
pub async fn upsert(db: impl PgExecutor<'_>, login: &NewLogin<'_>) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        r#"WITH before AS (
               SELECT owner_hash FROM sso_logins WHERE character_id = $1 FOR UPDATE
           )
           INSERT INTO sso_logins (character_id, character_name, owner_hash, scopes,
                                   refresh_token, access_token, access_expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (character_id) DO UPDATE SET
               character_name = excluded.character_name, owner_hash = excluded.owner_hash,
               scopes = excluded.scopes, refresh_token = excluded.refresh_token,
               access_token = excluded.access_token,
               access_expires_at = excluded.access_expires_at,
               needs_login = false, refused_at = NULL, updated_at = now()
           RETURNING (SELECT owner_hash FROM before) AS "before?""#,
        login.character_id,
        login.character_name,
        login.owner_hash,
        login.scopes,
        login.refresh_token,
        login.access_token,
        login.access_expires_at,
    )
    .fetch_one(db)
    .await
}

/// The sealed tokens of `character_id`, the row locked until the transaction ends, so that
/// one refresh at a time uses (and rotates) its refresh token.
pub async fn tokens_for_update(
    db: impl PgExecutor<'_>,
    character_id: i64,
) -> sqlx::Result<Option<SealedTokens>> {
    sqlx::query_as!(
        SealedTokens,
        "SELECT refresh_token, access_token, access_expires_at, needs_login
         FROM sso_logins WHERE character_id = $1 FOR UPDATE",
        character_id
    )
    .fetch_optional(db)
    .await
}

/// The sealed tokens of `character_id`, read without a lock.
pub async fn tokens(
    db: impl PgExecutor<'_>,
    character_id: i64,
) -> sqlx::Result<Option<SealedTokens>> {
    sqlx::query_as!(
        SealedTokens,
        "SELECT refresh_token, access_token, access_expires_at, needs_login
         FROM sso_logins WHERE character_id = $1",
        character_id
    )
    .fetch_optional(db)
    .await
}

/// Stores what a refresh granted.
pub async fn store_refreshed(
    db: impl PgExecutor<'_>,
    character_id: i64,
    refresh_token: &[u8],
    access_token: &[u8],
    access_expires_at: DateTime<Utc>,
    scopes: &[String],
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE sso_logins SET refresh_token = $2, access_token = $3, access_expires_at = $4,
                scopes = $5, updated_at = now()
         WHERE character_id = $1",
        character_id,
        refresh_token,
        access_token,
        access_expires_at,
        scopes,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The SSO refused the character's refresh token: nothing works until the pilot logs in again.
pub async fn mark_needs_login(db: impl PgExecutor<'_>, character_id: i64) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE sso_logins SET needs_login = true, refused_at = now(), updated_at = now()
         WHERE character_id = $1",
        character_id
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn get(db: impl PgExecutor<'_>, character_id: i64) -> sqlx::Result<Option<Login>> {
    sqlx::query_as!(
        Login,
        "SELECT character_id, character_name, scopes, corporation_id, alliance_id, needs_login,
                last_sync_at
         FROM sso_logins WHERE character_id = $1",
        character_id
    )
    .fetch_optional(db)
    .await
}
