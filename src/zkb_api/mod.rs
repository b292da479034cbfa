//! zKillboard's APIs served from killreport's own store, so a bot or another killboard switches
//! by changing one URL: RedisQ (`/listen.php`, `/redisq`, see `redisq`), R2Z2 (`/ephemeral/…`,
//! see `r2z2`), both numbering killmails by the store's ingest sequence `seq`, and the websocket
//! (`/websocket/`, see `websocket`).

pub mod r2z2;
pub mod redisq;
pub mod websocket;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::killmail::Zkb;

pub use self::redisq::Redisq;
pub use self::websocket::Websocket;

/// What the APIs keep beyond the store; clone it freely.
#[derive(Clone)]
pub struct ZkbApi {
    pub redisq: Redisq,
    pub websocket: Websocket,
}

/// The routes of the three APIs.
pub fn routes(api: ZkbApi) -> Router {
    let pool = api.redisq.pool().clone();
    let websocket = api.websocket;
    let upgrade = move |request: axum::extract::Request| async move { websocket.upgrade(request) };
    Router::new()
        .route("/listen.php", get(redisq::listen))
        .route("/redisq", get(redisq::listen))
        .with_state(api.redisq)
        .route("/websocket/", get(upgrade.clone()))
        .route("/websocket", get(upgrade))
        .merge(
            Router::new()
                .route("/ephemeral/sequence.json", get(r2z2::sequence))
                .route("/ephemeral/{file}", get(r2z2::object))
                .with_state(pool),
        )
}

/// A killmail's `zkb` object as zKillboard gives it: the stored block (or an empty one) with
/// the killmail's `hash`, which RedisQ's readers take the hash from.
fn zkb_with_hash(zkb: Option<&Zkb>, hash: Option<&str>) -> Value {
    let mut zkb = match zkb {
        Some(zkb) => zkb.0.clone(),
        None => json!({}),
    };
    if let (Value::Object(zkb), Some(hash)) = (&mut zkb, hash) {
        zkb.entry("hash")
            .or_insert_with(|| Value::String(hash.to_owned()));
    }
    zkb
}

/// An answer with `Cache-Control: cache`.
fn cached(cache: &'static str, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

/// A client's mistake or a refusal: `{"error": reason}`, never cached.
fn refusal(status: StatusCode, reason: &str) -> Response {
    cached("no-store", (status, axum::Json(json!({ "error": reason }))))
}

/// The store failed: logged here, the client told only that.
fn store_failed(error: &sqlx::Error) -> Response {
    tracing::error!(%error, "reading the store for a zKillboard API failed");
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store is unavailable; try again",
    )
}
