//! worker-enrich: consumes `entity.enrich`, describing characters, corporations, alliances and
//! item types through ESI, and queues by itself the ids first seen on stored killmails, the
//! affiliations of recent pilots and the daily snapshots.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use killreport::backoff::until_up;
use killreport::config::{
    DatabaseArgs, EnrichArgs, EnrichScheduleArgs, EnrichWorkerArgs, EsiArgs, EsiPauseArgs,
    HealthArgs, MetricsArgs, RabbitArgs, RedisArgs, StatusArgs,
};
use killreport::enrich::{EnrichHandler, schedule};
use killreport::health::Readiness;
use killreport::queue::Publisher;
use killreport::queue::runner;
use killreport::shutdown::finish_within;

/// How long the job in hand may take to finish after SIGTERM; then it is left to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

#[derive(Parser)]
#[command(
    version,
    about = "Describes characters, corporations, alliances and item types through ESI"
)]
struct Args {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    /// Where ESI pauses are shared, and the heartbeat goes.
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    enrich: EnrichArgs,
    #[command(flatten)]
    worker: EnrichWorkerArgs,
    #[command(flatten)]
    schedule: EnrichScheduleArgs,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = killreport::config::init_process(|args| &args.log);
    let shutdown = killreport::shutdown::on_signal();
    let metrics = killreport::telemetry::install(args.metrics.metrics)?;

    let pool = until_up("PostgreSQL", &shutdown, || args.database.connect()).await?;
    let redis_url = &args.redis.redis_url;
    let esi = until_up("Redis", &shutdown, || {
        args.esi_pause.client(&args.esi, redis_url)
    })
    .await?;
    let consuming = args
        .worker
        .consuming(&args.enrich, &args.rabbit, SHUTDOWN_GRACE);
    let scheduling = args
        .enrich
        .connector(&args.rabbit, "worker-enrich schedule");
    let readiness = Readiness::default()
        .postgres(pool.clone())
        .rabbitmq(consuming.connector.broker.clone());
    args.status
        .heartbeat(&args.redis)
        .start("worker-enrich", readiness.clone(), &shutdown);
    killreport::health::serve(
        args.health.health_addr.as_deref(),
        readiness,
        metrics,
        &shutdown,
    )
    .await?;

    let handler = EnrichHandler {
        pool: pool.clone(),
        esi,
        concurrency: args.worker.enrich_concurrency,
    };
    let (topology, settings) = (
        &args.enrich.topology(&args.rabbit),
        &args.schedule.settings(),
    );
    let (pool_ref, shutdown_ref) = (&pool, &shutdown);
    let scheduled = scheduling.run(&shutdown, |connection| async move {
        let publisher = Publisher::new(&connection, topology.clone())
            .await
            .context("declaring the RabbitMQ topology")?;
        schedule::run(pool_ref, &publisher, settings, shutdown_ref).await
    });
    let (worked, scheduled) = tokio::join!(
        runner::run(&handler, &consuming, &shutdown),
        finish_within(&shutdown, SHUTDOWN_GRACE, scheduled)
    );
    pool.close().await;
    tracing::info!("worker-enrich stopped");
    worked.and(scheduled.unwrap_or(Ok(())))
}
