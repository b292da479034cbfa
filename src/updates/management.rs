//! The management API on `MANAGEMENT_ADDR` (loopback by default): `POST /events` sends an event
//! (into the event log, then the bus rung), so it reaches the `/updates` clients of every
//! server process. Anything else is
//! 404, so the port shows nothing beyond that one door.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::bus::{SendError, send_event};

/// The largest event body accepted; larger ones get 413.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Where posted events go: the event log's store, a Redis connection and the bus channel.
#[derive(Clone)]
pub struct Management {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub channel: String,
}

pub fn router(management: Management) -> Router {
    Router::new()
        .route(
            "/events",
            post(post_event).layer(DefaultBodyLimit::max(MAX_EVENT_BYTES)),
        )
        .method_not_allowed_fallback(not_found)
        .fallback(not_found)
        .with_state(management)
}

async fn not_found() -> Response {
    reason(
        StatusCode::NOT_FOUND,
        "not found: the one endpoint is POST /events",
    )
}

fn reason(status: StatusCode, reason: &str) -> Response {
    (
        status,
        axum::Json(json!({ "success": false, "error": reason })),
    )
        .into_response()
}

/// `{"type": "<non-empty string>", "data": <any JSON>}` → `{"success": true}`.
async fn post_event(State(mut management): State<Management>, body: Bytes) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => {
            let message = format!("the body is not JSON: {error}");
            return reason(StatusCode::BAD_REQUEST, &message);
        }
    };
    let Some(kind) = body.get("type").and_then(Value::as_str) else {
        let message = "the body needs a `type`: a non-empty string";
        return reason(StatusCode::BAD_REQUEST, message);
    };
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let channel = management.channel.clone();
    let pool = management.pool.clone();
    match send_event(&pool, &mut management.redis, &channel, kind, data).await {
        Ok(_) => axum::Json(json!({ "success": true })).into_response(),
        Err(SendError::Invalid(message)) => reason(StatusCode::BAD_REQUEST, &message),
        Err(error @ SendError::Store(_)) => {
            tracing::error!(%error, "an event could not be logged");
            let message = "the event log is unavailable; try again";
            reason(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}
