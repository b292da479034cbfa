//! A test's own PostgreSQL database: named once, created by whoever connects first (the
//! processes under test create their database themselves), dropped when the test passes and
//! kept when it fails, for inspection; and the sweep of what failed or killed runs left behind.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::OnceCell;

/// What every test database's name starts with, by which a later run finds leftovers.
const PREFIX: &str = "killreport_test_";

/// How long dropping a database may take; past it the database is left to the next run's sweep.
const DROP_PATIENCE: Duration = Duration::from_secs(10);

/// One test's database on a PostgreSQL server; dropped with this guard unless the test fails.
pub struct TestDatabase {
    /// The server's URL without a database, like `postgres://postgres@127.0.0.1:5432`.
    server: String,
    name: String,
}

impl TestDatabase {
    /// The database `killreport_test_<id>` on `server` (a URL without a database); nothing is
    /// created yet.
    pub fn new(server: &str, id: &str) -> Self {
        Self {
            server: server.to_owned(),
            name: format!("{PREFIX}{id}"),
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // A failing test keeps its database, to look at what it left.
        if std::thread::panicking() {
            eprintln!("the failed test's database {} is kept", self.name);
            return;
        }
        // A drop cannot wait on the test's runtime (it runs on it): the work goes to a thread
        // with a runtime of its own. FORCE ends the sessions still open (the test's pool, a
        // process that was just killed), so nothing has to be closed first.
        let admin = format!("{}/postgres", self.server);
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let dropping = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let drop = async {
                    let mut admin = PgConnection::connect(&admin).await?;
                    sqlx::query(&statement).execute(&mut admin).await?;
                    admin.close().await
                };
                match tokio::time::timeout(DROP_PATIENCE, drop).await {
                    Ok(done) => done.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("not done within {DROP_PATIENCE:?}")),
                }
            })
        });
        let outcome = dropping
            .join()
            .unwrap_or_else(|_| Err("the dropping thread panicked".into()));
        if let Err(error) = outcome {
            eprintln!("database {} is left to the next run: {error}", self.name);
        }
    }
}

/// Drops the databases earlier runs left behind on `server`; one still in use (a concurrent
/// run) refuses to be dropped and is left alone. Once per run.
pub async fn drop_stale_databases(server: &str) {
    static ONCE: OnceCell<()> = OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
            .await
            .expect("connecting to PostgreSQL as admin");
        let stale: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind(format!("{PREFIX}%"))
                .fetch_all(&admin)
                .await
                .expect("listing test databases");
        for db in stale {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\""))
                .execute(&admin)
                .await;
        }
    })
    .await;
}
