//! Statistics in GraphQL (DESIGN "GraphQL core for statistics"): `top`, `killmailsDateCounts`,
//! `search`, and each entity's `stats` and `top` lists. What they mean and where the figures come from
//! is `stats`; this module checks arguments and names what it returns.

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, ID, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::loaders::NameLoader;
use super::time::EsiTime;
use super::{KillmailFilter, bad_input, internal};
use crate::statics::Statics;
use crate::stats::{self, EntityKind, EntityTop, Found, Plan, SearchKind, Source, TopKind, TopRow};

/// Most entries a top list, a search or `mostValuable` returns.
pub const MAX_TOP: i32 = 100;

#[derive(Default)]
pub struct StatsQuery;

pub(super) fn first_of(first: Option<i32>, default: i32) -> Result<i64> {
    let first = first.unwrap_or(default);
    if !(0..=MAX_TOP).contains(&first) {
        return Err(bad_input(format!(
            "first must be between 0 and {MAX_TOP}, not {first}"
        )));
    }
    Ok(i64::from(first))
}

pub(super) fn plan(from: Option<EsiTime>, to: Option<EsiTime>) -> Plan {
    let (from, to): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        (from.map(|t| t.0), to.map(|t| t.0));
    Plan::new(from, to, Source::Aggregates)
}

/// One line of a top list.
pub struct TopEntry {
    kind: TopKind,
    row: TopRow,
}

#[Object]
impl TopEntry {
    async fn id(&self) -> ID {
        ID(self.row.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        let statics = ctx.data::<Arc<Statics>>()?;
        Ok(match self.kind {
            TopKind::ShipType => statics.type_name(self.row.id).map(str::to_owned),
            TopKind::SolarSystem => statics.systems.get(&self.row.id).map(|s| s.name.clone()),
            _ => ctx
                .data::<DataLoader<NameLoader>>()?
                .load_one(self.row.id)
                .await
                .map_err(|e| internal(anyhow::anyhow!(e)))?,
        })
    }
    /// Kills of a character, corporation or alliance; killmails of a ship type (destroyed) or
    /// system.
    async fn kills(&self) -> i32 {
        i32::try_from(self.row.kills).unwrap_or(i32::MAX)
    }
    async fn isk_destroyed(&self) -> f64 {
        self.row.isk
    }
}

/// Killmails on one UTC day.
#[derive(SimpleObject)]
pub struct DateCount {
    /// `YYYY-MM-DD`.
    date: String,
    count: i32,
}

/// A character's, corporation's or alliance's figures over a range.
#[derive(SimpleObject)]
pub struct EntityStats {
    /// Killmails with it among the attackers, each once.
    kills: i32,
    /// Killmails with it as the victim.
    losses: i32,
    isk_destroyed: f64,
    isk_lost: f64,
    solo_kills: i32,
    /// zKillboard's points of its kills.
    points: i32,
}

fn clamp(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// A name found by `search`.
#[derive(SimpleObject)]
pub struct SearchResult {
    kind: SearchKind,
    id: ID,
    name: String,
}

impl From<Found> for SearchResult {
    fn from(found: Found) -> Self {
        Self {
            kind: found.kind,
            id: ID(found.id.to_string()),
            name: found.name,
        }
    }
}

#[Object]
impl StatsQuery {
    /// The leaders of `kind` between `from` (inclusive) and `to` (exclusive) among the
    /// killmails `filter` lets through: characters, corporations and alliances by kills, ship
    /// types by how many were destroyed, systems by killmails; ties by ISK, then id. Without a
    /// filter, whole UTC days are read from the aggregates; with one, from the killmail rows
    /// (slower over long ranges).
    async fn top(
        &self,
        ctx: &Context<'_>,
        kind: TopKind,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
        filter: Option<KillmailFilter>,
        #[graphql(default = 10)] first: Option<i32>,
    ) -> Result<Vec<TopEntry>> {
        let first = first_of(first, 10)?;
        let filter = filter.unwrap_or_default().parse()?;
        let mut db = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
        let rows = stats::top(&mut db, kind, &plan(from, to), &filter, first)
            .await
            .map_err(internal)?;
        Ok(rows.into_iter().map(|row| TopEntry { kind, row }).collect())
    }

    /// Killmails per UTC day with any, oldest first. Without a filter, or filtered by ship
    /// types, systems or regions only, or by one character, corporation or alliance, whole
    /// days are read from the aggregates; other filters from the killmail rows.
    async fn killmails_date_counts(
        &self,
        ctx: &Context<'_>,
        filter: Option<KillmailFilter>,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
    ) -> Result<Vec<DateCount>> {
        let filter = filter.unwrap_or_default().parse()?;
        let mut db = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
        let counts = stats::date_counts(&mut db, &plan(from, to), &filter)
            .await
            .map_err(internal)?;
        Ok(counts
            .into_iter()
            .map(|(day, count)| DateCount {
                date: day.format("%Y-%m-%d").to_string(),
                count: clamp(count),
            })
            .collect())
    }

    /// Characters, corporations, alliances, solar systems and item types whose name starts
    /// with `text` (any case), shortest names first; `kinds` narrows where to look.
    async fn search(
        &self,
        ctx: &Context<'_>,
        text: String,
        kinds: Option<Vec<SearchKind>>,
        #[graphql(default = 10)] first: Option<i32>,
    ) -> Result<Vec<SearchResult>> {
        let first = first_of(first, 10)?;
        let text = text.trim();
        if text.chars().count() < 2 || text.chars().count() > 100 {
            return Err(bad_input(
                "text must hold between 2 and 100 characters to search by",
            ));
        }
        let kinds = kinds.unwrap_or_else(|| {
            vec![
                SearchKind::Character,
                SearchKind::Corporation,
                SearchKind::Alliance,
                SearchKind::SolarSystem,
                SearchKind::ItemType,
            ]
        });
        let found = stats::search(ctx.data::<PgPool>()?, text, &kinds, first)
            .await
            .map_err(internal)?;
        Ok(found.into_iter().map(SearchResult::from).collect())
    }
}

/// `stats(from, to)` of a character, corporation or alliance.
pub(super) async fn entity_stats(
    ctx: &Context<'_>,
    kind: EntityKind,
    id: i64,
    from: Option<EsiTime>,
    to: Option<EsiTime>,
) -> Result<EntityStats> {
    let mut db = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
    let figures = stats::entity_stats(&mut db, kind, id, &plan(from, to))
        .await
        .map_err(internal)?;
    Ok(EntityStats {
        kills: clamp(figures.kills),
        losses: clamp(figures.losses),
        isk_destroyed: figures.isk_destroyed,
        isk_lost: figures.isk_lost,
        solo_kills: clamp(figures.solo_kills),
        points: clamp(figures.points),
    })
}

/// An entity's own top list (`topShips`, `topSystems`, `topVictims`).
pub(super) async fn entity_top(
    ctx: &Context<'_>,
    entity: (EntityKind, i64),
    what: EntityTop,
    from: Option<EsiTime>,
    to: Option<EsiTime>,
    first: Option<i32>,
) -> Result<Vec<TopEntry>> {
    let first = first_of(first, 10)?;
    let mut db = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
    let rows = stats::entity_top(&mut db, entity.0, entity.1, what, &plan(from, to), first)
        .await
        .map_err(internal)?;
    let kind = match what {
        EntityTop::Ships => TopKind::ShipType,
        EntityTop::Systems => TopKind::SolarSystem,
        EntityTop::VictimCharacters => TopKind::Character,
        EntityTop::VictimCorporations => TopKind::Corporation,
        EntityTop::VictimAlliances => TopKind::Alliance,
    };
    Ok(rows.into_iter().map(|row| TopEntry { kind, row }).collect())
}
