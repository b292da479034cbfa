//! `KillmailFilter`: the same meaning applied two ways, as SQL over the store (the `killmails`
//! connection) and in memory over an event (the `killmailAdded` subscription). Within one list
//! any id matches; across fields all must hold.

use async_graphql::{Enum, ID, InputObject};
use sqlx::{Postgres, QueryBuilder};

use super::{Statics, parse_id};
use crate::killmail::{Killmail, Zkb};

/// Where entity ids of a filter must appear.
#[derive(Enum, Copy, Clone, Debug, Default, Eq, PartialEq)]
pub enum Involvement {
    Victim,
    Attacker,
    #[default]
    Any,
}

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

/// A filter with its ids parsed, ready to apply.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    characters: Vec<i64>,
    corporations: Vec<i64>,
    alliances: Vec<i64>,
    ships: Vec<i64>,
    systems: Vec<i64>,
    regions: Vec<i64>,
    min_value: Option<f64>,
    npc: Option<bool>,
    solo: Option<bool>,
    involvement: Involvement,
}

fn ids(list: &Option<Vec<ID>>, what: &str) -> async_graphql::Result<Vec<i64>> {
    list.iter().flatten().map(|id| parse_id(id, what)).collect()
}

impl KillmailFilter {
    pub fn parse(&self) -> async_graphql::Result<Parsed> {
        Ok(Parsed {
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

/// Entity columns: (victim column on `killmails`, column on `attackers`).
const ENTITY_COLUMNS: [(&str, &str); 3] = [
    ("victim_character_id", "character_id"),
    ("victim_corporation_id", "corporation_id"),
    ("victim_alliance_id", "alliance_id"),
];

impl Parsed {
    fn entity_lists(&self) -> [&[i64]; 3] {
        [&self.characters, &self.corporations, &self.alliances]
    }

    /// Appends ` AND …` conditions on `killmails k` to `sql`.
    pub fn push_sql(&self, sql: &mut QueryBuilder<'_, Postgres>) {
        for (list, (victim_column, attacker_column)) in
            self.entity_lists().into_iter().zip(ENTITY_COLUMNS)
        {
            if list.is_empty() {
                continue;
            }
            sql.push(" AND (");
            if self.involvement != Involvement::Attacker {
                sql.push(format_args!("k.{victim_column} = ANY("))
                    .push_bind(list.to_vec())
                    .push(")");
            }
            if self.involvement == Involvement::Any {
                sql.push(" OR ");
            }
            if self.involvement != Involvement::Victim {
                sql.push(format_args!(
                    "k.killmail_id IN (SELECT a.killmail_id FROM attackers a WHERE a.{attacker_column} = ANY("
                ))
                .push_bind(list.to_vec())
                .push("))");
            }
            sql.push(")");
        }
        for (list, column) in [
            (&self.ships, "victim_ship_type_id"),
            (&self.systems, "solar_system_id"),
            (&self.regions, "region_id"),
        ] {
            if !list.is_empty() {
                sql.push(format_args!(" AND k.{column} = ANY("))
                    .push_bind(list.clone())
                    .push(")");
            }
        }
        if let Some(min) = self.min_value {
            sql.push(" AND k.total_value >= ").push_bind(min);
        }
        if let Some(npc) = self.npc {
            sql.push(" AND k.npc = ").push_bind(npc);
        }
        if let Some(solo) = self.solo {
            sql.push(" AND k.solo = ").push_bind(solo);
        }
    }

    /// Whether an event's killmail passes the filter.
    pub fn matches(&self, killmail: &Killmail, zkb: Option<&Zkb>, statics: &Statics) -> bool {
        let victim = &killmail.victim;
        let victim_ids = [
            victim.character_id,
            victim.corporation_id,
            victim.alliance_id,
        ];
        for (index, list) in self.entity_lists().into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let hit = |id: Option<i64>| id.is_some_and(|id| list.contains(&id));
            let as_victim = self.involvement != Involvement::Attacker && hit(victim_ids[index]);
            let as_attacker = self.involvement != Involvement::Victim
                && killmail
                    .attackers
                    .iter()
                    .any(|a| hit([a.character_id, a.corporation_id, a.alliance_id][index]));
            if !as_victim && !as_attacker {
                return false;
            }
        }
        let within = |list: &[i64], id: Option<i64>| {
            list.is_empty() || id.is_some_and(|id| list.contains(&id))
        };
        within(&self.ships, Some(victim.ship_type_id))
            && within(&self.systems, Some(killmail.solar_system_id))
            && within(&self.regions, statics.region_of(killmail.solar_system_id))
            && self
                .min_value
                .is_none_or(|min| zkb.and_then(Zkb::total_value).is_some_and(|v| v >= min))
            && self
                .npc
                .is_none_or(|npc| zkb.and_then(Zkb::npc) == Some(npc))
            && self
                .solo
                .is_none_or(|solo| zkb.and_then(Zkb::solo) == Some(solo))
    }
}
