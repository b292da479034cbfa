//! zKillboard's wire formats, read one way wherever they arrive: the R2Z2 object
//! (`{killmail_id, hash, esi, zkb, …}`) and the RedisQ package (`{killID, killmail?, zkb}`),
//! whether the live feeds fetched them or `queue import` found them in a file. Each becomes a
//! checked `killmail.ingest` job or is refused with the reason it is dead-lettered or reported
//! with. The field readers and the check every job passes are shared with the importer's other
//! record shapes, so that a bad hash or a body of another killmail is refused in the same words
//! whatever shape it came in.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::killmail::{Killmail, KillmailId, Source, Zkb, check_hash};
use crate::queue::IngestJob;

/// Decodes one R2Z2 object. The hash is `hash`, else `zkb.hash`. Only what a job needs is read:
/// `uploaded_at`, `sequence_id` and `sequence_updated` (set when zKillboard issues a killmail
/// again under a later sequence, e.g. with recomputed zkb values) are ignored, so their presence
/// or shape never breaks decoding; a re-issued killmail becomes a job like any other and the
/// store keeps it once.
pub fn r2z2_object(value: Value, source: Source) -> Result<IngestJob, String> {
    let mut object = match value {
        Value::Object(object) => object,
        other => {
            return Err(format!(
                "not an R2Z2 killmail object: a JSON {}",
                kind(&other)
            ));
        }
    };
    let killmail_id = read_id(&object, "killmail_id")?;
    let hash = match object.remove("hash") {
        None | Some(Value::Null) => None,
        Some(hash) => Some(string(hash, "hash")?),
    };
    let zkb = take_zkb(&mut object)?;
    let Some(esi) = take_killmail(&mut object, "esi")? else {
        return Err("no `esi`: the object carries no killmail".into());
    };
    let Some(hash) = hash.or_else(|| zkb_hash(zkb.as_ref())) else {
        return Err("no hash: neither `hash` nor zkb.hash".into());
    };
    job(killmail_id, hash, Some(esi), zkb, source)
}

/// Decodes one RedisQ package, the value of an answer's `package`: `None` for `null` (nothing
/// came), else a job whose hash is `zkb.hash`, without a body when the package has no
/// `killmail` (ESI has it).
pub fn redisq_package(package: Value, source: Source) -> Result<Option<IngestJob>, String> {
    let mut package = match package {
        Value::Null => return Ok(None),
        Value::Object(package) => package,
        other => return Err(format!("RedisQ package is a JSON {}", kind(&other))),
    };
    let killmail_id = read_id(&package, "killID")?;
    let zkb = take_zkb(&mut package)?;
    let Some(hash) = zkb_hash(zkb.as_ref()) else {
        return Err(format!(
            "RedisQ package for killmail {killmail_id} has no zkb.hash"
        ));
    };
    let killmail = take_killmail(&mut package, "killmail")?;
    job(killmail_id, hash, killmail, zkb, source).map(Some)
}

/// A job from a record's parts, checked as worker-killmails checks one: a 40-hex hash, and
/// either a body of the same killmail that passes [`Killmail::validate`] or, without a body, a
/// positive id to ask ESI for.
pub fn job(
    killmail_id: KillmailId,
    hash: String,
    killmail: Option<Killmail>,
    zkb: Option<Zkb>,
    source: Source,
) -> Result<IngestJob, String> {
    check_hash(&hash)?;
    match &killmail {
        Some(body) if body.killmail_id != killmail_id => {
            return Err(format!(
                "record is for killmail {killmail_id} but carries killmail {}",
                body.killmail_id
            ));
        }
        Some(body) => body.validate()?,
        None if killmail_id.0 <= 0 => {
            return Err(format!("killmail_id {killmail_id} is not positive"));
        }
        None => {}
    }
    Ok(IngestJob {
        killmail_id,
        hash,
        killmail,
        zkb,
        source,
    })
}

/// The integer at `key`.
pub(crate) fn read_id(map: &Map<String, Value>, key: &str) -> Result<KillmailId, String> {
    match map.get(key) {
        Some(value) => value
            .as_i64()
            .map(KillmailId)
            .ok_or_else(|| format!("`{key}` is not an integer: {value}")),
        None => Err(format!("no `{key}`")),
    }
}

/// The string at `key`, which must be there.
pub(crate) fn take_string(map: &mut Map<String, Value>, key: &str) -> Result<String, String> {
    match map.remove(key) {
        Some(value) => string(value, key),
        None => Err(format!("no `{key}`")),
    }
}

/// `value`, read from `key`, as a string.
pub(crate) fn string(value: Value, key: &str) -> Result<String, String> {
    match value {
        Value::String(text) => Ok(text),
        other => Err(format!("`{key}` is not a string: {other}")),
    }
}

/// The `zkb` block, if there is one; it must be an object.
pub(crate) fn take_zkb(map: &mut Map<String, Value>) -> Result<Option<Zkb>, String> {
    match map.remove("zkb") {
        None | Some(Value::Null) => Ok(None),
        Some(zkb @ Value::Object(_)) => Ok(Some(Zkb(zkb))),
        Some(other) => Err(format!("`zkb` is a JSON {}, not an object", kind(&other))),
    }
}

/// The killmail body at `key`: `None` when it is absent or `null`.
pub(crate) fn take_killmail(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Killmail>, String> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(body) => Killmail::deserialize(body)
            .map(Some)
            .map_err(|e| format!("`{key}` is not a killmail: {e}")),
    }
}

/// The hash the `zkb` block carries, if any.
pub(crate) fn zkb_hash(zkb: Option<&Zkb>) -> Option<String> {
    zkb.and_then(Zkb::hash).map(str::to_owned)
}

/// What a JSON value is, for a reason that says what came instead of what was expected.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(text: &str) -> Value {
        serde_json::from_str(text).expect("the fixture is JSON")
    }

    fn r2z2() -> Value {
        upstream(include_str!(
            "../tests/it/fixtures/upstream/r2z2/r2z2-ephemeral-96599404-killmail-134265477.aa-killtracker.json"
        ))
    }

    #[test]
    fn an_r2z2_object_takes_its_hash_from_zkb_when_it_has_none_and_keeps_its_source() {
        let mut object = r2z2();
        object.as_object_mut().expect("an object").remove("hash");
        let job = r2z2_object(object, Source::Import).expect("a job");
        assert_eq!(job.hash, "aa937ee180fca44b172de00f2a26e751f5b2a851");
        assert_eq!(job.source, Source::Import);
        assert!(job.killmail.is_some());
    }

    #[test]
    fn a_zkb_block_must_be_an_object() {
        let mut object = r2z2();
        object["zkb"] = 5.into();
        let reason = r2z2_object(object, Source::Redisq).expect_err("zkb is a number");
        assert!(reason.contains("`zkb` is a JSON number"), "{reason}");
    }

    #[test]
    fn a_package_without_a_body_names_a_positive_killmail() {
        let mut answer = upstream(include_str!(
            "../tests/it/fixtures/upstream/redisq/redisq-package-130678514-zkb-only.zkillboard-redisq-readme.json"
        ));
        answer["package"]["killID"] = 0.into();
        let reason = redisq_package(answer["package"].take(), Source::Redisq).expect_err("id 0");
        assert!(reason.contains("is not positive"), "{reason}");
    }
}
