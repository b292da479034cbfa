//! The HTTP surface of `server`: `/graphql` (GraphiQL on a plain GET, a WebSocket on an upgrade
//! speaking `graphql-transport-ws` or the legacy `graphql-ws`, queries on POST), GraphiQL's
//! assets, `/updates` (see `updates`), zKillboard's RedisQ, R2Z2 and websocket (see `zkb_api`),
//! `/auth/login`, `/auth/callback` and `/auth/logout` (see `auth::routes`), and `/healthz`,
//! `/readyz` and `/metrics` (see `health`). A request's `Authorization: Bearer` session tells
//! the GraphQL resolvers who calls. Every request is counted and timed by the route it matched
//! (`telemetry::HTTP_REQUESTS`). Browsers on the origins `CORS_ORIGINS` names may call
//! `/graphql` (see [`cors_layer`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Gate;
use crate::auth::routes::Login;
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
    /// Who calls `/graphql`.
    pub gate: Gate,
    /// `/auth/*`.
    pub login: Login,
    /// CORS on `/graphql`, when some origins are allowed (see [`cors_layer`]).
    pub cors: Option<CorsLayer>,
}

/// How long a browser may keep a preflight's answer.
const CORS_MAX_AGE: Duration = Duration::from_secs(3600);

/// CORS for `/graphql` from these origins (`*`: any); none, no CORS headers at all, so that
/// browsers keep other origins out. Queries are POSTed as JSON, with a bearer token when
/// logged in; no cookies, so no credentials are allowed.
pub fn cors_layer(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let allowed = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| {
                HeaderValue::from_str(origin.trim_end_matches('/'))
                    .map_err(|_| anyhow::anyhow!("CORS_ORIGINS: {origin:?} is not an origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allowed)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
            .max_age(CORS_MAX_AGE),
    ))
}

pub fn router(state: AppState, readiness: Readiness, metrics: Option<PrometheusHandle>) -> Router {
    let zkb_api = crate::zkb_api::routes(state.zkb_api.clone());
    let graphql = get(graphql_get)
        .post(graphql_post)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    // Around the method router, so that a preflight (OPTIONS) is answered too.
    let graphql = match state.cors.clone() {
        Some(cors) => graphql.layer(cors),
        None => graphql,
    };
    let auth = crate::auth::routes::routes(state.login.clone());
    Router::new()
        .route("/graphql", graphql)
        .route("/updates", get(updates_get))
        .with_state(state)
        .merge(zkb_api)
        .merge(auth)
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

/// Runs one query; the body is a GraphQL-over-HTTP JSON request, the caller's session in
/// `Authorization: Bearer`.
async fn graphql_post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            let message = format!("the body is not a GraphQL request: {error}");
            let body = json!({ "errors": [{ "message": message, "extensions": { "code": "BAD_REQUEST" } }] });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or_default());
    let caller = state.gate.caller(authorization).await;
    let request = state.gate.admit(request, &caller);
    Json(state.schema.execute(request).await).into_response()
}

/// What the HTTP server allows its clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once (WebSockets, once upgraded, count by their own limits); more
    /// are answered 503 and closed.
    pub max_connections: usize,
    /// Time to send a request's headers, from the connection's start or the end of the
    /// previous request: a client trickling its headers, sending nothing, or idle between
    /// requests is disconnected after it.
    pub header_timeout: Duration,
    /// Time for a request once its headers are in, reading its body included: 408 after it.
    pub request_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, within `limits`, then lets the
/// requests under way finish; handlers may ask for the peer's address
/// (`ConnectInfo<SocketAddr>`). HTTP/1.1, upgrades included.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let request_timeout = limits.request_timeout;
    let router = router.layer(middleware::from_fn(move |request: Request, next: Next| {
        within(request_timeout, request, next)
    }));
    let router = TowerToHyperService::new(router);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // the next may do.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            connections.spawn(refuse(stream, limits.max_connections));
            continue;
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.call(request)
        });
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, %peer, "an HTTP connection ended with an error");
            }
            drop(place);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Runs a request, answering 408 if it takes longer than `limit` (a body that never comes
/// among the reasons).
async fn within(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let reason = format!("the request took over {} s", limit.as_secs());
            (
                StatusCode::REQUEST_TIMEOUT,
                Json(json!({ "error": reason })),
            )
                .into_response()
        }
    }
}

/// Tells a client the server holds as many connections as it may, and hangs up.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = json!({ "error": format!("too many connections: this server holds at most {max}") })
        .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let goodbye = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), goodbye).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_is_off_without_origins_and_refuses_what_is_not_an_origin() {
        assert!(cors_layer(&[]).expect("valid").is_none());
        assert!(cors_layer(&[" ".to_owned()]).expect("valid").is_none());
        assert!(cors_layer(&["*".to_owned()]).expect("valid").is_some());
        let origins = [
            "https://a.example/".to_owned(),
            "http://localhost:3000".to_owned(),
        ];
        assert!(cors_layer(&origins).expect("valid").is_some());
        let bad = cors_layer(&["https://a\u{7}.example".to_owned()]).expect_err("refused");
        assert!(bad.to_string().contains("is not an origin"), "{bad}");
    }
}
