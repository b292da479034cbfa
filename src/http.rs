//! The HTTP surface of `server`: `/graphql` (GraphiQL on a plain GET, a WebSocket on an upgrade
//! speaking `graphql-transport-ws` or the legacy `graphql-ws`, queries on POST), GraphiQL's
//! assets, `/healthz` and `/readyz`.

use std::time::Duration;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;
use crate::graphql::KillreportSchema;

/// Largest POST body accepted on `/graphql`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub redis: EventPublisher,
    pub schema: KillreportSchema,
    /// Cancelled at shutdown: every WebSocket is then closed with 1001 (going away).
    pub shutdown: CancellationToken,
}

/// Messages queued for one WebSocket before its subscriptions wait for the client to read.
const SEND_BUFFER: usize = 256;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/graphql",
            get(graphql_get)
                .post(graphql_post)
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(crate::graphiql::assets())
}

/// A WebSocket upgrade becomes a GraphQL subscription connection; anything else gets GraphiQL.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    if !parts.headers.contains_key(header::UPGRADE) {
        return crate::graphiql::page().into_response();
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let Ok(protocol) = GraphQLProtocol::from_request_parts(&mut parts, &()).await else {
        return (
            StatusCode::BAD_REQUEST,
            "ask for the graphql-transport-ws or graphql-ws subprotocol",
        )
            .into_response();
    };
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_socket(socket, state, protocol))
}

/// Runs one GraphQL WebSocket. Its input ends at shutdown, and what is written goes through a
/// bounded queue to a writer that then says goodbye with close code 1001.
async fn serve_socket(socket: WebSocket, state: AppState, protocol: GraphQLProtocol) {
    let (mut sink, stream) = socket.split();
    let (queue, mut queued) = futures::channel::mpsc::channel::<Message>(SEND_BUFFER);
    let input = stream.take_until(state.shutdown.clone().cancelled_owned());
    let protocol_side = GraphQLWebSocket::new_with_pair(queue, input, state.schema, protocol)
        .keepalive_timeout(Duration::from_secs(30))
        .serve();
    let shutdown = state.shutdown;
    let writer = async move {
        while let Some(message) = queued.next().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        if shutdown.is_cancelled() {
            let goodbye = CloseFrame {
                code: close_code::AWAY,
                reason: "server shutting down".into(),
            };
            sink.send(Message::Close(Some(goodbye))).await.ok();
        }
        sink.close().await.ok();
    };
    futures::join!(protocol_side, writer);
}

/// Runs one query; the body is a GraphQL-over-HTTP JSON request.
async fn graphql_post(State(state): State<AppState>, body: Bytes) -> Response {
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let message = format!("the body is not a GraphQL request: {error}");
            let body = json!({ "errors": [{ "message": message, "extensions": { "code": "BAD_REQUEST" } }] });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    Json(state.schema.execute(request).await).into_response()
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
