//! What ESI says of characters, corporations and alliances (worker-enrich's tables), for the
//! entity types: tickers, member counts, founders, the daily snapshots and their changes, and
//! affiliations as they are now. Rows are batch-loaded per response, like names.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, Result, SimpleObject};
use sqlx::PgPool;

use super::{bad_input, internal};
pub use crate::db::enrichment::Snapshotted;
use crate::db::enrichment::{self, AllianceRow, CharacterRow, CorporationRow, Snapshot};

/// The most days `snapshots` and the changes look back.
pub const MAX_SNAPSHOT_DAYS: i32 = 366;

/// Corporations by id.
pub struct CorporationLoader(pub PgPool);

impl Loader<i64> for CorporationLoader {
    type Value = CorporationRow;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, ids: &[i64]) -> Result<HashMap<i64, CorporationRow>, Self::Error> {
        let rows = enrichment::corporations(&self.0, ids)
            .await
            .map_err(Arc::new)?;
        Ok(rows.into_iter().map(|r| (r.corporation_id, r)).collect())
    }
}

/// Alliances by id.
pub struct AllianceLoader(pub PgPool);

impl Loader<i64> for AllianceLoader {
    type Value = AllianceRow;
    type Error = Arc<sqlx::Error>;

    async fn load(&self, ids: &[i64]) -> Result<HashMap<i64, AllianceRow>, Self::Error> {
        let rows = enrichment::alliances(&self.0, ids)
            .await
            .map_err(Arc::new)?;
        Ok(rows.into_iter().map(|r| (r.alliance_id, r)).collect())
    }
}

pub async fn corporation(ctx: &Context<'_>, id: i64) -> Result<Option<CorporationRow>> {
    ctx.data::<DataLoader<CorporationLoader>>()?
        .load_one(id)
        .await
        .map_err(|e| internal(anyhow::anyhow!(e)))
}

pub async fn alliance(ctx: &Context<'_>, id: i64) -> Result<Option<AllianceRow>> {
    ctx.data::<DataLoader<AllianceLoader>>()?
        .load_one(id)
        .await
        .map_err(|e| internal(anyhow::anyhow!(e)))
}

/// A character's affiliation as ESI last said it, when it has.
pub async fn character(ctx: &Context<'_>, id: i64) -> Result<Option<CharacterRow>> {
    let rows = enrichment::characters(ctx.data::<PgPool>()?, &[id])
        .await
        .map_err(internal)?;
    Ok(rows.into_iter().find(|r| r.affiliation_at.is_some()))
}

/// One day's counts of a corporation or alliance.
#[derive(SimpleObject)]
pub struct EntitySnapshot {
    /// The UTC day, YYYY-MM-DD.
    pub date: String,
    pub member_count: i32,
    /// Alliances only.
    pub corporation_count: Option<i32>,
}

impl From<Snapshot> for EntitySnapshot {
    fn from(s: Snapshot) -> Self {
        Self {
            date: s.day.format("%Y-%m-%d").to_string(),
            member_count: s.member_count,
            corporation_count: s.corporation_count,
        }
    }
}

/// How many days back, checked.
pub fn days(days: i32) -> Result<i32> {
    if (1..=MAX_SNAPSHOT_DAYS).contains(&days) {
        Ok(days)
    } else {
        Err(bad_input(format!(
            "days must be between 1 and {MAX_SNAPSHOT_DAYS}, not {days}"
        )))
    }
}

/// The snapshots of the last `last` days, oldest first.
pub async fn snapshots(
    ctx: &Context<'_>,
    of: Snapshotted,
    last: i32,
) -> Result<Vec<EntitySnapshot>> {
    let rows = enrichment::snapshots(ctx.data::<PgPool>()?, of, days(last)?)
        .await
        .map_err(internal)?;
    Ok(rows.into_iter().map(EntitySnapshot::from).collect())
}

/// The newest snapshot against the newest at least `back` days old.
async fn change(
    ctx: &Context<'_>,
    of: Snapshotted,
    back: i32,
) -> Result<Option<(Snapshot, Snapshot)>> {
    enrichment::change(ctx.data::<PgPool>()?, of, days(back)?)
        .await
        .map_err(internal)
}

pub async fn member_change(ctx: &Context<'_>, of: Snapshotted, back: i32) -> Result<Option<i32>> {
    Ok(change(ctx, of, back)
        .await?
        .map(|(now, then)| now.member_count - then.member_count))
}

pub async fn corporation_count_change(
    ctx: &Context<'_>,
    id: i64,
    back: i32,
) -> Result<Option<i32>> {
    Ok(change(ctx, Snapshotted::Alliance(id), back)
        .await?
        .and_then(|(now, then)| Some(now.corporation_count? - then.corporation_count?)))
}
