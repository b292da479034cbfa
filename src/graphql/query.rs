//! `Query`: one killmail, the filtered `killmails` connection (see `types::killmails_page`),
//! the most valuable killmails, and entity and place lookups (statistics are `stats`).

use std::sync::Arc;

use async_graphql::{Context, ID, Object, Result};
use sqlx::PgPool;

use super::stats::{first_of, plan};
use super::time::EsiTime;
use super::types::{
    Alliance, Character, Constellation, Corporation, ItemType, KillmailConnection, Region,
    SolarSystem, killmails_page,
};
use super::{KillmailFilter, KillmailNode, Statics, internal, parse_id};
use crate::db;
use crate::db::killmails::{Order, StoredKillmail};
use crate::killmail::KillmailId;
use crate::stats;
use crate::status::WorkerStatus;

#[derive(Default)]
pub struct QueryRoot;

async fn known_name(ctx: &Context<'_>, id: i64) -> Result<bool> {
    Ok(db::names::lookup(ctx.data::<PgPool>()?, &[id])
        .await
        .map_err(internal)?
        .contains_key(&id))
}

/// The killmails and entities (part of `Query`).
#[Object]
impl QueryRoot {
    /// The pipeline as the server last worked it out (every few seconds): processes alive,
    /// queues, dead letters, feed cursors, the store's rate.
    async fn worker_status(&self, ctx: &Context<'_>) -> Result<Arc<WorkerStatus>> {
        super::status::current(ctx).await
    }

    async fn killmail(&self, ctx: &Context<'_>, id: ID) -> Result<Option<KillmailNode>> {
        let id = KillmailId(parse_id(&id, "killmail")?);
        let mut connection = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
        let mut found = db::killmails::load(&mut connection, &[id])
            .await
            .map_err(internal)?;
        Ok(found.pop().map(KillmailNode::from))
    }

    /// Killmails matching `filter`, newest first, or most valuable first with `orderBy: VALUE`
    /// (killmails without a value last).
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn killmails(
        &self,
        ctx: &Context<'_>,
        filter: Option<KillmailFilter>,
        #[graphql(default = 25)] first: Option<i32>,
        after: Option<String>,
        #[graphql(default)] order_by: Order,
    ) -> Result<KillmailConnection> {
        killmails_page(ctx, &filter.unwrap_or_default(), order_by, first, after).await
    }

    /// A character the store has seen or can name, with its affiliation as ESI last said it,
    /// else as on its newest killmail.
    async fn character(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Character>> {
        let id = parse_id(&id, "character")?;
        let seen = match super::entities::character(ctx, id).await? {
            Some(row) => Some((row.corporation_id, row.alliance_id)),
            None => db::entities::character_affiliation(ctx.data::<PgPool>()?, id)
                .await
                .map_err(internal)?,
        };
        if seen.is_none() && !known_name(ctx, id).await? {
            return Ok(None);
        }
        let (corporation_id, alliance_id) = seen.unwrap_or_default();
        Ok(Some(Character {
            id,
            corporation_id,
            alliance_id,
            node: None,
        }))
    }

    async fn corporation(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Corporation>> {
        let id = parse_id(&id, "corporation")?;
        // Its alliance as ESI last said it, else as on its newest killmail.
        let seen = match super::entities::corporation(ctx, id).await? {
            Some(row) if row.updated_at.is_some() => Some(row.alliance_id),
            _ => db::entities::corporation_alliance(ctx.data::<PgPool>()?, id)
                .await
                .map_err(internal)?,
        };
        if seen.is_none() && !known_name(ctx, id).await? {
            return Ok(None);
        }
        Ok(Some(Corporation {
            id,
            alliance_id: seen.flatten(),
            node: None,
        }))
    }

    async fn alliance(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Alliance>> {
        let id = parse_id(&id, "alliance")?;
        let seen = super::entities::alliance(ctx, id).await?.is_some()
            || db::entities::alliance_seen(ctx.data::<PgPool>()?, id)
                .await
                .map_err(internal)?;
        if !seen && !known_name(ctx, id).await? {
            return Ok(None);
        }
        Ok(Some(Alliance { id, node: None }))
    }

    async fn solar_system(&self, ctx: &Context<'_>, id: ID) -> Result<Option<SolarSystem>> {
        let id = parse_id(&id, "solar system")?;
        let known = ctx.data::<Arc<Statics>>()?.systems.contains_key(&id);
        Ok(known.then_some(SolarSystem { id }))
    }

    /// The logged-in pilot: character, corporation, alliance, scopes and last sync. Needs a
    /// session (`Authorization: Bearer <token>` from `/auth/callback`).
    async fn me(&self, ctx: &Context<'_>) -> Result<super::me::Me> {
        super::me::me(ctx).await
    }

    /// Up to `first` jobs that failed for good, with their reasons, left where they are.
    /// Admins only (`ADMIN_CHARACTER_IDS`).
    async fn dead_letters(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
    ) -> Result<Vec<super::admin::DeadLetter>> {
        super::admin::dead_letters(ctx, first).await
    }

    /// The most valuable killmails between `from` and `to` that `filter` lets through, most
    /// valuable first (killmails without a value are left out).
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn most_valuable(
        &self,
        ctx: &Context<'_>,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
        filter: Option<KillmailFilter>,
        #[graphql(default = 10)] first: Option<i32>,
    ) -> Result<Vec<KillmailNode>> {
        let first = first_of(first, 10)?;
        let filter = filter.unwrap_or_default().parse()?;
        let mut db = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
        let ids = stats::most_valuable(&mut db, &plan(from, to), &filter, first)
            .await
            .map_err(internal)?;
        let ids: Vec<KillmailId> = ids.into_iter().map(KillmailId).collect();
        let loaded: Vec<StoredKillmail> =
            db::killmails::load(&mut db, &ids).await.map_err(internal)?;
        Ok(loaded.into_iter().map(KillmailNode::from).collect())
    }

    async fn region(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Region>> {
        let id = parse_id(&id, "region")?;
        let known = ctx.data::<Arc<Statics>>()?.regions.contains_key(&id);
        Ok(known.then_some(Region { id }))
    }

    async fn constellation(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Constellation>> {
        let id = parse_id(&id, "constellation")?;
        let known = ctx.data::<Arc<Statics>>()?.constellations.contains_key(&id);
        Ok(known.then_some(Constellation { id }))
    }

    async fn item_type(&self, ctx: &Context<'_>, id: ID) -> Result<Option<ItemType>> {
        let id = parse_id(&id, "item type")?;
        let known = ctx.data::<Arc<Statics>>()?.types.contains_key(&id);
        Ok(known.then_some(ItemType { id }))
    }
}
