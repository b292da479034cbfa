//! A value for every killmail: zKillboard's when it came with its `zkb` block, otherwise
//! killreport's own estimate (`killmails.estimate`), made by zKillboard's rules ([`rules`]) from
//! ESI's item prices of the killmail's own day. This module owns the prices per day (fetched
//! daily by worker-killmails, or now by `queue prices`), the estimates written with each stored
//! killmail (in the store's transaction), and the revaluation of stored killmails when a day's
//! prices first arrive; [`fitting`] groups a victim's items by slot and hold.
//!
//! A killmail is valued with the prices of the nearest earlier day that has them, else the
//! nearest later one. So when day D's prices arrive, the killmails from D up to the next day
//! with prices (from the beginning of time, when D is the first) are valued again, in batches,
//! each one UPDATE. The revaluation first waits for the stores in flight (the store's lock),
//! and a store values its batch under that lock, so a batch valued before D arrived is always
//! committed before the revaluation looks.

pub mod fitting;
pub mod rules;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::esi::{Esi, MarketPrice};
use crate::killmail::{Killmail, KillmailId};
use rules::{DayPrices, Facts, SystemClass, TypeClass};

/// Arbitrary, but fixed: held (by one session) while a process fetches prices and revalues, so
/// that one process at a time does it.
const PRICES_LOCK: i64 = 0x6b72_5f70_7263;

/// Killmails valued again per transaction.
const REVALUE_BATCH: i64 = 500;

/// The day whose prices value a killmail of `date`: the nearest earlier day with prices (that
/// day included), else the nearest later; `None` while no day has any. `days` is sorted.
pub fn price_day(days: &[NaiveDate], date: NaiveDate) -> Option<NaiveDate> {
    match days.partition_point(|day| *day <= date) {
        0 => days.first().copied(),
        after => Some(days[after - 1]),
    }
}

/// killreport's own blocks for `killmails` (each valued at its own date), as stored in
/// `killmails.estimate`. Reads only what these killmails need: their types' and systems'
/// static facts and their types' prices of the days concerned.
pub async fn estimates<'k>(
    db: &mut PgConnection,
    killmails: impl IntoIterator<Item = &'k Killmail>,
) -> sqlx::Result<Vec<(KillmailId, serde_json::Value)>> {
    let killmails: Vec<&Killmail> = killmails.into_iter().collect();
    if killmails.is_empty() {
        return Ok(Vec::new());
    }
    let days = db::prices::days(&mut *db).await?;
    let mut type_ids = BTreeSet::new();
    let mut system_ids = BTreeSet::new();
    for killmail in &killmails {
        type_ids.insert(killmail.victim.ship_type_id);
        type_ids.extend(killmail.attackers.iter().filter_map(|a| a.ship_type_id));
        type_ids.extend(
            killmail
                .items_preorder()
                .into_iter()
                .map(|(_, item)| item.item_type_id),
        );
        system_ids.insert(killmail.solar_system_id);
    }
    let type_ids: Vec<i64> = type_ids.into_iter().collect();
    let system_ids: Vec<i64> = system_ids.into_iter().collect();
    let facts = Facts {
        types: db::prices::type_classes(&mut *db, &type_ids)
            .await?
            .into_iter()
            .map(|(id, group_id, category_id)| {
                let class = TypeClass {
                    group_id,
                    category_id,
                };
                (id, class)
            })
            .collect(),
        systems: db::prices::system_classes(&mut *db, &system_ids)
            .await?
            .into_iter()
            .map(|(id, security, region_id)| {
                let class = SystemClass {
                    security,
                    region_id,
                };
                (id, class)
            })
            .collect(),
    };
    let day_of = |k: &Killmail| price_day(&days, k.killmail_time.date_naive());
    let needed: BTreeSet<NaiveDate> = killmails.iter().filter_map(|k| day_of(k)).collect();
    let mut prices = HashMap::new();
    for day in needed {
        let by_type = db::prices::prices(&mut *db, day, &type_ids).await?;
        let table = DayPrices {
            day,
            prices: by_type.into_iter().collect(),
        };
        prices.insert(day, table);
    }
    Ok(killmails
        .into_iter()
        .map(|killmail| {
            let day = day_of(killmail).and_then(|day| prices.get(&day));
            let estimate = rules::estimate(killmail, &facts, day);
            let json = serde_json::to_value(estimate).unwrap_or_default();
            (killmail.killmail_id, json)
        })
        .collect())
}

/// What one round of price keeping did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceUpdate {
    /// The day whose prices were stored, with how many types, when they were new.
    pub stored: Option<(NaiveDate, usize)>,
    /// Days whose killmails were valued again, with how many killmails changed.
    pub revalued: Vec<(NaiveDate, u64)>,
}

/// Whether a caller waits for another process that keeps the prices, or leaves it to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    No,
}

/// A connection of its own holding [`PRICES_LOCK`]; `None` when another process holds it and
/// `wait` is `No`. Dropping the connection (on any error) closes it, which releases the lock.
async fn lock_prices(pool: &PgPool, wait: Wait) -> sqlx::Result<Option<PgConnection>> {
    let mut conn = pool.acquire().await?.detach();
    let locked = match wait {
        Wait::Yes => {
            sqlx::query!("SELECT pg_advisory_lock($1)", PRICES_LOCK)
                .execute(&mut conn)
                .await?;
            true
        }
        Wait::No => {
            sqlx::query_scalar!(
                r#"SELECT pg_try_advisory_lock($1) AS "locked!""#,
                PRICES_LOCK
            )
            .fetch_one(&mut conn)
            .await?
        }
    };
    Ok(locked.then_some(conn))
}

/// Fetches today's prices (UTC) from ESI unless the store has them, then values again the
/// killmails of every day whose prices arrived; `None` when another process is at it and
/// `wait` is `No`.
pub async fn update_prices(
    pool: &PgPool,
    esi: &Esi,
    wait: Wait,
) -> anyhow::Result<Option<PriceUpdate>> {
    let Some(mut conn) = lock_prices(pool, wait).await? else {
        return Ok(None);
    };
    let today = Utc::now().date_naive();
    let stored = if db::prices::days(&mut conn).await?.contains(&today) {
        None
    } else {
        let prices = esi
            .market_prices()
            .await
            .context("fetching item prices from ESI")?;
        store_day(&mut conn, today, &prices).await?
    };
    let revalued = revalue_pending(&mut conn).await?;
    conn.close().await?;
    Ok(Some(PriceUpdate { stored, revalued }))
}

/// Stores `prices` as `day`'s (unless the day has prices already) and values again the
/// killmails of every day whose prices arrived; waits for a process at it.
pub async fn add_prices(
    pool: &PgPool,
    day: NaiveDate,
    prices: &[MarketPrice],
) -> anyhow::Result<PriceUpdate> {
    let mut conn = lock_prices(pool, Wait::Yes)
        .await?
        .context("the prices lock")?;
    let stored = store_day(&mut conn, day, prices).await?;
    let revalued = revalue_pending(&mut conn).await?;
    conn.close().await?;
    Ok(PriceUpdate { stored, revalued })
}

async fn store_day(
    conn: &mut PgConnection,
    day: NaiveDate,
    prices: &[MarketPrice],
) -> sqlx::Result<Option<(NaiveDate, usize)>> {
    let type_ids: Vec<i64> = prices.iter().map(|p| p.type_id).collect();
    let average: Vec<Option<f64>> = prices.iter().map(|p| p.average_price).collect();
    let adjusted: Vec<Option<f64>> = prices.iter().map(|p| p.adjusted_price).collect();
    let mut tx = conn.begin().await?;
    let new = db::prices::insert_day(&mut tx, day, &type_ids, &average, &adjusted).await?;
    tx.commit().await?;
    if new {
        tracing::info!(%day, types = prices.len(), "item prices stored");
    }
    Ok(new.then_some((day, prices.len())))
}

/// Values again the killmails of every day whose prices arrived and were not yet used so.
async fn revalue_pending(conn: &mut PgConnection) -> sqlx::Result<Vec<(NaiveDate, u64)>> {
    let mut done = Vec::new();
    for day in db::prices::unrevalued(&mut *conn).await? {
        let changed = revalue_day(conn, day).await?;
        db::prices::mark_revalued(&mut *conn, day).await?;
        tracing::info!(%day, killmails = changed, "killmails valued with the day's prices");
        done.push((day, changed));
    }
    Ok(done)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// Values again every killmail without zKillboard's block that `day`'s prices now value:
/// those from `day` (from the beginning, when it is the first day with prices) up to the next
/// day with prices. Returns how many estimates changed.
async fn revalue_day(conn: &mut PgConnection, day: NaiveDate) -> sqlx::Result<u64> {
    let days = db::prices::days(&mut *conn).await?;
    let from = (days.first() != Some(&day)).then(|| midnight(day));
    let to = days.iter().find(|d| **d > day).map(|d| midnight(*d));
    // Every store in flight has committed once this lock is had (see the module's comment).
    let mut tx = conn.begin().await?;
    db::killmails::lock_ingest(&mut tx).await?;
    tx.commit().await?;
    let mut after = None;
    let mut changed = 0;
    loop {
        let mut tx = conn.begin().await?;
        let page = db::killmails::without_zkb(&mut *tx, from, to, after, REVALUE_BATCH).await?;
        let Some(last) = page.last().copied() else {
            break;
        };
        let ids: Vec<KillmailId> = page.iter().map(|(_, id)| *id).collect();
        let stored = db::killmails::load(&mut tx, &ids).await?;
        let values = estimates(&mut tx, stored.iter().map(|s| &s.killmail)).await?;
        changed += db::killmails::set_estimates(&mut *tx, values).await?;
        tx.commit().await?;
        after = Some(last);
    }
    Ok(changed)
}

/// worker-killmails' price keeping: every `interval`, fetches today's prices when the store
/// lacks them and revalues (one process at a time: the others find it done), until `shutdown`.
pub async fn keep_prices(pool: PgPool, esi: Esi, interval: Duration, shutdown: CancellationToken) {
    loop {
        match update_prices(&pool, &esi, Wait::No).await {
            Ok(Some(update)) if update.stored.is_some() || !update.revalued.is_empty() => {
                tracing::debug!(?update, "item prices kept");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "item prices not updated; trying again later"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2021, 12, d).expect("a date")
    }

    #[test]
    fn a_killmail_takes_the_nearest_earlier_day_else_the_nearest_later() {
        let days = [day(2), day(5), day(9)];
        assert_eq!(price_day(&days, day(1)), Some(day(2)));
        assert_eq!(price_day(&days, day(2)), Some(day(2)));
        assert_eq!(price_day(&days, day(8)), Some(day(5)));
        assert_eq!(price_day(&days, day(30)), Some(day(9)));
        assert_eq!(price_day(&[], day(30)), None);
    }
}
