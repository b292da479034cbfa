//! The operational API, for the characters in `ADMIN_CHARACTER_IDS` only (anyone else gets
//! `FORBIDDEN`, and `UNAUTHENTICATED` without a session): `Query.deadLetters`, and the
//! mutations that replay or purge dead letters and start repairs (see `operations`).

use async_graphql::{Context, Object, Result, SimpleObject};
use chrono::NaiveDate;

use super::{bad_input, hidden, internal, rights};
use crate::operations::{MAX_REPAIR_DAYS, Operations};

/// Most dead letters listed or replayed by one call.
pub const MAX_DEAD_LETTERS: i32 = 10_000;

pub struct MutationRoot;

/// A job that failed for good, and why.
#[derive(SimpleObject)]
pub struct DeadLetter {
    /// The job's body as it was (not valid UTF-8 replaced).
    body: String,
    reason: Option<String>,
}

/// The server's operational tools, once the caller is known to be an admin.
fn operations<'c>(ctx: &Context<'c>) -> Result<&'c Operations> {
    rights::admin(ctx)?;
    ctx.data_opt::<Operations>()
        .ok_or_else(|| hidden("this server has no operational tools configured"))
}

fn limit(limit: i32) -> Result<usize> {
    if (1..=MAX_DEAD_LETTERS).contains(&limit) {
        Ok(usize::try_from(limit).unwrap_or_default())
    } else {
        Err(bad_input(format!(
            "limit must be between 1 and {MAX_DEAD_LETTERS}"
        )))
    }
}

fn day(value: &str, what: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|_| bad_input(format!("{what} {value:?} is not a day like 2026-12-03")))
}

/// Up to `limit` dead letters, oldest first, left where they are.
pub async fn dead_letters(ctx: &Context<'_>, first: i32) -> Result<Vec<DeadLetter>> {
    let operations = operations(ctx)?;
    let letters = operations
        .dead_letters(limit(first)?)
        .await
        .map_err(internal)?;
    Ok(letters
        .into_iter()
        .map(|letter| DeadLetter {
            body: String::from_utf8_lossy(&letter.body).into_owned(),
            reason: letter.reason,
        })
        .collect())
}

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Moves up to `limit` dead letters back onto the killmail queue, once their cause is
    /// fixed; returns how many moved. Admins only.
    async fn replay_dead_letters(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 1000)] limit: i32,
    ) -> Result<i32> {
        let operations = operations(ctx)?;
        let moved = operations
            .replay(self::limit(limit)?)
            .await
            .map_err(internal)?;
        tracing::info!(moved, "an admin replayed dead letters");
        Ok(i32::try_from(moved).unwrap_or(i32::MAX))
    }

    /// Deletes every dead letter; returns how many there were. Admins only.
    async fn purge_dead_letters(&self, ctx: &Context<'_>) -> Result<i32> {
        let operations = operations(ctx)?;
        let purged = operations.purge().await.map_err(internal)?;
        tracing::info!(purged, "an admin purged the dead letters");
        Ok(i32::try_from(purged).unwrap_or(i32::MAX))
    }

    /// Starts comparing zKillboard's daily history of the days `from` to `to` (both included,
    /// `YYYY-MM-DD`) with the store, in the background, and queues the killmails it lacks (as
    /// `queue repair` does); returns at once. Admins only.
    async fn start_repair(&self, ctx: &Context<'_>, from: String, to: String) -> Result<bool> {
        let operations = operations(ctx)?;
        let (from, to) = (day(&from, "from")?, day(&to, "to")?);
        if from > to || (to - from).num_days() >= MAX_REPAIR_DAYS {
            return Err(bad_input(format!(
                "from must not be after to, and a repair spans at most {MAX_REPAIR_DAYS} days"
            )));
        }
        operations.start_repair(from, to).await.map_err(internal)?;
        tracing::info!(%from, %to, "an admin started a repair");
        Ok(true)
    }
}
