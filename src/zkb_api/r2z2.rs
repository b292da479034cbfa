//! R2Z2 at `/ephemeral/`: `sequence.json` names the newest `seq`, `{N}.json` is the R2Z2 object of
//! the killmail with `seq` N. Objects never change, so they are cacheable for good; so is the
//! answer for a number the store skipped (a rolled-back batch draws numbers and keeps none):
//! numbers become visible in the order drawn, so once a later killmail is stored a missing N
//! never comes, and `N.json` redirects to the next stored object, whose `sequence_id` says where
//! the follower is. `sequence.json` and a 404 (not stored yet) are cached for a second at most.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::PgPool;

use super::{cached, refusal, store_failed, zkb_with_hash};
use crate::db::killmails;
use crate::killmail::Seq;

/// For objects and the redirects over skipped numbers: they never change.
const FOREVER: &str = "public, max-age=31536000, immutable";
/// For the head of the feed.
const BRIEFLY: &str = "public, max-age=1";

/// `GET /ephemeral/sequence.json` → `{"sequence": N}`, the newest.
pub async fn sequence(State(pool): State<PgPool>) -> Response {
    match killmails::latest_seq(&pool).await {
        Ok(newest) => cached(BRIEFLY, axum::Json(json!({ "sequence": newest.0 }))),
        Err(error) => store_failed(&error),
    }
}

/// `GET /ephemeral/{N}.json`.
pub async fn object(State(pool): State<PgPool>, Path(file): Path<String>) -> Response {
    let Some(wanted) = file
        .strip_suffix(".json")
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n > 0)
    else {
        let reason = "no such file: objects are /ephemeral/{N}.json, N a positive sequence";
        return refusal(StatusCode::NOT_FOUND, reason);
    };
    match find(&pool, Seq(wanted)).await {
        Ok(Found::Object(object)) => cached(FOREVER, axum::Json(object)),
        Ok(Found::Skipped(next)) => cached(
            FOREVER,
            (
                StatusCode::FOUND,
                [(header::LOCATION, format!("{}.json", next.0))],
            ),
        ),
        Ok(Found::NotYet) => cached(
            BRIEFLY,
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "error": format!("sequence {wanted} is not stored yet") })),
            ),
        )
        .into_response(),
        Err(error) => store_failed(&error),
    }
}

enum Found {
    Object(serde_json::Value),
    /// The store never filled the number asked for; this is the next one it did.
    Skipped(Seq),
    NotYet,
}

async fn find(pool: &PgPool, wanted: Seq) -> sqlx::Result<Found> {
    let mut connection = pool.acquire().await?;
    let Some(stored) = killmails::since(&mut connection, Seq(wanted.0 - 1), 1)
        .await?
        .pop()
    else {
        return Ok(Found::NotYet);
    };
    if stored.seq != wanted {
        return Ok(Found::Skipped(stored.seq));
    }
    let uploaded_at = killmails::ingested_at(&mut *connection, stored.seq)
        .await?
        .map(|at| at.timestamp());
    Ok(Found::Object(json!({
        "killmail_id": stored.killmail.killmail_id.0,
        "hash": stored.hash,
        "esi": stored.killmail,
        "zkb": zkb_with_hash(stored.zkb.as_ref(), Some(&stored.hash)),
        "uploaded_at": uploaded_at,
        "sequence_id": stored.seq.0,
    })))
}
