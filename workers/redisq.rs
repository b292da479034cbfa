//! worker-redisq: polls zKillboard's live feed (R2Z2, or a RedisQ-compatible endpoint when
//! REDISQ_URL is set) and queues each killmail as a `killmail.ingest` job.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use killreport::config::{DatabaseArgs, FeedArgs, HealthArgs, RabbitArgs};
use killreport::feed::{Backoff, R2z2Poller, RedisqPoller};
use killreport::health::{Broker, Readiness, until_up};
use killreport::queue::Publisher;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the feed may take to stop after SIGTERM: publishing the job in hand and saving the
/// cursor take well under a second unless RabbitMQ or PostgreSQL is stuck.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// A run of the feed that lasted this long was working when it ended, rather than failing to
/// start (a failed start ends within a second: refused connection, database error).
const HEALTHY_RUN: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    version,
    about = "Polls zKillboard's live feed and queues every killmail"
)]
struct Args {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    feed: FeedArgs,
    #[command(flatten)]
    health: HealthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    killreport::config::init_process();
    let args = Args::parse();
    let shutdown = killreport::shutdown::on_signal();

    let http = args.feed.http_client()?;
    // Only R2Z2 keeps a cursor, so only R2Z2 needs the database.
    let pool = match args.feed.redisq_url {
        Some(_) => None,
        None => Some(until_up("PostgreSQL", &shutdown, || args.database.connect()).await?),
    };
    let rabbitmq = Broker::default();
    let readiness = Readiness::default().rabbitmq(rabbitmq.clone());
    let readiness = match &pool {
        Some(pool) => readiness.postgres(pool.clone()),
        None => readiness,
    };
    args.health.serve(readiness, &shutdown).await?;
    let backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    let mut failures = 0;
    // A lost broker (or database) ends a run; the feed is picked up again from where it was,
    // on a new connection, until shutdown.
    loop {
        let started = Instant::now();
        let outcome = run(&args, http.clone(), pool.clone(), &rabbitmq, &shutdown).await;
        rabbitmq.release();
        if shutdown.is_cancelled() {
            tracing::info!("worker-redisq stopped");
            return outcome;
        }
        // A run that went on for a while was working: its end starts a new outage, whose
        // retries begin again at the shortest delay (and are logged again).
        if started.elapsed() >= HEALTHY_RUN {
            failures = 0;
        }
        failures += 1;
        let delay = backoff.delay(failures);
        if let Err(error) = outcome {
            let error = format!("{error:#}");
            if failures == 1 {
                tracing::error!(%error, retry_in = ?delay, "the feed stopped; starting it again until it runs");
            } else {
                tracing::debug!(%error, retry_in = ?delay, failures, "the feed is still stopped");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Connects to RabbitMQ (held in `rabbitmq`, for readiness) and polls the configured feed until
/// shutdown or a failure.
async fn run(
    args: &Args,
    http: reqwest::Client,
    pool: Option<sqlx::PgPool>,
    rabbitmq: &Broker,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let connection = killreport::queue::connect(
        &args.rabbit.rabbitmq_url,
        &format!("worker-redisq {}", args.rabbit.ingest_queue),
    )
    .await
    .context("connecting to RabbitMQ")?;
    let publisher = Publisher::new(&connection, args.rabbit.topology())
        .await
        .context("declaring the RabbitMQ topology")?;
    rabbitmq.hold(&connection);
    let outcome = match (args.feed.redisq_url.clone(), pool) {
        (Some(url), _) => {
            let settings = args.feed.redisq_settings();
            // A poll under way may bring a package already taken off the server's queue, so it
            // is given its whole wait to answer.
            let grace = SHUTDOWN_GRACE + Duration::from_secs(settings.ttw.into());
            let poller = RedisqPoller {
                http,
                url,
                publisher,
                settings,
            };
            stop_within(shutdown, grace, poller.run(shutdown.clone())).await
        }
        (None, Some(pool)) => {
            let base_url = args.feed.r2z2_base_url.clone();
            tracing::info!(%base_url, "worker-redisq reading R2Z2");
            let settings = args.feed.r2z2_settings();
            let poller = R2z2Poller {
                http,
                base_url,
                pool,
                publisher,
                settings,
            };
            // An R2Z2 fetch under way is dropped at once: the file is asked for again after
            // the restart, since the cursor moves only once its job is confirmed.
            stop_within(shutdown, SHUTDOWN_GRACE, poller.run(shutdown.clone())).await
        }
        (None, None) => anyhow::bail!("R2Z2 needs the database"),
    };
    connection.close(200, "shutting down").await.ok();
    outcome
}

/// Runs a poller; once shutdown comes, gives what it is doing `grace` to finish.
async fn stop_within(
    shutdown: &CancellationToken,
    grace: Duration,
    run: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    match killreport::shutdown::finish_within(shutdown, grace, run).await {
        Some(result) => result,
        None => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "the feed did not stop in time; given up"
            );
            Ok(())
        }
    }
}
