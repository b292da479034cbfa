//! The store keeps killmails losslessly: what goes in as ESI JSON comes back out of
//! `db::killmails::load` as the same JSON, for every fixture and a whole EVE Ref day. Storing
//! is idempotent, a late zkb block is added, and the ingest sequence follows the order of
//! storing; the migration that put items in one row a killmail carried them over whole.

use std::collections::HashMap;

use killreport::db::killmails::{Stored, load};
use killreport::ingest;
use killreport::killmail::{Killmail, KillmailId, Received, Source, Zkb};
use serde_json::Value;

use crate::support::TestEnv;
use crate::support::fixtures::{self, archive_values, esi_body};
use crate::support::json_diff::{first_difference, normalise};

/// An EVE Ref killmail (ESI body, `killmail_hash`, `http_last_modified`) as the store takes it.
fn received(value: &Value, zkb: Option<Zkb>) -> Received {
    let hash = value["killmail_hash"]
        .as_str()
        .expect("killmail_hash")
        .to_owned();
    let killmail: Killmail = serde_json::from_value(value.clone()).expect("an ESI killmail");
    Received {
        killmail,
        hash,
        zkb,
        source: Source::Import,
    }
}

/// Stores `inputs` (EVE Ref killmails) in batches, loads every one back, and returns a line
/// per killmail that does not come back as it went in.
async fn round_trip(env: &TestEnv, inputs: &[(String, Value)]) -> Vec<String> {
    for batch in inputs.chunks(500) {
        let batch: Vec<Received> = batch.iter().map(|(_, v)| received(v, None)).collect();
        ingest::store(&env.pool, &batch)
            .await
            .expect("storing a batch");
    }
    comes_back(env, inputs).await
}

/// Loads every one of `inputs` (EVE Ref killmails) from the store, and returns a line per
/// killmail that does not come back as it went in.
async fn comes_back(env: &TestEnv, inputs: &[(String, Value)]) -> Vec<String> {
    let ids: Vec<KillmailId> = inputs
        .iter()
        .map(|(_, v)| KillmailId(v["killmail_id"].as_i64().expect("killmail_id")))
        .collect();
    let mut db = env.pool.acquire().await.expect("a connection");
    let loaded: HashMap<KillmailId, _> = load(&mut db, &ids)
        .await
        .expect("loading")
        .into_iter()
        .map(|s| (s.killmail.killmail_id, s))
        .collect();

    let mut failures = Vec::new();
    for ((name, input), id) in inputs.iter().zip(&ids) {
        let Some(stored) = loaded.get(id) else {
            failures.push(format!("killmail {id} ({name}): not in the store"));
            continue;
        };
        if Some(stored.hash.as_str()) != input["killmail_hash"].as_str() {
            failures.push(format!("killmail {id} ({name}): hash {}", stored.hash));
        }
        let expected = normalise(esi_body(input));
        let actual = normalise(serde_json::to_value(&stored.killmail).expect("JSON"));
        if let Some(difference) = first_difference(&expected, &actual, "") {
            failures.push(format!("killmail {id} ({name}): {difference}"));
        }
    }
    failures
}

fn assert_no_failures(failures: &[String], of: usize) {
    assert!(
        failures.is_empty(),
        "{} of {of} killmails did not round-trip; the first:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn every_single_killmail_fixture_comes_back_as_it_went_in() {
    let env = TestEnv::new().await;
    let inputs: Vec<(String, Value)> = fixtures::killmail_values()
        .into_iter()
        .map(|v| (format!("fixture {}", v["killmail_id"]), v))
        .collect();
    assert_eq!(inputs.len(), 234, "the single-killmail fixtures");
    assert_no_failures(&round_trip(&env, &inputs).await, inputs.len());
    env.cleanup().await;
}

#[tokio::test]
async fn every_killmail_of_an_eve_ref_day_comes_back_as_it_went_in() {
    let env = TestEnv::new().await;
    let inputs = archive_values(&fixtures::archive("2021-12-03"));
    assert_eq!(inputs.len(), 4158, "killmails in the 2021-12-03 archive");
    assert_no_failures(&round_trip(&env, &inputs).await, inputs.len());
    assert_eq!(env.killmail_count().await, 4158);
    env.cleanup().await;
}

/// The migration that put each killmail's items in one row (20261206000100) carries a store's
/// items over exactly: a day stored with its items one row each in the old `items` table, as
/// the store wrote them before (pre-order index, the container's index), comes back whole after
/// it, nested containers and killmails without items included.
#[tokio::test]
async fn items_stored_one_row_each_come_back_whole_after_their_migration() {
    const VERSION: i64 = 20_261_206_000_100;
    let env = TestEnv::new().await;
    let inputs = archive_values(&fixtures::archive("2021-12-03"));
    let killmails: Vec<Killmail> = inputs
        .iter()
        .map(|(_, v)| received(v, None).killmail)
        .collect();
    let with_items = killmails
        .iter()
        .filter(|k| !k.victim.items.is_empty())
        .count();
    assert!(with_items < killmails.len(), "killmails without items too");
    assert!(
        killmails.iter().any(|k| k
            .items_preorder()
            .iter()
            .any(|(parent, _)| parent.is_some())),
        "containers with contents"
    );
    for batch in inputs.chunks(500) {
        let batch: Vec<Received> = batch.iter().map(|(_, v)| received(v, None)).collect();
        ingest::store(&env.pool, &batch)
            .await
            .expect("storing a batch");
    }

    // Back to the store as it was before the migration: the table of its first migration (less
    // the foreign key a later one dropped), the rows as the store wrote them, in reverse, so
    // that the migration has to order them.
    sqlx::raw_sql(
        "DROP TABLE killmail_items;
         CREATE TABLE items (
             killmail_id        int8 NOT NULL,
             item_index         int4 NOT NULL,
             parent_index       int4,
             item_type_id       int8 NOT NULL,
             flag               int4 NOT NULL,
             singleton          int4 NOT NULL,
             quantity_destroyed int8,
             quantity_dropped   int8,
             PRIMARY KEY (killmail_id, item_index)
         );",
    )
    .execute(&env.pool)
    .await
    .expect("the old items table");
    let mut rows = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for killmail in killmails.iter().rev() {
        for (index, (parent, item)) in killmail.items_preorder().into_iter().enumerate().rev() {
            let to_i32 = |i: usize| i32::try_from(i).expect("an item index");
            rows.0.push(killmail.killmail_id.0);
            rows.1.push(to_i32(index));
            rows.2.push(parent.map(to_i32));
            rows.3.push(item.item_type_id);
            rows.4.push(item.flag);
            rows.5.push(item.singleton);
            rows.6.push(item.quantity_destroyed);
            rows.7.push(item.quantity_dropped);
        }
    }
    let item_rows = rows.0.len();
    sqlx::query(
        "INSERT INTO items
         SELECT * FROM UNNEST($1::int8[], $2::int4[], $3::int4[], $4::int8[], $5::int4[],
                              $6::int4[], $7::int8[], $8::int8[])",
    )
    .bind(rows.0)
    .bind(rows.1)
    .bind(rows.2)
    .bind(rows.3)
    .bind(rows.4)
    .bind(rows.5)
    .bind(rows.6)
    .bind(rows.7)
    .execute(&env.pool)
    .await
    .expect("the old item rows");
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(VERSION)
        .execute(&env.pool)
        .await
        .expect("forgetting the migration");

    killreport::db::MIGRATOR
        .run(&env.pool)
        .await
        .expect("migrating");
    let (items_table, rows_now, items_now): (Option<String>, i64, Option<i64>) = sqlx::query_as(
        "SELECT to_regclass('items')::text, count(*), sum(cardinality(item_type_id))::int8
         FROM killmail_items",
    )
    .fetch_one(&env.pool)
    .await
    .expect("the new table");
    assert_eq!(items_table, None, "the old table is gone");
    assert_eq!(
        rows_now,
        i64::try_from(with_items).expect("a count"),
        "one row a killmail with items"
    );
    assert_eq!(
        items_now,
        Some(i64::try_from(item_rows).expect("a count")),
        "every item"
    );
    assert_no_failures(&comes_back(&env, &inputs).await, inputs.len());
    env.cleanup().await;
}

#[test]
fn the_comparison_sees_numbers_as_numbers_and_names_the_first_difference() {
    let a = serde_json::json!({"x": 5, "items": [{"flag": 1}, {"flag": 2}]});
    let b = serde_json::json!({"items": [{"flag": 1.0}, {"flag": 2}], "x": 5.0});
    assert_eq!(
        first_difference(&normalise(a.clone()), &normalise(b), ""),
        None
    );
    let c = serde_json::json!({"x": 5, "items": [{"flag": 1}, {"flag": 3}]});
    assert_eq!(
        first_difference(&normalise(a.clone()), &normalise(c), "").as_deref(),
        Some("items[1].flag: expected 2.0, got 3.0")
    );
    let d = serde_json::json!({"x": 5, "items": [{"flag": 1}]});
    assert_eq!(
        first_difference(&a, &d, "").as_deref(),
        Some("items: expected 2 elements, got 1")
    );
}

fn fixture_batch(n: usize) -> Vec<Received> {
    fixtures::killmail_values()
        .iter()
        .take(n)
        .map(|v| received(v, None))
        .collect()
}

#[tokio::test]
async fn the_same_batch_stored_twice_is_new_only_the_first_time() {
    let env = TestEnv::new().await;
    let batch = fixture_batch(50);
    let first = ingest::store(&env.pool, &batch).await.expect("storing");
    assert_eq!(first.len(), 50);
    let second = ingest::store(&env.pool, &batch)
        .await
        .expect("storing again");
    assert_eq!(
        second,
        Vec::<Stored>::new(),
        "nothing is new the second time"
    );
    assert_eq!(env.killmail_count().await, 50);

    let mut db = env.pool.acquire().await.expect("a connection");
    let ids: Vec<KillmailId> = first.iter().map(|s| s.killmail_id).collect();
    let seqs: Vec<_> = load(&mut db, &ids)
        .await
        .expect("loading")
        .iter()
        .map(|s| s.seq)
        .collect();
    let first_seqs: Vec<_> = first.iter().map(|s| s.seq).collect();
    assert_eq!(
        seqs, first_seqs,
        "storing again leaves the sequence numbers alone"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_zkb_block_arriving_later_is_added_to_a_killmail_stored_without_one() {
    let env = TestEnv::new().await;
    let without = fixture_batch(1).remove(0);
    let id = without.killmail.killmail_id;
    let zkb = Zkb(serde_json::json!({
        "hash": without.hash, "totalValue": 1_234_567.89, "npc": false, "solo": true,
        "awox": false, "points": 10, "labels": ["pvp", "solo"], "locationID": 40_000_001
    }));
    let stored = ingest::store(&env.pool, std::slice::from_ref(&without))
        .await
        .expect("storing without zkb");
    assert_eq!(stored.len(), 1);

    let with = Received {
        zkb: Some(zkb.clone()),
        ..without.clone()
    };
    let again = ingest::store(&env.pool, std::slice::from_ref(&with))
        .await
        .expect("storing with zkb");
    assert!(again.is_empty(), "the killmail is not new");

    let other = Received {
        zkb: Some(Zkb(
            serde_json::json!({"hash": without.hash, "totalValue": 1.0}),
        )),
        ..without.clone()
    };
    ingest::store(&env.pool, std::slice::from_ref(&other))
        .await
        .expect("storing with another zkb");

    let mut db = env.pool.acquire().await.expect("a connection");
    let loaded = load(&mut db, &[id]).await.expect("loading").remove(0);
    assert_eq!(
        loaded.zkb,
        Some(zkb),
        "the first zkb block is added and kept"
    );
    assert_eq!(loaded.seq, stored[0].seq);
    assert_eq!(loaded.killmail, without.killmail);
    env.cleanup().await;
}

#[tokio::test]
async fn sequence_numbers_follow_the_order_of_storing() {
    let env = TestEnv::new().await;
    let all = fixture_batch(90);
    // Not in id order, so that following ids would not pass for following the batch.
    let mut batches: Vec<Vec<Received>> = all.chunks(30).map(<[Received]>::to_vec).collect();
    batches[1].reverse();
    let mut seqs = Vec::new();
    for batch in &batches {
        let stored = ingest::store(&env.pool, batch).await.expect("storing");
        let ids: Vec<KillmailId> = stored.iter().map(|s| s.killmail_id).collect();
        let expected: Vec<KillmailId> = batch.iter().map(|r| r.killmail.killmail_id).collect();
        assert_eq!(ids, expected, "within a batch, in the batch's order");
        seqs.extend(stored.iter().map(|s| s.seq));
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase in the order of storing: {seqs:?}"
    );
    let latest = killreport::db::killmails::latest_seq(&env.pool)
        .await
        .expect("latest seq");
    assert_eq!(Some(&latest), seqs.last());
    env.cleanup().await;
}
