//! `/auth/login`, `/auth/callback` and `/auth/logout` on `server` (DESIGN.md, "Endpoints of
//! `server`"). Login keeps a random `state` (hashed, ten minutes, single use) with its PKCE
//! verifier in PostgreSQL, so any server process can take the callback; the callback verifies
//! what the SSO granted, records the login with its tokens sealed and opens an API session;
//! logout ends the session and revokes the refresh token at the SSO. Failures answer a JSON
//! `{"error": …}` saying what to do, never internal detail.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;

use super::Auth;
use super::sessions::{self, Sessions, bearer, random_token};
use super::sso::SsoError;
use super::tokens;
use crate::db;

/// How long a login may take between `/auth/login` and the callback.
const STATE_TTL: Duration = Duration::from_secs(600);

/// What the routes need; without an SSO configured they answer 503.
#[derive(Clone)]
pub struct Login {
    pub auth: Option<Auth>,
    pub pool: PgPool,
    pub sessions: Sessions,
    /// Scopes asked of the pilot.
    pub scopes: Vec<String>,
    /// Where the callback sends the browser with `#token=…`; `None`: it answers JSON.
    pub redirect: Option<String>,
}

pub fn routes(login: Login) -> Router {
    Router::new()
        .route("/auth/login", get(start))
        .route("/auth/callback", get(callback))
        .route("/auth/logout", get(logout).post(logout))
        .with_state(login)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn not_configured() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "login is not configured on this server (EVE_CLIENT_ID, EVE_CLIENT_SECRET, TOKEN_KEY)",
    )
}

/// A failure on our side: logged once, the client told only what to do.
fn internal(what: &str, failure: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %failure, "{what}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; try logging in again shortly",
    )
}

/// The PKCE S256 challenge of `verifier`.
pub fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

async fn start(State(login): State<Login>) -> Response {
    let Some(auth) = &login.auth else {
        return not_configured();
    };
    let (state, verifier) = (random_token(), random_token());
    let expires_at = Utc::now() + chrono::TimeDelta::from_std(STATE_TTL).unwrap_or_default();
    let kept =
        db::sessions::insert_state(&login.pool, &sessions::hash(&state), &verifier, expires_at)
            .await;
    if let Err(e) = kept {
        return internal("keeping a login's state failed", &e);
    }
    let url = auth
        .sso
        .authorize_url(&state, &pkce_challenge(&verifier), &login.scopes);
    Redirect::to(&url).into_response()
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    /// The SSO's own error (the pilot declined, for one).
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(State(login): State<Login>, Query(query): Query<CallbackQuery>) -> Response {
    let Some(auth) = &login.auth else {
        return not_configured();
    };
    if let Some(sso_error) = query.error {
        let detail = query.error_description.unwrap_or_default();
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "the SSO did not log you in ({sso_error}: {detail}); start again at /auth/login"
            ),
        );
    }
    let (Some(code), Some(state)) = (query.code, query.state) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the callback needs `code` and `state` from the SSO; start at /auth/login",
        );
    };
    let verifier = match db::sessions::take_state(&login.pool, &sessions::hash(&state)).await {
        Ok(Some(verifier)) => verifier,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unknown, used or expired `state`; start again at /auth/login",
            );
        }
        Err(e) => return internal("taking a login's state failed", &e),
    };
    let grant = match auth.sso.exchange_code(&code, &verifier).await {
        Ok(grant) => grant,
        Err(SsoError::Refused(reason)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the SSO refused the login ({reason}); start again at /auth/login"),
            );
        }
        Err(e @ SsoError::Invalid(_)) => {
            tracing::warn!(error = %e, "the SSO's token did not verify");
            return error(
                StatusCode::BAD_GATEWAY,
                "the SSO's token did not verify; start again at /auth/login",
            );
        }
        Err(e @ SsoError::Unavailable(_)) => {
            tracing::warn!(error = %e, "the SSO could not be reached for a login");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the EVE SSO is unavailable; try again shortly",
            );
        }
    };
    let character = &grant.character;
    let recorded = async {
        let mut tx = login.pool.begin().await?;
        if tokens::remember(&mut *tx, auth, &grant).await? {
            // The character changed hands: its former owner's sessions end.
            db::sessions::end_all(&mut *tx, character.character_id).await?;
        }
        tx.commit().await?;
        login.sessions.open(character.character_id).await
    };
    let (token, _) = match recorded.await {
        Ok(opened) => opened,
        Err(e) => return internal("recording a login failed", &e),
    };
    tracing::info!(
        character.id = character.character_id,
        scopes = character.scopes.len(),
        "a pilot logged in"
    );
    match &login.redirect {
        Some(redirect) => {
            Redirect::to(&format!("{redirect}#token={}", token.expose())).into_response()
        }
        None => Json(json!({
            "token": token.expose(),
            "characterId": character.character_id,
            "characterName": character.character_name,
        }))
        .into_response(),
    }
}

async fn logout(State(login): State<Login>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "send the session as Authorization: Bearer <token>",
        );
    };
    let character_id = match login.sessions.end(token).await {
        Ok(Some(character_id)) => character_id,
        Ok(None) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unknown, expired or ended session",
            );
        }
        Err(e) => return internal("ending a session failed", &e),
    };
    let revoked = match &login.auth {
        Some(auth) => match tokens::revoke(&login.pool, auth, character_id).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(character.id = character_id, error = %e, "revoking a refresh token at logout failed");
                false
            }
        },
        None => false,
    };
    Json(json!({ "loggedOut": true, "characterId": character_id, "revoked": revoked }))
        .into_response()
}
