//! Names by id: characters, corporations, alliances and factions resolved through ESI and kept
//! here, and the static names of solar systems and item types.

use std::collections::{BTreeMap, HashMap};

use sqlx::PgExecutor;

use super::killmails::StoredKillmail;
use crate::esi::Name;
use crate::events::KillmailAdded;
use crate::killmail::Killmail;

/// Every name the store holds for these ids, whatever kind of id each is.
pub async fn lookup(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<HashMap<i64, String>> {
    let rows = sqlx::query!(
        r#"
        SELECT id AS "id!", name AS "name!" FROM entity_names WHERE id = ANY($1)
        UNION ALL
        SELECT solar_system_id, name FROM solar_systems WHERE solar_system_id = ANY($1)
        UNION ALL
        SELECT type_id, name FROM item_types WHERE type_id = ANY($1) AND name IS NOT NULL
        "#,
        ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|row| (row.id, row.name)).collect())
}

/// Of these entity ids, those the store has no name for and that ESI was not asked about in
/// the last day (see [`remember_unnamed`]).
pub async fn unnamed(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM UNNEST($1::int8[]) AS u(id)
           WHERE NOT EXISTS (SELECT 1 FROM entity_names n WHERE n.id = u.id)
             AND NOT EXISTS (SELECT 1 FROM unnamed_ids x
                             WHERE x.id = u.id AND x.asked_at > now() - interval '1 day')"#,
        ids
    )
    .fetch_all(db)
    .await
}

/// Remembers that ESI could name none of `ids` just now, so that [`unnamed`] leaves them out
/// for a day.
pub async fn remember_unnamed(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO unnamed_ids (id) SELECT * FROM UNNEST($1::int8[])
         ON CONFLICT (id) DO UPDATE SET asked_at = now()",
        ids
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn save(db: impl PgExecutor<'_>, names: &[Name]) -> sqlx::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO entity_names (id, category, name)
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[])
         ON CONFLICT (id) DO UPDATE
         SET category = excluded.category, name = excluded.name, resolved_at = now()",
        &names.iter().map(|n| n.id).collect::<Vec<_>>(),
        &names.iter().map(|n| n.category.clone()).collect::<Vec<_>>(),
        &names.iter().map(|n| n.name.clone()).collect::<Vec<_>>(),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// For each killmail, the names of its entities, solar system and ship and weapon types that the
/// store holds, keyed by id as text: the `names` of its event. One query for all of them.
pub async fn for_killmails(
    db: impl PgExecutor<'_>,
    killmails: &[&Killmail],
) -> sqlx::Result<Vec<BTreeMap<String, String>>> {
    fn wanted(k: &Killmail) -> impl Iterator<Item = i64> + '_ {
        k.entity_ids()
            .chain(k.ship_type_ids())
            .chain(std::iter::once(k.solar_system_id))
    }
    let mut ids: Vec<i64> = killmails.iter().flat_map(|k| wanted(k)).collect();
    ids.sort_unstable();
    ids.dedup();
    let names = lookup(db, &ids).await?;
    Ok(killmails
        .iter()
        .map(|k| {
            wanted(k)
                .filter_map(|id| names.get(&id).map(|name| (id.to_string(), name.clone())))
                .collect()
        })
        .collect())
}

/// Stored killmails as events, with the names the store has.
pub async fn events(
    db: impl PgExecutor<'_>,
    stored: Vec<StoredKillmail>,
) -> sqlx::Result<Vec<KillmailAdded>> {
    let killmails: Vec<&Killmail> = stored.iter().map(|s| &s.killmail).collect();
    let names = for_killmails(db, &killmails).await?;
    Ok(stored
        .into_iter()
        .zip(names)
        .map(|(s, names)| s.into_event(names))
        .collect())
}
