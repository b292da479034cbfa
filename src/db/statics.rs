//! Reading the static universe and item tables back, for processes that keep them in memory.

use sqlx::PgExecutor;

pub struct SystemRow {
    pub id: i64,
    pub name: String,
    pub security_status: Option<f64>,
    pub region_id: i64,
    pub constellation_id: i64,
}

pub async fn solar_systems(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<SystemRow>> {
    sqlx::query_as!(
        SystemRow,
        "SELECT solar_system_id AS id, name, security_status, region_id, constellation_id
         FROM solar_systems"
    )
    .fetch_all(db)
    .await
}

/// (region id, name).
pub async fn regions(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(i64, String)>> {
    let rows = sqlx::query!("SELECT region_id, name FROM regions")
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| (r.region_id, r.name)).collect())
}

/// (constellation id, name, region id).
pub async fn constellations(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(i64, String, i64)>> {
    let rows = sqlx::query!("SELECT constellation_id, name, region_id FROM constellations")
        .fetch_all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.constellation_id, r.name, r.region_id))
        .collect())
}

/// (type id, name, group name, group id).
pub async fn item_types(
    db: impl PgExecutor<'_>,
) -> sqlx::Result<Vec<(i64, Option<String>, Option<String>, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT t.type_id, t.name, g.name AS "group_name?", t.group_id
           FROM item_types t LEFT JOIN item_groups g ON g.group_id = t.group_id"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.type_id, r.name, r.group_name, r.group_id))
        .collect())
}
