//! Gap repair against a fake zKillboard history and a fake ESI: `queue repair` queues exactly
//! the killmails a day's history lists and the store lacks, worker-killmails completes them
//! from ESI, and a day that is missing or malformed is reported while the others go on; the
//! R2Z2 poller, back after an outage longer than R2Z2 keeps its files, resynchronises to the
//! present, records the gap and repairs the hours it lost by itself.

use std::collections::BTreeSet;

use chrono::{Duration as Days, NaiveDate, Utc};
use killreport::killmail::{Killmail, Received, Source};
use serde_json::Value;

use crate::import::stored_ids;
use crate::support::fakes::esi::FakeEsi;
use crate::support::fakes::r2z2::{self, FakeR2z2};
use crate::support::fakes::zkb::FakeZkb;
use crate::support::{PATIENCE, TestEnv, fixtures, wait_until};

fn day(text: &str) -> NaiveDate {
    text.parse().expect("a date")
}

fn id_of(esi: &Value) -> i64 {
    esi["killmail_id"].as_i64().expect("killmail_id")
}

/// `killmails` as an import stores them.
fn received(killmails: &[(Value, String)]) -> Vec<Received> {
    killmails
        .iter()
        .map(|(esi, hash)| Received {
            killmail: serde_json::from_value::<Killmail>(esi.clone()).expect("a killmail"),
            hash: hash.clone(),
            zkb: None,
            source: Source::Import,
        })
        .collect()
}

fn listing(killmails: &[(Value, String)]) -> Vec<(i64, String)> {
    killmails
        .iter()
        .map(|(esi, hash)| (id_of(esi), hash.clone()))
        .collect()
}

/// The killmail paths fake ESI was asked for, sorted.
fn esi_fetches(esi: &FakeEsi) -> Vec<String> {
    let mut fetched: Vec<String> = esi
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/killmails/"))
        .collect();
    fetched.sort();
    fetched
}

fn esi_paths(killmails: &[(Value, String)]) -> Vec<String> {
    let mut paths: Vec<String> = killmails
        .iter()
        .map(|(esi, hash)| format!("/killmails/{}/{hash}/", id_of(esi)))
        .collect();
    paths.sort();
    paths
}

async fn repair(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let mut all = vec!["repair"];
    all.extend(args);
    let output = env.run("queue", &all).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.success(), format!("{stdout}\n{stderr}"))
}

fn line<'a>(output: &'a str, start: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line for {start} in\n{output}"))
}

#[tokio::test]
async fn repair_queues_exactly_what_the_store_lacks_and_the_worker_completes_it_from_esi() {
    let mut env = TestEnv::new().await;
    let killmails = fixtures::esi_killmails(12);
    let (stored, lacking) = killmails.split_at(5);
    env.store_and_announce(&received(stored)).await;
    let esi = FakeEsi::default();
    for (body, hash) in &killmails {
        esi.add_killmail(body.clone(), hash);
    }
    let _esi = esi.serve_for(&mut env).await;
    let zkb = FakeZkb::default();
    // The first day lists the five stored and three lacking; the second the other four.
    let mut first = listing(stored);
    first.extend(listing(&lacking[..3]));
    zkb.add_history(day("2021-12-01"), &first);
    zkb.add_history(day("2021-12-02"), &listing(&lacking[3..]));
    zkb.add_body(day("2021-12-03"), b"<html>502 Bad Gateway</html>".to_vec());
    // 2021-12-04 has no history at all.
    let _zkb = zkb.serve_for(&mut env).await;

    let (ok, output) = repair(&env, &["--from", "2021-12-01", "--to", "2021-12-04"]).await;
    assert!(!ok, "days not compared make the run fail:\n{output}");
    assert!(
        line(&output, "2021-12-01")
            .contains("history lists 8 killmails: 5 stored, 3 missing and queued for ESI"),
        "{output}"
    );
    assert!(
        line(&output, "2021-12-02").contains("history lists 4 killmails: 0 stored, 4 missing"),
        "{output}"
    );
    let malformed = line(&output, "2021-12-03");
    assert!(
        malformed.contains("failed: not zKillboard's history") && malformed.contains("<html>"),
        "{malformed}"
    );
    assert!(
        line(&output, "2021-12-04").contains("/api/history/20211204.json answered 404"),
        "{output}"
    );
    assert!(output.contains("queued for ESI:   7"), "{output}");
    assert!(output.contains("2 of 4 days were not compared"), "{output}");

    // worker-killmails fetches exactly the seven from ESI, and the store holds all twelve.
    let _worker = env.spawn("worker-killmails", &[]);
    env.wait_for_killmails(12).await;
    let all: BTreeSet<i64> = killmails.iter().map(|(esi, _)| id_of(esi)).collect();
    assert_eq!(stored_ids(&env).await, all);
    wait_until("ESI asked for the seven", PATIENCE, || async {
        esi_fetches(&esi).len() >= lacking.len()
    })
    .await;
    assert_eq!(esi_fetches(&esi), esi_paths(lacking));

    // Nothing is lacking any more.
    let (ok, output) = repair(&env, &["--from", "2021-12-01", "--to", "2021-12-02"]).await;
    assert!(ok, "{output}");
    assert!(output.contains("queued for ESI:   0"), "{output}");
    env.cleanup().await;
}

/// A realistic R2Z2 sequence number.
const START: i64 = 96_599_404;

#[tokio::test]
async fn the_r2z2_poller_back_after_a_long_outage_resyncs_and_repairs_the_lost_hours() {
    let mut env = TestEnv::new().await;
    let log_dir = std::env::temp_dir().join(format!("killreport-resync-{}", env.id));
    std::fs::create_dir_all(&log_dir).expect("a log directory");
    env.log_dir = Some(log_dir.clone());
    env.vars.insert("RUST_LOG".into(), "warn".into());
    let killmails = fixtures::esi_killmails(10);
    let (live, rest) = killmails.split_at(3);
    let (lost, held) = rest.split_at(6);

    // R2Z2 holds only the newest files: the cursor's next ones expired long ago.
    let newest = START + 500;
    let fake = FakeR2z2::default();
    for (sequence, (esi, hash)) in (newest..).zip(live) {
        fake.add_object(sequence, &r2z2::object(sequence, esi, hash));
    }
    fake.set_pointer(newest);
    fake.reveal(newest + 2);
    let _r2z2 = fake.serve_for(&mut env).await;
    killreport::db::cursors::save(&env.pool, "r2z2", START - 1)
        .await
        .expect("saving a cursor");
    sqlx::query("UPDATE feed_cursors SET updated_at = now() - interval '2 days'")
        .execute(&env.pool)
        .await
        .expect("aging the cursor");
    // One killmail of the lost hours made it into the store before the outage.
    env.store_and_announce(&received(held)).await;

    // zKillboard's history of the lost days lists the lost killmails and the one held.
    let esi = FakeEsi::default();
    for (body, hash) in lost {
        esi.add_killmail(body.clone(), hash);
    }
    let _esi = esi.serve_for(&mut env).await;
    let zkb = FakeZkb::default();
    let today = Utc::now().date_naive();
    let mut listed = listing(&lost[..4]);
    listed.extend(listing(held));
    zkb.add_history(today - Days::days(2), &listed);
    zkb.add_history(today - Days::days(1), &listing(&lost[4..]));
    zkb.add_history(today, &[]);
    let _zkb = zkb.serve_for(&mut env).await;

    let _killmails = env.spawn("worker-killmails", &[]);
    let _feed = env.spawn("worker-redisq", &[]);
    env.wait_for_killmails(10).await;
    let all: BTreeSet<i64> = killmails.iter().map(|(esi, _)| id_of(esi)).collect();
    assert_eq!(
        stored_ids(&env).await,
        all,
        "live, lost and held, each once"
    );
    assert_eq!(
        esi_fetches(&esi),
        esi_paths(lost),
        "only the lost ones from ESI"
    );

    // The gap is recorded, and marked repaired.
    let gap = || async {
        sqlx::query_as::<_, (i64, i64, Option<i32>, bool)>(
            "SELECT first_sequence, last_sequence, queued, repaired_at IS NOT NULL
             FROM feed_gaps WHERE feed = 'r2z2'",
        )
        .fetch_all(&env.pool)
        .await
        .expect("reading the gaps")
    };
    wait_until("the gap marked repaired", PATIENCE, || async {
        gap().await.first().is_some_and(|g| g.3)
    })
    .await;
    assert_eq!(gap().await, vec![(START, newest - 1, Some(6), true)]);

    // It jumped: the expired files were not asked for one by one.
    let asked: BTreeSet<i64> = fake.requests().iter().filter_map(|r| r.sequence).collect();
    assert!(asked.contains(&START), "{asked:?}");
    assert!(
        !asked.iter().any(|s| (START + 1..newest).contains(s)),
        "asked for expired files: {asked:?}"
    );
    let mut days = zkb.state().requests.clone();
    days.sort();
    days.dedup();
    let expected: Vec<String> = (0..=2)
        .rev()
        .map(|n| (today - Days::days(n)).format("%Y%m%d").to_string())
        .collect();
    assert_eq!(days, expected);
    let log = std::fs::read_to_string(log_dir.join("worker-redisq.log")).expect("its log");
    assert!(
        log.contains("R2Z2 no longer holds the files after the cursor"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&log_dir);
    env.cleanup().await;
}
