//! The `statistics` event: today's (UTC) top 10 of every `TopKind`, sent on the event bus when
//! any of them changed, looked at once per interval; and at each look, the roll-up of a month
//! of statistics that is due (see [`refresh_months`]). One process of all those running does
//! it: the one holding a PostgreSQL advisory lock on a connection of its own (the lease; a
//! crashed holder's connection closes and the lock with it, and another takes it over).

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use redis::aio::ConnectionManager;
use serde_json::{Map, Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::{Plan, Source, TopKind, TopRow, refresh_months, start_of, top};
use crate::bus::send_event;
use crate::db;
use crate::filter::Filter;
use crate::statics::Statics;

/// The event's type.
pub const STATISTICS: &str = "statistics";
/// Entries per top list in the event.
pub const TOP_SIZE: i64 = 10;
/// Arbitrary, but fixed: the lease of the process that sends the event.
const LEASE: i64 = 0x006b_725f_7374_6174;

/// What the task needs.
pub struct Statistics {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub channel: String,
    pub statics: Arc<Statics>,
    /// How often today's top lists are looked at.
    pub interval: Duration,
}

fn kind_key(kind: TopKind) -> &'static str {
    match kind {
        TopKind::Character => "character",
        TopKind::Corporation => "corporation",
        TopKind::Alliance => "alliance",
        TopKind::ShipType => "shipType",
        TopKind::SolarSystem => "solarSystem",
    }
}

/// The event's data for `day`: `{"date": "YYYY-MM-DD", "top": {"character": [{"id", "name",
/// "kills", "iskDestroyed"}…], "corporation": …, "alliance": …, "shipType": …,
/// "solarSystem": …}}`, ids as strings as GraphQL gives them.
pub async fn today_top(
    db: &mut PgConnection,
    statics: &Statics,
    day: NaiveDate,
) -> sqlx::Result<Value> {
    let plan = Plan::new(
        Some(start_of(day)),
        Some(start_of(day + chrono::Days::new(1))),
        Source::Aggregates,
    );
    let mut lists: Vec<(TopKind, Vec<TopRow>)> = Vec::new();
    for kind in TopKind::ALL {
        let rows = top(db, kind, &plan, &Filter::default(), TOP_SIZE).await?;
        lists.push((kind, rows));
    }
    let entity_ids: Vec<i64> = lists
        .iter()
        .filter(|(kind, _)| kind.entity().is_some())
        .flat_map(|(_, rows)| rows.iter().map(|r| r.id))
        .collect();
    let names = db::names::lookup(&mut *db, &entity_ids).await?;
    let mut top_lists = Map::new();
    for (kind, rows) in lists {
        let entries: Vec<Value> = rows
            .into_iter()
            .map(|row| {
                let name = match kind {
                    TopKind::ShipType => statics.type_name(row.id).map(str::to_owned),
                    TopKind::SolarSystem => statics.systems.get(&row.id).map(|s| s.name.clone()),
                    _ => names.get(&row.id).cloned(),
                };
                json!({
                    "id": row.id.to_string(),
                    "name": name,
                    "kills": row.kills,
                    "iskDestroyed": row.isk,
                })
            })
            .collect();
        top_lists.insert(kind_key(kind).to_owned(), Value::Array(entries));
    }
    Ok(json!({ "date": day.format("%Y-%m-%d").to_string(), "top": top_lists }))
}

impl Statistics {
    /// Until `shutdown`: while holding the lease, sends today's top lists whenever they
    /// differ from those last seen. The first look after taking the lease is only what later
    /// ones are compared with, so a restart sends nothing that did not change.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut lease: Option<PgConnection> = None;
        let mut last: Option<Value> = None;
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if lease.is_none() {
                lease = self.take_lease().await;
                last = None;
            }
            let Some(connection) = lease.as_mut() else {
                continue;
            };
            // One month a look: a roll-up reads a month of days, seconds for a busy month.
            match refresh_months(connection, 1).await {
                Ok(0) => {}
                Ok(_) => tracing::info!("a month of statistics rolled up"),
                Err(error) => tracing::warn!(%error, "rolling up a month of statistics failed"),
            }
            let data = match today_top(connection, &self.statics, Utc::now().date_naive()).await {
                Ok(data) => data,
                Err(error) => {
                    // The connection, and with it the lease, may be gone: taken again next time.
                    tracing::warn!(%error, "working out today's top lists failed");
                    lease = None;
                    continue;
                }
            };
            let Some(seen) = &last else {
                last = Some(data);
                continue;
            };
            if *seen == data {
                continue;
            }
            match send_event(
                &self.pool,
                &mut self.redis,
                &self.channel,
                STATISTICS,
                data.clone(),
            )
            .await
            {
                Ok(_) => last = Some(data),
                Err(error) => tracing::warn!(%error, "sending the statistics event failed"),
            }
        }
    }

    /// A connection holding the lease, if this process can have it now.
    async fn take_lease(&self) -> Option<PgConnection> {
        let mut connection = match self.pool.acquire().await {
            Ok(connection) => connection.detach(),
            Err(error) => {
                tracing::warn!(%error, "no connection for the statistics lease");
                return None;
            }
        };
        let held: Result<bool, _> =
            sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "held!""#, LEASE)
                .fetch_one(&mut connection)
                .await;
        match held {
            Ok(true) => Some(connection),
            Ok(false) => {
                let _ = connection.close().await;
                None
            }
            Err(error) => {
                tracing::warn!(%error, "taking the statistics lease failed");
                None
            }
        }
    }
}
