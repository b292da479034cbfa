//! The killmails a run injects: drawn in file order from real fixtures, with the largest fights
//! (most attackers, the heaviest payloads) spread evenly through the run, and a zkb block made
//! up for those that lack one, so value, NPC and solo filters have something to match; and each
//! as the `killmail.ingest` job that carries it, for runs through worker-killmails.

use std::collections::HashSet;

use killreport::killmail::{Killmail, Received, Zkb};
use killreport::queue::IngestJob;

/// Picks `events` killmails out of `all` (duplicates by id dropped): the `largest` with the most
/// attackers (ties broken by the lower id), spaced evenly through the run, and the rest in file
/// order. Fewer come back when `all` holds fewer.
pub fn pick(all: Vec<Received>, events: usize, largest: usize) -> Vec<Received> {
    let mut seen = HashSet::new();
    let mut all: Vec<Received> = all
        .into_iter()
        .filter(|r| seen.insert(r.killmail.killmail_id))
        .collect();
    let events = events.min(all.len());
    let largest = largest.min(events);

    let mut by_size: Vec<usize> = (0..all.len()).collect();
    by_size.sort_by_key(|&i| {
        let killmail = &all[i].killmail;
        (
            std::cmp::Reverse(killmail.attackers.len()),
            killmail.killmail_id,
        )
    });
    let big: HashSet<usize> = by_size.into_iter().take(largest).collect();
    let mut fights = Vec::with_capacity(largest);
    let mut ordinary = Vec::with_capacity(events - largest);
    for (index, received) in all.drain(..).enumerate() {
        if big.contains(&index) {
            fights.push(received);
        } else if ordinary.len() < events - largest {
            ordinary.push(received);
        }
    }
    // Biggest first, so a short run still gets the heaviest one.
    fights.sort_by_key(|r| std::cmp::Reverse(r.killmail.attackers.len()));

    let slots = spread(largest, events);
    let mut fights = fights.into_iter();
    let mut ordinary = ordinary.into_iter();
    (0..events)
        .filter_map(|at| {
            if slots.contains(&at) {
                fights.next()
            } else {
                ordinary.next()
            }
        })
        .collect()
}

/// `k` distinct positions out of `0..n`, evenly spaced, each in the middle of its share.
fn spread(k: usize, n: usize) -> HashSet<usize> {
    (0..k).map(|j| (2 * j + 1) * n / (2 * k)).collect()
}

/// Gives a killmail without a zkb block one made up from the killmail itself: `npc` when no
/// attacker is a character, `solo` when exactly one attacker is and there is no other, and a
/// `totalValue` of 10,000 ISK per point of damage taken plus 1 M per item (EVE Ref's archives
/// carry no zkb, and without one the value, NPC and solo filters could never match).
pub fn fill_zkb(received: &mut Received) -> bool {
    if received.zkb.is_some() {
        return false;
    }
    received.zkb = Some(synthetic_zkb(&received.killmail, &received.hash));
    true
}

/// The job carrying `received` whole (body and zkb), so worker-killmails stores it without
/// asking ESI: the path's cost is the pipeline's own, not ESI's.
pub fn ingest_job(received: &Received) -> IngestJob {
    IngestJob {
        killmail_id: received.killmail.killmail_id,
        hash: received.hash.clone(),
        killmail: Some(received.killmail.clone()),
        zkb: received.zkb.clone(),
        source: received.source,
    }
}

fn synthetic_zkb(killmail: &Killmail, hash: &str) -> Zkb {
    let players = killmail
        .attackers
        .iter()
        .filter(|a| a.character_id.is_some())
        .count();
    let value = 10_000.0 * killmail.victim.damage_taken as f64
        + 1_000_000.0 * killmail.victim.items.len() as f64;
    Zkb(serde_json::json!({
        "hash": hash,
        "totalValue": value,
        "points": 1,
        "npc": players == 0,
        "solo": players == 1 && killmail.attackers.len() == 1,
        "awox": false,
        "labels": ["loadgen-synthetic"],
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use killreport::killmail::{Attacker, KillmailId, Source, Victim};

    /// A killmail with `attackers` attackers, the first few of them characters.
    pub(crate) fn killmail(id: i64, attackers: usize) -> Received {
        let attacker = |n: usize| Attacker {
            character_id: (n < 3).then_some(1000 + n as i64),
            corporation_id: Some(2000 + (n % 2) as i64),
            alliance_id: Some(3000),
            faction_id: None,
            ship_type_id: Some(600),
            weapon_type_id: None,
            damage_done: 10,
            final_blow: n == 0,
            security_status: 0.0,
        };
        Received {
            killmail: Killmail {
                killmail_id: KillmailId(id),
                killmail_time: chrono::DateTime::UNIX_EPOCH,
                solar_system_id: 30_000_000 + id % 3,
                moon_id: None,
                war_id: None,
                victim: Victim {
                    character_id: Some(9000 + id % 4),
                    corporation_id: Some(8000 + id % 2),
                    alliance_id: Some(7000),
                    faction_id: None,
                    ship_type_id: 670 + id % 5,
                    damage_taken: 100 * id,
                    position: None,
                    items: Vec::new(),
                },
                attackers: (0..attackers).map(attacker).collect(),
            },
            hash: "0".repeat(40),
            zkb: None,
            source: Source::Import,
        }
    }

    fn ids(picked: &[Received]) -> Vec<i64> {
        picked.iter().map(|r| r.killmail.killmail_id.0).collect()
    }

    #[test]
    fn the_largest_fights_are_spread_through_the_run() {
        let mut all: Vec<Received> = (1..=20).map(|id| killmail(id, 1)).collect();
        all[4] = killmail(5, 600);
        all[15] = killmail(16, 500);
        all.push(killmail(3, 1)); // a duplicate id is dropped
        let picked = pick(all, 10, 2);
        // Slots 2 and 7 hold the fights, biggest first; the rest keeps file order.
        assert_eq!(ids(&picked), [1, 2, 5, 3, 4, 6, 7, 16, 8, 9]);
    }

    #[test]
    fn picking_more_than_there_is_takes_everything() {
        let all: Vec<Received> = (1..=3).map(|id| killmail(id, id as usize)).collect();
        assert_eq!(ids(&pick(all.clone(), 10, 0)), [1, 2, 3]);
        assert_eq!(pick(all, 10, 10).len(), 3);
    }

    #[test]
    fn a_made_up_zkb_follows_the_attackers() {
        let mut solo = killmail(1, 1);
        assert!(fill_zkb(&mut solo));
        let zkb = solo.zkb.clone().expect("filled");
        assert_eq!((zkb.npc(), zkb.solo()), (Some(false), Some(true)));
        assert_eq!(zkb.total_value(), Some(1_000_000.0));
        assert!(!fill_zkb(&mut solo), "an existing block is kept");

        let mut gang = killmail(2, 5);
        fill_zkb(&mut gang);
        let zkb = gang.zkb.expect("filled");
        assert_eq!((zkb.npc(), zkb.solo()), (Some(false), Some(false)));
    }
}
