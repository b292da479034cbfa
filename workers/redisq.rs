//! worker-redisq: polls zKillboard's live feed (R2Z2, or a RedisQ-compatible endpoint when
//! REDISQ_URL is set) and queues each killmail as a `killmail.ingest` job.

use anyhow::Context;
use clap::Parser;
use killreport::config::{DatabaseArgs, RabbitArgs};
use killreport::feed::{FeedArgs, R2z2Poller, RedisqPoller};
use killreport::queue::Publisher;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    killreport::config::init_process();
    let args = Args::parse();
    let shutdown = killreport::shutdown::on_signal();

    let connection = killreport::queue::connect(&args.rabbit.rabbitmq_url, "worker-redisq")
        .await
        .context("connecting to RabbitMQ")?;
    let publisher = Publisher::new(&connection, args.rabbit.topology())
        .await
        .context("declaring the RabbitMQ topology")?;
    let http = args.feed.http_client()?;

    if let Some(url) = args.feed.redisq_url.clone() {
        let settings = args.feed.redisq_settings();
        let poller = RedisqPoller {
            http,
            url,
            publisher,
            settings,
        };
        poller.run(shutdown).await?;
    } else {
        // Only R2Z2 keeps a cursor, so only R2Z2 needs the database.
        let pool = args
            .database
            .connect()
            .await
            .context("connecting to PostgreSQL")?;
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
        poller.run(shutdown).await?;
    }
    connection.close(200, "shutting down").await.ok();
    Ok(())
}
