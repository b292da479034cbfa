//! A process's connection to RabbitMQ: opened under the process's name, opened again with
//! backoff and jitter whenever it is lost (logged once per outage), and its state held in a
//! [`Broker`] for `/readyz`. Every process that talks to RabbitMQ for long (the job runner,
//! `worker-redisq`) runs its work as sessions of a [`Connector`].

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use lapin::types::LongString;
use lapin::{Connection, ConnectionProperties, ConnectionStatus};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// A session that ran this long was working when it ended, rather than failing to start (a
/// failed start ends within a second: refused connection, database error): its end starts a
/// new outage, whose retries begin again at the shortest delay and are logged again.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Opens a connection to RabbitMQ, named as the broker's management shows it.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(url, properties).await
}

/// The RabbitMQ connection a process holds, if any, as its [`Connector`] sets it: up while
/// that connection is connected. Clones share the state.
#[derive(Clone, Default)]
pub struct Broker(Arc<Mutex<Option<ConnectionStatus>>>);

impl Broker {
    /// From now on, readiness follows `connection`.
    pub fn hold(&self, connection: &Connection) {
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

    fn lock(&self) -> MutexGuard<'_, Option<ConnectionStatus>> {
        // The state is replaced whole, so a panic elsewhere cannot leave it half written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Broker").field(&self.is_up()).finish()
    }
}

/// The broker cancelled a consumer while the connection stayed up (its queue was deleted):
/// reconnecting would only paper over it, so the process stops with this error.
#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ cancelled the consumer of {queue}")]
pub struct ConsumerCancelled {
    pub queue: String,
}

/// Where a process connects, under what name, and the state it reports.
#[derive(Debug, Clone)]
pub struct Connector {
    pub url: String,
    /// The connection's name on the broker, e.g. `worker-killmails killmail.ingest`.
    pub name: String,
    pub broker: Broker,
}

impl Connector {
    /// Runs `session` on a new connection, again and again until `shutdown`: whenever the
    /// connection cannot be opened or a session ends in an error (the connection was lost, or
    /// what the session needs besides it failed), after a [`Backoff::RECONNECT`] delay. The
    /// connection is closed after each session, which hands back to the queues whatever the
    /// session received and did not settle. Returns the last session's result at shutdown, or
    /// [`ConsumerCancelled`] when a session ends in it while still connected.
    pub async fn run<F, Fut>(
        &self,
        shutdown: &CancellationToken,
        mut session: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut(Arc<Connection>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut failures = 0;
        loop {
            let started = Instant::now();
            let outcome = match connect(&self.url, &self.name)
                .await
                .context("connecting to RabbitMQ")
            {
                Ok(connection) => {
                    let connection = Arc::new(connection);
                    self.broker.hold(&connection);
                    if failures > 0 {
                        tracing::info!(connection = %self.name, "RabbitMQ is back");
                    }
                    let outcome = session(Arc::clone(&connection)).await;
                    self.broker.release();
                    let cancelled = outcome
                        .as_ref()
                        .is_err_and(|e| e.downcast_ref::<ConsumerCancelled>().is_some());
                    let fatal = cancelled && connection.status().connected();
                    connection.close(200, "closing").await.ok();
                    if fatal {
                        return outcome;
                    }
                    outcome
                }
                Err(error) => Err(error),
            };
            if shutdown.is_cancelled() {
                return outcome;
            }
            if started.elapsed() >= HEALTHY_SESSION {
                failures = 0;
            }
            failures += 1;
            let delay = Backoff::RECONNECT.delay(failures);
            let error = outcome.err().map(|e| format!("{e:#}")).unwrap_or_default();
            if failures == 1 {
                tracing::error!(%error, retry_in = ?delay, connection = %self.name, "the session on RabbitMQ ended; starting it again until it runs");
            } else {
                tracing::debug!(%error, retry_in = ?delay, failures, "still not running");
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}
