//! worker-redisq: polls zKillboard's live feed (R2Z2, or a RedisQ-compatible endpoint when
//! REDISQ_URL is set) and queues each killmail as a `killmail.ingest` job.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use killreport::backoff::until_up;
use killreport::config::{
    DatabaseArgs, FeedArgs, HealthArgs, MetricsArgs, RabbitArgs, RedisArgs, StatusArgs,
};
use killreport::health::Readiness;
use killreport::queue::Publisher;
use killreport::shutdown::finish_within;

/// How long the feed may take to stop after SIGTERM: publishing the job in hand and saving the
/// cursor take well under a second unless RabbitMQ or PostgreSQL is stuck.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

#[derive(Parser)]
#[command(
    version,
    about = "Polls zKillboard's live feed and queues every killmail"
)]
struct Args {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    feed: FeedArgs,
    #[command(flatten)]
    health: HealthArgs,
    /// Where its heartbeat goes (its work needs no Redis).
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    status: StatusArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = killreport::config::init_process(|args| &args.log);
    let shutdown = killreport::shutdown::on_signal();
    let metrics = killreport::telemetry::install(args.metrics.metrics)?;

    let http = args.feed.http_client()?;
    // Only R2Z2 keeps a cursor, so only R2Z2 needs the database.
    let pool = match args.feed.redisq_url {
        Some(_) => None,
        None => Some(until_up("PostgreSQL", &shutdown, || args.database.connect()).await?),
    };
    let connector = args.rabbit.connector("worker-redisq");
    let readiness = Readiness::default().rabbitmq(connector.broker.clone());
    let readiness = match &pool {
        Some(pool) => readiness.postgres(pool.clone()),
        None => readiness,
    };
    let health_addr = args.health.health_addr.as_deref();
    args.status
        .heartbeat(&args.redis)
        .start("worker-redisq", readiness.clone(), &shutdown);
    killreport::health::serve(health_addr, readiness, metrics, &shutdown).await?;
    let followed = &args.feed.followed(pool)?;
    let grace = followed.grace(SHUTDOWN_GRACE);
    let (topology, http, shutdown) = (&args.rabbit.topology(), &http, &shutdown);
    // A lost broker (or database) ends a session; the feed is picked up again from where it
    // was, on a new connection, until shutdown.
    let outcome = connector
        .run(shutdown, |connection| async move {
            let publisher = Publisher::new(&connection, topology.clone())
                .await
                .context("declaring the RabbitMQ topology")?;
            let following = followed.follow(http.clone(), publisher, shutdown.clone());
            finish_within(shutdown, grace, following)
                .await
                .unwrap_or_else(|| {
                    tracing::warn!(?grace, "the feed did not stop in time; given up");
                    Ok(())
                })
        })
        .await;
    tracing::info!("worker-redisq stopped");
    outcome
}
