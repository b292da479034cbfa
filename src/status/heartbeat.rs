//! Each process reports itself: every interval it writes a beat (who it is, where it runs, the
//! state of its dependencies) under the status keys on Redis, and takes it away when it stops.
//! The server reads the beats of the last minutes to tell which processes are alive. A beat is
//! best effort: while Redis is away the process goes on with its work and says so once.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::health::Readiness;

/// The longest beat read back; anything longer was not written by a killreport process.
const MAX_BEAT_BYTES: usize = 4096;
/// The most processes listed.
const MAX_PROCESSES: isize = 500;
/// A process unheard of this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Where the beats are kept on Redis: a hash of beats by process id and a sorted set of the
/// ids by the time of their last beat, both under one prefix (`STATUS_KEY`).
#[derive(Debug, Clone)]
pub struct Keys {
    pub beats: String,
    pub seen: String,
    /// Held by the server that publishes this interval's `worker-status` event.
    pub lease: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            beats: format!("{prefix}:processes"),
            seen: format!("{prefix}:seen"),
            lease: format!("{prefix}:lease"),
        }
    }
}

/// One process's report of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Beat {
    /// One per process run: host, pid and start time.
    pub id: String,
    /// The binary: `server`, `worker-killmails`, `worker-redisq`.
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// Milliseconds since the Unix epoch.
    pub started_at: i64,
    pub beat_at: i64,
    /// Each dependency the process needs, `true` while it answers (what `/readyz` says).
    pub dependencies: BTreeMap<String, bool>,
}

impl Beat {
    fn of_this_process(name: &str) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let now = Utc::now().timestamp_millis();
        Self {
            id: format!("{host}/{}/{now}", std::process::id()),
            name: name.to_owned(),
            host,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: now,
            beat_at: now,
            dependencies: BTreeMap::new(),
        }
    }
}

/// Where and how often a process beats (from `StatusArgs`).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub redis_url: String,
    pub keys: Keys,
    pub interval: Duration,
}

impl Heartbeat {
    /// Beats for the process `name` every interval until `shutdown`, then takes its beat
    /// away, so that a process that stopped is no longer listed. Runs in the background.
    pub fn start(self, name: &str, readiness: Readiness, shutdown: &CancellationToken) {
        let Heartbeat {
            redis_url,
            keys,
            interval,
        } = self;
        let shutdown = shutdown.clone();
        let mut beat = Beat::of_this_process(name);
        tokio::spawn(async move {
            let mut redis: Option<ConnectionManager> = None;
            let mut failing = false;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                let (_, states) = readiness.check().await;
                beat.dependencies = states
                    .into_iter()
                    .map(|(name, state)| (name, state == "up"))
                    .collect();
                beat.beat_at = Utc::now().timestamp_millis();
                match write(&redis_url, &mut redis, &keys, &beat).await {
                    Ok(()) if failing => {
                        tracing::info!("heartbeats reach Redis again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        tracing::warn!(%error, "a heartbeat could not be written; the status view will miss this process until Redis answers");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
            if let Some(redis) = &mut redis {
                let mut gone = redis::pipe();
                gone.hdel(&keys.beats, &beat.id).zrem(&keys.seen, &beat.id);
                if let Err(error) = gone.query_async::<()>(redis).await {
                    tracing::debug!(%error, "taking the heartbeat away failed; it will age out");
                }
            }
        });
    }
}

async fn write(
    redis_url: &str,
    redis: &mut Option<ConnectionManager>,
    keys: &Keys,
    beat: &Beat,
) -> redis::RedisResult<()> {
    if redis.is_none() {
        *redis = Some(crate::events::connect(redis_url).await?);
    }
    let redis = redis.as_mut().expect("connected above");
    let json = serde_json::to_string(beat).expect("a beat always serializes");
    redis::pipe()
        .atomic()
        .hset(&keys.beats, &beat.id, json)
        .zadd(&keys.seen, &beat.id, beat.beat_at)
        .query_async(redis)
        .await
}

/// The beats heard within the last [`FORGET_AFTER`], newest first, at most [`MAX_PROCESSES`];
/// older ones are removed. A beat that is not one (too long, not JSON) is left out: the keys
/// are shared with whoever else can write to this Redis.
pub async fn recent(redis: &mut ConnectionManager, keys: &Keys) -> redis::RedisResult<Vec<Beat>> {
    let forgotten = Utc::now().timestamp_millis() - FORGET_AFTER.as_millis() as i64;
    let old: Vec<String> = redis
        .zrangebyscore(&keys.seen, "-inf", format!("({forgotten}"))
        .await?;
    if !old.is_empty() {
        redis::pipe()
            .hdel(&keys.beats, &old)
            .zrem(&keys.seen, &old)
            .query_async::<()>(redis)
            .await?;
    }
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(&keys.seen)
        .arg("+inf")
        .arg(forgotten)
        .arg("BYSCORE")
        .arg("REV")
        .arg("LIMIT")
        .arg(0)
        .arg(MAX_PROCESSES)
        .query_async(redis)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let beats: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
        .arg(&keys.beats)
        .arg(&ids)
        .query_async(redis)
        .await?;
    Ok(beats
        .into_iter()
        .flatten()
        .filter(|bytes| bytes.len() <= MAX_BEAT_BYTES)
        .filter_map(|bytes| serde_json::from_slice::<Beat>(&bytes).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_is_camel_case_json_and_back() {
        let beat = Beat::of_this_process("worker-killmails");
        let json = serde_json::to_value(&beat).expect("JSON");
        assert_eq!(json["name"], "worker-killmails");
        assert!(json["startedAt"].as_i64().expect("ms") > 1_600_000_000_000);
        assert_eq!(serde_json::from_value::<Beat>(json).expect("back"), beat);
    }
}
