//! `Query`: one killmail, the filtered `killmails` connection (newest first, keyset-paginated:
//! a page is one id query plus one batched load), and entity lookups.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, ID, Object, Result};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, QueryBuilder};

use super::types::{Alliance, Character, Corporation, SolarSystem};
use super::{KillmailFilter, KillmailNode, MAX_PAGE, Statics, bad_input, internal, parse_id};
use crate::db;
use crate::killmail::KillmailId;

pub struct QueryRoot;

/// A page request of a connection.
pub struct Page {
    pub first: Option<i32>,
    pub after: Option<String>,
}

/// An edge cursor: the position of a killmail in newest-first order, `t<µs>i<id>`.
fn encode_cursor(time: DateTime<Utc>, id: i64) -> String {
    format!("t{}i{id}", time.timestamp_micros())
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, i64)> {
    let bad = || bad_input(format!("{cursor:?} is not a cursor of this connection"));
    let (micros, id) = cursor
        .strip_prefix('t')
        .and_then(|rest| rest.split_once('i'))
        .ok_or_else(bad)?;
    let time = micros
        .parse()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    let id = id.parse().map_err(|_| bad())?;
    Ok((time, id))
}

fn pool<'a>(ctx: &Context<'a>) -> &'a PgPool {
    ctx.data_unchecked::<PgPool>()
}

/// One page of killmails matching `filter`, newest first.
pub async fn killmails_page(
    ctx: &Context<'_>,
    filter: &KillmailFilter,
    page: Page,
) -> Result<Connection<String, KillmailNode>> {
    let first = page.first.unwrap_or(25);
    if !(0..=MAX_PAGE).contains(&first) {
        return Err(bad_input(format!(
            "first must be between 0 and {MAX_PAGE}, not {first}"
        )));
    }
    let filter = filter.parse()?;
    let after = page.after.as_deref().map(decode_cursor).transpose()?;

    // The filter decides the shape of the statement, so it is built here; every value is bound.
    let mut sql =
        QueryBuilder::new("SELECT k.killmail_id, k.killmail_time FROM killmails k WHERE true");
    filter.push_sql(&mut sql);
    if let Some((time, id)) = after {
        sql.push(" AND (k.killmail_time, k.killmail_id) < (")
            .push_bind(time)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    sql.push(" ORDER BY k.killmail_time DESC, k.killmail_id DESC LIMIT ")
        .push_bind(i64::from(first) + 1);
    let mut rows: Vec<(i64, DateTime<Utc>)> = sql
        .build_query_as()
        .fetch_all(pool(ctx))
        .await
        .map_err(internal)?;
    let has_next = rows.len() > first as usize;
    rows.truncate(first as usize);

    let ids: Vec<KillmailId> = rows.iter().map(|(id, _)| KillmailId(*id)).collect();
    let mut connection = pool(ctx).acquire().await.map_err(internal)?;
    let stored = db::killmails::load(&mut connection, &ids)
        .await
        .map_err(internal)?;
    let mut page = Connection::new(after.is_some(), has_next);
    page.edges.extend(stored.into_iter().map(|s| {
        Edge::new(
            encode_cursor(s.killmail.killmail_time, s.killmail.killmail_id.0),
            KillmailNode::from(s),
        )
    }));
    Ok(page)
}

async fn known_name(ctx: &Context<'_>, id: i64) -> Result<bool> {
    Ok(db::names::lookup(pool(ctx), &[id])
        .await
        .map_err(internal)?
        .contains_key(&id))
}

#[Object(name = "Query")]
impl QueryRoot {
    async fn killmail(&self, ctx: &Context<'_>, id: ID) -> Result<Option<KillmailNode>> {
        let id = KillmailId(parse_id(&id, "killmail")?);
        let mut connection = pool(ctx).acquire().await.map_err(internal)?;
        let mut found = db::killmails::load(&mut connection, &[id])
            .await
            .map_err(internal)?;
        Ok(found.pop().map(KillmailNode::from))
    }

    /// Killmails matching `filter`, newest first.
    #[graphql(complexity = "first.unwrap_or(25).max(0) as usize * child_complexity")]
    async fn killmails(
        &self,
        ctx: &Context<'_>,
        filter: Option<KillmailFilter>,
        #[graphql(default = 25)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, KillmailNode>> {
        killmails_page(ctx, &filter.unwrap_or_default(), Page { first, after }).await
    }

    /// A character the store has seen or can name, with its newest known affiliation.
    async fn character(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Character>> {
        let id = parse_id(&id, "character")?;
        let seen = db::entities::character_affiliation(pool(ctx), id)
            .await
            .map_err(internal)?;
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
        let seen = db::entities::corporation_alliance(pool(ctx), id)
            .await
            .map_err(internal)?;
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
        let seen = db::entities::alliance_seen(pool(ctx), id)
            .await
            .map_err(internal)?;
        if !seen && !known_name(ctx, id).await? {
            return Ok(None);
        }
        Ok(Some(Alliance { id, node: None }))
    }

    async fn solar_system(&self, ctx: &Context<'_>, id: ID) -> Result<Option<SolarSystem>> {
        let id = parse_id(&id, "solar system")?;
        let known = ctx
            .data_unchecked::<std::sync::Arc<Statics>>()
            .systems
            .contains_key(&id);
        Ok(known.then_some(SolarSystem { id }))
    }
}
