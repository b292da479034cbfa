//! Characters and corporations as the store has seen them: the affiliation on their most recent
//! killmail, as victim or attacker.

use sqlx::PgExecutor;

/// Corporation and alliance of a character on its newest killmail; `None` if never seen.
pub async fn character_affiliation(
    db: impl PgExecutor<'_>,
    character_id: i64,
) -> sqlx::Result<Option<(Option<i64>, Option<i64>)>> {
    let row = sqlx::query!(
        r#"SELECT corporation_id, alliance_id FROM (
               SELECT victim_corporation_id AS corporation_id, victim_alliance_id AS alliance_id,
                      killmail_time
               FROM killmails WHERE victim_character_id = $1
               UNION ALL
               SELECT corporation_id, alliance_id, killmail_time
               FROM attackers WHERE character_id = $1
           ) seen ORDER BY killmail_time DESC LIMIT 1"#,
        character_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.corporation_id, r.alliance_id)))
}

/// Alliance of a corporation on its newest killmail (the outer `None`: never seen).
pub async fn corporation_alliance(
    db: impl PgExecutor<'_>,
    corporation_id: i64,
) -> sqlx::Result<Option<Option<i64>>> {
    let row = sqlx::query!(
        r#"SELECT alliance_id FROM (
               SELECT victim_alliance_id AS alliance_id, killmail_time
               FROM killmails WHERE victim_corporation_id = $1
               UNION ALL
               SELECT alliance_id, killmail_time FROM attackers WHERE corporation_id = $1
           ) seen ORDER BY killmail_time DESC LIMIT 1"#,
        corporation_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| r.alliance_id))
}

/// Whether an alliance appears on any stored killmail.
pub async fn alliance_seen(db: impl PgExecutor<'_>, alliance_id: i64) -> sqlx::Result<bool> {
    let seen = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM killmails WHERE victim_alliance_id = $1)
               OR EXISTS (SELECT 1 FROM attackers WHERE alliance_id = $1) AS "seen!""#,
        alliance_id
    )
    .fetch_one(db)
    .await?;
    Ok(seen)
}
