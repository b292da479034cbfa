//! worker-killmails: consumes `killmail.ingest`, stores each killmail, announces it on Redis;
//! keeps today's item prices (for killmails' values).

use std::time::Duration;

use clap::Parser;
use killreport::announce::Announcer;
use killreport::backoff::until_up;
use killreport::config::{
    ConsumerArgs, DatabaseArgs, EsiArgs, EsiPauseArgs, HealthArgs, MetricsArgs, PricesArgs,
    RabbitArgs, RedisArgs, StatusArgs,
};
use killreport::events::EventPublisher;
use killreport::health::Readiness;
use killreport::ingest::KillmailHandler;
use killreport::queue::runner::{self, Handler};
use killreport::shutdown::finish_within;
use killreport::valuation;

/// How long the batch in hand may take to finish after SIGTERM; then it is left to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

#[derive(Parser)]
#[command(
    version,
    about = "Stores killmail.ingest jobs in PostgreSQL and announces them on Redis"
)]
struct Args {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    consumer: ConsumerArgs,
    #[command(flatten)]
    esi: EsiArgs,
    #[command(flatten)]
    esi_pause: EsiPauseArgs,
    #[command(flatten)]
    health: HealthArgs,
    #[command(flatten)]
    status: StatusArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    prices: PricesArgs,
    /// Milliseconds an announcement may wait for ESI to name unknown characters and corporations.
    #[arg(long, env = "NAMES_BUDGET_MS", default_value_t = 1500)]
    names_budget_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = killreport::config::init_process(|args| &args.log);
    let shutdown = killreport::shutdown::on_signal();
    let metrics = killreport::telemetry::install(args.metrics.metrics)?;

    let pool = until_up("PostgreSQL", &shutdown, || args.database.connect()).await?;
    let (redis_url, channel) = (&args.redis.redis_url, &args.redis.events_channel);
    let esi = until_up("Redis", &shutdown, || {
        args.esi_pause.client(&args.esi, redis_url)
    })
    .await?;
    let events = until_up("Redis", &shutdown, || {
        EventPublisher::connect(redis_url, channel)
    })
    .await?;
    let names = (esi.clone(), Duration::from_millis(args.names_budget_ms));
    let announcer = Announcer::new(pool.clone(), events.clone(), Some(names));
    let consuming = args
        .consumer
        .consuming(&args.rabbit, KillmailHandler::NAME, SHUTDOWN_GRACE);
    let readiness = Readiness::default()
        .postgres(pool.clone())
        .redis(events)
        .rabbitmq(consuming.connector.broker.clone());
    let health_addr = args.health.health_addr.as_deref();
    args.status
        .heartbeat(&args.redis)
        .start("worker-killmails", readiness.clone(), &shutdown);
    killreport::health::serve(health_addr, readiness, metrics, &shutdown).await?;
    // Today's item prices, for the values of killmails that come without zKillboard's.
    let prices = args.prices.interval().map(|interval| {
        let keeping = valuation::keep_prices(pool.clone(), esi.clone(), interval, shutdown.clone());
        tokio::spawn(keeping)
    });
    let handler = KillmailHandler {
        pool: pool.clone(),
        esi,
        announcer: announcer.clone(),
        fetch_concurrency: 8,
    };
    // Announces what was committed but never published (Redis down, a worker killed); one
    // under way when shutdown comes is let finish, so that it is not made twice.
    let sweep = announcer.sweep(Duration::from_secs(5), shutdown.clone());
    let (worked, swept) = tokio::join!(
        runner::run(&handler, &consuming, &shutdown),
        finish_within(&shutdown, SHUTDOWN_GRACE, sweep)
    );
    if let Some(prices) = prices {
        // It stops at the shutdown signal; a fetch or revaluation under way is given up (it is
        // done again by the next worker, as the day is not marked revalued).
        prices.abort();
    }
    if swept.is_none() {
        tracing::warn!("overdue announcements did not finish in time; they stay pending");
    }
    pool.close().await;
    tracing::info!("worker-killmails stopped");
    worked
}
