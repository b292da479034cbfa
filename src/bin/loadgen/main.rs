//! loadgen: benchmark load for killreport, printing figures (see BENCHMARKS.md).
//!
//! - `loadgen ingest`: real killmails as `killmail.ingest` jobs at a fixed rate, each timed from
//!   its publish to its event on Redis, through a running worker-killmails.
//! - `loadgen query`: latency of the `killmails` query.
//! - `loadgen stats`: latency of the statistics questions, from the aggregates and from the rows.
//! - `loadgen fanout`: killmails (events on Redis, or jobs through the whole pipeline) to N
//!   WebSocket subscribers with a mix of filtered documents (or zKillboard's `killstream` on
//!   `/websocket/`, or every event on `/updates`), every delivery checked and timed, with the
//!   servers' CPU and memory; several targets (killreport, the Node peer, two servers sharing the
//!   clients, other protocols of the same server) in one run, side by side.
//!
//! The benchmark is this binary's own, not the library's; its modules, callers above callees:
//!
//! ```text
//! main        the commands and their arguments; plans a fan-out run and prints its figures
//!   fanout    one run against one target: connect, settle, inject, wait, count
//!     client      one subscriber (GraphQL, zKillboard's websocket, /updates), checked and timed
//!     documents   the subscription mix and which killmails each document should receive
//!     process     a server's CPU and memory from /proc; this process's open-files limit
//!     report      one target's figures, and several side by side
//!       target    a server under test: name, URLs, pids
//!       latency   percentiles; the job → event and query latency runs
//!         workload    the killmails injected, and each as its killmail.ingest job
//! ```

mod client;
mod documents;
mod fanout;
mod latency;
mod process;
mod report;
mod stats;
mod target;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use killreport::config::{RabbitArgs, RedisArgs};
use killreport::events::EventPublisher;
use killreport::queue::Publisher;

use crate::fanout::{Injector, Plan};
use crate::target::Target;

#[derive(Parser)]
#[command(version, about = "Benchmark load for killreport; prints figures")]
struct Cli {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Ingest(IngestArgs),
    Query(QueryArgs),
    Fanout(FanoutArgs),
    Stats(StatsArgs),
}

/// Latency of `top`, `killmailsDateCounts` and entity `stats` straight against the store,
/// from the aggregates and from the killmail rows, side by side.
#[derive(Args)]
struct StatsArgs {
    #[command(flatten)]
    database: killreport::config::DatabaseArgs,
    /// Requests per question and range from the aggregates (a tenth as many from the rows).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Only the lines whose question and range contain this text (e.g. `top CHARACTER`,
    /// `partial hours`); may be given more than once, a line needs all of them.
    #[arg(long)]
    only: Vec<String>,
    /// Skip the rows: only the aggregates' figures.
    #[arg(long)]
    no_rows: bool,
}

/// Latency of the `killmails` query over HTTP, one request after another.
#[derive(Args)]
struct QueryArgs {
    #[arg(long, default_value = "http://127.0.0.1:4000/graphql")]
    url: String,
    #[arg(long, default_value_t = 500)]
    requests: usize,
    #[arg(long, default_value_t = 50)]
    first: i32,
    /// A KillmailFilter as JSON, e.g. '{"regionIds": ["10000002"]}'.
    #[arg(long)]
    filter: Option<String>,
}

/// N graphql-transport-ws subscribers with a mix of documents; killmails injected at a fixed
/// rate; every delivery checked against what each document should get and timed from injection
/// to receipt; with pids, the server's CPU and memory. Each target in turn with the same
/// killmails, documents and rate, then a side-by-side table.
#[derive(Args)]
struct FanoutArgs {
    /// Killmail files or directories to draw events from (anything `queue import` reads).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// A server to measure, NAME=WS_URL[+WS_URL…][,pid=PID[+PID…]]; repeat for several, run in
    /// turn. The URL's path says what its clients speak: `/graphql` (graphql-transport-ws, the
    /// document mix), `/websocket/` (zKillboard's, each client on `killstream`) or `/updates`
    /// (killreport's event bus); the last two get every killmail. With several URLs the clients are dealt round-robin over them (in whole rounds of
    /// the mix); CPU and memory are summed over the pids. The ratios are the first target's
    /// figures over each other's.
    #[arg(long = "target", value_name = "TARGET")]
    targets: Vec<Target>,
    /// The one server to measure when no --target is given.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:4000/graphql",
        conflicts_with = "targets"
    )]
    url: String,
    /// The process id of --url's server, to measure its CPU and memory.
    #[arg(long, conflicts_with = "targets")]
    pid: Option<u32>,
    /// Subscribers per target.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Distinct subscription documents; client i subscribes with document i mod N. 1 is
    /// DESIGN.md's example for everyone; more add filtered and heavier documents.
    #[arg(long, default_value_t = 1)]
    mix: usize,
    /// Every client resumes from this cursor (`after: $after`), as clients do after a server
    /// restart: what was stored after it first, then live killmails. killreport replays it for
    /// each, then serves them from the same shared execution as live subscribers.
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
    /// Killmails to inject.
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Of those, how many are the fights with the most attackers in FILEs, spread evenly
    /// through the run.
    #[arg(long, default_value_t = 0)]
    include_largest: usize,
    /// Killmails per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// `redis`: events straight onto the channel (fan-out only). `jobs`: killmail.ingest jobs
    /// through worker-killmails and the store; the killmails must be new to it (use a fresh
    /// database), so one target only.
    #[arg(long, value_enum, default_value_t = Inject::Redis)]
    inject: Inject,
    /// Seconds to wait for stragglers after the last injection.
    #[arg(long, default_value_t = 60)]
    patience_secs: u64,
    /// Seconds subscriptions sit idle before the server is weighed and injection starts.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 150)]
    connect_concurrency: usize,
    /// Seconds a connection may take from TCP connect to connection_ack.
    #[arg(long, default_value_t = 10)]
    connect_timeout_secs: u64,
    /// Seconds between the `ping`s each client sends, as graphql-ws' and Apollo's `keepAlive`
    /// option does (killreport closes a connection silent for 30 s); 0 for none.
    #[arg(long, default_value_t = 10.0)]
    client_ping_secs: f64,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Inject {
    Redis,
    Jobs,
}

/// Job publish → worker-killmails → PostgreSQL → Redis event: latency at a fixed rate. The
/// killmails must be new to the store worker-killmails writes to (use an empty database).
#[derive(Args)]
struct IngestArgs {
    /// Killmail files to draw from (anything `queue import` reads).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Jobs per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// How many jobs (at most the killmails in the files).
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Seconds to wait for stragglers after the last publish.
    #[arg(long, default_value_t = 30)]
    patience_secs: u64,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = killreport::config::init_process(|cli| &cli.log);
    match cli.command {
        Command::Ingest(args) => ingest(args).await,
        Command::Query(args) => query(args).await,
        Command::Fanout(args) => fanout(args).await,
        Command::Stats(args) => {
            stats::run(
                &args.database.database_url,
                args.requests,
                &args.only,
                args.no_rows,
            )
            .await
        }
    }
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let filter: serde_json::Value = match &args.filter {
        Some(text) => serde_json::from_str(text).context("--filter is not JSON")?,
        None => serde_json::Value::Null,
    };
    let body = serde_json::json!({
        "query": "query($f: KillmailFilter, $first: Int) { killmails(filter: $f, first: $first) {
            edges { cursor node { killmailId killmailTime attackerCount solarSystem { name }
                victim { characterName corporationName shipTypeName } zkb { totalValue } } }
            pageInfo { hasNextPage endCursor } } }",
        "variables": { "f": filter, "first": args.first },
    });
    let latency = latency::query_latency(&args.url, &body, args.requests).await?;
    println!(
        "{} requests of killmails(first: {}, filter: {filter}): {latency}",
        args.requests, args.first
    );
    Ok(())
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let targets = if args.targets.is_empty() {
        vec![Target {
            name: "server".into(),
            urls: vec![args.url.clone()],
            pids: args.pid.into_iter().collect(),
        }]
    } else {
        args.targets.clone()
    };
    if args.inject == Inject::Jobs && targets.len() > 1 {
        anyhow::bail!(
            "--inject jobs takes one target: after it, the killmails are no longer new to the store"
        );
    }
    let open_files = process::raise_open_files_limit();
    // A few descriptors beyond the sockets: Redis, RabbitMQ, /proc reads, the runtime.
    if open_files < args.clients as u64 + 64 {
        anyhow::bail!(
            "{} clients need more open files than the limit of {open_files} (raise the hard limit: ulimit -Hn 20000)",
            args.clients
        );
    }

    let plan = plan(&args).await?;
    let mut injector = match args.inject {
        Inject::Redis => Injector::Redis {
            publisher: EventPublisher::connect(&args.redis.redis_url, &args.redis.events_channel)
                .await
                .context("connecting to Redis")?,
            // Above anything a server has seen (it drops sequence numbers already sent): use
            // servers set aside for benchmarking.
            next_seq: chrono::Utc::now().timestamp_micros(),
        },
        Inject::Jobs => Injector::Jobs(Box::new(publisher(&args.rabbit).await?)),
    };
    let mut reports = Vec::with_capacity(targets.len());
    for target in &targets {
        println!();
        let report = fanout::run(target, &plan, &mut injector).await?;
        println!("{report}");
        if args.inject == Inject::Jobs && report.delivered == 0 && report.expected > 0 {
            println!("nothing arrived: were the killmails new to worker-killmails' store?");
        }
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("\n{}", report::comparison(&reports));
    }
    Ok(())
}

/// The killmails and documents every target gets, described on stdout.
async fn plan(args: &FanoutArgs) -> anyhow::Result<Plan> {
    let mut killmails = workload::pick(
        killreport::import::read_killmails(&args.files).await?,
        args.events,
        args.include_largest,
    );
    let made_up = killmails
        .iter_mut()
        .map(workload::fill_zkb)
        .filter(|&filled| filled)
        .count();
    let mut sizes: Vec<_> = killmails
        .iter()
        .map(|r| (r.killmail.attackers.len(), r.killmail.killmail_id))
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let largest: Vec<String> = sizes
        .iter()
        .take(args.include_largest.max(3))
        .map(|(attackers, id)| format!("{id} ({attackers})"))
        .collect();
    println!(
        "{} killmails at {}/s; most attackers: {}",
        killmails.len(),
        args.rate,
        largest.join(", ")
    );
    if made_up > 0 {
        println!(
            "{made_up} of them had no zkb block and were given a made-up one (value, npc, solo)"
        );
    }
    let mut documents = documents::mix(args.mix.max(1), &killmails);
    if let Some(cursor) = &args.after {
        documents = documents
            .into_iter()
            .map(|document| document.resuming_after(cursor))
            .collect();
    }
    let mut plan = Plan::new(args.clients, documents, killmails, args.rate)?;
    plan.patience = Duration::from_secs(args.patience_secs);
    plan.settle = Duration::from_secs_f64(args.settle_secs);
    plan.connect_concurrency = args.connect_concurrency;
    plan.connect_timeout = Duration::from_secs(args.connect_timeout_secs);
    plan.client_ping =
        (args.client_ping_secs > 0.0).then(|| Duration::from_secs_f64(args.client_ping_secs));
    for (index, document) in plan.documents.iter().enumerate() {
        println!(
            "document {index}: matches {} of {}; {}",
            plan.matching(index),
            plan.killmails.len(),
            document.label
        );
    }
    Ok(plan)
}

async fn publisher(rabbit: &RabbitArgs) -> anyhow::Result<Publisher> {
    let connection = killreport::queue::connect(&rabbit.rabbitmq_url, "loadgen")
        .await
        .context("connecting to RabbitMQ")?;
    Publisher::new(&connection, rabbit.topology())
        .await
        .context("declaring the job queues")
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let mut killmails = killreport::import::read_killmails(&args.files).await?;
    killmails.truncate(args.count);
    let publisher = publisher(&args.rabbit).await?;
    println!("publishing {} jobs at {}/s", killmails.len(), args.rate);
    let report = latency::ingest_latency(
        &publisher,
        &args.redis.redis_url,
        &args.redis.events_channel,
        &killmails,
        args.rate,
        Duration::from_secs(args.patience_secs),
    )
    .await?;
    println!("{report}");
    Ok(())
}
