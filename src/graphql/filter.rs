//! `KillmailFilter`, the GraphQL input, and its parsing into a `filter::Filter` (what it means
//! is there). Within one list any id matches; across fields all must hold.

use async_graphql::{ID, InputObject};

use super::time::EsiTime;
use super::{bad_input, parse_id};
use crate::filter::{Filter, Ids};
pub use crate::filter::{Involvement, SecurityClass};

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
    /// `killmailTime` from (inclusive) and to (exclusive).
    pub from: Option<EsiTime>,
    pub to: Option<EsiTime>,
    pub constellation_ids: Option<Vec<ID>>,
    /// The victim's ship group.
    pub ship_group_ids: Option<Vec<ID>>,
    /// Any of these security classes of the system.
    pub security: Option<Vec<SecurityClass>>,
    pub min_attackers: Option<i32>,
    pub max_attackers: Option<i32>,
    /// Any of these zKillboard labels (`pvp`, `solo`, `ganked`, `loc:highsec`, …).
    pub labels: Option<Vec<String>>,
    pub war_ids: Option<Vec<ID>>,
    /// Whether the killmail belongs to a war.
    pub war: Option<bool>,
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
            from: self.from.as_ref().map(|t| t.0),
            to: self.to.as_ref().map(|t| t.0),
            constellations: ids(&self.constellation_ids, "constellation")?,
            groups: ids(&self.ship_group_ids, "ship group")?,
            security: self.security.clone().unwrap_or_default(),
            min_attackers: self.min_attackers,
            max_attackers: self.max_attackers,
            labels: match &self.labels {
                Some(labels) if labels.len() > MAX_FILTER_IDS => {
                    return Err(bad_input(format!(
                        "a filter lists {} labels; at most {MAX_FILTER_IDS}",
                        labels.len()
                    )));
                }
                labels => labels.clone().unwrap_or_default(),
            },
            wars: ids(&self.war_ids, "war")?,
            war: self.war,
        })
    }
}
