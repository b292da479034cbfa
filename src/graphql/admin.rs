//! The operational API, for the characters in `ADMIN_CHARACTER_IDS` only (anyone else gets
//! `FORBIDDEN`, and `UNAUTHENTICATED` without a session): `Query.deadLetters`, and the
//! mutations that replay or purge dead letters, start repairs, and queue entities for
//! worker-enrich to describe again or snapshot (see `operations`).

use async_graphql::{Context, Enum, ID, Object, Result, SimpleObject};
use chrono::NaiveDate;

use super::{bad_input, hidden, internal, rights};
use crate::enrich::Kind;
use crate::operations::{MAX_REPAIR_DAYS, Operations};

/// Most dead letters listed or replayed by one call.
pub const MAX_DEAD_LETTERS: i32 = 10_000;

/// Most ids one refresh names (more: leave `ids` out to refresh every one).
const MAX_REFRESH_IDS: usize = 100_000;

/// What worker-enrich describes.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    Characters,
    Corporations,
    Alliances,
    /// Item types the shipped static data lacks.
    ItemTypes,
}

/// Whose member counts a snapshot records.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    Corporations,
    Alliances,
}

impl From<EntityKind> for Kind {
    fn from(kind: EntityKind) -> Self {
        match kind {
            EntityKind::Characters => Kind::Characters,
            EntityKind::Corporations => Kind::Corporations,
            EntityKind::Alliances => Kind::Alliances,
            EntityKind::ItemTypes => Kind::Types,
        }
    }
}

impl From<SnapshotKind> for Kind {
    fn from(kind: SnapshotKind) -> Self {
        match kind {
            SnapshotKind::Corporations => Kind::Corporations,
            SnapshotKind::Alliances => Kind::Alliances,
        }
    }
}

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

    /// Starts backfilling the days `from` to `to` (both included, `YYYY-MM-DD`) from EVE Ref's
    /// daily archives in the server's background, as `queue backfill` does: stored, counted in
    /// statistics and queryable, not announced. Returns at once; a second while one started
    /// on this server is under way is refused. Admins only.
    async fn start_backfill(&self, ctx: &Context<'_>, from: String, to: String) -> Result<bool> {
        let operations = operations(ctx)?;
        let (from, to) = (day(&from, "from")?, day(&to, "to")?);
        if from > to || (to - from).num_days() >= MAX_REPAIR_DAYS {
            return Err(bad_input(format!(
                "from must not be after to, and a backfill spans at most {MAX_REPAIR_DAYS} days"
            )));
        }
        if !operations.start_backfill(from, to) {
            return Err(bad_input(
                "a backfill started on this server is under way; wait for it to end",
            ));
        }
        tracing::info!(%from, %to, "an admin started a backfill");
        Ok(true)
    }

    /// Queues entities of `kind` for worker-enrich to describe again through ESI: those of
    /// `ids`, or every one the store knows when `ids` is left out. Returns how many jobs were
    /// queued. Admins only.
    async fn refresh_entities(
        &self,
        ctx: &Context<'_>,
        kind: EntityKind,
        ids: Option<Vec<ID>>,
    ) -> Result<i32> {
        let operations = operations(ctx)?;
        let ids = match ids {
            Some(ids) if ids.len() > MAX_REFRESH_IDS => {
                return Err(bad_input(format!(
                    "at most {MAX_REFRESH_IDS} ids at once; leave ids out to refresh every one"
                )));
            }
            Some(ids) => Some(
                ids.iter()
                    .map(|id| {
                        id.parse::<i64>()
                            .map_err(|_| bad_input(format!("{:?} is not an id", id.as_str())))
                    })
                    .collect::<Result<Vec<i64>>>()?,
            ),
            None => None,
        };
        let queued = operations
            .refresh(kind.into(), ids.as_deref())
            .await
            .map_err(internal)?;
        tracing::info!(queued, "an admin queued entities to describe again");
        Ok(i32::try_from(queued).unwrap_or(i32::MAX))
    }

    /// Queues today's snapshot of every corporation or alliance the store knows (each
    /// described again by worker-enrich, which records its member and corporation counts for
    /// the day). Returns how many jobs were queued. Admins only.
    async fn queue_snapshots(&self, ctx: &Context<'_>, of: SnapshotKind) -> Result<i32> {
        let operations = operations(ctx)?;
        let queued = operations
            .refresh(of.into(), None)
            .await
            .map_err(internal)?;
        tracing::info!(queued, "an admin queued snapshots");
        Ok(i32::try_from(queued).unwrap_or(i32::MAX))
    }
}
