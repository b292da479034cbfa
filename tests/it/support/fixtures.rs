//! The real killmails in `tests/it/fixtures/` (copied from shared/fixtures) and the EVE Ref
//! archives in `data/`-style paths.

use std::path::PathBuf;

use killreport::killmail::{Killmail, Received, Source, Zkb};
use killreport::queue::IngestJob;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures")
}

/// Every single-killmail fixture, as raw JSON values, sorted by killmail id.
pub fn killmail_values() -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for sub in ["killmails-2021-12-03", "killmails-2021-11-28"] {
        let dir = dir().join(sub);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("fixture entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture file");
            out.push(serde_json::from_str(&text).expect("fixture JSON"));
        }
    }
    out.sort_by_key(|v: &serde_json::Value| v["killmail_id"].as_i64());
    out
}

/// Every single-killmail fixture, decoded, with its hash.
pub fn killmails() -> Vec<(Killmail, String)> {
    killmail_values()
        .into_iter()
        .map(|v| {
            let hash = v["killmail_hash"]
                .as_str()
                .expect("killmail_hash")
                .to_owned();
            (serde_json::from_value(v).expect("an ESI killmail"), hash)
        })
        .collect()
}

/// An EVE Ref daily archive, `day` like "2021-12-03".
pub fn archive(day: &str) -> PathBuf {
    dir().join(format!("everef/killmails-{day}.tar.bz2"))
}

/// A job for a fixture killmail as worker-redisq queues it: body included, no zkb.
pub fn job((killmail, hash): (Killmail, String)) -> IngestJob {
    IngestJob {
        killmail_id: killmail.killmail_id,
        hash,
        killmail: Some(killmail),
        zkb: None,
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
