//! Statistics: every aggregate, per day and per hour, equals a recomputation from the stored
//! killmails (done here in Rust, apart from the SQL that keeps them) after the three EVE Ref
//! archives, a live stream through worker-killmails (a killmail stored twice, one held without
//! zkb gaining it, one late for an old day), revaluations and `queue stats rebuild`, and through
//! two history imports at once of overlapping files; the aggregates answer as the rows do, over
//! whole and partial days and hours, through the library and through GraphQL, with ties at the
//! top lists' pruning threshold; the GraphQL answers; the
//! `statistics` event.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, DurationRound, NaiveTime, TimeDelta, TimeZone, Utc};
use indicatif::ProgressBar;
use killreport::filter::{Filter, SecurityClass};
use killreport::import::{Announce, Importer};
use killreport::killmail::{KillmailId, Received, Source as Origin, Zkb};
use killreport::statics::Statics;
use killreport::stats::{self, EntityKind, Plan, Source, TopKind};
use serde_json::{Value, json};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::graphql::{data, run, schema};
use crate::support::{TestEnv, fixtures, wait_until};

const PATIENCE: Duration = Duration::from_secs(60);

async fn import(env: &TestEnv, days: &[&str]) -> usize {
    let importer = Importer {
        pool: env.pool.clone(),
        announce: Announce::Never,
        publisher: None,
        batch_size: 1000,
        max_reasons: 5,
    };
    let paths: Vec<_> = days.iter().map(|day| fixtures::archive(day)).collect();
    importer
        .import(&paths, &ProgressBar::hidden(), &CancellationToken::new())
        .await
        .expect("import")
        .stored
}

/// (kind, id, period) → [kills, losses, kills_of_own, solo_kills, points] and [isk destroyed,
/// lost].
type EntityDays = BTreeMap<(i16, i64, DateTime<Utc>), ([i64; 5], [f64; 2])>;
/// (dimension, key, period) → (killmails, isk).
type PlaceDays = BTreeMap<(i16, i64, DateTime<Utc>), (i64, f64)>;

/// The periods the aggregates are kept by (the months only once rolled up).
#[derive(Copy, Clone, Debug)]
enum Grain {
    Month,
    Day,
    Hour,
}

impl Grain {
    const ALL: [Grain; 2] = [Grain::Day, Grain::Hour];

    fn period(self, time: DateTime<Utc>) -> DateTime<Utc> {
        let length = match self {
            Grain::Month => {
                let first = time.date_naive().with_day(1).expect("a month");
                return Utc.from_utc_datetime(&first.and_time(NaiveTime::MIN));
            }
            Grain::Day => TimeDelta::days(1),
            Grain::Hour => TimeDelta::hours(1),
        };
        time.duration_trunc(length).expect("a period")
    }

    /// (entity table, place table, the period's start as a timestamptz).
    fn tables(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Grain::Month => (
                "stats_entity_months",
                "stats_months",
                "month::timestamp AT TIME ZONE 'UTC'",
            ),
            Grain::Day => (
                "stats_entity_days",
                "stats_days",
                "day::timestamp AT TIME ZONE 'UTC'",
            ),
            Grain::Hour => ("stats_entity_hours", "stats_hours", "hour"),
        }
    }
}

/// Both aggregates of a grain recomputed from the killmail and attacker rows.
async fn recomputed(env: &TestEnv, grain: Grain) -> (EntityDays, PlaceDays) {
    let killmails = sqlx::query(
        "SELECT k.killmail_id, k.killmail_time, k.victim_character_id, k.victim_corporation_id,
                k.victim_alliance_id, k.victim_ship_type_id, t.group_id, k.solar_system_id,
                s.constellation_id, s.region_id, k.total_value, k.solo, k.points
         FROM killmails k
         LEFT JOIN item_types t ON t.type_id = k.victim_ship_type_id
         LEFT JOIN solar_systems s ON s.solar_system_id = k.solar_system_id",
    )
    .fetch_all(&env.pool)
    .await
    .expect("killmails");
    let attackers =
        sqlx::query("SELECT killmail_id, character_id, corporation_id, alliance_id FROM attackers")
            .fetch_all(&env.pool)
            .await
            .expect("attackers");
    let mut killers: HashMap<i64, [HashSet<i64>; 3]> = HashMap::new();
    for row in attackers {
        let sets = killers.entry(row.get("killmail_id")).or_default();
        for (index, column) in ["character_id", "corporation_id", "alliance_id"]
            .into_iter()
            .enumerate()
        {
            if let Some(id) = row.get::<Option<i64>, _>(column) {
                sets[index].insert(id);
            }
        }
    }
    let mut entities = EntityDays::new();
    let mut places = PlaceDays::new();
    for row in killmails {
        let id: i64 = row.get("killmail_id");
        let day = grain.period(row.get("killmail_time"));
        let isk = row.get::<Option<f64>, _>("total_value").unwrap_or(0.0);
        let solo = row.get::<Option<bool>, _>("solo").unwrap_or(false);
        let points = i64::from(row.get::<Option<i32>, _>("points").unwrap_or(0));
        let victims: [Option<i64>; 3] = [
            row.get("victim_character_id"),
            row.get("victim_corporation_id"),
            row.get("victim_alliance_id"),
        ];
        let keys: [(i16, Option<i64>); 6] = [
            (0, Some(0)),
            (1, row.get("victim_ship_type_id")),
            (2, row.get("group_id")),
            (3, row.get("solar_system_id")),
            (4, row.get("constellation_id")),
            (5, row.get("region_id")),
        ];
        for (dimension, key) in keys {
            if let Some(key) = key {
                let entry = places.entry((dimension, key, day)).or_default();
                entry.0 += 1;
                entry.1 += isk;
            }
        }
        for (index, victim) in victims.iter().enumerate() {
            if let Some(victim) = victim {
                let kind = i16::try_from(index + 1).expect("kind");
                let entry = entities.entry((kind, *victim, day)).or_default();
                entry.0[1] += 1;
                entry.1[1] += isk;
            }
        }
        for (index, set) in killers.remove(&id).unwrap_or_default().iter().enumerate() {
            let kind = i16::try_from(index + 1).expect("kind");
            for killer in set {
                let entry = entities.entry((kind, *killer, day)).or_default();
                entry.0[0] += 1;
                entry.0[2] += i64::from(victims[index] == Some(*killer));
                entry.0[3] += i64::from(solo);
                entry.0[4] += points;
                entry.1[0] += isk;
            }
        }
    }
    (entities, places)
}

async fn aggregates(env: &TestEnv, grain: Grain) -> (EntityDays, PlaceDays) {
    let (entity_table, place_table, period) = grain.tables();
    let entities = sqlx::query(&format!(
        "SELECT kind, entity_id, {period} AS period, kills, losses, kills_of_own, solo_kills,
                points, isk_destroyed, isk_lost
         FROM {entity_table}"
    ))
    .fetch_all(&env.pool)
    .await
    .expect(entity_table)
    .into_iter()
    .map(|r| {
        (
            (r.get("kind"), r.get("entity_id"), r.get("period")),
            (
                [
                    i64::from(r.get::<i32, _>("kills")),
                    i64::from(r.get::<i32, _>("losses")),
                    i64::from(r.get::<i32, _>("kills_of_own")),
                    i64::from(r.get::<i32, _>("solo_kills")),
                    r.get("points"),
                ],
                [r.get("isk_destroyed"), r.get("isk_lost")],
            ),
        )
    })
    .collect();
    let places = sqlx::query(&format!(
        "SELECT dimension, key, {period} AS period, killmails, isk FROM {place_table}"
    ))
    .fetch_all(&env.pool)
    .await
    .expect(place_table)
    .into_iter()
    .map(|r| {
        (
            (r.get("dimension"), r.get("key"), r.get("period")),
            (i64::from(r.get::<i32, _>("killmails")), r.get("isk")),
        )
    })
    .collect();
    (entities, places)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// Fails with the first difference between the aggregates (per day and per hour) and their
/// recomputation. A row of the aggregates whose figures all came back to 0 (a value revalued to
/// nothing) counts as absent.
async fn assert_aggregates_match(env: &TestEnv, when: &str) {
    for grain in Grain::ALL {
        assert_grain_matches(env, grain, &format!("{when}, per {grain:?}")).await;
    }
}

async fn assert_grain_matches(env: &TestEnv, grain: Grain, when: &str) {
    let (want_entities, want_places) = recomputed(env, grain).await;
    let (got_entities, got_places) = aggregates(env, grain).await;
    assert!(!want_entities.is_empty(), "{when}: nothing stored");
    for (key, (counts, isk)) in &want_entities {
        let got = got_entities.get(key);
        assert!(
            got.is_some_and(|(c, i)| c == counts && close(i[0], isk[0]) && close(i[1], isk[1])),
            "{when}: entity {key:?}: recomputed {counts:?} {isk:?}, aggregate {got:?}"
        );
    }
    for (key, got) in &got_entities {
        assert!(
            want_entities.contains_key(key) || (got.0 == [0; 5] && got.1 == [0.0; 2]),
            "{when}: entity {key:?} in the aggregate ({got:?}) but in no killmail"
        );
    }
    for (key, (count, isk)) in &want_places {
        let got = got_places.get(key);
        assert!(
            got.is_some_and(|(c, i)| c == count && close(*i, *isk)),
            "{when}: place {key:?}: recomputed {count} {isk}, aggregate {got:?}"
        );
    }
    assert_eq!(
        got_places.len(),
        want_places.len(),
        "{when}: places in the aggregate but in no killmail"
    );
}

/// A fixture killmail as a live job would bring it: with a zkb block.
fn with_zkb(id: i64, total_value: f64, solo: bool, points: i64) -> killreport::queue::IngestJob {
    let (killmail, hash) = fixtures::killmails()
        .into_iter()
        .find(|(k, _)| k.killmail_id.0 == id)
        .expect("a fixture with that id");
    let zkb = Zkb(json!({
        "hash": hash, "totalValue": total_value, "npc": false, "solo": solo, "awox": false,
        "points": points, "labels": ["pvp"], "locationID": 40_000_001
    }));
    fixtures::job_with(killmail, hash, Some(zkb), true)
}

#[tokio::test]
async fn every_aggregate_equals_a_recomputation_through_imports_a_live_stream_revaluations_and_a_rebuild()
 {
    let env = TestEnv::new().await;
    let archives = import(&env, &["2021-12-01", "2021-12-02", "2021-12-03"]).await;
    assert_eq!(archives, 10_671 + 10_938 + 4_158);
    assert_aggregates_match(&env, "after the three archives").await;

    // The live stream: 97089202 is held (from the 2021-12-03 archive) without zkb and gains
    // one; 97001694 is late, for 2021-11-28; both are sent twice.
    let publisher = env.publisher().await;
    let _worker = env.spawn("worker-killmails", &[]);
    let held = with_zkb(97_089_202, 250_000_000.0, true, 12);
    let late = with_zkb(97_001_694, 75_500_000.5, false, 4);
    for job in [&held, &late, &held, &late] {
        publisher.publish(job).await.expect("publish");
    }
    env.wait_for_killmails(i64::try_from(archives).expect("count") + 1)
        .await;
    wait_until("the held killmail to gain its zkb", PATIENCE, || async {
        sqlx::query_scalar::<_, Option<f64>>(
            "SELECT total_value FROM killmails WHERE killmail_id = 97089202",
        )
        .fetch_one(&env.pool)
        .await
        .expect("value")
            == Some(250_000_000.0)
    })
    .await;
    // Both jobs' duplicates are behind them in the queue: a last job to wait for.
    let last = with_zkb(97_002_000, 1.0, false, 1);
    publisher.publish(&last).await.expect("publish");
    env.wait_for_killmails(i64::try_from(archives).expect("count") + 2)
        .await;
    assert_aggregates_match(&env, "after the live stream").await;

    // Revaluations: a day's estimates arrive, then change; zKillboard's block changes too.
    sqlx::query(
        "UPDATE killmails SET estimate = jsonb_build_object(
             'totalValue', victim_damage_taken * 1000.5, 'solo', attacker_count = 1,
             'points', attacker_count % 7)
         WHERE killmail_time < '2021-12-02'",
    )
    .execute(&env.pool)
    .await
    .expect("revalue");
    assert_aggregates_match(&env, "after estimates arrived").await;
    sqlx::query(
        "UPDATE killmails SET estimate = estimate || jsonb_build_object(
             'totalValue', (estimate->>'totalValue')::float8 / 3, 'solo', false)
         WHERE killmail_id % 3 = 0 AND estimate IS NOT NULL",
    )
    .execute(&env.pool)
    .await
    .expect("revalue again");
    sqlx::query(
        "UPDATE killmails SET zkb = zkb || '{\"totalValue\": 1e9, \"points\": 99}'
         WHERE killmail_id = 97089202",
    )
    .execute(&env.pool)
    .await
    .expect("zkb changes");
    assert_aggregates_match(&env, "after revaluations").await;
    // Every write went to a month that had ended: each is marked, none rolled up yet.
    assert_eq!(
        months(&env, "SELECT DISTINCT month FROM stats_months_stale").await,
        ["2021-11-01", "2021-12-01"]
    );
    assert!(
        months(&env, "SELECT month FROM stats_months_ready")
            .await
            .is_empty()
    );
    // Rolled up, then a month's figure gone wrong by hand: the rebuild rolls the months up
    // again from the rebuilt days.
    let mut db = env.pool.acquire().await.expect("connection");
    assert_eq!(
        stats::refresh_months(&mut db, usize::MAX)
            .await
            .expect("roll-up"),
        2
    );
    drop(db);
    sqlx::query("UPDATE stats_entity_months SET kills = kills + 1000 WHERE month = '2021-12-01'")
        .execute(&env.pool)
        .await
        .expect("spoil a month");

    let output = env.run("queue", &["stats", "rebuild"]).await;
    assert!(
        output.status.success(),
        "queue stats rebuild: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("(2 months rolled up)"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_aggregates_match(&env, "after queue stats rebuild").await;
    assert_grain_matches(&env, Grain::Month, "after queue stats rebuild, per month").await;
    assert!(
        months(&env, "SELECT month FROM stats_months_stale")
            .await
            .is_empty()
    );
    env.cleanup().await;
}

/// The months (`YYYY-MM-DD`, ascending) a query returns.
async fn months(env: &TestEnv, query: &str) -> Vec<String> {
    let mut months: Vec<String> = sqlx::query_scalar::<_, chrono::NaiveDate>(query)
        .fetch_all(&env.pool)
        .await
        .expect(query)
        .into_iter()
        .map(|month| month.to_string())
        .collect();
    months.sort();
    months
}

/// Two history imports at once, of files that overlap by a day, through different transaction
/// sizes: every killmail stored once with all its attackers, the overlap counted as already
/// present by one or the other, and the aggregates exact.
#[tokio::test]
async fn two_history_imports_at_once_lose_nothing_double_nothing_and_keep_the_aggregates_exact() {
    let env = TestEnv::new().await;
    let importer = |batch_size| Importer {
        pool: env.pool.clone(),
        announce: Announce::Never,
        publisher: None,
        batch_size,
        max_reasons: 5,
    };
    let (first, second) = (importer(5000), importer(700));
    let first_days = [
        fixtures::archive("2021-12-01"),
        fixtures::archive("2021-12-02"),
    ];
    let second_days = [
        fixtures::archive("2021-12-02"),
        fixtures::archive("2021-12-03"),
    ];
    let (progress, shutdown) = (ProgressBar::hidden(), CancellationToken::new());
    let (a, b) = tokio::join!(
        first.import(&first_days, &progress, &shutdown),
        second.import(&second_days, &progress, &shutdown)
    );
    let (a, b) = (a.expect("the first import"), b.expect("the second import"));
    assert_eq!(a.stored + b.stored, 10_671 + 10_938 + 4_158, "{a:?} {b:?}");
    assert_eq!(a.already_present + b.already_present, 10_938, "{a:?} {b:?}");
    let (killmails, attackers, expected_attackers): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), (SELECT count(*) FROM attackers), sum(attacker_count)::int8
         FROM killmails",
    )
    .fetch_one(&env.pool)
    .await
    .expect("counts");
    assert_eq!(killmails, 10_671 + 10_938 + 4_158);
    assert_eq!(attackers, expected_attackers);
    assert_aggregates_match(&env, "after two imports at once").await;
    env.cleanup().await;
}

fn at(day: &str, time: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("{day}T{time}Z"))
        .expect("time")
        .with_timezone(&Utc)
}

/// One end of a range; `None` is open.
type Bound = Option<DateTime<Utc>>;

/// Ranges that are whole days, whole and partial hours at either end, within one day, within
/// one hour, and open.
fn ranges() -> Vec<(Bound, Bound)> {
    vec![
        (None, None),
        (
            Some(at("2021-12-01", "13:17:00")),
            Some(at("2021-12-03", "06:41:00")),
        ),
        (
            Some(at("2021-12-02", "10:20:00")),
            Some(at("2021-12-02", "14:50:00")),
        ),
        (
            Some(at("2021-12-02", "10:05:00")),
            Some(at("2021-12-02", "10:55:00")),
        ),
        (
            Some(at("2021-12-01", "00:00:00")),
            Some(at("2021-12-02", "00:00:00")),
        ),
        (
            Some(at("2021-12-01", "07:30:00")),
            Some(at("2021-12-03", "13:15:00")),
        ),
        (
            Some(at("2021-12-02", "10:00:00")),
            Some(at("2021-12-02", "11:00:00")),
        ),
        (Some(at("2021-12-02", "18:00:00")), None),
        (None, Some(at("2021-12-02", "06:00:00"))),
    ]
}

/// The three archives, valued (so that ISK orders ties and sums).
async fn import_valued(env: &TestEnv) {
    import(env, &["2021-12-01", "2021-12-02", "2021-12-03"]).await;
    sqlx::query(
        "UPDATE killmails SET estimate = jsonb_build_object(
             'totalValue', victim_damage_taken * 1000.25, 'solo', attacker_count = 1,
             'points', attacker_count % 5)",
    )
    .execute(&env.pool)
    .await
    .expect("values");
}

/// The character, corporation and alliance with the most attacker rows.
async fn busiest_entities(env: &TestEnv) -> Vec<(EntityKind, i64)> {
    let mut entities = Vec::new();
    for (kind, column) in [
        (EntityKind::Character, "character_id"),
        (EntityKind::Corporation, "corporation_id"),
        (EntityKind::Alliance, "alliance_id"),
    ] {
        entities.push((kind, busiest(env, column).await));
    }
    entities
}

#[tokio::test]
async fn the_aggregates_answer_as_the_killmail_rows_do() {
    let env = TestEnv::new().await;
    import_valued(&env).await;
    let mut db = env.pool.acquire().await.expect("connection");
    let busiest = busiest_entities(&env).await;
    let filters = [
        Filter::default(),
        Filter {
            regions: [10_000_002].into_iter().collect(),
            ..Filter::default()
        },
        Filter {
            corporations: [busiest[1].1].into_iter().collect(),
            ..Filter::default()
        },
        Filter {
            min_value: Some(50_000_000.0),
            ..Filter::default()
        },
    ];
    for (from, to) in ranges() {
        assert_top_and_stats_as_rows(&mut db, from, to, &busiest).await;
        let fast = Plan::new(from, to, Source::Aggregates);
        let slow = Plan::new(from, to, Source::Rows);
        for filter in &filters {
            let a = stats::date_counts(&mut db, &fast, filter)
                .await
                .expect("counts");
            let b = stats::date_counts(&mut db, &slow, filter)
                .await
                .expect("counts");
            assert_eq!(a, b, "date counts {filter:?} {from:?}..{to:?}");
        }
    }
    drop(db);
    env.cleanup().await;
}

/// Every top list, and the figures of each of `entities`, from the aggregates as from the rows.
async fn assert_top_and_stats_as_rows(
    db: &mut sqlx::PgConnection,
    from: Bound,
    to: Bound,
    entities: &[(EntityKind, i64)],
) {
    let fast = Plan::new(from, to, Source::Aggregates);
    let slow = Plan::new(from, to, Source::Rows);
    for kind in TopKind::ALL {
        let a = stats::top(db, kind, &fast, &Filter::default(), 10)
            .await
            .expect("top");
        let b = stats::top(db, kind, &slow, &Filter::default(), 10)
            .await
            .expect("top");
        assert_eq!(
            ids_and_kills(&a),
            ids_and_kills(&b),
            "top {kind:?} {from:?}..{to:?}"
        );
        assert!(a.iter().zip(&b).all(|(a, b)| close(a.isk, b.isk)));
    }
    for (kind, id) in entities {
        let a = stats::entity_stats(db, *kind, *id, &fast)
            .await
            .expect("stats");
        let b = stats::entity_stats(db, *kind, *id, &slow)
            .await
            .expect("stats");
        assert_eq!(
            (a.kills, a.losses, a.solo_kills, a.points),
            (b.kills, b.losses, b.solo_kills, b.points),
            "stats {kind:?} {id} {from:?}..{to:?}"
        );
        assert!(close(a.isk_destroyed, b.isk_destroyed) && close(a.isk_lost, b.isk_lost));
    }
}

/// The three archives again a month and two months earlier (ids and times shifted), through
/// the same triggers as any write.
async fn copy_back(env: &TestEnv, days: i64, id_offset: i64) {
    let mut tx = env.pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO killmails (killmail_id, hash, killmail_time, solar_system_id, region_id,
             moon_id, war_id, victim_character_id, victim_corporation_id, victim_alliance_id,
             victim_faction_id, victim_ship_type_id, victim_damage_taken, victim_position_x,
             victim_position_y, victim_position_z, attacker_count, zkb, estimate, source)
         SELECT killmail_id + $1, hash, killmail_time - make_interval(days => $2::int4),
             solar_system_id, region_id, moon_id, war_id, victim_character_id,
             victim_corporation_id, victim_alliance_id, victim_faction_id, victim_ship_type_id,
             victim_damage_taken, victim_position_x, victim_position_y, victim_position_z,
             attacker_count, zkb, estimate, source
         FROM killmails WHERE killmail_id < 1000000000",
    )
    .bind(id_offset)
    .bind(days)
    .execute(&mut *tx)
    .await
    .expect("copy killmails");
    sqlx::query(
        "INSERT INTO attackers (killmail_id, attacker_index, killmail_time, character_id,
             corporation_id, alliance_id, faction_id, ship_type_id, weapon_type_id, damage_done,
             final_blow, security_status)
         SELECT killmail_id + $1, attacker_index, killmail_time - make_interval(days => $2::int4),
             character_id, corporation_id, alliance_id, faction_id, ship_type_id, weapon_type_id,
             damage_done, final_blow, security_status
         FROM attackers WHERE killmail_id < 1000000000",
    )
    .bind(id_offset)
    .bind(days)
    .execute(&mut *tx)
    .await
    .expect("copy attackers");
    tx.commit().await.expect("commit");
}

/// Ranges of months read from the month tables once rolled up, answer as the rows do; a month
/// written since its roll-up is read from its days until it is rolled up again.
#[tokio::test]
async fn months_rolled_up_answer_as_the_rows_do_and_a_late_write_is_not_missed() {
    let env = TestEnv::new().await;
    import_valued(&env).await;
    // 2021-11-01..03 and 2021-10-01..03.
    copy_back(&env, 30, 1_000_000_000).await;
    copy_back(&env, 61, 2_000_000_000).await;
    let mut db = env.pool.acquire().await.expect("connection");
    assert_eq!(
        stats::refresh_months(&mut db, usize::MAX)
            .await
            .expect("roll-up"),
        3
    );
    assert_grain_matches(&env, Grain::Month, "rolled up").await;
    let entities = busiest_entities(&env).await;
    let character = entities[0].1;
    let ranges: Vec<(Bound, Bound)> = vec![
        (
            Some(at("2021-10-01", "00:00:00")),
            Some(at("2022-01-01", "00:00:00")),
        ),
        (
            Some(at("2021-10-02", "10:17:00")),
            Some(at("2021-12-02", "06:41:00")),
        ),
        (
            Some(at("2021-11-01", "00:00:00")),
            Some(at("2021-12-01", "00:00:00")),
        ),
        (None, Some(at("2021-12-02", "00:00:00"))),
        (None, None),
    ];
    for &(from, to) in &ranges {
        assert_top_and_stats_as_rows(&mut db, from, to, &entities).await;
    }

    // What the months say is what is read: a figure of November's changed by hand shows in a
    // range holding all of November, and not in one holding part of it.
    sqlx::query(
        "UPDATE stats_entity_months SET kills = kills + 100000
         WHERE kind = 1 AND entity_id = $1 AND month = '2021-11-01'",
    )
    .bind(character)
    .execute(&env.pool)
    .await
    .expect("change a month");
    let days = |from: &str, to: &str| {
        Plan::new(
            Some(at(from, "00:00:00")),
            Some(at(to, "00:00:00")),
            Source::Aggregates,
        )
    };
    let whole = days("2021-10-01", "2022-01-01");
    let part = days("2021-11-02", "2022-01-01");
    let leader = |rows: Vec<stats::TopRow>| rows.first().map(|r| (r.id, r.kills));
    let top = stats::top(&mut db, TopKind::Character, &whole, &Filter::default(), 1)
        .await
        .expect("top");
    assert!(leader(top).is_some_and(|(id, kills)| id == character && kills > 100_000));
    let top = stats::top(&mut db, TopKind::Character, &part, &Filter::default(), 1)
        .await
        .expect("top");
    assert!(leader(top).is_some_and(|(_, kills)| kills < 100_000));

    // A killmail arriving late for November: November is read from its days again (the
    // changed figure is gone, the new killmail counted), until it is rolled up again.
    sqlx::query(
        "INSERT INTO killmails (killmail_id, hash, killmail_time, solar_system_id, region_id,
             victim_character_id, victim_corporation_id, victim_ship_type_id,
             victim_damage_taken, attacker_count, source)
         VALUES (3000000001, 'late', '2021-11-15T12:00:00Z', 30000142, 10000002, $1, 98000001,
                 587, 1000, 1, 'test')",
    )
    .bind(character)
    .execute(&env.pool)
    .await
    .expect("a late killmail");
    assert_eq!(
        months(&env, "SELECT month FROM stats_months_stale").await,
        ["2021-11-01"]
    );
    for &(from, to) in &ranges {
        assert_top_and_stats_as_rows(&mut db, from, to, &entities).await;
    }
    assert_eq!(
        stats::refresh_months(&mut db, usize::MAX)
            .await
            .expect("roll-up"),
        1
    );
    assert_grain_matches(&env, Grain::Month, "rolled up again").await;
    for &(from, to) in &ranges {
        assert_top_and_stats_as_rows(&mut db, from, to, &entities).await;
    }
    drop(db);
    env.cleanup().await;
}

fn ids_and_kills(rows: &[stats::TopRow]) -> Vec<(i64, i64)> {
    rows.iter().map(|r| (r.id, r.kills)).collect()
}

/// The entity with the most attacker rows.
async fn busiest(env: &TestEnv, column: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT {column} FROM attackers WHERE {column} IS NOT NULL
         GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
    ))
    .fetch_one(&env.pool)
    .await
    .expect("busiest")
}

/// Character (and corporation) `id`'s kills, `count` killmails from `at` on, one every 37
/// minutes, each worth `isk` (solo, 1 point), with it the only attacker.
async fn add_kills(env: &TestEnv, id: i64, first_id: i64, count: i64, at: DateTime<Utc>, isk: f64) {
    sqlx::query(
        "INSERT INTO killmails (killmail_id, hash, killmail_time, solar_system_id,
             victim_ship_type_id, victim_damage_taken, attacker_count, zkb, source)
         SELECT $1 + n, 'test', $2 + n * interval '37 minutes', 30000142, 587, 100, 1,
                jsonb_build_object('totalValue', $3::float8, 'solo', true, 'points', 1), 'test'
         FROM generate_series(0, $4 - 1) n",
    )
    .bind(first_id)
    .bind(at)
    .bind(isk)
    .bind(count)
    .execute(&env.pool)
    .await
    .expect("killmails");
    sqlx::query(
        "INSERT INTO attackers (killmail_id, attacker_index, killmail_time, character_id,
             corporation_id, damage_done, final_blow, security_status)
         SELECT killmail_id, 0, killmail_time, $3, $3 - 1000000000, 100, true, 0
         FROM killmails WHERE killmail_id >= $1 AND killmail_id < $1 + $2",
    )
    .bind(first_id)
    .bind(count)
    .bind(id)
    .execute(&env.pool)
    .await
    .expect("attackers");
}

/// `top` of every kind (first 1, 3 and 10), `killmailsDateCounts` and each busiest entity's
/// `stats` through GraphQL, over whole and partial days and hours, against the rows alone.
/// Two days are made so that an entity outside the leaders of each day ties the pruning
/// threshold: on 2021-12-05, L has 6 kills, A, B, C and O 4 each; on 2021-12-06, D, E, F, G
/// and O 4 each, L 2. The four leaders of each day bound anyone else to 4 + 4 = 8 kills, which
/// is L's total, and O's, who is first by ISK. On 2021-12-08 and 2021-12-09 a candidate's most
/// is decided by the day it is not a leader of: on the 8th M has 9 kills, P, Q and R 3, S 1;
/// on the 9th T 10, U, V and W 2, Z 1 and M 1. T is the only sure entity (10 kills), M is seen
/// with 9, and only the 9th's last leader's 2 kills make M's most (11) reach T's 10: M is
/// summed, ties T at 10 kills and is first by ISK.
#[tokio::test]
async fn graphql_top_lists_and_stats_equal_the_rows_over_partial_days_and_hours_and_threshold_ties()
{
    let env = TestEnv::new().await;
    import(&env, &["2021-12-03"]).await;
    sqlx::query(
        "UPDATE killmails SET estimate = jsonb_build_object(
             'totalValue', victim_damage_taken * 1000.25, 'solo', attacker_count = 1,
             'points', attacker_count % 5)",
    )
    .execute(&env.pool)
    .await
    .expect("values");
    let (first_day, second_day) = (at("2021-12-05", "02:00:00"), at("2021-12-06", "02:00:00"));
    let outsider = 3_000_000_099;
    let missing = 3_000_000_020;
    let (eighth, ninth) = (at("2021-12-08", "02:00:00"), at("2021-12-09", "02:00:00"));
    let mut next = 5_000_000_000;
    for (id, day, count, isk) in [
        (3_000_000_010, first_day, 6, 1.0),
        (3_000_000_011, first_day, 4, 1.0),
        (3_000_000_012, first_day, 4, 1.0),
        (3_000_000_013, first_day, 4, 1.0),
        (outsider, first_day, 4, 1000.0),
        (3_000_000_014, second_day, 4, 1.0),
        (3_000_000_015, second_day, 4, 1.0),
        (3_000_000_016, second_day, 4, 1.0),
        (3_000_000_017, second_day, 4, 1.0),
        (outsider, second_day, 4, 1000.0),
        (3_000_000_010, second_day, 2, 1.0),
        (missing, eighth, 9, 1000.0),
        (3_000_000_021, eighth, 3, 1.0),
        (3_000_000_022, eighth, 3, 1.0),
        (3_000_000_023, eighth, 3, 1.0),
        (3_000_000_024, eighth, 1, 1.0),
        (3_000_000_030, ninth, 10, 1.0),
        (3_000_000_031, ninth, 2, 1.0),
        (3_000_000_032, ninth, 2, 1.0),
        (3_000_000_033, ninth, 2, 1.0),
        (3_000_000_034, ninth, 1, 1.0),
        (missing, ninth, 1, 1000.0),
    ] {
        add_kills(&env, id, next, count, day, isk).await;
        next += 100;
    }
    let schema = schema(&env).await;
    let mut db = env.pool.acquire().await.expect("connection");
    let busiest = [
        (
            "character",
            EntityKind::Character,
            busiest(&env, "character_id").await,
        ),
        (
            "corporation",
            EntityKind::Corporation,
            busiest(&env, "corporation_id").await,
        ),
        (
            "alliance",
            EntityKind::Alliance,
            busiest(&env, "alliance_id").await,
        ),
        ("character", EntityKind::Character, outsider),
    ];
    let ranges = [
        (None, None),
        (
            Some(at("2021-12-05", "00:00:00")),
            Some(at("2021-12-07", "00:00:00")),
        ),
        (
            Some(at("2021-12-05", "05:17:00")),
            Some(at("2021-12-06", "12:41:00")),
        ),
        (
            Some(at("2021-12-05", "05:00:00")),
            Some(at("2021-12-06", "13:00:00")),
        ),
        (
            Some(at("2021-12-03", "07:17:00")),
            Some(at("2021-12-05", "19:41:00")),
        ),
        (
            Some(at("2021-12-03", "10:20:00")),
            Some(at("2021-12-03", "14:50:00")),
        ),
        (
            Some(at("2021-12-03", "10:05:00")),
            Some(at("2021-12-03", "10:55:00")),
        ),
        (None, Some(at("2021-12-03", "18:30:00"))),
        (
            Some(at("2021-12-08", "00:00:00")),
            Some(at("2021-12-10", "00:00:00")),
        ),
        (
            Some(at("2021-12-08", "02:20:00")),
            Some(at("2021-12-09", "23:50:00")),
        ),
    ];
    let time = |t: Bound| t.map_or(Value::Null, |t| json!(t.to_rfc3339()));
    for (from, to) in ranges {
        let range = json!({"from": time(from), "to": time(to)});
        let rows = Plan::new(from, to, Source::Rows);
        for kind in TopKind::ALL {
            for first in [1, 3, 10] {
                let got = data(
                    &schema,
                    &format!(
                        "query($from: DateTime, $to: DateTime) {{
                           top(kind: {}, from: $from, to: $to, first: {first}) {{ id kills iskDestroyed }}
                         }}",
                        kind_name(kind)
                    ),
                    range.clone(),
                )
                .await;
                let want = stats::top(&mut db, kind, &rows, &Filter::default(), first)
                    .await
                    .expect("top from the rows");
                let got: Vec<(i64, i64, f64)> = got["top"]
                    .as_array()
                    .expect("a list")
                    .iter()
                    .map(|e| {
                        (
                            e["id"].as_str().expect("id").parse().expect("id"),
                            e["kills"].as_i64().expect("kills"),
                            e["iskDestroyed"].as_f64().expect("isk"),
                        )
                    })
                    .collect();
                assert_eq!(
                    got.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
                    ids_and_kills(&want),
                    "top {kind:?} first {first} {range}"
                );
                assert!(
                    got.iter().zip(&want).all(|(g, w)| close(g.2, w.isk)),
                    "top {kind:?} first {first} {range}: ISK"
                );
            }
        }
        let counts = data(
            &schema,
            "query($from: DateTime, $to: DateTime) {
               killmailsDateCounts(from: $from, to: $to) { date count }
             }",
            range.clone(),
        )
        .await;
        let want: Vec<Value> = stats::date_counts(&mut db, &rows, &Filter::default())
            .await
            .expect("counts from the rows")
            .into_iter()
            .map(|(day, count)| json!({"date": day.format("%Y-%m-%d").to_string(), "count": count}))
            .collect();
        assert_eq!(counts["killmailsDateCounts"], Value::Array(want), "{range}");
        for (field, kind, id) in busiest {
            let got = data(
                &schema,
                &format!(
                    "query($id: ID!, $from: DateTime, $to: DateTime) {{
                       {field}(id: $id) {{
                         stats(from: $from, to: $to) {{ kills losses iskDestroyed iskLost soloKills points }}
                       }}
                     }}"
                ),
                json!({"id": id.to_string(), "from": range["from"], "to": range["to"]}),
            )
            .await;
            let got = &got[field]["stats"];
            let want = stats::entity_stats(&mut db, kind, id, &rows)
                .await
                .expect("stats from the rows");
            assert_eq!(
                [
                    &got["kills"],
                    &got["losses"],
                    &got["soloKills"],
                    &got["points"]
                ],
                [
                    &json!(want.kills),
                    &json!(want.losses),
                    &json!(want.solo_kills),
                    &json!(want.points)
                ],
                "stats {field} {id} {range}"
            );
            assert!(
                close(
                    got["iskDestroyed"].as_f64().expect("isk"),
                    want.isk_destroyed
                ) && close(got["iskLost"].as_f64().expect("isk"), want.isk_lost),
                "stats {field} {id} {range}: ISK"
            );
        }
    }
    // The tie itself: O is first, by ISK, over the two days.
    let plan = Plan::new(
        Some(at("2021-12-05", "00:00:00")),
        Some(at("2021-12-07", "00:00:00")),
        Source::Aggregates,
    );
    let top = stats::top(&mut db, TopKind::Character, &plan, &Filter::default(), 1)
        .await
        .expect("top");
    assert_eq!(ids_and_kills(&top), vec![(outsider, 8)]);
    // M's most comes from the day it is not a leader of.
    let plan = Plan::new(
        Some(at("2021-12-08", "00:00:00")),
        Some(at("2021-12-10", "00:00:00")),
        Source::Aggregates,
    );
    let top = stats::top(&mut db, TopKind::Character, &plan, &Filter::default(), 1)
        .await
        .expect("top");
    assert_eq!(ids_and_kills(&top), vec![(missing, 10)]);
    drop(db);
    env.cleanup().await;
}

/// A kind's name in GraphQL.
fn kind_name(kind: TopKind) -> &'static str {
    match kind {
        TopKind::Character => "CHARACTER",
        TopKind::Corporation => "CORPORATION",
        TopKind::Alliance => "ALLIANCE",
        TopKind::ShipType => "SHIP_TYPE",
        TopKind::SolarSystem => "SOLAR_SYSTEM",
    }
}

#[tokio::test]
async fn graphql_answers_top_date_counts_stats_most_valuable_and_search() {
    let env = TestEnv::new().await;
    import(&env, &["2021-12-03"]).await;
    sqlx::query(
        "UPDATE killmails SET estimate = jsonb_build_object('totalValue', victim_damage_taken * 10.0)",
    )
    .execute(&env.pool)
    .await
    .expect("values");
    let schema = schema(&env).await;
    let day = json!({"from": "2021-12-03T00:00:00Z", "to": "2021-12-04T00:00:00Z"});

    let top = data(
        &schema,
        "query($from: DateTime, $to: DateTime) {
           top(kind: SOLAR_SYSTEM, from: $from, to: $to, first: 3) { id name kills iskDestroyed }
         }",
        day.clone(),
    )
    .await;
    let expected: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT solar_system_id, count(*) FROM killmails
         WHERE killmail_time >= '2021-12-03' AND killmail_time < '2021-12-04'
         GROUP BY 1 ORDER BY 2 DESC, sum(total_value) DESC, 1 LIMIT 3",
    )
    .fetch_all(&env.pool)
    .await
    .expect("expected top");
    let got: Vec<(i64, i64)> = top["top"]
        .as_array()
        .expect("list")
        .iter()
        .map(|e| {
            assert!(e["name"].is_string(), "a system has its name: {e}");
            (
                e["id"].as_str().expect("id").parse().expect("id"),
                e["kills"].as_i64().expect("kills"),
            )
        })
        .collect();
    assert_eq!(got, expected);

    let counts = data(&schema, "{ killmailsDateCounts { date count } }", json!({})).await;
    let expected: Vec<Value> = sqlx::query_as::<_, (String, i64)>(
        "SELECT to_char(killmail_time AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*)
         FROM killmails GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .expect("expected counts")
    .into_iter()
    .map(|(date, count)| json!({"date": date, "count": count}))
    .collect();
    assert_eq!(counts["killmailsDateCounts"], Value::Array(expected));

    let character = busiest(&env, "character_id").await;
    let stats = data(
        &schema,
        "query($id: ID!, $from: DateTime, $to: DateTime) {
           character(id: $id) {
             stats(from: $from, to: $to) { kills losses iskDestroyed iskLost soloKills points }
             top(of: SHIPS, first: 1) { id kills }
           }
         }",
        json!({"id": character.to_string(), "from": day["from"], "to": day["to"]}),
    )
    .await;
    let kills: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT killmail_id) FROM attackers WHERE character_id = $1
         AND killmail_time >= '2021-12-03' AND killmail_time < '2021-12-04'",
    )
    .bind(character)
    .fetch_one(&env.pool)
    .await
    .expect("kills");
    assert_eq!(stats["character"]["stats"]["kills"].as_i64(), Some(kills));
    assert!(stats["character"]["top"][0]["kills"].as_i64() > Some(0));

    let valuable = data(
        &schema,
        "{ mostValuable(first: 2) { killmailId zkb { totalValue } } }",
        json!({}),
    )
    .await;
    let most: i64 = sqlx::query_scalar(
        "SELECT killmail_id FROM killmails ORDER BY total_value DESC, killmail_id DESC LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .expect("most valuable");
    assert_eq!(
        valuable["mostValuable"][0]["killmailId"],
        json!(most.to_string())
    );

    let found = data(
        &schema,
        r#"{ search(text: "jIt", kinds: [SOLAR_SYSTEM]) { kind id name } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        found["search"][0],
        json!({"kind": "SOLAR_SYSTEM", "id": "30000142", "name": "Jita"})
    );
    let roots = data(
        &schema,
        r#"{ region(id: "10000002") { name } itemType(id: "587") { name } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        roots,
        json!({"region": {"name": "The Forge"}, "itemType": {"name": "Rifter"}})
    );

    for (query, needle) in [
        (
            "{ top(kind: CHARACTER, first: 1000) { id } }",
            "first must be between 0 and 100",
        ),
        (
            r#"{ search(text: "a") { id } }"#,
            "between 2 and 100 characters",
        ),
    ] {
        let response = run(&schema, query, json!({})).await;
        let error = response
            .errors
            .first()
            .unwrap_or_else(|| panic!("{query}: no error"));
        assert!(error.message.contains(needle), "{query}: {}", error.message);
        let code = error
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .map(|c| c.clone().into_json().expect("code"));
        assert_eq!(code, Some(json!("BAD_USER_INPUT")), "{query}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_change_of_todays_top_lists_is_sent_as_a_statistics_event_and_ended_months_are_rolled_up()
{
    let mut env = TestEnv::new().await;
    env.vars
        .insert("STATISTICS_INTERVAL_SECS".into(), "1".into());
    let (_server, _url) = env.start_server().await;
    // The server's first look is only what later ones are compared with.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let now = Utc::now();
    let (mut killmail, hash) = fixtures::killmails().remove(0);
    killmail.killmail_id = KillmailId(4_000_000_001);
    killmail.killmail_time = Utc.timestamp_opt(now.timestamp(), 0).single().expect("now");
    let mut killers: Vec<i64> = killmail
        .attackers
        .iter()
        .filter_map(|a| a.character_id)
        .collect();
    killers.sort_unstable();
    killers.dedup();
    killreport::ingest::store(
        &env.pool,
        &[Received {
            killmail,
            hash,
            zkb: None,
            source: Origin::Redisq,
        }],
    )
    .await
    .expect("store");

    let latest = || async {
        sqlx::query_scalar::<_, Value>(
            "SELECT data FROM events WHERE type = 'statistics' ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&env.pool)
        .await
        .expect("events")
    };
    wait_until("a statistics event", Duration::from_secs(15), || async {
        latest().await.is_some()
    })
    .await;
    let event = latest().await.expect("the event");
    assert_eq!(
        event["date"],
        json!(now.date_naive().format("%Y-%m-%d").to_string())
    );
    // Every attacker has the one kill; ties go by id, so the first ten hold the lowest.
    let mut attackers: Vec<i64> = killers.clone();
    attackers.sort_unstable();
    let listed: Vec<i64> = event["top"]["character"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| e["id"].as_str().expect("id").parse().expect("id"))
        .collect();
    assert_eq!(listed, attackers[..attackers.len().min(10)], "{event}");
    assert_eq!(event["top"]["solarSystem"][0]["kills"], json!(1));

    // The same task rolls up a month that has ended once killmails of it are stored.
    let (old, old_hash) = fixtures::killmails().remove(1);
    let month = old.killmail_time.format("%Y-%m-01").to_string();
    killreport::ingest::store(
        &env.pool,
        &[Received {
            killmail: old,
            hash: old_hash,
            zkb: None,
            source: Origin::Redisq,
        }],
    )
    .await
    .expect("store");
    wait_until(
        "the ended month rolled up",
        Duration::from_secs(15),
        || async { months(&env, "SELECT month FROM stats_months_ready").await == [month.clone()] },
    )
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_new_filters_select_the_same_killmails_in_sql_and_live() {
    let env = TestEnv::new().await;
    import(&env, &["2021-12-03"]).await;
    sqlx::query(
        "UPDATE killmails SET zkb = jsonb_build_object('totalValue', 1.0,
             'labels', CASE WHEN attacker_count = 1 THEN '[\"solo\", \"pvp\"]'::jsonb
                            ELSE '[\"pvp\"]'::jsonb END)
         WHERE killmail_id % 2 = 0",
    )
    .execute(&env.pool)
    .await
    .expect("labels");
    let statics = Statics::load(&env.pool).await.expect("statics");
    let ids: Vec<KillmailId> = sqlx::query_scalar("SELECT killmail_id FROM killmails")
        .fetch_all(&env.pool)
        .await
        .expect("ids")
        .into_iter()
        .map(KillmailId)
        .collect();
    let mut db = env.pool.acquire().await.expect("connection");
    let stored = killreport::db::killmails::load(&mut db, &ids)
        .await
        .expect("load");
    let (war, _) = sqlx::query_as::<_, (i64, i64)>(
        "SELECT war_id, count(*) FROM killmails WHERE war_id IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
    )
    .fetch_optional(&env.pool)
    .await
    .expect("a war")
    .unwrap_or((1, 0));
    let filters = [
        Filter {
            from: Some(at("2021-12-03", "06:00:00")),
            to: Some(at("2021-12-03", "12:30:00")),
            ..Filter::default()
        },
        Filter {
            constellations: [20_000_020].into_iter().collect(),
            ..Filter::default()
        },
        Filter {
            groups: [25, 26].into_iter().collect(),
            ..Filter::default()
        },
        Filter {
            security: vec![SecurityClass::Highsec],
            ..Filter::default()
        },
        Filter {
            security: vec![SecurityClass::Lowsec, SecurityClass::Wspace],
            ..Filter::default()
        },
        Filter {
            security: vec![SecurityClass::Nullsec],
            ..Filter::default()
        },
        Filter {
            min_attackers: Some(2),
            max_attackers: Some(5),
            ..Filter::default()
        },
        Filter {
            labels: vec!["solo".into()],
            ..Filter::default()
        },
        Filter {
            war: Some(true),
            ..Filter::default()
        },
        Filter {
            wars: [war].into_iter().collect(),
            ..Filter::default()
        },
    ];
    for filter in &filters {
        let mut sql = sqlx::QueryBuilder::new("SELECT k.killmail_id FROM killmails k WHERE true");
        filter.push_sql(&mut sql);
        let mut in_sql: Vec<i64> = sql
            .build_query_scalar()
            .fetch_all(&mut *db)
            .await
            .expect("filter in SQL");
        in_sql.sort_unstable();
        let mut live: Vec<i64> = stored
            .iter()
            .filter(|s| filter.matches(&s.killmail, s.zkb.as_ref(), &statics))
            .map(|s| s.killmail.killmail_id.0)
            .collect();
        live.sort_unstable();
        assert_eq!(in_sql, live, "{filter:?}");
        assert!(!live.is_empty(), "{filter:?} selects something");
        assert!(live.len() < stored.len(), "{filter:?} leaves something out");
    }
    drop(db);
    env.cleanup().await;
}
