//! The event log as one stream (DESIGN.md, "Events"): every event with its cursor. `killmail`
//! events are the stored killmails themselves, in `seq` order through the live hub; the others
//! are read from the log's table (`db::events`) whenever the bus rings, and every few seconds
//! in case a ring was lost, and passed on in id order to every subscriber of the process.
//! Nothing read from Redis is delivered: a ring only says "read the log". A subscriber with a
//! cursor replays what the store holds after it, then goes live, with no gap and no duplicate
//! on either side. A cursor names a place on both sides (the last killmail sequence and the
//! last event id it covers), so the two sides need no common order. Also the retention that
//! deletes old events other than `killmail` (those live as long as their killmails).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use sqlx::PgPool;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bus::{Event, KILLMAIL, Logged, Ring, check_type};
use crate::db;
use crate::events::KillmailAdded;
use crate::killmail::Seq;
use crate::live::Hub;

/// Events read from the log per page.
const PAGE: i64 = 200;
/// Events a subscriber may fall behind before it catches up from the log instead.
const BUFFER: usize = 1024;
/// How often the log is read although the bus did not ring (a ring lost with Redis).
const POLL: Duration = Duration::from_secs(2);
/// The longest ring accepted from Redis, in bytes.
const MAX_RING_BYTES: usize = 64;
/// The longest cursor accepted, in characters (two 64-bit numbers and a dot).
const MAX_CURSOR_CHARS: usize = 41;
/// The most types one subscription may ask for.
pub const MAX_TYPES: usize = 100;
/// How often old events are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// Events deleted per statement.
const PURGE_BATCH: i64 = 10_000;

/// A place in the event log: every killmail up to `seq` and every other event up to `event`
/// are behind it. Clients see it as an opaque string (`{seq}.{event}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub seq: Seq,
    pub event: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.seq.0, self.event)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shown: String = text.chars().take(MAX_CURSOR_CHARS).collect();
        let malformed = || {
            format!(
                "{shown:?} is not an event cursor: give the `cursor` (SSE: the `id`) of an event this stream sent"
            )
        };
        if text.len() > MAX_CURSOR_CHARS {
            return Err(malformed());
        }
        let (seq, event) = text.split_once('.').ok_or_else(malformed)?;
        let number = |part: &str| {
            part.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| part.parse::<i64>().ok())
                .flatten()
                .ok_or_else(malformed)
        };
        Ok(Self {
            seq: Seq(number(seq)?),
            event: number(event)?,
        })
    }
}

/// Why a subscription could not resume from a cursor.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The client's mistake: the message says what is wrong.
    #[error("{0}")]
    Cursor(String),
    #[error("reading the event log: {0}")]
    Store(#[from] sqlx::Error),
}

/// Which types a subscription asks for (`None`: every type), once each is checked
/// ([`check_type`]) and there are at most [`MAX_TYPES`].
pub fn types(asked: Option<Vec<String>>) -> Result<Option<Arc<[String]>>, String> {
    let Some(mut asked) = asked else {
        return Ok(None);
    };
    if asked.len() > MAX_TYPES {
        return Err(format!("at most {MAX_TYPES} types, not {}", asked.len()));
    }
    for kind in &asked {
        check_type(kind).map_err(|reason| format!("type {kind:?}: {reason}"))?;
    }
    asked.sort_unstable();
    asked.dedup();
    Ok(Some(asked.into()))
}

/// The process's event log: killmails from the live hub, the other events from the log's
/// table; clone it freely.
#[derive(Clone)]
pub struct EventLog {
    pool: PgPool,
    hub: Hub,
    others: Arc<Others>,
}

/// The events other than `killmail`: the last id passed on, and the way to every subscriber.
struct Others {
    last: Mutex<i64>,
    sender: broadcast::Sender<Arc<Logged>>,
    ring: Notify,
    /// Malformed messages on the bus channel, for logging them without flooding the log.
    malformed: AtomicU64,
}

impl EventLog {
    /// Starts reading the log whenever `channel` rings (and every [`POLL`]), beside the
    /// killmails of `hub`, until `shutdown`.
    pub async fn start(
        pool: PgPool,
        hub: Hub,
        redis_url: &str,
        channel: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        let last = db::events::latest_id(&pool).await?;
        let log = Self {
            pool,
            hub,
            others: Arc::new(Others {
                last: Mutex::new(last),
                sender: broadcast::channel(BUFFER).0,
                ring: Notify::new(),
                malformed: AtomicU64::new(0),
            }),
        };
        tokio::spawn(
            log.clone()
                .listen(client, channel.to_owned(), pubsub, shutdown.clone()),
        );
        tokio::spawn(log.clone().read(shutdown));
        Ok(log)
    }

    fn last(&self) -> std::sync::MutexGuard<'_, i64> {
        // One number: a poisoned lock still holds a consistent one.
        self.others
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Listens to the bus channel, resubscribing after each outage; each ring (and each
    /// resubscription, which may have missed some) makes [`Self::read`] look at the log.
    async fn listen(
        self,
        client: redis::Client,
        channel: String,
        first: redis::aio::PubSub,
        shutdown: CancellationToken,
    ) {
        let mut pubsub = Some(first);
        let mut failures = 0;
        loop {
            let subscribed = match pubsub.take() {
                Some(pubsub) => Ok(pubsub),
                None => {
                    async {
                        let mut pubsub = client.get_async_pubsub().await?;
                        pubsub.subscribe(&channel).await?;
                        Ok::<_, redis::RedisError>(pubsub)
                    }
                    .await
                }
            };
            match subscribed {
                Ok(pubsub) => {
                    if failures > 0 {
                        tracing::info!("the event bus subscription is back");
                        self.others.ring.notify_one();
                    }
                    failures = 0;
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            message = messages.next() => match message {
                                Some(message) => self.rung(message.get_payload_bytes()),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("the event bus subscription was lost; resubscribing");
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%error, "subscribing to the event bus failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Backoff::RECONNECT.delay(failures.max(1))) => {}
            }
        }
    }

    /// One message on the bus channel: a ring for an event not passed on yet makes the log be
    /// read; anything else is ignored (and logged, the first and every thousandth time).
    fn rung(&self, payload: &[u8]) {
        let ring = (payload.len() <= MAX_RING_BYTES)
            .then(|| serde_json::from_slice::<Ring>(payload).ok())
            .flatten()
            .filter(|ring| ring.id > 0);
        match ring {
            Some(ring) if ring.id > *self.last() => self.others.ring.notify_one(),
            Some(_) => {}
            None => {
                let count = self.others.malformed.fetch_add(1, Ordering::Relaxed);
                if count.is_multiple_of(1000) {
                    tracing::warn!(
                        bytes = payload.len(),
                        malformed = count + 1,
                        "ignoring a message on the event bus that is no ring ({{\"id\": N}})"
                    );
                }
            }
        }
    }

    /// Reads the log after the last event passed on, whenever the bus rings and every
    /// [`POLL`], and passes on what is new, in id order.
    async fn read(self, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.others.ring.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
            match self.pass_on_new().await {
                Ok(()) if std::mem::take(&mut failing) => {
                    tracing::info!("the event log can be read again");
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::error!(%error, "reading the event log failed; retrying");
                }
                Err(_) => {}
            }
        }
    }

    async fn pass_on_new(&self) -> sqlx::Result<()> {
        loop {
            let last = *self.last();
            let page = db::events::after(&self.pool, last, None, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for row in page {
                let logged = Arc::new(Logged::from(row));
                // Under the lock, so a new subscriber sees either this event or its id as
                // already passed on, never neither.
                let mut last = self.last();
                *last = logged.id;
                // No subscriber is no error.
                let _ = self.others.sender.send(logged);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// `text` as a cursor of this log: well-formed and not ahead of what the store holds.
    pub async fn cursor(&self, text: &str) -> Result<Cursor, ResumeError> {
        let cursor: Cursor = text.parse().map_err(ResumeError::Cursor)?;
        let seq = db::killmails::latest_seq(&self.pool).await?;
        let event = db::events::last_drawn(&self.pool).await?;
        if cursor.seq > seq || cursor.event > event {
            return Err(ResumeError::Cursor(format!(
                "cursor {cursor} is ahead of the event log (at {}): it was not given by this server",
                Cursor { seq, event }
            )));
        }
        Ok(cursor)
    }

    /// Every event of `types` (all when `None`) after `after`, each with the cursor just
    /// past it: what the store holds after the cursor first, then live; or live ones from now
    /// when `after` is `None`. Registered at once, so nothing sent after this call is missed.
    /// When a replay from the store fails, its error is the last item: the client may resume.
    pub fn subscribe(
        &self,
        types: Option<Arc<[String]>>,
        after: Option<Cursor>,
    ) -> impl Stream<Item = anyhow::Result<(Cursor, Event)>> + Send + 'static {
        let wants = |killmails: bool| {
            types.as_ref().is_none_or(|types| {
                types
                    .iter()
                    .any(|kind| (kind.as_str() == KILLMAIL) == killmails)
            })
        };
        // Read before subscribing: a killmail passed on in between is replayed after this
        // cursor rather than skipped.
        let seq = after.map_or_else(|| self.hub.last(), |after| after.seq);
        let killmails = if wants(true) {
            let killmails = self
                .hub
                .subscribe(Arc::default(), after.map(|after| after.seq));
            killmails.map(Side::Killmail).left_stream()
        } else {
            futures::stream::empty().right_stream()
        };
        let (event, others) = if wants(false) {
            let (start, others) = self.others(types.clone(), after.map(|after| after.event));
            (start, others.map(Side::Other).left_stream())
        } else {
            let start = after.map_or_else(|| *self.last(), |after| after.event);
            (start, futures::stream::empty().right_stream())
        };
        let cursor = Cursor { seq, event };
        futures::stream::select(killmails, others).scan(
            (cursor, false),
            |(cursor, failed), side| {
                let item = match side {
                    _ if *failed => None,
                    Side::Killmail(Ok(added)) => {
                        cursor.seq = added.seq;
                        Some(Ok((*cursor, Event::killmail(&added))))
                    }
                    Side::Other(Ok(logged)) => {
                        cursor.event = logged.id;
                        Some(Ok((*cursor, logged.event.clone())))
                    }
                    Side::Killmail(Err(error)) | Side::Other(Err(error)) => {
                        *failed = true;
                        Some(Err(error))
                    }
                };
                futures::future::ready(item)
            },
        )
    }

    /// The events other than `killmail` of `types` after id `after` (stored ones first, then
    /// live), or live ones from now; and the id it starts from.
    fn others(
        &self,
        types: Option<Arc<[String]>>,
        after: Option<i64>,
    ) -> (
        i64,
        impl Stream<Item = anyhow::Result<Arc<Logged>>> + Send + 'static,
    ) {
        struct State {
            pool: PgPool,
            types: Option<Arc<[String]>>,
            inbox: broadcast::Receiver<Arc<Logged>>,
            last: i64,
            replaying: bool,
            buffer: VecDeque<Arc<Logged>>,
            failed: bool,
        }
        // The last id is read under the lock: an event is either passed on before it (and
        // counted in it) or reaches this inbox.
        let (inbox, last) = {
            let last = self.last();
            (self.others.sender.subscribe(), *last)
        };
        let start = after.unwrap_or(last);
        let state = State {
            pool: self.pool.clone(),
            types,
            inbox,
            last: start,
            replaying: after.is_some(),
            buffer: VecDeque::new(),
            failed: false,
        };
        let stream = futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(logged) = state.buffer.pop_front() {
                    return Some((Ok(logged), state));
                }
                if state.failed {
                    return None;
                }
                if state.replaying {
                    let types = state.types.as_deref();
                    match db::events::after(&state.pool, state.last, types, PAGE).await {
                        Ok(page) => match page.last() {
                            Some(newest) => {
                                state.last = newest.id;
                                let page = page.into_iter().map(|row| Arc::new(row.into()));
                                state.buffer.extend(page);
                            }
                            None => state.replaying = false,
                        },
                        Err(error) => {
                            state.failed = true;
                            return Some((Err(error.into()), state));
                        }
                    }
                    continue;
                }
                match state.inbox.recv().await {
                    Ok(logged) if logged.id > state.last => {
                        state.last = logged.id;
                        let wanted = state.types.as_ref().is_none_or(|types| {
                            types.iter().any(|kind| *kind == logged.event.kind)
                        });
                        if wanted {
                            return Some((Ok(logged), state));
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        tracing::debug!(
                            "an event subscriber fell behind; catching up from the log"
                        );
                        state.replaying = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        (start, stream)
    }
}

/// An item of either side of the log.
enum Side {
    Killmail(anyhow::Result<Arc<KillmailAdded>>),
    Other(anyhow::Result<Arc<Logged>>),
}

/// Deletes events other than `killmail` sent more than `retention` ago, now and every
/// [`PURGE_EVERY`], until `shutdown`. Several servers doing so at once is harmless.
pub async fn keep_for(pool: PgPool, retention: Duration, shutdown: CancellationToken) {
    loop {
        match purge(&pool, retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "deleted events past their retention"),
            Err(error) => tracing::warn!(%error, "deleting old events failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}

/// Deletes, in batches, the events other than `killmail` sent more than `retention` ago;
/// gives how many.
pub async fn purge(pool: &PgPool, retention: Duration) -> sqlx::Result<u64> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let Some(before) = chrono::Utc::now().checked_sub_signed(retention) else {
        return Ok(0);
    };
    let mut deleted = 0;
    loop {
        let batch = db::events::delete_sent_before(pool, before, PURGE_BATCH).await?;
        deleted += batch;
        if batch < PURGE_BATCH as u64 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_writes() {
        let cursor = Cursor {
            seq: Seq(1042),
            event: 7,
        };
        assert_eq!(cursor.to_string(), "1042.7");
        assert_eq!("1042.7".parse::<Cursor>(), Ok(cursor));
        let start = Cursor {
            seq: Seq(0),
            event: 0,
        };
        assert_eq!("0.0".parse::<Cursor>(), Ok(start));
    }

    #[test]
    fn a_bad_cursor_says_so() {
        let long = "1".repeat(100);
        for bad in [
            "",
            "12",
            "1.2.3",
            "-1.2",
            "1.-2",
            "+1.2",
            "a.b",
            "1. 2",
            "99999999999999999999.1",
            long.as_str(),
        ] {
            let error = bad.parse::<Cursor>().expect_err(bad);
            assert!(error.contains("not an event cursor"), "{bad}: {error}");
            assert!(error.len() < 200, "{error}");
        }
    }

    #[test]
    fn types_are_checked_and_bounded() {
        assert_eq!(types(None), Ok(None));
        let asked = vec![
            "statistics".to_owned(),
            "killmail".to_owned(),
            "statistics".to_owned(),
        ];
        let kept = types(Some(asked)).expect("valid").expect("some");
        assert_eq!(kept.as_ref(), ["killmail", "statistics"]);
        assert!(types(Some(vec![String::new()])).is_err());
        assert!(types(Some(vec!["x".to_owned(); MAX_TYPES + 1])).is_err());
    }
}
