//! The event bus (DESIGN.md, "Events"): events of any type, each `{type, data, timestamp}`,
//! published by any process with [`send_event`] on one Redis channel (its name passed in) and
//! delivered by every server process to its `/updates` clients (see `updates`). Also the
//! `killmail` event's payload, built from a stored killmail's event.

use chrono::{SecondsFormat, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::backoff::Backoff;
use crate::events::KillmailAdded;

pub const DEFAULT_CHANNEL: &str = "killreport:events:bus";
/// The longest event type accepted, in characters.
pub const MAX_TYPE_CHARS: usize = 100;
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

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    InvalidType(String),
    #[error("publishing the event on Redis: {0}")]
    Redis(#[from] redis::RedisError),
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
    /// An event of type `kind` sent now, once the type is checked ([`check_type`]).
    pub fn new(kind: &str, data: Value) -> Result<Self, String> {
        check_type(kind)?;
        Ok(Self {
            kind: kind.to_owned(),
            data,
            timestamp: Utc::now().timestamp_millis(),
        })
    }

    /// The `killmail` event of a stored killmail, sent now, with the seed's payload (ids null
    /// where the victim has none).
    pub fn killmail(added: &KillmailAdded) -> Self {
        let now = Utc::now();
        let killmail = &added.killmail;
        let data = json!({
            "killmailId": killmail.killmail_id.0,
            "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "victimId": killmail.victim.character_id,
            "victimCorporationId": killmail.victim.corporation_id,
            "victimAllianceId": killmail.victim.alliance_id,
            "systemId": killmail.solar_system_id,
            "shipTypeId": killmail.victim.ship_type_id,
            "attackerCount": killmail.attackers.len(),
        });
        Self {
            kind: KILLMAIL.to_owned(),
            data,
            timestamp: now.timestamp_millis(),
        }
    }
}

/// Publishes an event of type `kind` on `channel` (once: see [`send_event_retrying`]); every
/// server process passes it to its `/updates` clients. Returns the event as sent.
pub async fn send_event(
    redis: &mut ConnectionManager,
    channel: &str,
    kind: &str,
    data: Value,
) -> Result<Event, SendError> {
    let event = Event::new(kind, data).map_err(SendError::InvalidType)?;
    publish(redis, channel, &event).await?;
    Ok(event)
}

/// [`send_event`], tried up to `attempts` times while Redis fails, waiting as `backoff` says
/// between tries; an invalid type is not retried.
pub async fn send_event_retrying(
    redis: &mut ConnectionManager,
    channel: &str,
    kind: &str,
    data: Value,
    attempts: u32,
    backoff: Backoff,
) -> Result<Event, SendError> {
    let event = Event::new(kind, data).map_err(SendError::InvalidType)?;
    let mut failures = 0;
    loop {
        match publish(redis, channel, &event).await {
            Ok(()) => return Ok(event),
            Err(error) => {
                failures += 1;
                if failures >= attempts.max(1) {
                    return Err(error.into());
                }
                tracing::debug!(%error, attempt = failures, "publishing an event failed; retrying");
                tokio::time::sleep(backoff.delay(failures)).await;
            }
        }
    }
}

async fn publish(
    redis: &mut ConnectionManager,
    channel: &str,
    event: &Event,
) -> redis::RedisResult<()> {
    let payload = serde_json::to_string(event).expect("an event always serializes");
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async::<()>(redis)
        .await
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
    fn an_event_is_type_data_and_milliseconds() {
        let event = Event::new("statistics", json!({"kills": 3})).expect("a valid type");
        let value = serde_json::to_value(&event).expect("JSON");
        assert_eq!(value["type"], "statistics");
        assert_eq!(value["data"], json!({"kills": 3}));
        assert!(value["timestamp"].as_i64().expect("ms") > 1_600_000_000_000);
    }
}
