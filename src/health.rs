//! Liveness and readiness, the same for every process: `GET /healthz` answers while the process
//! runs; `GET /readyz` is 200 when every dependency the process needs is reachable, else 503,
//! with each one's state either way: `{"postgres":"up","redis":"down","rabbitmq":"up"}`.
//! Beside them, `GET /metrics`: what the process's recorder holds (see `telemetry`), with each
//! dependency's state and the PostgreSQL pool's use taken at the scrape. `server` serves all
//! three beside `/graphql`; a worker serves them on `HEALTH_ADDR` when it is set.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::events::EventPublisher;
use crate::queue::Broker;
use crate::telemetry;

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

    /// Records what a check shows beside up or down: the PostgreSQL pool's use.
    fn record_use(&self) {
        if let Check::Postgres(pool) = self {
            let idle = pool.num_idle();
            let open = usize::try_from(pool.size()).unwrap_or(usize::MAX);
            let gauge = |state| metrics::gauge!(telemetry::DB_POOL_CONNECTIONS, "state" => state);
            gauge("idle").set(idle as f64);
            gauge("in_use").set(open.saturating_sub(idle) as f64);
            metrics::gauge!(telemetry::DB_POOL_MAX).set(pool.options().get_max_connections());
        }
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
        for ((name, check), up) in self.checks.iter().zip(&states) {
            metrics::gauge!(telemetry::DEPENDENCY_UP, "dependency" => *name).set(if *up {
                1.0
            } else {
                0.0
            });
            check.record_use();
        }
        let word = |up: bool| Value::from(if up { "up" } else { "down" });
        let report = self
            .checks
            .iter()
            .zip(&states)
            .map(|((name, _), up)| ((*name).to_owned(), word(*up)))
            .collect();
        (states.iter().all(|up| *up), report)
    }

    /// `/healthz`, `/readyz` and `/metrics`, the last rendering `metrics`.
    pub fn routes(self, metrics: Option<PrometheusHandle>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(scrape))
            .with_state((self, metrics))
    }
}

async fn readyz(
    State((readiness, _)): State<(Readiness, Option<PrometheusHandle>)>,
) -> (StatusCode, Json<Map<String, Value>>) {
    let (ready, report) = readiness.check().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}

/// Prometheus' text format, the dependencies checked first so that their state is current.
async fn scrape(
    State((readiness, metrics)): State<(Readiness, Option<PrometheusHandle>)>,
) -> Response {
    let Some(metrics) = metrics else {
        return (StatusCode::NOT_FOUND, "metrics are off (METRICS=false)\n").into_response();
    };
    readiness.check().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr`, when a worker is given one
/// (`HEALTH_ADDR`), until `shutdown`, in the background; the address is bound before this
/// returns, so a bad one stops the process at start.
pub async fn serve(
    addr: Option<&str>,
    readiness: Readiness,
    metrics: Option<PrometheusHandle>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on HEALTH_ADDR {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, readiness.routes(metrics))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "the health endpoint failed");
        }
    });
    Ok(())
}
