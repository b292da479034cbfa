//! A killmail filter with its ids parsed: one meaning applied three ways, as SQL over the store
//! (the `killmails` connection), in memory over an event (`killmailAdded`), and as the keys the
//! live hub indexes subscriptions by, so an event is only checked against filters it could
//! pass. Within one list any id matches; across fields all must hold.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use crate::killmail::{Killmail, Zkb};
use crate::statics::Statics;

/// Where a solar system is, by its security as EVE shows it (rounded to one decimal) and its
/// region: wormhole regions are 11000000–11999999, Abyssal deadspace 12000000–12999999.
#[derive(async_graphql::Enum, Copy, Clone, Debug, Eq, PartialEq, Hash)]
pub enum SecurityClass {
    Highsec,
    Lowsec,
    Nullsec,
    Wspace,
    Abyssal,
}

impl SecurityClass {
    pub fn of(security_status: Option<f64>, region_id: i64) -> Self {
        let rounded = security_status.map_or(-1.0, |s| (s * 10.0).round() / 10.0);
        match region_id {
            11_000_000..=11_999_999 => SecurityClass::Wspace,
            12_000_000..=12_999_999 => SecurityClass::Abyssal,
            _ if rounded >= 0.5 => SecurityClass::Highsec,
            _ if rounded > 0.0 => SecurityClass::Lowsec,
            _ => SecurityClass::Nullsec,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SecurityClass::Highsec => "HIGHSEC",
            SecurityClass::Lowsec => "LOWSEC",
            SecurityClass::Nullsec => "NULLSEC",
            SecurityClass::Wspace => "WSPACE",
            SecurityClass::Abyssal => "ABYSSAL",
        }
    }
}

/// [`SecurityClass::of`] in SQL, over `solar_systems`' columns.
pub const SECURITY_CLASS_SQL: &str = "CASE
    WHEN region_id BETWEEN 11000000 AND 11999999 THEN 'WSPACE'
    WHEN region_id BETWEEN 12000000 AND 12999999 THEN 'ABYSSAL'
    WHEN round(coalesce(security_status, -1)::numeric, 1) >= 0.5 THEN 'HIGHSEC'
    WHEN round(coalesce(security_status, -1)::numeric, 1) > 0.0 THEN 'LOWSEC'
    ELSE 'NULLSEC' END";

/// Where entity ids of a filter must appear.
#[derive(async_graphql::Enum, Copy, Clone, Debug, Default, Eq, PartialEq)]
pub enum Involvement {
    Victim,
    Attacker,
    #[default]
    Any,
}

/// The ids of one list of a filter, sorted and each once: an event's ids are looked up in it
/// by binary search, so a long list costs little per event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids(Vec<i64>);

impl Ids {
    pub fn contains(&self, id: i64) -> bool {
        self.0.binary_search(&id).is_ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[i64] {
        &self.0
    }
}

impl FromIterator<i64> for Ids {
    fn from_iter<I: IntoIterator<Item = i64>>(ids: I) -> Self {
        let mut ids: Vec<i64> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        Self(ids)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub characters: Ids,
    pub corporations: Ids,
    pub alliances: Ids,
    /// The victim's ship type.
    pub ships: Ids,
    pub systems: Ids,
    pub regions: Ids,
    /// zKillboard's total value, at least this (killmails without a zkb block never match).
    pub min_value: Option<f64>,
    pub npc: Option<bool>,
    pub solo: Option<bool>,
    pub involvement: Involvement,
    /// `killmail_time` from (inclusive) and to (exclusive).
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub constellations: Ids,
    /// The victim's ship group.
    pub groups: Ids,
    pub security: Vec<SecurityClass>,
    pub min_attackers: Option<i32>,
    pub max_attackers: Option<i32>,
    /// Any of these zKillboard labels (of zkb, else killreport's estimate).
    pub labels: Vec<String>,
    pub wars: Ids,
    /// Whether the killmail belongs to a war.
    pub war: Option<bool>,
}

/// Something an event can be looked up by: an entity anywhere on the killmail, the victim's
/// ship, the system or the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Character(i64),
    Corporation(i64),
    Alliance(i64),
    Ship(i64),
    System(i64),
    Region(i64),
}

/// Entity columns: (victim column on `killmails`, column on `attackers`).
const ENTITY_COLUMNS: [(&str, &str); 3] = [
    ("victim_character_id", "character_id"),
    ("victim_corporation_id", "corporation_id"),
    ("victim_alliance_id", "alliance_id"),
];

impl Filter {
    fn entity_lists(&self) -> [&Ids; 3] {
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
                    .push_bind(list.as_slice().to_vec())
                    .push(")");
            }
            if self.involvement == Involvement::Any {
                sql.push(" OR ");
            }
            if self.involvement != Involvement::Victim {
                sql.push(format_args!(
                    "k.killmail_id IN (SELECT a.killmail_id FROM attackers a WHERE a.{attacker_column} = ANY("
                ))
                .push_bind(list.as_slice().to_vec())
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
                    .push_bind(list.as_slice().to_vec())
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
        self.push_more_sql(sql);
    }

    /// The conditions beyond DESIGN's core filter.
    fn push_more_sql(&self, sql: &mut QueryBuilder<'_, Postgres>) {
        if let Some(from) = self.from {
            sql.push(" AND k.killmail_time >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            sql.push(" AND k.killmail_time < ").push_bind(to);
        }
        if !self.constellations.is_empty() {
            sql.push(" AND k.solar_system_id IN (SELECT solar_system_id FROM solar_systems WHERE constellation_id = ANY(")
                .push_bind(self.constellations.as_slice().to_vec())
                .push("))");
        }
        if !self.groups.is_empty() {
            sql.push(" AND k.victim_ship_type_id IN (SELECT type_id FROM item_types WHERE group_id = ANY(")
                .push_bind(self.groups.as_slice().to_vec())
                .push("))");
        }
        if !self.security.is_empty() {
            let names: Vec<String> = self.security.iter().map(|c| c.name().to_owned()).collect();
            sql.push(format_args!(
                " AND k.solar_system_id IN (SELECT solar_system_id FROM solar_systems WHERE ({SECURITY_CLASS_SQL}) = ANY("
            ))
            .push_bind(names)
            .push("))");
        }
        if let Some(min) = self.min_attackers {
            sql.push(" AND k.attacker_count >= ").push_bind(min);
        }
        if let Some(max) = self.max_attackers {
            sql.push(" AND k.attacker_count <= ").push_bind(max);
        }
        if !self.labels.is_empty() {
            sql.push(" AND coalesce(k.zkb, k.estimate) -> 'labels' ?| ")
                .push_bind(self.labels.clone());
        }
        if !self.wars.is_empty() {
            sql.push(" AND k.war_id = ANY(")
                .push_bind(self.wars.as_slice().to_vec())
                .push(")");
        }
        if let Some(war) = self.war {
            sql.push(if war {
                " AND k.war_id IS NOT NULL"
            } else {
                " AND k.war_id IS NULL"
            });
        }
    }

    /// [`Self::push_more_sql`] in memory. Labels are read from the event's zkb block, the
    /// only one an event carries.
    fn matches_more(&self, killmail: &Killmail, zkb: Option<&Zkb>, statics: &Statics) -> bool {
        let time = killmail.killmail_time;
        let system = statics.systems.get(&killmail.solar_system_id);
        let within =
            |list: &Ids, id: Option<i64>| list.is_empty() || id.is_some_and(|id| list.contains(id));
        let attackers = i32::try_from(killmail.attackers.len()).unwrap_or(i32::MAX);
        self.from.is_none_or(|from| time >= from)
            && self.to.is_none_or(|to| time < to)
            && within(&self.constellations, system.map(|s| s.constellation_id))
            && within(&self.groups, statics.group_of(killmail.victim.ship_type_id))
            && (self.security.is_empty()
                || system.is_some_and(|s| {
                    self.security
                        .contains(&SecurityClass::of(s.security_status, s.region_id))
                }))
            && self.min_attackers.is_none_or(|min| attackers >= min)
            && self.max_attackers.is_none_or(|max| attackers <= max)
            && (self.labels.is_empty()
                || zkb
                    .and_then(|z| z.0.get("labels"))
                    .and_then(serde_json::Value::as_array)
                    .is_some_and(|labels| {
                        labels
                            .iter()
                            .filter_map(serde_json::Value::as_str)
                            .any(|l| self.labels.iter().any(|wanted| wanted == l))
                    }))
            && within(&self.wars, killmail.war_id)
            && self.war.is_none_or(|war| killmail.war_id.is_some() == war)
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
            let hit = |id: Option<i64>| id.is_some_and(|id| list.contains(id));
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
        let within =
            |list: &Ids, id: Option<i64>| list.is_empty() || id.is_some_and(|id| list.contains(id));
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
            && self.matches_more(killmail, zkb, statics)
    }

    /// The keys this filter is indexed under: every id of one list that a passing killmail
    /// must carry (any one of them). Empty when the filter names no ids, so it is checked
    /// against every event. Systems come first, being the most selective; entity lists are
    /// keyed without regard to involvement, which `matches` then checks.
    pub fn index_keys(&self) -> Vec<Key> {
        type KeyOf = fn(i64) -> Key;
        let lists: [(&Ids, KeyOf); 6] = [
            (&self.systems, Key::System),
            (&self.characters, Key::Character),
            (&self.corporations, Key::Corporation),
            (&self.alliances, Key::Alliance),
            (&self.ships, Key::Ship),
            (&self.regions, Key::Region),
        ];
        lists
            .into_iter()
            .find(|(list, _)| !list.is_empty())
            .map(|(list, key)| list.as_slice().iter().copied().map(key).collect())
            .unwrap_or_default()
    }
}

/// Every key a killmail can be found by, each once.
pub fn event_keys(killmail: &Killmail, statics: &Statics) -> Vec<Key> {
    let victim = &killmail.victim;
    let mut keys = vec![
        Key::System(killmail.solar_system_id),
        Key::Ship(victim.ship_type_id),
    ];
    keys.extend(statics.region_of(killmail.solar_system_id).map(Key::Region));
    let parties = std::iter::once((
        victim.character_id,
        victim.corporation_id,
        victim.alliance_id,
    ))
    .chain(
        killmail
            .attackers
            .iter()
            .map(|a| (a.character_id, a.corporation_id, a.alliance_id)),
    );
    for (character, corporation, alliance) in parties {
        keys.extend(character.map(Key::Character));
        keys.extend(corporation.map(Key::Corporation));
        keys.extend(alliance.map(Key::Alliance));
    }
    let mut seen = std::collections::HashSet::with_capacity(keys.len());
    keys.retain(|key| seen.insert(*key));
    keys
}
