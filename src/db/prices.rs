//! Item prices per day (tables `price_days`, `item_prices`), and the static facts valuation reads
//! beside them: each type's group and category, each system's security and region. Reads take
//! only the ids at hand, by primary key, so valuing a batch costs a few index lookups.

use chrono::NaiveDate;
use sqlx::{PgConnection, PgExecutor};

/// Every day that has prices, oldest first.
pub async fn days(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<NaiveDate>> {
    sqlx::query_scalar!("SELECT day FROM price_days ORDER BY day")
        .fetch_all(db)
        .await
}

/// Stores a day's prices (one row per type: average and adjusted price, either may be
/// missing) unless the day has them already; whether it was new.
pub async fn insert_day(
    tx: &mut PgConnection,
    day: NaiveDate,
    type_ids: &[i64],
    average: &[Option<f64>],
    adjusted: &[Option<f64>],
) -> sqlx::Result<bool> {
    let types = i32::try_from(type_ids.len()).unwrap_or(i32::MAX);
    let new = sqlx::query!(
        "INSERT INTO price_days (day, types) VALUES ($1, $2) ON CONFLICT (day) DO NOTHING",
        day,
        types
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if new {
        sqlx::query!(
            "INSERT INTO item_prices (day, type_id, average_price, adjusted_price)
             SELECT $1, u.type_id, u.average, u.adjusted
             FROM UNNEST($2::int8[], $3::float8[], $4::float8[]) AS u(type_id, average, adjusted)
             ON CONFLICT (day, type_id) DO NOTHING",
            day,
            type_ids,
            average as &[Option<f64>],
            adjusted as &[Option<f64>],
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(new)
}

/// Days whose prices arrived but whose killmails were not valued again yet, oldest first.
pub async fn unrevalued(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<NaiveDate>> {
    sqlx::query_scalar!("SELECT day FROM price_days WHERE revalued_at IS NULL ORDER BY day")
        .fetch_all(db)
        .await
}

pub async fn mark_revalued(db: impl PgExecutor<'_>, day: NaiveDate) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE price_days SET revalued_at = now() WHERE day = $1",
        day
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Of `type_ids`, those with a price on `day`: (type id, ISK), the average price where ESI
/// gave a positive one, else the adjusted price.
pub async fn prices(
    db: impl PgExecutor<'_>,
    day: NaiveDate,
    type_ids: &[i64],
) -> sqlx::Result<Vec<(i64, f64)>> {
    let rows = sqlx::query!(
        r#"SELECT type_id, coalesce(nullif(average_price, 0), adjusted_price) AS "price!"
           FROM item_prices
           WHERE day = $1 AND type_id = ANY($2)
             AND coalesce(nullif(average_price, 0), adjusted_price) IS NOT NULL"#,
        day,
        type_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.type_id, r.price)).collect())
}

/// Of `type_ids`, those the static data knows: (type id, group id, category id).
pub async fn type_classes(
    db: impl PgExecutor<'_>,
    type_ids: &[i64],
) -> sqlx::Result<Vec<(i64, i64, i64)>> {
    let rows = sqlx::query!(
        "SELECT t.type_id, t.group_id, g.category_id
         FROM item_types t JOIN item_groups g ON g.group_id = t.group_id
         WHERE t.type_id = ANY($1)",
        type_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.type_id, r.group_id, r.category_id))
        .collect())
}

/// Of `system_ids`, those the static data knows with a security: (system id, security,
/// region id).
pub async fn system_classes(
    db: impl PgExecutor<'_>,
    system_ids: &[i64],
) -> sqlx::Result<Vec<(i64, f64, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT solar_system_id, security_status AS "security!", region_id
           FROM solar_systems
           WHERE solar_system_id = ANY($1) AND security_status IS NOT NULL"#,
        system_ids
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.solar_system_id, r.security, r.region_id))
        .collect())
}
