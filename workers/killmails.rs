//! worker-killmails: consumes `killmail.ingest`, stores each killmail, announces it on Redis.

use std::time::Duration;

use clap::Parser;
use killreport::config::{DatabaseArgs, EsiArgs, HealthArgs, RabbitArgs, RedisArgs};
use killreport::events::EventPublisher;
use killreport::health::{Broker, Readiness, until_up};
use killreport::ingest::{Announcer, BatchSettings, Consuming};
use killreport::shutdown::finish_within;

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
    #[command(flatten)]
    health: HealthArgs,
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

    let pool = until_up("PostgreSQL", &shutdown, || args.database.connect()).await?;
    let esi = args.esi.client()?;
    let (redis_url, channel) = (&args.redis.redis_url, &args.redis.events_channel);
    let events = until_up("Redis", &shutdown, || {
        EventPublisher::connect(redis_url, channel)
    })
    .await?;
    let names = (esi.clone(), Duration::from_millis(args.names_budget_ms));
    let announcer = Announcer::new(pool.clone(), events.clone(), Some(names));
    let consuming = Consuming {
        rabbitmq_url: args.rabbit.rabbitmq_url.clone(),
        topology: args.rabbit.topology(),
        prefetch: args.prefetch,
        grace: SHUTDOWN_GRACE,
        broker: Broker::default(),
    };
    let readiness = Readiness::default()
        .postgres(pool.clone())
        .redis(events)
        .rabbitmq(consuming.broker.clone());
    args.health.serve(readiness, &shutdown).await?;
    let batch = BatchSettings {
        max_jobs: args.batch_size,
        max_wait: Duration::from_millis(args.batch_wait_ms),
        fetch_concurrency: 8,
    };
    let work = killreport::ingest::consume(
        pool.clone(),
        esi,
        announcer.clone(),
        batch,
        &consuming,
        &shutdown,
    );
    // Announces what was committed but never published (Redis down, a worker killed); one
    // under way when shutdown comes is let finish, so that it is not made twice.
    let sweep = announcer.sweep(Duration::from_secs(5), shutdown.clone());
    let (worked, swept) = tokio::join!(work, finish_within(&shutdown, SHUTDOWN_GRACE, sweep));
    if swept.is_none() {
        tracing::warn!("overdue announcements did not finish in time; they stay pending");
    }
    pool.close().await;
    tracing::info!("worker-killmails stopped");
    worked
}
