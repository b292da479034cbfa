//! `Subscription.killmailAdded`: the process's live hub, which routes each event only to the
//! subscriptions whose filter it passes, before any resolver runs; `after` replays from the
//! store first (see `live::Hub::subscribe`). The WebSocket layer shares one execution of this
//! between all subscribers of the same document and variables (`ws::executions`).
//! `Subscription.events`: the event log (see `event_log`), the stream `/updates` gives, each
//! event with its cursor; `after` replays what the log holds after it first.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_graphql::{Context, Json, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

use super::{KillmailFilter, KillmailNode, bad_input, hidden, internal};
use crate::bus::Event;
use crate::event_log::{Cursor, EventLog, ResumeError};
use crate::killmail::Seq;
use crate::live::Hub;
use crate::status::WorkerStatus;

pub struct SubscriptionRoot;

/// Request data: `after` replays only up to this sequence, then the subscription ends (a
/// resuming subscriber catching up before it joins a shared execution).
pub struct CatchUpTo(pub Seq);

/// Request data: holds the sequence of the event behind the latest result, so whoever runs
/// the subscription knows which event each result is.
#[derive(Clone, Default)]
pub struct SeqTap(Arc<AtomicI64>);

impl SeqTap {
    pub fn get(&self) -> Seq {
        Seq(self.0.load(Ordering::SeqCst))
    }
}

/// An event of the log, as `/updates` gives it, with its place in the log.
#[derive(SimpleObject)]
#[graphql(name = "Event")]
pub struct EventNode {
    /// `killmail` for each stored killmail; `statistics`, `entity-activity`, or any type sent
    /// to the bus.
    #[graphql(name = "type")]
    kind: String,
    /// The payload, as it was sent.
    data: Json<serde_json::Value>,
    /// When it was sent.
    timestamp: DateTime<Utc>,
    /// Give it as `after` to resume right after this event.
    cursor: String,
}

impl EventNode {
    fn new(cursor: Cursor, event: Event) -> Self {
        Self {
            kind: event.kind,
            data: Json(event.data),
            timestamp: DateTime::from_timestamp_millis(event.timestamp).unwrap_or_default(),
            cursor: cursor.to_string(),
        }
    }
}

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// The pipeline's status now, then each time the server works it out again.
    async fn worker_status(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Arc<WorkerStatus>>> {
        super::status::updates(ctx)
    }

    /// New killmails as they are stored; `after` replays what a reconnecting client missed.
    async fn killmail_added(
        &self,
        ctx: &Context<'_>,
        filter: Option<KillmailFilter>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<KillmailNode>>> {
        killmails(ctx, filter.unwrap_or_default(), after)
    }

    /// The logged-in pilot's own kills and losses (as victim or attacker), from every source,
    /// as they are stored; `after` replays what a reconnecting client missed. Needs a session;
    /// when it expires or is ended, the connection is closed with 4403.
    async fn my_killmail_added(
        &self,
        ctx: &Context<'_>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<KillmailNode>>> {
        let session = super::rights::session(ctx)?;
        let filter = KillmailFilter {
            character_ids: Some(vec![async_graphql::ID(session.character_id.to_string())]),
            ..KillmailFilter::default()
        };
        killmails(ctx, filter, after)
    }

    /// Every event as it is sent (the stream `/updates` gives): `killmail` for each stored
    /// killmail, and every other type sent to the bus; only those of `types` when given.
    /// `after` (an event's `cursor`) replays what was sent after it first, then goes on live.
    async fn events(
        &self,
        ctx: &Context<'_>,
        types: Option<Vec<String>>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = Result<EventNode>>> {
        let types = crate::event_log::types(types).map_err(bad_input)?;
        let log = ctx.data::<EventLog>()?;
        let after = match after {
            None => None,
            Some(after) => match log.cursor(&after).await {
                Ok(cursor) => Some(cursor),
                Err(ResumeError::Cursor(reason)) => return Err(bad_input(reason)),
                Err(error @ ResumeError::Store(_)) => return Err(internal(error)),
            },
        };
        Ok(log.subscribe(types, after).map(|event| {
            let (cursor, event) = event.map_err(|error| {
                tracing::error!(error = format!("{error:#}"), "replay from the log failed");
                hidden("internal error: the replay failed; resume with `after`")
            })?;
            Ok(EventNode::new(cursor, event))
        }))
    }
}

/// Killmails passing `filter` as they are stored, `after` replaying first (see
/// `live::Hub::subscribe`).
fn killmails(
    ctx: &Context<'_>,
    filter: KillmailFilter,
    after: Option<String>,
) -> Result<impl Stream<Item = Result<KillmailNode>>> {
    let filter = filter.parse()?;
    let after = after
        .map(|cursor| {
            cursor
                .parse::<i64>()
                .ok()
                .filter(|seq| *seq >= 0)
                .map(Seq)
                .ok_or_else(|| bad_input(format!("{cursor:?} is not a killmail cursor")))
        })
        .transpose()?;
    let hub = ctx.data::<Hub>()?;
    let filter = Arc::new(filter);
    let events = match (after, ctx.data_opt::<CatchUpTo>()) {
        (Some(after), Some(CatchUpTo(until))) => hub.history(filter, after, *until).left_stream(),
        _ => hub.subscribe(filter, after).right_stream(),
    };
    let tap = ctx.data_opt::<SeqTap>().cloned();
    // A replay that failed ends the subscription with a generic error, its store's text
    // logged here, once; the client may resume.
    Ok(events.map(move |event| {
        let event = event.map_err(|error| {
            tracing::error!(error = format!("{error:#}"), "replay from the store failed");
            hidden("internal error: the replay failed; resume with `after`")
        })?;
        if let Some(tap) = &tap {
            tap.0.store(event.seq.0, Ordering::SeqCst);
        }
        Ok(KillmailNode::from(event))
    }))
}
