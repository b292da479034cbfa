//! `KillmailFilter`, the GraphQL input, and its parsing into a `filter::Filter` (what it means
//! is there). Within one list any id matches; across fields all must hold.

use async_graphql::{ID, InputObject};

use super::{bad_input, parse_id};
pub use crate::filter::Involvement;
use crate::filter::{Filter, Ids};

#[derive(InputObject, Clone, Debug, Default)]
pub struct KillmailFilter {
    pub character_ids: Option<Vec<ID>>,
    pub corporation_ids: Option<Vec<ID>>,
    pub alliance_ids: Option<Vec<ID>>,
    /// The victim's ship type.
    pub ship_type_ids: Option<Vec<ID>>,
    pub solar_system_ids: Option<Vec<ID>>,
    pub region_ids: Option<Vec<ID>>,
    /// zKillboard's total value, at least this (killmails without a zkb block never match).
    pub min_value: Option<f64>,
    pub npc: Option<bool>,
    pub solo: Option<bool>,
    #[graphql(default)]
    pub involvement: Involvement,
}

/// Most ids one list of a filter may hold.
pub const MAX_FILTER_IDS: usize = 1_000;

fn ids(list: &Option<Vec<ID>>, what: &str) -> async_graphql::Result<Ids> {
    let list = list.as_deref().unwrap_or_default();
    if list.len() > MAX_FILTER_IDS {
        return Err(bad_input(format!(
            "a filter lists {} {what} ids; at most {MAX_FILTER_IDS}",
            list.len()
        )));
    }
    list.iter().map(|id| parse_id(id, what)).collect()
}

impl KillmailFilter {
    pub fn parse(&self) -> async_graphql::Result<Filter> {
        Ok(Filter {
            characters: ids(&self.character_ids, "character")?,
            corporations: ids(&self.corporation_ids, "corporation")?,
            alliances: ids(&self.alliance_ids, "alliance")?,
            ships: ids(&self.ship_type_ids, "ship type")?,
            systems: ids(&self.solar_system_ids, "solar system")?,
            regions: ids(&self.region_ids, "region")?,
            min_value: self.min_value,
            npc: self.npc,
            solo: self.solo,
            involvement: self.involvement,
        })
    }
}
