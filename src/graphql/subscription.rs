//! `Subscription.killmailAdded`: the process's live hub, which routes each event only to the
//! subscriptions whose filter it passes, before any resolver runs; `after` replays from the
//! store first (see `live::Hub::subscribe`). The WebSocket layer shares one execution of this
//! between all subscribers of the same document and variables (`ws::executions`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_graphql::{Context, Result, Subscription};
use futures::{Stream, StreamExt};

use super::{KillmailFilter, KillmailNode, bad_input, hidden};
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
        let filter = filter.unwrap_or_default().parse()?;
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
            (Some(after), Some(CatchUpTo(until))) => {
                hub.history(filter, after, *until).left_stream()
            }
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
}
