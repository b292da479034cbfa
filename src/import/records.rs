//! One record of an import's input, whichever of the shapes killmails are passed around in it
//! has, decoded into a killmail to store, a job for ESI to complete, or the reason it is
//! rejected. R2Z2 objects and RedisQ packages are read by [`crate::zkb`], as the live feeds
//! read them; the shapes only files hold are read here, with the same field readers and checks.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

use crate::killmail::{Killmail, Received, Source};
use crate::queue::IngestJob;
use crate::zkb;

/// A decoded record.
pub(super) enum Record {
    Killmail(Received),
    /// Only an id, a hash and perhaps `zkb`: the body must come from ESI.
    NeedsEsi(IngestJob),
}

impl From<IngestJob> for Record {
    fn from(mut job: IngestJob) -> Self {
        match job.killmail.take() {
            Some(killmail) => Record::Killmail(job.into_received(killmail)),
            None => Record::NeedsEsi(job),
        }
    }
}

/// Decodes one record, whichever of the shapes killmails are passed around in it has:
/// - an ESI killmail, its hash in `killmail_hash` (EVE Ref), `hash` or `zkb.hash`;
/// - an R2Z2 object, `{killmail_id, hash, esi, zkb, …}`;
/// - a RedisQ package, `{"package": {killID, killmail?, zkb}}` (`null`: nothing, not an error);
/// - a `killmail.ingest` job, `{killmail_id, hash, killmail?, zkb?, source}`;
/// - zKillboard's API entry, `{killmail_id, zkb}`.
///
/// Those without a body need ESI.
pub(super) fn decode_record(value: Value) -> Result<Option<Record>, String> {
    let Value::Object(mut map) = value else {
        return Err(format!("not a killmail: a JSON {}", zkb::kind(&value)));
    };
    if let Some(package) = map.remove("package") {
        return zkb::redisq_package(package, Source::Import).map(|job| job.map(Record::from));
    }
    if map.contains_key("esi") {
        return zkb::r2z2_object(Value::Object(map), Source::Import).map(|job| Some(job.into()));
    }
    if map.contains_key("killmail") {
        let hash = zkb::take_string(&mut map, "hash")?;
        let zkb = zkb::take_zkb(&mut map)?;
        let id = zkb::read_id(&map, "killmail_id")?;
        let killmail = zkb::take_killmail(&mut map, "killmail")?;
        return zkb::job(id, hash, killmail, zkb, Source::Import).map(|job| Some(job.into()));
    }
    let zkb = zkb::take_zkb(&mut map)?;
    let hash = match (map.remove("killmail_hash"), map.remove("hash")) {
        (Some(hash), _) | (None, Some(hash)) => zkb::string(hash, "killmail_hash")?,
        (None, None) => match zkb::zkb_hash(zkb.as_ref()) {
            Some(hash) => hash,
            None => return Err("no hash: none of killmail_hash, hash or zkb.hash".into()),
        },
    };
    // zKillboard's API lists killmails as `{killmail_id, zkb}`, leaving the body to ESI.
    if !map.contains_key("victim") && !map.contains_key("killmail_time") {
        let id = zkb::read_id(&map, "killmail_id")?;
        return zkb::job(id, hash, None, zkb, Source::Import).map(|job| Some(job.into()));
    }
    let killmail =
        Killmail::deserialize(Value::Object(map)).map_err(|e| format!("not a killmail: {e}"))?;
    let id = killmail.killmail_id;
    zkb::job(id, hash, Some(killmail), zkb, Source::Import).map(|job| Some(job.into()))
}

/// The keys that tell EVE Ref's records (an ESI killmail beside its `killmail_hash`) from the
/// other shapes, read without building anything.
#[derive(Deserialize)]
struct Shape<'a> {
    #[serde(borrow, default)]
    killmail_hash: Option<&'a str>,
    #[serde(borrow, default)]
    hash: Option<&'a str>,
    #[serde(default)]
    zkb: Option<IgnoredAny>,
    #[serde(default)]
    esi: Option<IgnoredAny>,
    #[serde(default)]
    package: Option<IgnoredAny>,
    #[serde(default)]
    killmail: Option<IgnoredAny>,
}

/// Decodes the text of an ESI killmail with its hash (EVE Ref's records, most of any backfill)
/// straight into a [`Killmail`], without the [`Value`] that [`decode_record`] goes through;
/// `None` for any other shape, or anything amiss, which [`decode_record`] then reads and, if
/// need be, rejects with its reason.
pub(super) fn decode_plain(bytes: &[u8]) -> Option<Result<Option<Record>, String>> {
    let shape: Shape<'_> = serde_json::from_slice(bytes).ok()?;
    let others = [&shape.zkb, &shape.esi, &shape.package, &shape.killmail];
    if others.iter().any(|key| key.is_some()) {
        return None;
    }
    let hash = shape.killmail_hash.or(shape.hash)?.to_owned();
    let killmail: Killmail = serde_json::from_slice(bytes).ok()?;
    let id = killmail.killmail_id;
    Some(zkb::job(id, hash, Some(killmail), None, Source::Import).map(|job| Some(job.into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::killmail::{KillmailId, Zkb};

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

    fn esi(id: i64) -> Value {
        serde_json::json!({
            "killmail_id": id,
            "killmail_time": "2021-12-03T00:00:03Z",
            "solar_system_id": 30002698,
            "victim": {"damage_taken": 1, "ship_type_id": 670, "items": []},
            "attackers": [{"damage_done": 1, "final_blow": true, "security_status": 0.5}]
        })
    }

    fn killmail(result: Result<Option<Record>, String>) -> Received {
        match result {
            Ok(Some(Record::Killmail(received))) => received,
            Ok(Some(Record::NeedsEsi(job))) => panic!("needs ESI: {job:?}"),
            Ok(None) => panic!("nothing"),
            Err(reason) => panic!("rejected: {reason}"),
        }
    }

    fn rejected(result: Result<Option<Record>, String>) -> String {
        match result {
            Err(reason) => reason,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn an_eve_ref_killmail_takes_its_hash_from_killmail_hash() {
        let mut value = esi(5);
        value["killmail_hash"] = HASH.into();
        value["http_last_modified"] = "2021-12-03T11:37:14Z".into();
        let received = killmail(decode_record(value));
        assert_eq!(received.hash, HASH);
        assert_eq!(received.killmail.killmail_id, KillmailId(5));
        assert_eq!(received.source, Source::Import);
        assert_eq!(received.zkb, None);
    }

    #[test]
    fn an_r2z2_object_and_a_redisq_package_carry_their_zkb() {
        let zkb = serde_json::json!({"hash": HASH, "totalValue": 10.0});
        let r2z2 = serde_json::json!({
            "killmail_id": 5, "hash": HASH, "esi": esi(5), "zkb": zkb, "sequence_id": 1
        });
        assert_eq!(killmail(decode_record(r2z2)).zkb, Some(Zkb(zkb.clone())));
        let redisq = serde_json::json!({"package": {"killID": 5, "killmail": esi(5), "zkb": zkb}});
        assert_eq!(killmail(decode_record(redisq)).hash, HASH);
    }

    #[test]
    fn a_redisq_package_without_a_body_needs_esi_and_a_null_package_is_nothing() {
        let zkb = serde_json::json!({"hash": HASH});
        let package = serde_json::json!({"package": {"killID": 5, "zkb": zkb}});
        match decode_record(package) {
            Ok(Some(Record::NeedsEsi(job))) => {
                assert_eq!((job.killmail_id, job.hash.as_str()), (KillmailId(5), HASH));
                assert_eq!(job.source, Source::Import);
            }
            _ => panic!("expected a job for ESI"),
        }
        assert!(matches!(
            decode_record(serde_json::json!({"package": null})),
            Ok(None)
        ));
    }

    #[test]
    fn an_eve_ref_record_reads_the_same_straight_or_through_a_value() {
        let mut value = esi(5);
        value["killmail_hash"] = HASH.into();
        value["http_last_modified"] = "2021-12-03T11:37:14Z".into();
        let bytes = serde_json::to_vec(&value).expect("JSON");
        let straight = killmail(decode_plain(&bytes).expect("read straight"));
        assert_eq!(straight, killmail(decode_record(value)));
        let r2z2 = serde_json::json!({"killmail_id": 5, "hash": HASH, "esi": esi(5)});
        let package = serde_json::json!({"package": null});
        let mut short_hash = esi(5);
        short_hash["killmail_hash"] = "abc".into();
        for other in [r2z2, package, esi(5), serde_json::json!([1])] {
            let bytes = serde_json::to_vec(&other).expect("JSON");
            assert!(decode_plain(&bytes).is_none(), "{other}");
        }
        let bytes = serde_json::to_vec(&short_hash).expect("JSON");
        let refused = decode_plain(&bytes).expect("a plain record");
        assert!(rejected(refused).contains("40-character"));
    }

    #[test]
    fn bad_records_are_rejected_with_their_reason() {
        let mut short_hash = esi(5);
        short_hash["killmail_hash"] = "abc".into();
        assert!(rejected(decode_record(short_hash)).contains("40-character"));
        assert!(rejected(decode_record(esi(5))).contains("no hash"));
        let mut no_attackers = esi(5);
        no_attackers["killmail_hash"] = HASH.into();
        no_attackers["attackers"] = serde_json::json!([]);
        assert!(rejected(decode_record(no_attackers)).contains("no attackers"));
        let mismatch = serde_json::json!({"killmail_id": 6, "hash": HASH, "esi": esi(5)});
        assert!(rejected(decode_record(mismatch)).contains("is for killmail 6"));
        let mut missing = esi(5);
        missing["killmail_hash"] = HASH.into();
        missing
            .as_object_mut()
            .expect("object")
            .remove("killmail_time");
        assert!(rejected(decode_record(missing)).contains("killmail_time"));
        assert!(rejected(decode_record(serde_json::json!(5))).contains("a JSON number"));
    }
}
