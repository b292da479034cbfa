//! Liveness and readiness, the same for every process: `GET /healthz` answers while the process
//! runs; `GET /readyz` is 200 when every dependency the process needs is reachable, else 503,
//! with each one's state either way: `{"postgres":"up","redis":"down","rabbitmq":"up"}`.
//! `server` serves both beside `/graphql`; a worker serves them on `HEALTH_ADDR` when it is set.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;
use crate::queue::Broker;

/// How long a dependency may take to answer a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
enum Check {
    Postgres(PgPool),
    Redis(EventPublisher),
    Broker(Broker),
}

impl Check {
    async fn up(&self) -> bool {
        let answered = match self {
            Check::Postgres(pool) => {
                let ping = sqlx::query("SELECT 1").execute(pool);
                tokio::time::timeout(CHECK_TIMEOUT, ping)
                    .await
                    .map(|r| r.is_ok())
            }
            Check::Redis(redis) => tokio::time::timeout(CHECK_TIMEOUT, redis.ping())
                .await
                .map(|r| r.is_ok()),
            Check::Broker(broker) => Ok(broker.is_up()),
        };
        answered.unwrap_or(false)
    }
}

/// The dependencies a process needs to do its work, by name.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    pub fn postgres(mut self, pool: PgPool) -> Self {
        self.checks.push(("postgres", Check::Postgres(pool)));
        self
    }

    pub fn redis(mut self, redis: EventPublisher) -> Self {
        self.checks.push(("redis", Check::Redis(redis)));
        self
    }

    pub fn rabbitmq(mut self, broker: Broker) -> Self {
        self.checks.push(("rabbitmq", Check::Broker(broker)));
        self
    }

    /// Checks every dependency at once: whether all are up, and each one's state.
    pub async fn check(&self) -> (bool, Map<String, Value>) {
        let states = futures::future::join_all(self.checks.iter().map(|(_, c)| c.up())).await;
        let word = |up: bool| Value::from(if up { "up" } else { "down" });
        let report = self
            .checks
            .iter()
            .zip(&states)
            .map(|((name, _), up)| ((*name).to_owned(), word(*up)))
            .collect();
        (states.iter().all(|up| *up), report)
    }

    /// `/healthz` and `/readyz`.
    pub fn routes(self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self)
    }
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, Json<Map<String, Value>>) {
    let (ready, report) = readiness.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// Serves `/healthz` and `/readyz` on `addr`, when a worker is given one (`HEALTH_ADDR`), until
/// `shutdown`, in the background; the address is bound before this returns, so a bad one stops
/// the process at start.
pub async fn serve(
    addr: Option<&str>,
    readiness: Readiness,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on HEALTH_ADDR {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz and /readyz");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, readiness.routes())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the health endpoint failed");
        }
    });
    Ok(())
}
