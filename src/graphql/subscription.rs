//! `Subscription.killmailAdded`: the process's live hub, filtered per subscriber before any
//! resolver runs; `after` replays from the store first (see `live::Hub::subscribe`).

use std::sync::Arc;

use async_graphql::{Context, Result, Subscription};
use futures::{Stream, StreamExt};

use super::{KillmailFilter, KillmailNode, Statics, bad_input};
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
        let statics = Arc::clone(ctx.data_unchecked::<Arc<Statics>>());
        let events = ctx.data_unchecked::<Hub>().subscribe(after);
        Ok(events.filter_map(move |event| {
            let pass = filter.matches(&event.killmail, event.zkb.as_ref(), &statics);
            futures::future::ready(pass.then(|| KillmailNode::from(event)))
        }))
    }
}
