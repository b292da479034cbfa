//! killreport's own values for killmails that came without zKillboard's: the real R2Z2 and
//! RedisQ killmails valued beside zKillboard's own totals; an EVE Ref import valued and found
//! by `minValue` (SQL, GraphQL and the live filter agreeing); revaluation as days' prices
//! arrive; `queue prices` fetching today's prices from the fake ESI; fittings through GraphQL.

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use killreport::announce::Announcer;
use killreport::esi::MarketPrice;
use killreport::events::EventPublisher;
use killreport::filter::Filter;
use killreport::killmail::{Killmail, KillmailId, Received, Source, Zkb};
use killreport::statics::Statics;
use killreport::valuation::{self, PriceUpdate};
use serde_json::{Value, json};

use crate::graphql::{data, import_day, schema};
use crate::support::fakes::esi::FakeEsi;
use crate::support::{PATIENCE, TestEnv, fixtures, receive_events, wait_until};

fn day(text: &str) -> NaiveDate {
    text.parse().expect("a date")
}

/// The hand-set price list of the two zkb-valued fixtures (see fixtures/prices/README.md).
fn hand_prices() -> Vec<MarketPrice> {
    let text = std::fs::read_to_string(fixtures::dir().join("prices/hand-approximations.json"))
        .expect("the price fixture");
    serde_json::from_str(&text).expect("ESI's price shape")
}

/// The real killmails that came with zKillboard's values: (killmail, hash, zkb).
fn zkb_valued() -> Vec<(Killmail, String, Value)> {
    let upstream = fixtures::dir().join("upstream");
    let read = |path: &str| -> Value {
        let text = std::fs::read_to_string(upstream.join(path)).expect("fixture");
        serde_json::from_str(&text).expect("JSON")
    };
    let r2z2 = read("r2z2/r2z2-ephemeral-96599404-killmail-134265477.aa-killtracker.json");
    let redisq = read("redisq/redisq-package-119455394.andimiller-killmail-router.json");
    let package = &redisq["package"];
    [
        (r2z2["esi"].clone(), r2z2["zkb"].clone()),
        (package["killmail"].clone(), package["zkb"].clone()),
    ]
    .into_iter()
    .map(|(esi, zkb)| {
        let hash = zkb["hash"].as_str().expect("hash").to_owned();
        (serde_json::from_value(esi).expect("ESI"), hash, zkb)
    })
    .collect()
}

/// As an import receives them: no zkb.
fn without_zkb(killmails: impl IntoIterator<Item = (Killmail, String)>) -> Vec<Received> {
    killmails
        .into_iter()
        .map(|(killmail, hash)| Received {
            killmail,
            hash,
            zkb: None,
            source: Source::Import,
        })
        .collect()
}

async fn estimate_of(env: &TestEnv, id: KillmailId) -> Value {
    sqlx::query_scalar::<_, Option<Value>>("SELECT estimate FROM killmails WHERE killmail_id = $1")
        .bind(id.0)
        .fetch_one(&env.pool)
        .await
        .expect("the killmail")
        .expect("an estimate")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

#[tokio::test]
async fn the_real_feed_killmails_valued_beside_zkillboards_own() {
    let env = TestEnv::new().await;
    let valued = zkb_valued();
    // Prices first, so the estimate is the one written with the killmail itself.
    for (killmail, ..) in &valued {
        valuation::add_prices(
            &env.pool,
            killmail.killmail_time.date_naive(),
            &hand_prices(),
        )
        .await
        .expect("prices");
    }
    let batch = without_zkb(valued.iter().map(|(k, h, _)| (k.clone(), h.clone())));
    let stored = killreport::ingest::store(&env.pool, &batch)
        .await
        .expect("storing");
    assert_eq!(stored.len(), 2);

    let mut differences = Vec::new();
    println!(
        "{:>10} {:>16} {:>16} {:>8}   (fitted, dropped, destroyed: ours / zKillboard's)",
        "killmail", "zKillboard", "killreport", "diff"
    );
    for (killmail, _, zkb) in &valued {
        let ours = estimate_of(&env, killmail.killmail_id).await;
        let stored = stored
            .iter()
            .find(|s| s.killmail_id == killmail.killmail_id)
            .expect("stored");
        assert_eq!(stored.estimate.as_ref().map(|e| &e.0), Some(&ours));
        let theirs_total = zkb["totalValue"].as_f64().expect("zkb total");
        let ours_total = ours["totalValue"].as_f64().expect("our total");
        let difference = (ours_total - theirs_total) / theirs_total;
        differences.push(difference.abs());
        let pair = |key: &str| {
            format!(
                "{:.1}M/{:.1}M",
                ours[key].as_f64().unwrap_or_default() / 1e6,
                zkb[key].as_f64().unwrap_or_default() / 1e6
            )
        };
        println!(
            "{:>10} {theirs_total:>16.2} {ours_total:>16.2} {:>+7.1}%   {} {} {}",
            killmail.killmail_id,
            difference * 100.0,
            pair("fittedValue"),
            pair("droppedValue"),
            pair("destroyedValue"),
        );
        // The flags are zKillboard's exactly; so are the labels, but for the prime-time label
        // the older of the two (2024) predates.
        for flag in ["npc", "solo", "awox"] {
            assert_eq!(ours[flag], zkb[flag], "{flag} of {}", killmail.killmail_id);
        }
        let labels = |block: &Value| -> BTreeSet<String> {
            block["labels"]
                .as_array()
                .expect("labels")
                .iter()
                .map(|l| l.as_str().expect("a label").to_owned())
                .collect()
        };
        let (ours_labels, theirs_labels) = (labels(&ours), labels(zkb));
        assert!(
            theirs_labels.is_subset(&ours_labels),
            "{theirs_labels:?} ⊄ {ours_labels:?}"
        );
        assert!(
            ours_labels
                .difference(&theirs_labels)
                .all(|l| l.starts_with("tz:")),
            "{ours_labels:?} beyond {theirs_labels:?}"
        );
        assert_eq!(ours["estimated"], true);
    }
    let (median, worst) = (
        median(differences.clone()),
        differences.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "over {} killmails: median |difference| {:.1}%, worst {:.1}% (hand-set prices, see fixtures/prices)",
        differences.len(),
        median * 100.0,
        worst * 100.0
    );
    // The bound says the rules are in zKillboard's range with rough prices; the figures above
    // are the measurement.
    assert!(worst < 0.75, "worst relative difference {worst}");
}

#[tokio::test]
async fn an_everef_import_is_valued_and_found_by_min_value_everywhere_alike() {
    let env = TestEnv::new().await;
    // A price for every type of the day: 1,000 ISK per unit of type id modulo 1,000, so the
    // values spread over orders of magnitude.
    let type_ids: BTreeSet<i64> = fixtures::archive_values(&fixtures::archive("2021-12-03"))
        .into_iter()
        .flat_map(|(_, v)| {
            let killmail: Killmail = serde_json::from_value(v).expect("ESI");
            let mut ids = vec![killmail.victim.ship_type_id];
            ids.extend(
                killmail
                    .items_preorder()
                    .into_iter()
                    .map(|(_, item)| item.item_type_id),
            );
            ids
        })
        .collect();
    let prices: Vec<MarketPrice> = type_ids
        .iter()
        .map(|&type_id| MarketPrice {
            type_id,
            average_price: Some(1000.0 * (type_id % 1000 + 1) as f64),
            adjusted_price: None,
        })
        .collect();
    valuation::add_prices(&env.pool, day("2021-12-03"), &prices)
        .await
        .expect("prices");
    import_day(&env).await;

    let (valued, estimated): (i64, i64) = sqlx::query_as(
        "SELECT count(total_value), count(*) FILTER (WHERE estimate->>'pricesDate' = '2021-12-03')
         FROM killmails",
    )
    .fetch_one(&env.pool)
    .await
    .expect("counting");
    assert_eq!((valued, estimated), (4158, 4158));
    // Estimates carry no points: none, not a number made up, for the killmails and the pilots.
    let (with_points, points): (i64, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT count(points) FROM killmails),
                (SELECT sum(points)::int8 FROM stats_entity_days)",
    )
    .fetch_one(&env.pool)
    .await
    .expect("points");
    assert_eq!((with_points, points), (0, Some(0)));

    let min_value = 5e8;
    let by_sql: BTreeSet<i64> =
        sqlx::query_scalar("SELECT killmail_id FROM killmails WHERE total_value >= $1")
            .bind(min_value)
            .fetch_all(&env.pool)
            .await
            .expect("SQL")
            .into_iter()
            .collect();
    assert!(
        by_sql.len() > 10 && by_sql.len() < 4000,
        "{} of 4158 at 500M or more",
        by_sql.len()
    );

    // GraphQL's connection, and each node's zkb block.
    let schema = schema(&env).await;
    let mut by_graphql = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page = data(
            &schema,
            "query($f: KillmailFilter, $after: String) {
                killmails(filter: $f, first: 100, after: $after) {
                    edges { node { killmailId zkb { totalValue estimated } } }
                    pageInfo { hasNextPage endCursor }
                } }",
            json!({"f": {"minValue": min_value}, "after": after}),
        )
        .await;
        let connection = &page["killmails"];
        for edge in connection["edges"].as_array().expect("edges") {
            let node = &edge["node"];
            assert!(node["zkb"]["totalValue"].as_f64().expect("value") >= min_value);
            assert_eq!(node["zkb"]["estimated"], true);
            let id: i64 = node["killmailId"]
                .as_str()
                .expect("id")
                .parse()
                .expect("id");
            by_graphql.insert(id);
        }
        if connection["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = connection["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
    }
    assert_eq!(by_graphql, by_sql);

    // The live filter, over the killmails as events carry them.
    let statics = Statics::load(&env.pool).await.expect("statics");
    let filter = Filter {
        min_value: Some(min_value),
        ..Filter::default()
    };
    let ids: Vec<KillmailId> = fixtures::archive_values(&fixtures::archive("2021-12-03"))
        .iter()
        .map(|(_, v)| KillmailId(v["killmail_id"].as_i64().expect("id")))
        .collect();
    let mut conn = env.pool.acquire().await.expect("a connection");
    let loaded = killreport::db::killmails::load(&mut conn, &ids)
        .await
        .expect("loading");
    let by_filter: BTreeSet<i64> = loaded
        .iter()
        .filter(|s| filter.matches(&s.killmail, s.zkb.as_ref(), &statics))
        .map(|s| s.killmail.killmail_id.0)
        .collect();
    assert_eq!(by_filter, by_sql);
}

#[tokio::test]
async fn a_new_killmail_is_announced_with_its_estimate() {
    let env = TestEnv::new().await;
    let (killmail, hash, _) = zkb_valued().remove(0);
    valuation::add_prices(
        &env.pool,
        killmail.killmail_time.date_naive(),
        &hand_prices(),
    )
    .await
    .expect("prices");
    let mut events = env.subscribe().await;
    let batch = without_zkb([(killmail.clone(), hash)]);
    let stored = killreport::ingest::store(&env.pool, &batch)
        .await
        .expect("storing");
    let publisher = EventPublisher::connect(&env.redis_url, &env.channel)
        .await
        .expect("Redis");
    Announcer::new(env.pool.clone(), publisher, None)
        .announce(&batch, &stored)
        .await
        .expect("announcing");
    let event = receive_events(&mut events, 1).await.remove(0);
    let zkb = event.zkb.expect("the estimate on the event");
    assert_eq!(zkb.0, estimate_of(&env, killmail.killmail_id).await);
    let total = zkb.total_value().expect("a value");
    let statics = Statics::load(&env.pool).await.expect("statics");
    let matching = |min_value| Filter {
        min_value: Some(min_value),
        solo: Some(true),
        ..Filter::default()
    };
    assert!(matching(total).matches(&event.killmail, Some(&zkb), &statics));
    assert!(!matching(total + 1.0).matches(&event.killmail, Some(&zkb), &statics));
}

/// (killmail id, pricesDate, totalValue) of every stored killmail.
async fn estimates(env: &TestEnv) -> HashMap<i64, (Option<String>, Option<f64>)> {
    let rows: Vec<(i64, Option<String>, Option<f64>)> =
        sqlx::query_as("SELECT killmail_id, estimate->>'pricesDate', total_value FROM killmails")
            .fetch_all(&env.pool)
            .await
            .expect("estimates");
    rows.into_iter().map(|(id, d, v)| (id, (d, v))).collect()
}

fn flat_prices(price: f64) -> Vec<MarketPrice> {
    fixtures::killmails()
        .iter()
        .flat_map(|(k, _)| {
            std::iter::once(k.victim.ship_type_id)
                .chain(k.items_preorder().into_iter().map(|(_, i)| i.item_type_id))
        })
        .collect::<BTreeSet<i64>>()
        .into_iter()
        .map(|type_id| MarketPrice {
            type_id,
            average_price: Some(price),
            adjusted_price: Some(price / 2.0),
        })
        .collect()
}

fn revalued(update: &PriceUpdate) -> Vec<(String, u64)> {
    update
        .revalued
        .iter()
        .map(|(day, n)| (day.to_string(), *n))
        .collect()
}

#[tokio::test]
async fn stored_killmails_are_valued_again_when_a_days_prices_first_arrive() {
    let env = TestEnv::new().await;
    // 2021-12-03's killmails, all but one without zkb; then one of 2021-11-28.
    let all = fixtures::killmails();
    let (december, november): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(k, _)| k.killmail_time.date_naive() == day("2021-12-03"));
    let mut batch = without_zkb(december.into_iter().take(20));
    batch[0].zkb = Some(Zkb(
        json!({"totalValue": 123.0, "npc": false, "solo": false}),
    ));
    batch.extend(without_zkb(november.into_iter().take(1)));
    let zkb_id = batch[0].killmail.killmail_id.0;
    let november_id = batch[20].killmail.killmail_id.0;
    killreport::ingest::store(&env.pool, &batch)
        .await
        .expect("storing");

    // No prices yet: flags and labels, no value.
    let before = estimates(&env).await;
    assert_eq!(before.len(), 21);
    assert_eq!(
        before[&zkb_id],
        (None, Some(123.0)),
        "zKillboard's value stands"
    );
    assert!(
        before
            .iter()
            .filter(|(id, _)| **id != zkb_id)
            .all(|(_, e)| *e == (None, None))
    );

    // A later day: every killmail takes it (nearest later).
    let update = valuation::add_prices(&env.pool, day("2021-12-05"), &flat_prices(1000.0))
        .await
        .expect("prices");
    assert_eq!(
        update.stored,
        Some((day("2021-12-05"), flat_prices(1.0).len()))
    );
    assert_eq!(revalued(&update), [("2021-12-05".to_owned(), 20)]);
    let after = estimates(&env).await;
    assert!(
        after
            .iter()
            .filter(|(id, _)| **id != zkb_id)
            .all(|(_, (d, v))| {
                d.as_deref() == Some("2021-12-05") && v.is_some_and(|v| v > 0.0)
            })
    );

    // An earlier day: both days' killmails move to it (nearest earlier, else it, being first).
    let update = valuation::add_prices(&env.pool, day("2021-12-01"), &flat_prices(2000.0))
        .await
        .expect("prices");
    assert_eq!(revalued(&update), [("2021-12-01".to_owned(), 20)]);
    // A day after theirs: nothing of theirs changes.
    let update = valuation::add_prices(&env.pool, day("2021-12-04"), &flat_prices(3000.0))
        .await
        .expect("prices");
    assert_eq!(revalued(&update), [("2021-12-04".to_owned(), 0)]);
    // Their own day, at last; the November killmail keeps the first of December.
    let update = valuation::add_prices(&env.pool, day("2021-12-03"), &flat_prices(4000.0))
        .await
        .expect("prices");
    assert_eq!(revalued(&update), [("2021-12-03".to_owned(), 19)]);
    let last = estimates(&env).await;
    for (id, (prices_date, value)) in &last {
        let expected = match *id {
            id if id == zkb_id => None,
            id if id == november_id => Some("2021-12-01"),
            _ => Some("2021-12-03"),
        };
        assert_eq!(prices_date.as_deref(), expected, "killmail {id}");
        if expected == Some("2021-12-03") {
            // Every type at 4,000 ISK against 1,000 then: worth more, unless all it had was
            // priced by hand (an empty capsule's 10,000 ISK).
            let (_, then) = &after[id];
            assert!(value.zip(*then).is_some_and(|(now, then)| now >= then));
        }
    }
    // The same prices again change nothing.
    let again = valuation::add_prices(&env.pool, day("2021-12-03"), &flat_prices(9.0))
        .await
        .expect("prices");
    assert_eq!(again.stored, None);
    assert!(again.revalued.is_empty());
    assert_eq!(estimates(&env).await, last);
}

/// CONCORD's kill of `ganker` for the gank `g`: `after` killmail ids and a minute later, in
/// the same system.
fn concord_kill(g: &Killmail, ganker: i64, after: i64) -> Killmail {
    let mut concord = g.clone();
    concord.killmail_id = KillmailId(g.killmail_id.0 + after);
    concord.killmail_time = g.killmail_time + chrono::Duration::minutes(1);
    concord.war_id = None;
    concord.victim = serde_json::from_value(json!({
        "character_id": ganker, "corporation_id": 98_000_001, "ship_type_id": 24700,
        "damage_taken": 5000, "items": []
    }))
    .expect("a victim");
    concord.attackers = vec![
        serde_json::from_value(json!({
            "corporation_id": 1_000_125, "ship_type_id": 3885, "damage_done": 5000,
            "final_blow": true, "security_status": 0.0
        }))
        .expect("an attacker"),
    ];
    concord
}

async fn ganked(env: &TestEnv) -> BTreeSet<i64> {
    let schema = schema(env).await;
    let found = data(
        &schema,
        r#"{ killmails(filter: {labels: ["ganked"]}, first: 200) { edges { node { id } } } }"#,
        json!({}),
    )
    .await;
    found["killmails"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            e["node"]["id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("an id")
        })
        .collect()
}

#[tokio::test]
async fn a_gank_is_labelled_ganked_whichever_arrives_first_and_keeps_it_through_revaluation() {
    let env = TestEnv::new().await;
    let the_day = day("2021-12-03");
    // Prices of a later day value them until their own day's arrive.
    valuation::add_prices(&env.pool, day("2021-12-05"), &flat_prices(2_000_000.0))
        .await
        .expect("prices");
    // Highsec kills of ships (not capsules) outside wars, by a pilot: gank-shaped.
    let mut ganks = Vec::new();
    for (killmail, hash) in fixtures::killmails() {
        let ganker = killmail.attackers.iter().find_map(|a| a.character_id);
        let (security, group): (Option<f64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT security_status FROM solar_systems WHERE solar_system_id = $1),
                    (SELECT group_id FROM item_types WHERE type_id = $2)",
        )
        .bind(killmail.solar_system_id)
        .bind(killmail.victim.ship_type_id)
        .fetch_one(&env.pool)
        .await
        .expect("statics");
        if let Some(ganker) = ganker
            && killmail.killmail_time.date_naive() == the_day
            && killmail.war_id.is_none()
            && security.is_some_and(|s| s >= 0.45)
            && group != Some(29)
        {
            ganks.push((killmail, hash, ganker));
        }
    }
    assert!(ganks.len() >= 3, "highsec kills among the fixtures");
    let [(g1, h1, ganker1), (g2, h2, ganker2), (g3, h3, ganker3)] =
        <[_; 3]>::try_from(ganks.into_iter().take(3).collect::<Vec<_>>()).expect("three");
    let store = |killmails: Vec<(Killmail, String)>| {
        let pool = env.pool.clone();
        async move {
            killreport::ingest::store(&pool, &without_zkb(killmails))
                .await
                .expect("storing")
        }
    };
    // The gank first, CONCORD's kill in a later batch.
    store(vec![(g1.clone(), h1), (g3.clone(), h3)]).await;
    assert_eq!(ganked(&env).await, BTreeSet::new());
    let concord = |g: &Killmail, ganker, after| vec![(concord_kill(g, ganker, after), "c".into())];
    assert_eq!(store(concord(&g1, ganker1, 7)).await.len(), 1);
    assert_eq!(ganked(&env).await, BTreeSet::from([g1.killmail_id.0]));
    // CONCORD's kill first (a late killmail), then the gank.
    assert_eq!(store(concord(&g2, ganker2, 3)).await.len(), 1);
    store(vec![(g2.clone(), h2)]).await;
    // Too far apart in ids: not a gank.
    assert_eq!(store(concord(&g3, ganker3, 201)).await.len(), 1);
    let expected = BTreeSet::from([g1.killmail_id.0, g2.killmail_id.0]);
    assert_eq!(ganked(&env).await, expected);

    // Their own day's prices value them again: the label stays.
    let update = valuation::add_prices(&env.pool, the_day, &flat_prices(3_000_000.0))
        .await
        .expect("prices");
    assert!(revalued(&update).iter().any(|(_, n)| *n > 0), "{update:?}");
    assert_eq!(ganked(&env).await, expected);
    env.cleanup().await;
}

#[tokio::test]
async fn queue_prices_fetches_todays_prices_from_esi_and_values_the_store() {
    let mut env = TestEnv::new().await;
    let esi = FakeEsi::default();
    let _served = esi.serve_for(&mut env).await;
    esi.set_market_prices(serde_json::to_value(flat_prices(1500.0)).expect("JSON"));
    killreport::ingest::store(
        &env.pool,
        &without_zkb(fixtures::killmails().into_iter().take(5)),
    )
    .await
    .expect("storing");

    let output = env.run("queue", &["prices"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let today = chrono::Utc::now().date_naive();
    let types = flat_prices(1.0).len();
    assert!(
        stdout.contains(&format!("prices of {today} stored: {types} types")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "killmails valued with the prices of {today}: 5 changed"
        )),
        "{stdout}"
    );
    let valued = estimates(&env).await;
    let today_text = today.to_string();
    assert!(
        valued
            .values()
            .all(|(d, v)| d.as_deref() == Some(today_text.as_str()) && v.is_some())
    );

    // Today's prices are kept once: a second run does not ask ESI again.
    let output = env.run("queue", &["prices"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("today's prices were stored already"),
        "{stdout}"
    );
    let asked = esi
        .requests()
        .iter()
        .filter(|r| *r == "/markets/prices/")
        .count();
    assert_eq!(asked, 1);

    // ESI failing is an error with its reason, and nothing changes.
    let mut env_down = TestEnv::new().await;
    let down = FakeEsi::default();
    let _down = down.serve_for(&mut env_down).await;
    let output = env_down.run("queue", &["prices"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fetching item prices from ESI"), "{stderr}");
    let days: i64 = sqlx::query_scalar("SELECT count(*) FROM price_days")
        .fetch_one(&env_down.pool)
        .await
        .expect("counting");
    assert_eq!(days, 0);
}

#[tokio::test]
async fn worker_killmails_keeps_todays_prices_one_worker_at_a_time() {
    let mut env = TestEnv::new().await;
    let esi = FakeEsi::default();
    let _served = esi.serve_for(&mut env).await;
    esi.set_market_prices(serde_json::to_value(flat_prices(1500.0)).expect("JSON"));
    env.vars
        .insert("PRICES_INTERVAL_SECS".into(), "3600".into());
    let _first = env.spawn("worker-killmails", &[]);
    let _second = env.spawn("worker-killmails", &[]);
    let today = chrono::Utc::now().date_naive();
    wait_until("today's prices", PATIENCE, || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM price_days WHERE day = $1 AND revalued_at IS NOT NULL)",
        )
        .bind(today)
        .fetch_one(&env.pool)
        .await
        .unwrap_or(false)
    })
    .await;
    // Both started at once; whichever came second found the day stored.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let asked = esi
        .requests()
        .iter()
        .filter(|r| *r == "/markets/prices/")
        .count();
    assert_eq!(asked, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_victims_fitting_comes_through_graphql_by_slot() {
    let env = TestEnv::new().await;
    let (killmail, hash, _) = zkb_valued().remove(0);
    killreport::ingest::store(&env.pool, &without_zkb([(killmail.clone(), hash)]))
        .await
        .expect("storing");
    let schema = schema(&env).await;
    let answer = data(
        &schema,
        "query($id: ID!) { killmail(id: $id) { victim { fitting {
             name label flags items { itemType { id } flag quantityDropped quantityDestroyed }
         } } zkb { estimated totalValue solo labels } } }",
        json!({"id": killmail.killmail_id.0.to_string()}),
    )
    .await;
    let slots = answer["killmail"]["victim"]["fitting"]
        .as_array()
        .expect("slots");
    let names: Vec<&str> = slots
        .iter()
        .map(|s| s["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["high", "mid", "low", "rig", "droneBay", "miningHold"]
    );
    assert_eq!(slots[0]["label"], "High slots");
    assert_eq!(slots[2]["flags"], json!([11, 12, 13]));
    assert_eq!(slots[4]["items"][0]["quantityDestroyed"], 10);
    let items: usize = slots
        .iter()
        .map(|s| s["items"].as_array().expect("items").len())
        .sum();
    assert_eq!(items, killmail.victim.items.len());
    // No prices known: an estimate all the same, with flags and labels, worth nothing yet.
    let zkb = &answer["killmail"]["zkb"];
    assert_eq!(zkb["estimated"], true);
    assert_eq!(zkb["totalValue"], 0.0);
    assert_eq!(zkb["solo"], true);
    assert_eq!(
        zkb["labels"],
        json!(["tz:ru", "cat:6", "solo", "pvp", "loc:nullsec"])
    );
}
