//! The decoders of everything that comes from outside, fuzzed with proptest: the
//! `killmail.ingest` job, R2Z2's objects and sequence pointer, RedisQ's answers and ESI's
//! killmails. Inputs are arbitrary bytes, arbitrary JSON, and real fixtures mutated byte by byte
//! (flipped, inserted, removed, truncated) or field by field (a value replaced by a hostile one,
//! a key removed). Whatever comes in, a decoder returns: an error with a reason to dead-letter
//! with, or a value the rest of the pipeline accepts as it is.
//!
//! Each decoder runs [`CASES`] cases per `cargo test`; set `PROPTEST_CASES` to run more.

use std::sync::LazyLock;

use killreport::esi::{EsiError, decode_killmail};
use killreport::feed::{r2z2, redisq};
use killreport::killmail::{Killmail, KillmailId};
use killreport::queue::IngestJob;
use killreport::queue::runner::Job;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use crate::support::fakes::r2z2 as fake_r2z2;
use crate::support::fixtures;

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
    let mut all = fake_r2z2::fixture_killmails(day);
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

/// One change to a body's bytes.
#[derive(Debug, Clone)]
enum ByteEdit {
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

/// Bytes that matter to a JSON parser come up more often than chance would have them.
fn json_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        select(b"{}[]\":,-+.0123456789eE \\ntfalsu".to_vec()),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        4 => (any::<Index>(), json_byte()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        2 => (any::<Index>(), json_byte()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        2 => any::<Index>().prop_map(ByteEdit::Remove),
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
    ]
}

fn edit_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        match edit {
            ByteEdit::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            ByteEdit::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            ByteEdit::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            ByteEdit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
    bytes
}

/// One change to a body's JSON: the value at one place (chosen among all of them, in
/// pre-order) replaced, or removed from its object or array.
#[derive(Debug, Clone)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
}

/// Values that have broken decoders before: extremes, wrong types, near-valid text, and a
/// nesting deeper than serde_json's recursion limit.
fn hostile_value() -> impl Strategy<Value = Value> {
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        select(vec![
            0,
            -1,
            1,
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::MAX,
            i64::MIN,
        ])
        .prop_map(Value::from),
        Just(json!(u64::MAX)),
        any::<f64>().prop_map(|f| json!(f)),
        select(vec![
            "",
            "2021-12-03T00:00:08Z",
            "2021-12-03T23:59:60Z",
            "0000-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2021-02-30T00:00:00Z",
            "0123456789abcdef0123456789abcdef01234567",
            "0123456789ABCDEF0123456789ABCDEF0123456Z",
            "redisq",
            "import",
            "\u{0}",
            "\u{1F680}",
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{}])),
        Just(deep),
    ]
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        3 => (any::<Index>(), hostile_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
    ]
}

/// Values below the root, counted in pre-order.
fn count_places(value: &Value) -> usize {
    match value {
        Value::Object(map) => map.values().map(|v| 1 + count_places(v)).sum(),
        Value::Array(items) => items.iter().map(|v| 1 + count_places(v)).sum(),
        _ => 0,
    }
}

/// Applies `edit` to the `n`-th value below `value` in pre-order; `n` counts down as the walk
/// passes values by. True once done.
fn edit_place(value: &mut Value, n: &mut usize, edit: &JsonEdit) -> bool {
    let keys: Vec<String> = match value {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => (0..items.len()).map(|i| i.to_string()).collect(),
        _ => return false,
    };
    for (i, key) in keys.iter().enumerate() {
        if *n == 0 {
            match (value, edit) {
                (Value::Object(map), JsonEdit::Replace(_, new)) => {
                    map.insert(key.clone(), new.clone());
                }
                (Value::Array(items), JsonEdit::Replace(_, new)) => items[i] = new.clone(),
                (Value::Object(map), JsonEdit::Remove(_)) => {
                    map.remove(key);
                }
                (Value::Array(items), JsonEdit::Remove(_)) => {
                    items.remove(i);
                }
                _ => {}
            }
            return true;
        }
        *n -= 1;
        let child = match value {
            Value::Object(map) => map.get_mut(key),
            Value::Array(items) => items.get_mut(i),
            _ => None,
        };
        if child.is_some_and(|child| edit_place(child, n, edit)) {
            return true;
        }
    }
    false
}

fn edit_json(body: &[u8], edits: &[JsonEdit]) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(body).expect("fixtures are JSON");
    for edit in edits {
        let places = count_places(&value);
        if places == 0 {
            break;
        }
        let (JsonEdit::Replace(index, _) | JsonEdit::Remove(index)) = edit;
        edit_place(&mut value, &mut index.index(places), edit);
    }
    serde_json::to_vec(&value).expect("a value serializes")
}

/// Any JSON document, a few levels deep.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A decoder's input: arbitrary bytes, arbitrary JSON, or one of `corpus` mutated.
pub fn input(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let by_bytes = (
        select(corpus.clone()),
        prop::collection::vec(byte_edit(), 1..6),
    )
        .prop_map(|(body, edits)| edit_bytes(body, &edits));
    let by_fields = (select(corpus), prop::collection::vec(json_edit(), 1..4))
        .prop_map(|(body, edits)| edit_json(&body, &edits));
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).expect("a value serializes")),
        3 => by_bytes,
        4 => by_fields,
    ]
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
        check_job(IngestJob::decode(&body))?;
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
