//! `Victim.fitting`: the victim's items by slot rack and hold (see `valuation::fitting`).

use async_graphql::Object;

use super::types::KillmailItem;
use crate::killmail::Killmail;
use crate::valuation::fitting::{Slot, fitting};

/// One slot rack or hold, with what was in it.
pub struct FittingSlot {
    slot: Slot,
    items: Vec<KillmailItem>,
}

/// The victim's items by slot and hold, racks first; empty ones left out.
pub fn slots(killmail: &Killmail) -> Vec<FittingSlot> {
    fitting(killmail)
        .into_iter()
        .map(|s| FittingSlot {
            slot: s.slot,
            items: s.items.into_iter().cloned().map(KillmailItem).collect(),
        })
        .collect()
}

#[Object]
impl FittingSlot {
    /// A stable identifier: `high`, `mid`, `low`, `rig`, `subsystem`, `service`, `droneBay`,
    /// `fighterBay`, `fighterTubes`, `implants`, `boosters`, `cargo`, `fleetHangar`,
    /// `shipHangar`, `frigateEscapeBay`, `miningHold` and the other holds, or `other`.
    async fn name(&self) -> &'static str {
        self.slot.name()
    }
    /// What a fitting window calls it, like "High slots".
    async fn label(&self) -> &'static str {
        self.slot.label()
    }
    /// The inventory flags of its items, each once, in order (a rack's positions).
    async fn flags(&self) -> Vec<i32> {
        let mut flags: Vec<i32> = self.items.iter().map(|item| item.0.flag).collect();
        flags.dedup();
        flags
    }
    /// Its items by flag, containers with their contents.
    async fn items(&self) -> &[KillmailItem] {
        &self.items
    }
}
