//! worker-enrich against the fake ESI, seen as a user sees it (GraphQL over HTTP on the real
//! server): ids first seen on a killmail described by themselves (names, affiliations,
//! corporations, alliances with their member counts, an item type newer than the static
//! data), ids ESI cannot name, a refresh by `queue`, ESI's 420 and 429 holding off two worker
//! processes at once, daily snapshots and their changes; and CORS on `/graphql`.

use std::time::Duration;

use chrono::{Duration as Days, Utc};
use killreport::config::EnrichArgs;
use killreport::enrich::Kind;
use killreport::killmail::{Killmail, Received, Source};
use killreport::queue::Topology;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::support::fakes::esi::FakeEsi;
use crate::support::{PATIENCE, TestEnv, wait_until};

const VICTIM: i64 = 2_112_000_001;
const ATTACKER: i64 = 2_112_000_002;
/// A character ESI cannot name: a names call holding it is refused whole.
const NAMELESS: i64 = 2_112_000_003;
const CORP_A: i64 = 98_000_001;
const CORP_B: i64 = 98_000_002;
/// A member of the alliance never seen on a killmail.
const CORP_C: i64 = 98_000_003;
const ALLIANCE: i64 = 99_000_001;
/// Item types the shipped static data does not have.
const NEW_MODULE: i64 = 2_000_001;
const NEW_WEAPON: i64 = 2_000_002;
const KILLMAIL: i64 = 130_000_001;

/// The entity queue of this test (`ENRICH_QUEUE`), and the variables worker-enrich runs with.
pub(crate) fn enrich_queue(env: &mut TestEnv) -> Topology {
    let queue = format!("entity.enrich.test.{}", env.id);
    env.vars.insert("ENRICH_QUEUE".into(), queue.clone());
    env.vars.insert("ENRICH_SCAN_SECS".into(), "1".into());
    env.vars.insert("DAILY_SNAPSHOTS".into(), "false".into());
    EnrichArgs {
        enrich_queue: queue,
    }
    .topology(&env.rabbit)
}

pub(crate) async fn cleanup(env: &TestEnv, topology: &Topology) {
    let (_connection, channel) = env.rabbitmq().await;
    let mut queues = vec![topology.queue.clone(), topology.dead_letter_queue()];
    queues.extend((0..topology.retry_delays.len()).map(|a| topology.retry_queue(a)));
    for queue in queues {
        let _ = channel
            .queue_delete(&queue, QueueDeleteOptions::default())
            .await;
    }
    env.cleanup().await;
}

/// A killmail of an hour ago: the victim of corporation A (in the alliance) with a module the
/// static data lacks, killed by a pilot of corporation B with a new weapon and by a pilot ESI
/// does not know.
fn killmail() -> Received {
    let time = (Utc::now() - Days::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let body = json!({
        "killmail_id": KILLMAIL, "killmail_time": time.to_string(), "solar_system_id": 30000142,
        "victim": {
            "character_id": VICTIM, "corporation_id": CORP_A, "alliance_id": ALLIANCE,
            "ship_type_id": 670, "damage_taken": 500,
            "items": [{"item_type_id": NEW_MODULE, "flag": 27, "singleton": 0, "quantity_destroyed": 1}]
        },
        "attackers": [
            {"character_id": ATTACKER, "corporation_id": CORP_B, "ship_type_id": 587,
             "weapon_type_id": NEW_WEAPON, "damage_done": 400, "final_blow": true,
             "security_status": 1.2},
            {"character_id": NAMELESS, "corporation_id": CORP_B, "damage_done": 100,
             "final_blow": false, "security_status": 0.0}
        ]
    });
    let killmail: Killmail = serde_json::from_value(body).expect("a killmail");
    Received {
        killmail,
        hash: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        zkb: None,
        source: Source::Import,
    }
}

fn fake_esi() -> FakeEsi {
    let esi = FakeEsi::default();
    esi.add_character(VICTIM, "Victim Pilot", CORP_A, Some(ALLIANCE));
    esi.add_character(ATTACKER, "Attacker Pilot", CORP_B, None);
    esi.add_corporation(CORP_A, "Corporation A", "CRPA", 120, Some(ALLIANCE));
    esi.add_corporation(CORP_B, "Corporation B", "CRPB", 7, None);
    esi.add_corporation(CORP_C, "Corporation C", "CRPC", 30, Some(ALLIANCE));
    esi.add_alliance(ALLIANCE, "The Alliance", "ALLY", &[CORP_A, CORP_C]);
    esi.add_type(NEW_MODULE, "Prototype Shield Booster", 40);
    esi.add_type(NEW_WEAPON, "Prototype Blaster", 74);
    esi
}

/// POSTs a query to the server at `url`; the whole answer.
async fn graphql(url: &str, query: &str, variables: Value) -> Value {
    reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .json(&json!({"query": query, "variables": variables}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("a GraphQL answer")
        .json()
        .await
        .expect("GraphQL JSON")
}

const ENTITIES: &str = r#"
query ($character: ID!, $killmail: ID!) {
  character(id: $character) {
    name
    corporation {
      name ticker memberCount dateFounded ceo { id }
      alliance {
        name ticker memberCount corporationCount
        executorCorporation { ticker }
      }
    }
  }
  killmail(id: $killmail) {
    victim {
      characterName corporationName allianceName
      corporation { ticker }
      alliance { ticker }
      items { itemType { name } }
    }
    attackers { character { name } corporation { ticker } weaponType { name } }
  }
}"#;

async fn entities(url: &str) -> Value {
    let answer = graphql(
        url,
        ENTITIES,
        json!({"character": VICTIM.to_string(), "killmail": KILLMAIL.to_string()}),
    )
    .await;
    assert_eq!(answer.get("errors"), None, "{answer}");
    answer["data"].clone()
}

#[tokio::test]
async fn ids_first_seen_on_a_killmail_are_described_and_shown_with_their_tickers() {
    let mut env = TestEnv::new().await;
    let topology = enrich_queue(&mut env);
    let esi = fake_esi();
    let _esi = esi.serve_for(&mut env).await;
    killreport::ingest::store(&env.pool, &[killmail()])
        .await
        .expect("stored");
    // The server loads the static data before the new types are known.
    let (_server, url) = env.start_server().await;
    let before = entities(&url).await;
    assert_eq!(before["character"]["corporation"]["ticker"], Value::Null);

    let _worker = env.spawn("worker-enrich", &[]);
    wait_until("the alliance described", PATIENCE, || async {
        entities(&url).await["character"]["corporation"]["alliance"]["memberCount"] == 150
    })
    .await;
    wait_until("the new types named", PATIENCE, || async {
        entities(&url).await["killmail"]["attackers"][0]["weaponType"]["name"] != Value::Null
    })
    .await;
    assert_eq!(
        entities(&url).await,
        json!({
            "character": {
                "name": "Victim Pilot",
                "corporation": {
                    "name": "Corporation A", "ticker": "CRPA", "memberCount": 120,
                    "dateFounded": "2010-05-01T12:00:00Z", "ceo": {"id": "90000001"},
                    "alliance": {
                        "name": "The Alliance", "ticker": "ALLY", "memberCount": 150,
                        "corporationCount": 2, "executorCorporation": {"ticker": "CRPA"}
                    }
                }
            },
            "killmail": {
                "victim": {
                    "characterName": "Victim Pilot", "corporationName": "Corporation A",
                    "allianceName": "The Alliance",
                    "corporation": {"ticker": "CRPA"}, "alliance": {"ticker": "ALLY"},
                    "items": [{"itemType": {"name": "Prototype Shield Booster"}}]
                },
                "attackers": [
                    {"character": {"name": "Attacker Pilot"}, "corporation": {"ticker": "CRPB"},
                     "weaponType": {"name": "Prototype Blaster"}},
                    {"character": {"name": null}, "corporation": {"ticker": "CRPB"},
                     "weaponType": null}
                ]
            }
        })
    );

    // ESI refused the names call holding the unknown pilot whole; it was split until the
    // pilot was alone, and the pilot is remembered rather than asked again with every killmail.
    let names: Vec<String> = esi
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/universe/names/"))
        .collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("/universe/names/ (3 ids)")
    );
    assert!(
        names.contains(&"/universe/names/ (1 ids)".to_owned()),
        "{names:?}"
    );
    let unnamed: Vec<i64> = sqlx::query_scalar("SELECT id FROM unnamed_ids ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .expect("unnamed ids");
    assert_eq!(unnamed, vec![NAMELESS]);

    // The live `killmail` event carries the names the store now has.
    let stored = killreport::db::killmails::load(
        &mut env.pool.acquire().await.expect("a connection"),
        &[killreport::killmail::KillmailId(KILLMAIL)],
    )
    .await
    .expect("loaded");
    let added = killreport::db::names::events(&env.pool, stored)
        .await
        .expect("events");
    let event = killreport::bus::Event::killmail(&added[0]);
    assert_eq!(event.data["victimName"], "Victim Pilot");
    assert_eq!(event.data["victimCorporationName"], "Corporation A");
    assert_eq!(event.data["victimAllianceName"], "The Alliance");

    // A corporation renamed in game is refreshed on demand.
    esi.add_corporation(CORP_B, "Corporation B", "NEWB", 9, None);
    let queued = env
        .run("queue", &["corporations", &CORP_B.to_string()])
        .await;
    assert!(queued.status.success(), "{queued:?}");
    wait_until("the new ticker", PATIENCE, || async {
        entities(&url).await["killmail"]["attackers"][0]["corporation"]["ticker"] == "NEWB"
    })
    .await;
    let refused = env.run("queue", &["corporations"]).await;
    assert!(!refused.status.success(), "ids or --all are required");
    cleanup(&env, &topology).await;
}

/// Waits until RabbitMQ counts `n` consumers on `queue`.
async fn wait_for_consumers(env: &TestEnv, queue: &str, n: u32) {
    let (connection, _) = env.rabbitmq().await;
    wait_until("the workers consuming", PATIENCE, || async {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        // A channel of its own each time: asking for a queue not declared yet closes it.
        let Ok(channel) = connection.create_channel().await else {
            return false;
        };
        channel
            .queue_declare(queue, passive, FieldTable::default())
            .await
            .is_ok_and(|q| q.consumer_count() >= n)
    })
    .await;
}

#[tokio::test]
async fn error_and_rate_limits_hold_off_every_worker_sharing_the_pause() {
    let mut env = TestEnv::new().await;
    env.rabbit.retry_delays_ms = vec![200, 200, 200, 200, 200];
    let topology = enrich_queue(&mut env);
    env.vars.insert("ENRICH_PREFETCH".into(), "1".into());
    let esi = FakeEsi::default();
    let corporations: Vec<i64> = (0..24).map(|n| 98_100_000 + n).collect();
    for id in &corporations {
        esi.add_corporation(*id, &format!("Corporation {id}"), "TICK", 10, None);
    }
    // Two listeners of one fake: each worker asks its own, so that requests say who sent them.
    let (first, second) = (esi.serve().await, esi.serve().await);
    env.vars.insert("ESI_BASE_URL".into(), first.url());
    let _one = env.spawn("worker-enrich", &[]);
    env.vars.insert("ESI_BASE_URL".into(), second.url());
    let _two = env.spawn("worker-enrich", &[]);
    wait_for_consumers(&env, &topology.queue, 2).await;
    let publisher = {
        let connection = killreport::queue::connect(&env.rabbit.rabbitmq_url, "test")
            .await
            .expect("RabbitMQ");
        let publisher = killreport::queue::Publisher::new(&connection, topology.clone())
            .await
            .expect("publisher");
        (connection, publisher)
    };

    // ESI's answer, and the pause it asks for.
    type Limit = (u16, &'static [(&'static str, &'static str)], Duration);
    let limits: [Limit; 2] = [
        (
            420,
            &[
                ("x-esi-error-limit-remain", "0"),
                ("x-esi-error-limit-reset", "3"),
            ],
            Duration::from_secs(3),
        ),
        (429, &[("retry-after", "2")], Duration::from_secs(2)),
    ];
    for (status, headers, pause) in limits {
        let asked_before = esi.entity_requests().len();
        esi.answer_next_entity_request(status, headers);
        for id in &corporations {
            killreport::enrich::queue_refresh(&publisher.1, Kind::Corporations, &[*id])
                .await
                .expect("queued");
        }
        // Every corporation described, and the one refused asked again.
        let wanted = asked_before + corporations.len() + 1;
        wait_until("every corporation asked for", PATIENCE, || async {
            esi.entity_requests().len() >= wanted
        })
        .await;
        let requests = esi.entity_requests().split_off(asked_before);
        let limited = requests[0].0;
        // Requests already on their way when ESI answered may still arrive just after it.
        let in_flight = Duration::from_millis(150);
        let during: Vec<&(tokio::time::Instant, String, String)> = requests
            .iter()
            .skip(1)
            .filter(|(at, ..)| *at > limited + in_flight && *at < limited + pause - in_flight)
            .collect();
        assert!(
            during.is_empty(),
            "{status}: requests while ESI asked for a pause of {pause:?}: {during:?}"
        );
        let hosts: std::collections::HashSet<&str> = requests
            .iter()
            .filter(|(at, ..)| *at >= limited + pause - in_flight)
            .map(|(_, _, host)| host.as_str())
            .collect();
        assert_eq!(
            hosts.len(),
            2,
            "{status}: both workers asked ESI after the pause"
        );
    }
    let described: i64 =
        sqlx::query_scalar("SELECT count(*) FROM corporations WHERE ticker = 'TICK'")
            .fetch_one(&env.pool)
            .await
            .expect("count");
    assert_eq!(described, corporations.len() as i64);
    let (_connection, channel) = env.rabbitmq().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let dead = channel
        .queue_declare(
            &topology.dead_letter_queue(),
            passive,
            FieldTable::default(),
        )
        .await
        .expect("the dead-letter queue");
    assert_eq!(dead.message_count(), 0, "nothing dead-lettered");
    cleanup(&env, &topology).await;
}

const SNAPSHOTS: &str = r#"
query ($alliance: ID!, $corporation: ID!) {
  alliance(id: $alliance) {
    memberCount corporationCount
    snapshots(days: 40) { date memberCount corporationCount }
    day: memberCountChange(days: 1)
    week: memberCountChange(days: 7)
    month: memberCountChange(days: 30)
    corporationsThisWeek: corporationCountChange(days: 7)
    corporationsThisYear: corporationCountChange(days: 365)
  }
  corporation(id: $corporation) {
    memberCount
    snapshots(days: 2) { date memberCount }
    day: memberCountChange(days: 1)
  }
}"#;

#[tokio::test]
async fn daily_snapshots_record_member_counts_and_show_their_changes() {
    let mut env = TestEnv::new().await;
    let topology = enrich_queue(&mut env);
    let esi = fake_esi();
    let _esi = esi.serve_for(&mut env).await;
    let today = Utc::now().date_naive();
    let day = |back: i64| today - Days::days(back);
    for (back, members, corporations) in [(30, 50, 1), (7, 100, 1), (1, 140, 2)] {
        sqlx::query(
            "INSERT INTO alliance_snapshots (alliance_id, day, member_count, corporation_count)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(ALLIANCE)
        .bind(day(back))
        .bind(members)
        .bind(corporations)
        .execute(&env.pool)
        .await
        .expect("an old snapshot");
    }
    sqlx::query(
        "INSERT INTO corporation_snapshots (corporation_id, day, member_count) VALUES ($1, $2, 110)",
    )
    .bind(CORP_A)
    .bind(day(1))
    .execute(&env.pool)
    .await
    .expect("an old snapshot");
    sqlx::query("INSERT INTO alliances (alliance_id) VALUES ($1)")
        .bind(ALLIANCE)
        .execute(&env.pool)
        .await
        .expect("a known alliance");

    let _worker = env.spawn("worker-enrich", &[]);
    let queued = env.run("queue", &["snapshot", "alliances"]).await;
    assert!(queued.status.success(), "{queued:?}");
    assert_eq!(
        String::from_utf8_lossy(&queued.stdout).trim(),
        format!("1 jobs queued on {}", topology.queue)
    );
    let (_server, url) = env.start_server().await;
    let variables = json!({"alliance": ALLIANCE.to_string(), "corporation": CORP_A.to_string()});
    wait_until("today's snapshot", PATIENCE, || async {
        graphql(&url, SNAPSHOTS, variables.clone()).await["data"]["alliance"]["memberCount"] == 150
    })
    .await;
    let date = |back: i64| day(back).format("%Y-%m-%d").to_string();
    assert_eq!(
        graphql(&url, SNAPSHOTS, variables.clone()).await,
        json!({"data": {
            "alliance": {
                "memberCount": 150, "corporationCount": 2,
                "snapshots": [
                    {"date": date(30), "memberCount": 50, "corporationCount": 1},
                    {"date": date(7), "memberCount": 100, "corporationCount": 1},
                    {"date": date(1), "memberCount": 140, "corporationCount": 2},
                    {"date": date(0), "memberCount": 150, "corporationCount": 2},
                ],
                "day": 10, "week": 50, "month": 100,
                "corporationsThisWeek": 1, "corporationsThisYear": null
            },
            "corporation": {
                "memberCount": 120,
                "snapshots": [
                    {"date": date(1), "memberCount": 110},
                    {"date": date(0), "memberCount": 120},
                ],
                "day": 10
            }
        }})
    );

    let bad = graphql(
        &url,
        "query ($a: ID!) { alliance(id: $a) { memberCountChange(days: 0) } }",
        json!({"a": ALLIANCE.to_string()}),
    )
    .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{bad}"
    );
    assert!(
        bad["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("days must be between 1 and 366")),
        "{bad}"
    );
    cleanup(&env, &topology).await;
}

/// A preflight for a POST of JSON from `origin`: status and the allowed origin, if any.
async fn preflight(url: &str, origin: &str) -> (u16, Option<String>) {
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, format!("{url}/graphql"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer");
    let allowed = response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().expect("text").to_owned());
    (response.status().as_u16(), allowed)
}

async fn post_from(url: &str, origin: &str) -> (Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .header("origin", origin)
        .json(&json!({"query": "{ solarSystem(id: 30000142) { name } }"}))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer");
    let allowed = response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().expect("text").to_owned());
    (allowed, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn browsers_on_the_allowed_origins_may_call_graphql_and_others_may_not() {
    let mut env = TestEnv::new().await;
    env.vars.insert(
        "CORS_ORIGINS".into(),
        "https://killboard.example, http://localhost:3000".into(),
    );
    let (_server, url) = env.start_server().await;
    let allowed = "https://killboard.example";
    assert_eq!(
        preflight(&url, allowed).await,
        (200, Some(allowed.to_owned()))
    );
    assert_eq!(
        preflight(&url, "http://localhost:3000").await.1.as_deref(),
        Some("http://localhost:3000")
    );
    let (status, refused) = preflight(&url, "https://evil.example").await;
    assert_eq!(
        refused, None,
        "a refused origin gets no allowance ({status})"
    );
    let (header, answer) = post_from(&url, allowed).await;
    assert_eq!(header.as_deref(), Some(allowed));
    assert_eq!(answer["data"]["solarSystem"]["name"], "Jita");
    assert_eq!(post_from(&url, "https://evil.example").await.0, None);

    // Without CORS_ORIGINS, no CORS headers at all.
    env.vars.remove("CORS_ORIGINS");
    let (_plain, plain) = env.start_server().await;
    assert_eq!(preflight(&plain, allowed).await.1, None);
    assert_eq!(post_from(&plain, allowed).await.0, None);
    env.cleanup().await;
}
