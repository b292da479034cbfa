//! server: the HTTP and GraphQL front of killreport on LISTEN_ADDR (default 0.0.0.0:4000).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use killreport::backoff::until_up;
use killreport::config::{DatabaseArgs, HttpArgs, RedisArgs};
use killreport::events::EventPublisher;
use killreport::health::Readiness;
use killreport::http::{AppState, router, serve};
use killreport::live::Hub;
use killreport::statics::Statics;
use killreport::ws::WsService;

#[derive(Parser)]
#[command(
    version,
    about = "Serves killreport over HTTP: /graphql, /healthz, /readyz, /metrics"
)]
struct Args {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    redis: RedisArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = killreport::config::init_process(|args| &args.log);
    let shutdown = killreport::shutdown::on_signal();
    let metrics = killreport::telemetry::install()?;

    let pool = until_up("PostgreSQL", &shutdown, || args.database.connect()).await?;
    let (redis_url, channel) = (&args.redis.redis_url, &args.redis.events_channel);
    let redis = until_up("Redis", &shutdown, || {
        EventPublisher::connect(redis_url, channel)
    })
    .await?;
    let statics = Arc::new(Statics::load(&pool).await.context("loading static data")?);
    let hub = until_up("Redis", &shutdown, || {
        let (pool, statics) = (pool.clone(), Arc::clone(&statics));
        Hub::start(pool, statics, redis_url, channel, shutdown.clone())
    })
    .await
    .context("subscribing to killmail events on Redis")?;
    let schema = killreport::graphql::schema(pool.clone(), hub.clone(), statics);
    let listener = tokio::net::TcpListener::bind(&args.http.listen_addr)
        .await
        .with_context(|| format!("listening on {}", args.http.listen_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "server listening");
    let ws = WsService::new(schema.clone(), hub, args.http.ws_limits(), shutdown.clone());
    let readiness = Readiness::default().postgres(pool).redis(redis);
    let state = AppState {
        schema,
        ws: ws.clone(),
    };
    serve(listener, router(state, readiness, metrics), shutdown).await?;
    ws.closed().await;
    Ok(())
}
