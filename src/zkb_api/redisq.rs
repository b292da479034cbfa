//! RedisQ at `/listen.php` (and `/redisq`), as zKillboard's README describes it: each `queueID`
//! gets every killmail stored after it was first seen, once, in `seq` order, as
//! `{"package": {killID, killmail, zkb}}`, or `{"package": null}` after waiting `ttw` seconds
//! (1–10, default 10; values outside are held to the range, as RedisQ did) with nothing new.
//! A queue's position lives in Redis, so whichever server answers continues it; a queue unused
//! for 3 hours expires and is forgotten. One poll per queue at a time: a second one while the
//! first waits is answered 429, as RedisQ did, through a lock in Redis with a lifetime beyond
//! the poll's, so a server that dies holding it does not keep the queue locked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::watch;

use super::{cached, refusal, zkb_with_hash};
use crate::db::killmails;
use crate::filter::Filter;
use crate::killmail::Seq;
use crate::live::Hub;

/// Where queue positions live unless told otherwise: `<prefix><queueID>`.
pub const DEFAULT_KEY_PREFIX: &str = "killreport:redisq:";
/// The longest queue id accepted.
pub const MAX_QUEUE_ID: usize = 100;
/// How long a queue nobody polls is remembered.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(3 * 3600);
const MAX_TTW: u64 = 10;
/// Releases a poll's lock only if it still holds it.
const UNLOCK: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// RedisQ's side of a server; clone it freely.
#[derive(Clone)]
pub struct Redisq {
    pool: PgPool,
    redis: ConnectionManager,
    prefix: Arc<str>,
    /// The newest `seq` the live hub passed on: polls wait on it.
    newest: watch::Receiver<Seq>,
}

impl Redisq {
    /// Serves queues from `pool` with positions in `redis` under `prefix`, woken by `hub`.
    pub fn new(pool: PgPool, redis: ConnectionManager, prefix: &str, hub: &Hub) -> Self {
        let (sender, newest) = watch::channel(hub.last());
        let killmails = hub.subscribe(Arc::new(Filter::default()), None);
        tokio::spawn(async move {
            tokio::pin!(killmails);
            while let Some(Ok(added)) = killmails.next().await {
                if sender.send(added.seq).is_err() {
                    return;
                }
            }
        });
        Self {
            pool,
            redis,
            prefix: prefix.into(),
            newest,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The queue's position, set to the store's newest killmail when the queue is new, and
    /// remembered for another 3 hours.
    async fn position(&mut self, key: &str) -> anyhow::Result<Seq> {
        let newest = killmails::latest_seq(&self.pool).await?;
        let ttl = FORGOTTEN_AFTER.as_secs();
        let (position,): (i64,) = redis::pipe()
            .cmd("SET")
            .arg(key)
            .arg(newest.0)
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .ignore()
            .cmd("EXPIRE")
            .arg(key)
            .arg(ttl)
            .ignore()
            .cmd("GET")
            .arg(key)
            .query_async(&mut self.redis)
            .await?;
        Ok(Seq(position))
    }

    /// The next killmail for the queue at `key`, waiting until `deadline` for one.
    async fn poll(&mut self, key: &str, ttw: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + ttw;
        let position = self.position(key).await?;
        let mut newest = self.newest.clone();
        loop {
            newest.borrow_and_update();
            let mut connection = self.pool.acquire().await?;
            if let Some(stored) = killmails::since(&mut connection, position, 1).await?.pop() {
                let ttl = FORGOTTEN_AFTER.as_secs();
                redis::cmd("SET")
                    .arg(key)
                    .arg(stored.seq.0)
                    .arg("EX")
                    .arg(ttl)
                    .query_async::<()>(&mut self.redis)
                    .await?;
                return Ok(Some(json!({
                    "killID": stored.killmail.killmail_id.0,
                    "killmail": stored.killmail,
                    "zkb": zkb_with_hash(stored.zkb.as_ref(), Some(&stored.hash)),
                })));
            }
            drop(connection);
            tokio::select! {
                changed = newest.changed() => if changed.is_err() { return Ok(None) },
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }
}

/// `GET /listen.php?queueID=Q&ttw=N`.
pub async fn listen(
    State(mut redisq): State<Redisq>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let queue = match params.get("queueID").map(|q| q.trim()) {
        None | Some("") => {
            let reason = "queueID is required: /listen.php?queueID=<your stable id>";
            return refusal(StatusCode::BAD_REQUEST, reason);
        }
        Some(queue) if queue.chars().count() > MAX_QUEUE_ID => {
            let reason = format!("queueID is too long: at most {MAX_QUEUE_ID} characters");
            return refusal(StatusCode::BAD_REQUEST, &reason);
        }
        Some(queue) => queue.to_owned(),
    };
    let ttw = match params.get("ttw").map(|t| t.trim().parse::<u64>()) {
        None => MAX_TTW,
        Some(Ok(ttw)) => ttw.clamp(1, MAX_TTW),
        Some(Err(_)) => {
            let reason = "ttw is the seconds to wait: a whole number, held to 1–10";
            return refusal(StatusCode::BAD_REQUEST, reason);
        }
    };
    let key = format!("{}{queue}", redisq.prefix);
    let lock = format!("{key}:polling");
    let token = format!("{:016x}", rand::random::<u64>());
    let locked: redis::RedisResult<Option<String>> = redis::cmd("SET")
        .arg(&lock)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg((ttw + 5) * 1000)
        .query_async(&mut redisq.redis)
        .await;
    match locked {
        Ok(Some(_)) => {}
        Ok(None) => {
            let reason = "another request is already polling this queueID: one at a time";
            return refusal(StatusCode::TOO_MANY_REQUESTS, reason);
        }
        Err(error) => return failed(&error),
    }
    let package = redisq.poll(&key, Duration::from_secs(ttw)).await;
    let unlocked = redis::Script::new(UNLOCK)
        .key(&lock)
        .arg(&token)
        .invoke_async::<i64>(&mut redisq.redis)
        .await;
    if let Err(error) = unlocked {
        tracing::warn!(%error, "releasing a RedisQ poll's lock failed; it expires by itself");
    }
    match package {
        Ok(package) => cached("no-store", axum::Json(json!({ "package": package }))),
        Err(error) => failed(&format!("{error:#}")),
    }
}

/// PostgreSQL or Redis failed: logged here, the client told only that.
fn failed(error: &dyn std::fmt::Display) -> Response {
    tracing::error!(%error, "a RedisQ poll failed");
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "RedisQ is unavailable; try again",
    )
}
