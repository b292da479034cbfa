//! The subscription documents of a fan-out run, and which injected killmails each must receive.
//!
//! A mix of N documents is built deterministically from the killmails about to be injected, so
//! that every filtered document matches a known, non-empty subset: the k-th document filtering on
//! alliances takes the k-th alliance by how many of those killmails it appears on, and so on.
//! Filters never use `regionIds` (the Node peer ignores it). What a document should receive is
//! worked out with killreport's own filter, from the very JSON sent to the server.

use std::collections::HashMap;

use anyhow::Context;
use async_graphql::InputType;
use killreport::graphql::KillmailFilter;
use killreport::killmail::{Killmail, Received};
use killreport::statics::Statics;
use serde_json::{Value, json};

/// DESIGN.md's example: what every client subscribes with when there is one document.
const DESIGN_EXAMPLE: &str = "killmailId killmailTime victim { characterName shipTypeName }";
/// Every attacker: 400–600 of them in a structure fight make payloads of about 100 KB.
const ATTACKERS: &str =
    "killmailId attackerCount attackers { character { id } damageDone finalBlow shipType { id } }";
const OVERVIEW: &str = "killmailId killmailTime solarSystem { id name } \
     victim { shipType { id name } corporation { id name } damageTaken } zkb { totalValue npc solo }";
const FINAL_BLOW: &str = "killmailId finalBlow { character { id } shipType { id } damageDone } \
     victim { allianceName corporationName }";
/// A `killmailAdded` subscription selecting `selection`, with the variables `$filter` and
/// `$after` when asked for.
fn query_text(selection: &str, filter: bool, after: bool) -> String {
    let (mut declared, mut passed) = (Vec::new(), Vec::new());
    if filter {
        declared.push("$filter: KillmailFilter");
        passed.push("filter: $filter");
    }
    if after {
        declared.push("$after: String");
        passed.push("after: $after");
    }
    let list = |items: Vec<&str>| match items.is_empty() {
        true => String::new(),
        false => format!("({})", items.join(", ")),
    };
    format!(
        "subscription Watch{} {{ killmailAdded{} {{ {selection} }} }}",
        list(declared),
        list(passed)
    )
}

/// Fields added to a base selection, by the bits of a document's repetition number, so that the
/// n-th document of a kind differs from the ones before it even when its filter cannot.
const EXTRAS: [&str; 4] = ["hash", "time", "cursor", "solarSystem { id }"];

/// One subscription document with its variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// A short description for the report, e.g. `allianceIds VICTIM [99003581]`.
    pub label: String,
    pub query: String,
    selection: String,
    /// The `KillmailFilter` as JSON, sent as the variable `filter`; `None` for no filter.
    pub filter: Option<Value>,
    /// The cursor sent as the variable `after`, for a subscriber that resumes.
    pub after: Option<String>,
}

impl Document {
    fn new(label: String, selection: &str, filter: Option<Value>) -> Self {
        Self {
            label,
            query: query_text(selection, filter.is_some(), false),
            selection: selection.to_owned(),
            filter,
            after: None,
        }
    }

    /// The same document for a subscriber resuming after `cursor` (`after: $after`).
    pub fn resuming_after(self, cursor: &str) -> Self {
        Self {
            query: query_text(&self.selection, self.filter.is_some(), true),
            after: Some(cursor.to_owned()),
            ..self
        }
    }

    /// The graphql-transport-ws `subscribe` message that opens this document as `id`.
    pub fn subscribe_message(&self, id: &str) -> String {
        let mut variables = serde_json::Map::new();
        if let Some(filter) = &self.filter {
            variables.insert("filter".into(), filter.clone());
        }
        if let Some(after) = &self.after {
            variables.insert("after".into(), after.clone().into());
        }
        let mut payload = json!({ "query": self.query });
        if !variables.is_empty() {
            payload["variables"] = variables.into();
        }
        json!({ "id": id, "type": "subscribe", "payload": payload }).to_string()
    }

    /// For each killmail, whether a subscriber to this document should receive it, by
    /// killreport's own filter semantics.
    pub fn expected(&self, killmails: &[Received]) -> anyhow::Result<Vec<bool>> {
        let Some(filter) = &self.filter else {
            return Ok(vec![true; killmails.len()]);
        };
        let input = async_graphql::Value::from_json(filter.clone())
            .with_context(|| format!("filter {filter} is not a GraphQL value"))?;
        let filter = <KillmailFilter as InputType>::parse(Some(input))
            .map_err(|e| {
                anyhow::anyhow!(
                    "filter {}: {}",
                    self.label,
                    e.into_server_error(Default::default()).message
                )
            })?
            .parse()
            .map_err(|e| anyhow::anyhow!("filter {}: {}", self.label, e.message))?;
        // Region filters are never generated, so no static data is needed.
        let statics = Statics::default();
        Ok(killmails
            .iter()
            .map(|r| filter.matches(&r.killmail, r.zkb.as_ref(), &statics))
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Entity {
    Character,
    Corporation,
    Alliance,
}

impl Entity {
    fn field(self) -> &'static str {
        match self {
            Entity::Character => "characterIds",
            Entity::Corporation => "corporationIds",
            Entity::Alliance => "allianceIds",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Involvement {
    Victim,
    Attacker,
    Any,
}

impl Involvement {
    fn name(self) -> &'static str {
        match self {
            Involvement::Victim => "VICTIM",
            Involvement::Attacker => "ATTACKER",
            Involvement::Any => "ANY",
        }
    }
}

/// What a document of the mix filters on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Unfiltered,
    /// `ids` ids of one entity kind, where `involvement` says.
    Entity(Entity, Involvement, usize),
    Ship,
    System,
    MinValue,
    Npc,
    Solo,
}

/// The cycle documents 1, 2, … go through (document 0 is DESIGN.md's example), each with its
/// base selection. Heavy selections sit on filters that catch the big fights as well as on
/// everything.
const CYCLE: [(Kind, &str); 13] = [
    (
        Kind::Entity(Entity::Alliance, Involvement::Victim, 1),
        DESIGN_EXAMPLE,
    ),
    (Kind::Unfiltered, ATTACKERS),
    (
        Kind::Entity(Entity::Corporation, Involvement::Attacker, 1),
        OVERVIEW,
    ),
    (
        Kind::Entity(Entity::Character, Involvement::Any, 2),
        DESIGN_EXAMPLE,
    ),
    (Kind::Ship, FINAL_BLOW),
    (Kind::Unfiltered, OVERVIEW),
    (Kind::System, ATTACKERS),
    (Kind::MinValue, OVERVIEW),
    (
        Kind::Entity(Entity::Alliance, Involvement::Attacker, 1),
        ATTACKERS,
    ),
    (Kind::Npc, DESIGN_EXAMPLE),
    (Kind::Solo, FINAL_BLOW),
    (
        Kind::Entity(Entity::Corporation, Involvement::Any, 1),
        DESIGN_EXAMPLE,
    ),
    (Kind::Unfiltered, FINAL_BLOW),
];

/// `n` distinct documents (at least one): document 0 is DESIGN.md's example without a filter,
/// the others go round [`CYCLE`], the r-th time round taking the r-th most frequent id (or the
/// r-th value threshold, or the other boolean) and `r`'s extra fields.
pub fn mix(n: usize, killmails: &[Received]) -> Vec<Document> {
    let ranked = Ranked::of(killmails);
    let mut documents = vec![Document::new(
        "DESIGN example, no filter".into(),
        DESIGN_EXAMPLE,
        None,
    )];
    for j in 0..n.saturating_sub(1) {
        let (kind, base) = CYCLE[j % CYCLE.len()];
        let round = j / CYCLE.len();
        let selection = std::iter::once(base)
            .chain(
                EXTRAS
                    .iter()
                    .enumerate()
                    .filter(|(bit, _)| round & (1 << bit) != 0)
                    .map(|(_, extra)| *extra),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let (label, filter) = ranked.filter(kind, round);
        documents.push(Document::new(label, &selection, filter));
    }
    documents
}

/// The candidate values of each filter, most frequent first.
struct Ranked {
    entities: HashMap<(Entity, bool), Vec<i64>>,
    ships: Vec<i64>,
    systems: Vec<i64>,
    /// Total values, highest first.
    values: Vec<f64>,
}

impl Ranked {
    fn of(killmails: &[Received]) -> Self {
        let mut entities = HashMap::new();
        for entity in [Entity::Character, Entity::Corporation, Entity::Alliance] {
            for as_attacker in [false, true] {
                let ids = rank(killmails.iter().map(|r| {
                    if as_attacker {
                        attacker_ids(&r.killmail, entity)
                    } else {
                        victim_id(&r.killmail, entity).into_iter().collect()
                    }
                }));
                entities.insert((entity, as_attacker), ids);
            }
        }
        let mut values: Vec<f64> = killmails
            .iter()
            .filter_map(|r| r.zkb.as_ref()?.total_value())
            .collect();
        values.sort_by(|a, b| b.total_cmp(a));
        Self {
            entities,
            ships: rank(
                killmails
                    .iter()
                    .map(|r| vec![r.killmail.victim.ship_type_id]),
            ),
            systems: rank(killmails.iter().map(|r| vec![r.killmail.solar_system_id])),
            values,
        }
    }

    /// The label and filter of the `round`-th document of `kind`.
    fn filter(&self, kind: Kind, round: usize) -> (String, Option<Value>) {
        let pick = |list: &[i64], count: usize| -> Vec<String> {
            if list.is_empty() {
                return Vec::new();
            }
            (0..count)
                .map(|k| list[(round * count + k) % list.len()].to_string())
                .collect()
        };
        let labelled = |label: String, filter: Value| (label, Some(filter));
        match kind {
            Kind::Unfiltered => (format!("no filter (round {round})"), None),
            Kind::Entity(entity, involvement, count) => {
                // ANY ranks by appearances anywhere; attackers are the bigger pool.
                let as_attacker = involvement != Involvement::Victim;
                let ids = pick(&self.entities[&(entity, as_attacker)], count);
                labelled(
                    format!("{} {} {ids:?}", entity.field(), involvement.name()),
                    json!({ entity.field(): ids, "involvement": involvement.name() }),
                )
            }
            Kind::Ship => {
                let ids = pick(&self.ships, 1);
                labelled(
                    format!("shipTypeIds {ids:?}"),
                    json!({ "shipTypeIds": ids }),
                )
            }
            Kind::System => {
                let ids = pick(&self.systems, 1);
                labelled(
                    format!("solarSystemIds {ids:?}"),
                    json!({ "solarSystemIds": ids }),
                )
            }
            Kind::MinValue => {
                // Round r keeps the top 1/(r+2) by value: a half, a third, a quarter…
                let min = match self.values.len() {
                    0 => 0.0,
                    len => self.values[(len - 1) / (round + 2)],
                };
                labelled(format!("minValue {min}"), json!({ "minValue": min }))
            }
            Kind::Npc => {
                let npc = round.is_multiple_of(2);
                labelled(format!("npc {npc}"), json!({ "npc": npc }))
            }
            Kind::Solo => {
                let solo = round.is_multiple_of(2);
                labelled(format!("solo {solo}"), json!({ "solo": solo }))
            }
        }
    }
}

fn victim_id(killmail: &Killmail, entity: Entity) -> Option<i64> {
    let victim = &killmail.victim;
    match entity {
        Entity::Character => victim.character_id,
        Entity::Corporation => victim.corporation_id,
        Entity::Alliance => victim.alliance_id,
    }
}

/// The distinct ids of `entity` among a killmail's attackers.
fn attacker_ids(killmail: &Killmail, entity: Entity) -> Vec<i64> {
    let mut ids: Vec<i64> = killmail
        .attackers
        .iter()
        .filter_map(|a| match entity {
            Entity::Character => a.character_id,
            Entity::Corporation => a.corporation_id,
            Entity::Alliance => a.alliance_id,
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Ids by the number of killmails they appear on, most first, ties by the lower id.
fn rank(per_killmail: impl Iterator<Item = Vec<i64>>) -> Vec<i64> {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for ids in per_killmail {
        for id in ids {
            *counts.entry(id).or_default() += 1;
        }
    }
    let mut ids: Vec<(i64, usize)> = counts.into_iter().collect();
    ids.sort_by_key(|&(id, count)| (std::cmp::Reverse(count), id));
    ids.into_iter().map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{fill_zkb, tests::killmail};

    fn sample() -> Vec<Received> {
        (1..=40)
            .map(|id| {
                let mut received = killmail(id, (id % 7) as usize);
                fill_zkb(&mut received);
                received
            })
            .collect()
    }

    #[test]
    fn one_document_is_the_design_example() {
        let documents = mix(1, &sample());
        assert_eq!(documents.len(), 1);
        assert_eq!(
            documents[0].query,
            "subscription Watch { killmailAdded { killmailId killmailTime victim { characterName shipTypeName } } }"
        );
        assert_eq!(
            documents[0].expected(&sample()).expect("valid"),
            vec![true; 40]
        );
    }

    #[test]
    fn a_mix_of_fifty_is_distinct_and_each_matches_something() {
        let killmails = sample();
        let documents = mix(50, &killmails);
        assert_eq!(documents.len(), 50);
        let distinct: std::collections::HashSet<String> =
            documents.iter().map(|d| d.subscribe_message("1")).collect();
        assert_eq!(distinct.len(), 50);
        for document in &documents {
            let expected = document.expected(&killmails).expect("valid filter");
            assert!(
                expected.contains(&true),
                "{} matches nothing",
                document.label
            );
            assert!(!document.query.contains("regionIds"));
        }
        // Filtered documents take a strict subset somewhere, or the mix would test nothing.
        assert!(documents.iter().any(|d| {
            d.filter.is_some() && d.expected(&killmails).expect("valid").contains(&false)
        }));
    }

    #[test]
    fn expected_follows_killreports_filter() {
        let killmails = sample();
        // Victim corporations alternate 8000/8001 by id parity.
        let victim = Document::new(
            "corp".into(),
            DESIGN_EXAMPLE,
            Some(json!({ "corporationIds": ["8001"], "involvement": "VICTIM" })),
        );
        let expected = victim.expected(&killmails).expect("valid");
        let odd: Vec<bool> = (1..=40).map(|id| id % 2 == 1).collect();
        assert_eq!(expected, odd);
        // Attacker 1000 is on every killmail with at least one attacker.
        let attacker = Document::new(
            "char".into(),
            DESIGN_EXAMPLE,
            Some(json!({ "characterIds": ["1000"], "involvement": "ATTACKER" })),
        );
        let expected = attacker.expected(&killmails).expect("valid");
        let armed: Vec<bool> = (1..=40).map(|id| id % 7 != 0).collect();
        assert_eq!(expected, armed);
        // Both fields must hold.
        let both = Document::new(
            "both".into(),
            DESIGN_EXAMPLE,
            Some(json!({ "corporationIds": ["8001"], "involvement": "VICTIM", "npc": false })),
        );
        let expected = both.expected(&killmails).expect("valid");
        let odd_and_armed: Vec<bool> = (1..=40).map(|id| id % 2 == 1 && id % 7 != 0).collect();
        assert_eq!(expected, odd_and_armed);
    }

    #[test]
    fn the_subscribe_message_carries_the_filter_as_a_variable() {
        let document = Document::new(
            "x".into(),
            "killmailId",
            Some(json!({ "shipTypeIds": ["670"] })),
        );
        let message: Value = serde_json::from_str(&document.subscribe_message("7")).expect("JSON");
        assert_eq!(message["id"], "7");
        assert_eq!(message["type"], "subscribe");
        assert_eq!(
            message["payload"]["variables"]["filter"]["shipTypeIds"][0],
            "670"
        );
    }
}
