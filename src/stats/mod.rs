//! Statistics over the store: top lists, killmails per day and an entity's figures, read from
//! the per-day and per-hour aggregates that triggers keep with every stored killmail (see the
//! migrations `20261203000500_statistics.sql` and `20261204000100_stats_hours.sql`): whole
//! days from the day tables, whole hours at the ends of a range from the hour tables, the
//! pieces of less than an hour at either end, and any filter the aggregates cannot answer,
//! from the killmail rows. Top lists of characters, corporations and alliances look at the
//! leaders of each day and hour first (see [`top`]). Also what a killboard
//! page needs beside them: an entity's top ships, systems and opponents (from its rows, through
//! the entity indexes), the most valuable killmails, and name search. The `statistics` event is
//! in [`event`].

pub mod event;

use chrono::{
    DateTime, Datelike, Days, DurationRound, Months, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc,
};
use sqlx::{Connection, PgConnection, PgExecutor, Postgres, QueryBuilder, Transaction};

use crate::db::killmails::VALUE_KEY;
use crate::filter::{Filter, Involvement};

/// What `top` ranks.
#[derive(async_graphql::Enum, Copy, Clone, Debug, Eq, PartialEq, Hash)]
pub enum TopKind {
    /// Characters by kills.
    Character,
    /// Corporations by kills.
    Corporation,
    /// Alliances by kills.
    Alliance,
    /// Victims' ship types by how many were destroyed.
    ShipType,
    /// Solar systems by killmails.
    SolarSystem,
}

impl TopKind {
    pub const ALL: [TopKind; 5] = [
        TopKind::Character,
        TopKind::Corporation,
        TopKind::Alliance,
        TopKind::ShipType,
        TopKind::SolarSystem,
    ];

    fn entity(self) -> Option<EntityKind> {
        match self {
            TopKind::Character => Some(EntityKind::Character),
            TopKind::Corporation => Some(EntityKind::Corporation),
            TopKind::Alliance => Some(EntityKind::Alliance),
            TopKind::ShipType | TopKind::SolarSystem => None,
        }
    }
}

/// A character, corporation or alliance: the `kind` of `stats_entity_days` and its columns.
#[derive(Copy, Clone, Debug, Eq, PartialEq, Hash)]
pub enum EntityKind {
    Character,
    Corporation,
    Alliance,
}

impl EntityKind {
    fn code(self) -> i16 {
        match self {
            EntityKind::Character => 1,
            EntityKind::Corporation => 2,
            EntityKind::Alliance => 3,
        }
    }

    /// How many leaders of each day or hour a top list of `first` looks at first (times
    /// `first`). The leaders are read from an index, a few µs each; what costs is the
    /// candidates' sums (~20 µs each, from the heap) and a failed try. Only candidates whose
    /// most can reach the threshold are summed, so more leaders mean fewer sums where the
    /// leaders are flat: on the bench store 160 characters a day make a week's top 10 exact at
    /// once with 344 sums, where 40 summed 119 and failed, so that 160 were read after all;
    /// corporations' leaders stand out, and 40 a day are exact with at most 25 sums.
    fn leaders_per_first(self) -> i64 {
        match self {
            EntityKind::Character => 16,
            EntityKind::Corporation | EntityKind::Alliance => 4,
        }
    }

    /// (column on `killmails`, column on `attackers`): fixed names, safe to put in SQL.
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            EntityKind::Character => ("victim_character_id", "character_id"),
            EntityKind::Corporation => ("victim_corporation_id", "corporation_id"),
            EntityKind::Alliance => ("victim_alliance_id", "alliance_id"),
        }
    }
}

/// The dimensions of `stats_days`.
#[derive(Copy, Clone)]
enum Dimension {
    All = 0,
    ShipType = 1,
    ShipGroup = 2,
    SolarSystem = 3,
    Constellation = 4,
    Region = 5,
}

/// Where the figures come from.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
pub enum Source {
    /// Whole UTC days and hours from the aggregates, the pieces of less than an hour at the
    /// ends from the rows.
    Aggregates,
    /// Everything from the killmail rows (for comparison, and what a filter the aggregates
    /// cannot answer falls back to).
    Rows,
}

/// The grains of the aggregates: fixed names, safe to put in SQL.
#[derive(Copy, Clone, Debug, Eq, PartialEq)]
enum Grain {
    Month,
    Day,
    Hour,
}

impl Grain {
    fn entity_table(self) -> &'static str {
        match self {
            Grain::Month => "stats_entity_months",
            Grain::Day => "stats_entity_days",
            Grain::Hour => "stats_entity_hours",
        }
    }

    fn place_table(self) -> &'static str {
        match self {
            Grain::Month => "stats_months",
            Grain::Day => "stats_days",
            Grain::Hour => "stats_hours",
        }
    }

    /// The key column of both tables.
    fn column(self) -> &'static str {
        match self {
            Grain::Month => "month",
            Grain::Day => "day",
            Grain::Hour => "hour",
        }
    }

    /// The UTC day of a row (of a month's, its first: counts per day never read months).
    fn day(self) -> &'static str {
        match self {
            Grain::Month => "month",
            Grain::Day => "day",
            Grain::Hour => "stats_day(hour)",
        }
    }
}

/// A time range split into whole UTC months (only those given by [`Plan::with_months`]), whole
/// days `[first, end)` (one stretch, or those around and between the months) and whole hours
/// (the stretches `hours`, at most one at either end), answered by the aggregates, and at most
/// two stretches `[from, to)` of less than an hour answered by the rows (or one of any length,
/// read from the rows alone).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    months: Vec<(NaiveDate, NaiveDate)>,
    days: Vec<(NaiveDate, NaiveDate)>,
    hours: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    edges: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

fn start_of(day: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&day.and_time(NaiveTime::MIN))
}

fn hour_of(time: DateTime<Utc>) -> DateTime<Utc> {
    time.duration_trunc(TimeDelta::hours(1)).unwrap_or(time)
}

/// Bounds for an open end: before EVE and long after it (PostgreSQL's dates stop at 5874897).
fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or_default()
}

fn last_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or_default()
}

impl Plan {
    /// `from` inclusive, `to` exclusive, either open.
    pub fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>, source: Source) -> Self {
        let start = from.unwrap_or_else(|| start_of(first_day()));
        let stop = to.unwrap_or_else(|| start_of(last_day()));
        let mut plan = Plan {
            months: Vec::new(),
            days: Vec::new(),
            hours: Vec::new(),
            edges: Vec::new(),
        };
        if source == Source::Rows {
            plan.edges.push((start, stop));
            return plan;
        }
        let first = if start_of(start.date_naive()) == start {
            start.date_naive()
        } else {
            start.date_naive() + Days::new(1)
        };
        let end = stop.date_naive();
        if first < end {
            plan.days.push((first, end));
            for (from, to) in [(start, start_of(first)), (start_of(end), stop)] {
                if from < to {
                    plan.split_hours(from, to);
                }
            }
        } else {
            plan.split_hours(start, stop);
        }
        plan
    }

    /// `[from, to)` as whole hours from the aggregates and the rest from the rows.
    fn split_hours(&mut self, from: DateTime<Utc>, to: DateTime<Utc>) {
        let first = match hour_of(from) {
            hour if hour == from => hour,
            hour => hour + TimeDelta::hours(1),
        };
        let end = hour_of(to);
        if first < end {
            if from < first {
                self.edges.push((from, first));
            }
            self.hours.push((first, end));
            if end < to {
                self.edges.push((end, to));
            }
        } else {
            self.edges.push((from, to));
        }
    }

    /// The stretches of the aggregates it reads: the months, the days, then the hours at
    /// either end.
    fn spans(&self) -> Vec<Span> {
        let months = self
            .months
            .iter()
            .map(|(first, end)| Span::Months(*first, *end));
        let days = self
            .days
            .iter()
            .map(|(first, end)| Span::Days(*first, *end));
        let hours = self.hours.iter().map(|(from, to)| Span::Hours(*from, *to));
        months.chain(days).chain(hours).collect()
    }

    /// The stretch from the first whole month of its days to the end of the last, if any.
    fn whole_months(&self) -> Option<(NaiveDate, NaiveDate)> {
        let first = self.days.iter().map(|d| d.0).min()?;
        let end = self.days.iter().map(|d| d.1).max()?;
        let first = match first.with_day(1) {
            Some(start) if start == first => first,
            Some(start) => start.checked_add_months(Months::new(1))?,
            None => return None,
        };
        let end = end.with_day(1)?;
        (first < end).then_some((first, end))
    }

    /// The same range with the whole months in `ready` (first days, ascending) read from the
    /// month tables, and the days around and between them from the day tables.
    fn with_months(&self, ready: &[NaiveDate]) -> Plan {
        let mut plan = Plan {
            months: Vec::new(),
            days: Vec::new(),
            ..self.clone()
        };
        for &(first, end) in &self.days {
            let mut cursor = first;
            for &month in ready {
                let Some(next) = month.checked_add_months(Months::new(1)) else {
                    continue;
                };
                if month < cursor || next > end {
                    continue;
                }
                if cursor < month {
                    plan.days.push((cursor, month));
                }
                match plan.months.last_mut() {
                    Some(run) if run.1 == month => run.1 = next,
                    _ => plan.months.push((month, next)),
                }
                cursor = next;
            }
            if cursor < end {
                plan.days.push((cursor, end));
            }
        }
        plan
    }

    /// The same range, all from the rows.
    fn rows(&self) -> Plan {
        let mut bounds = self.edges.clone();
        bounds.extend(&self.hours);
        bounds.extend(
            self.days
                .iter()
                .chain(&self.months)
                .map(|(first, end)| (start_of(*first), start_of(*end))),
        );
        let from = bounds.iter().map(|b| b.0).min();
        let to = bounds.iter().map(|b| b.1).max();
        match (from, to) {
            (Some(from), Some(to)) => Plan {
                months: Vec::new(),
                days: Vec::new(),
                hours: Vec::new(),
                edges: vec![(from, to)],
            },
            _ => self.clone(),
        }
    }

    /// ` JOIN` of `killmails k` (or another table with `killmail_time`, as `alias`) to the
    /// stretches answered by the rows: a condition on the table, ranges joined by `OR`, which
    /// the planner reads through the time indexes (a join to a list of ranges made it scan
    /// every killmail).
    fn push_edges(&self, sql: &mut QueryBuilder<'_, Postgres>, alias: &str) {
        sql.push(" JOIN (VALUES (1)) AS e(edges) ON (false");
        for (from, to) in &self.edges {
            sql.push(format_args!(" OR {alias}.killmail_time >= "))
                .push_bind(*from)
                .push(format_args!(" AND {alias}.killmail_time < "))
                .push_bind(*to);
        }
        sql.push(")");
    }
}

/// Whole months or days `[first, end)` or whole hours `[from, to)` of the aggregates.
#[derive(Copy, Clone, Debug, PartialEq)]
enum Span {
    Months(NaiveDate, NaiveDate),
    Days(NaiveDate, NaiveDate),
    Hours(DateTime<Utc>, DateTime<Utc>),
}

impl Span {
    fn grain(self) -> Grain {
        match self {
            Span::Months(..) => Grain::Month,
            Span::Days(..) => Grain::Day,
            Span::Hours(..) => Grain::Hour,
        }
    }

    /// The span whose leaders bound this one's in a top list: itself, or for 6 hours or more of
    /// one day that day, as an entity has at most its day's kills in some of its hours. One list
    /// instead of 6-24: on the bench store a day's 160th character has 27-39 kills and an
    /// hour's 3-7, so from 6 hours on the day's bound is the lower.
    fn leaders(self) -> Span {
        match self {
            Span::Hours(from, to) => {
                let day = from.date_naive();
                let next = day + Days::new(1);
                if to - from >= TimeDelta::hours(6) && to <= start_of(next) {
                    Span::Days(day, next)
                } else {
                    self
                }
            }
            Span::Months(..) | Span::Days(..) => self,
        }
    }

    /// ` AND` the rows of the span (`prefix` names the table, as `s.`, or is empty): one
    /// range of the primary keys and of the top indexes.
    fn push_range(self, sql: &mut QueryBuilder<'_, Postgres>, prefix: &str) {
        let column = self.grain().column();
        sql.push(format_args!(" AND {prefix}{column} >= "));
        match self {
            Span::Months(first, _) | Span::Days(first, _) => sql.push_bind(first),
            Span::Hours(from, _) => sql.push_bind(from),
        };
        sql.push(format_args!(" AND {prefix}{column} < "));
        match self {
            Span::Months(_, end) | Span::Days(_, end) => sql.push_bind(end),
            Span::Hours(_, to) => sql.push_bind(to),
        };
    }
}

/// Pushes ` UNION ALL ` between the parts of a query.
fn union(sql: &mut QueryBuilder<'_, Postgres>, parts: &mut usize) {
    if *parts > 0 {
        sql.push(" UNION ALL ");
    }
    *parts += 1;
}

/// One line of a top list.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct TopRow {
    pub id: i64,
    pub kills: i64,
    pub isk: f64,
}

/// How many times a top list looks at 4 times more leaders of each day and hour (see
/// [`EntityKind::leaders_per_first`]) before summing every entity of the range instead.
const RETRIES: u32 = 2;

/// The `first` leaders of `kind` in the plan's range among the killmails `filter` lets
/// through; ties by ISK, then id. Only an empty filter is answered by the aggregates.
pub async fn top(
    db: &mut PgConnection,
    kind: TopKind,
    plan: &Plan,
    filter: &Filter,
    first: i64,
) -> sqlx::Result<Vec<TopRow>> {
    if *filter != Filter::default() {
        return top_summed(db, kind, &plan.rows(), filter, first).await;
    }
    let mut tx = aggregates_read(db).await?;
    let plan = with_ready_months(&mut tx, plan).await?;
    let rows = top_aggregated(&mut tx, kind, &plan, first).await?;
    tx.commit().await?;
    Ok(rows)
}

/// A read of the aggregates: read-only, its statements all in one snapshot (the months found
/// ready and the figures then read from them), and without parallel workers, whose start
/// took longer than the few milliseconds of work (1-2 requests in 100 of a top list over
/// partial hours took 30-40 ms, the others 2-6 ms, as PostgreSQL planned the first few
/// executions of a statement with 2 workers).
async fn aggregates_read(db: &mut PgConnection) -> sqlx::Result<Transaction<'_, Postgres>> {
    db.begin_with(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
         SET LOCAL max_parallel_workers_per_gather = 0",
    )
    .await
}

/// The plan with the whole months of its range that the month tables hold (see the migration
/// `20261205000100_stats_months.sql`): rolled up, and not written since.
async fn with_ready_months(db: &mut PgConnection, plan: &Plan) -> sqlx::Result<Plan> {
    let Some((first, end)) = plan.whole_months() else {
        return Ok(plan.clone());
    };
    let ready = sqlx::query_scalar!(
        "SELECT month FROM stats_months_ready r
         WHERE month >= $1 AND month < $2
           AND NOT EXISTS (SELECT 1 FROM stats_months_stale s WHERE s.month = r.month)
         ORDER BY month",
        first,
        end
    )
    .fetch_all(db)
    .await?;
    Ok(plan.with_months(&ready))
}

/// Rolls up at most `at_most` of the months due, oldest first, each in a transaction of its
/// own: those that ended more than a day ago and were not rolled up, or were written since.
/// How many.
pub async fn refresh_months(db: &mut PgConnection, at_most: usize) -> sqlx::Result<usize> {
    let due = sqlx::query_scalar!(
        r#"SELECT month AS "month!" FROM stats_months_due() month LIMIT $1"#,
        i64::try_from(at_most).unwrap_or(i64::MAX)
    )
    .fetch_all(&mut *db)
    .await?;
    for month in &due {
        sqlx::query!("SELECT stats_refresh_month($1)", month)
            .execute(&mut *db)
            .await?;
    }
    if !due.is_empty() {
        // The planner's figures of the month tables, at once rather than at autovacuum's next
        // look: planned as the empty tables they were, the first roll-ups' top lists scanned
        // every entity of a month instead of its leaders (276 ms against 22 for a year).
        sqlx::query!("ANALYZE stats_entity_months, stats_months")
            .execute(&mut *db)
            .await?;
    }
    Ok(due.len())
}

/// A top list over the plan's aggregates and rows, unfiltered.
async fn top_aggregated(
    db: &mut PgConnection,
    kind: TopKind,
    plan: &Plan,
    first: i64,
) -> sqlx::Result<Vec<TopRow>> {
    if let Some(entity) = kind
        .entity()
        .filter(|_| first > 0 && !plan.spans().is_empty())
    {
        for retry in 0..=RETRIES {
            let per_piece = (first * entity.leaders_per_first()) << (2 * retry);
            if let Some(rows) = top_pruned(db, entity, plan, first, per_piece).await? {
                return Ok(rows);
            }
        }
    }
    top_summed(db, kind, plan, &Filter::default(), first).await
}

/// Every entity's figures over the rows part of the plan (`killmails k` joined to its edges
/// and `filter`), as `id, kills, isk`.
fn push_top_rows(
    sql: &mut QueryBuilder<'_, Postgres>,
    kind: TopKind,
    plan: &Plan,
    filter: &Filter,
) {
    match kind.entity() {
        Some(entity) => {
            let (_, column) = entity.columns();
            sql.push(format_args!(
                "SELECT a.id, count(*) AS kills, sum(coalesce(k.total_value, 0)) AS isk FROM killmails k
                 JOIN LATERAL (SELECT DISTINCT {column} AS id FROM attackers a
                               WHERE a.killmail_id = k.killmail_id AND {column} IS NOT NULL) a ON true"
            ));
        }
        None => {
            let column = match kind {
                TopKind::ShipType => "victim_ship_type_id",
                _ => "solar_system_id",
            };
            sql.push(format_args!(
                "SELECT k.{column} AS id, count(*) AS kills, sum(coalesce(k.total_value, 0)) AS isk FROM killmails k"
            ));
        }
    }
    plan.push_edges(sql, "k");
    sql.push(" WHERE true");
    filter.push_sql(sql);
    sql.push(" GROUP BY 1");
}

/// The figures of entities of one kind over a span, as `id, kills, isk`; the caller may add
/// conditions.
fn push_entity_span(sql: &mut QueryBuilder<'_, Postgres>, entity: EntityKind, span: Span) {
    sql.push(format_args!(
        "SELECT entity_id AS id, kills::int8 AS kills, isk_destroyed AS isk
         FROM {} WHERE kills > 0 AND kind = ",
        span.grain().entity_table()
    ))
    .push_bind(entity.code());
    span.push_range(sql, "");
}

/// The top list summed over every entity (ship type, system) of the range.
async fn top_summed(
    db: &mut PgConnection,
    kind: TopKind,
    plan: &Plan,
    filter: &Filter,
    first: i64,
) -> sqlx::Result<Vec<TopRow>> {
    let mut sql =
        QueryBuilder::new("SELECT id, sum(kills)::int8 AS kills, sum(isk)::float8 AS isk FROM (");
    let mut parts = 0;
    for span in plan.spans() {
        let grain = span.grain();
        union(&mut sql, &mut parts);
        match kind.entity() {
            Some(entity) => push_entity_span(&mut sql, entity, span),
            None => {
                let dimension = match kind {
                    TopKind::ShipType => Dimension::ShipType,
                    _ => Dimension::SolarSystem,
                };
                sql.push(format_args!(
                    "SELECT key AS id, killmails::int8 AS kills, isk FROM {} WHERE dimension = ",
                    grain.place_table()
                ))
                .push_bind(dimension as i16);
                span.push_range(&mut sql, "");
            }
        }
    }
    if !plan.edges.is_empty() {
        union(&mut sql, &mut parts);
        push_top_rows(&mut sql, kind, plan, filter);
    }
    sql.push(") x GROUP BY id ORDER BY kills DESC, isk DESC, id LIMIT ")
        .push_bind(first);
    sql.build_query_as().fetch_all(db).await
}

/// The top list of an entity kind from the leaders of each day and hour (threshold pruning,
/// as in Fagin's "no random access" algorithm): each day and hour of the range gives its
/// `per_piece` leaders and the kills of the last of them (its K-th; 0 when it has fewer, as
/// its list is then whole), and the rows part of the range is summed per entity (a whole list:
/// K-th 0); 6 hours or more of one day give that day's leaders instead (see [`Span::leaders`]).
/// An entity seen in a list has at most its kills in the lists where it is plus the K-th of
/// each list where it is not; an entity in no list at most the sum of the K-ths (the bound).
/// The `first` entities with the most kills in the lists (those of the days an end's hours
/// were bounded by too, so not always a least) are summed exactly; the
/// fewest kills among them is a threshold that `first` entities reach, and only the entities
/// whose most reaches it are summed too. When the `first`-th of those has more kills than the
/// bound, the list is exact (ties by ISK, then id, as in [`top_summed`]). `None` when it is not.
async fn top_pruned(
    db: &mut PgConnection,
    entity: EntityKind,
    plan: &Plan,
    first: i64,
    per_piece: i64,
) -> sqlx::Result<Option<Vec<TopRow>>> {
    // leaders: (piece, id, kills, kth) for each day's and hour's leaders.
    let mut sql = QueryBuilder::new("WITH leaders AS MATERIALIZED (");
    let mut parts = 0;
    for span in plan.spans() {
        let span = span.leaders();
        let grain = span.grain();
        union(&mut sql, &mut parts);
        let column = grain.column();
        sql.push(format_args!(
            "SELECT '{column} ' || p.piece AS piece, l.id, l.kills, l.kth FROM (SELECT {column} AS piece
             FROM {} s WHERE dimension = 0 AND key = 0",
            grain.place_table()
        ));
        span.push_range(&mut sql, "s.");
        sql.push(
            ") p CROSS JOIN LATERAL (
                SELECT y.id, y.kills::int8 AS kills,
                       CASE WHEN count(*) OVER () = ",
        )
        .push_bind(per_piece)
        .push(format_args!(
            " THEN min(y.kills) OVER () ELSE 0 END::int8 AS kth
                FROM (SELECT entity_id AS id, kills FROM {} s WHERE s.kind = ",
            grain.entity_table()
        ))
        .push_bind(entity.code())
        .push(format_args!(
            " AND s.{column} = p.piece AND s.kills > 0 ORDER BY s.kills DESC LIMIT "
        ))
        .push_bind(per_piece)
        .push(") y) l");
    }
    sql.push(
        "), bound AS (SELECT coalesce(sum(kth), 0)::int8 AS kth
                      FROM (SELECT DISTINCT piece, kth FROM leaders) k)",
    );
    let kind = match entity {
        EntityKind::Character => TopKind::Character,
        EntityKind::Corporation => TopKind::Corporation,
        EntityKind::Alliance => TopKind::Alliance,
    };
    let edges = !plan.edges.is_empty();
    if edges {
        sql.push(", edge AS MATERIALIZED (");
        push_top_rows(&mut sql, kind, plan, &Filter::default());
        sql.push(")");
    }
    // seen: each entity's kills in the lists (`low`) and what its most has over the bound (`over`).
    sql.push(
        ", seen AS MATERIALIZED (SELECT id, sum(low)::int8 AS low, sum(over)::int8 AS over FROM (
              SELECT id, kills AS low, kills - kth AS over FROM leaders",
    );
    if edges {
        sql.push(" UNION ALL SELECT id, kills, kills FROM edge");
    }
    sql.push(") s GROUP BY id), sure AS (SELECT id FROM seen ORDER BY low DESC, id LIMIT ")
        .push_bind(first)
        .push("), sure_kills AS (SELECT sum(kills) AS kills FROM (");
    push_candidate_sums(&mut sql, entity, plan, "sure");
    sql.push(
        ") x GROUP BY id),
         candidates AS (SELECT id FROM seen WHERE over + (SELECT kth FROM bound) >=
             (SELECT CASE WHEN count(*) = ",
    )
    .push_bind(first)
    .push(
        " THEN min(kills) ELSE 0 END FROM sure_kills))
         SELECT id, sum(kills)::int8 AS kills, sum(isk)::float8 AS isk,
                (SELECT kth FROM bound) AS bound FROM (",
    );
    push_candidate_sums(&mut sql, entity, plan, "candidates");
    sql.push(") x GROUP BY id ORDER BY kills DESC, isk DESC, id LIMIT ")
        .push_bind(first);
    // Not a prepared statement kept for reuse: after five runs PostgreSQL may switch to a
    // generic plan, which does not know how many leaders or candidates there are (it made a
    // week's character top list 3 times slower).
    let rows: Vec<(i64, i64, f64, i64)> =
        sql.build_query_as().persistent(false).fetch_all(db).await?;
    let bound = rows.first().map_or(0, |row| row.3);
    let last = usize::try_from(first).ok().and_then(|n| rows.get(n - 1));
    let exact = bound == 0 || last.is_some_and(|row| row.1 > bound);
    Ok(exact.then(|| {
        rows.into_iter()
            .map(|(id, kills, isk, _)| TopRow { id, kills, isk })
            .collect()
    }))
}

/// The figures over the whole range (as `id, kills, isk`, a row per span) of the entities in
/// the query's table `set` (`id`): the aggregates' spans, and the rows part from `edge`.
fn push_candidate_sums(
    sql: &mut QueryBuilder<'_, Postgres>,
    entity: EntityKind,
    plan: &Plan,
    set: &str,
) {
    let mut parts = 0;
    for span in plan.spans() {
        union(sql, &mut parts);
        push_entity_span(sql, entity, span);
        sql.push(format_args!(" AND entity_id IN (SELECT id FROM {set})"));
    }
    if !plan.edges.is_empty() {
        union(sql, &mut parts);
        sql.push(format_args!(
            "SELECT id, kills, isk FROM edge WHERE id IN (SELECT id FROM {set})"
        ));
    }
}

/// Which aggregate answers killmails per day under a filter, if any: every killmail, those of
/// some ship types, ship groups, systems, constellations or regions (a killmail has one of
/// each), or those of one entity.
enum DayCounts<'f> {
    Dimension(Dimension, &'f [i64]),
    Entity(EntityKind, i64, Involvement),
}

fn day_counts_source(filter: &Filter) -> Option<DayCounts<'_>> {
    let lists = [
        (&filter.ships, Dimension::ShipType),
        (&filter.groups, Dimension::ShipGroup),
        (&filter.systems, Dimension::SolarSystem),
        (&filter.constellations, Dimension::Constellation),
        (&filter.regions, Dimension::Region),
    ];
    let entities = [
        (&filter.characters, EntityKind::Character),
        (&filter.corporations, EntityKind::Corporation),
        (&filter.alliances, EntityKind::Alliance),
    ];
    let plain = Filter {
        characters: Default::default(),
        corporations: Default::default(),
        alliances: Default::default(),
        ships: Default::default(),
        systems: Default::default(),
        regions: Default::default(),
        groups: Default::default(),
        constellations: Default::default(),
        involvement: Involvement::default(),
        ..filter.clone()
    };
    if plain != Filter::default() {
        return None;
    }
    let used: Vec<_> = lists.iter().filter(|(ids, _)| !ids.is_empty()).collect();
    let used_entities: Vec<_> = entities.iter().filter(|(ids, _)| !ids.is_empty()).collect();
    match (used.as_slice(), used_entities.as_slice()) {
        ([], []) => Some(DayCounts::Dimension(Dimension::All, &[0])),
        ([(ids, dimension)], []) => Some(DayCounts::Dimension(*dimension, ids.as_slice())),
        ([], [(ids, kind)]) if ids.as_slice().len() == 1 => Some(DayCounts::Entity(
            *kind,
            ids.as_slice()[0],
            filter.involvement,
        )),
        _ => None,
    }
}

/// Killmails per UTC day with any, oldest first, among those `filter` lets through.
pub async fn date_counts(
    db: &mut PgConnection,
    plan: &Plan,
    filter: &Filter,
) -> sqlx::Result<Vec<(NaiveDate, i64)>> {
    let source = day_counts_source(filter);
    let rows_plan;
    let plan = if source.is_some() {
        plan
    } else {
        rows_plan = plan.rows();
        &rows_plan
    };
    let mut sql = QueryBuilder::new("SELECT day, sum(n)::int8 AS n FROM (");
    let mut parts = 0;
    for span in source.as_ref().map(|_| plan.spans()).unwrap_or_default() {
        let grain = span.grain();
        union(&mut sql, &mut parts);
        let day = grain.day();
        match &source {
            Some(DayCounts::Dimension(dimension, keys)) => {
                sql.push(format_args!(
                    "SELECT {day} AS day, killmails::int8 AS n FROM {} WHERE dimension = ",
                    grain.place_table()
                ))
                .push_bind(*dimension as i16)
                .push(" AND key = ANY(")
                .push_bind(keys.to_vec())
                .push(")");
            }
            Some(DayCounts::Entity(kind, id, involvement)) => {
                let count = match involvement {
                    Involvement::Victim => "losses",
                    Involvement::Attacker => "kills",
                    Involvement::Any => "kills + losses - kills_of_own",
                };
                sql.push(format_args!(
                    "SELECT {day} AS day, ({count})::int8 AS n FROM {} WHERE kind = ",
                    grain.entity_table()
                ))
                .push_bind(kind.code())
                .push(" AND entity_id = ")
                .push_bind(*id);
            }
            None => {}
        }
        span.push_range(&mut sql, "");
    }
    if !plan.edges.is_empty() {
        union(&mut sql, &mut parts);
        sql.push("SELECT (k.killmail_time AT TIME ZONE 'UTC')::date AS day, count(*) AS n FROM killmails k");
        plan.push_edges(&mut sql, "k");
        sql.push(" WHERE true");
        filter.push_sql(&mut sql);
        sql.push(" GROUP BY 1");
    }
    sql.push(") x GROUP BY day HAVING sum(n) > 0 ORDER BY day");
    sql.build_query_as().fetch_all(db).await
}

/// A character's, corporation's or alliance's figures over a range.
#[derive(Clone, Debug, Default, PartialEq, sqlx::FromRow)]
pub struct EntityStats {
    pub kills: i64,
    pub losses: i64,
    pub isk_destroyed: f64,
    pub isk_lost: f64,
    pub solo_kills: i64,
    pub points: i64,
}

pub async fn entity_stats(
    db: &mut PgConnection,
    kind: EntityKind,
    id: i64,
    plan: &Plan,
) -> sqlx::Result<EntityStats> {
    let mut tx = aggregates_read(db).await?;
    let plan = with_ready_months(&mut tx, plan).await?;
    let figures = entity_stats_over(&mut tx, kind, id, &plan).await?;
    tx.commit().await?;
    Ok(figures)
}

async fn entity_stats_over(
    db: &mut PgConnection,
    kind: EntityKind,
    id: i64,
    plan: &Plan,
) -> sqlx::Result<EntityStats> {
    let mut sql = QueryBuilder::new(
        "SELECT coalesce(sum(kills), 0)::int8 AS kills, coalesce(sum(losses), 0)::int8 AS losses,
                coalesce(sum(isk_destroyed), 0)::float8 AS isk_destroyed,
                coalesce(sum(isk_lost), 0)::float8 AS isk_lost,
                coalesce(sum(solo_kills), 0)::int8 AS solo_kills,
                coalesce(sum(points), 0)::int8 AS points
         FROM (",
    );
    let mut parts = 0;
    for span in plan.spans() {
        let grain = span.grain();
        union(&mut sql, &mut parts);
        sql.push(format_args!(
            "SELECT kills::int8 AS kills, losses::int8 AS losses, isk_destroyed, isk_lost,
                    solo_kills::int8 AS solo_kills, points
             FROM {} WHERE kind = ",
            grain.entity_table()
        ))
        .push_bind(kind.code())
        .push(" AND entity_id = ")
        .push_bind(id);
        span.push_range(&mut sql, "");
    }
    if !plan.edges.is_empty() {
        union(&mut sql, &mut parts);
        let (victim, attacker) = kind.columns();
        // The killmails it was in, found through both entity indexes, then split.
        sql.push(format_args!(
            "SELECT count(*) FILTER (WHERE r.attacker) AS kills,
                    count(*) FILTER (WHERE r.victim) AS losses,
                    coalesce(sum(r.isk) FILTER (WHERE r.attacker), 0) AS isk_destroyed,
                    coalesce(sum(r.isk) FILTER (WHERE r.victim), 0) AS isk_lost,
                    count(*) FILTER (WHERE r.attacker AND r.solo) AS solo_kills,
                    coalesce(sum(r.points) FILTER (WHERE r.attacker), 0)::int8 AS points
             FROM (SELECT coalesce(k.total_value, 0) AS isk, k.solo IS TRUE AS solo,
                          coalesce(k.points, 0)::int8 AS points,
                          k.{victim} IS NOT DISTINCT FROM "
        ))
        .push_bind(id)
        .push(format_args!(
            " AS victim, EXISTS (SELECT 1 FROM attackers a
                                 WHERE a.killmail_id = k.killmail_id AND a.{attacker} = "
        ))
        .push_bind(id)
        .push(") AS attacker FROM killmails k WHERE k.killmail_id IN (SELECT k.killmail_id FROM killmails k");
        plan.push_edges(&mut sql, "k");
        sql.push(format_args!(" WHERE k.{victim} = "))
            .push_bind(id)
            .push(" UNION SELECT a.killmail_id FROM attackers a");
        plan.push_edges(&mut sql, "a");
        sql.push(format_args!(" WHERE a.{attacker} = "))
            .push_bind(id)
            .push(")) r");
    }
    sql.push(") x");
    // Unprepared when the rows are read, as in `top_pruned`: a generic plan of the rows' part
    // made an alliance's stats over partial hours 10 times slower after five runs (over whole
    // hours and days a kept plan saves its planning, about half a millisecond).
    sql.build_query_as()
        .persistent(plan.edges.is_empty())
        .fetch_one(db)
        .await
}

/// What an entity's own top list ranks.
#[derive(async_graphql::Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum EntityTop {
    /// Ship types it flew on its kills.
    Ships,
    /// Systems of its kills and losses.
    Systems,
    /// Characters it killed.
    VictimCharacters,
    /// Corporations it killed.
    VictimCorporations,
    /// Alliances it killed.
    VictimAlliances,
}

/// An entity's top ships, systems or opponents in a range, from its rows (through the entity
/// indexes): kills (killmails for systems) and ISK.
pub async fn entity_top(
    db: &mut PgConnection,
    kind: EntityKind,
    id: i64,
    what: EntityTop,
    plan: &Plan,
    first: i64,
) -> sqlx::Result<Vec<TopRow>> {
    let plan = plan.rows();
    let (victim, attacker) = kind.columns();
    let mut sql = QueryBuilder::new("");
    // Its kills: killmail ids where it was among the attackers.
    let kills = |sql: &mut QueryBuilder<'_, Postgres>| {
        sql.push("SELECT DISTINCT a.killmail_id FROM attackers a");
        plan.push_edges(sql, "a");
        sql.push(format_args!(" WHERE a.{attacker} = "))
            .push_bind(id);
    };
    match what {
        EntityTop::Ships => {
            sql.push(format_args!(
                "SELECT a.ship_type_id AS id, count(DISTINCT a.killmail_id)::int8 AS kills,
                        sum(coalesce(k.total_value, 0))::float8 AS isk
                 FROM attackers a JOIN killmails k ON k.killmail_id = a.killmail_id"
            ));
            plan.push_edges(&mut sql, "a");
            sql.push(format_args!(
                " WHERE a.ship_type_id IS NOT NULL AND a.{attacker} = "
            ))
            .push_bind(id)
            .push(" GROUP BY 1");
        }
        EntityTop::Systems => {
            sql.push(
                "SELECT k.solar_system_id AS id, count(*)::int8 AS kills,
                        sum(coalesce(k.total_value, 0))::float8 AS isk
                 FROM killmails k WHERE k.killmail_id IN (",
            );
            kills(&mut sql);
            sql.push(" UNION SELECT k.killmail_id FROM killmails k");
            plan.push_edges(&mut sql, "k");
            sql.push(format_args!(" WHERE k.{victim} = "))
                .push_bind(id)
                .push(") GROUP BY 1");
        }
        EntityTop::VictimCharacters
        | EntityTop::VictimCorporations
        | EntityTop::VictimAlliances => {
            let column = match what {
                EntityTop::VictimCharacters => "victim_character_id",
                EntityTop::VictimCorporations => "victim_corporation_id",
                _ => "victim_alliance_id",
            };
            sql.push(format_args!(
                "SELECT k.{column} AS id, count(*)::int8 AS kills,
                        sum(coalesce(k.total_value, 0))::float8 AS isk
                 FROM killmails k WHERE k.{column} IS NOT NULL AND k.killmail_id IN ("
            ));
            kills(&mut sql);
            sql.push(") GROUP BY 1");
        }
    }
    sql.push(" ORDER BY kills DESC, isk DESC, id LIMIT ")
        .push_bind(first);
    sql.build_query_as().fetch_all(db).await
}

/// The ids of the `first` most valuable killmails in the range among those `filter` lets
/// through (through the value index), most valuable first.
pub async fn most_valuable(
    db: &mut PgConnection,
    plan: &Plan,
    filter: &Filter,
    first: i64,
) -> sqlx::Result<Vec<i64>> {
    let plan = plan.rows();
    let mut sql = QueryBuilder::new("SELECT k.killmail_id FROM killmails k");
    plan.push_edges(&mut sql, "k");
    sql.push(" WHERE k.total_value IS NOT NULL");
    filter.push_sql(&mut sql);
    sql.push(format_args!(
        " ORDER BY {VALUE_KEY} DESC, k.killmail_id DESC LIMIT "
    ))
    .push_bind(first);
    sql.build_query_scalar().fetch_all(db).await
}

/// What a name search looks in.
#[derive(async_graphql::Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum SearchKind {
    Character,
    Corporation,
    Alliance,
    SolarSystem,
    ItemType,
}

/// A name found by [`search`].
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    pub kind: SearchKind,
    pub id: i64,
    pub name: String,
}

/// `text` as the start of a `LIKE` pattern, matched literally.
fn prefix_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 1);
    for c in text.to_lowercase().chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Names starting with `text` (case-insensitive), shortest first, at most `first` of each
/// kind asked for, then at most `first` in all.
pub async fn search(
    db: impl PgExecutor<'_>,
    text: &str,
    kinds: &[SearchKind],
    first: i64,
) -> sqlx::Result<Vec<Found>> {
    let pattern = prefix_pattern(text);
    let entity_categories: Vec<String> = kinds
        .iter()
        .filter_map(|kind| match kind {
            SearchKind::Character => Some("character"),
            SearchKind::Corporation => Some("corporation"),
            SearchKind::Alliance => Some("alliance"),
            _ => None,
        })
        .map(str::to_owned)
        .collect();
    let rows = sqlx::query!(
        r#"
        (SELECT category AS "kind!", id AS "id!", name AS "name!" FROM entity_names
         WHERE lower(name) LIKE $1 AND category = ANY($2)
         ORDER BY length(name), name LIMIT $3)
        UNION ALL
        (SELECT 'solar_system', solar_system_id, name FROM solar_systems
         WHERE $4 AND lower(name) LIKE $1 ORDER BY length(name), name LIMIT $3)
        UNION ALL
        (SELECT 'inventory_type', type_id, name FROM item_types
         WHERE $5 AND lower(name) LIKE $1 AND name IS NOT NULL
         ORDER BY length(name), name LIMIT $3)
        "#,
        pattern,
        &entity_categories,
        first,
        kinds.contains(&SearchKind::SolarSystem),
        kinds.contains(&SearchKind::ItemType),
    )
    .fetch_all(db)
    .await?;
    let mut found: Vec<Found> = rows
        .into_iter()
        .filter_map(|row| {
            let kind = match row.kind.as_str() {
                "character" => SearchKind::Character,
                "corporation" => SearchKind::Corporation,
                "alliance" => SearchKind::Alliance,
                "solar_system" => SearchKind::SolarSystem,
                "inventory_type" => SearchKind::ItemType,
                _ => return None,
            };
            Some(Found {
                kind,
                id: row.id,
                name: row.name,
            })
        })
        .collect();
    found.sort_by(|a, b| (a.name.len(), &a.name).cmp(&(b.name.len(), &b.name)));
    found.truncate(usize::try_from(first).unwrap_or(0));
    Ok(found)
}

/// Recomputes every aggregate from the killmail rows (`queue stats rebuild`): the days and
/// hours in one transaction (readers see the old figures until it commits, writers wait for
/// it), then the months that have ended. How many months.
pub async fn rebuild(db: &mut PgConnection) -> sqlx::Result<usize> {
    sqlx::query!("SELECT stats_rebuild()")
        .execute(&mut *db)
        .await?;
    refresh_months(db, usize::MAX).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("an RFC 3339 time")
            .with_timezone(&Utc)
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("a date")
    }

    #[test]
    fn whole_days_and_hours_come_from_the_aggregates_and_the_rest_from_the_rows() {
        let plan = Plan::new(
            Some(at("2021-12-01T10:17:00Z")),
            Some(at("2021-12-04T06:41:00Z")),
            Source::Aggregates,
        );
        assert_eq!(plan.days, vec![(day("2021-12-02"), day("2021-12-04"))]);
        assert_eq!(
            plan.hours,
            vec![
                (at("2021-12-01T11:00:00Z"), at("2021-12-02T00:00:00Z")),
                (at("2021-12-04T00:00:00Z"), at("2021-12-04T06:00:00Z")),
            ]
        );
        assert_eq!(
            plan.edges,
            vec![
                (at("2021-12-01T10:17:00Z"), at("2021-12-01T11:00:00Z")),
                (at("2021-12-04T06:00:00Z"), at("2021-12-04T06:41:00Z")),
            ]
        );
        assert_eq!(
            plan.spans(),
            vec![
                Span::Days(day("2021-12-02"), day("2021-12-04")),
                Span::Hours(at("2021-12-01T11:00:00Z"), at("2021-12-02T00:00:00Z")),
                Span::Hours(at("2021-12-04T00:00:00Z"), at("2021-12-04T06:00:00Z")),
            ]
        );
        assert_eq!(
            plan.rows().edges,
            vec![(at("2021-12-01T10:17:00Z"), at("2021-12-04T06:41:00Z"))]
        );
        let aligned = Plan::new(
            Some(at("2021-12-01T00:00:00Z")),
            Some(at("2021-12-03T00:00:00Z")),
            Source::Aggregates,
        );
        assert_eq!(aligned.days, vec![(day("2021-12-01"), day("2021-12-03"))]);
        assert!(aligned.hours.is_empty() && aligned.edges.is_empty());
        assert_eq!(
            aligned.rows().edges,
            vec![(at("2021-12-01T00:00:00Z"), at("2021-12-03T00:00:00Z"))]
        );
    }

    #[test]
    fn whole_hours_at_the_ends_need_no_rows() {
        let plan = Plan::new(
            Some(at("2021-12-01T10:00:00Z")),
            Some(at("2021-12-04T06:00:00Z")),
            Source::Aggregates,
        );
        assert_eq!(
            plan.hours,
            vec![
                (at("2021-12-01T10:00:00Z"), at("2021-12-02T00:00:00Z")),
                (at("2021-12-04T00:00:00Z"), at("2021-12-04T06:00:00Z")),
            ]
        );
        assert!(plan.edges.is_empty());
    }

    #[test]
    fn a_range_within_one_day_is_hours_and_its_ends_rows() {
        let plan = Plan::new(
            Some(at("2021-12-01T10:30:00Z")),
            Some(at("2021-12-01T12:15:00Z")),
            Source::Aggregates,
        );
        assert!(plan.days.is_empty());
        assert_eq!(
            plan.hours,
            vec![(at("2021-12-01T11:00:00Z"), at("2021-12-01T12:00:00Z"))]
        );
        assert_eq!(
            plan.edges,
            vec![
                (at("2021-12-01T10:30:00Z"), at("2021-12-01T11:00:00Z")),
                (at("2021-12-01T12:00:00Z"), at("2021-12-01T12:15:00Z")),
            ]
        );
    }

    #[test]
    fn a_range_within_one_hour_is_read_from_the_rows() {
        let from = at("2021-12-01T10:05:00Z");
        let to = at("2021-12-01T10:55:00Z");
        let plan = Plan::new(Some(from), Some(to), Source::Aggregates);
        assert!(plan.days.is_empty());
        assert!(plan.hours.is_empty());
        assert_eq!(plan.edges, vec![(from, to)]);
        assert!(plan.spans().is_empty());
        let backwards = Plan::new(Some(to), Some(from), Source::Aggregates);
        assert_eq!(backwards.edges, vec![(to, from)]);
    }

    #[test]
    fn open_ends_are_whole_days() {
        let plan = Plan::new(None, None, Source::Aggregates);
        assert!(plan.edges.is_empty() && plan.hours.is_empty());
        assert_eq!(plan.days.len(), 1);
        let rows = Plan::new(None, Some(at("2021-12-01T10:00:00Z")), Source::Rows);
        assert!(rows.days.is_empty());
        assert_eq!(rows.edges.len(), 1);
    }

    #[test]
    fn ready_whole_months_replace_their_days() {
        let plan = Plan::new(
            Some(at("2021-03-14T10:00:00Z")),
            Some(at("2021-09-02T00:00:00Z")),
            Source::Aggregates,
        );
        assert_eq!(
            plan.whole_months(),
            Some((day("2021-04-01"), day("2021-09-01")))
        );
        // April, May and July are ready; June and August are not; March and September are
        // not whole; a ready month outside the range is left alone.
        let ready = [
            "2021-02-01",
            "2021-04-01",
            "2021-05-01",
            "2021-07-01",
            "2021-09-01",
        ]
        .map(day);
        let months = plan.with_months(&ready);
        assert_eq!(
            months.months,
            vec![
                (day("2021-04-01"), day("2021-06-01")),
                (day("2021-07-01"), day("2021-08-01")),
            ]
        );
        assert_eq!(
            months.days,
            vec![
                (day("2021-03-15"), day("2021-04-01")),
                (day("2021-06-01"), day("2021-07-01")),
                (day("2021-08-01"), day("2021-09-02")),
            ]
        );
        assert_eq!(months.hours, plan.hours);
        assert_eq!(months.rows(), plan.rows());
        assert_eq!(plan.with_months(&[]), plan);
        let within = Plan::new(
            Some(at("2021-03-02T00:00:00Z")),
            Some(at("2021-04-30T00:00:00Z")),
            Source::Aggregates,
        );
        assert_eq!(within.whole_months(), None);
        let open = Plan::new(None, None, Source::Aggregates).with_months(&ready);
        // February, April to June, July, September; the days before, between and after.
        assert_eq!(open.months.len(), 4);
        assert_eq!(open.days.len(), 5);
    }

    #[test]
    fn a_search_text_is_matched_literally() {
        assert_eq!(prefix_pattern("Jita_4%"), "jita\\_4\\%%");
    }
}
