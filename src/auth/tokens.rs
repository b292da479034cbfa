//! A logged-in character's tokens as the rest of killreport uses them: recording what a login
//! granted (sealed), and handing out a valid access token, refreshed first when it expires
//! within a minute. The refresh runs with the login's row locked, so two workers never spend
//! the same refresh token; the rotated refresh token is stored sealed; a refresh token the SSO
//! refuses marks the login `needs_login`.

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::PgPool;

use super::Auth;
use super::cipher::CipherError;
use super::sso::{Grant, Secret, SsoError};
use crate::db::logins::{self, NewLogin};

/// An access token is refreshed when it expires within this.
pub const REFRESH_MARGIN: TimeDelta = TimeDelta::seconds(60);

/// A valid access token for ESI calls on the character's behalf.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("character {0} never logged in")]
    NotLoggedIn(i64),
    /// The SSO refused its refresh token (or the pilot logged out): it must log in again.
    #[error("character {0} must log in again")]
    NeedsLogin(i64),
    /// The SSO is down or answered nonsense: try again later.
    #[error(transparent)]
    Sso(SsoError),
    #[error(transparent)]
    Cipher(#[from] CipherError),
    #[error("reading the login: {0}")]
    Database(#[from] sqlx::Error),
}

impl TokenError {
    /// Whether trying again later may succeed (the SSO or the database was unavailable).
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::Sso(_) | TokenError::Database(_))
    }
}

/// Records a login the token endpoint granted, its tokens sealed; returns whether the character
/// had logged in from another EVE account before (its owner hash changed), in which case the
/// caller ends the sessions the old owner held.
pub async fn remember(
    db: impl sqlx::PgExecutor<'_>,
    auth: &Auth,
    grant: &Grant,
) -> sqlx::Result<bool> {
    let character = &grant.character;
    let id = character.character_id;
    let before = logins::upsert(
        db,
        &NewLogin {
            character_id: id,
            character_name: &character.character_name,
            owner_hash: &character.owner_hash,
            scopes: &character.scopes,
            refresh_token: &auth.cipher.seal(id, grant.refresh_token.expose()),
            access_token: &auth.cipher.seal(id, grant.access_token.expose()),
            access_expires_at: character.expires_at,
        },
    )
    .await?;
    Ok(before.is_some_and(|owner| owner != character.owner_hash))
}

/// A valid access token of `character_id`: the stored one while it has over a minute to live,
/// else a fresh one from the SSO (the rotated refresh token stored, sealed).
pub async fn access_token(
    pool: &PgPool,
    auth: &Auth,
    character_id: i64,
) -> Result<AccessToken, TokenError> {
    let stored = logins::tokens(pool, character_id)
        .await?
        .ok_or(TokenError::NotLoggedIn(character_id))?;
    if stored.needs_login {
        return Err(TokenError::NeedsLogin(character_id));
    }
    if stored.access_expires_at - REFRESH_MARGIN > Utc::now() {
        return open_access(
            auth,
            character_id,
            &stored.access_token,
            stored.access_expires_at,
        );
    }
    let mut tx = pool.begin().await?;
    let stored = logins::tokens_for_update(&mut *tx, character_id)
        .await?
        .ok_or(TokenError::NotLoggedIn(character_id))?;
    if stored.needs_login {
        return Err(TokenError::NeedsLogin(character_id));
    }
    // Another process may have refreshed it while this one waited for the lock.
    if stored.access_expires_at - REFRESH_MARGIN > Utc::now() {
        return open_access(
            auth,
            character_id,
            &stored.access_token,
            stored.access_expires_at,
        );
    }
    let refresh_token = Secret::new(auth.cipher.open(character_id, &stored.refresh_token)?);
    match auth.sso.refresh(&refresh_token).await {
        Ok(grant) if grant.character.character_id == character_id => {
            let character = &grant.character;
            logins::store_refreshed(
                &mut *tx,
                character_id,
                &auth.cipher.seal(character_id, grant.refresh_token.expose()),
                &auth.cipher.seal(character_id, grant.access_token.expose()),
                character.expires_at,
                &character.scopes,
            )
            .await?;
            tx.commit().await?;
            Ok(AccessToken {
                token: grant.access_token,
                expires_at: character.expires_at,
            })
        }
        Ok(grant) => Err(TokenError::Sso(SsoError::Invalid(format!(
            "refreshing character {character_id} gave a token for {}",
            grant.character.character_id
        )))),
        Err(SsoError::Refused(reason)) => {
            tracing::warn!(character.id = character_id, %reason, "the SSO refused a refresh token; the pilot must log in again");
            logins::mark_needs_login(&mut *tx, character_id).await?;
            tx.commit().await?;
            Err(TokenError::NeedsLogin(character_id))
        }
        Err(error) => Err(TokenError::Sso(error)),
    }
}

/// Revokes the refresh token of `character_id` at the SSO (logout): the login is marked as
/// needing the pilot first, so nothing uses the token meanwhile.
pub async fn revoke(pool: &PgPool, auth: &Auth, character_id: i64) -> Result<(), TokenError> {
    let stored = logins::tokens(pool, character_id)
        .await?
        .ok_or(TokenError::NotLoggedIn(character_id))?;
    let refresh_token = Secret::new(auth.cipher.open(character_id, &stored.refresh_token)?);
    logins::mark_needs_login(pool, character_id).await?;
    auth.sso
        .revoke(&refresh_token)
        .await
        .map_err(TokenError::Sso)
}

fn open_access(
    auth: &Auth,
    character_id: i64,
    sealed: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<AccessToken, TokenError> {
    Ok(AccessToken {
        token: Secret::new(auth.cipher.open(character_id, sealed)?),
        expires_at,
    })
}
