//! queue: killreport's command line for putting killmails into the system by hand. Each
//! subcommand is one variant of `Command`, with its own arguments and a function that connects
//! what it needs and calls into the library, where the work itself lives.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use killreport::announce::Announcer;
use killreport::config::{
    DatabaseArgs, EnrichArgs, EsiArgs, EverefArgs, RabbitArgs, RedisArgs, UserSyncArgs, ZkbArgs,
};
use killreport::enrich::Kind;
use killreport::events::EventPublisher;
use killreport::import::{Announce, Importer, default_batch};
use killreport::queue::{Publisher, dlq};
use killreport::repair::Repair;
use killreport::valuation;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The exit code of an import stopped by SIGINT or SIGTERM after its batch in hand.
const INTERRUPTED_EXIT_CODE: i32 = 130;

#[derive(Parser)]
#[command(
    version,
    about = "killreport's command line: import killmails and manage queues"
)]
struct Cli {
    #[command(flatten)]
    log: killreport::config::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Import(ImportArgs),
    Backfill(BackfillArgs),
    Repair(RepairArgs),
    Prices(PricesArgs),
    UserKillmails(UserKillmailsArgs),
    /// Inspect, replay or purge the dead-letter queue (jobs that failed for good).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Queue characters for worker-enrich to describe again (names and affiliations).
    Characters(RefreshArgs),
    /// Queue corporations for worker-enrich to describe again (name, ticker, members, alliance).
    Corporations(RefreshArgs),
    /// Queue alliances for worker-enrich to describe again (name, ticker, corporations, members).
    Alliances(RefreshArgs),
    /// Queue today's snapshot of every alliance or corporation the store knows: each is
    /// described again by worker-enrich, which records its member (and corporation) count for
    /// the day.
    Snapshot(SnapshotArgs),
    /// The statistics aggregates.
    #[command(subcommand)]
    Stats(StatsCommand),
}

#[derive(Subcommand)]
enum StatsCommand {
    /// Recompute every statistics aggregate from the stored killmails, in one transaction
    /// (queries see the old figures until it commits; killmails being stored wait for it).
    Rebuild {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Which entities: the ids given, or with --all every one the store knows.
#[derive(Args)]
struct RefreshArgs {
    #[arg(value_name = "ID", required_unless_present = "all")]
    ids: Vec<i64>,
    /// Every one the store knows (it needs the database).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    enrich: EnrichArgs,
    #[command(flatten, next_help_heading = "PostgreSQL (only with --all)")]
    database: DatabaseArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SnapshotOf {
    Alliances,
    Corporations,
}

#[derive(Args)]
struct SnapshotArgs {
    #[arg(value_enum)]
    of: SnapshotOf,
    #[command(flatten)]
    enrich: EnrichArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Print dead letters with their reason, leaving them in the queue.
    List(DlqArgs),
    /// Move dead letters back onto the work queue, for worker-killmails to try again.
    Replay(DlqArgs),
    /// Delete every dead letter.
    Purge {
        #[command(flatten)]
        rabbit: RabbitArgs,
    },
}

#[derive(Args)]
struct DlqArgs {
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

/// Import killmails from files straight into PostgreSQL, and announce the new ones (unless
/// --no-announce).
///
/// Reads EVE Ref daily archives (.tar.bz2, .tar), directories (recursively), .json files (an
/// ESI killmail with its hash, an array of killmails, an R2Z2 object, a RedisQ package or a
/// killmail.ingest job) and .jsonl files (one of those per line); any of them may also be
/// bzip2-compressed (.json.bz2, .jsonl.bz2). Killmails are stored in batches, one transaction
/// each; those already stored are left as they are, so importing the same files again changes
/// nothing. A summary is printed at the end; a progress bar is drawn on stderr when it is a
/// terminal.
#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when every file was read, even if some records were \
                        rejected (the summary lists them with their reasons); non-zero when a \
                        file cannot be opened (nothing is imported then), or when PostgreSQL, \
                        Redis or RabbitMQ fails; 130 when interrupted (SIGINT or SIGTERM), \
                        once the batch in hand is stored and the summary printed."
)]
struct ImportArgs {
    /// Files and directories to import.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Killmails stored per transaction [default: 1000, or 5000 with --no-announce].
    #[arg(long, env = "IMPORT_BATCH_SIZE")]
    batch_size: Option<usize>,
    /// Publish records that carry no killmail body (RedisQ packages with only zkb, zKillboard
    /// API entries) as killmail.ingest jobs, for worker-killmails to fetch from ESI. Without
    /// it they are rejected.
    #[arg(long)]
    queue_missing: bool,
    /// Store the killmails as history, as `queue backfill` does without --announce: nothing is
    /// announced to live subscribers, now or later, and Redis is not needed.
    #[arg(long)]
    no_announce: bool,
    /// How many rejections the summary lists with their reason; the rest are only counted.
    #[arg(long, default_value_t = 20)]
    show_rejections: usize,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten, next_help_heading = "Redis (not with --no-announce)")]
    redis: RedisArgs,
    #[command(flatten, next_help_heading = "RabbitMQ (only with --queue-missing)")]
    rabbit: RabbitArgs,
}

/// A range of days, both included (UTC).
#[derive(Args)]
struct Days {
    /// The first day, YYYY-MM-DD.
    #[arg(long, value_name = "DATE")]
    from: chrono::NaiveDate,
    /// The last day, YYYY-MM-DD (included).
    #[arg(long, value_name = "DATE")]
    to: chrono::NaiveDate,
}

impl Days {
    /// Refuses a range that ends before it begins, before anything is connected.
    fn checked(&self) -> anyhow::Result<(chrono::NaiveDate, chrono::NaiveDate)> {
        anyhow::ensure!(
            self.from <= self.to,
            "--from {} is after --to {}",
            self.from,
            self.to
        );
        Ok((self.from, self.to))
    }
}

/// How a run over days ends: 130 when interrupted, an error when `not_done` of its `days`
/// days were not `done`.
fn days_outcome(interrupted: bool, not_done: usize, days: usize, done: &str) -> anyhow::Result<()> {
    if interrupted {
        std::process::exit(INTERRUPTED_EXIT_CODE);
    }
    anyhow::ensure!(not_done == 0, "{not_done} of {days} days were not {done}");
    Ok(())
}

/// Backfill a range of days from EVE Ref's daily archives, straight into PostgreSQL.
///
/// Each day from --from to --to (both included, YYYY-MM-DD, UTC) is downloaded from
/// EVEREF_BASE_URL into BACKFILL_DIR (a cut-off download is resumed with an HTTP Range request,
/// in this run or the next) and imported as `queue import` would. A day imported whole is
/// recorded in the store and skipped by later backfills; a day EVE Ref does not have (404) or
/// whose file is not a bzip2 archive is reported with its reason, and the other days go on.
/// One line is printed per day as it ends, and a summary at the end. Backfilled killmails are
/// history: stored and queryable, but not announced to live subscribers unless --announce is
/// given.
#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when every day was imported (now or before); 1 when a day \
                        was missing upstream or failed (the summary lists them with their \
                        reasons; run again to retry them), or when PostgreSQL or Redis fails; \
                        130 when interrupted (SIGINT or SIGTERM), once the batch in hand is \
                        stored and the summary printed."
)]
struct BackfillArgs {
    #[command(flatten)]
    days: Days,
    /// Announce the killmails stored to live subscribers (Redis), as new ones are. Without
    /// it, history is stored silently: nothing is announced, now or later.
    #[arg(long)]
    announce: bool,
    /// Killmails stored per transaction [default: 5000, or 1000 with --announce].
    #[arg(long, env = "IMPORT_BATCH_SIZE")]
    batch_size: Option<usize>,
    /// How many rejections the summary lists with their reason; the rest are only counted.
    #[arg(long, default_value_t = 20)]
    show_rejections: usize,
    #[command(flatten)]
    everef: EverefArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten, next_help_heading = "Redis (only with --announce)")]
    redis: RedisArgs,
}

/// Queue the killmails zKillboard's daily history lists and the store lacks, for
/// worker-killmails to fetch from ESI.
///
/// For each day from --from to --to (both included, YYYY-MM-DD, UTC), zKillboard's history
/// (ZKB_BASE_URL/api/history/YYYYMMDD.json, killmail id → hash) is compared with the store, and
/// every killmail it lists that the store does not hold is published as a killmail.ingest job
/// of its id and hash, which worker-killmails completes from ESI. One line is printed per day
/// as it ends, and a summary at the end. A day zKillboard has no history for, or whose history
/// is malformed, is reported with its reason and the other days go on.
#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when every day's history was compared with the store; 1 when \
                        a day was missing or failed (the summary lists them with their \
                        reasons), or when PostgreSQL or RabbitMQ fails; 130 when interrupted \
                        (SIGINT or SIGTERM)."
)]
struct RepairArgs {
    #[command(flatten)]
    days: Days,
    /// Seconds before a request for a day's history is abandoned (and tried again).
    #[arg(long, env = "ZKB_TIMEOUT_SECS", default_value_t = 60)]
    zkb_timeout_secs: u64,
    #[command(flatten)]
    zkb: ZkbArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

/// Fetch today's item prices from ESI now, unless the store has them, and value again the
/// killmails they now value.
///
/// Killmails that came without zKillboard's values are valued by killreport from the item
/// prices (ESI `GET /markets/prices/`) of their own day, or the nearest day that has prices;
/// worker-killmails fetches them daily by itself (PRICES_INTERVAL_SECS). Prints what was stored
/// and how many killmails were valued again; waits for a worker that is at it.
#[derive(Args)]
struct PricesArgs {
    #[command(flatten)]
    esi: EsiArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

/// Queue a sync of logged-in pilots' own killmail history, for worker-user-killmails.
///
/// Each pilot named (or every logged-in pilot with --all) is queued now, however recently they
/// were synced; worker-user-killmails reads their recent killmails from ESI (and their
/// corporation's, for directors) back to the newest one it already found, and queues the new
/// ones for worker-killmails. Pilots whose login the SSO refused (they must log in again), and
/// ids that never logged in, are listed and left out.
#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when every pilot named was queued; 1 when one could not be \
                        (listed), or when PostgreSQL or RabbitMQ fails."
)]
struct UserKillmailsArgs {
    /// Characters to sync.
    #[arg(
        value_name = "CHARACTER_ID",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    characters: Vec<i64>,
    /// Every logged-in pilot.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    user_sync: UserSyncArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    rabbit: RabbitArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = killreport::config::init_process(|cli| &cli.log);
    let shutdown = killreport::shutdown::on_signal();
    match cli.command {
        Command::Import(args) => import(args, shutdown).await,
        Command::Backfill(args) => backfill(args, shutdown).await,
        Command::Repair(args) => repair(args, shutdown).await,
        Command::Prices(args) => prices(args).await,
        Command::UserKillmails(args) => user_killmails(args).await,
        Command::Dlq(command) => dlq(command).await,
        Command::Characters(args) => refresh(Kind::Characters, args).await,
        Command::Corporations(args) => refresh(Kind::Corporations, args).await,
        Command::Alliances(args) => refresh(Kind::Alliances, args).await,
        Command::Snapshot(args) => snapshot(args).await,
        Command::Stats(StatsCommand::Rebuild { database }) => {
            let pool = database
                .connect()
                .await
                .context("connecting to PostgreSQL")?;
            let started = std::time::Instant::now();
            let mut db = pool.acquire().await.context("connecting to PostgreSQL")?;
            let months = killreport::stats::rebuild(&mut db)
                .await
                .context("rebuilding the statistics aggregates")?;
            println!(
                "statistics aggregates rebuilt in {:.1} s ({months} months rolled up)",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

/// A publisher on the entity queue.
async fn enrich_publisher(
    enrich: &EnrichArgs,
    rabbit: &RabbitArgs,
) -> anyhow::Result<(lapin::Connection, Publisher)> {
    let (connection, publisher) = Publisher::open(
        &rabbit.rabbitmq_url,
        "queue enrich",
        enrich.topology(rabbit),
    )
    .await?;
    Ok((connection, publisher))
}

async fn refresh(kind: Kind, args: RefreshArgs) -> anyhow::Result<()> {
    let (connection, publisher) = enrich_publisher(&args.enrich, &args.rabbit).await?;
    let jobs = if args.all {
        let pool = args
            .database
            .connect()
            .await
            .context("connecting to PostgreSQL")?;
        let jobs = killreport::enrich::queue_all(&pool, &publisher, kind).await?;
        pool.close().await;
        jobs
    } else {
        killreport::enrich::queue_refresh(&publisher, kind, &args.ids).await?
    };
    println!("{jobs} jobs queued on {}", args.enrich.enrich_queue);
    connection.close(200, "done").await.ok();
    Ok(())
}

async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let kind = match args.of {
        SnapshotOf::Alliances => Kind::Alliances,
        SnapshotOf::Corporations => Kind::Corporations,
    };
    let (connection, publisher) = enrich_publisher(&args.enrich, &args.rabbit).await?;
    let pool = args
        .database
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let jobs = killreport::enrich::queue_snapshot(&pool, &publisher, kind).await?;
    println!("{jobs} jobs queued on {}", args.enrich.enrich_queue);
    connection.close(200, "done").await.ok();
    pool.close().await;
    Ok(())
}

async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    let rabbit = match &command {
        DlqCommand::List(args) | DlqCommand::Replay(args) => &args.rabbit,
        DlqCommand::Purge { rabbit } => rabbit,
    };
    let (connection, publisher) =
        Publisher::open(&rabbit.rabbitmq_url, "queue dlq", rabbit.topology()).await?;
    let channel = connection.create_channel().await?;
    let topology = rabbit.topology();
    match command {
        DlqCommand::List(args) => {
            let letters = dlq::list(&channel, &topology, args.limit).await?;
            for letter in &letters {
                println!(
                    "{}\n  {}",
                    letter.reason.as_deref().unwrap_or("(no reason recorded)"),
                    String::from_utf8_lossy(&letter.body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
            }
            println!(
                "{} dead letters shown from {}",
                letters.len(),
                topology.dead_letter_queue()
            );
        }
        DlqCommand::Replay(args) => {
            let moved = dlq::replay(&channel, &publisher, args.limit).await?;
            println!("{moved} dead letters moved back to {}", topology.queue);
        }
        DlqCommand::Purge { .. } => {
            let purged = dlq::purge(&channel, &topology).await?;
            println!(
                "{purged} dead letters deleted from {}",
                topology.dead_letter_queue()
            );
        }
    }
    connection.close(200, "done").await.ok();
    Ok(())
}

async fn import(args: ImportArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Fail on a mistyped path before connecting to anything.
    killreport::import::input_files(&args.files)?;
    let pool = args
        .database
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let announce = announcing(!args.no_announce, &pool, &args.redis).await?;
    let rabbit = if args.queue_missing {
        let (connection, publisher) = Publisher::open(
            &args.rabbit.rabbitmq_url,
            "queue import",
            args.rabbit.topology(),
        )
        .await?;
        Some((connection, publisher))
    } else {
        None
    };
    let importer = Importer {
        pool: pool.clone(),
        announce,
        publisher: rabbit.as_ref().map(|(_, publisher)| publisher.clone()),
        batch_size: args
            .batch_size
            .unwrap_or_else(|| default_batch(!args.no_announce)),
        max_reasons: args.show_rejections,
    };

    let progress = progress_bar("")?;
    let summary = importer.import(&args.files, &progress, &shutdown).await;
    progress.finish_and_clear();
    let summary = summary?;
    println!("{summary}");
    if let Some((connection, _)) = rabbit {
        connection.close(200, "done").await.ok();
    }
    pool.close().await;
    if summary.interrupted {
        // What a shell reports for a process SIGINT ended: the import did not finish.
        std::process::exit(INTERRUPTED_EXIT_CODE);
    }
    Ok(())
}

/// How an import announces: after each commit through Redis when `announce`, else never
/// (history, which needs no Redis).
async fn announcing(announce: bool, pool: &PgPool, redis: &RedisArgs) -> anyhow::Result<Announce> {
    if !announce {
        return Ok(Announce::Never);
    }
    let events = EventPublisher::connect(&redis.redis_url, &redis.events_channel)
        .await
        .context("connecting to Redis")?;
    Ok(Announce::Now(Announcer::new(pool.clone(), events, None)))
}

/// A progress bar on stderr (drawn only when it is a terminal), in bytes of input read, after
/// `prefix`.
fn progress_bar(prefix: &str) -> anyhow::Result<ProgressBar> {
    let progress = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template(&format!(
            "{prefix}{{elapsed_precise}} [{{bar:30}}] {{bytes}}/{{total_bytes}} (eta {{eta}}) \
             {{msg}}"
        ))
        .context("progress bar template")?
        .progress_chars("=> "),
    );
    Ok(progress)
}

async fn backfill(args: BackfillArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (from, to) = args.days.checked()?;
    let pool = args
        .database
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let announce = announcing(args.announce, &pool, &args.redis).await?;
    let backfill = args.everef.backfill(Importer {
        pool: pool.clone(),
        announce,
        publisher: None,
        batch_size: args
            .batch_size
            .unwrap_or_else(|| default_batch(args.announce)),
        max_reasons: args.show_rejections,
    })?;
    let progress = progress_bar("{prefix} ")?;
    let summary = backfill
        .run(from, to, &progress, &shutdown, |day| {
            progress.suspend(|| println!("{day}"));
        })
        .await;
    progress.finish_and_clear();
    let summary = summary?;
    println!("{summary}");
    pool.close().await;
    days_outcome(
        summary.interrupted,
        summary.not_imported(),
        summary.days.len(),
        "imported",
    )
}

async fn repair(args: RepairArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (from, to) = args.days.checked()?;
    let pool = args
        .database
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let (connection, publisher) = Publisher::open(
        &args.rabbit.rabbitmq_url,
        "queue repair",
        args.rabbit.topology(),
    )
    .await?;
    let repair = Repair {
        http: killreport::feed::http_client(Duration::from_secs(args.zkb_timeout_secs.max(1)))?,
        base_url: args.zkb.zkb_base_url.clone(),
        pool: pool.clone(),
        publisher,
        retry_pause: Duration::from_secs(2),
    };
    let summary = repair
        .run(from, to, &shutdown, |day| println!("{day}"))
        .await?;
    println!("{summary}");
    connection.close(200, "done").await.ok();
    pool.close().await;
    days_outcome(
        summary.interrupted,
        summary.not_compared(),
        summary.days.len(),
        "compared",
    )
}

async fn prices(args: PricesArgs) -> anyhow::Result<()> {
    let pool = args
        .database
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let esi = args.esi.client()?;
    let update = valuation::update_prices(&pool, &esi, valuation::Wait::Yes)
        .await?
        .context("the prices lock")?;
    match update.stored {
        Some((day, types)) => println!("prices of {day} stored: {types} types"),
        None => println!("today's prices were stored already"),
    }
    for (day, killmails) in &update.revalued {
        println!("killmails valued with the prices of {day}: {killmails} changed");
    }
    pool.close().await;
    Ok(())
}

async fn user_killmails(args: UserKillmailsArgs) -> anyhow::Result<()> {
    let pool = args
        .database
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    let (connection, publisher) = Publisher::open(
        &args.rabbit.rabbitmq_url,
        "queue user-killmails",
        args.user_sync.topology(&args.rabbit),
    )
    .await?;
    let ids = (!args.all).then_some(args.characters.as_slice());
    let queued = killreport::user_sync::queue_pilots(&pool, &publisher, ids).await?;
    println!("{queued}");
    connection.close(200, "done").await.ok();
    pool.close().await;
    let left_out = queued.needs_login.len() + queued.unknown.len();
    anyhow::ensure!(
        args.all || left_out == 0,
        "{left_out} pilots were not queued"
    );
    Ok(())
}
