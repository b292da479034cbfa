//! `queue import`: an EVE Ref day imported whole by the real binary, once; a mix of every file
//! shape killmails come in, bad records rejected with their place and reason; new killmails
//! announced once, or not at all as history (`--no-announce`); records without a body queued
//! for ESI on request.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;
use killreport::import::{Announce, Importer, Summary};
use killreport::killmail::{Item, KillmailId, Source, Zkb};
use killreport::queue::IngestJob;
use killreport::queue::runner::Job;
use lapin::options::BasicGetOptions;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::fixtures::{self, archive_values, esi_body};
use crate::support::json_diff::{first_difference, normalise};
use crate::support::{TestEnv, assert_no_more_events, receive_events};

/// Runs `queue import` and returns its summary, as `label: value` pairs, failing unless it
/// succeeded.
async fn import(env: &TestEnv, args: &[&str]) -> HashMap<String, String> {
    let mut all = vec!["import"];
    all.extend(args);
    let output = env.run("queue", &all).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "queue {all:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter(|line| !line.starts_with(' '))
        .filter_map(|line| line.split_once(": "))
        .map(|(label, value)| (label.to_owned(), value.trim().to_owned()))
        .collect()
}

fn count(summary: &HashMap<String, String>, label: &str) -> usize {
    summary
        .get(label)
        .unwrap_or_else(|| panic!("no {label:?} in the summary {summary:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{label:?} in {summary:?}: {e}"))
}

fn path_arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

pub async fn stored_ids(env: &TestEnv) -> BTreeSet<i64> {
    sqlx::query_scalar("SELECT killmail_id FROM killmails")
        .fetch_all(&env.pool)
        .await
        .expect("listing stored killmails")
        .into_iter()
        .collect()
}

/// The ids of a directory of single killmails, named `<id>.json`.
fn ids_in(dir: &Path) -> BTreeSet<i64> {
    std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| {
            let name = e.expect("entry").file_name().to_string_lossy().into_owned();
            name.trim_end_matches(".json").parse().expect("an id")
        })
        .collect()
}

fn has_contents(items: &[Item]) -> bool {
    items.iter().any(|item| !item.items.is_empty())
}

#[tokio::test]
async fn an_eve_ref_day_is_imported_whole_once_with_its_containers_contents() {
    let env = TestEnv::new().await;
    let archive = fixtures::archive("2021-12-03");
    let members = archive_values(&archive);
    let archive_ids: BTreeSet<i64> = members
        .iter()
        .map(|(_, v)| v["killmail_id"].as_i64().expect("killmail_id"))
        .collect();
    assert_eq!(archive_ids.len(), 4158);

    let first = import(&env, &[path_arg(&archive)]).await;
    assert_eq!(count(&first, "files read"), 1);
    assert_eq!(count(&first, "killmails read"), 4158);
    assert_eq!(count(&first, "stored"), 4158);
    assert_eq!(count(&first, "already present"), 0);
    assert_eq!(count(&first, "rejected"), 0);
    assert_eq!(env.killmail_count().await, 4158);
    assert_eq!(stored_ids(&env).await, archive_ids);

    let second = import(&env, &[path_arg(&archive)]).await;
    assert_eq!(count(&second, "stored"), 0, "{second:?}");
    assert_eq!(count(&second, "already present"), 4158);
    assert_eq!(count(&second, "rejected"), 0);
    assert_eq!(env.killmail_count().await, 4158);

    // A killmail whose cargo container held items: the contents come back inside it.
    let id = 97_089_263;
    let (_, input) = members
        .iter()
        .find(|(_, v)| v["killmail_id"] == id)
        .expect("the killmail in the archive");
    let mut db = env.pool.acquire().await.expect("a connection");
    let stored = killreport::db::killmails::load(&mut db, &[KillmailId(id)])
        .await
        .expect("loading")
        .remove(0);
    assert!(
        has_contents(&stored.killmail.victim.items),
        "a container with contents"
    );
    assert_eq!(stored.hash, input["killmail_hash"].as_str().expect("hash"));
    let actual = normalise(serde_json::to_value(&stored.killmail).expect("JSON"));
    let expected = normalise(esi_body(input));
    assert_eq!(first_difference(&expected, &actual, ""), None);
    env.cleanup().await;
}

/// A scratch directory for one test's input files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(env: &TestEnv) -> Self {
        let dir = std::env::temp_dir().join(format!("killreport-import-{}", env.id));
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a directory");
        }
        std::fs::write(&path, contents).expect("writing a scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn upstream(name: &str) -> PathBuf {
    fixtures::dir().join("upstream").join(name)
}

fn read_value(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("a fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn compact(value: &Value) -> String {
    serde_json::to_string(value).expect("JSON")
}

#[tokio::test]
async fn a_mix_of_file_shapes_imports_and_bad_records_are_rejected_with_their_place_and_reason() {
    let env = TestEnv::new().await;
    let scratch = Scratch::new(&env);
    let singles = fixtures::killmail_values();
    let from = |id: i64| {
        singles
            .iter()
            .find(|v| v["killmail_id"] == id)
            .expect("a fixture")
            .clone()
    };

    // A directory of single killmails, as EVE Ref writes them, and a file to skip.
    let old_day = fixtures::dir().join("killmails-2021-11-28");
    for entry in std::fs::read_dir(&old_day).expect("fixtures") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).expect("fixture");
        scratch.write(&format!("singles/2021/11/{name}"), &text);
    }
    scratch.write("singles/README.txt", "not a killmail");
    // An array of killmails.
    let array = Value::Array(vec![from(97_089_202), from(97_089_203), from(97_089_204)]);
    scratch.write("array.json", &compact(&array));
    // One record per line, in every shape, some of them bad.
    let r2z2_path = upstream("r2z2/r2z2-ephemeral-96599404-killmail-134265477.aa-killtracker.json");
    let r2z2 = read_value(&r2z2_path);
    let redisq = read_value(&upstream(
        "redisq/redisq-package-119455394.andimiller-killmail-router.json",
    ));
    let zkb_only = read_value(&upstream(
        "redisq/redisq-package-130678514-zkb-only.zkillboard-redisq-readme.json",
    ));
    let mut bad_hash = from(97_089_207);
    bad_hash["killmail_hash"] = "xyz".into();
    let lines = [
        compact(&from(97_089_206)),
        compact(&r2z2),
        compact(&redisq),
        r#"{"killmail_id": 97089207, "killmail_time": "#.to_owned(),
        String::new(),
        compact(&zkb_only),
        compact(&bad_hash),
        compact(&Value::Array(vec![from(97_089_208), from(97_089_211)])),
        compact(&from(97_089_202)),
        compact(&serde_json::json!({"package": null})),
    ];
    let jsonl = scratch.write("feed.jsonl", &(lines.join("\n") + "\n"));

    let importer = Importer {
        pool: env.pool.clone(),
        announce: Announce::BySweep,
        publisher: None,
        batch_size: 5,
        max_reasons: 10,
    };
    // The R2Z2 file is named twice: on its own and within feed.jsonl.
    let paths = vec![
        scratch.0.join("singles"),
        scratch.0.join("array.json"),
        jsonl.clone(),
        r2z2_path,
    ];
    let summary = importer
        .import(&paths, &ProgressBar::hidden(), &CancellationToken::new())
        .await
        .expect("the import runs to the end");

    let place = |line: usize| format!("{} line {line}", jsonl.display());
    let rejections: Vec<(String, String)> = summary
        .rejections
        .iter()
        .map(|r| (r.place.clone(), r.reason.clone()))
        .collect();
    assert_eq!(rejections.len(), 3, "{rejections:#?}");
    for ((place, reason), (expected_place, expected_reason)) in rejections.iter().zip([
        (place(4), "not JSON"),
        (place(6), "must be fetched from ESI"),
        (place(7), "is not a 40-character hex string"),
    ]) {
        assert_eq!(place, &expected_place);
        assert!(
            reason.contains(expected_reason),
            "{place}: {reason:?} should say {expected_reason:?}"
        );
    }
    let expected = Summary {
        files: 8 + 3,
        broken_files: 0,
        read: 8 + 3 + 9 + 1,
        stored: 8 + 3 + 5,
        already_present: 2,
        queued: 0,
        rejected: 3,
        rejections: summary.rejections.clone(),
        elapsed: summary.elapsed,
        interrupted: false,
    };
    assert_eq!(summary, expected);

    let mut ids: BTreeSet<i64> = [
        97_089_202, 97_089_203, 97_089_204, 97_089_206, 97_089_208, 97_089_211,
    ]
    .into_iter()
    .collect();
    ids.extend([134_265_477, 119_455_394]);
    ids.extend(ids_in(&old_day));
    assert_eq!(stored_ids(&env).await, ids);

    // The feeds' killmails keep their zkb block and hash.
    let mut db = env.pool.acquire().await.expect("a connection");
    let loaded = killreport::db::killmails::load(
        &mut db,
        &[KillmailId(134_265_477), KillmailId(119_455_394)],
    )
    .await
    .expect("loading");
    assert_eq!(loaded[0].zkb, Some(Zkb(r2z2["zkb"].clone())));
    assert_eq!(loaded[0].hash, r2z2["hash"].as_str().expect("hash"));
    assert_eq!(
        normalise(serde_json::to_value(&loaded[0].killmail).expect("JSON")),
        normalise(r2z2["esi"].clone())
    );
    assert_eq!(loaded[1].zkb, Some(Zkb(redisq["package"]["zkb"].clone())));
    let source: String =
        sqlx::query_scalar("SELECT source FROM killmails WHERE killmail_id = 134265477")
            .fetch_one(&env.pool)
            .await
            .expect("source");
    assert_eq!(source, Source::Import.as_str());
    env.cleanup().await;
}

#[tokio::test]
async fn new_killmails_are_announced_once_each_and_a_second_import_announces_nothing() {
    let env = TestEnv::new().await;
    let mut events = env.subscribe().await;
    let dir = fixtures::dir().join("killmails-2021-11-28");
    let expected = ids_in(&dir);

    let first = import(&env, &[path_arg(&dir)]).await;
    assert_eq!(count(&first, "stored"), expected.len());
    let received = receive_events(&mut events, expected.len()).await;
    let ids: BTreeSet<i64> = received.iter().map(|e| e.killmail.killmail_id.0).collect();
    assert_eq!(ids, expected, "one event per stored killmail");
    assert!(
        received.windows(2).all(|w| w[0].seq < w[1].seq),
        "events in ingest order"
    );
    assert!(
        received
            .iter()
            .all(|e| e.hash.as_deref().is_some_and(|h| h.len() == 40))
    );
    assert_no_more_events(&mut events, Duration::from_secs(2)).await;

    let second = import(&env, &[path_arg(&dir)]).await;
    assert_eq!(count(&second, "stored"), 0);
    assert_eq!(count(&second, "already present"), expected.len());
    assert_no_more_events(&mut events, Duration::from_secs(2)).await;
    env.cleanup().await;
}

/// History from files: with `--no-announce` nothing is announced, now or later, and Redis is
/// not needed.
#[tokio::test]
async fn an_import_with_no_announce_stores_history_without_announcing_it() {
    let mut env = TestEnv::new().await;
    let mut events = env.subscribe().await;
    let dir = fixtures::dir().join("killmails-2021-11-28");
    let expected = ids_in(&dir);
    // Nothing listens there: an import that tried Redis would fail.
    env.vars
        .insert("REDIS_URL".into(), "redis://127.0.0.1:9".into());

    let first = import(&env, &["--no-announce", path_arg(&dir)]).await;
    assert_eq!(count(&first, "stored"), expected.len());
    assert_eq!(stored_ids(&env).await, expected);
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_announcements")
        .fetch_one(&env.pool)
        .await
        .expect("counting pending announcements");
    assert_eq!(pending, 0, "nothing left for worker-killmails' sweep");
    assert_no_more_events(&mut events, Duration::from_secs(2)).await;

    let again = import(&env, &["--no-announce", path_arg(&dir)]).await;
    assert_eq!(count(&again, "already present"), expected.len());
    env.cleanup().await;
}

#[tokio::test]
async fn a_package_without_its_killmail_is_queued_for_esi_when_asked() {
    let env = TestEnv::new().await;
    let package =
        upstream("redisq/redisq-package-130678514-zkb-only.zkillboard-redisq-readme.json");
    let zkb = read_value(&package)["package"]["zkb"].clone();

    let summary = import(&env, &["--queue-missing", path_arg(&package)]).await;
    assert_eq!(count(&summary, "queued for ESI"), 1, "{summary:?}");
    assert_eq!(count(&summary, "rejected"), 0);
    assert_eq!(env.killmail_count().await, 0);

    let (_connection, channel) = env.rabbitmq().await;
    let message = channel
        .basic_get(&env.topology().queue, BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("a job on the queue");
    let job = IngestJob::decode(&message.delivery.data).expect("a killmail.ingest job");
    assert_eq!(job.killmail_id, KillmailId(130_678_514));
    assert_eq!(Some(job.hash.as_str()), zkb["hash"].as_str());
    assert_eq!(job.killmail, None, "worker-killmails fetches it from ESI");
    assert_eq!(job.zkb, Some(Zkb(zkb)));
    assert_eq!(job.source, Source::Import);
    env.cleanup().await;
}

#[tokio::test]
async fn a_file_that_cannot_be_opened_fails_the_import_before_anything_is_stored() {
    let env = TestEnv::new().await;
    let archive = fixtures::archive("2021-12-03");
    let missing = fixtures::dir().join("no-such-file.json");
    let output = env
        .run("queue", &["import", path_arg(&archive), path_arg(&missing)])
        .await;
    assert!(!output.status.success(), "a missing file fails the import");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no-such-file.json"),
        "the error names the file: {stderr}"
    );
    assert_eq!(env.killmail_count().await, 0);
    env.cleanup().await;
}
