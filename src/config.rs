//! Settings, one small clap struct per dependency with DESIGN.md's defaults, flattened into each
//! binary so `--help` lists exactly what that process reads. The library itself never reads the
//! environment: names of queues, exchanges and channels are passed in from here.

use std::time::Duration;

use clap::Args;

use crate::backfill::Backfill;
use crate::backoff::Backoff;
use crate::feed::{Followed, R2z2Settings, RedisqSettings};
use crate::queue::runner::{Consuming, Job};
use crate::queue::{Broker, Connector, IngestJob};
use crate::status::heartbeat::{Heartbeat, Keys};

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL; the database is created and migrated on first use.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@localhost:5432/killreport"
    )]
    pub database_url: String,
    /// Connections in this process's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

impl DatabaseArgs {
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgPool> {
        crate::db::connect(&self.database_url, self.database_max_connections).await
    }
}

/// The server's pool for GraphQL queries, apart from the one its own work (the live hub,
/// `/readyz`, zKillboard's APIs) uses.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Connections for GraphQL queries; a query that finds them all busy waits at most its
    /// statement timeout, then is told to try again.
    #[arg(long, env = "GRAPHQL_DATABASE_CONNECTIONS", default_value_t = 8)]
    pub graphql_database_connections: u32,
    /// Milliseconds a statement of a GraphQL query may run before it is cancelled (the query
    /// gets a QUERY_TIMEOUT error).
    #[arg(long, env = "GRAPHQL_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
    pub graphql_statement_timeout_ms: u64,
}

impl QueryArgs {
    pub async fn connect(&self, database: &DatabaseArgs) -> anyhow::Result<sqlx::PgPool> {
        crate::db::connect_queries(
            &database.database_url,
            self.graphql_database_connections.max(1),
            Duration::from_millis(self.graphql_statement_timeout_ms.max(1)),
        )
        .await
    }
}

#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The pub/sub channel killmail events are announced on.
    #[arg(long, env = "EVENTS_CHANNEL", default_value = crate::events::DEFAULT_CHANNEL)]
    pub events_channel: String,
}

#[derive(Debug, Clone, Args)]
pub struct RabbitArgs {
    #[arg(
        long,
        env = "RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub rabbitmq_url: String,
    /// The exchange jobs are published to.
    #[arg(long, env = "RABBITMQ_EXCHANGE", default_value = "killreport")]
    pub rabbitmq_exchange: String,
    /// The queue (and routing key) of killmail jobs; its dead letters go to `<queue>.dead`.
    #[arg(long, env = "INGEST_QUEUE", default_value = <IngestJob as Job>::QUEUE)]
    pub ingest_queue: String,
    /// The retry ladder, milliseconds per attempt separated by commas (by default 1 s, 5 s,
    /// 30 s, 2 min, 10 min); every process sharing the queues must be given the same.
    #[arg(long, env = "RETRY_DELAYS_MS", value_delimiter = ',')]
    pub retry_delays_ms: Vec<u64>,
}

impl RabbitArgs {
    pub fn topology(&self) -> crate::queue::Topology {
        let delays = self
            .retry_delays_ms
            .iter()
            .copied()
            .map(Duration::from_millis);
        crate::queue::Topology::new(&self.rabbitmq_exchange, &self.ingest_queue)
            .with_retry_delays(delays.collect())
    }

    /// Connecting as `process`: the connection is named `<process> <queue>` on the broker.
    pub fn connector(&self, process: &str) -> Connector {
        Connector {
            url: self.rabbitmq_url.clone(),
            name: format!("{process} {}", self.ingest_queue),
            broker: Broker::default(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EsiArgs {
    #[arg(long, env = "ESI_BASE_URL", default_value = "https://esi.evetech.net")]
    pub esi_base_url: String,
    /// Seconds before an ESI request is abandoned (and retried later).
    #[arg(long, env = "ESI_TIMEOUT_SECS", default_value_t = 10)]
    pub esi_timeout_secs: u64,
}

impl EsiArgs {
    pub fn client(&self) -> anyhow::Result<crate::esi::Esi> {
        crate::esi::Esi::new(
            &self.esi_base_url,
            Duration::from_secs(self.esi_timeout_secs),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Address this worker serves /healthz, /readyz and /metrics on (e.g. 127.0.0.1:9101);
    /// unset, none.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<String>,
}

/// How a worker takes its jobs; the defaults suit `worker-killmails`.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Jobs RabbitMQ hands this worker before it has settled them.
    #[arg(long, env = "PREFETCH", default_value_t = 200)]
    pub prefetch: u16,
    /// At most this many jobs are handled as one batch (for killmails: one transaction).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,
    /// Milliseconds a batch waits to fill once its first job has arrived; 0 takes only what
    /// has already arrived (batches still form under load, while the last one is handled).
    #[arg(long, env = "BATCH_WAIT_MS", default_value_t = 0)]
    pub batch_wait_ms: u64,
    /// A job handled this many times without ever being settled (each time the worker died or
    /// lost its connection while handling it) is dead-lettered when it comes back again.
    #[arg(long, env = "DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
}

impl ConsumerArgs {
    /// Consuming `rabbit`'s queue as `process`, given `grace` to stop.
    pub fn consuming(&self, rabbit: &RabbitArgs, process: &str, grace: Duration) -> Consuming {
        Consuming {
            connector: rabbit.connector(process),
            topology: rabbit.topology(),
            prefetch: self.prefetch,
            max_batch: self.batch_size.max(1),
            max_wait: Duration::from_millis(self.batch_wait_ms),
            grace,
            delivery_limit: self.delivery_limit.max(1),
        }
    }
}

/// The live feeds' settings (worker-redisq), with the defaults zKillboard asks for.
#[derive(Debug, Clone, Args)]
pub struct FeedArgs {
    /// zKillboard's R2Z2, read when no REDISQ_URL is given.
    #[arg(
        long,
        env = "R2Z2_BASE_URL",
        default_value = "https://r2z2.zkillboard.com"
    )]
    pub r2z2_base_url: String,
    /// Milliseconds to wait when the next R2Z2 sequence is not produced yet (404).
    #[arg(long, env = "R2Z2_IDLE_WAIT_MS", default_value_t = 6000)]
    pub r2z2_idle_wait_ms: u64,
    /// Least milliseconds between two R2Z2 requests (R2Z2 allows under 10 a second).
    #[arg(long, env = "R2Z2_MIN_INTERVAL_MS", default_value_t = 110)]
    pub r2z2_min_interval_ms: u64,
    /// Milliseconds an R2Z2 sequence must stay missing, while later ones exist, before it is
    /// skipped (each skip is logged and recorded in the `feed_skips` table).
    #[arg(long, env = "R2Z2_SKIP_AFTER_MS", default_value_t = 180_000)]
    pub r2z2_skip_after_ms: u64,
    /// Milliseconds between tries to take the R2Z2 cursor's lock while another worker-redisq
    /// holds it.
    #[arg(long, env = "R2Z2_TAKEOVER_MS", default_value_t = 5000)]
    pub r2z2_takeover_ms: u64,
    /// A RedisQ-compatible listen URL; when set, it is long-polled instead of R2Z2.
    #[arg(long, env = "REDISQ_URL")]
    pub redisq_url: Option<String>,
    /// This install's RedisQ queue; keep it stable so a restart resumes it.
    #[arg(long, env = "REDISQ_QUEUE_ID", default_value = "killreport")]
    pub redisq_queue_id: String,
    /// Seconds RedisQ may hold a poll open (1–10).
    #[arg(
        long,
        env = "REDISQ_TTW",
        default_value_t = 10,
        value_parser = clap::value_parser!(u8).range(1..=10)
    )]
    pub redisq_ttw: u8,
    /// Least milliseconds between two RedisQ polls.
    #[arg(long, env = "REDISQ_MIN_INTERVAL_MS", default_value_t = 500)]
    pub redisq_min_interval_ms: u64,
    /// Seconds before a feed request is abandoned (for RedisQ, beyond its ttw) and retried.
    #[arg(long, env = "FEED_TIMEOUT_SECS", default_value_t = 20)]
    pub feed_timeout_secs: u64,
    /// Hours R2Z2 keeps its files, or a little less: when the cursor has not moved for longer
    /// and its next file is gone, the poller resynchronises to the newest sequence and repairs
    /// the hours it lost from zKillboard's history.
    #[arg(long, env = "R2Z2_RETENTION_HOURS", default_value_t = 20)]
    pub r2z2_retention_hours: u64,
    #[command(flatten)]
    pub zkb: ZkbArgs,
}

impl FeedArgs {
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        crate::feed::http_client(Duration::from_secs(self.feed_timeout_secs))
    }

    /// The feed these settings name: RedisQ when `REDISQ_URL` is set, else R2Z2, which keeps
    /// its cursor in `pool` (`None` only when following RedisQ).
    pub fn followed(&self, pool: Option<sqlx::PgPool>) -> anyhow::Result<Followed> {
        Ok(match (&self.redisq_url, pool) {
            (Some(url), _) => Followed::Redisq {
                url: url.clone(),
                settings: self.redisq_settings(),
            },
            (None, Some(pool)) => Followed::R2z2 {
                base_url: self.r2z2_base_url.clone(),
                pool,
                settings: self.r2z2_settings(),
            },
            (None, None) => anyhow::bail!("R2Z2 needs the database for its cursor"),
        })
    }

    pub fn r2z2_settings(&self) -> R2z2Settings {
        R2z2Settings {
            idle_wait: Duration::from_millis(self.r2z2_idle_wait_ms),
            min_interval: Duration::from_millis(self.r2z2_min_interval_ms),
            retention: Duration::from_secs(self.r2z2_retention_hours * 3600),
            zkb_base_url: Some(self.zkb.zkb_base_url.clone()),
            skip_after: Duration::from_millis(self.r2z2_skip_after_ms),
            takeover_check: Duration::from_millis(self.r2z2_takeover_ms),
            ..R2z2Settings::default()
        }
    }

    pub fn redisq_settings(&self) -> RedisqSettings {
        RedisqSettings {
            queue_id: self.redisq_queue_id.clone(),
            ttw: self.redisq_ttw,
            min_interval: Duration::from_millis(self.redisq_min_interval_ms),
            timeout: Duration::from_secs(self.feed_timeout_secs),
            backoff: Backoff::default(),
        }
    }
}

/// Reads `.env` if present, parses the process's arguments `A`, and starts logging as
/// `RUST_LOG` (default `info`) and the [`LogArgs`] that `log` finds in them say.
pub fn init_process<A: clap::Parser>(log: fn(&A) -> &LogArgs) -> A {
    // A missing .env is the normal case.
    let _ = dotenvy::dotenv();
    let args = A::parse();
    let lines = tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    match log(&args).log_format {
        LogFormat::Text => lines.init(),
        // The text line's fields at the top level of the object, beside timestamp, level,
        // target and the spans.
        LogFormat::Json => lines.json().flatten_event(true).init(),
    }
    args
}

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address the server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:4000")]
    pub listen_addr: String,
    /// WebSocket connections held at once; more are refused with 503.
    #[arg(long, env = "WS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub ws_max_connections: usize,
    /// Operations (subscriptions) at once on one WebSocket; more get an error message.
    #[arg(long, env = "WS_MAX_SUBSCRIPTIONS", default_value_t = 100)]
    pub ws_max_subscriptions: usize,
    /// Messages queued for one WebSocket client; a client that falls this far behind is
    /// closed with 1008 and can resume with `after`.
    #[arg(long, env = "WS_SEND_QUEUE", default_value_t = 256)]
    pub ws_send_queue: usize,
    /// Seconds between keepalive pings; a client silent for two is dropped, and one that has
    /// not sent `connection_init` after one is closed with 4408.
    #[arg(long, env = "WS_KEEPALIVE_SECS", default_value_t = 15)]
    pub ws_keepalive_secs: u64,
    /// Results a shared subscription holds for a subscriber resuming with `after` while it
    /// replays what it missed; when more come, the replay goes further instead.
    #[arg(long, env = "WS_CATCH_UP_HOLD", default_value_t = 1024)]
    pub ws_catch_up_hold: usize,
    /// Bytes queued for one WebSocket client; one this far behind is closed with 1008 too.
    #[arg(long, env = "WS_SEND_QUEUE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub ws_send_queue_bytes: usize,
    /// Seconds a `/graphql` WebSocket may go without an operation before it is closed (1000).
    #[arg(long, env = "WS_SUBSCRIBE_WITHIN_SECS", default_value_t = 60)]
    pub ws_subscribe_within_secs: u64,
    /// WebSocket connections (`/graphql` and `/websocket/` together) one address may hold;
    /// more are refused with 429. IPv6 addresses count by /64.
    #[arg(long, env = "WS_MAX_CONNECTIONS_PER_IP", default_value_t = 100)]
    pub ws_max_connections_per_ip: usize,
    /// The same for loopback (benchmarks, a reverse proxy on the same host).
    #[arg(
        long,
        env = "WS_MAX_CONNECTIONS_PER_LOOPBACK",
        default_value_t = 20_000
    )]
    pub ws_max_connections_per_loopback: usize,
    /// HTTP connections held at once (WebSockets, once upgraded, count by their own limits);
    /// more are answered 503 and closed.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,
    /// Seconds a client has to send a request's headers, from the connection's start or the
    /// end of its previous request; an idle keep-alive connection is closed after it too.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub http_header_timeout_secs: u64,
    /// Seconds a request may take once its headers are in, reading its body included; over
    /// it, 408.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub http_request_timeout_secs: u64,
}

impl HttpArgs {
    /// The per-address counts the server's WebSockets share.
    pub fn ws_peers(&self) -> crate::ws::peers::Peers {
        crate::ws::peers::Peers::new(crate::ws::peers::PeerLimits {
            per_ip: self.ws_max_connections_per_ip,
            per_loopback: self.ws_max_connections_per_loopback,
        })
    }

    pub fn ws_limits(&self, peers: &crate::ws::peers::Peers) -> crate::ws::Limits {
        crate::ws::Limits {
            max_connections: self.ws_max_connections,
            max_subscriptions: self.ws_max_subscriptions,
            send_queue: self.ws_send_queue.max(1),
            send_queue_bytes: self.ws_send_queue_bytes,
            keepalive: Duration::from_secs(self.ws_keepalive_secs.max(1)),
            catch_up_hold: self.ws_catch_up_hold,
            max_message_bytes: crate::http::MAX_BODY_BYTES,
            subscribe_within: Duration::from_secs(self.ws_subscribe_within_secs.max(1)),
            peers: peers.clone(),
        }
    }

    pub fn http_limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            max_connections: self.http_max_connections.max(1),
            header_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            request_timeout: Duration::from_secs(self.http_request_timeout_secs.max(1)),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one coloured line per event.
    Text,
    /// For log shippers: one JSON object per line, with the same fields.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// How log lines are written (`RUST_LOG` says which).
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    pub log_format: LogFormat,
}

/// Whether the process keeps Prometheus metrics (served on `/metrics`).
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// `false`: record nothing, and `/metrics` answers 404 (for measuring what metrics cost).
    #[arg(long, env = "METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,
}

/// The event bus (see `bus`): the Redis channel events beyond killmails travel on.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// The pub/sub channel of the event bus (`POST /events`, `send_event`, `/updates`).
    #[arg(long, env = "BUS_CHANNEL", default_value = crate::bus::DEFAULT_CHANNEL)]
    pub bus_channel: String,
}

/// The `statistics` event (see `stats::event`): today's top lists, sent by one server process
/// when they change.
#[derive(Debug, Clone, Args)]
pub struct StatisticsArgs {
    /// Seconds between looks at today's top lists; 0: this process never sends the event.
    #[arg(long, env = "STATISTICS_INTERVAL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub statistics_interval_secs: u64,
}

impl StatisticsArgs {
    pub fn interval(&self) -> Option<Duration> {
        (self.statistics_interval_secs > 0)
            .then(|| Duration::from_secs(self.statistics_interval_secs))
    }
}

/// The status view (`workerStatus`): where every process writes its heartbeat, and how often.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Prefix of the Redis keys heartbeats are kept under.
    #[arg(long, env = "STATUS_KEY", default_value = "killreport:status")]
    pub status_key: String,
    /// Seconds between heartbeats, and between the server's workings-out of the status.
    #[arg(long, env = "STATUS_INTERVAL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub status_interval_secs: u64,
    /// Whether the server also sends the status on the event bus as a `worker-status` event
    /// (kept in the event log like any event) every interval.
    #[arg(long, env = "STATUS_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub status_events: bool,
}

impl StatusArgs {
    pub fn keys(&self) -> Keys {
        Keys::new(&self.status_key)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.status_interval_secs)
    }

    /// The beat of a process whose Redis is `redis`.
    pub fn heartbeat(&self, redis: &RedisArgs) -> Heartbeat {
        Heartbeat {
            redis_url: redis.redis_url.clone(),
            keys: self.keys(),
            interval: self.interval(),
        }
    }
}

/// The event log the server keeps (see `event_log`).
#[derive(Debug, Clone, Args)]
pub struct EventLogArgs {
    /// Days events other than `killmail` are kept in the event log, for clients resuming with
    /// a cursor (killmail events last as long as their killmails); 0 keeps them forever.
    #[arg(long, env = "EVENT_RETENTION_DAYS", default_value_t = 30)]
    pub event_retention_days: u32,
}

impl EventLogArgs {
    /// How long events are kept; `None`: forever.
    pub fn retention(&self) -> Option<Duration> {
        (self.event_retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.event_retention_days) * 86_400))
    }
}

/// The server's `/updates` WebSocket and its management API.
#[derive(Debug, Clone, Args)]
pub struct UpdatesArgs {
    /// Where the management API (`POST /events`) listens; keep it on loopback or an internal
    /// network.
    #[arg(long, env = "MANAGEMENT_ADDR", default_value = "127.0.0.1:3001")]
    pub management_addr: String,
    /// Seconds an `/updates` client may stay silent (no answer to pings) before it is dropped.
    #[arg(long, env = "UPDATES_IDLE_SECS", default_value_t = 120)]
    pub updates_idle_secs: u64,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDRs, comma-separated.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        default_value = "",
        value_parser = crate::updates::peer::parse_proxies
    )]
    pub trusted_proxies: crate::updates::peer::Peers,
    /// Events queued for one `/updates` client; a client this far behind is cut off (1008).
    #[arg(long, env = "UPDATES_SEND_QUEUE", default_value_t = 256)]
    pub updates_send_queue: usize,
    /// `/updates` connections held at once; more are refused with 503.
    #[arg(long, env = "UPDATES_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub updates_max_connections: usize,
}

impl UpdatesArgs {
    pub fn settings(&self) -> crate::updates::Settings {
        crate::updates::Settings {
            idle: Duration::from_secs(self.updates_idle_secs.max(1)),
            send_queue: self.updates_send_queue.max(1),
            max_connections: self.updates_max_connections,
            peers: self.trusted_proxies.clone(),
        }
    }
}

/// zKillboard's websocket (`/websocket/`) on the server.
#[derive(Debug, Clone, Args)]
pub struct ZkbWebsocketArgs {
    /// Channels one `/websocket/` connection may subscribe to.
    #[arg(long, env = "ZKB_WS_MAX_CHANNELS", default_value_t = 100)]
    pub zkb_ws_max_channels: usize,
    /// Messages queued for one `/websocket/` client; one this far behind is cut off (1008).
    #[arg(long, env = "ZKB_WS_SEND_QUEUE", default_value_t = 256)]
    pub zkb_ws_send_queue: usize,
    /// `/websocket/` connections held at once; more are refused with 503.
    #[arg(long, env = "ZKB_WS_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub zkb_ws_max_connections: usize,
    /// Seconds a `/websocket/` client may stay silent (no answer to pings) before it is dropped.
    #[arg(long, env = "ZKB_WS_IDLE_SECS", default_value_t = 120)]
    pub zkb_ws_idle_secs: u64,
    /// Seconds a `/websocket/` client may go without a channel before it is closed (1000).
    #[arg(long, env = "ZKB_WS_SUBSCRIBE_WITHIN_SECS", default_value_t = 60)]
    pub zkb_ws_subscribe_within_secs: u64,
}

impl ZkbWebsocketArgs {
    /// The limits, counting connections by address in `peers` (see [`HttpArgs::ws_peers`]).
    pub fn limits(&self, peers: &crate::ws::peers::Peers) -> crate::zkb_api::websocket::Limits {
        crate::zkb_api::websocket::Limits {
            max_channels: self.zkb_ws_max_channels,
            send_queue: self.zkb_ws_send_queue.max(1),
            max_connections: self.zkb_ws_max_connections,
            idle: Duration::from_secs(self.zkb_ws_idle_secs.max(1)),
            subscribe_within: Duration::from_secs(self.zkb_ws_subscribe_within_secs.max(1)),
            peers: peers.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EverefArgs {
    /// EVE Ref's base URL; daily archives are at
    /// {base}/killmails/{yyyy}/killmails-{yyyy-mm-dd}.tar.bz2.
    #[arg(
        long,
        env = "EVEREF_BASE_URL",
        default_value = "https://data.everef.net"
    )]
    pub everef_base_url: String,
    /// Where archives are downloaded to (created if missing) and kept; a partial download
    /// left there is resumed.
    #[arg(long, env = "BACKFILL_DIR", default_value = "data/everef")]
    pub backfill_dir: std::path::PathBuf,
    /// Tries of a download that is cut off or answered 5xx, each resuming where the last
    /// stopped.
    #[arg(long, env = "BACKFILL_DOWNLOAD_ATTEMPTS", default_value_t = 3)]
    pub download_attempts: u32,
    /// Seconds without a byte from EVE Ref before a download is given up (and tried again).
    #[arg(long, env = "BACKFILL_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub read_timeout_secs: u64,
}

impl EverefArgs {
    /// A backfill from EVE Ref that stores through `importer`.
    pub fn backfill(&self, importer: crate::import::Importer) -> anyhow::Result<Backfill> {
        Ok(Backfill {
            importer,
            http: self.http_client()?,
            base_url: self.everef_base_url.clone(),
            download_dir: self.backfill_dir.clone(),
            download_attempts: self.download_attempts,
            retry_pause: Duration::from_secs(1),
        })
    }

    /// An HTTP client for downloads: killreport's User-Agent, bounded connects and silences,
    /// no bound on a whole (large) download.
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        let silence = Duration::from_secs(self.read_timeout_secs.max(1));
        reqwest::Client::builder()
            .user_agent(crate::esi::USER_AGENT)
            .connect_timeout(Duration::from_secs(10).min(silence))
            .read_timeout(silence)
            .build()
            .map_err(Into::into)
    }
}

/// zKillboard's site, whose daily history (`/api/history/YYYYMMDD.json`, killmail id → hash)
/// repairs gaps in the store.
#[derive(Debug, Clone, Args)]
pub struct ZkbArgs {
    #[arg(long, env = "ZKB_BASE_URL", default_value = "https://zkillboard.com")]
    pub zkb_base_url: String,
}

/// The server's live hub (see `live`): how often it checks that its Redis subscription is
/// alive.
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// Milliseconds between checks of the killmail subscription: a PING that must be answered
    /// within as long, and the store's newest sequence, which the hub must have passed on by
    /// the next check; a silent subscription is replaced within about twice this.
    #[arg(long, env = "LIVE_CHECK_MS", default_value_t = 3000)]
    pub live_check_ms: u64,
}

impl LiveArgs {
    pub fn check_every(&self) -> Duration {
        Duration::from_millis(self.live_check_ms.max(100))
    }
}

/// worker-enrich's queue, which `queue characters|corporations|alliances|snapshot` put jobs on.
#[derive(Debug, Clone, Args)]
pub struct EnrichArgs {
    /// The queue of entity jobs; its dead letters go to `<queue>.dead`.
    #[arg(long, env = "ENRICH_QUEUE", default_value = <crate::enrich::EnrichJob as Job>::QUEUE)]
    pub enrich_queue: String,
}

/// How worker-enrich takes its jobs.
#[derive(Debug, Clone, Args)]
pub struct EnrichWorkerArgs {
    /// Jobs RabbitMQ hands one worker-enrich before it has settled them (each job is up to a
    /// thousand characters, or some tens of corporations).
    #[arg(long, env = "ENRICH_PREFETCH", default_value_t = 4)]
    pub enrich_prefetch: u16,
    /// Requests to ESI in flight at once for one job.
    #[arg(long, env = "ENRICH_CONCURRENCY", default_value_t = 8)]
    pub enrich_concurrency: usize,
}

impl EnrichWorkerArgs {
    /// Consuming `enrich`'s queue one job at a time, given `grace` to stop.
    pub fn consuming(
        &self,
        enrich: &EnrichArgs,
        rabbit: &RabbitArgs,
        grace: Duration,
    ) -> Consuming {
        Consuming {
            connector: enrich.connector(rabbit, "worker-enrich"),
            topology: enrich.topology(rabbit),
            prefetch: self.enrich_prefetch.max(1),
            max_batch: 1,
            max_wait: Duration::ZERO,
            grace,
            delivery_limit: 5,
        }
    }
}

impl EnrichArgs {
    /// The entity queue on `rabbit`'s exchange, with its retry ladder.
    pub fn topology(&self, rabbit: &RabbitArgs) -> crate::queue::Topology {
        crate::queue::Topology {
            queue: self.enrich_queue.clone(),
            ..rabbit.topology()
        }
    }

    /// Connecting as `process` (named `<process> <queue>` on the broker).
    pub fn connector(&self, rabbit: &RabbitArgs, process: &str) -> Connector {
        Connector {
            url: rabbit.rabbitmq_url.clone(),
            name: format!("{process} {}", self.enrich_queue),
            broker: Broker::default(),
        }
    }
}

/// What worker-enrich queues by itself (see `enrich::schedule`).
#[derive(Debug, Clone, Args)]
pub struct EnrichScheduleArgs {
    /// Seconds between looks at the killmails stored since the last, for ids first seen.
    #[arg(long, env = "ENRICH_SCAN_SECS", default_value_t = 10)]
    pub enrich_scan_secs: u64,
    /// Killmails looked through at a time.
    #[arg(long, env = "ENRICH_SCAN_BATCH", default_value_t = 5000)]
    pub enrich_scan_batch: i64,
    /// Pilots seen on a killmail within this many days have their affiliation kept fresh.
    #[arg(long, env = "AFFILIATION_RECENT_DAYS", default_value_t = 7)]
    pub affiliation_recent_days: u64,
    /// Seconds after which such a pilot's affiliation is read again.
    #[arg(long, env = "AFFILIATION_REFRESH_SECS", default_value_t = 3600)]
    pub affiliation_refresh_secs: u64,
    /// Whether the worker queues every corporation's and alliance's snapshot once a day.
    #[arg(long, env = "DAILY_SNAPSHOTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub daily_snapshots: bool,
}

impl EnrichScheduleArgs {
    pub fn settings(&self) -> crate::enrich::schedule::Settings {
        crate::enrich::schedule::Settings {
            every: Duration::from_secs(self.enrich_scan_secs.max(1)),
            scan_batch: self.enrich_scan_batch.max(1),
            recent: Duration::from_secs(self.affiliation_recent_days * 86_400),
            affiliation_max_age: Duration::from_secs(self.affiliation_refresh_secs.max(1)),
            daily_snapshots: self.daily_snapshots,
        }
    }
}

/// Where ESI pauses are shared between processes (see `esi`).
#[derive(Debug, Clone, Args)]
pub struct EsiPauseArgs {
    /// Redis key holding "ESI paused until" (ms since the epoch), shared by every process
    /// that asks ESI from this host, so that a 420 or 429 met by one holds off all of them.
    #[arg(
        long,
        env = "ESI_PAUSE_KEY",
        default_value = "killreport:esi:paused-until"
    )]
    pub esi_pause_key: String,
}

impl EsiPauseArgs {
    /// `esi`'s client, sharing its pauses through the Redis at `redis_url`.
    pub async fn client(&self, esi: &EsiArgs, redis_url: &str) -> anyhow::Result<crate::esi::Esi> {
        let redis = crate::events::connect(redis_url).await?;
        Ok(esi.client()?.share_pauses(redis, &self.esi_pause_key))
    }
}

/// Which origins browsers may call the server's `/graphql` from.
#[derive(Debug, Clone, Args)]
pub struct CorsArgs {
    /// Origins allowed to call `/graphql` from a browser, comma-separated (e.g.
    /// `https://killboard.example,http://localhost:3000`); none: no CORS headers at all.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
}
/// Item prices for killreport's own killmail values (see `valuation`): how often
/// worker-killmails makes sure today's are stored.
#[derive(Debug, Clone, Args)]
pub struct PricesArgs {
    /// Seconds between checks that today's item prices (ESI `GET /markets/prices/`) are
    /// stored, fetching them (and valuing again the killmails they now value) when not; one
    /// worker does it at a time. 0: never.
    #[arg(long, env = "PRICES_INTERVAL_SECS", default_value_t = 3600)]
    pub prices_interval_secs: u64,
}

impl PricesArgs {
    /// How often to check, unless never.
    pub fn interval(&self) -> Option<Duration> {
        (self.prices_interval_secs > 0).then(|| Duration::from_secs(self.prices_interval_secs))
    }
}

/// EVE SSO: the application registered on EVE's developer site and the key that seals the
/// pilots' tokens; every process acting for logged-in pilots flattens it.
#[derive(Debug, Clone, Args)]
pub struct SsoArgs {
    #[arg(
        long,
        env = "EVE_SSO_URL",
        default_value = "https://login.eveonline.com"
    )]
    pub eve_sso_url: String,
    /// The application's client id; unset, login is off.
    #[arg(long, env = "EVE_CLIENT_ID")]
    pub eve_client_id: Option<String>,
    #[arg(long, env = "EVE_CLIENT_SECRET", hide_env_values = true)]
    pub eve_client_secret: Option<String>,
    /// The callback URL registered with the application (killreport's `/auth/callback`).
    #[arg(
        long,
        env = "EVE_CALLBACK_URL",
        default_value = "http://localhost:4000/auth/callback"
    )]
    pub eve_callback_url: String,
    /// 32 random bytes, base64 (`openssl rand -base64 32`), sealing the stored tokens;
    /// required once EVE_CLIENT_ID is set. Changing it makes every pilot log in again.
    #[arg(long, env = "TOKEN_KEY", hide_env_values = true)]
    pub token_key: Option<String>,
    /// Seconds before a request to the SSO is abandoned.
    #[arg(long, env = "EVE_SSO_TIMEOUT_SECS", default_value_t = 10)]
    pub eve_sso_timeout_secs: u64,
    /// Least seconds between two fetches of the SSO's signing keys for a key id not seen yet.
    #[arg(long, env = "EVE_SSO_JWKS_REFETCH_SECS", default_value_t = 10)]
    pub eve_sso_jwks_refetch_secs: u64,
}

impl SsoArgs {
    /// The SSO client and token key; `None` when no application is configured.
    pub fn auth(&self) -> anyhow::Result<Option<crate::auth::Auth>> {
        use anyhow::Context as _;
        // Empty counts as unset (docker-compose passes `${EVE_CLIENT_ID:-}` through).
        let given = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        let Some(client_id) = given(&self.eve_client_id) else {
            return Ok(None);
        };
        let client_secret = given(&self.eve_client_secret)
            .context("EVE_CLIENT_ID is set but EVE_CLIENT_SECRET is not")?;
        let key = given(&self.token_key)
            .context("EVE_CLIENT_ID is set but TOKEN_KEY (the key sealing tokens) is not")?;
        let cipher = crate::auth::cipher::TokenCipher::from_base64(&key)?;
        reqwest::Url::parse(&self.eve_sso_url).context("EVE_SSO_URL is not a URL")?;
        let sso = crate::auth::sso::Sso::new(crate::auth::sso::SsoSettings {
            base_url: self.eve_sso_url.clone(),
            client_id,
            client_secret: crate::auth::sso::Secret::new(client_secret),
            callback_url: self.eve_callback_url.clone(),
            timeout: Duration::from_secs(self.eve_sso_timeout_secs.max(1)),
            jwks_refetch: Duration::from_secs(self.eve_sso_jwks_refetch_secs),
        })
        .context("building the SSO client")?;
        Ok(Some(crate::auth::Auth { sso, cipher }))
    }
}

/// The server's logins and sessions (see `auth`), beside the SSO's [`SsoArgs`].
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Hours a session lasts from login.
    #[arg(long, env = "SESSION_TTL_HOURS", default_value_t = 168)]
    pub session_ttl_hours: u64,
    /// Seconds a session lasts, overriding SESSION_TTL_HOURS (for tests and short-lived
    /// deployments).
    #[arg(long, env = "SESSION_TTL_SECS", hide = true)]
    pub session_ttl_secs: Option<u64>,
    /// Seconds between checks of the sessions this server's WebSockets hold: a logout on any
    /// server closes them (4403) within about this.
    #[arg(long, env = "SESSION_CHECK_SECS", default_value_t = 5)]
    pub session_check_secs: u64,
    /// Where `/auth/callback` sends the browser, with `#token=…`; unset, it answers JSON.
    #[arg(long, env = "AUTH_REDIRECT_URL")]
    pub auth_redirect_url: Option<String>,
    /// Characters that may run the operational mutations, comma-separated ids.
    #[arg(long, env = "ADMIN_CHARACTER_IDS", value_delimiter = ',')]
    pub admin_character_ids: Vec<i64>,
    /// Scopes asked of pilots at login, space-separated.
    #[arg(
        long,
        env = "EVE_SSO_SCOPES",
        value_delimiter = ' ',
        default_value = "publicData esi-killmails.read_killmails.v1 esi-killmails.read_corporation_killmails.v1 esi-characters.read_corporation_roles.v1"
    )]
    pub eve_sso_scopes: Vec<String>,
}

impl SessionArgs {
    pub fn settings(&self) -> crate::auth::sessions::SessionSettings {
        let ttl = self
            .session_ttl_secs
            .unwrap_or(self.session_ttl_hours.saturating_mul(3600));
        crate::auth::sessions::SessionSettings {
            ttl: Duration::from_secs(ttl.max(1)),
            check_every: Duration::from_secs(self.session_check_secs.max(1)),
            admins: self.admin_character_ids.iter().copied().collect(),
        }
    }
}

/// The queue of pilots' history syncs (worker-user-killmails, `queue user-killmails`).
#[derive(Debug, Clone, Args)]
pub struct UserSyncArgs {
    /// The queue (and routing key) of user-killmails jobs, one per pilot to sync, on
    /// RABBITMQ_EXCHANGE; its dead letters go to `<queue>.dead`.
    #[arg(long, env = "USER_KILLMAILS_QUEUE", default_value = <crate::user_sync::UserKillmailsJob as Job>::QUEUE)]
    pub user_killmails_queue: String,
}

impl UserSyncArgs {
    /// The user-killmails queue with `rabbit`'s exchange and retry ladder.
    pub fn topology(&self, rabbit: &RabbitArgs) -> crate::queue::Topology {
        crate::queue::Topology {
            queue: self.user_killmails_queue.clone(),
            ..rabbit.topology()
        }
    }
}

/// When worker-user-killmails syncs pilots, and how many at once.
#[derive(Debug, Clone, Args)]
pub struct UserScheduleArgs {
    /// Seconds between two syncs of a pilot's history.
    #[arg(long, env = "USER_SYNC_INTERVAL_SECS", default_value_t = 3600)]
    pub user_sync_interval_secs: u64,
    /// Seconds between the scheduler's looks for pilots due (a pilot who just logged in is
    /// synced at the next).
    #[arg(long, env = "USER_SYNC_CHECK_SECS", default_value_t = 5)]
    pub user_sync_check_secs: u64,
    /// Pilots synced at once by this worker.
    #[arg(long, env = "USER_SYNC_CONCURRENCY", default_value_t = 4)]
    pub user_sync_concurrency: usize,
}

impl UserScheduleArgs {
    pub fn schedule(&self) -> crate::user_sync::Schedule {
        crate::user_sync::Schedule {
            interval: Duration::from_secs(self.user_sync_interval_secs.max(1)),
            check_every: Duration::from_secs(self.user_sync_check_secs.max(1)),
        }
    }

    /// Consuming the user-killmails queue as `process`, given `grace` to stop: a batch is as
    /// many pilots as are synced at once.
    pub fn consuming(
        &self,
        rabbit: &RabbitArgs,
        user_sync: &UserSyncArgs,
        process: &str,
        grace: Duration,
    ) -> Consuming {
        let concurrency = self.user_sync_concurrency.clamp(1, usize::from(u16::MAX));
        Consuming {
            connector: Connector {
                url: rabbit.rabbitmq_url.clone(),
                name: format!("{process} {}", user_sync.user_killmails_queue),
                broker: Broker::default(),
            },
            topology: user_sync.topology(rabbit),
            prefetch: u16::try_from(concurrency).unwrap_or(u16::MAX),
            max_batch: concurrency,
            max_wait: Duration::ZERO,
            grace,
            // A sync that kills its worker five times is not going to succeed the sixth.
            delivery_limit: 5,
        }
    }
}
