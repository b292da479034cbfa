//! The event bus (DESIGN.md, "Events"): events of any type, each `{type, data, timestamp}`.
//! Any process sends one with [`send_event`]: it is appended to the event log in PostgreSQL
//! (`db::events`), which gives it its id, and then the bus's Redis channel (its name passed in)
//! is rung with that id, so every server process reads it from the log and passes it on (see
//! `event_log`). Redis carries only the doorbell: what clients receive is what the log holds.
//! Also the `killmail` event's payload, built from a stored killmail's event (killmail events
//! are not copied into the log: the stored killmails are their log).

use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::backoff::Backoff;
use crate::db;
use crate::events::KillmailAdded;

pub const DEFAULT_CHANNEL: &str = "killreport:events:bus";
/// The longest event type accepted, in characters.
pub const MAX_TYPE_CHARS: usize = 100;
/// The largest `data` accepted, in bytes of JSON.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// The type of the event every stored killmail gives.
pub const KILLMAIL: &str = "killmail";

/// One event, as `/updates` clients receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Value,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// An event as the log holds it: its id there, and the event.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub id: i64,
    pub event: Event,
}

impl From<db::events::LoggedRow> for Logged {
    fn from(row: db::events::LoggedRow) -> Self {
        Self {
            id: row.id,
            event: Event {
                kind: row.kind,
                data: row.data,
                timestamp: row.sent_at.timestamp_millis(),
            },
        }
    }
}

/// What rings the bus channel: the log holds events up to `id`. It is only a doorbell; a
/// server reads the events themselves from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ring {
    pub id: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The event itself is wrong (its type, its size): sending it again cannot succeed.
    #[error("{0}")]
    Invalid(String),
    #[error("appending the event to the log: {0}")]
    Store(#[from] sqlx::Error),
}

/// Whether `kind` may be an event's type: a non-empty string of at most [`MAX_TYPE_CHARS`].
pub fn check_type(kind: &str) -> Result<(), String> {
    if kind.trim().is_empty() {
        return Err("`type` must be a non-empty string".to_owned());
    }
    if kind.chars().count() > MAX_TYPE_CHARS {
        return Err(format!("`type` is longer than {MAX_TYPE_CHARS} characters"));
    }
    Ok(())
}

impl Event {
    /// An event of type `kind` sent now, once the type ([`check_type`]) and the size of `data`
    /// ([`MAX_DATA_BYTES`]) are checked.
    pub fn new(kind: &str, data: Value) -> Result<Self, String> {
        check_type(kind)?;
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |json| json.len());
        if size > MAX_DATA_BYTES {
            return Err(format!(
                "`data` is {size} bytes of JSON; the most is {MAX_DATA_BYTES}"
            ));
        }
        Ok(Self {
            kind: kind.to_owned(),
            data,
            timestamp: Utc::now().timestamp_millis(),
        })
    }

    /// The `killmail` event of a stored killmail, sent now, with the seed's payload (ids null
    /// where the victim has none) and the names the store has for them (null where none).
    pub fn killmail(added: &KillmailAdded) -> Self {
        let now = Utc::now();
        let killmail = &added.killmail;
        let name = |id: Option<i64>| id.and_then(|id| added.names.get(&id.to_string()));
        let data = json!({
            "killmailId": killmail.killmail_id.0,
            "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "victimId": killmail.victim.character_id,
            "victimCorporationId": killmail.victim.corporation_id,
            "victimAllianceId": killmail.victim.alliance_id,
            "systemId": killmail.solar_system_id,
            "shipTypeId": killmail.victim.ship_type_id,
            "attackerCount": killmail.attackers.len(),
            "victimName": name(killmail.victim.character_id),
            "victimCorporationName": name(killmail.victim.corporation_id),
            "victimAllianceName": name(killmail.victim.alliance_id),
            "systemName": name(Some(killmail.solar_system_id)),
            "shipTypeName": name(Some(killmail.victim.ship_type_id)),
        });
        Self {
            kind: KILLMAIL.to_owned(),
            data,
            timestamp: now.timestamp_millis(),
        }
    }
}

/// Sends an event of type `kind`: appends it to the log in `pool` and rings `channel` with its
/// id, so every server process passes it on. Returns the event as logged. Once it is in the
/// log it is sent: if Redis fails, the servers find it when they next look at the log (within
/// seconds) and this is not an error, so a caller never sends an event twice.
pub async fn send_event(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    channel: &str,
    kind: &str,
    data: Value,
) -> Result<Logged, SendError> {
    send_event_retrying(pool, redis, channel, kind, data, 1, Backoff::RECONNECT).await
}

/// [`send_event`], with up to `attempts` tries of each step (appending to the log while
/// PostgreSQL fails, then ringing while Redis fails), waiting as `backoff` says between tries;
/// an invalid event is not retried.
pub async fn send_event_retrying(
    pool: &PgPool,
    redis: &mut ConnectionManager,
    channel: &str,
    kind: &str,
    data: Value,
    attempts: u32,
    backoff: Backoff,
) -> Result<Logged, SendError> {
    let event = Event::new(kind, data).map_err(SendError::Invalid)?;
    let id = retrying(attempts, backoff, || append(pool, &event)).await?;
    let ring = serde_json::to_string(&Ring { id }).expect("a ring always serializes");
    let rung = retrying(attempts, backoff, || {
        let mut redis = redis.clone();
        let ring = ring.clone();
        async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(ring)
                .query_async::<()>(&mut redis)
                .await
        }
    });
    if let Err(error) = rung.await {
        tracing::warn!(%error, event.id = id, "ringing the event bus failed; servers find the event in the log");
    }
    Ok(Logged { id, event })
}

/// Appends `event` to the log, in a transaction of its own (whose commit makes its id visible).
async fn append(pool: &PgPool, event: &Event) -> sqlx::Result<i64> {
    let sent_at = DateTime::from_timestamp_millis(event.timestamp).unwrap_or_else(Utc::now);
    let mut tx = pool.begin().await?;
    let id = db::events::append(&mut tx, &event.kind, &event.data, sent_at).await?;
    tx.commit().await?;
    Ok(id)
}

/// `step`, tried until it succeeds or `attempts` tries (at least one) have failed.
async fn retrying<T, E, F, Fut>(attempts: u32, backoff: Backoff, mut step: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut failures = 0;
    loop {
        match step().await {
            Ok(done) => return Ok(done),
            Err(error) => {
                failures += 1;
                if failures >= attempts.max(1) {
                    return Err(error);
                }
                tracing::debug!(%error, attempt = failures, "sending an event failed; retrying");
                tokio::time::sleep(backoff.delay(failures)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_must_be_a_short_non_empty_string() {
        assert!(check_type("statistics").is_ok());
        assert!(check_type("").is_err());
        assert!(check_type("   ").is_err());
        assert!(check_type(&"x".repeat(MAX_TYPE_CHARS + 1)).is_err());
    }

    #[test]
    fn data_is_bounded() {
        let big = Value::String("x".repeat(MAX_DATA_BYTES));
        let refused = Event::new("statistics", big).expect_err("too large");
        assert!(refused.contains("bytes"), "{refused}");
    }

    #[test]
    fn a_ring_is_an_id_and_nothing_else() {
        let ring: Ring = serde_json::from_str(r#"{"id": 7}"#).expect("a ring");
        assert_eq!(ring, Ring { id: 7 });
        assert!(serde_json::from_str::<Ring>(r#"{"id": 7, "type": "x"}"#).is_err());
        assert!(serde_json::from_str::<Ring>(r#"{"id": "7"}"#).is_err());
    }

    #[test]
    fn an_event_is_type_data_and_milliseconds() {
        let event = Event::new("statistics", json!({"kills": 3})).expect("a valid type");
        let value = serde_json::to_value(&event).expect("JSON");
        assert_eq!(value["type"], "statistics");
        assert_eq!(value["data"], json!({"kills": 3}));
        assert!(value["timestamp"].as_i64().expect("ms") > 1_600_000_000_000);
    }
}
