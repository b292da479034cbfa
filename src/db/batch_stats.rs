//! The statistics a history batch adds, summed by the writer: each killmail's part is taken
//! while the batch is encoded ([`Facts`]), and once the store has said which killmails are new,
//! their parts are added up per (character, corporation or alliance, hour) and per (place or
//! ship, hour) and sent by binary COPY for `stats_add_staged()` to merge (see the migration
//! 20261206000200). The rules are those of the server's `stats_place_rows`, `stats_loss_rows`
//! and `stats_kill_rows`, which live batches, revaluations and rebuilds still use; the
//! statistics tests compare the two after history imports.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::copy::BinaryRows;
use crate::killmail::{Killmail, Zkb};

const HOUR_MICROS: i64 = 3_600_000_000;
/// The statistics' kinds of the victim's and attackers' character, corporation and alliance.
const KINDS: [i16; 3] = [1, 2, 3];

/// A killmail's value, solo flag and points, as the store's generated columns read them out of
/// its zkb block (or killreport's estimate).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Values {
    total_value: Option<f64>,
    solo: Option<bool>,
    points: Option<i64>,
}

impl Values {
    pub(super) fn of(zkb: &Zkb) -> Self {
        Self {
            total_value: zkb.total_value(),
            solo: zkb.solo(),
            // round() of a float8 rounds half to even; then clamped into an int4.
            points: zkb.points().map(|p| {
                p.round_ties_even()
                    .clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i64
            }),
        }
    }
}

/// What one killmail adds to the statistics, but for its value when it has no zkb block
/// (killreport's estimate is made when the batch is stored).
#[derive(Debug, Clone)]
pub(super) struct Facts {
    hour: i64,
    ship_type_id: i64,
    solar_system_id: i64,
    /// The victim's character, corporation and alliance (kinds 1, 2, 3).
    victim: [Option<i64>; 3],
    /// The attackers' characters, corporations and alliances, each once, as (kind, id), the
    /// kind as an index of `victim`.
    attackers: Vec<(usize, i64)>,
    /// From the zkb block it came with.
    values: Option<Values>,
}

impl Facts {
    pub(super) fn new(killmail: &Killmail, zkb: Option<&Zkb>) -> Self {
        let micros = killmail.killmail_time.timestamp_micros();
        let attackers: BTreeSet<(usize, i64)> = killmail
            .attackers
            .iter()
            .flat_map(|a| {
                [
                    (0, a.character_id),
                    (1, a.corporation_id),
                    (2, a.alliance_id),
                ]
            })
            .filter_map(|(kind, id)| Some((kind, id?)))
            .collect();
        let victim = &killmail.victim;
        Self {
            hour: micros - micros.rem_euclid(HOUR_MICROS),
            ship_type_id: victim.ship_type_id,
            solar_system_id: killmail.solar_system_id,
            victim: [
                victim.character_id,
                victim.corporation_id,
                victim.alliance_id,
            ],
            attackers: attackers.into_iter().collect(),
            values: zkb.map(Values::of),
        }
    }
}

#[derive(Default)]
struct EntitySums {
    kills: i32,
    losses: i32,
    kills_of_own: i32,
    isk_destroyed: f64,
    isk_lost: f64,
    solo_kills: i32,
    points: i64,
}

/// Adds the statistics of the killmails `stored`, each with its [`Facts`] and the estimate
/// it was stored with when it had no zkb block. Run it in the transaction that stored them.
pub(super) async fn add(
    tx: &mut PgConnection,
    stored: &[(&Facts, Option<&Zkb>)],
) -> sqlx::Result<()> {
    if stored.is_empty() {
        return Ok(());
    }
    let ship_types: Vec<i64> = stored.iter().map(|(f, _)| f.ship_type_id).collect();
    let systems: Vec<i64> = stored.iter().map(|(f, _)| f.solar_system_id).collect();
    let groups: HashMap<i64, i64> = sqlx::query!(
        "SELECT type_id, group_id FROM item_types WHERE type_id = ANY($1)",
        &ship_types
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.type_id, r.group_id))
    .collect();
    let places: HashMap<i64, (i64, i64)> = sqlx::query!(
        "SELECT solar_system_id, constellation_id, region_id FROM solar_systems
         WHERE solar_system_id = ANY($1)",
        &systems
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.solar_system_id, (r.constellation_id, r.region_id)))
    .collect();

    let mut place_sums: HashMap<(i16, i64, i64), (i32, f64)> = HashMap::new();
    let mut entity_sums: HashMap<(i16, i64, i64), EntitySums> = HashMap::new();
    for (facts, estimate) in stored {
        let values = facts
            .values
            .unwrap_or_else(|| estimate.map(Values::of).unwrap_or_default());
        let isk = values.total_value.unwrap_or(0.0);
        let hour = facts.hour;
        let place = places.get(&facts.solar_system_id);
        let dimensions = [
            (0, Some(0)),
            (1, Some(facts.ship_type_id)),
            (2, groups.get(&facts.ship_type_id).copied()),
            (3, Some(facts.solar_system_id)),
            (4, place.map(|p| p.0)),
            (5, place.map(|p| p.1)),
        ];
        for (dimension, key) in dimensions {
            if let Some(key) = key {
                let sum = place_sums.entry((dimension, key, hour)).or_default();
                sum.0 += 1;
                sum.1 += isk;
            }
        }
        for (kind, id) in KINDS.into_iter().zip(facts.victim) {
            if let Some(id) = id {
                let sum = entity_sums.entry((kind, id, hour)).or_default();
                sum.losses += 1;
                sum.isk_lost += isk;
            }
        }
        for &(slot, id) in &facts.attackers {
            let sum = entity_sums.entry((KINDS[slot], id, hour)).or_default();
            sum.kills += 1;
            sum.kills_of_own += i32::from(facts.victim[slot] == Some(id));
            sum.isk_destroyed += isk;
            sum.solo_kills += i32::from(values.solo == Some(true));
            sum.points += values.points.unwrap_or(0);
        }
    }

    let mut place_rows = BinaryRows::with_capacity(place_sums.len() * 50);
    for ((dimension, key, hour), (killmails, isk)) in place_sums {
        place_rows
            .row(5)
            .int2(dimension)
            .int8(key)
            .timestamptz(hour_time(hour))
            .int4(killmails)
            .float8(isk);
    }
    let mut entity_rows = BinaryRows::with_capacity(entity_sums.len() * 90);
    for ((kind, id, hour), sum) in entity_sums {
        entity_rows
            .row(10)
            .int2(kind)
            .int8(id)
            .timestamptz(hour_time(hour))
            .int4(sum.kills)
            .int4(sum.losses)
            .int4(sum.kills_of_own)
            .float8(sum.isk_destroyed)
            .float8(sum.isk_lost)
            .int4(sum.solo_kills)
            .int8(sum.points);
    }
    // This connection's own staging tables (see the migration that made their templates),
    // emptied at each commit.
    sqlx::query!("SELECT stats_stage()")
        .execute(&mut *tx)
        .await?;
    place_rows
        .send(
            tx,
            "COPY stats_place_staging (dimension, key, hour, killmails, isk)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    entity_rows
        .send(
            tx,
            "COPY stats_entity_staging (kind, entity_id, hour, kills, losses, kills_of_own,
                                        isk_destroyed, isk_lost, solo_kills, points)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    sqlx::query!("SELECT stats_add_staged()")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn hour_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn points_round_half_to_even_and_clamp_as_the_store_does() {
        let points = |p: serde_json::Value| Values::of(&Zkb(json!({ "points": p }))).points;
        assert_eq!(points(json!(2.5)), Some(2));
        assert_eq!(points(json!(3.5)), Some(4));
        assert_eq!(points(json!(-7)), Some(-7));
        assert_eq!(points(json!(1e12)), Some(i64::from(i32::MAX)));
        assert_eq!(points(json!(null)), None);
    }

    #[test]
    fn a_killmail_counts_each_attacking_entity_once_in_its_hour() {
        let killmail: Killmail = serde_json::from_value(json!({
            "killmail_id": 1,
            "killmail_time": "2021-12-01T13:59:59Z",
            "solar_system_id": 30000142,
            "victim": { "ship_type_id": 587, "damage_taken": 10, "corporation_id": 7 },
            "attackers": [
                { "character_id": 5, "corporation_id": 7, "damage_done": 5, "final_blow": true,
                  "security_status": 0.0 },
                { "character_id": 6, "corporation_id": 7, "alliance_id": 9, "damage_done": 5,
                  "final_blow": false, "security_status": 0.0 },
                { "ship_type_id": 3740, "damage_done": 0, "final_blow": false,
                  "security_status": 0.0 }
            ]
        }))
        .expect("a killmail");
        let facts = Facts::new(&killmail, None);
        assert_eq!(facts.attackers, [(0, 5), (0, 6), (1, 7), (2, 9)]);
        assert_eq!(facts.victim, [None, Some(7), None]);
        assert_eq!(
            hour_time(facts.hour).to_rfc3339(),
            "2021-12-01T13:00:00+00:00"
        );
        assert_eq!(facts.values, None);
    }
}
