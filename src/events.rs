//! Redis pub/sub: the `killmail added` event (DESIGN.md, "Event"), published only after the
//! killmail is committed, on a channel whose name is passed in.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};

use crate::killmail::{Killmail, Seq, Zkb};

pub const DEFAULT_CHANNEL: &str = "killreport:events:killmail:added";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KillmailAdded {
    pub seq: Seq,
    pub killmail: Killmail,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zkb: Option<Zkb>,
    /// The killmail's hash (also `zkb.hash` when there is a zkb block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Names the store could already give: characters, corporations, alliances, factions, the
    /// solar system and the ship and weapon types, keyed by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, String>,
}

/// A connection that reconnects by itself, for publishing: while Redis is away a command fails
/// within a few seconds (two reconnection attempts of a second each) rather than waiting on
/// it, and the next one tries again.
pub async fn connect(redis_url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(redis_url)?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(3)));
    ConnectionManager::new_with_config(client, config).await
}

/// Publishes events on one channel over a connection that reconnects by itself.
#[derive(Clone)]
pub struct EventPublisher {
    redis: ConnectionManager,
    channel: String,
}

impl EventPublisher {
    /// Connects (see [`connect`]).
    pub async fn connect(redis_url: &str, channel: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            redis: connect(redis_url).await?,
            channel: channel.to_owned(),
        })
    }

    /// Publishes events in order, in one round trip.
    pub async fn publish(&self, events: &[KillmailAdded]) -> redis::RedisResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for event in events {
            let payload = serde_json::to_string(event).expect("an event always serializes");
            pipe.publish(&self.channel, payload).ignore();
        }
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis).await
    }

    /// Round-trips a PING, for readiness checks.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut redis).await
    }
}
