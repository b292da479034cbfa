//! R2Z2, zKillboard's live feed as numbered files: `ephemeral/sequence.json` names the newest
//! sequence and `ephemeral/{N}.json` holds the N-th killmail, 404 until it is produced. The
//! cursor, the last sequence whose job RabbitMQ confirmed, lives in PostgreSQL, so a restart
//! resumes at cursor + 1 and neither skips nor repeats a killmail. One poller at a time follows
//! a cursor: it holds a PostgreSQL advisory lock on it for as long as it polls, and saves the
//! cursor through the connection that holds it; another `worker-redisq` waits, and takes over
//! when the first stops or dies. A sequence is skipped only after it stayed missing for
//! [`R2z2Settings::skip_after`] while later ones existed, and each skip is logged and recorded
//! in `feed_skips` (see `db::cursors`), so that it can be repaired. After an outage longer than
//! R2Z2 keeps its files, the poller resynchronises to the present and repairs the hours it lost
//! (see `resync`).

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Answer, FeedHttp, checked, pause, publish};
use crate::backoff::Backoff;
use crate::db::cursors;
use crate::killmail::Source;
use crate::queue::{IngestJob, Publisher};
use crate::telemetry;
use crate::zkb;

/// The cursor's key in `feed_cursors` unless told otherwise.
pub const DEFAULT_FEED: &str = "r2z2";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2z2Settings {
    /// The cursor's key in `feed_cursors`.
    pub feed: String,
    /// How long to wait after a 404, the next killmail not being produced yet; zKillboard asks
    /// for at least 6 s.
    pub idle_wait: Duration,
    /// The least time between two requests; zKillboard allows fewer than 10 a second.
    pub min_interval: Duration,
    /// After 403/429 (refused) or a failure.
    pub backoff: Backoff,
    /// How long R2Z2 keeps its files, or a little less: a cursor that has not moved for this
    /// long, whose next file is gone while newer ones exist, was away longer than that, and
    /// the poller resynchronises (see `resync`).
    pub retention: Duration,
    /// zKillboard, whose daily history repairs the hours such an outage lost; without it the
    /// gap is only recorded.
    pub zkb_base_url: Option<String>,
    /// How long a sequence must stay missing, while R2Z2 names later ones, before it is
    /// skipped (and recorded in `feed_skips`).
    pub skip_after: Duration,
    /// How often a poller waiting for another one's lock on the cursor tries to take it.
    pub takeover_check: Duration,
}

impl Default for R2z2Settings {
    fn default() -> Self {
        Self {
            feed: DEFAULT_FEED.to_owned(),
            idle_wait: Duration::from_secs(6),
            min_interval: Duration::from_millis(110),
            backoff: Backoff::default(),
            retention: Duration::from_secs(20 * 3600),
            zkb_base_url: None,
            skip_after: Duration::from_secs(180),
            takeover_check: Duration::from_secs(5),
        }
    }
}

/// Why following stopped before shutdown.
enum Stop {
    /// Publishing failed: only a new connection (the session's restart) mends it.
    Broker(anyhow::Error),
    /// The store failed, and the cursor's lock may be gone with its connection.
    Store(anyhow::Error),
}

/// A sequence found missing while R2Z2 named a later one.
#[derive(Debug, Clone, Copy)]
struct Missing {
    /// The newest sequence R2Z2 named then: sequences up to it have existed since.
    newest: i64,
    since: Instant,
}

/// Reads R2Z2 from the cursor onwards and queues one `killmail.ingest` job per file.
pub struct R2z2Poller {
    pub http: reqwest::Client,
    /// Like `https://r2z2.zkillboard.com`, without `/ephemeral`.
    pub base_url: String,
    pub pool: PgPool,
    pub publisher: Publisher,
    pub settings: R2z2Settings,
}

/// `ephemeral/sequence.json`: `{"sequence": N}`.
#[derive(Deserialize)]
struct Pointer {
    // Some clients read `sequence_id` here; accepting both costs nothing.
    #[serde(alias = "sequence_id")]
    sequence: i64,
}

/// Decodes `ephemeral/sequence.json` into the newest sequence.
pub fn decode_pointer(body: &[u8]) -> Result<i64, String> {
    serde_json::from_slice::<Pointer>(body)
        .map(|p| p.sequence)
        .map_err(|e| format!("sequence.json is not {{\"sequence\": N}}: {e}"))
}

/// Decodes one `ephemeral/{N}.json` into a checked job; the error is the reason it is
/// dead-lettered with. Its job is sourced `redisq`, the live feed's source whichever endpoint
/// serves it.
pub fn decode_object(body: &[u8]) -> Result<IngestJob, String> {
    let object: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not an R2Z2 killmail object: {e}"))?;
    checked(&zkb::r2z2_object(object, Source::Redisq)?)
}

impl R2z2Poller {
    /// Polls until `shutdown`, once it holds the cursor's lock; an error means the broker is
    /// gone, and a restart resumes after the cursor. When the store goes away (and the lock
    /// with it), the poller stops polling until it holds the lock again.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = &self.settings;
        let mut http = FeedHttp::new("r2z2", settings.min_interval, settings.backoff);
        let mut outage = 0;
        loop {
            let error = match self.lock_cursor(&shutdown).await {
                Ok(None) => return Ok(()),
                Ok(Some(mut lock)) => {
                    if outage > 0 {
                        tracing::info!("the store is back; following R2Z2 again");
                        outage = 0;
                    }
                    match self.follow(&mut lock, &mut http, &shutdown).await {
                        Ok(()) => return Ok(()),
                        Err(Stop::Broker(error)) => return Err(error),
                        Err(Stop::Store(error)) => error,
                    }
                }
                Err(error) => error,
            };
            outage += 1;
            let delay = Backoff::RECONNECT.delay(outage);
            if outage == 1 {
                tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "the store is away, and the R2Z2 cursor's lock with it; polling stops until it is taken again");
            } else {
                tracing::debug!(error = format!("{error:#}"), retry_in = ?delay, "the store is still away");
            }
            if !pause(&shutdown, delay).await {
                return Ok(());
            }
        }
    }

    /// Follows the feed while `lock` holds the cursor: until shutdown (`Ok`), or the broker or
    /// the store fails.
    async fn follow(
        &self,
        lock: &mut PgConnection,
        http: &mut FeedHttp,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let settings = &self.settings;
        let cursor = cursors::load(&mut *lock, &settings.feed)
            .await
            .context("loading the R2Z2 cursor")
            .map_err(Stop::Store)?;
        let mut next = match cursor {
            Some(done) => {
                tracing::info!(feed.cursor = done, "resuming R2Z2 after its cursor");
                done + 1
            }
            None => match self.newest(http, shutdown).await {
                Some(newest) => {
                    tracing::info!(
                        feed.sequence = newest,
                        "no R2Z2 cursor: starting at the newest sequence"
                    );
                    newest
                }
                None => return Ok(()),
            },
        };
        self.repair_unfinished(shutdown)
            .await
            .map_err(Stop::Store)?;
        let mut missing: Option<Missing> = None;
        loop {
            let request = self.http.get(self.object_url(next));
            let answer = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                answer = http.get(request, "fetching an R2Z2 object") => answer,
            };
            match answer {
                Answer::Body(body) => {
                    // Taken: from here the object is published and the cursor saved even if
                    // shutdown comes meanwhile.
                    self.forward(next, &body).await.map_err(Stop::Broker)?;
                    self.save_cursor(lock, next).await.map_err(Stop::Store)?;
                    next += 1;
                }
                Answer::NotFound => {
                    // Usually the head of the feed. But a sequence missing below the newest one
                    // may never come (files expire after about a day), and waiting for it would
                    // stall the feed for good: once it stayed missing for `skip_after`, it is
                    // skipped, and so is any sequence R2Z2 already named then that is missing
                    // too (they have waited as long).
                    let newest = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        newest = self.newest_once(http) => newest,
                    };
                    if let Some(newest) = newest.filter(|newest| *newest > next)
                        && let Some(resumed) = self
                            .resync_after_outage(lock, next, newest, shutdown)
                            .await
                            .map_err(Stop::Store)?
                    {
                        next = resumed;
                        missing = None;
                        continue;
                    }
                    match (newest, missing) {
                        (Some(newest), _) if newest <= next => missing = None,
                        (None, _) => {}
                        (Some(_), Some(seen))
                            if next <= seen.newest
                                && seen.since.elapsed() >= settings.skip_after =>
                        {
                            self.skip(lock, next, seen).await.map_err(Stop::Store)?;
                            next += 1;
                            continue;
                        }
                        (Some(_), Some(seen)) if next <= seen.newest => {}
                        (Some(newest), _) => {
                            tracing::info!(
                                feed.sequence = next,
                                feed.newest = newest,
                                wait = ?settings.skip_after,
                                "R2Z2 sequence is missing while later ones exist; waiting for it before skipping it"
                            );
                            missing = Some(Missing {
                                newest,
                                since: Instant::now(),
                            });
                        }
                    }
                    if !pause(shutdown, settings.idle_wait).await {
                        return Ok(());
                    }
                }
                Answer::Retry(delay) => {
                    if !pause(shutdown, delay).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A connection holding the lock on the cursor, taken as soon as no other poller holds
    /// it; `None` on shutdown. The lock lasts as long as the connection, which is never handed
    /// back to the pool.
    async fn lock_cursor(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<PgConnection>> {
        let feed = &self.settings.feed;
        let mut connection = self
            .pool
            .acquire()
            .await
            .context("connecting for the R2Z2 cursor's lock")?
            .detach();
        let mut waited = false;
        loop {
            if cursors::try_lock(&mut connection, feed)
                .await
                .context("locking the R2Z2 cursor")?
            {
                if waited {
                    tracing::info!(feed, "took over the R2Z2 cursor");
                }
                return Ok(Some(connection));
            }
            if !waited {
                waited = true;
                tracing::info!(
                    feed,
                    "another worker-redisq follows this R2Z2 cursor; waiting to take over when it stops"
                );
            }
            if !pause(shutdown, self.settings.takeover_check).await {
                return Ok(None);
            }
        }
    }

    /// Skips `sequence`, missing since `seen`: logged, recorded in `feed_skips`, cursor moved.
    async fn skip(
        &self,
        lock: &mut PgConnection,
        sequence: i64,
        seen: Missing,
    ) -> anyhow::Result<()> {
        let reason = format!(
            "missing for {:.0?} while R2Z2 named sequence {} (expired or never published)",
            seen.since.elapsed(),
            seen.newest
        );
        tracing::warn!(feed = %self.settings.feed, feed.sequence = sequence, %reason, "skipping an R2Z2 sequence; recorded in feed_skips for repair");
        cursors::record_skip(&mut *lock, &self.settings.feed, sequence, &reason)
            .await
            .with_context(|| format!("recording the skip of R2Z2 sequence {sequence}"))?;
        self.save_cursor(lock, sequence).await
    }

    fn object_url(&self, sequence: i64) -> String {
        format!(
            "{}/ephemeral/{sequence}.json",
            self.base_url.trim_end_matches('/')
        )
    }

    fn pointer_url(&self) -> String {
        format!(
            "{}/ephemeral/sequence.json",
            self.base_url.trim_end_matches('/')
        )
    }

    /// The newest sequence, asking until R2Z2 says; `None` on shutdown.
    async fn newest(&self, http: &mut FeedHttp, shutdown: &CancellationToken) -> Option<i64> {
        loop {
            let request = self.http.get(self.pointer_url());
            let answer = tokio::select! {
                () = shutdown.cancelled() => return None,
                answer = http.get(request, "fetching R2Z2's sequence.json") => answer,
            };
            let delay = match answer {
                Answer::Body(body) => match decode_pointer(&body) {
                    Ok(sequence) => return Some(sequence),
                    Err(reason) => http.failed("reading R2Z2's sequence.json", &reason),
                },
                Answer::NotFound => http.failed("fetching R2Z2's sequence.json", "answered 404"),
                Answer::Retry(delay) => delay,
            };
            if !pause(shutdown, delay).await {
                return None;
            }
        }
    }

    /// The newest sequence if R2Z2 says so at the first asking.
    async fn newest_once(&self, http: &mut FeedHttp) -> Option<i64> {
        let request = self.http.get(self.pointer_url());
        match http.get(request, "fetching R2Z2's sequence.json").await {
            Answer::Body(body) => decode_pointer(&body).ok(),
            Answer::NotFound | Answer::Retry(_) => None,
        }
    }

    /// Publishes the object's job (confirmed), or dead-letters a body that cannot be one.
    async fn forward(&self, sequence: i64, body: &[u8]) -> anyhow::Result<()> {
        match decode_object(body) {
            Ok(job) => {
                publish(&self.publisher, &job)
                    .await
                    .with_context(|| format!("R2Z2 sequence {sequence}"))?;
                tracing::debug!(feed.sequence = sequence, killmail.id = %job.killmail_id, "queued");
            }
            Err(reason) => {
                let reason = format!("R2Z2 sequence {sequence}: {reason}");
                tracing::warn!(feed.sequence = sequence, %reason, "dead-lettering an R2Z2 object that is not a killmail");
                self.publisher
                    .dead_letter_body(body, &reason)
                    .await
                    .with_context(|| format!("dead-lettering R2Z2 sequence {sequence}"))?;
            }
        }
        Ok(())
    }

    /// Saves the cursor through the connection holding its lock: if that connection is gone,
    /// so is the lock, and the poller must stop rather than write a cursor another one owns.
    pub(super) async fn save_cursor(
        &self,
        lock: &mut PgConnection,
        sequence: i64,
    ) -> anyhow::Result<()> {
        cursors::save(lock, &self.settings.feed, sequence)
            .await
            .with_context(|| format!("saving the R2Z2 cursor at {sequence}"))?;
        metrics::gauge!(telemetry::FEED_CURSOR, "feed" => "r2z2").set(sequence as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::killmail::{Killmail, KillmailId, Zkb};

    const FIXTURE: &str = include_str!(
        "../../tests/it/fixtures/upstream/r2z2/r2z2-ephemeral-96599404-killmail-134265477.aa-killtracker.json"
    );

    fn fixture() -> serde_json::Value {
        serde_json::from_str(FIXTURE).expect("the fixture is JSON")
    }

    #[test]
    fn decodes_a_real_r2z2_object_into_a_job() {
        let job = decode_object(FIXTURE.as_bytes()).expect("a valid object");
        let value = fixture();
        assert_eq!(job.killmail_id, KillmailId(134265477));
        assert_eq!(job.hash, "aa937ee180fca44b172de00f2a26e751f5b2a851");
        assert_eq!(job.source, Source::Redisq);
        let killmail = job.killmail.expect("the ESI body");
        let esi: Killmail = serde_json::from_value(value["esi"].clone()).expect("ESI");
        assert_eq!(killmail, esi, "the killmail comes through field for field");
        assert_eq!(job.zkb, Some(Zkb(value["zkb"].clone())), "zkb as delivered");
    }

    #[test]
    fn sequence_updated_does_not_matter_to_decoding() {
        for updated in [
            serde_json::json!(96599999),
            serde_json::json!(true),
            serde_json::json!("2026-03-25T15:00:00Z"),
        ] {
            let mut value = fixture();
            value["sequence_updated"] = updated;
            let body = serde_json::to_vec(&value).expect("serializes");
            assert!(decode_object(&body).is_ok());
        }
    }

    #[test]
    fn takes_the_hash_from_zkb_when_the_object_has_none() {
        let mut value = fixture();
        value.as_object_mut().expect("an object").remove("hash");
        let body = serde_json::to_vec(&value).expect("serializes");
        let job = decode_object(&body).expect("a valid object");
        assert_eq!(job.hash, "aa937ee180fca44b172de00f2a26e751f5b2a851");
    }

    #[test]
    fn refuses_what_is_not_a_killmail() {
        assert!(
            decode_object(b"<html>502 Bad Gateway</html>")
                .expect_err("not JSON")
                .contains("not an R2Z2 killmail object")
        );

        let mut value = fixture();
        value["esi"]["killmail_id"] = serde_json::json!(1);
        let body = serde_json::to_vec(&value).expect("serializes");
        assert!(
            decode_object(&body)
                .expect_err("ids differ")
                .contains("carries killmail 1")
        );

        let mut value = fixture();
        value["esi"]["attackers"] = serde_json::json!([]);
        let body = serde_json::to_vec(&value).expect("serializes");
        assert!(
            decode_object(&body)
                .expect_err("no attackers")
                .contains("no attackers")
        );

        let mut value = fixture();
        value["hash"] = serde_json::json!("nope");
        let body = serde_json::to_vec(&value).expect("serializes");
        assert!(decode_object(&body).expect_err("bad hash").contains("hash"));

        let mut value = fixture();
        value.as_object_mut().expect("an object").remove("esi");
        let body = serde_json::to_vec(&value).expect("serializes");
        assert!(decode_object(&body).expect_err("no esi").contains("esi"));
    }

    #[test]
    fn decodes_the_sequence_pointer() {
        assert_eq!(decode_pointer(br#"{"sequence": 96599404}"#), Ok(96599404));
        assert_eq!(decode_pointer(br#"{"sequence_id": 7}"#), Ok(7));
        assert!(decode_pointer(b"{}").is_err());
        assert!(decode_pointer(b"not json").is_err());
    }
}
