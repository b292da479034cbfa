//! The static universe and item tables shipped in `data/sde` (CCP's SDE as CSV), compiled into
//! every binary and copied into PostgreSQL once per version, so names and regions are known
//! without any network.

use std::hash::{DefaultHasher, Hash, Hasher};

use sqlx::PgPool;

/// Table name and CSV text, in load order.
const TABLES: [(&str, &str); 6] = [
    ("regions", include_str!("../../data/sde/regions.csv")),
    (
        "constellations",
        include_str!("../../data/sde/constellations.csv"),
    ),
    (
        "solar_systems",
        include_str!("../../data/sde/solar_systems.csv"),
    ),
    (
        "item_categories",
        include_str!("../../data/sde/categories.csv"),
    ),
    ("item_groups", include_str!("../../data/sde/groups.csv")),
    ("item_types", include_str!("../../data/sde/types.csv")),
];

/// Arbitrary, but fixed: the advisory lock that serialises static-data loads.
const LOAD_LOCK: i64 = 0x6b72_5f73_6465;

fn checksum() -> String {
    let mut hasher = DefaultHasher::new();
    TABLES.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Loads the shipped tables unless this exact version is already loaded.
pub async fn ensure_loaded(pool: &PgPool) -> sqlx::Result<()> {
    let checksum = checksum();
    let loaded = sqlx::query_scalar!("SELECT checksum FROM static_data_version")
        .fetch_optional(pool)
        .await?;
    if loaded.as_deref() == Some(checksum.as_str()) {
        return Ok(());
    }

    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", LOAD_LOCK)
        .execute(&mut *tx)
        .await?;
    // Another process may have loaded it while this one waited for the lock.
    let loaded = sqlx::query_scalar!("SELECT checksum FROM static_data_version")
        .fetch_optional(&mut *tx)
        .await?;
    if loaded.as_deref() == Some(checksum.as_str()) {
        return Ok(());
    }
    for (table, csv) in TABLES {
        sqlx::query(&format!("TRUNCATE {table}"))
            .execute(&mut *tx)
            .await?;
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)"
            ))
            .await?;
        copy.send(csv.as_bytes()).await?;
        copy.finish().await?;
    }
    sqlx::query!(
        "INSERT INTO static_data_version (checksum) VALUES ($1)
         ON CONFLICT (singleton) DO UPDATE SET checksum = excluded.checksum, loaded_at = now()",
        checksum
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(%checksum, "static data loaded");
    Ok(())
}
