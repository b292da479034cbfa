//! The HTTP surface of `server`: `/graphql` (GraphiQL on a plain GET, a WebSocket on an upgrade
//! speaking `graphql-transport-ws` or the legacy `graphql-ws`, queries on POST), GraphiQL's
//! assets, `/updates` (see `updates`), zKillboard's RedisQ, R2Z2 and websocket (see `zkb_api`),
//! and `/healthz`, `/readyz` and `/metrics` (see `health`). Every request is counted and timed by
//! the route it matched (`telemetry::HTTP_REQUESTS`).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::graphql::KillreportSchema;
use crate::health::Readiness;
use crate::telemetry;
use crate::updates::Updates;
use crate::ws::WsService;
use crate::zkb_api::ZkbApi;

/// Largest POST body accepted on `/graphql`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub schema: KillreportSchema,
    /// Subscriptions over WebSocket; closes every socket with 1001 (going away) at shutdown.
    pub ws: WsService,
    /// The event bus's WebSocket for the local network.
    pub updates: Updates,
    /// zKillboard's RedisQ queues and websocket (R2Z2 needs only the store).
    pub zkb_api: ZkbApi,
}

pub fn router(state: AppState, readiness: Readiness, metrics: Option<PrometheusHandle>) -> Router {
    let zkb_api = crate::zkb_api::routes(state.zkb_api.clone());
    Router::new()
        .route(
            "/graphql",
            get(graphql_get)
                .post(graphql_post)
                .layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/updates", get(updates_get))
        .with_state(state)
        .merge(zkb_api)
        .merge(readiness.routes(metrics))
        .merge(crate::graphiql::assets())
        .layer(middleware::from_fn(count_request))
}

/// Counts and times a request under the route pattern it matched (a bounded set of labels,
/// unlike raw paths); requests that matched none are counted together as `unmatched`.
async fn count_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(telemetry::HTTP_REQUEST, "route" => route.clone(), "method" => method)
        .record(started.elapsed());
    metrics::counter!(
        telemetry::HTTP_REQUESTS,
        "route" => route, "method" => method, "status" => status
    )
    .increment(1);
    response
}

/// A method as a label: the standard ones by name, any other as `other`, so that a client
/// cannot make up labels.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 7] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
    ];
    KNOWN
        .iter()
        .find(|(known, _)| known == method)
        .map_or("other", |(_, name)| name)
}

/// A WebSocket upgrade becomes a GraphQL subscription connection; anything else gets GraphiQL.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    if !request.headers().contains_key(header::UPGRADE) {
        return crate::graphiql::page().into_response();
    }
    let requested = request.headers().get(header::SEC_WEBSOCKET_PROTOCOL);
    let Some(protocol) = requested
        .and_then(|value| value.to_str().ok())
        .and_then(crate::ws::protocol::negotiate)
    else {
        return (
            StatusCode::BAD_REQUEST,
            "ask for the graphql-transport-ws or graphql-ws subprotocol",
        )
            .into_response();
    };
    state.ws.upgrade(request, protocol)
}

/// A WebSocket, or Server-Sent Events when asked for; the peer is the socket's: see
/// `updates::peer` for when `X-Forwarded-For` counts.
async fn updates_get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    state.updates.serve(peer.ip(), request).await
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

/// Serves `router` on `listener` until `shutdown` is cancelled; handlers may ask for the peer's
/// address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
