//! Liveness and readiness, the same for every process: `GET /healthz` answers while the process
//! runs; `GET /readyz` is 200 when every dependency the process needs is reachable, else 503,
//! with each one's state either way: `{"postgres":"up","redis":"down","rabbitmq":"up"}`.
//! `server` serves both beside `/graphql`; a worker serves them on `HEALTH_ADDR` when it is set.
//! And [`until_up`]: a long-running process started before its dependencies waits for them.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use lapin::ConnectionStatus;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;

/// How long a dependency may take to answer a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The RabbitMQ connection a process holds, if any, as its reconnecting loop sets it: up while
/// that connection is connected. Clones share the state.
#[derive(Clone, Default)]
pub struct Broker(Arc<Mutex<Option<ConnectionStatus>>>);

impl Broker {
    /// From now on, readiness follows `connection`.
    pub fn hold(&self, connection: &lapin::Connection) {
        *self.lock() = Some(connection.status().clone());
    }

    /// The connection is gone; down until the next is held.
    pub fn release(&self) {
        *self.lock() = None;
    }

    pub fn is_up(&self) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(ConnectionStatus::connected)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ConnectionStatus>> {
        // The state is replaced whole, so a panic elsewhere cannot leave it half written.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Broker").field(&self.is_up()).finish()
    }
}

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

/// Serves `/healthz` and `/readyz` on `addr` until `shutdown`, in the background, for a
/// worker; the address is bound before this returns, so a bad one stops the process at start.
pub async fn serve(
    addr: &str,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on HEALTH_ADDR {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(error) = crate::http::serve(listener, readiness.routes(), shutdown).await {
            tracing::error!(%error, "the health endpoint failed");
        }
    });
    Ok(())
}

/// Connects with `connect` until it succeeds, with backoff and jitter (up to 30 s between
/// attempts), so that a process started before `what` (PostgreSQL still booting, say) waits
/// for it instead of exiting. Logged when waiting starts and whenever the error changes (a
/// wrong password is not retried in silence); gives up only at shutdown.
pub async fn until_up<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut connect: F,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let backoff = crate::feed::Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    let mut failures = 0;
    let mut last_error = String::new();
    loop {
        let error = match connect().await {
            Ok(connected) => {
                if failures > 0 {
                    tracing::info!("{what} is up");
                }
                return Ok(connected);
            }
            Err(error) => format!("{:#}", error.into()),
        };
        failures += 1;
        let delay = backoff.delay(failures);
        if error != last_error {
            tracing::warn!(%error, retry_in = ?delay, "waiting for {what}");
        }
        last_error = error;
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for {what}: {last_error}"),
            () = tokio::time::sleep(delay) => {}
        }
    }
}
