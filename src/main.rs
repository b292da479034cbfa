//! server: the HTTP and GraphQL front of killreport on LISTEN_ADDR (default 0.0.0.0:4000).

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use killreport::auth::Gate;
use killreport::auth::routes::Login;
use killreport::auth::sessions::Sessions;
use killreport::backoff::until_up;
use killreport::config::{
    BusArgs, DatabaseArgs, EnrichArgs, EventLogArgs, EverefArgs, HttpArgs, LiveArgs, MetricsArgs,
    QueryArgs, RabbitArgs, RedisArgs, SessionArgs, SsoArgs, StatisticsArgs, StatusArgs,
    UpdatesArgs, ZkbArgs, ZkbWebsocketArgs,
};
use killreport::event_log::EventLog;
use killreport::events::EventPublisher;
use killreport::health::Readiness;
use killreport::http::{AppState, router, serve};
use killreport::import::{Announce, Importer};
use killreport::live::Hub;
use killreport::operations::Operations;
use killreport::statics::Statics;
use killreport::stats::event::Statistics;
use killreport::status::{Monitor, Sources};
use killreport::updates::Updates;
use killreport::updates::management::{self, Management};
use killreport::ws::WsService;
use killreport::zkb_api::redisq::DEFAULT_KEY_PREFIX;
use killreport::zkb_api::{Redisq, Websocket, ZkbApi};

#[derive(Parser)]
#[command(
    version,
    about = "Serves killreport over HTTP: /graphql, /auth/*, /updates, RedisQ, R2Z2, /websocket/, /healthz, /readyz, /metrics; POST /events on MANAGEMENT_ADDR"
)]
struct Args {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    queries: QueryArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    live: LiveArgs,
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    event_log: EventLogArgs,
    #[command(flatten)]
    updates: UpdatesArgs,
    #[command(flatten)]
    zkb_websocket: ZkbWebsocketArgs,
    /// The queues `workerStatus` reports on.
    #[command(flatten)]
    rabbit: RabbitArgs,
    #[command(flatten)]
    status: StatusArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
    #[command(flatten)]
    cors: killreport::config::CorsArgs,
    #[command(flatten)]
    statistics: StatisticsArgs,
    #[command(flatten)]
    sso: SsoArgs,
    /// Where admins' backfills download from.
    #[command(flatten)]
    everef: EverefArgs,
    /// worker-enrich's queue, where admins' refreshes and snapshots go.
    #[command(flatten)]
    enrich: EnrichArgs,
    #[command(flatten)]
    sessions: SessionArgs,
    /// Where admins' repairs read zKillboard's history.
    #[command(flatten)]
    zkb: ZkbArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = killreport::config::init_process(|args| &args.log);
    let shutdown = killreport::shutdown::on_signal();
    let metrics = killreport::telemetry::install(args.metrics.metrics)?;
    let auth = args.sso.auth().context("configuring EVE SSO")?;

    let pool = until_up("PostgreSQL", &shutdown, || args.database.connect()).await?;
    let (redis_url, channel) = (&args.redis.redis_url, &args.redis.events_channel);
    let redis = until_up("Redis", &shutdown, || {
        EventPublisher::connect(redis_url, channel)
    })
    .await?;
    let statics = Arc::new(Statics::load(&pool).await.context("loading static data")?);
    let hub = until_up("Redis", &shutdown, || {
        let (pool, statics) = (pool.clone(), Arc::clone(&statics));
        let check_every = args.live.check_every();
        Hub::start(
            pool,
            statics,
            redis_url,
            channel,
            check_every,
            shutdown.clone(),
        )
    })
    .await
    .context("subscribing to killmail events on Redis")?;
    let bus_channel = &args.bus.bus_channel;
    let log = until_up("Redis", &shutdown, || {
        let (pool, hub) = (pool.clone(), hub.clone());
        EventLog::start(pool, hub, redis_url, bus_channel, shutdown.clone())
    })
    .await
    .context("subscribing to the event bus on Redis")?;
    if let Some(retention) = args.event_log.retention() {
        tokio::spawn(killreport::event_log::keep_for(
            pool.clone(),
            retention,
            shutdown.clone(),
        ));
    }
    let status = Monitor::start(
        Sources {
            pool: pool.clone(),
            redis: until_up("Redis", &shutdown, || {
                killreport::events::connect(redis_url)
            })
            .await?,
            keys: args.status.keys(),
            rabbitmq_url: args.rabbit.rabbitmq_url.clone(),
            topology: args.rabbit.topology(),
            bus_channel: args.status.status_events.then(|| bus_channel.clone()),
            interval: args.status.interval(),
        },
        shutdown.clone(),
    );
    if let Some(interval) = args.statistics.interval() {
        let statistics = Statistics {
            pool: pool.clone(),
            redis: until_up("Redis", &shutdown, || {
                killreport::events::connect(redis_url)
            })
            .await?,
            channel: bus_channel.clone(),
            statics: Arc::clone(&statics),
            interval,
        };
        tokio::spawn(statistics.run(shutdown.clone()));
    }
    let queries = args.queries.connect(&args.database).await?;
    let schema = killreport::graphql::schema(
        queries,
        hub.clone(),
        log.clone(),
        Arc::clone(&statics),
        status,
    );
    let listener = tokio::net::TcpListener::bind(&args.http.listen_addr)
        .await
        .with_context(|| format!("listening on {}", args.http.listen_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "server listening");
    let updates = Updates::start(args.updates.settings(), log, shutdown.clone());
    let commands = until_up("Redis", &shutdown, || {
        killreport::events::connect(redis_url)
    })
    .await?;
    let peers = args.http.ws_peers();
    let websocket = Websocket::start(
        args.zkb_websocket.limits(&peers),
        statics,
        &hub,
        shutdown.clone(),
    );
    let zkb_api = ZkbApi {
        redisq: Redisq::new(pool.clone(), commands.clone(), DEFAULT_KEY_PREFIX, &hub),
        websocket: websocket.clone(),
    };
    let management = Management {
        pool: pool.clone(),
        redis: commands,
        channel: bus_channel.clone(),
    };
    let management_listener = tokio::net::TcpListener::bind(&args.updates.management_addr)
        .await
        .with_context(|| format!("listening on {}", args.updates.management_addr))?;
    tracing::info!(addr = %management_listener.local_addr()?, "management API listening");
    let sessions = Sessions::start(pool.clone(), args.sessions.settings(), shutdown.clone());
    let gate = Gate {
        sessions: sessions.clone(),
        operations: Operations {
            rabbitmq_url: args.rabbit.rabbitmq_url.clone(),
            topology: args.rabbit.topology(),
            enrich_topology: args.enrich.topology(&args.rabbit),
            backfill: Arc::new(args.everef.backfill(Importer {
                pool: pool.clone(),
                announce: Announce::Never,
                publisher: None,
                batch_size: killreport::import::HISTORY_BATCH,
                max_reasons: 20,
            })?),
            backfilling: Default::default(),
            pool: pool.clone(),
            zkb_base_url: args.zkb.zkb_base_url.clone(),
            shutdown: shutdown.clone(),
        },
    };
    let login = Login {
        auth,
        pool: pool.clone(),
        sessions,
        scopes: args.sessions.eve_sso_scopes.clone(),
        redirect: args.sessions.auth_redirect_url.clone(),
    };
    let ws = WsService::new(
        schema.clone(),
        hub,
        args.http.ws_limits(&peers),
        shutdown.clone(),
    )
    .with_gate(gate.clone());
    let readiness = Readiness::default().postgres(pool).redis(redis);
    args.status
        .heartbeat(&args.redis)
        .start("server", readiness.clone(), &shutdown);
    let state = AppState {
        schema,
        ws: ws.clone(),
        updates: updates.clone(),
        zkb_api,
        cors: killreport::http::cors_layer(&args.cors.cors_origins)?,
        gate,
        login,
    };
    let limits = args.http.http_limits();
    let management = serve(
        management_listener,
        management::router(management),
        limits.clone(),
        shutdown.clone(),
    );
    let (served, managed) = tokio::join!(
        serve(
            listener,
            router(state, readiness, metrics),
            limits,
            shutdown
        ),
        management
    );
    served?;
    managed.context("serving the management API")?;
    tokio::join!(ws.closed(), updates.closed(), websocket.closed());
    Ok(())
}
