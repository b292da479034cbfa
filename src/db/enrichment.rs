//! Characters, corporations and alliances as ESI describes them (written by worker-enrich),
//! their daily member counts, item types ESI named after the shipped static data, and
//! worker-enrich's schedule: which ids on stored killmails it has not looked at yet.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::esi::{Affiliation, AllianceInfo, CorporationInfo, Name, TypeInfo};

/// A kind of entity worker-enrich describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Characters,
    Corporations,
    Alliances,
    /// Item types the shipped static data lacks.
    Types,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Characters,
        Kind::Corporations,
        Kind::Alliances,
        Kind::Types,
    ];
}

fn clamp(n: i64) -> i32 {
    i32::try_from(n.max(0)).unwrap_or(i32::MAX)
}

/// Characters' names (also kept in `entity_names`, where every name lookup reads).
pub async fn save_character_names(conn: &mut PgConnection, names: &[Name]) -> sqlx::Result<()> {
    let characters: Vec<&Name> = names.iter().filter(|n| n.category == "character").collect();
    super::names::save(&mut *conn, names).await?;
    sqlx::query!(
        "INSERT INTO characters (character_id, name, updated_at)
         SELECT *, now() FROM UNNEST($1::int8[], $2::text[])
         ON CONFLICT (character_id) DO UPDATE SET name = excluded.name, updated_at = now()",
        &characters.iter().map(|n| n.id).collect::<Vec<_>>(),
        &characters
            .iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn save_affiliations(
    db: impl PgExecutor<'_>,
    affiliations: &[Affiliation],
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO characters (character_id, corporation_id, alliance_id, faction_id,
                                 affiliation_at, updated_at)
         SELECT *, now(), now() FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[])
         ON CONFLICT (character_id) DO UPDATE
         SET corporation_id = excluded.corporation_id, alliance_id = excluded.alliance_id,
             faction_id = excluded.faction_id, affiliation_at = now(), updated_at = now()",
        &affiliations
            .iter()
            .map(|a| a.character_id)
            .collect::<Vec<_>>(),
        &affiliations
            .iter()
            .map(|a| a.corporation_id)
            .collect::<Vec<_>>(),
        &affiliations
            .iter()
            .map(|a| a.alliance_id)
            .collect::<Vec<Option<i64>>>() as _,
        &affiliations
            .iter()
            .map(|a| a.faction_id)
            .collect::<Vec<Option<i64>>>() as _,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A corporation ESI described just now, and its member count as today's snapshot.
pub async fn save_corporation(
    conn: &mut PgConnection,
    id: i64,
    info: &CorporationInfo,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO corporations (corporation_id, name, ticker, member_count, alliance_id,
                                   faction_id, ceo_id, date_founded, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
         ON CONFLICT (corporation_id) DO UPDATE
         SET name = excluded.name, ticker = excluded.ticker, member_count = excluded.member_count,
             alliance_id = excluded.alliance_id, faction_id = excluded.faction_id,
             ceo_id = excluded.ceo_id, date_founded = excluded.date_founded, updated_at = now()",
        id,
        info.name,
        info.ticker,
        clamp(info.member_count),
        info.alliance_id,
        info.faction_id,
        info.ceo_id,
        info.date_founded,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO corporation_snapshots (corporation_id, day, member_count)
         VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2)
         ON CONFLICT (corporation_id, day) DO UPDATE SET member_count = excluded.member_count",
        id,
        clamp(info.member_count),
    )
    .execute(&mut *conn)
    .await?;
    let name = Name {
        id,
        category: "corporation".to_owned(),
        name: info.name.clone(),
    };
    super::names::save(conn, &[name]).await
}

/// An alliance ESI described just now, with its corporations (whose member counts, as the
/// store has them, are summed), and its counts as today's snapshot.
pub async fn save_alliance(
    conn: &mut PgConnection,
    id: i64,
    info: &AllianceInfo,
    corporations: &[i64],
) -> sqlx::Result<()> {
    let corporation_count = clamp(corporations.len() as i64);
    let member_count = sqlx::query_scalar!(
        r#"SELECT coalesce(sum(member_count), 0)::int4 AS "members!"
           FROM corporations WHERE corporation_id = ANY($1)"#,
        corporations
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO alliances (alliance_id, name, ticker, executor_corporation_id, faction_id,
                                date_founded, member_count, corporation_count, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
         ON CONFLICT (alliance_id) DO UPDATE
         SET name = excluded.name, ticker = excluded.ticker,
             executor_corporation_id = excluded.executor_corporation_id,
             faction_id = excluded.faction_id, date_founded = excluded.date_founded,
             member_count = excluded.member_count,
             corporation_count = excluded.corporation_count, updated_at = now()",
        id,
        info.name,
        info.ticker,
        info.executor_corporation_id,
        info.faction_id,
        info.date_founded,
        member_count,
        corporation_count,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO alliance_snapshots (alliance_id, day, member_count, corporation_count)
         VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2, $3)
         ON CONFLICT (alliance_id, day) DO UPDATE
         SET member_count = excluded.member_count, corporation_count = excluded.corporation_count",
        id,
        member_count,
        corporation_count,
    )
    .execute(&mut *conn)
    .await?;
    let name = Name {
        id,
        category: "alliance".to_owned(),
        name: info.name.clone(),
    };
    super::names::save(conn, &[name]).await
}

/// An item type ESI named, added to the static table (a newer shipped table replaces it).
pub async fn save_type(db: impl PgExecutor<'_>, info: &TypeInfo) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO item_types (type_id, name, group_id) VALUES ($1, $2, $3)
         ON CONFLICT (type_id) DO UPDATE SET name = excluded.name, group_id = excluded.group_id",
        info.type_id,
        info.name,
        info.group_id,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Of these corporations, those ESI has not described within `max_age_secs`.
pub async fn stale_corporations(
    db: impl PgExecutor<'_>,
    ids: &[i64],
    max_age_secs: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM UNNEST($1::int8[]) AS u(id)
           WHERE NOT EXISTS (SELECT 1 FROM corporations c WHERE c.corporation_id = u.id
                               AND c.updated_at > now() - make_interval(secs => $2))"#,
        ids,
        max_age_secs as f64,
    )
    .fetch_all(db)
    .await
}

/// Of these alliances, those ESI has never described.
pub async fn undescribed_alliances(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM UNNEST($1::int8[]) AS u(id)
           WHERE NOT EXISTS (SELECT 1 FROM alliances a
                             WHERE a.alliance_id = u.id AND a.updated_at IS NOT NULL)"#,
        ids,
    )
    .fetch_all(db)
    .await
}

/// Every id of a kind the store knows, in ascending order (`queue … --all`, snapshots).
pub async fn all_ids(db: impl PgExecutor<'_>, kind: Kind) -> sqlx::Result<Vec<i64>> {
    match kind {
        Kind::Characters => {
            sqlx::query_scalar!("SELECT character_id FROM characters ORDER BY 1")
                .fetch_all(db)
                .await
        }
        Kind::Corporations => {
            sqlx::query_scalar!("SELECT corporation_id FROM corporations ORDER BY 1")
                .fetch_all(db)
                .await
        }
        Kind::Alliances => {
            sqlx::query_scalar!("SELECT alliance_id FROM alliances ORDER BY 1")
                .fetch_all(db)
                .await
        }
        Kind::Types => {
            sqlx::query_scalar!("SELECT type_id FROM item_types ORDER BY 1")
                .fetch_all(db)
                .await
        }
    }
}

/// worker-enrich's schedule, locked for the transaction that read it; `None` when another
/// worker holds it.
pub struct Schedule {
    pub scanned_seq: i64,
    pub affiliations_at: Option<DateTime<Utc>>,
    pub snapshots_on: Option<NaiveDate>,
}

pub async fn lock_schedule(conn: &mut PgConnection) -> sqlx::Result<Option<Schedule>> {
    sqlx::query_as!(
        Schedule,
        "SELECT scanned_seq, affiliations_at, snapshots_on FROM enrich_schedule
         FOR UPDATE SKIP LOCKED"
    )
    .fetch_optional(conn)
    .await
}

pub async fn save_schedule(conn: &mut PgConnection, schedule: &Schedule) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE enrich_schedule SET scanned_seq = $1, affiliations_at = $2, snapshots_on = $3",
        schedule.scanned_seq,
        schedule.affiliations_at,
        schedule.snapshots_on,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The end of the next range of killmails to look through: the ingest sequence of the
/// `limit`th killmail after `after` (or of the last, when fewer follow), and how many it holds.
pub async fn scan_end(
    db: impl PgExecutor<'_>,
    after: i64,
    limit: i64,
) -> sqlx::Result<(Option<i64>, i64)> {
    let row = sqlx::query!(
        r#"SELECT max(seq) AS upto, count(*) AS "count!"
           FROM (SELECT seq FROM killmails WHERE seq > $1 ORDER BY seq LIMIT $2) s"#,
        after,
        limit
    )
    .fetch_one(db)
    .await?;
    Ok((row.upto, row.count))
}

/// Records the characters, corporations and alliances on the killmails with sequence in
/// `(after, upto]`, each with the newest killmail time it was seen on, in one statement; returns
/// those never recorded before (the ids first seen), less those ESI could not name lately.
pub async fn record_seen(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<(Kind, i64)>> {
    let rows = sqlx::query!(
        r#"WITH batch AS (
               SELECT killmail_id, killmail_time, victim_character_id AS character_id,
                      victim_corporation_id AS corporation_id, victim_alliance_id AS alliance_id
               FROM killmails WHERE seq > $1 AND seq <= $2
           ), seen AS (
               SELECT character_id, corporation_id, alliance_id, killmail_time FROM batch
               UNION ALL
               SELECT a.character_id, a.corporation_id, a.alliance_id, a.killmail_time
               FROM batch JOIN attackers a USING (killmail_id)
           ), characters_seen AS (
               INSERT INTO characters AS e (character_id, last_seen_at)
               SELECT character_id, max(killmail_time) FROM seen
               WHERE character_id IS NOT NULL GROUP BY character_id
               ON CONFLICT (character_id) DO UPDATE
               SET last_seen_at = greatest(e.last_seen_at, excluded.last_seen_at)
               RETURNING 'characters' AS kind, character_id AS id, xmax = 0 AS new
           ), corporations_seen AS (
               INSERT INTO corporations AS e (corporation_id, last_seen_at)
               SELECT corporation_id, max(killmail_time) FROM seen
               WHERE corporation_id IS NOT NULL GROUP BY corporation_id
               ON CONFLICT (corporation_id) DO UPDATE
               SET last_seen_at = greatest(e.last_seen_at, excluded.last_seen_at)
               RETURNING 'corporations' AS kind, corporation_id AS id, xmax = 0 AS new
           ), alliances_seen AS (
               INSERT INTO alliances AS e (alliance_id, last_seen_at)
               SELECT alliance_id, max(killmail_time) FROM seen
               WHERE alliance_id IS NOT NULL GROUP BY alliance_id
               ON CONFLICT (alliance_id) DO UPDATE
               SET last_seen_at = greatest(e.last_seen_at, excluded.last_seen_at)
               RETURNING 'alliances' AS kind, alliance_id AS id, xmax = 0 AS new
           )
           -- xmax = 0: the row was inserted now, not updated.
           SELECT kind AS "kind!", id AS "id!" FROM (
               SELECT * FROM characters_seen UNION ALL SELECT * FROM corporations_seen
               UNION ALL SELECT * FROM alliances_seen
           ) recorded
           WHERE new AND NOT EXISTS (SELECT 1 FROM unnamed_ids x
                                     WHERE x.id = recorded.id
                                       AND x.asked_at > now() - interval '1 day')
           ORDER BY kind, id"#,
        after,
        upto
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let kind = match r.kind.as_str() {
                "characters" => Kind::Characters,
                "corporations" => Kind::Corporations,
                _ => Kind::Alliances,
            };
            (kind, r.id)
        })
        .collect())
}

/// The item types on the killmails with sequence in `(after, upto]` (ships, weapons, items)
/// that `item_types` lacks and ESI was not asked about lately.
pub async fn unknown_types(
    db: impl PgExecutor<'_>,
    after: i64,
    upto: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        r#"SELECT DISTINCT id AS "id!" FROM (
               SELECT victim_ship_type_id FROM killmails WHERE seq > $1 AND seq <= $2
               UNION ALL
               SELECT unnest(ARRAY[a.ship_type_id, a.weapon_type_id])
               FROM killmails k JOIN attackers a USING (killmail_id)
               WHERE k.seq > $1 AND k.seq <= $2
               UNION ALL
               SELECT unnest(i.item_type_id)
               FROM killmails k JOIN killmail_items i USING (killmail_id)
               WHERE k.seq > $1 AND k.seq <= $2
           ) seen(id)
           WHERE id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM item_types t WHERE t.type_id = seen.id)
             AND NOT EXISTS (SELECT 1 FROM unnamed_ids x
                             WHERE x.id = seen.id AND x.asked_at > now() - interval '1 day')"#,
        after,
        upto
    )
    .fetch_all(db)
    .await
}

/// Characters seen on a killmail within `recent_secs` whose affiliation is older than
/// `max_age_secs` (or was never read).
pub async fn stale_affiliations(
    db: impl PgExecutor<'_>,
    recent_secs: i64,
    max_age_secs: i64,
) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        "SELECT character_id FROM characters
         WHERE last_seen_at > now() - make_interval(secs => $1)
           AND (affiliation_at IS NULL OR affiliation_at < now() - make_interval(secs => $2))
           AND NOT EXISTS (SELECT 1 FROM unnamed_ids x WHERE x.id = character_id
                           AND x.asked_at > now() - interval '1 day')
         ORDER BY character_id",
        recent_secs as f64,
        max_age_secs as f64,
    )
    .fetch_all(db)
    .await
}

/// What the store knows of a character from ESI.
pub struct CharacterRow {
    pub character_id: i64,
    pub corporation_id: Option<i64>,
    pub alliance_id: Option<i64>,
    pub affiliation_at: Option<DateTime<Utc>>,
}

pub async fn characters(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<CharacterRow>> {
    sqlx::query_as!(
        CharacterRow,
        "SELECT character_id, corporation_id, alliance_id, affiliation_at
         FROM characters WHERE character_id = ANY($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// What the store knows of a corporation from ESI.
#[derive(Debug, Clone)]
pub struct CorporationRow {
    pub corporation_id: i64,
    pub ticker: Option<String>,
    pub member_count: Option<i32>,
    pub alliance_id: Option<i64>,
    pub ceo_id: Option<i64>,
    pub date_founded: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

pub async fn corporations(
    db: impl PgExecutor<'_>,
    ids: &[i64],
) -> sqlx::Result<Vec<CorporationRow>> {
    sqlx::query_as!(
        CorporationRow,
        "SELECT corporation_id, ticker, member_count, alliance_id, ceo_id, date_founded,
                updated_at
         FROM corporations WHERE corporation_id = ANY($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// What the store knows of an alliance from ESI.
#[derive(Debug, Clone)]
pub struct AllianceRow {
    pub alliance_id: i64,
    pub ticker: Option<String>,
    pub executor_corporation_id: Option<i64>,
    pub date_founded: Option<DateTime<Utc>>,
    pub member_count: Option<i32>,
    pub corporation_count: Option<i32>,
}

pub async fn alliances(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<AllianceRow>> {
    sqlx::query_as!(
        AllianceRow,
        "SELECT alliance_id, ticker, executor_corporation_id, date_founded, member_count,
                corporation_count
         FROM alliances WHERE alliance_id = ANY($1)",
        ids
    )
    .fetch_all(db)
    .await
}

/// One day's counts of a corporation or alliance (`corporation_count` only for alliances).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub day: NaiveDate,
    pub member_count: i32,
    pub corporation_count: Option<i32>,
}

/// Whose snapshots: each query reads both tables, the branch of the other kind filtered out
/// by its constant condition before it reads anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snapshotted {
    Corporation(i64),
    Alliance(i64),
}

impl Snapshotted {
    /// (id, whether an alliance).
    fn key(self) -> (i64, bool) {
        match self {
            Snapshotted::Corporation(id) => (id, false),
            Snapshotted::Alliance(id) => (id, true),
        }
    }
}

/// The snapshots of the last `days` days (today included), oldest first.
pub async fn snapshots(
    db: impl PgExecutor<'_>,
    of: Snapshotted,
    days: i32,
) -> sqlx::Result<Vec<Snapshot>> {
    let (id, alliance) = of.key();
    sqlx::query_as!(
        Snapshot,
        r#"SELECT day AS "day!", member_count AS "member_count!",
                  corporation_count AS "corporation_count?"
           FROM (SELECT day, member_count, corporation_count FROM alliance_snapshots
                 WHERE $3 AND alliance_id = $1
                 UNION ALL
                 SELECT day, member_count, NULL FROM corporation_snapshots
                 WHERE NOT $3 AND corporation_id = $1) s
           WHERE day > (now() AT TIME ZONE 'UTC')::date - $2::int4
           ORDER BY day"#,
        id,
        days,
        alliance
    )
    .fetch_all(db)
    .await
}

/// The newest snapshot and the newest one at least `days` days older than today: what a
/// change over `days` is worked out from.
pub async fn change(
    db: impl PgExecutor<'_>,
    of: Snapshotted,
    days: i32,
) -> sqlx::Result<Option<(Snapshot, Snapshot)>> {
    let (id, alliance) = of.key();
    let rows = sqlx::query_as!(
        Snapshot,
        r#"WITH s AS (
               SELECT day, member_count, corporation_count FROM alliance_snapshots
               WHERE $3 AND alliance_id = $1
               UNION ALL
               SELECT day, member_count, NULL FROM corporation_snapshots
               WHERE NOT $3 AND corporation_id = $1
           )
           (SELECT day AS "day!", member_count AS "member_count!",
                   corporation_count AS "corporation_count?"
            FROM s ORDER BY day DESC LIMIT 1)
           UNION ALL
           (SELECT day, member_count, corporation_count FROM s
            WHERE day <= (now() AT TIME ZONE 'UTC')::date - $2::int4
            ORDER BY day DESC LIMIT 1)"#,
        id,
        days,
        alliance
    )
    .fetch_all(db)
    .await?;
    Ok(pair(rows))
}

/// (newest, then) from the two rows of a change query, when both are there.
fn pair(rows: Vec<Snapshot>) -> Option<(Snapshot, Snapshot)> {
    let mut rows = rows.into_iter();
    Some((rows.next()?, rows.next()?))
}
