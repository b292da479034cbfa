//! Killmails in ESI's vocabulary: the canonical input every source is decoded into, the shape the
//! store keeps losslessly and the body of every event. No I/O here.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A killmail's id, as CCP assigns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KillmailId(pub i64);

impl fmt::Display for KillmailId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The store's own ingest sequence: monotonic per database, the subscription cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub i64);

/// ESI `GET /killmails/{id}/{hash}/`, field for field. Optional fields stay absent when absent,
/// so a killmail serialized back is the one that came in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Killmail {
    pub killmail_id: KillmailId,
    #[serde(with = "esi_time")]
    pub killmail_time: DateTime<Utc>,
    pub solar_system_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moon_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub war_id: Option<i64>,
    pub victim: Victim,
    pub attackers: Vec<Attacker>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Victim {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub character_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corporation_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alliance_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faction_id: Option<i64>,
    pub ship_type_id: i64,
    pub damage_taken: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    #[serde(default)]
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

/// A dropped or destroyed item; a container lists its contents in `items`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub item_type_id: i64,
    pub flag: i32,
    pub singleton: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity_destroyed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity_dropped: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attacker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub character_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corporation_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alliance_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faction_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ship_type_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weapon_type_id: Option<i64>,
    pub damage_done: i64,
    pub final_blow: bool,
    pub security_status: f64,
}

/// zKillboard's `zkb` block, kept exactly as delivered; the fields killreport filters on are
/// read out of it on demand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Zkb(pub serde_json::Value);

impl Zkb {
    fn number(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(serde_json::Value::as_f64)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.0.get(key).and_then(serde_json::Value::as_bool)
    }

    pub fn total_value(&self) -> Option<f64> {
        self.number("totalValue")
    }

    pub fn points(&self) -> Option<f64> {
        self.number("points")
    }

    pub fn npc(&self) -> Option<bool> {
        self.flag("npc")
    }

    pub fn solo(&self) -> Option<bool> {
        self.flag("solo")
    }

    pub fn hash(&self) -> Option<&str> {
        self.0.get("hash").and_then(serde_json::Value::as_str)
    }

    /// The block made safe to store, with one line per fix, or `None` when it needs none.
    /// `\u0000`, which PostgreSQL's `jsonb` cannot hold, is removed from every string and key;
    /// a field of DESIGN's `zkb` with the wrong type (a string where a number belongs) is
    /// converted when it plainly says a value (`"12.5"`, `"true"`), else dropped. Whatever a
    /// source sends in `zkb`, the killmail itself can then be stored.
    pub fn sanitized(&self) -> Option<(Zkb, Vec<String>)> {
        use serde_json::Value;
        const NUMBERS: [&str; 7] = [
            "locationID",
            "fittedValue",
            "droppedValue",
            "destroyedValue",
            "totalValue",
            "points",
            "attackerCount",
        ];
        const FLAGS: [&str; 3] = ["npc", "solo", "awox"];
        const TEXTS: [&str; 2] = ["hash", "href"];
        let mut fixes = Vec::new();
        let mut value = self.0.clone();
        if without_nul(&mut value) {
            fixes.push("removed \\u0000 from its text".to_owned());
        }
        if let Value::Object(fields) = &mut value {
            for key in NUMBERS
                .into_iter()
                .chain(FLAGS)
                .chain(TEXTS)
                .chain(["labels"])
            {
                let Some(field) = fields.get(key) else {
                    continue;
                };
                let fixed = match (key, field) {
                    (_, Value::Null) => Some(None),
                    (key, Value::Number(_)) if NUMBERS.contains(&key) => None,
                    (key, Value::String(text)) if NUMBERS.contains(&key) => {
                        Some(plain_number(text.trim()).map(Value::Number))
                    }
                    (key, Value::Bool(_)) if FLAGS.contains(&key) => None,
                    (key, Value::String(text)) if FLAGS.contains(&key) => {
                        Some(text.trim().parse::<bool>().ok().map(Value::Bool))
                    }
                    (key, Value::String(_)) if TEXTS.contains(&key) => None,
                    ("labels", Value::Array(labels)) if labels.iter().all(Value::is_string) => None,
                    _ => Some(None),
                };
                match fixed {
                    None => {}
                    Some(Some(converted)) => {
                        fixes.push(format!("{key}: {field} read as {converted}"));
                        fields.insert(key.to_owned(), converted);
                    }
                    Some(None) => {
                        fixes.push(format!("{key}: dropped {}", short(field)));
                        fields.remove(key);
                    }
                }
            }
        }
        (!fixes.is_empty()).then_some((Zkb(value), fixes))
    }
}

/// The number `text` plainly says, as an integer when it is one.
fn plain_number(text: &str) -> Option<serde_json::Number> {
    match text.parse::<i64>() {
        Ok(integer) => Some(integer.into()),
        Err(_) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64),
    }
}

/// Removes `\u0000` from every string and key under `value`; whether there was any.
fn without_nul(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(text) if text.contains('\0') => {
            text.retain(|c| c != '\0');
            true
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, item| without_nul(item) | any),
        Value::Object(fields) => {
            let mut any = false;
            if fields.keys().any(|key| key.contains('\0')) {
                let old = std::mem::take(fields);
                *fields = old
                    .into_iter()
                    .map(|(key, value)| (key.replace('\0', ""), value))
                    .collect();
                any = true;
            }
            fields
                .values_mut()
                .fold(any, |any, field| without_nul(field) | any)
        }
        _ => false,
    }
}

/// A value as a log line may quote it: at most 60 characters of its JSON.
fn short(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

impl Killmail {
    /// Walks every item of the victim, containers' contents included, in pre-order, with the
    /// index of each item's parent in that same order.
    pub fn items_preorder(&self) -> Vec<(Option<usize>, &Item)> {
        fn walk<'a>(
            items: &'a [Item],
            parent: Option<usize>,
            out: &mut Vec<(Option<usize>, &'a Item)>,
        ) {
            for item in items {
                let index = out.len();
                out.push((parent, item));
                walk(&item.items, Some(index), out);
            }
        }
        let mut out = Vec::new();
        walk(&self.victim.items, None, &mut out);
        out
    }

    /// Character, corporation, alliance and faction ids anywhere on the killmail.
    pub fn entity_ids(&self) -> impl Iterator<Item = i64> + '_ {
        let v = &self.victim;
        [
            v.character_id,
            v.corporation_id,
            v.alliance_id,
            v.faction_id,
        ]
        .into_iter()
        .chain(self.attackers.iter().flat_map(|a| {
            [
                a.character_id,
                a.corporation_id,
                a.alliance_id,
                a.faction_id,
            ]
        }))
        .flatten()
    }

    /// Ship and weapon type ids of the victim and the attackers (not the items).
    pub fn ship_type_ids(&self) -> impl Iterator<Item = i64> + '_ {
        std::iter::once(self.victim.ship_type_id).chain(
            self.attackers
                .iter()
                .flat_map(|a| [a.ship_type_id, a.weapon_type_id])
                .flatten(),
        )
    }

    /// Checks what serde cannot: the facts every stored killmail must satisfy.
    pub fn validate(&self) -> Result<(), String> {
        if self.killmail_id.0 <= 0 {
            return Err(format!("killmail_id {} is not positive", self.killmail_id));
        }
        if self.attackers.is_empty() {
            return Err("killmail has no attackers".into());
        }
        // Outside these a time is no loss's (and, past year 9999 or before year 0, not even
        // one RFC 3339 can write back); one in the future would head every list for good.
        let time = self.killmail_time;
        if time < eve_launch() {
            return Err(format!(
                "killmail_time {time} is before EVE Online began (2003-05-06)"
            ));
        }
        if time > Utc::now() + chrono::Duration::days(1) {
            return Err(format!("killmail_time {time} is in the future"));
        }
        Ok(())
    }
}

/// The day EVE Online opened: no killmail is older.
fn eve_launch() -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(
        chrono::NaiveDate::from_ymd_opt(2003, 5, 6)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .expect("a valid date"),
        Utc,
    )
}

/// Checks that `hash` looks like a killmail hash: 40 hex digits.
pub fn check_hash(hash: &str) -> Result<(), String> {
    if hash.len() == 40 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("hash {hash:?} is not a 40-character hex string"))
    }
}

/// ESI writes times as `2021-12-03T00:00:08Z`; the same text comes back out.
mod esi_time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

/// Where a killmail came from, as named in the `killmail.ingest` job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Redisq,
    Import,
    Esi,
    User,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Redisq => "redisq",
            Source::Import => "import",
            Source::Esi => "esi",
            Source::User => "user",
        }
    }
}

/// A whole killmail as a source delivered it, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub killmail: Killmail,
    pub hash: String,
    pub zkb: Option<Zkb>,
    pub source: Source,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_zkb_is_made_storable_and_says_how() {
        let zkb = Zkb(serde_json::json!({
            "totalValue": "12.5", "fittedValue": "lots", "points": {"a": 1},
            "npc": "false", "solo": 1, "awox": false, "labels": ["loc:highsec", 3],
            "hash": "abc\0def", "href": "https://zkillboard.com",
            "extra": {"key\0": ["\0"]}
        }));
        let (fixed, fixes) = zkb.sanitized().expect("fixes");
        assert_eq!(
            fixed.0,
            serde_json::json!({
                "totalValue": 12.5, "npc": false, "awox": false, "hash": "abcdef",
                "href": "https://zkillboard.com", "extra": {"key": [""]}
            })
        );
        assert_eq!(fixed.total_value(), Some(12.5));
        assert!(
            fixes
                .iter()
                .any(|f| f.contains("fittedValue: dropped \"lots\"")),
            "{fixes:?}"
        );
        assert!(fixes.iter().any(|f| f.contains("\\u0000")), "{fixes:?}");
        assert_eq!(fixes.len(), 7, "{fixes:?}");
        assert_eq!(fixed.sanitized(), None, "nothing left to fix");
    }

    fn killmail_at(time: &str) -> Result<Killmail, String> {
        let json = serde_json::json!({
            "killmail_id": 1, "killmail_time": time, "solar_system_id": 30000142,
            "victim": {"ship_type_id": 670, "damage_taken": 1},
            "attackers": [{"damage_done": 1, "final_blow": true, "security_status": 0.0}]
        });
        let killmail: Killmail = serde_json::from_value(json).map_err(|e| e.to_string())?;
        killmail.validate().map(|()| killmail)
    }

    #[test]
    fn a_killmail_time_is_one_eve_could_have_seen() {
        let kept = killmail_at("2021-12-03T00:00:08Z").expect("a real time");
        let text = serde_json::to_value(&kept).expect("JSON")["killmail_time"].clone();
        assert_eq!(text, "2021-12-03T00:00:08Z");
        // Found by fuzzing: year 0 with an offset is year -1 in UTC, which no RFC 3339 text
        // can carry, so the job could not be read back once queued.
        let error = killmail_at("0000-01-01T00:00:00+23:59").expect_err("year -1");
        assert!(error.contains("before EVE Online began"), "{error}");
        let error = killmail_at("9999-12-31T23:59:59-23:59").expect_err("year 10000");
        assert!(error.contains("in the future"), "{error}");
    }
}
