//! The test harness: an isolated environment per test (its database dropped when the test
//! passes), the fixtures and fakes, and helpers to watch what the system does, every wait
//! bounded.

pub mod database;
pub mod fakes;
pub mod fixtures;
pub mod fuzz;
pub mod json_diff;
pub mod private_services;
pub mod proxy;
pub mod rabbitmqctl;
pub mod ws;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use futures::StreamExt;
use killreport::config::RabbitArgs;
use killreport::events::{EventPublisher, KillmailAdded};
use killreport::killmail::Received;
use killreport::queue::{Publisher, Topology};
use killreport::status::heartbeat::Keys;
use killreport::status::{Monitor, Sources, Status};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::database::TestDatabase;

/// Every wait in a test ends after this long at the most.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Retries `condition` every 50 ms until it holds, failing the test after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {within:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the `/readyz` at `url` answers: its status and each dependency's state (`"up"` or
/// `"down"`); `None` while nothing answers there within a few seconds.
pub async fn readyz(url: &str) -> Option<(u16, serde_json::Map<String, serde_json::Value>)> {
    static HTTP: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client")
    });
    let response = HTTP.get(url).send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.ok()?))
}

/// A port of 127.0.0.1 nobody listens on just now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `url` (a service's) with its port replaced by a port of 127.0.0.1 that refuses connections
/// for `delay` and then forwards each one to the service: the service as if it started late.
pub fn started_late(url: &str, delay: Duration) -> String {
    let mut late = reqwest::Url::parse(url).expect("a service URL");
    let target = format!(
        "{}:{}",
        late.host_str().expect("a host"),
        late.port().expect("a port")
    );
    let port = free_port();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the late port is still free");
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    late.set_host(Some("127.0.0.1")).expect("a host");
    late.set_port(Some(port)).expect("a port");
    late.to_string()
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// Where a test environment's PostgreSQL, Redis and RabbitMQ are.
#[derive(Debug, Clone)]
pub struct Services {
    /// A server URL without a database, like `postgres://postgres@127.0.0.1:5432`.
    pub postgres: String,
    pub redis: String,
    pub rabbitmq: String,
}

impl Services {
    /// The services every test shares, as `TEST_*_URL` names them.
    pub fn shared() -> Self {
        Self {
            postgres: postgres_base(),
            redis: redis_url(),
            rabbitmq: rabbitmq_url(),
        }
    }
}

fn postgres_base() -> String {
    env_or(
        "TEST_POSTGRES_URL",
        "postgres://postgres:postgres@127.0.0.1:5432",
    )
}

pub fn redis_url() -> String {
    env_or("TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

pub fn rabbitmq_url() -> String {
    env_or("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// One test's own database, queues and Redis channel, on the real services.
pub struct TestEnv {
    pub id: String,
    pub database_url: String,
    pub pool: PgPool,
    pub rabbit: RabbitArgs,
    pub redis_url: String,
    pub channel: String,
    /// Extra variables for every spawned process (fake service URLs, tuning).
    pub vars: HashMap<String, String>,
    /// Where spawned processes write their output, one `<binary>.log` each; by default they
    /// write to the test's own output.
    pub log_dir: Option<PathBuf>,
    /// Dropped with the environment unless the test fails; last, so that it goes after the pool.
    _database: TestDatabase,
}

impl TestEnv {
    /// An environment on the shared services.
    pub async fn new() -> Self {
        let services = Services::shared();
        database::drop_stale_databases(&services.postgres).await;
        Self::on(services).await
    }

    /// An environment on the given services (as the fault suite's private ones).
    pub async fn on(services: Services) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = TestDatabase::new(&services.postgres, &id);
        let database_url = database.url();
        let pool = killreport::db::connect(&database_url, 5)
            .await
            .expect("creating the test database");
        let rabbit = RabbitArgs {
            rabbitmq_url: services.rabbitmq,
            rabbitmq_exchange: format!("killreport.test.{id}"),
            ingest_queue: format!("killmail.ingest.test.{id}"),
            retry_delays_ms: Vec::new(),
        };
        let channel = format!("killreport:test:{id}:killmail:added");
        Self {
            id,
            database_url,
            pool,
            rabbit,
            redis_url: services.redis,
            channel,
            vars: HashMap::new(),
            log_dir: None,
            _database: database,
        }
    }

    /// This test's event bus channel (`BUS_CHANNEL`).
    pub fn bus_channel(&self) -> String {
        format!("killreport:test:{}:bus", self.id)
    }

    /// Where this test's processes keep their heartbeats (`STATUS_KEY`).
    pub fn status_key(&self) -> String {
        format!("killreport:test:{}:status", self.id)
    }

    /// A status monitor on this test's services, as the server runs one, every second.
    pub async fn status(&self) -> Status {
        let redis = killreport::events::connect(&self.redis_url)
            .await
            .expect("connecting to Redis");
        let sources = Sources {
            pool: self.pool.clone(),
            redis,
            keys: Keys::new(&self.status_key()),
            rabbitmq_url: self.rabbit.rabbitmq_url.clone(),
            topology: self.topology(),
            bus_channel: None,
            interval: Duration::from_secs(1),
        };
        Monitor::start(sources, CancellationToken::new())
    }

    /// The management API's `http://127.0.0.1:port` of the server [`Self::start_server`]
    /// started.
    pub fn management_url(&self) -> String {
        let addr = self.vars.get("MANAGEMENT_ADDR").expect("a started server");
        format!("http://{addr}")
    }

    pub fn topology(&self) -> Topology {
        self.rabbit.topology()
    }

    /// A confirm-mode publisher on this test's queues (declaring them).
    pub async fn publisher(&self) -> Publisher {
        let connection = killreport::queue::connect(&self.rabbit.rabbitmq_url, "test")
            .await
            .expect("connecting to RabbitMQ");
        Publisher::new(&connection, self.topology())
            .await
            .expect("declaring the topology")
    }

    /// A connection to this test's RabbitMQ and a channel on it.
    pub async fn rabbitmq(&self) -> (lapin::Connection, lapin::Channel) {
        let connection = killreport::queue::connect(&self.rabbit.rabbitmq_url, "test")
            .await
            .expect("connecting to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        (connection, channel)
    }

    /// A publisher of events on this test's channel, as worker-killmails publishes them.
    pub async fn event_publisher(&self) -> EventPublisher {
        EventPublisher::connect(&self.redis_url, &self.channel)
            .await
            .expect("an event publisher")
    }

    /// Starts the server on a free port and waits until it answers; returns it and its
    /// `http://127.0.0.1:port`.
    pub async fn start_server(&mut self) -> (Child, String) {
        let port = free_port();
        self.vars
            .insert("LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
        let management = format!("127.0.0.1:{}", free_port());
        self.vars.insert("MANAGEMENT_ADDR".into(), management);
        let server = self.start_server_again().await;
        (server, format!("http://127.0.0.1:{port}"))
    }

    /// Starts the server on the address [`Self::start_server`] chose (as after a restart) and
    /// waits until it answers.
    pub async fn start_server_again(&self) -> Child {
        let addr = self
            .vars
            .get("LISTEN_ADDR")
            .expect("start_server chose the address");
        let server = self.spawn("server", &[]);
        let healthz = format!("http://{addr}/healthz");
        wait_until("the server to come up", PATIENCE, || async {
            reqwest::get(&healthz).await.is_ok()
        })
        .await;
        server
    }

    /// Spawns one of the package's binaries with this environment; it is killed when dropped.
    pub fn spawn(&self, binary: &str, args: &[&str]) -> Child {
        self.command(binary, args)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {binary}: {e}"))
    }

    /// Runs one of the package's binaries to its end (within [`PATIENCE`]), keeping its output.
    pub async fn run(&self, binary: &str, args: &[&str]) -> std::process::Output {
        let child = self
            .command(binary, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {binary}: {e}"));
        tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{binary} {args:?} did not finish in time"))
            .expect("its output")
    }

    /// A command for one of the package's binaries with this environment, to run or spawn.
    pub fn command(&self, binary: &str, args: &[&str]) -> Command {
        let path = match binary {
            "worker-redisq" => env!("CARGO_BIN_EXE_worker-redisq"),
            "worker-killmails" => env!("CARGO_BIN_EXE_worker-killmails"),
            "worker-enrich" => env!("CARGO_BIN_EXE_worker-enrich"),
            "worker-user-killmails" => env!("CARGO_BIN_EXE_worker-user-killmails"),
            "queue" => env!("CARGO_BIN_EXE_queue"),
            "server" => env!("CARGO_BIN_EXE_server"),
            other => panic!("no binary {other}"),
        };
        let mut command = Command::new(path);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", env_or("TEST_RUST_LOG", "error"))
            .env("DATABASE_URL", &self.database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("EVENTS_CHANNEL", &self.channel)
            .env("BUS_CHANNEL", self.bus_channel())
            .env("STATUS_KEY", self.status_key())
            // Tests that count events on the bus see only their own; the status test asks.
            .env("STATUS_EVENTS", "false")
            .env("RABBITMQ_URL", &self.rabbit.rabbitmq_url)
            .env("RABBITMQ_EXCHANGE", &self.rabbit.rabbitmq_exchange)
            .env("INGEST_QUEUE", &self.rabbit.ingest_queue)
            .env("ESI_BASE_URL", "http://127.0.0.1:9")
            // ESI pauses are shared through Redis: each test's processes among themselves only.
            .env(
                "ESI_PAUSE_KEY",
                format!("killreport:test:{}:esi-paused-until", self.id),
            )
            .env("R2Z2_BASE_URL", "http://127.0.0.1:9")
            // worker-killmails' daily price fetch would be one more ESI request than a test
            // counts; the valuation tests ask for it.
            .env("PRICES_INTERVAL_SECS", "0")
            .envs(&self.vars)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if !self.rabbit.retry_delays_ms.is_empty() {
            let delays: Vec<String> = self
                .rabbit
                .retry_delays_ms
                .iter()
                .map(u64::to_string)
                .collect();
            command.env("RETRY_DELAYS_MS", delays.join(","));
        }
        if let Some(dir) = &self.log_dir {
            let path = dir.join(format!("{binary}.log"));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let copy = log.try_clone().expect("a second handle on the log");
            command.stdout(copy).stderr(log);
        }
        command
    }

    /// Subscribes to this test's event channel; events arrive decoded, in order.
    pub async fn subscribe(&self) -> mpsc::UnboundedReceiver<KillmailAdded> {
        let client = redis::Client::open(self.redis_url.as_str()).expect("Redis URL");
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .expect("connecting to Redis");
        pubsub.subscribe(&self.channel).await.expect("subscribing");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let payload: String = message.get_payload().expect("text payload");
                let event = serde_json::from_str(&payload).expect("a killmail-added event");
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Stores `batch` and announces what was new on this test's channel, as worker-killmails
    /// does (without names); returns the events.
    pub async fn store_and_announce(&self, batch: &[Received]) -> Vec<KillmailAdded> {
        let stored = killreport::ingest::store(&self.pool, batch)
            .await
            .expect("store");
        let events: Vec<KillmailAdded> = stored
            .iter()
            .filter_map(|s| {
                let received = batch
                    .iter()
                    .find(|r| r.killmail.killmail_id == s.killmail_id)?;
                Some(KillmailAdded {
                    seq: s.seq,
                    killmail: received.killmail.clone(),
                    zkb: received.zkb.clone().or_else(|| s.estimate.clone()),
                    hash: Some(received.hash.clone()),
                    names: Default::default(),
                })
            })
            .collect();
        EventPublisher::connect(&self.redis_url, &self.channel)
            .await
            .expect("connecting to Redis")
            .publish(&events)
            .await
            .expect("publishing");
        events
    }

    pub async fn killmail_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM killmails")
            .fetch_one(&self.pool)
            .await
            .expect("counting killmails")
    }

    /// Waits until the store holds `n` killmails, failing after [`PATIENCE`].
    pub async fn wait_for_killmails(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let count = self.killmail_count().await;
            if count >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited {PATIENCE:?} for {n} killmails; the store holds {count}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes every message in the dead-letter queue: (body, reason header).
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, Option<String>)> {
        let (_connection, channel) = self.rabbitmq().await;
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(
                &self.topology().dead_letter_queue(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            let reason = killreport::queue::header_text(
                message.delivery.properties.headers().as_ref(),
                killreport::queue::REASON_HEADER,
            );
            out.push((message.delivery.data, reason));
        }
        out
    }

    /// Deletes this test's queues and exchange and closes its pool. The database goes when the
    /// environment is dropped, at the test's end: after the processes the test spawned, which
    /// it holds in variables declared after the environment.
    pub async fn cleanup(&self) {
        let topology = self.topology();
        let (_connection, channel) = self.rabbitmq().await;
        let mut queues = vec![topology.queue.clone(), topology.dead_letter_queue()];
        queues.extend((0..topology.retry_delays.len()).map(|a| topology.retry_queue(a)));
        for queue in queues {
            let _ = channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                &topology.exchange,
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await;
        let keys = Keys::new(&self.status_key());
        if let Ok(mut redis) = killreport::events::connect(&self.redis_url).await {
            let _: redis::RedisResult<()> = redis::cmd("DEL")
                .arg(&keys.beats)
                .arg(&keys.seen)
                .arg(&keys.lease)
                .query_async(&mut redis)
                .await;
        }
        self.pool.close().await;
    }
}

/// Stops a child process with SIGTERM, as a service manager would; kills it if it has not
/// exited within `patience`. Returns its exit status when it stopped on the SIGTERM.
pub async fn terminate(child: &mut Child, patience: Duration) -> Option<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(patience, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    }
}

/// Receives `n` events, failing if they do not all come within [`PATIENCE`].
pub async fn receive_events(
    rx: &mut mpsc::UnboundedReceiver<KillmailAdded>,
    n: usize,
) -> Vec<KillmailAdded> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(event)) => events.push(event),
            _ => panic!("received {} of {n} events before giving up", events.len()),
        }
    }
    events
}

/// Asserts that no further event arrives within `quiet`.
pub async fn assert_no_more_events(
    rx: &mut mpsc::UnboundedReceiver<KillmailAdded>,
    quiet: Duration,
) {
    if let Ok(Some(event)) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!(
            "unexpected extra event for killmail {}",
            event.killmail.killmail_id
        );
    }
}
