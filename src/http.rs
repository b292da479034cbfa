//! The HTTP surface of `server`: health and readiness now; `/graphql` joins them with the
//! GraphQL server.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub redis: EventPublisher,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// 200 when PostgreSQL and Redis both answer within a second; 503 naming the one that does not.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let limit = Duration::from_secs(1);
    let postgres = tokio::time::timeout(limit, sqlx::query("SELECT 1").execute(&state.pool))
        .await
        .is_ok_and(|r| r.is_ok());
    let redis = tokio::time::timeout(limit, state.redis.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let status = if postgres && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |up: bool| if up { "up" } else { "down" };
    (
        status,
        Json(json!({ "postgres": word(postgres), "redis": word(redis) })),
    )
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
