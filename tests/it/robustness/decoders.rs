//! The decoders of everything that comes from outside, fuzzed with proptest: the
//! `killmail.ingest` job, R2Z2's objects and sequence pointer, RedisQ's answers and ESI's
//! killmails. Inputs are arbitrary bytes, arbitrary JSON, and real fixtures mutated byte by byte
//! or field by field (`support::fuzz`). Whatever comes in, a decoder returns: an error with a reason to dead-letter
//! with, or a value the rest of the pipeline accepts as it is.
//!
//! A refused job must be refused for what is wrong with it, and what a decoder accepts must be
//! storable: the decoded jobs are stored and read back.
//!
//! Each decoder runs [`CASES`] cases per `cargo test`; set `PROPTEST_CASES` to run more.

use std::sync::LazyLock;

use killreport::db::killmails::{Encoded, load, store_encoded};
use killreport::esi::{EsiError, decode_killmail};
use killreport::feed::{r2z2, redisq};
use killreport::killmail::{Killmail, KillmailId, Received};
use killreport::queue::IngestJob;
use killreport::queue::runner::Job;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use crate::support::fakes::r2z2 as fake_r2z2;
use crate::support::fuzz::input;
use crate::support::{TestEnv, fixtures};

/// Cases per decoder: together they stay within a few seconds in a debug build.
const CASES: u32 = 1000;

fn config() -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES, when set, overrides this.
        cases: CASES,
        // A failure prints its input; nothing is written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Real inputs of each decoder, to mutate.
struct Corpus {
    jobs: Vec<Vec<u8>>,
    objects: Vec<Vec<u8>>,
    pointers: Vec<Vec<u8>>,
    packages: Vec<Vec<u8>>,
    killmails: Vec<Vec<u8>>,
}

static CORPUS: LazyLock<Corpus> = LazyLock::new(|| {
    let upstream = fixtures::dir().join("upstream");
    let read = |path: &str| std::fs::read(upstream.join(path)).expect("an upstream fixture");
    // A few small killmails, and the largest, whose items nest in containers.
    let day = std::fs::read_dir(fixtures::dir().join("killmails-2021-12-03"))
        .expect("the fixtures")
        .count();
    let mut all = fixtures::esi_killmails(day);
    let largest = all
        .iter()
        .max_by_key(|(esi, _)| esi.to_string().len())
        .cloned()
        .expect("fixtures");
    all.truncate(5);
    all.push(largest);

    let mut jobs = Vec::new();
    let mut objects = vec![read(
        "r2z2/r2z2-ephemeral-96599404-killmail-134265477.aa-killtracker.json",
    )];
    let mut killmails = Vec::new();
    for (i, (esi, hash)) in all.iter().enumerate() {
        let killmail: Killmail = serde_json::from_value(esi.clone()).expect("an ESI killmail");
        let zkb = fake_r2z2::zkb(esi, hash);
        let job = json!({"killmail_id": killmail.killmail_id, "hash": hash, "killmail": esi,
                         "zkb": zkb, "source": "redisq"});
        jobs.push(serde_json::to_vec(&job).expect("JSON"));
        let bare = json!({"killmail_id": killmail.killmail_id, "hash": hash, "source": "user"});
        jobs.push(serde_json::to_vec(&bare).expect("JSON"));
        let sequence = 96_599_404 + i64::try_from(i).expect("small");
        let object = fake_r2z2::object(sequence, esi, hash);
        objects.push(serde_json::to_vec(&object).expect("JSON"));
        killmails.push(serde_json::to_vec(esi).expect("JSON"));
    }
    let swagger: Value =
        serde_json::from_slice(&read("esi/esi-swagger-1.36-response-examples.json")).expect("JSON");
    let example = &swagger["GET /killmails/{killmail_id}/{killmail_hash}/"];
    killmails.push(serde_json::to_vec(example).expect("JSON"));
    Corpus {
        jobs,
        objects,
        pointers: vec![
            br#"{"sequence": 96599404}"#.to_vec(),
            br#"{"sequence_id": 7}"#.to_vec(),
        ],
        packages: vec![
            read("redisq/redisq-package-119455394.andimiller-killmail-router.json"),
            read("redisq/redisq-package-130678514-zkb-only.zkillboard-redisq-readme.json"),
            br#"{"package": null}"#.to_vec(),
        ],
        killmails,
    }
});

/// A refused job was refused for what is wrong with it, found here independently: a body that
/// is no job at all for serde's reason (with where it stopped), else the first of a hash that
/// is no 40-hex string, a killmail of another id, or what the killmail's own check says.
fn refused_for_what_is_wrong(body: &[u8], reason: &str) -> Result<(), TestCaseError> {
    let job = match serde_json::from_slice::<IngestJob>(body) {
        Err(error) => {
            prop_assert_eq!(reason, format!("not a killmail.ingest job: {error}"));
            prop_assert!(
                reason.contains("line") || reason.contains("EOF"),
                "{}",
                reason
            );
            return Ok(());
        }
        Ok(job) => job,
    };
    let hex = job.hash.len() == 40 && job.hash.bytes().all(|b| b.is_ascii_hexdigit());
    match &job.killmail {
        _ if !hex => prop_assert!(
            reason.starts_with("hash ") && reason.ends_with("is not a 40-character hex string"),
            "{}",
            reason
        ),
        Some(killmail) if killmail.killmail_id != job.killmail_id => prop_assert_eq!(
            reason,
            format!(
                "job is for killmail {} but carries killmail {}",
                job.killmail_id, killmail.killmail_id
            )
        ),
        Some(killmail) => prop_assert_eq!(Err(reason.to_owned()), killmail.validate()),
        None => prop_assert!(
            false,
            "a well-formed job without a body was refused: {}",
            reason
        ),
    }
    Ok(())
}

/// A decoded job is one the worker takes as it is: a 40-hex hash, a checked killmail of its
/// own id, and the same job again after encoding (the feeds queue what they decoded).
fn check_job(decoded: Result<IngestJob, String>) -> Result<(), TestCaseError> {
    let job = match decoded {
        Ok(job) => job,
        Err(reason) => {
            prop_assert!(!reason.trim().is_empty(), "a rejection without a reason");
            return Ok(());
        }
    };
    prop_assert!(job.hash.len() == 40 && job.hash.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(killmail) = &job.killmail {
        prop_assert_eq!(killmail.killmail_id, job.killmail_id);
        prop_assert_eq!(killmail.validate(), Ok(()));
    }
    prop_assert_eq!(IngestJob::decode(&job.encode()), Ok(job));
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzzed_ingest_jobs_decode_or_are_refused_with_a_reason(body in input(CORPUS.jobs.clone())) {
        let decoded = IngestJob::decode(&body);
        if let Err(reason) = &decoded {
            refused_for_what_is_wrong(&body, reason)?;
        }
        check_job(decoded)?;
    }

    #[test]
    fn fuzzed_r2z2_objects_decode_or_are_refused_with_a_reason(body in input(CORPUS.objects.clone())) {
        check_job(r2z2::decode_object(&body))?;
    }

    #[test]
    fn fuzzed_r2z2_pointers_decode_or_are_refused_with_a_reason(body in input(CORPUS.pointers.clone())) {
        if let Err(reason) = r2z2::decode_pointer(&body) {
            prop_assert!(!reason.trim().is_empty());
        }
    }

    #[test]
    fn fuzzed_redisq_answers_decode_or_are_refused_with_a_reason(body in input(CORPUS.packages.clone())) {
        match redisq::decode_package(&body) {
            Ok(None) => {}
            Ok(Some(job)) => check_job(Ok(job))?,
            Err(redisq::PackageError::NotRedisq(reason) | redisq::PackageError::Malformed(reason)) => {
                prop_assert!(!reason.trim().is_empty());
            }
        }
    }

    #[test]
    fn fuzzed_esi_killmails_decode_or_are_refused_for_good_with_a_reason(
        body in input(CORPUS.killmails.clone()),
        asked_for_another in prop::bool::weighted(0.1),
    ) {
        // The id the body names, as when ESI answers the request for it, or now and then
        // another.
        let named = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["killmail_id"].as_i64())
            .unwrap_or(1);
        let id = KillmailId(if asked_for_another { named.wrapping_add(1) } else { named });
        match decode_killmail(id, &body) {
            Ok(killmail) => {
                prop_assert_eq!(killmail.killmail_id, id);
                prop_assert_eq!(killmail.validate(), Ok(()));
                let again = serde_json::to_vec(&killmail).expect("a killmail serializes");
                prop_assert_eq!(decode_killmail(id, &again).ok(), Some(killmail));
            }
            Err(EsiError::Permanent(reason)) => prop_assert!(!reason.trim().is_empty()),
            Err(EsiError::Transient(reason)) => {
                prop_assert!(false, "a body ESI sent is no outage: {}", reason);
            }
        }
    }
}

/// Fuzzed jobs drawn for the store: about one in sixteen decodes with a killmail.
const STORED_CASES: usize = 3000;

/// Whatever the decoder accepts, the store takes: each decoded job with a killmail is stored in
/// a transaction of its own (so one failure does not hide another) and read back.
#[tokio::test]
async fn fuzzed_jobs_that_decode_can_be_stored_and_read_back() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::TestRunner;

    let env = TestEnv::new().await;
    let strategy = input(CORPUS.jobs.clone());
    let mut runner = TestRunner::deterministic();
    let mut accepted: Vec<Received> = Vec::new();
    for _ in 0..STORED_CASES {
        let body = strategy.new_tree(&mut runner).expect("an input").current();
        if let Ok(job) = IngestJob::decode(&body)
            && let Some(killmail) = job.killmail
        {
            accepted.push(Received {
                killmail,
                hash: job.hash,
                zkb: job.zkb,
                source: job.source,
            });
        }
    }
    assert!(accepted.len() > 100, "only {} decoded", accepted.len());

    let mut failures = Vec::new();
    for received in &accepted {
        let mut tx = env.pool.begin().await.expect("a transaction");
        let encoded = Encoded::new(std::slice::from_ref(received));
        match store_encoded(&mut tx, encoded, false).await {
            Ok(_) => tx.commit().await.expect("commit"),
            Err(error) => failures.push(format!("{}: {error}", received.killmail.killmail_id)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} accepted jobs could not be stored: {failures:#?}",
        failures.len(),
        accepted.len()
    );

    // The first of each id is the one stored; each reads back as it was decoded.
    let mut first = std::collections::HashMap::new();
    for received in &accepted {
        first
            .entry(received.killmail.killmail_id)
            .or_insert(received);
    }
    let ids: Vec<KillmailId> = first.keys().copied().collect();
    let mut connection = env.pool.acquire().await.expect("a connection");
    let stored = load(&mut connection, &ids).await.expect("load");
    assert_eq!(stored.len(), ids.len());
    for stored in stored {
        let received = first[&stored.killmail.killmail_id];
        assert_eq!(stored.killmail, received.killmail);
        assert_eq!(stored.hash, received.hash);
    }
    env.cleanup().await;
}
