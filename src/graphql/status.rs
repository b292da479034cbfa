//! `workerStatus`, as a query and as a subscription: what the server's status monitor worked
//! out last (see `status`), shared by every subscriber rather than worked out for each.

use std::sync::Arc;

use async_graphql::{ComplexObject, Context, Result};
use futures::Stream;

use super::hidden;
use super::time::EsiTime;
use crate::status::{FeedStatus, ProcessStatus, Status, WorkerStatus};

/// The status the server holds; an error where no monitor runs.
pub(super) fn served<'a>(ctx: &Context<'a>) -> Result<&'a Status> {
    ctx.data_opt::<Status>()
        .ok_or_else(|| hidden("the worker status is not served by this process"))
}

pub(super) async fn current(ctx: &Context<'_>) -> Result<Arc<WorkerStatus>> {
    served(ctx)?
        .current()
        .await
        .ok_or_else(|| hidden("the worker status monitor stopped"))
}

pub(super) fn updates(ctx: &Context<'_>) -> Result<impl Stream<Item = Arc<WorkerStatus>> + use<>> {
    Ok(served(ctx)?.updates())
}

#[ComplexObject]
impl WorkerStatus {
    /// When it was worked out.
    async fn at(&self) -> EsiTime {
        EsiTime(self.at)
    }
}

#[ComplexObject]
impl ProcessStatus {
    async fn started_at(&self) -> EsiTime {
        EsiTime(self.started_at)
    }

    /// Its last heartbeat.
    async fn last_seen(&self) -> EsiTime {
        EsiTime(self.last_seen)
    }
}

#[ComplexObject]
impl FeedStatus {
    /// When the cursor last moved.
    async fn updated_at(&self) -> EsiTime {
        EsiTime(self.updated_at)
    }
}
