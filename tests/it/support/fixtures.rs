//! The real killmails in `tests/it/fixtures/` (copied from shared/fixtures): single killmails
//! as EVE Ref stores them (ESI's body with `killmail_hash` and `http_last_modified` added),
//! EVE Ref's daily archives, and jobs made of them.

use std::io::Read;
use std::path::{Path, PathBuf};

use killreport::killmail::{Killmail, Received, Source, Zkb};
use killreport::queue::IngestJob;
use serde_json::Value;

/// The keys EVE Ref adds to ESI's body.
const EVE_REF_KEYS: [&str; 2] = ["killmail_hash", "http_last_modified"];

/// The day whose killmails stand in for a live feed.
const FEED_DAY: &str = "killmails-2021-12-03";

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures")
}

/// The single-killmail fixtures of the directories `days`, as raw JSON values, sorted by
/// killmail id.
fn values_of(days: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for sub in days {
        let dir = dir().join(sub);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("fixture entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture file");
            out.push(serde_json::from_str(&text).expect("fixture JSON"));
        }
    }
    out.sort_by_key(|v: &Value| v["killmail_id"].as_i64());
    out
}

/// Every single-killmail fixture, as raw JSON values, sorted by killmail id.
pub fn killmail_values() -> Vec<Value> {
    values_of(&[FEED_DAY, "killmails-2021-11-28"])
}

fn hash_of(value: &Value) -> String {
    value["killmail_hash"]
        .as_str()
        .expect("killmail_hash")
        .to_owned()
}

/// Every single-killmail fixture, decoded, with its hash.
pub fn killmails() -> Vec<(Killmail, String)> {
    killmail_values()
        .into_iter()
        .map(|v| {
            let hash = hash_of(&v);
            (serde_json::from_value(v).expect("an ESI killmail"), hash)
        })
        .collect()
}

/// The first `n` killmails of `killmails-2021-12-03`, by id: the ESI body (without EVE Ref's
/// additions) and its hash.
pub fn esi_killmails(n: usize) -> Vec<(Value, String)> {
    let mut out: Vec<(Value, String)> = values_of(&[FEED_DAY])
        .iter()
        .map(|v| (esi_body(v), hash_of(v)))
        .collect();
    out.truncate(n);
    assert_eq!(out.len(), n, "not enough fixture killmails");
    out
}

/// The ESI body of an EVE Ref killmail: the input without EVE Ref's two keys.
pub fn esi_body(value: &Value) -> Value {
    let mut body = value.clone();
    if let Some(map) = body.as_object_mut() {
        for key in EVE_REF_KEYS {
            map.remove(key);
        }
    }
    body
}

/// An EVE Ref daily archive, `day` like "2021-12-03".
pub fn archive(day: &str) -> PathBuf {
    dir().join(format!("everef/killmails-{day}.tar.bz2"))
}

/// Every `.json` member of an EVE Ref archive, with its name, in archive order; read here
/// with tar and bzip2 directly, independent of `queue import`.
pub fn archive_values(path: &Path) -> Vec<(String, Value)> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut archive = tar::Archive::new(bzip2::read::MultiBzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path().expect("member name").display().to_string();
        if !name.ends_with(".json") {
            continue;
        }
        let mut text = Vec::new();
        entry.read_to_end(&mut text).expect("member");
        let value = serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        out.push((name, value));
    }
    out
}

/// A job for a fixture killmail as worker-redisq queues it: body included, no zkb.
pub fn job((killmail, hash): (Killmail, String)) -> IngestJob {
    job_with(killmail, hash, None, true)
}

/// A job for `killmail` as worker-redisq queues it, with `zkb`; with the body only when
/// `with_body`, else worker-killmails fetches it from ESI.
pub fn job_with(killmail: Killmail, hash: String, zkb: Option<Zkb>, with_body: bool) -> IngestJob {
    IngestJob {
        killmail_id: killmail.killmail_id,
        hash,
        killmail: with_body.then_some(killmail),
        zkb,
        source: Source::Redisq,
    }
}

/// Fixture killmails `range` as the store receives them from an import, each with `zkb`.
pub fn received(range: std::ops::Range<usize>, zkb: Option<Zkb>) -> Vec<Received> {
    killmails()[range]
        .iter()
        .map(|(killmail, hash)| Received {
            killmail: killmail.clone(),
            hash: hash.clone(),
            zkb: zkb.clone(),
            source: Source::Import,
        })
        .collect()
}
