//! `killmailAdded` over real WebSockets, fed by worker-killmails through Redis: both protocols
//! get every killmail exactly once, filters get exactly their matches, and a client resuming
//! with `after` gets what it missed, then live ones, none twice.

use std::collections::HashMap;
use std::time::Duration;

use tokio::process::Child;

use killreport::killmail::{Killmail, Zkb};
use killreport::queue::{IngestJob, Publisher};
use serde_json::{Value, json};

use crate::support::fakes::esi::FakeEsi;
use crate::support::ws::{Protocol, WsClient, graphql_url};
use crate::support::{TestEnv, fixtures};

const FIELDS: &str = "killmailId killmailTime cursor solarSystem { id regionId }
    victim { characterName shipTypeName damageTaken shipType { id } character { id } }
    attackers { damageDone finalBlow alliance { id } } zkb { totalValue }";

/// The DESIGN.md example, as pasted into GraphiQL.
const EXAMPLE: &str = "subscription OnNewKillmail {
  killmailAdded {
    killmailId
    killmailTime
    victim {
      characterName
      shipTypeName
    }
  }
}";

/// Jobs for `n` real killmails, each with a made-up but plausible zkb value.
fn jobs(n: usize) -> Vec<(IngestJob, Killmail)> {
    jobs_for(fixtures::killmails().into_iter().take(n))
}

/// Jobs for `killmails`, the i-th with a zkb total value of i × 10⁸.
fn jobs_for(killmails: impl Iterator<Item = (Killmail, String)>) -> Vec<(IngestJob, Killmail)> {
    killmails
        .enumerate()
        .map(|(i, (killmail, hash))| {
            let zkb = Zkb(json!({"hash": hash, "totalValue": (i as f64) * 1.0e8, "npc": false, "solo": false, "awox": false, "points": 1, "labels": []}));
            (fixtures::job_with(killmail.clone(), hash, Some(zkb), true), killmail)
        })
        .collect()
}

/// A fake ESI that names every character, corporation and alliance of the killmails.
fn esi_naming(killmails: &[Killmail]) -> FakeEsi {
    let esi = FakeEsi::default();
    for id in killmails.iter().flat_map(Killmail::entity_ids) {
        esi.add_name(id, "character", &format!("Pilot {id}"));
    }
    esi
}

async fn publish(publisher: &Publisher, jobs: &[(IngestJob, Killmail)]) {
    for (job, _) in jobs {
        publisher.publish(job).await.expect("publish");
    }
}

/// Checks a received killmail against its source.
fn assert_same(got: &Value, source: &Killmail, zkb_total: f64) {
    assert_eq!(got["killmailId"], source.killmail_id.to_string());
    assert_eq!(got["solarSystem"]["id"], source.solar_system_id.to_string());
    assert_eq!(
        got["victim"]["shipType"]["id"],
        source.victim.ship_type_id.to_string()
    );
    assert_eq!(got["victim"]["damageTaken"], source.victim.damage_taken);
    assert_eq!(
        got["victim"]["character"]["id"],
        source
            .victim
            .character_id
            .map_or(Value::Null, |id| json!(id.to_string()))
    );
    let attackers = got["attackers"].as_array().expect("attackers");
    assert_eq!(attackers.len(), source.attackers.len());
    for (a, s) in attackers.iter().zip(&source.attackers) {
        assert_eq!(a["damageDone"], s.damage_done);
        assert_eq!(a["finalBlow"], s.final_blow);
    }
    assert_eq!(got["zkb"]["totalValue"].as_f64(), Some(zkb_total));
    assert!(got["victim"]["shipTypeName"].is_string());
}

async fn receive(client: &mut WsClient, id: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(client.next_data(id).await["killmailAdded"].clone());
    }
    out
}

#[tokio::test]
async fn both_protocols_get_every_killmail_once_and_filters_get_exactly_their_matches() {
    let mut env = TestEnv::new().await;
    let jobs = jobs(40);
    let killmails: Vec<Killmail> = jobs.iter().map(|(_, k)| k.clone()).collect();
    let esi = esi_naming(&killmails);
    let _served = esi.serve_for(&mut env).await;
    let (_server, base) = env.start_server().await;
    let ws_url = graphql_url(&base);
    let _worker = env.spawn("worker-killmails", &[]);
    let publisher = env.publisher().await;

    // What the filters should select, worked out from the source killmails.
    let regions: HashMap<i64, i64> =
        sqlx::query_as("SELECT solar_system_id, region_id FROM solar_systems")
            .fetch_all(&env.pool)
            .await
            .expect("regions")
            .into_iter()
            .collect();
    let alliance = killmails
        .iter()
        .flat_map(|k| k.attackers.iter().filter_map(|a| a.alliance_id))
        .next()
        .expect("an attacker alliance");
    let region = regions[&killmails[0].solar_system_id];
    let min_value = 2.0e9;
    let expect = |pass: &dyn Fn(usize, &Killmail) -> bool| -> Vec<String> {
        killmails
            .iter()
            .enumerate()
            .filter(|(i, k)| pass(*i, k))
            .map(|(_, k)| k.killmail_id.to_string())
            .collect()
    };
    let filters = [
        (
            json!({"allianceIds": [alliance.to_string()], "involvement": "ATTACKER"}),
            expect(&|_, k| k.attackers.iter().any(|a| a.alliance_id == Some(alliance))),
        ),
        (
            json!({"regionIds": [region.to_string()]}),
            expect(&|_, k| regions[&k.solar_system_id] == region),
        ),
        (
            json!({"minValue": min_value}),
            expect(&|i, _| (i as f64) * 1.0e8 >= min_value),
        ),
    ];

    let mut modern = WsClient::connect(&ws_url, Protocol::TransportWs).await;
    let mut legacy = WsClient::connect(&ws_url, Protocol::LegacyWs).await;
    let mut example = WsClient::connect(&ws_url, Protocol::TransportWs).await;
    let query = format!("subscription {{ killmailAdded {{ {FIELDS} }} }}");
    modern.subscribe("all", &query, json!({})).await;
    legacy.subscribe("all", &query, json!({})).await;
    example.subscribe("example", EXAMPLE, json!({})).await;
    let filtered_query =
        format!("subscription($f: KillmailFilter) {{ killmailAdded(filter: $f) {{ {FIELDS} }} }}");
    let mut filtered = Vec::new();
    for (filter, expected) in &filters {
        assert!(
            !expected.is_empty() && expected.len() < killmails.len(),
            "a selective filter: {filter}"
        );
        let mut client = WsClient::connect(&ws_url, Protocol::TransportWs).await;
        client
            .subscribe("f", &filtered_query, json!({"f": filter}))
            .await;
        filtered.push(client);
    }
    // Subscriptions are registered asynchronously after `subscribe`; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&publisher, &jobs).await;

    for client in [&mut modern, &mut legacy] {
        let got = receive(client, "all", killmails.len()).await;
        for (i, (got, source)) in got.iter().zip(&killmails).enumerate() {
            assert_same(got, source, (i as f64) * 1.0e8);
        }
        client.assert_quiet(Duration::from_millis(500)).await;
    }
    let named = receive(&mut example, "example", killmails.len()).await;
    for (got, source) in named.iter().zip(&killmails) {
        assert_eq!(got["killmailId"], source.killmail_id.to_string());
        assert!(got["victim"]["shipTypeName"].is_string(), "{got}");
        if let Some(id) = source.victim.character_id {
            assert_eq!(got["victim"]["characterName"], format!("Pilot {id}"));
        }
    }
    for (client, (filter, expected)) in filtered.iter_mut().zip(&filters) {
        let got: Vec<String> = receive(client, "f", expected.len())
            .await
            .iter()
            .map(|k| k["killmailId"].as_str().expect("id").to_owned())
            .collect();
        assert_eq!(&got, expected, "filter {filter}");
        client.assert_quiet(Duration::from_millis(500)).await;
    }
    env.cleanup().await;
}

#[tokio::test]
async fn the_largest_fights_arrive_whole_in_both_protocols() {
    let mut env = TestEnv::new().await;
    // The killmails with the most attackers: hundreds each, so every message is sent in
    // several fragments.
    let mut largest = fixtures::killmails();
    largest.sort_by_key(|(k, _)| std::cmp::Reverse(k.attackers.len()));
    let jobs = jobs_for(largest.into_iter().take(3));
    let (_server, ws_url, _worker, publisher) = pipeline(&mut env).await;
    let document = format!("subscription {{ killmailAdded {{ {FIELDS} }} }}");
    let mut clients = Vec::new();
    for protocol in [Protocol::TransportWs, Protocol::LegacyWs] {
        let mut client = WsClient::connect(&ws_url, protocol).await;
        client.subscribe("big", &document, json!({})).await;
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&publisher, &jobs).await;
    for client in &mut clients {
        let got = receive(client, "big", jobs.len()).await;
        for (i, (got, (_, source))) in got.iter().zip(&jobs).enumerate() {
            assert_same(got, source, i as f64 * 1.0e8);
        }
        let size = got[0].to_string().len();
        let fragment = killreport::ws::protocol::FRAGMENT;
        assert!(size > 2 * fragment, "{size} bytes is not several fragments");
    }
    env.cleanup().await;
}

/// The document of the resuming tests: a cursor as a variable, as clients send it.
const RESUMABLE: &str =
    "subscription($after: String) { killmailAdded(after: $after) { killmailId cursor } }";

/// A server and a worker-killmails on `env`: the server, its WebSocket URL, the worker and a
/// publisher of jobs for it.
async fn pipeline(env: &mut TestEnv) -> (Child, String, Child, Publisher) {
    let (server, base) = env.start_server().await;
    let ws_url = graphql_url(&base);
    let worker = env.spawn("worker-killmails", &[]);
    (server, ws_url, worker, env.publisher().await)
}

#[tokio::test]
async fn a_client_resuming_with_after_gets_what_it_missed_then_live_ones_none_twice() {
    let mut env = TestEnv::new().await;
    let jobs = jobs(30);
    let (_server, ws_url, _worker, publisher) = pipeline(&mut env).await;

    let mut client = WsClient::connect(&ws_url, Protocol::TransportWs).await;
    client.subscribe("1", RESUMABLE, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&publisher, &jobs[..10]).await;
    let first = receive(&mut client, "1", 10).await;
    let last_cursor = first[9]["cursor"].as_str().expect("cursor").to_owned();
    client.close().await;

    // Missed while away.
    publish(&publisher, &jobs[10..20]).await;
    let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
    while env.killmail_count().await < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the missed killmails were never stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut resumed = WsClient::connect(&ws_url, Protocol::TransportWs).await;
    resumed
        .subscribe("2", RESUMABLE, json!({"after": last_cursor}))
        .await;
    let missed = receive(&mut resumed, "2", 10).await;
    publish(&publisher, &jobs[20..]).await;
    let live = receive(&mut resumed, "2", 10).await;
    resumed.assert_quiet(Duration::from_millis(700)).await;

    let ids: Vec<String> = first
        .iter()
        .chain(&missed)
        .chain(&live)
        .map(|k| k["killmailId"].as_str().expect("id").to_owned())
        .collect();
    let expected: Vec<String> = jobs
        .iter()
        .map(|(j, _)| j.killmail_id.to_string())
        .collect();
    assert_eq!(ids, expected, "every killmail once, in order");
    let cursors: Vec<i64> = first
        .iter()
        .chain(&missed)
        .chain(&live)
        .map(|k| {
            k["cursor"]
                .as_str()
                .expect("cursor")
                .parse()
                .expect("number")
        })
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "cursors increase: {cursors:?}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn clients_resuming_while_killmails_keep_coming_get_each_one_after_their_cursor_once() {
    let mut env = TestEnv::new().await;
    let jobs = jobs(120);
    // The feed holds at most one result for a client catching up: when more come while it
    // replays, it replays further (both ways of handing over are taken).
    env.vars.insert("WS_CATCH_UP_HOLD".into(), "1".into());
    let (_server, ws_url, _worker, publisher) = pipeline(&mut env).await;
    // A live subscriber on the same document: resuming clients catch up alone, then join the
    // execution it runs.
    let mut watcher = WsClient::connect(&ws_url, Protocol::TransportWs).await;
    watcher.subscribe("w", RESUMABLE, json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let feeding = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            for (job, _) in &jobs {
                publisher.publish(job).await.expect("publish");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // While killmails keep coming, clients resume from cursors a little behind.
    let mut seen = Vec::new();
    let mut resumers = Vec::new();
    for round in 0..5 {
        seen.extend(receive(&mut watcher, "w", 20).await);
        let from = seen.len() - 1 - 9 * round;
        let cursor = seen[from]["cursor"].as_str().expect("cursor").to_owned();
        let mut client = WsClient::connect(&ws_url, Protocol::TransportWs).await;
        client
            .subscribe("r", RESUMABLE, json!({"after": cursor}))
            .await;
        resumers.push((from, client));
    }
    seen.extend(receive(&mut watcher, "w", jobs.len() - seen.len()).await);
    feeding.await.expect("publishing");

    let ids = |items: &[Value]| -> Vec<String> {
        items
            .iter()
            .map(|k| k["killmailId"].as_str().expect("id").to_owned())
            .collect()
    };
    for (from, mut client) in resumers {
        let got = receive(&mut client, "r", jobs.len() - from - 1).await;
        assert_eq!(
            ids(&got),
            ids(&seen[from + 1..]),
            "resumed after killmail {from}"
        );
        client.assert_quiet(Duration::from_millis(300)).await;
    }
    watcher.assert_quiet(Duration::from_millis(300)).await;
    env.cleanup().await;
}
