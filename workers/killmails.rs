//! worker-killmails: consumes `killmail.ingest`, stores each killmail, announces it on Redis.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use killreport::config::{DatabaseArgs, EsiArgs, RabbitArgs, RedisArgs};
use killreport::events::EventPublisher;
use killreport::ingest::{Announcer, BatchSettings, KillmailWorker};
use killreport::queue::Publisher;
use killreport::shutdown::finish_within;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

/// How long the batch in hand may take to finish after SIGTERM; then it is left to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

#[derive(Parser)]
#[command(
    version,
    about = "Stores killmail.ingest jobs in PostgreSQL and announces them on Redis"
)]
struct Args {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    esi: EsiArgs,
    /// Jobs RabbitMQ hands this worker before it has acked them.
    #[arg(long, env = "PREFETCH", default_value_t = 200)]
    prefetch: u16,
    /// At most this many jobs are stored in one transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 100)]
    batch_size: usize,
    /// Milliseconds a batch waits to fill once its first job has arrived; 0 takes only what
    /// has already arrived (batches still form under load, while the last one is written).
    #[arg(long, env = "BATCH_WAIT_MS", default_value_t = 0)]
    batch_wait_ms: u64,
    /// Milliseconds an announcement may wait for ESI to name unknown characters and corporations.
    #[arg(long, env = "NAMES_BUDGET_MS", default_value_t = 1500)]
    names_budget_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    killreport::config::init_process();
    let args = Args::parse();
    let shutdown = killreport::shutdown::on_signal();

    let pool = args.database.connect().await?;
    let esi = args.esi.client()?;
    let events = EventPublisher::connect(&args.redis.redis_url, &args.redis.events_channel)
        .await
        .context("connecting to Redis")?;
    let connection = killreport::queue::connect(&args.rabbit.rabbitmq_url, "worker-killmails")
        .await
        .context("connecting to RabbitMQ")?;
    let topology = args.rabbit.topology();
    let publisher = Publisher::new(&connection, topology.clone())
        .await
        .context("declaring the RabbitMQ topology")?;
    let channel = connection
        .create_channel()
        .await
        .context("opening a RabbitMQ channel")?;
    channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            &topology.queue,
            "worker-killmails",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {}", topology.queue))?;

    let announcer = Announcer {
        pool: pool.clone(),
        events,
        resolve_names: Some((esi.clone(), Duration::from_millis(args.names_budget_ms))),
    };
    let worker = KillmailWorker {
        pool,
        esi,
        publisher,
        announcer: announcer.clone(),
        batch: BatchSettings {
            max_jobs: args.batch_size,
            max_wait: Duration::from_millis(args.batch_wait_ms),
            fetch_concurrency: 8,
        },
    };
    tracing::info!(queue = %topology.queue, "worker-killmails consuming");
    let work = async {
        let result = worker.run(consumer, shutdown.clone()).await;
        // Whatever ends the worker ends the sweep too.
        shutdown.cancel();
        result
    };
    // Announces what was committed but never published (Redis down, a worker killed); one
    // under way when shutdown comes is let finish, so that it is not made twice.
    let sweep = announcer.sweep(Duration::from_secs(5), shutdown.clone());
    let (worked, swept) = tokio::join!(
        finish_within(&shutdown, SHUTDOWN_GRACE, work),
        finish_within(&shutdown, SHUTDOWN_GRACE, sweep),
    );
    if worked.is_none() {
        tracing::warn!(
            grace_secs = SHUTDOWN_GRACE.as_secs(),
            "the batch in hand did not finish in time; its unacked jobs go back to the queue"
        );
    }
    if swept.is_none() {
        tracing::warn!("overdue announcements did not finish in time; they stay pending");
    }
    // Closing hands every delivery not acked back to the queue.
    connection.close(200, "shutting down").await.ok();
    worker.pool.close().await;
    tracing::info!("worker-killmails stopped");
    worked.unwrap_or(Ok(()))
}
