//! worker-user-killmails: syncs logged-in pilots' own killmail history from ESI (one
//! `user-killmails` job per pilot, queued by its scheduler or by `queue user-killmails`) and
//! queues what it finds as `killmail.ingest` jobs with source `user`.

use std::time::Duration;

use clap::Parser;
use killreport::backoff::until_up;
use killreport::config::{
    DatabaseArgs, EsiArgs, HealthArgs, MetricsArgs, RabbitArgs, RedisArgs, StatusArgs,
    UserScheduleArgs, UserSyncArgs,
};
use killreport::health::Readiness;
use killreport::queue::runner::{self, Handler};
use killreport::shutdown::finish_within;
use killreport::user_sync::{Outlet, UserKillmailsHandler};

/// How long the syncs in hand may take to finish after SIGTERM; then they are left to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

#[derive(Parser)]
#[command(
    version,
    about = "Syncs logged-in pilots' killmail history from ESI and queues what it finds"
)]
struct Args {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    user_sync: UserSyncArgs,
    #[command(flatten)]
    schedule: UserScheduleArgs,
    #[command(flatten)]
    esi: EsiArgs,
    #[command(flatten)]
    sso: killreport::config::SsoArgs,
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
    // A half-configured SSO is an error at once, before waiting for any service.
    let auth = args.sso.auth()?;

    let pool = until_up("PostgreSQL", &shutdown, || args.database.connect()).await?;
    let name = UserKillmailsHandler::NAME;
    let consuming = args
        .schedule
        .consuming(&args.rabbit, &args.user_sync, name, SHUTDOWN_GRACE);
    let readiness = Readiness::default()
        .postgres(pool.clone())
        .rabbitmq(consuming.connector.broker.clone());
    args.status
        .heartbeat(&args.redis)
        .start(name, readiness.clone(), &shutdown);
    let health_addr = args.health.health_addr.as_deref();
    killreport::health::serve(health_addr, readiness, metrics, &shutdown).await?;

    let Some(auth) = auth else {
        // Exiting would only have a supervisor start it again and again.
        tracing::error!(
            "the SSO is not configured (EVE_CLIENT_ID, EVE_CLIENT_SECRET, TOKEN_KEY): no pilot can log in and no history can be read; idle until stopped"
        );
        shutdown.cancelled().await;
        return Ok(());
    };
    let url = &args.rabbit.rabbitmq_url;
    let handler = UserKillmailsHandler {
        pool: pool.clone(),
        esi: args.esi.client()?,
        auth,
        ingest: Outlet::new(url, &format!("{name} ingest"), args.rabbit.topology()),
        concurrency: args.schedule.user_sync_concurrency,
    };
    let queue = Outlet::new(
        url,
        &format!("{name} scheduler"),
        consuming.topology.clone(),
    );
    let scheduling = args.schedule.schedule().run(&pool, &queue, &shutdown);
    let (worked, _) = tokio::join!(
        runner::run(&handler, &consuming, &shutdown),
        finish_within(&shutdown, SHUTDOWN_GRACE, scheduling)
    );
    pool.close().await;
    tracing::info!("{name} stopped");
    worked
}
