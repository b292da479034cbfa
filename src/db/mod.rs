//! PostgreSQL: connecting (creating the database and migrating it on first use) and the
//! statements over each part of the store. Functions take an executor or a transaction the
//! caller owns, so one commit can span several of them.

pub mod announcements;
pub mod backfill_days;
pub mod copy;
pub mod cursors;
pub mod entities;
pub mod events;
pub mod feed_gaps;
pub mod killmails;
pub mod names;
pub mod sde;
pub mod statics;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How long a statement of any process waits for a lock (the store's write lock among them)
/// before it fails, to be retried: a stalled writer does not hold every other one for ever.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a transaction may sit idle before PostgreSQL ends its session, releasing its locks:
/// a process stalled mid-transaction gives them back.
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The connect options of every pool: `url` with [`LOCK_TIMEOUT`] and
/// [`IDLE_IN_TRANSACTION_TIMEOUT`] set on each session.
fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url).context("parsing DATABASE_URL")?;
    Ok(options.options([
        ("lock_timeout", millis(LOCK_TIMEOUT)),
        (
            "idle_in_transaction_session_timeout",
            millis(IDLE_IN_TRANSACTION_TIMEOUT),
        ),
    ]))
}

/// A duration as PostgreSQL reads a setting in milliseconds.
fn millis(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Connects to `url`, creating the database if it does not exist, applies every migration and
/// loads the shipped static data. Safe when several processes start at once: migrations and the
/// static-data load each run under their own advisory lock.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?;
    let exists = Postgres::database_exists(url)
        .await
        .context("checking that the database exists")?;
    if !exists && let Err(error) = Postgres::create_database(url).await {
        // Another process may have created it in the meantime.
        if !Postgres::database_exists(url).await.unwrap_or(false) {
            return Err(error).context("creating the database");
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("migrating the database")?;
    sde::ensure_loaded(&pool)
        .await
        .context("loading static data")?;
    Ok(pool)
}

/// A pool of `max_connections` for queries that clients ask for (GraphQL): each statement is
/// cancelled after `statement_timeout`, and a query waits at most that long for a connection,
/// so they cannot take the connections of the process's own work, which has its pool. The
/// database must exist (see [`connect`]).
pub async fn connect_queries(
    url: &str,
    max_connections: u32,
    statement_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options = connect_options(url)?.options([("statement_timeout", millis(statement_timeout))]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(statement_timeout)
        .connect_with(options)
        .await
        .context("connecting to PostgreSQL for queries")
}

/// Whether PostgreSQL cancelled a statement for running over its `statement_timeout`.
pub fn is_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("57014"))
}

/// Whether PostgreSQL refused the data itself (classes 22, data exception, and 23, integrity
/// violation): storing the same data again cannot succeed.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
    }
}
