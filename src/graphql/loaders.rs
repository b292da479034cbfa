//! Batch loading for resolvers: every entity name a response needs, in one query.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use sqlx::PgPool;

/// Names of characters, corporations, alliances and factions by id.
pub struct NameLoader(pub PgPool);

impl Loader<i64> for NameLoader {
    type Value = String;
    type Error = std::sync::Arc<sqlx::Error>;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, String>, Self::Error> {
        crate::db::names::lookup(&self.0, keys)
            .await
            .map_err(std::sync::Arc::new)
    }
}
