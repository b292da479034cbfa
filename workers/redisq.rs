//! worker-redisq: polls zKillboard's live feed (R2Z2, or a RedisQ-compatible endpoint when
//! REDISQ_URL is set) and queues each killmail as a `killmail.ingest` job.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::future::Either;
use killreport::backoff::until_up;
use killreport::config::{DatabaseArgs, FeedArgs, HealthArgs, RabbitArgs};
use killreport::feed::{R2z2Poller, RedisqPoller};
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
    let connector = args.rabbit.connector("worker-redisq");
    let readiness = Readiness::default().rabbitmq(connector.broker.clone());
    let readiness = match &pool {
        Some(pool) => readiness.postgres(pool.clone()),
        None => readiness,
    };
    killreport::health::serve(args.health.health_addr.as_deref(), readiness, &shutdown).await?;
    // A lost broker (or database) ends a session; the feed is picked up again from where it
    // was, on a new connection, until shutdown.
    let (args, http, pool, shutdown) = (&args, &http, &pool, &shutdown);
    let outcome = connector
        .run(shutdown, |connection| async move {
            let publisher = Publisher::new(&connection, args.rabbit.topology())
                .await
                .context("declaring the RabbitMQ topology")?;
            // A RedisQ poll under way may bring a package already taken off the server's
            // queue, so it is given its whole wait to answer; an R2Z2 fetch is dropped at
            // once, as the cursor moves only once its job is confirmed.
            let (grace, polling) = match (&args.feed.redisq_url, pool) {
                (Some(url), _) => {
                    let settings = args.feed.redisq_settings();
                    let grace = SHUTDOWN_GRACE + Duration::from_secs(settings.ttw.into());
                    let poller = RedisqPoller {
                        http: http.clone(),
                        url: url.clone(),
                        publisher,
                        settings,
                    };
                    (grace, Either::Left(poller.run(shutdown.clone())))
                }
                (None, Some(pool)) => {
                    let base_url = args.feed.r2z2_base_url.clone();
                    tracing::info!(%base_url, "worker-redisq reading R2Z2");
                    let poller = R2z2Poller {
                        http: http.clone(),
                        base_url,
                        pool: pool.clone(),
                        publisher,
                        settings: args.feed.r2z2_settings(),
                    };
                    (SHUTDOWN_GRACE, Either::Right(poller.run(shutdown.clone())))
                }
                (None, None) => anyhow::bail!("R2Z2 needs the database"),
            };
            finish_within(shutdown, grace, polling)
                .await
                .unwrap_or_else(|| {
                    tracing::warn!(
                        grace_secs = grace.as_secs(),
                        "the feed did not stop in time; given up"
                    );
                    Ok(())
                })
        })
        .await;
    tracing::info!("worker-redisq stopped");
    outcome
}
