//! The GraphQL API: the schema of DESIGN.md (queries over the store, `killmailAdded` from the
//! live hub), its limits, and the errors clients see. Static names (systems, regions, item
//! types) are held in memory; entity names are batch-loaded per request.

mod admin;
mod entities;
mod filter;
mod limits;
mod loaders;
mod me;
mod query;
mod rights;
mod stats;
mod status;
mod subscription;
mod time;
mod types;

pub use filter::{Involvement, KillmailFilter, MAX_FILTER_IDS};
pub use limits::{MAX_ALIASES, MAX_EXPANDED_FIELDS, MAX_NESTING, parse};
pub use subscription::{CatchUpTo, SeqTap};
pub use types::KillmailNode;

use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::{ErrorExtensions, MergedObject, Schema, SchemaBuilder};
use sqlx::PgPool;

use crate::event_log::EventLog;
use crate::live::Hub;
use crate::statics::Statics;
use crate::status::Status;

pub type KillreportSchema = Schema<Query, admin::MutationRoot, subscription::SubscriptionRoot>;

/// Subscriptions whose results depend on who asks: never shared between connections.
pub const PRIVATE_SUBSCRIPTIONS: [&str; 1] = ["myKillmailAdded"];

/// Every query: the killmails and entities, and the statistics.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct Query(query::QueryRoot, stats::StatsQuery);

/// Deepest query accepted: enough for a killmail's nested item tree and entity links.
pub const MAX_DEPTH: usize = 12;
/// Costliest query accepted; a connection costs `first` (at least 1: `first: 0` still runs its
/// statements) times what each node asks for, a killmail's attackers and items what a killmail
/// holds on average (see `limits`).
pub const MAX_COMPLEXITY: usize = 20_000;
/// Largest page of a connection.
pub const MAX_PAGE: i32 = 200;

/// The schema without its data: enough to export the SDL.
pub fn schema_builder() -> SchemaBuilder<Query, admin::MutationRoot, subscription::SubscriptionRoot>
{
    Schema::build(
        Query::default(),
        admin::MutationRoot,
        subscription::SubscriptionRoot,
    )
    .extension(limits::DocumentSize)
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
}

/// The schema with what its resolvers need.
pub fn schema(
    pool: PgPool,
    hub: Hub,
    log: EventLog,
    statics: Arc<Statics>,
    status: Status,
) -> KillreportSchema {
    schema_builder()
        .data(DataLoader::new(
            loaders::NameLoader(pool.clone()),
            tokio::spawn,
        ))
        .data(DataLoader::new(
            entities::CorporationLoader(pool.clone()),
            tokio::spawn,
        ))
        .data(DataLoader::new(
            entities::AllianceLoader(pool.clone()),
            tokio::spawn,
        ))
        .data(pool)
        .data(hub)
        .data(log)
        .data(statics)
        .data(status)
        .finish()
}

/// A mistake in the request: the message says what to change.
pub(crate) fn bad_input(message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", "BAD_USER_INPUT"))
}

/// A failure on our side: logged once with its chain, shown to the client without detail;
/// a query over its time, or one that found every query connection busy, is told so.
pub(crate) fn internal(error: impl Into<anyhow::Error>) -> async_graphql::Error {
    let error = error.into();
    match error.downcast_ref::<sqlx::Error>() {
        Some(e) if crate::db::is_timeout(e) => {
            tracing::warn!("a GraphQL query ran over its statement timeout");
            return coded(
                "the query ran over its time and was cancelled; ask for less (a smaller first)",
                "QUERY_TIMEOUT",
            );
        }
        Some(sqlx::Error::PoolTimedOut) => {
            tracing::warn!("a GraphQL query found every query connection busy");
            return coded("too many queries at once; try again shortly", "BUSY");
        }
        _ => {}
    }
    tracing::error!(error = format!("{error:#}"), "GraphQL request failed");
    hidden("internal error")
}

/// A failure on our side, logged already: the client sees `message` (what it may do next),
/// never the failure's own text.
pub(crate) fn hidden(message: &str) -> async_graphql::Error {
    coded(message, "INTERNAL")
}

fn coded(message: &str, code: &'static str) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// Parses a 64-bit id given as `ID`.
pub(crate) fn parse_id(id: &async_graphql::ID, what: &str) -> async_graphql::Result<i64> {
    id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        bad_input(format!(
            "{what} id {:?} is not a positive 64-bit integer",
            id.as_str()
        ))
    })
}
