//! `loadgen stats`: latency of the statistics questions (`top`, `killmailsDateCounts`, an
//! entity's `stats`) against a store, each answered from the aggregates and from the killmail
//! rows alone, one after another, through the library's own functions (no HTTP in between).

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use killreport::filter::Filter;
use killreport::stats::{self, EntityKind, Plan, Source, TopKind};
use sqlx::PgConnection;

use crate::latency::Percentiles;

/// One end of a range; `None` is open.
type Bound = Option<DateTime<Utc>>;

/// One question, asked with a plan.
#[derive(Clone)]
enum Question {
    Top(TopKind, Filter),
    DateCounts(Filter),
    Stats(EntityKind, i64),
}

async fn ask(db: &mut PgConnection, question: &Question, plan: &Plan) -> sqlx::Result<usize> {
    Ok(match question {
        Question::Top(kind, filter) => stats::top(db, *kind, plan, filter, 10).await?.len(),
        Question::DateCounts(filter) => stats::date_counts(db, plan, filter).await?.len(),
        Question::Stats(kind, id) => {
            usize::from(stats::entity_stats(db, *kind, *id, plan).await?.kills > 0)
        }
    })
}

fn start_of(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The entity with the most kills in the store.
async fn busiest(db: &mut PgConnection, kind: i16) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT entity_id FROM stats_entity_days WHERE kind = $1
         GROUP BY 1 ORDER BY sum(kills) DESC LIMIT 1",
    )
    .bind(kind)
    .fetch_one(db)
    .await
    .context("finding the busiest entity")
}

/// Asks every question `requests` times over each of its ranges (a day, a week, everything,
/// partial days starting and ending on the hour, and partial days and hours: 13:17 on the first
/// day to 06:41 on the last) from the aggregates, a tenth as often (at least 10) from the rows,
/// and prints the percentiles side by side. `only`: the lines whose name contains each of
/// these; `no_rows`: the aggregates alone.
pub async fn run(
    database_url: &str,
    requests: usize,
    only: &[String],
    no_rows: bool,
) -> anyhow::Result<()> {
    let pool = killreport::db::connect(database_url, 2).await?;
    let mut db = pool.acquire().await?;
    let (first, last): (NaiveDate, NaiveDate) =
        sqlx::query_as("SELECT min(day), max(day) FROM stats_days WHERE dimension = 0")
            .fetch_one(&mut *db)
            .await
            .context("the store's days")?;
    let character = busiest(&mut db, 1).await?;
    let corporation = busiest(&mut db, 2).await?;
    let alliance = busiest(&mut db, 3).await?;
    let forge = Filter {
        regions: [10_000_002].into_iter().collect(),
        ..Filter::default()
    };
    let questions: Vec<(&str, Question)> = vec![
        (
            "top CHARACTER",
            Question::Top(TopKind::Character, Filter::default()),
        ),
        (
            "top CORPORATION",
            Question::Top(TopKind::Corporation, Filter::default()),
        ),
        (
            "top SHIP_TYPE",
            Question::Top(TopKind::ShipType, Filter::default()),
        ),
        (
            "top SOLAR_SYSTEM",
            Question::Top(TopKind::SolarSystem, Filter::default()),
        ),
        (
            "killmailsDateCounts",
            Question::DateCounts(Filter::default()),
        ),
        ("killmailsDateCounts region", Question::DateCounts(forge)),
        (
            "stats character",
            Question::Stats(EntityKind::Character, character),
        ),
        (
            "stats corporation",
            Question::Stats(EntityKind::Corporation, corporation),
        ),
        (
            "stats alliance",
            Question::Stats(EntityKind::Alliance, alliance),
        ),
    ];
    let week_end = (first + Days::new(7)).min(last + Days::new(1));
    let ranges: Vec<(&str, Bound, Bound)> = vec![
        (
            "a day",
            Some(start_of(first)),
            Some(start_of(first + Days::new(1))),
        ),
        ("a week", Some(start_of(first)), Some(start_of(week_end))),
        ("everything", None, None),
        (
            "partial days",
            Some(start_of(first) + chrono::Duration::hours(13)),
            Some(start_of(last) + chrono::Duration::hours(6)),
        ),
        (
            "partial hours",
            Some(start_of(first) + chrono::Duration::minutes(13 * 60 + 17)),
            Some(start_of(last) + chrono::Duration::minutes(6 * 60 + 41)),
        ),
    ];
    println!(
        "{} days stored ({first} to {last}); {requests} requests per line from the aggregates, one at a time",
        (last - first).num_days() + 1
    );
    for (name, question) in &questions {
        for (range, from, to) in &ranges {
            let mut line = format!("{name:<28} {range:<13}");
            if !only.iter().all(|part| line.contains(part.as_str())) {
                continue;
            }
            let sources = if no_rows {
                &[Source::Aggregates][..]
            } else {
                &[Source::Aggregates, Source::Rows][..]
            };
            for &source in sources {
                let plan = Plan::new(*from, *to, source);
                let times = match source {
                    Source::Aggregates => requests,
                    Source::Rows => (requests / 10).max(10),
                };
                let mut samples: Vec<Duration> = Vec::with_capacity(times);
                for _ in 0..times {
                    let started = Instant::now();
                    ask(&mut db, question, &plan).await?;
                    samples.push(started.elapsed());
                }
                let p = Percentiles::of(samples);
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                let label = match source {
                    Source::Aggregates => "aggregates",
                    Source::Rows => "rows",
                };
                line.push_str(&format!(
                    " | {label} p50 {:>7.2} ms p99 {:>7.2} ms",
                    ms(p.p50),
                    ms(p.p99)
                ));
            }
            println!("{line}");
        }
    }
    Ok(())
}
