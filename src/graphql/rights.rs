//! Who may ask: resolvers that need a logged-in pilot or an admin read the request's
//! [`Caller`] (set by the HTTP and WebSocket layers from the session token) through these, and
//! refuse with `UNAUTHENTICATED` or `FORBIDDEN`.

use async_graphql::{Context, ErrorExtensions, Result};

use crate::auth::sessions::{Caller, Session};

fn refused(message: &str, code: &'static str) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// The caller's live session, or `UNAUTHENTICATED` saying how to get one.
pub fn session<'c>(ctx: &Context<'c>) -> Result<&'c Session> {
    match ctx.data_opt::<Caller>() {
        Some(Caller::Known(session)) => Ok(session),
        Some(Caller::Refused) => Err(refused(
            "the session token is unknown, expired or ended; log in again at /auth/login",
            "UNAUTHENTICATED",
        )),
        Some(Caller::Anonymous) | None => Err(refused(
            "log in first (/auth/login), then send the session as `Authorization: Bearer <token>` (over WebSocket: in connection_init's payload)",
            "UNAUTHENTICATED",
        )),
    }
}

/// The caller's session if it is an admin's (`ADMIN_CHARACTER_IDS`), else `FORBIDDEN`.
pub fn admin<'c>(ctx: &Context<'c>) -> Result<&'c Session> {
    let session = session(ctx)?;
    if session.admin {
        Ok(session)
    } else {
        Err(refused(
            "only the characters in ADMIN_CHARACTER_IDS may do this",
            "FORBIDDEN",
        ))
    }
}
