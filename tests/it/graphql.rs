//! The query API through the schema (resolver detail) and over HTTP (limits): a killmail in
//! full, the `killmails` connection against direct SQL on a real archive day, bad input, query
//! limits, and the exported SDL.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Request, Variables};
use indicatif::ProgressBar;
use killreport::event_log::EventLog;
use killreport::graphql::KillreportSchema;
use killreport::import::{Announce, Importer};
use killreport::live::Hub;
use killreport::statics::Statics;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{TestEnv, fixtures, redis_url};

pub(crate) async fn schema(env: &TestEnv) -> KillreportSchema {
    let statics = Arc::new(Statics::load(&env.pool).await.expect("statics"));
    let hub = Hub::start(
        env.pool.clone(),
        Arc::clone(&statics),
        &redis_url(),
        &env.channel,
        Duration::from_secs(3),
        CancellationToken::new(),
    )
    .await
    .expect("hub");
    let log = EventLog::start(
        env.pool.clone(),
        hub.clone(),
        &redis_url(),
        &env.bus_channel(),
        CancellationToken::new(),
    )
    .await
    .expect("event log");
    killreport::graphql::schema(env.pool.clone(), hub, log, statics, env.status().await)
}

pub(crate) async fn run(
    schema: &KillreportSchema,
    query: &str,
    variables: Value,
) -> async_graphql::Response {
    schema
        .execute(Request::new(query).variables(Variables::from_json(variables)))
        .await
}

pub(crate) async fn data(schema: &KillreportSchema, query: &str, variables: Value) -> Value {
    let response = run(schema, query, variables).await;
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    response.data.into_json().expect("JSON data")
}

pub(crate) async fn import_day(env: &TestEnv) {
    let importer = Importer {
        pool: env.pool.clone(),
        announce: Announce::BySweep,
        publisher: None,
        batch_size: 1000,
        max_reasons: 5,
    };
    let summary = importer
        .import(
            &[fixtures::archive("2021-12-03")],
            &ProgressBar::hidden(),
            &CancellationToken::new(),
        )
        .await
        .expect("import");
    assert_eq!(summary.stored, 4158);
}

#[tokio::test]
async fn schema_graphql_is_the_exported_sdl() {
    let sdl = killreport::graphql::schema_builder().finish().sdl();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql");
    if std::env::var("UPDATE_SCHEMA").is_ok() {
        std::fs::write(&path, &sdl).expect("writing schema.graphql");
    }
    let file = std::fs::read_to_string(&path).unwrap_or_default();
    if file != sdl {
        let diff: Vec<String> = diff_lines(&file, &sdl);
        panic!(
            "schema.graphql differs from the code (UPDATE_SCHEMA=1 cargo test schema_graphql rewrites it):\n{}",
            diff.join("\n")
        );
    }
}

/// Lines only in the file (-) and only in the code (+).
fn diff_lines(file: &str, code: &str) -> Vec<String> {
    let file_lines: BTreeSet<&str> = file.lines().collect();
    let code_lines: BTreeSet<&str> = code.lines().collect();
    let removed = file_lines.difference(&code_lines).map(|l| format!("- {l}"));
    let added = code_lines.difference(&file_lines).map(|l| format!("+ {l}"));
    removed.chain(added).collect()
}

#[tokio::test]
async fn a_killmail_comes_back_whole_with_names() {
    let env = TestEnv::new().await;
    let (killmail, hash) = fixtures::killmails()
        .into_iter()
        .find(|(k, _)| k.killmail_id.0 == 97_089_263)
        .expect("a fixture with containers");
    let zkb = killreport::killmail::Zkb(
        json!({"totalValue": 1.5e9, "fittedValue": 1.0e9, "points": 7, "npc": false, "solo": false, "awox": true, "labels": ["pvp", "loc:nullsec"], "locationID": 40_000_002, "hash": hash}),
    );
    let received = killreport::killmail::Received {
        killmail: killmail.clone(),
        hash: hash.clone(),
        zkb: Some(zkb),
        source: killreport::killmail::Source::Redisq,
    };
    killreport::ingest::store(&env.pool, &[received])
        .await
        .expect("store");
    let victim_character = killmail.victim.character_id.expect("a victim character");
    sqlx::query(
        "INSERT INTO entity_names (id, category, name) VALUES ($1, 'character', 'Victim Pilot')",
    )
    .bind(victim_character)
    .execute(&env.pool)
    .await
    .expect("name");
    let schema = schema(&env).await;

    let item_fields = "itemType { id name } flag quantityDestroyed quantityDropped singleton";
    let query = format!(
        "query($id: ID!) {{ killmail(id: $id) {{ id killmailId hash time killmailTime cursor attackerCount
            solarSystem {{ id name securityStatus regionId region {{ name }} }}
            victim {{ character {{ id name }} characterName corporationName shipTypeName shipType {{ id name }} damageTaken
                     items {{ {item_fields} items {{ {item_fields} }} }} }}
            attackers {{ character {{ id }} corporation {{ id }} shipType {{ id }} weaponType {{ id }} damageDone finalBlow securityStatus }}
            finalBlow {{ damageDone character {{ id }} }}
            zkb {{ totalValue fittedValue points npc solo awox labels locationId }} }} }}"
    );
    let got = data(&schema, &query, json!({"id": "97089263"})).await["killmail"].clone();
    assert_eq!(got["id"], "97089263");
    assert_eq!(got["killmailId"], "97089263");
    assert_eq!(got["hash"], hash);
    assert_eq!(got["time"], got["killmailTime"]);
    // The same text as ESI's.
    let esi_time = serde_json::to_value(&killmail).expect("JSON")["killmail_time"].clone();
    assert_eq!(got["killmailTime"], esi_time);
    assert!(esi_time.as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(got["attackerCount"], killmail.attackers.len());
    assert_eq!(got["victim"]["characterName"], "Victim Pilot");
    assert_eq!(got["victim"]["character"]["name"], "Victim Pilot");
    assert!(got["victim"]["shipTypeName"].is_string());
    assert!(
        got["solarSystem"]["name"].is_string() && got["solarSystem"]["region"]["name"].is_string()
    );
    // The item tree, containers' contents included, as ESI had it.
    let esi = serde_json::to_value(&killmail).expect("JSON");
    let items = got["victim"]["items"].as_array().expect("items");
    assert_eq!(
        items.len(),
        esi["victim"]["items"].as_array().expect("items").len()
    );
    for (item, source) in items
        .iter()
        .zip(esi["victim"]["items"].as_array().expect("items"))
    {
        assert_eq!(item["itemType"]["id"], source["item_type_id"].to_string());
        assert_eq!(item["flag"], source["flag"]);
        assert_eq!(
            item["quantityDropped"],
            source
                .get("quantity_dropped")
                .cloned()
                .unwrap_or(Value::Null)
        );
        let nested = source
            .get("items")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        assert_eq!(item["items"].as_array().expect("nested").len(), nested);
    }
    assert!(
        items
            .iter()
            .any(|i| !i["items"].as_array().expect("nested").is_empty()),
        "a container with contents"
    );
    let attackers = got["attackers"].as_array().expect("attackers");
    let final_blow = killmail
        .attackers
        .iter()
        .find(|a| a.final_blow)
        .expect("a final blow");
    assert_eq!(got["finalBlow"]["damageDone"], final_blow.damage_done);
    assert_eq!(
        attackers.iter().filter(|a| a["finalBlow"] == true).count(),
        1
    );
    assert_eq!(
        got["zkb"],
        json!({"totalValue": 1.5e9, "fittedValue": 1.0e9, "points": 7, "npc": false, "solo": false, "awox": true, "labels": ["pvp", "loc:nullsec"], "locationId": "40000002"})
    );

    let missing = data(&schema, "{ killmail(id: \"1\") { id } }", json!({})).await;
    assert_eq!(missing["killmail"], Value::Null);
    env.cleanup().await;
}

/// Every id the connection yields for `filter` in `order` (`TIME` or `VALUE`), walking pages of
/// `first`, checking that every page's `totalCount` is how many there are in all.
async fn walk(schema: &KillreportSchema, filter: &Value, first: i32, order: &str) -> Vec<i64> {
    let query = "query($f: KillmailFilter, $first: Int, $after: String, $order: KillmailOrder) {
        killmails(filter: $f, first: $first, after: $after, orderBy: $order) {
            totalCount edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }";
    let mut ids = Vec::new();
    let mut total_counts = BTreeSet::new();
    let mut after = Value::Null;
    loop {
        let variables = json!({"f": filter, "first": first, "after": after, "order": order});
        let page = data(schema, query, variables).await["killmails"].clone();
        total_counts.insert(page["totalCount"].as_u64().expect("totalCount"));
        for edge in page["edges"].as_array().expect("edges") {
            let id = edge["node"]["id"].as_str().expect("id");
            ids.push(id.parse().expect("numeric id"));
        }
        if page["pageInfo"]["hasNextPage"] != true {
            assert_eq!(
                total_counts,
                BTreeSet::from([ids.len() as u64]),
                "totalCount of {filter}"
            );
            return ids;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
}

/// The orders of the connection, and the same in SQL.
const ORDERS: [(&str, &str); 2] = [
    ("TIME", "k.killmail_time DESC, k.killmail_id DESC"),
    ("VALUE", "k.total_value DESC NULLS LAST, k.killmail_id DESC"),
];

/// The ids of the killmails meeting `condition`, in the order `order_by`.
async fn sql_sequence(env: &TestEnv, condition: &str, order_by: &str) -> Vec<i64> {
    sqlx::query_scalar::<_, i64>(&format!(
        "SELECT killmail_id FROM killmails k WHERE {condition} ORDER BY {order_by}"
    ))
    .fetch_all(&env.pool)
    .await
    .expect("SQL")
}

#[tokio::test]
async fn the_killmails_connection_matches_sql_for_every_filter_in_both_orders_and_pages_cover_everything_once()
 {
    let env = TestEnv::new().await;
    import_day(&env).await;
    // zKillboard values for two thirds of them.
    sqlx::query(
        "UPDATE killmails SET zkb = jsonb_build_object('totalValue', (killmail_id % 1000) * 1e6,
            'npc', killmail_id % 7 = 0, 'solo', killmail_id % 5 = 0)
         WHERE killmail_id % 3 <> 0",
    )
    .execute(&env.pool)
    .await
    .expect("zkb");
    let schema = schema(&env).await;
    let top = |sql: &'static str| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .expect("top")
        }
    };
    let alliance = top("SELECT alliance_id FROM attackers WHERE alliance_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").await;
    let region =
        top("SELECT region_id FROM killmails GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").await;
    let system =
        top("SELECT solar_system_id FROM killmails GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
            .await;
    let ship =
        top("SELECT victim_ship_type_id FROM killmails GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
            .await;
    let character = top("SELECT character_id FROM attackers WHERE character_id IS NOT NULL GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").await;
    let as_attacker = |column: &str, id: i64| {
        format!("k.killmail_id IN (SELECT killmail_id FROM attackers WHERE {column} = {id})")
    };

    let cases: Vec<(Value, String)> = vec![
        (json!({}), "true".into()),
        (
            json!({"allianceIds": [alliance.to_string()], "involvement": "ATTACKER"}),
            as_attacker("alliance_id", alliance),
        ),
        (
            json!({"allianceIds": [alliance.to_string()], "involvement": "VICTIM"}),
            format!("k.victim_alliance_id = {alliance}"),
        ),
        (
            json!({"allianceIds": [alliance.to_string()]}),
            format!(
                "(k.victim_alliance_id = {alliance} OR {})",
                as_attacker("alliance_id", alliance)
            ),
        ),
        (
            json!({"characterIds": [character.to_string(), "1"]}),
            format!(
                "(k.victim_character_id = {character} OR {})",
                as_attacker("character_id", character)
            ),
        ),
        (
            json!({"regionIds": [region.to_string()]}),
            format!("k.region_id = {region}"),
        ),
        (
            json!({"solarSystemIds": [system.to_string()]}),
            format!("k.solar_system_id = {system}"),
        ),
        (
            json!({"shipTypeIds": [ship.to_string()]}),
            format!("k.victim_ship_type_id = {ship}"),
        ),
        (
            json!({"minValue": 5e8}),
            "(coalesce(k.zkb, k.estimate)->>'totalValue')::float8 >= 5e8".into(),
        ),
        (
            json!({"npc": true}),
            "(coalesce(k.zkb, k.estimate)->>'npc')::bool".into(),
        ),
        (
            json!({"solo": false}),
            "NOT (coalesce(k.zkb, k.estimate)->>'solo')::bool".into(),
        ),
        (
            json!({"allianceIds": [alliance.to_string()], "regionIds": [region.to_string()], "minValue": 1e8}),
            format!(
                "(k.victim_alliance_id = {alliance} OR {}) AND k.region_id = {region} AND (coalesce(k.zkb, k.estimate)->>'totalValue')::float8 >= 1e8",
                as_attacker("alliance_id", alliance)
            ),
        ),
    ];
    // Every killmail once, in the same order as SQL's, newest first and most valuable first
    // (values tie: ties by id, killmails without a value last).
    for (filter, condition) in &cases {
        for (order, order_by) in ORDERS {
            let expected = sql_sequence(&env, condition, order_by).await;
            assert!(
                !expected.is_empty(),
                "a case that selects something: {filter}"
            );
            assert_eq!(
                walk(&schema, filter, 200, order).await,
                expected,
                "{order} {filter}"
            );
        }
    }
    // Small pages too.
    let region_filter = json!({"regionIds": [region.to_string()]});
    for (order, order_by) in ORDERS {
        assert_eq!(
            walk(&schema, &region_filter, 7, order).await,
            sql_sequence(&env, &format!("k.region_id = {region}"), order_by).await,
            "{order} in pages of 7"
        );
    }
    env.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_a_bad_user_input_error_with_a_clear_message() {
    let env = TestEnv::new().await;
    let schema = schema(&env).await;
    for (query, mentions) in [
        (
            r#"{ killmails(after: "nonsense") { edges { cursor } } }"#,
            "not a cursor",
        ),
        (
            r#"{ killmails(orderBy: VALUE, after: "t1638316800000000i1") { edges { cursor } } }"#,
            "another order",
        ),
        (
            r#"{ killmail(id: "abc") { id } }"#,
            "not a positive 64-bit integer",
        ),
        (
            r#"{ killmails(first: 500) { edges { cursor } } }"#,
            "first must be between 0 and 200",
        ),
        (
            r#"{ killmails(filter: {regionIds: ["x"]}) { edges { cursor } } }"#,
            "region id",
        ),
        (r#"{ character(id: "-4") { id } }"#, "character id"),
    ] {
        let response = run(&schema, query, json!({})).await;
        let error = response
            .errors
            .first()
            .unwrap_or_else(|| panic!("an error for {query}"));
        assert!(
            error.message.contains(mentions),
            "{query}: {}",
            error.message
        );
        let code = error
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .map(|v| v.to_string());
        assert_eq!(code.as_deref(), Some("\"BAD_USER_INPUT\""), "{query}");
    }
    env.cleanup().await;
}

/// Asserts that a GraphQL response was refused with an error mentioning `phrase`.
fn refused_with(response: &Value, phrase: &str) {
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(phrase),
        "expected an error mentioning {phrase:?}: {response}"
    );
}

#[tokio::test]
async fn too_deep_too_complex_or_too_large_requests_are_refused_and_the_server_carries_on() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let http = reqwest::Client::new();
    let post = |body: Value| http.post(format!("{base}/graphql")).json(&body).send();

    // Pages of one, nested through their victims: 14 deep, and cheap (an item tree as deep
    // would be over the complexity limit first, each level priced as 4 items).
    let mut deep = "id".to_owned();
    for _ in 0..3 {
        deep = format!(
            "killmails(first: 1) {{ edges {{ node {{ victim {{ character {{ {deep} }} }} }} }} }}"
        );
    }
    let deep = format!("{{ {deep} }}");
    refused_with(
        &post(json!({"query": deep}))
            .await
            .expect("post")
            .json()
            .await
            .expect("JSON"),
        "nested too deep",
    );

    let complex = "{ killmails(first: 200) { edges { node { attackers { character { killmails(first: 200) { edges { node { id } } } } } } } } }";
    refused_with(
        &post(json!({"query": complex}))
            .await
            .expect("post")
            .json()
            .await
            .expect("JSON"),
        "too complex",
    );

    let huge = format!(
        "{{ killmails {{ edges {{ cursor }} }} }} #{}",
        "x".repeat(100_000)
    );
    let refused = post(json!({"query": huge})).await.expect("post");
    assert_eq!(refused.status(), 413);

    let fine: Value = post(json!({"query": "{ killmails(first: 1) { edges { cursor } } }"}))
        .await
        .expect("post")
        .json()
        .await
        .expect("JSON");
    assert_eq!(fine["data"]["killmails"]["edges"], json!([]));
    let page = http
        .get(format!("{base}/graphql"))
        .send()
        .await
        .expect("GraphiQL");
    assert!(
        page.text()
            .await
            .expect("page")
            .contains("/graphiql/graphiql.min.js")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn constellations_are_known_by_id_and_through_their_systems() {
    let env = TestEnv::new().await;
    let schema = schema(&env).await;
    let answer = data(
        &schema,
        r#"{ constellation(id: "20000020") { id name region { name } }
             solarSystem(id: "30000142") { constellation { name } }
             unknown: constellation(id: "1") { id } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        answer,
        json!({
            "constellation": {"id": "20000020", "name": "Kimotoro", "region": {"name": "The Forge"}},
            "solarSystem": {"constellation": {"name": "Kimotoro"}},
            "unknown": null
        })
    );
    env.cleanup().await;
}
