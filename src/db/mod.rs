//! PostgreSQL: connecting (creating the database and migrating it on first use) and the
//! statements over each part of the store. Functions take an executor or a transaction the
//! caller owns, so one commit can span several of them.

pub mod announcements;
pub mod backfill_days;
mod batch_stats;
pub mod copy;
pub mod cursors;
pub mod enrichment;
pub mod entities;
pub mod events;
pub mod feed_gaps;
pub mod killmails;
pub mod logins;
pub mod names;
pub mod prices;
pub mod sde;
pub mod sessions;
pub mod statics;
pub mod user_sync;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Set on every connection of the store's pools, unless `DATABASE_URL`'s `options` sets them
/// (`?options=-c%20lock_timeout%3D5s`): a statement waiting for a lock (the store's write lock
/// held by a stalled `queue import`) fails after a minute, and its job is tried again, rather
/// than waiting for ever; a session idle inside a transaction for five minutes is ended, which
/// releases whatever it held.
pub const SESSION_SETTINGS: [(&str, &str); 2] = [
    ("lock_timeout", "60s"),
    ("idle_in_transaction_session_timeout", "5min"),
];

/// The connect options of every pool: `url` with [`SESSION_SETTINGS`] where it sets none.
fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url).context("parsing DATABASE_URL")?;
    let given = options.get_options().unwrap_or_default().to_owned();
    let defaults = SESSION_SETTINGS
        .into_iter()
        .filter(|(name, _)| !given.contains(name));
    Ok(options.options(defaults))
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
