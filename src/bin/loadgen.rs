//! loadgen: benchmark load for killreport, printing figures (see BENCHMARKS.md).
//!
//! `loadgen ingest`: publishes real killmails as `killmail.ingest` jobs at a fixed rate and
//! times each from its publish to its event on Redis, through a running worker-killmails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use killreport::config::{RabbitArgs, RedisArgs};
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
    }
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
