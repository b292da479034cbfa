//! `Query.me`: the logged-in pilot as killreport knows them.

use async_graphql::{Context, ID, Object, Result};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::types::{Alliance, Character, Corporation};
use super::{hidden, internal, rights};
use crate::db;
use crate::db::logins::Login;

pub struct Me {
    login: Login,
    corporation_id: Option<i64>,
    alliance_id: Option<i64>,
    session_expires_at: DateTime<Utc>,
    admin: bool,
}

/// The caller's login (`UNAUTHENTICATED` without a session).
pub async fn me(ctx: &Context<'_>) -> Result<Me> {
    let session = rights::session(ctx)?;
    let pool = ctx.data::<PgPool>()?;
    let login = db::logins::get(pool, session.character_id)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            tracing::error!(
                character.id = session.character_id,
                "a session without its login"
            );
            hidden("internal error: your login is gone; log in again")
        })?;
    // Where the login does not say, the affiliation on the pilot's newest killmail.
    let (corporation_id, alliance_id) = match login.corporation_id {
        Some(corporation) => (Some(corporation), login.alliance_id),
        None => db::entities::character_affiliation(pool, login.character_id)
            .await
            .map_err(internal)?
            .unwrap_or_default(),
    };
    Ok(Me {
        login,
        corporation_id,
        alliance_id,
        session_expires_at: session.expires_at,
        admin: session.admin,
    })
}

/// The logged-in pilot.
#[Object]
impl Me {
    async fn character_id(&self) -> ID {
        ID(self.login.character_id.to_string())
    }
    async fn character_name(&self) -> &str {
        &self.login.character_name
    }
    async fn character(&self) -> Character {
        Character {
            id: self.login.character_id,
            corporation_id: self.corporation_id,
            alliance_id: self.alliance_id,
            node: None,
        }
    }
    async fn corporation(&self) -> Option<Corporation> {
        self.corporation_id.map(|id| Corporation {
            id,
            alliance_id: self.alliance_id,
            node: None,
        })
    }
    async fn alliance(&self) -> Option<Alliance> {
        self.alliance_id.map(|id| Alliance { id, node: None })
    }
    /// The scopes the pilot granted at login.
    async fn scopes(&self) -> &[String] {
        &self.login.scopes
    }
    /// When the pilot's own killmail history was last read from ESI.
    async fn last_sync_at(&self) -> Option<DateTime<Utc>> {
        self.login.last_sync_at
    }
    /// The SSO refused the pilot's token (or they logged out): log in again for the history
    /// to be synced.
    async fn needs_login(&self) -> bool {
        self.login.needs_login
    }
    async fn session_expires_at(&self) -> DateTime<Utc> {
        self.session_expires_at
    }
    /// Whether the pilot may run the operational mutations.
    async fn admin(&self) -> bool {
        self.admin
    }
}
