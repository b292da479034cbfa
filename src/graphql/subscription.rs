//! `Subscription.killmailAdded`: the process's live hub, which routes each event only to the
//! subscriptions whose filter it passes, before any resolver runs; `after` replays from the
//! store first (see `live::Hub::subscribe`). The WebSocket layer shares one execution of this
//! between all subscribers of the same document and variables (`ws::feeds`).

use std::sync::Arc;

use async_graphql::{Context, Result, Subscription};
use futures::{Stream, StreamExt};

use super::{KillmailFilter, KillmailNode, bad_input};
use crate::killmail::Seq;
use crate::live::Hub;

pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// New killmails as they are stored; `after` replays what a reconnecting client missed.
    async fn killmail_added(
        &self,
        ctx: &Context<'_>,
        filter: Option<KillmailFilter>,
        after: Option<String>,
    ) -> Result<impl Stream<Item = KillmailNode>> {
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
        let events = ctx
            .data_unchecked::<Hub>()
            .subscribe(Arc::new(filter), after);
        Ok(events.map(KillmailNode::from))
    }
}
