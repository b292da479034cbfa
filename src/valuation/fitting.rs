//! A victim's items as a fitting: grouped by the slot or hold their flag names (ESI's inventory
//! flags, `invFlags` in CCP's static data), in the order a fitting window shows them. A
//! container's contents stay inside it. No I/O.

use crate::killmail::{Item, Killmail};

/// A slot rack or hold of a ship (or structure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    High,
    Mid,
    Low,
    Rig,
    Subsystem,
    Service,
    DroneBay,
    FighterBay,
    FighterTubes,
    Implants,
    Boosters,
    Cargo,
    FleetHangar,
    ShipHangar,
    FrigateEscapeBay,
    FuelBay,
    MiningHold,
    GasHold,
    MineralHold,
    SalvageHold,
    IceHold,
    AsteroidHold,
    ShipHold,
    AmmoHold,
    CommandCenterHold,
    PlanetaryCommoditiesHold,
    QuafeBay,
    BoosterBay,
    SubsystemBay,
    MobileDepotHold,
    StructureFuel,
    StructureDeedBay,
    CorporationHangars,
    /// A flag none of the above names (0, "none", among them).
    Other,
}

impl Slot {
    /// The slot or hold an item with `flag` sits in.
    pub fn of_flag(flag: i32) -> Slot {
        match flag {
            27..=34 => Slot::High,
            19..=26 => Slot::Mid,
            11..=18 => Slot::Low,
            92..=99 => Slot::Rig,
            125..=132 => Slot::Subsystem,
            164..=171 => Slot::Service,
            87 => Slot::DroneBay,
            158 => Slot::FighterBay,
            159..=163 => Slot::FighterTubes,
            89 => Slot::Implants,
            88 => Slot::Boosters,
            5 => Slot::Cargo,
            155 => Slot::FleetHangar,
            90 => Slot::ShipHangar,
            179 => Slot::FrigateEscapeBay,
            133 => Slot::FuelBay,
            134 => Slot::MiningHold,
            135 => Slot::GasHold,
            136 => Slot::MineralHold,
            137 => Slot::SalvageHold,
            181 => Slot::IceHold,
            182 => Slot::AsteroidHold,
            138..=142 => Slot::ShipHold,
            143 => Slot::AmmoHold,
            148 => Slot::CommandCenterHold,
            149 => Slot::PlanetaryCommoditiesHold,
            154 => Slot::QuafeBay,
            176 => Slot::BoosterBay,
            177 => Slot::SubsystemBay,
            183 => Slot::MobileDepotHold,
            172 => Slot::StructureFuel,
            180 => Slot::StructureDeedBay,
            4 | 115..=121 => Slot::CorporationHangars,
            _ => Slot::Other,
        }
    }

    /// A stable identifier, for clients to switch on.
    pub fn name(self) -> &'static str {
        self.describe().0
    }

    /// What a fitting window calls it.
    pub fn label(self) -> &'static str {
        self.describe().1
    }

    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Slot::High => ("high", "High slots"),
            Slot::Mid => ("mid", "Mid slots"),
            Slot::Low => ("low", "Low slots"),
            Slot::Rig => ("rig", "Rig slots"),
            Slot::Subsystem => ("subsystem", "Subsystems"),
            Slot::Service => ("service", "Service slots"),
            Slot::DroneBay => ("droneBay", "Drone bay"),
            Slot::FighterBay => ("fighterBay", "Fighter bay"),
            Slot::FighterTubes => ("fighterTubes", "Fighter tubes"),
            Slot::Implants => ("implants", "Implants"),
            Slot::Boosters => ("boosters", "Boosters"),
            Slot::Cargo => ("cargo", "Cargo hold"),
            Slot::FleetHangar => ("fleetHangar", "Fleet hangar"),
            Slot::ShipHangar => ("shipHangar", "Ship maintenance bay"),
            Slot::FrigateEscapeBay => ("frigateEscapeBay", "Frigate escape bay"),
            Slot::FuelBay => ("fuelBay", "Fuel bay"),
            Slot::MiningHold => ("miningHold", "Mining hold"),
            Slot::GasHold => ("gasHold", "Gas hold"),
            Slot::MineralHold => ("mineralHold", "Mineral hold"),
            Slot::SalvageHold => ("salvageHold", "Salvage hold"),
            Slot::IceHold => ("iceHold", "Ice hold"),
            Slot::AsteroidHold => ("asteroidHold", "Asteroid hold"),
            Slot::ShipHold => ("shipHold", "Ship hold"),
            Slot::AmmoHold => ("ammoHold", "Ammo hold"),
            Slot::CommandCenterHold => ("commandCenterHold", "Command center hold"),
            Slot::PlanetaryCommoditiesHold => {
                ("planetaryCommoditiesHold", "Planetary commodities hold")
            }
            Slot::QuafeBay => ("quafeBay", "Quafe bay"),
            Slot::BoosterBay => ("boosterBay", "Booster bay"),
            Slot::SubsystemBay => ("subsystemBay", "Subsystem bay"),
            Slot::MobileDepotHold => ("mobileDepotHold", "Mobile depot hold"),
            Slot::StructureFuel => ("structureFuel", "Structure fuel"),
            Slot::StructureDeedBay => ("structureDeedBay", "Structure deed bay"),
            Slot::CorporationHangars => ("corporationHangars", "Corporation hangars"),
            Slot::Other => ("other", "Other"),
        }
    }
}

/// One slot rack or hold with what was in it, by flag (so by position within a rack).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotItems<'a> {
    pub slot: Slot,
    pub items: Vec<&'a Item>,
}

/// The victim's items by slot and hold, racks first; empty ones left out.
pub fn fitting(killmail: &Killmail) -> Vec<SlotItems<'_>> {
    let mut items: Vec<&Item> = killmail.victim.items.iter().collect();
    items.sort_by_key(|item| (Slot::of_flag(item.flag), item.flag));
    let mut slots: Vec<SlotItems<'_>> = Vec::new();
    for item in items {
        let slot = Slot::of_flag(item.flag);
        match slots.last_mut() {
            Some(last) if last.slot == slot => last.items.push(item),
            _ => slots.push(SlotItems {
                slot,
                items: vec![item],
            }),
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(text: &str) -> Killmail {
        serde_json::from_str(text).expect("a killmail")
    }

    fn summary(killmail: &Killmail) -> Vec<(&'static str, Vec<(i32, i64)>)> {
        fitting(killmail)
            .into_iter()
            .map(|s| {
                let items = s.items.iter().map(|i| (i.flag, i.item_type_id)).collect();
                (s.slot.name(), items)
            })
            .collect()
    }

    /// A real R2Z2 killmail (a Retriever, 2026-03-25): slots, drones, rigs and a mining hold.
    #[test]
    fn a_retriever_has_its_racks_in_order_and_its_ore_in_the_mining_hold() {
        let object: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/it/fixtures/upstream/r2z2/r2z2-ephemeral-96599404-killmail-134265477.aa-killtracker.json"
        ))
        .expect("JSON");
        let killmail: Killmail = serde_json::from_value(object["esi"].clone()).expect("ESI");
        let slots = summary(&killmail);
        let names: Vec<&str> = slots.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            ["high", "mid", "low", "rig", "droneBay", "miningHold"]
        );
        assert_eq!(slots[0].1, [(27, 17482), (28, 17482)]);
        assert_eq!(slots[2].1, [(11, 22542), (12, 22542), (13, 22542)]);
        assert_eq!(slots[3].1, [(92, 31790), (93, 32817), (94, 31766)]);
        assert_eq!(slots[5].1.len(), 7);
    }

    /// A real EVE Ref killmail whose cargo holds containers: their contents stay inside them.
    #[test]
    fn containers_keep_their_contents() {
        let killmail = fixture(include_str!(
            "../../tests/it/fixtures/killmails-2021-12-03/97089263.json"
        ));
        let slots = fitting(&killmail);
        let top: usize = slots.iter().map(|s| s.items.len()).sum();
        assert_eq!(top, killmail.victim.items.len());
        assert!(
            slots
                .iter()
                .flat_map(|s| &s.items)
                .any(|item| !item.items.is_empty())
        );
    }

    #[test]
    fn every_flag_has_a_place() {
        assert_eq!(Slot::of_flag(155).label(), "Fleet hangar");
        assert_eq!(Slot::of_flag(129), Slot::Subsystem);
        assert_eq!(Slot::of_flag(160), Slot::FighterTubes);
        assert_eq!(Slot::of_flag(0), Slot::Other);
        assert_eq!(Slot::of_flag(9999).name(), "other");
    }
}
