//! zKillboard's rules for a killmail that came without its block, as pure functions: the ISK
//! value (hull, fitted, dropped, destroyed, total) from one day's item prices, and the `npc`,
//! `solo` and `awox` flags and `labels`. No I/O: the caller gives the facts (each type's group
//! and category, each system's security and region) and the prices.
//!
//! Read from zKillboard's parser (zKillboard/zKillboard, its killmail-parsing cron and
//! `classes/Price.php`), with these differences, each for want of data killreport does not
//! keep: prices are ESI's daily `average_price` (else `adjusted_price`) rather than a trimmed
//! 34-day mean of Jita's market history; `points` (which needs dogma attributes), `padding`
//! (which needs the store's history of look-alike kills) and `capital` (market groups) are
//! left out; `ganked`, which depends on other killmails, is the store's (its migration
//! `*_ganked.sql`); and dropped and destroyed values count containers' contents with the same
//! price rules as the total, so that dropped + destroyed = total.

use std::collections::HashMap;

use chrono::{NaiveDate, Timelike};
use serde::Serialize;

use crate::killmail::{Item, Killmail};

/// A type's group and category, as the static data gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeClass {
    pub group_id: i64,
    pub category_id: i64,
}

/// A solar system's true security and region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SystemClass {
    pub security: f64,
    pub region_id: i64,
}

/// What the rules need to know about the types and systems of the killmails at hand.
#[derive(Debug, Default)]
pub struct Facts {
    pub types: HashMap<i64, TypeClass>,
    pub systems: HashMap<i64, SystemClass>,
}

/// One day's price per type (ISK), as chosen from ESI's average and adjusted prices.
#[derive(Debug, Clone, Default)]
pub struct DayPrices {
    pub day: NaiveDate,
    pub prices: HashMap<i64, f64>,
}

/// killreport's own zkb-style block: the keys zKillboard uses, plus `estimated` (always true,
/// so a reader can tell it from zKillboard's) and `pricesDate` (the day whose prices valued it;
/// absent, with the values, while no prices are known).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub values: Option<Values>,
    pub npc: bool,
    pub solo: bool,
    pub awox: bool,
    pub labels: Vec<String>,
    pub estimated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices_date: Option<NaiveDate>,
}

/// ISK, rounded to the cent as zKillboard rounds it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Values {
    pub total_value: f64,
    pub fitted_value: f64,
    pub dropped_value: f64,
    pub destroyed_value: f64,
}

const CAPSULE_GROUP: i64 = 29;
const SHUTTLE_GROUP: i64 = 31;
const ROOKIE_SHIP_GROUP: i64 = 237;
const SHIP_CATEGORY: i64 = 6;
const STRUCTURE_CATEGORY: i64 = 65;
const SKIN_CATEGORY: i64 = 91;
/// NPC corporations have ids below this; players' corporations above.
const PLAYER_CORPORATIONS_FROM: i64 = 2_000_000;
/// Characters with ids above this are players (below: NPC agents and the like).
const PLAYER_CHARACTERS_ABOVE: i64 = 3_999_999;
/// What zKillboard values a thing it will not price: a cent.
const NO_VALUE: f64 = 0.01;
/// A capsule's value, whatever the market says.
const CAPSULE_VALUE: f64 = 10_000.0;
const IMPLANT_FLAG: i32 = 89;
const FRIGATE_ESCAPE_BAY_FLAG: i32 = 179;
/// The Genolution "golden pod" implant, which cannot be destroyed.
const GOLDEN_POD_IMPLANT: i64 = 33329;
/// A blueprint copy (`singleton` 2) is worth nothing on a killmail.
const BLUEPRINT_COPY: i32 = 2;

/// Ships zKillboard values by hand (rare ships with no market to speak of; ISK).
const FIXED_PRICES: &[(f64, &[i64])] = &[
    (NO_VALUE, &[12478, 34559, 44265]),
    (80e9, &[2834, 3516, 11375]),
    (100e9, &[3518, 3514, 32788, 32790, 32209, 11942, 33673]),
    (120e9, &[35779, 42125, 42246]),
    (150e9, &[2836, 33675, 35781, 45530]),
    (200e9, &[33397, 42245, 45649]),
    (230e9, &[45531]),
    (350e9, &[42241]),
    (500e9, &[11940, 635, 11011, 25560]),
    (750e9, &[13202, 26840, 11936, 11938, 26842]),
    (1e12, &[9860, 11019]),
];

/// Flags whose items count as fitted: slots, rigs, subsystems, service slots, drone and
/// fighter bays and tubes, implants.
fn is_fitted(flag: i32) -> bool {
    matches!(flag, 11..=34 | 87 | 89 | 92..=99 | 125..=132 | 158..=171)
}

impl Facts {
    fn class(&self, type_id: i64) -> Option<TypeClass> {
        self.types.get(&type_id).copied()
    }

    fn category(&self, type_id: i64) -> Option<i64> {
        self.class(type_id).map(|c| c.category_id)
    }
}

/// What one unit of `type_id` is worth, before the rules that depend on where it sat.
fn type_price(type_id: i64, facts: &Facts, prices: &DayPrices) -> f64 {
    if let Some((price, _)) = FIXED_PRICES.iter().find(|(_, ids)| ids.contains(&type_id)) {
        return *price;
    }
    match facts.class(type_id) {
        Some(c) if c.category_id == SKIN_CATEGORY => return NO_VALUE,
        Some(c) if c.group_id == CAPSULE_GROUP => return CAPSULE_VALUE,
        _ => {}
    }
    prices
        .prices
        .get(&type_id)
        .copied()
        .filter(|p| *p > 0.0)
        .unwrap_or(NO_VALUE)
}

/// What one unit of an item is worth where it sat.
fn item_price(item: &Item, facts: &Facts, prices: &DayPrices) -> f64 {
    let worthless = item.flag == FRIGATE_ESCAPE_BAY_FLAG
        || (item.item_type_id == GOLDEN_POD_IMPLANT && item.flag == IMPLANT_FLAG)
        || item.singleton == BLUEPRINT_COPY;
    if worthless {
        NO_VALUE
    } else {
        type_price(item.item_type_id, facts, prices)
    }
}

/// Adds `items` (and their contents) to `sums`; `top` says whether they are the victim's own
/// items rather than a container's contents (only those can be fitted).
fn add_items(items: &[Item], top: bool, facts: &Facts, prices: &DayPrices, sums: &mut Values) {
    for item in items {
        let price = item_price(item, facts, prices);
        let dropped = item.quantity_dropped.unwrap_or(0) as f64 * price;
        let destroyed = item.quantity_destroyed.unwrap_or(0) as f64 * price;
        sums.dropped_value += dropped;
        sums.destroyed_value += destroyed;
        sums.total_value += dropped + destroyed;
        if top && is_fitted(item.flag) {
            sums.fitted_value += dropped + destroyed;
        }
        add_items(&item.items, false, facts, prices, sums);
    }
}

fn cents(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The killmail's value with one day's prices: the hull counts as destroyed and fitted.
pub fn values(killmail: &Killmail, facts: &Facts, prices: &DayPrices) -> Values {
    let hull = type_price(killmail.victim.ship_type_id, facts, prices);
    let mut sums = Values {
        total_value: hull,
        fitted_value: hull,
        dropped_value: 0.0,
        destroyed_value: hull,
    };
    add_items(&killmail.victim.items, true, facts, prices, &mut sums);
    Values {
        total_value: cents(sums.total_value),
        fitted_value: cents(sums.fitted_value),
        dropped_value: cents(sums.dropped_value),
        destroyed_value: cents(sums.destroyed_value),
    }
}

/// No player among the attackers (a player character, or a player corporation), or an NPC
/// corporation's structure or ship as the victim.
pub fn is_npc(killmail: &Killmail) -> bool {
    let victim = &killmail.victim;
    let npc_corporation = |corporation: Option<i64>| {
        corporation.is_some_and(|id| id > 1 && id < PLAYER_CORPORATIONS_FROM)
    };
    if victim.character_id.is_none() && npc_corporation(victim.corporation_id) {
        return true;
    }
    !killmail.attackers.iter().any(|a| {
        a.character_id
            .is_some_and(|id| id > PLAYER_CHARACTERS_ABOVE)
            || a.corporation_id
                .is_some_and(|id| id >= PLAYER_CORPORATIONS_FROM)
    })
}

/// The final blow came from the victim's own (player) corporation or alliance; never for
/// capsules and rookie ships.
pub fn is_awox(killmail: &Killmail, facts: &Facts) -> bool {
    let victim = &killmail.victim;
    let group = facts.class(victim.ship_type_id).map(|c| c.group_id);
    if matches!(group, Some(CAPSULE_GROUP | ROOKIE_SHIP_GROUP)) {
        return false;
    }
    let same = |a: Option<i64>, b: Option<i64>| matches!((a, b), (Some(a), Some(b)) if a == b);
    killmail.attackers.iter().filter(|a| a.final_blow).any(|a| {
        let player_corporation = a
            .corporation_id
            .filter(|id| *id >= PLAYER_CORPORATIONS_FROM);
        same(player_corporation, victim.corporation_id) || same(a.alliance_id, victim.alliance_id)
    })
}

/// A ship (not a capsule, shuttle or rookie ship) killed by exactly one player, with no
/// structure among the attackers.
pub fn is_solo(killmail: &Killmail, facts: &Facts) -> bool {
    let Some(victim) = facts.class(killmail.victim.ship_type_id) else {
        return false;
    };
    if matches!(
        victim.group_id,
        CAPSULE_GROUP | SHUTTLE_GROUP | ROOKIE_SHIP_GROUP
    ) || victim.category_id != SHIP_CATEGORY
    {
        return false;
    }
    let structure = killmail.attackers.iter().any(|a| {
        a.ship_type_id
            .and_then(|ship| facts.category(ship))
            .is_some_and(|category| category == STRUCTURE_CATEGORY)
    });
    let players = killmail
        .attackers
        .iter()
        .filter(|a| {
            a.character_id
                .is_some_and(|id| id > PLAYER_CHARACTERS_ABOVE)
        })
        .count();
    !structure && players == 1
}

/// zKillboard's prime-time label for the hour (UTC) of the kill.
fn time_zone(hour: u32) -> &'static str {
    match hour {
        8..=13 => "tz:au",
        14..=16 => "tz:ru",
        17..=21 => "tz:eu",
        4..=7 => "tz:usw",
        _ => "tz:use",
    }
}

/// Where the kill was, by region (wormholes, the Abyss, Pochven) or else by true security.
fn location(system: SystemClass) -> &'static str {
    match system.region_id {
        11_000_000..=11_999_999 => "loc:w-space",
        12_000_000..=12_999_999 => "loc:abyssal",
        10_000_070 => "loc:pochven",
        _ if system.security >= 0.45 => "loc:highsec",
        _ if system.security >= 0.05 => "loc:lowsec",
        _ => "loc:nullsec",
    }
}

/// How many attacked, in zKillboard's bands (`solo` takes the place of `#:1` when it holds).
fn attacker_band(count: usize) -> &'static str {
    match count {
        1000.. => "#:1000+",
        100.. => "#:100+",
        50.. => "#:50+",
        25.. => "#:25+",
        10.. => "#:10+",
        5.. => "#:5+",
        2.. => "#:2+",
        _ => "#:1",
    }
}

/// The value band, from a billion up; none below.
fn isk_band(total: f64) -> Option<&'static str> {
    [
        (1e12, "isk:1t+"),
        (100e9, "isk:100b+"),
        (10e9, "isk:10b+"),
        (5e9, "isk:5b+"),
        (1e9, "isk:1b+"),
    ]
    .into_iter()
    .find(|(from, _)| total >= *from)
    .map(|(_, label)| label)
}

/// The whole block for a killmail, valued with `prices` when there are any.
pub fn estimate(killmail: &Killmail, facts: &Facts, prices: Option<&DayPrices>) -> Estimate {
    let values = prices.map(|prices| values(killmail, facts, prices));
    let npc = is_npc(killmail);
    let solo = !npc && is_solo(killmail, facts);
    let awox = !npc && is_awox(killmail, facts);
    let mut labels = vec![time_zone(killmail.killmail_time.hour()).to_owned()];
    if let Some(category) = facts.category(killmail.victim.ship_type_id) {
        labels.push(format!("cat:{category}"));
    }
    labels.push(
        if solo {
            "solo"
        } else {
            attacker_band(killmail.attackers.len())
        }
        .to_owned(),
    );
    labels.push(if npc { "npc" } else { "pvp" }.to_owned());
    if awox {
        labels.push("awox".to_owned());
    }
    if let Some(system) = facts.systems.get(&killmail.solar_system_id) {
        labels.push(location(*system).to_owned());
    }
    if let Some(band) = values.and_then(|v| isk_band(v.total_value)) {
        labels.push(band.to_owned());
    }
    Estimate {
        values,
        npc,
        solo,
        awox,
        labels,
        estimated: true,
        prices_date: prices.map(|p| p.day),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn killmail(json: serde_json::Value) -> Killmail {
        serde_json::from_value(json).expect("a killmail")
    }

    /// A Retriever (group 543, ships) killed by one player in a nullsec system.
    fn facts() -> Facts {
        let class = |group_id, category_id| TypeClass {
            group_id,
            category_id,
        };
        Facts {
            types: HashMap::from([
                (17478, class(543, 6)),
                (670, class(29, 6)),
                (35683, class(1305, 6)),
                (35832, class(1657, 65)),
                (1000, class(60, 7)),
                (2000, class(100, 91)),
            ]),
            systems: HashMap::from([(
                30000743,
                SystemClass {
                    security: -0.2,
                    region_id: 10000009,
                },
            )]),
        }
    }

    fn retriever_kill() -> Killmail {
        killmail(serde_json::json!({
            "killmail_id": 1, "killmail_time": "2026-03-25T14:26:36Z", "solar_system_id": 30000743,
            "victim": {"character_id": 2121652582_i64, "corporation_id": 98366055, "alliance_id": 1354830081,
                       "ship_type_id": 17478, "damage_taken": 10,
                       "items": [
                           {"item_type_id": 1000, "flag": 27, "singleton": 0, "quantity_destroyed": 2},
                           {"item_type_id": 1000, "flag": 5, "singleton": 0, "quantity_dropped": 3},
                           {"item_type_id": 1000, "flag": 5, "singleton": 2, "quantity_dropped": 1},
                           {"item_type_id": 2000, "flag": 5, "singleton": 0, "quantity_destroyed": 1,
                            "items": [{"item_type_id": 1000, "flag": 5, "singleton": 0, "quantity_destroyed": 10}]}
                       ]},
            "attackers": [{"character_id": 96424385, "corporation_id": 98601573, "ship_type_id": 35683,
                           "damage_done": 10, "final_blow": true, "security_status": 5.0}]
        }))
    }

    fn prices() -> DayPrices {
        DayPrices {
            day: NaiveDate::from_ymd_opt(2026, 3, 25).expect("a date"),
            prices: HashMap::from([(17478, 30e6), (1000, 1e6), (2000, 5e8)]),
        }
    }

    #[test]
    fn hull_fitted_dropped_and_destroyed_add_up_with_containers_recursed() {
        let v = values(&retriever_kill(), &facts(), &prices());
        // Hull 30M; fitted 2 × 1M; cargo 3 × 1M dropped, a BPC at a cent, a SKIN at a cent
        // holding 10 × 1M.
        assert_eq!(v.fitted_value, 32e6);
        assert_eq!(v.dropped_value, 3_000_000.01);
        assert_eq!(v.destroyed_value, 42_000_000.01);
        assert!((v.total_value - (v.dropped_value + v.destroyed_value)).abs() < 0.005);
    }

    #[test]
    fn one_player_killing_a_ship_in_nullsec_is_solo_pvp() {
        let estimate = estimate(&retriever_kill(), &facts(), Some(&prices()));
        assert!(!estimate.npc && estimate.solo && !estimate.awox);
        assert_eq!(
            estimate.labels,
            ["tz:ru", "cat:6", "solo", "pvp", "loc:nullsec"]
        );
        let json = serde_json::to_value(&estimate).expect("JSON");
        assert_eq!(json["totalValue"], 45_000_000.02);
        assert_eq!(json["estimated"], true);
        assert_eq!(json["pricesDate"], "2026-03-25");
        assert!(json.get("points").is_none());
    }

    #[test]
    fn without_prices_the_flags_and_labels_are_still_known() {
        let estimate = estimate(&retriever_kill(), &facts(), None);
        let json = serde_json::to_value(&estimate).expect("JSON");
        assert!(json.get("totalValue").is_none() && json.get("pricesDate").is_none());
        assert_eq!(json["solo"], true);
    }

    #[test]
    fn npc_awox_and_bands() {
        let mut kill = retriever_kill();
        kill.attackers[0].character_id = None;
        kill.attackers[0].corporation_id = Some(1000125);
        assert!(is_npc(&kill));
        let estimate = estimate(&kill, &facts(), None);
        assert!(estimate.npc && !estimate.solo);
        assert!(estimate.labels.contains(&"npc".to_owned()));
        assert!(estimate.labels.contains(&"#:1".to_owned()));

        let mut kill = retriever_kill();
        kill.attackers[0].alliance_id = kill.victim.alliance_id;
        assert!(is_awox(&kill, &facts()));
        kill.victim.ship_type_id = 670;
        assert!(!is_awox(&kill, &facts()), "never for a capsule");

        let mut kill = retriever_kill();
        kill.attackers.push(kill.attackers[0].clone());
        kill.attackers[1].ship_type_id = Some(35832);
        kill.attackers[1].character_id = None;
        assert!(!is_solo(&kill, &facts()), "a structure on the mail");

        assert_eq!(attacker_band(7), "#:5+");
        assert_eq!(isk_band(3.4e9), Some("isk:1b+"));
        assert_eq!(isk_band(9.9e8), None);
        assert_eq!(time_zone(2), "tz:use");
        let wormhole = SystemClass {
            security: -1.0,
            region_id: 11000003,
        };
        assert_eq!(location(wormhole), "loc:w-space");
    }
}
