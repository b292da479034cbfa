//! loadgen: benchmark load for killreport, printing figures (see BENCHMARKS.md).
//!
//! - `loadgen ingest`: real killmails as `killmail.ingest` jobs at a fixed rate, each timed from
//!   its publish to its event on Redis, through a running worker-killmails.
//! - `loadgen query`: latency of the `killmails` query.
//! - `loadgen fanout`: events on Redis to N WebSocket subscribers, with the server's CPU and
//!   memory when given its pid; runs against killreport or the Node peer alike.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use killreport::config::{RabbitArgs, RedisArgs};
use killreport::loadgen::Fanout;
use killreport::queue::Publisher;

#[derive(Parser)]
#[command(version, about = "Benchmark load for killreport; prints figures")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Ingest(IngestArgs),
    Query(QueryArgs),
    Fanout(FanoutArgs),
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

/// Event published on Redis → received by N WebSocket subscribers (fan-out only). Sequence
/// numbers are taken from the clock so they are above anything the server has seen; use a
/// server set aside for benchmarking.
#[derive(Args)]
struct FanoutArgs {
    /// Killmail files to draw events from.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[arg(long, default_value = "ws://127.0.0.1:4000/graphql")]
    url: String,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Events per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// The subscription document every client sends.
    #[arg(
        long,
        default_value = "subscription { killmailAdded { killmailId killmailTime victim { characterName shipTypeName } } }"
    )]
    document: String,
    /// The server's process id, to report its CPU time and peak memory.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value_t = 60)]
    patience_secs: u64,
    #[command(flatten)]
    redis: RedisArgs,
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
    killreport::config::init_process();
    match Cli::parse().command {
        Command::Ingest(args) => ingest(args).await,
        Command::Query(args) => query(args).await,
        Command::Fanout(args) => fanout(args).await,
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
    let latency = killreport::loadgen::query_latency(&args.url, &body, args.requests).await?;
    println!(
        "{} requests of killmails(first: {}, filter: {filter}): {latency}",
        args.requests, args.first
    );
    Ok(())
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let mut killmails = killreport::import::read_killmails(&args.files).await?;
    killmails.truncate(args.events);
    let before = args.pid.map(process_usage).transpose()?;
    let first_seq = chrono::Utc::now().timestamp_micros();
    let plan = Fanout {
        ws_url: &args.url,
        document: &args.document,
        clients: args.clients,
        redis_url: &args.redis.redis_url,
        channel: &args.redis.events_channel,
        first_seq,
        rate: args.rate,
        patience: Duration::from_secs(args.patience_secs),
    };
    let report = killreport::loadgen::fanout_latency(&plan, &killmails).await?;
    println!("{report}");
    if let (Some(pid), Some((cpu_before, _))) = (args.pid, before) {
        let (cpu_after, peak_rss_kb) = process_usage(pid)?;
        let cpu = cpu_after - cpu_before;
        println!(
            "server: {cpu:.2} CPU-seconds ({:.0} delivered messages per CPU-second), peak RSS {} MiB",
            report.delivered as f64 / cpu.max(f64::EPSILON),
            peak_rss_kb / 1024
        );
    }
    Ok(())
}

/// CPU seconds used so far and peak resident memory (KiB) of a process, from /proc.
fn process_usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context("reading the server's /proc stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    // The kernel counts in clock ticks of 1/100 s on Linux.
    Ok((ticks / 100.0, peak))
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let mut killmails = killreport::import::read_killmails(&args.files).await?;
    killmails.truncate(args.count);
    let connection = killreport::queue::connect(&args.rabbit.rabbitmq_url, "loadgen")
        .await
        .context("connecting to RabbitMQ")?;
    let publisher = Publisher::new(&connection, args.rabbit.topology()).await?;
    println!("publishing {} jobs at {}/s", killmails.len(), args.rate);
    let report = killreport::loadgen::ingest_latency(
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
