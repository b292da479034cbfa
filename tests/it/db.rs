//! Starting up: every process creates, migrates and loads the database itself, and several
//! doing it at once must all succeed.

use crate::support::database::TestDatabase;
use crate::support::{Services, TestEnv};

#[tokio::test]
async fn processes_starting_together_create_and_migrate_one_database() {
    let database = TestDatabase::new(
        &Services::shared().postgres,
        &uuid::Uuid::new_v4().simple().to_string()[..12],
    );
    let url = database.url();
    let starts = (0..4).map(|_| killreport::db::connect(&url, 2));
    let pools = futures::future::try_join_all(starts)
        .await
        .expect("every start succeeds");

    let (systems, jita_region): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(region_id) FILTER (WHERE name = 'Jita') FROM solar_systems",
    )
    .fetch_one(&pools[0])
    .await
    .expect("static data");
    assert_eq!(systems, 8490);
    assert_eq!(jita_region, Some(10_000_002), "Jita is in The Forge");
    let types: i64 = sqlx::query_scalar("SELECT count(*) FROM item_types")
        .fetch_one(&pools[0])
        .await
        .expect("types");
    assert_eq!(types, 50_365);
    for pool in pools {
        pool.close().await;
    }
}

#[tokio::test]
async fn a_restarted_process_finds_everything_in_place() {
    let env = TestEnv::new().await;
    let again = killreport::db::connect(&env.database_url, 2)
        .await
        .expect("second start");
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&again)
        .await
        .expect("migrations table");
    assert_eq!(
        migrations,
        i64::try_from(killreport::db::MIGRATOR.iter().count()).expect("count")
    );
    again.close().await;
    env.cleanup().await;
}
