//! The GraphQL objects. A killmail is one shared value (`KillmailNode`) whether it came from the
//! store or from a live event; victim, attacker and item views borrow from it. Names come from
//! the event's `names` when it has them, from the in-memory static tables for systems, regions
//! and types, and from the batched name loader for everything else. Every `killmails` field,
//! `Query`'s and each entity's, is a page of the same connection (see [`killmails_page`]):
//! newest first or most valuable first, keyset-paginated.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, ID, Object, Result};
use chrono::DateTime;
use sqlx::PgPool;

use super::entities::{self, EntitySnapshot, Snapshotted};
use super::loaders::NameLoader;
use super::time::EsiTime;
use super::{Involvement, KillmailFilter, MAX_PAGE, Statics, bad_input, internal};
use crate::db;
use crate::db::killmails::{Order, PageKey, StoredKillmail};
use crate::events::KillmailAdded;
use crate::killmail::{Attacker as EsiAttacker, Item, Killmail, KillmailId, Zkb as EsiZkb};
use crate::stats::{EntityKind, EntityTop};
use crate::valuation::fitting::{Slot, fitting};

/// A killmail, as stored or as announced.
#[derive(Clone)]
pub struct KillmailNode(pub Arc<KillmailAdded>);

impl From<StoredKillmail> for KillmailNode {
    fn from(s: StoredKillmail) -> Self {
        // Names come from the loaders, field by field.
        Self(Arc::new(s.into_event(Default::default())))
    }
}

impl From<Arc<KillmailAdded>> for KillmailNode {
    fn from(event: Arc<KillmailAdded>) -> Self {
        Self(event)
    }
}

fn clamp(value: i64) -> i32 {
    i32::try_from(value).unwrap_or(if value < 0 { i32::MIN } else { i32::MAX })
}

fn statics<'a>(ctx: &Context<'a>) -> Result<&'a Statics> {
    ctx.data::<Arc<Statics>>().map(Arc::as_ref)
}

/// The name of a character, corporation, alliance or faction: from the event when it carried
/// one, else from the store (batched across the whole response).
async fn entity_name(
    ctx: &Context<'_>,
    node: Option<&KillmailNode>,
    id: i64,
) -> Result<Option<String>> {
    if let Some(name) = node.and_then(|n| n.0.names.get(&id.to_string())) {
        return Ok(Some(name.clone()));
    }
    ctx.data::<DataLoader<NameLoader>>()?
        .load_one(id)
        .await
        .map_err(|e| internal(anyhow::anyhow!(e)))
}

/// An item type's name: from the static data in memory, else from the store, where
/// worker-enrich adds the types newer than the static data this process loaded.
async fn type_name(ctx: &Context<'_>, id: i64) -> Result<Option<String>> {
    match statics(ctx)?.type_name(id) {
        Some(name) => Ok(Some(name.to_owned())),
        None => entity_name(ctx, None, id).await,
    }
}

#[Object(name = "Killmail")]
impl KillmailNode {
    async fn id(&self) -> ID {
        self.killmail_id_text()
    }
    async fn hash(&self) -> String {
        self.0
            .hash
            .clone()
            .or_else(|| {
                self.0
                    .zkb
                    .as_ref()
                    .and_then(|z| z.hash().map(str::to_owned))
            })
            .unwrap_or_default()
    }
    async fn time(&self) -> EsiTime {
        EsiTime(self.0.killmail.killmail_time)
    }
    /// The ingest cursor: pass it as `after` to `killmailAdded` to resume after this killmail.
    async fn cursor(&self) -> String {
        self.0.seq.0.to_string()
    }
    async fn killmail_id(&self) -> ID {
        self.killmail_id_text()
    }
    async fn killmail_time(&self) -> EsiTime {
        EsiTime(self.0.killmail.killmail_time)
    }
    async fn solar_system(&self) -> SolarSystem {
        SolarSystem {
            id: self.0.killmail.solar_system_id,
        }
    }
    async fn moon_id(&self) -> Option<ID> {
        self.0.killmail.moon_id.map(|id| ID(id.to_string()))
    }
    async fn war_id(&self) -> Option<ID> {
        self.0.killmail.war_id.map(|id| ID(id.to_string()))
    }
    async fn victim(&self) -> Victim {
        Victim(self.clone())
    }
    #[graphql(complexity = "super::limits::list(super::limits::ATTACKERS, child_complexity)")]
    async fn attackers(&self) -> Vec<Attacker> {
        (0..self.0.killmail.attackers.len())
            .map(|index| Attacker {
                node: self.clone(),
                index,
            })
            .collect()
    }
    async fn attacker_count(&self) -> i32 {
        clamp(self.0.killmail.attackers.len() as i64)
    }
    async fn final_blow(&self) -> Option<Attacker> {
        self.0
            .killmail
            .attackers
            .iter()
            .position(|a| a.final_blow)
            .map(|index| Attacker {
                node: self.clone(),
                index,
            })
    }
    /// The killmail's values and flags: zKillboard's when it came with them, otherwise
    /// killreport's own estimate by zKillboard's rules from the item prices of its day
    /// (`estimated` is then true; until some day's prices are known, `totalValue` is 0 and
    /// the other values null).
    /// Filters (`minValue`, `npc`, `solo`) and statistics read the same values.
    async fn zkb(&self) -> Option<Zkb> {
        self.0.zkb.clone().map(Zkb)
    }
}

impl KillmailNode {
    fn killmail_id_text(&self) -> ID {
        ID(self.0.killmail.killmail_id.to_string())
    }
}

pub struct Victim(KillmailNode);

#[Object]
impl Victim {
    async fn character(&self) -> Option<Character> {
        let v = &self.0.0.killmail.victim;
        v.character_id.map(|id| Character {
            id,
            corporation_id: v.corporation_id,
            alliance_id: v.alliance_id,
            node: Some(self.0.clone()),
        })
    }
    async fn corporation(&self) -> Option<Corporation> {
        let v = &self.0.0.killmail.victim;
        v.corporation_id.map(|id| Corporation {
            id,
            alliance_id: v.alliance_id,
            node: Some(self.0.clone()),
        })
    }
    async fn alliance(&self) -> Option<Alliance> {
        self.0.0.killmail.victim.alliance_id.map(|id| Alliance {
            id,
            node: Some(self.0.clone()),
        })
    }
    async fn ship_type(&self) -> ItemType {
        ItemType {
            id: self.0.0.killmail.victim.ship_type_id,
        }
    }
    async fn damage_taken(&self) -> i32 {
        clamp(self.0.0.killmail.victim.damage_taken)
    }
    /// Everything the victim carried, containers with their contents.
    #[graphql(complexity = "super::limits::list(super::limits::ITEMS, child_complexity)")]
    async fn items(&self) -> Vec<KillmailItem> {
        self.0
            .0
            .killmail
            .victim
            .items
            .iter()
            .cloned()
            .map(KillmailItem)
            .collect()
    }
    /// The same items by slot rack and hold (high, mid, low, rig, subsystem, drone bay,
    /// cargo, fleet hangar, …), from their flags.
    #[graphql(complexity = "super::limits::list(super::limits::ITEMS, child_complexity)")]
    async fn fitting(&self) -> Vec<FittingSlot> {
        fitting_slots(&self.0.0.killmail)
    }
    async fn character_name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        self.name(ctx, self.0.0.killmail.victim.character_id).await
    }
    async fn corporation_name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        self.name(ctx, self.0.0.killmail.victim.corporation_id)
            .await
    }
    async fn alliance_name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        self.name(ctx, self.0.0.killmail.victim.alliance_id).await
    }
    async fn ship_type_name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        type_name(ctx, self.0.0.killmail.victim.ship_type_id).await
    }
}

impl Victim {
    async fn name(&self, ctx: &Context<'_>, id: Option<i64>) -> Result<Option<String>> {
        match id {
            Some(id) => entity_name(ctx, Some(&self.0), id).await,
            None => Ok(None),
        }
    }
}

pub struct Attacker {
    node: KillmailNode,
    index: usize,
}

impl Attacker {
    fn esi(&self) -> &EsiAttacker {
        &self.node.0.killmail.attackers[self.index]
    }
}

#[Object]
impl Attacker {
    async fn character(&self) -> Option<Character> {
        let a = self.esi();
        a.character_id.map(|id| Character {
            id,
            corporation_id: a.corporation_id,
            alliance_id: a.alliance_id,
            node: Some(self.node.clone()),
        })
    }
    async fn corporation(&self) -> Option<Corporation> {
        let a = self.esi();
        a.corporation_id.map(|id| Corporation {
            id,
            alliance_id: a.alliance_id,
            node: Some(self.node.clone()),
        })
    }
    async fn alliance(&self) -> Option<Alliance> {
        self.esi().alliance_id.map(|id| Alliance {
            id,
            node: Some(self.node.clone()),
        })
    }
    async fn ship_type(&self) -> Option<ItemType> {
        self.esi().ship_type_id.map(|id| ItemType { id })
    }
    async fn weapon_type(&self) -> Option<ItemType> {
        self.esi().weapon_type_id.map(|id| ItemType { id })
    }
    async fn damage_done(&self) -> i32 {
        clamp(self.esi().damage_done)
    }
    async fn final_blow(&self) -> bool {
        self.esi().final_blow
    }
    async fn security_status(&self) -> f64 {
        self.esi().security_status
    }
}

pub struct KillmailItem(Item);

#[Object]
impl KillmailItem {
    async fn item_type(&self) -> ItemType {
        ItemType {
            id: self.0.item_type_id,
        }
    }
    async fn flag(&self) -> i32 {
        self.0.flag
    }
    async fn quantity_destroyed(&self) -> Option<i32> {
        self.0.quantity_destroyed.map(clamp)
    }
    async fn quantity_dropped(&self) -> Option<i32> {
        self.0.quantity_dropped.map(clamp)
    }
    async fn singleton(&self) -> i32 {
        self.0.singleton
    }
    /// A container's contents.
    #[graphql(complexity = "super::limits::list(super::limits::CONTAINER_ITEMS, child_complexity)")]
    async fn items(&self) -> Vec<KillmailItem> {
        self.0.items.iter().cloned().map(KillmailItem).collect()
    }
}

/// zKillboard's values for a killmail, or killreport's estimate of them.
pub struct Zkb(EsiZkb);

impl Zkb {
    fn number(&self, key: &str) -> Option<f64> {
        self.0.0.get(key).and_then(serde_json::Value::as_f64)
    }
    fn flag(&self, key: &str) -> bool {
        self.0
            .0
            .get(key)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

#[Object]
impl Zkb {
    async fn total_value(&self) -> f64 {
        self.number("totalValue").unwrap_or(0.0)
    }
    async fn fitted_value(&self) -> Option<f64> {
        self.number("fittedValue")
    }
    async fn dropped_value(&self) -> Option<f64> {
        self.number("droppedValue")
    }
    async fn destroyed_value(&self) -> Option<f64> {
        self.number("destroyedValue")
    }
    async fn points(&self) -> i32 {
        self.number("points").map_or(0, |p| p as i32)
    }
    async fn npc(&self) -> bool {
        self.flag("npc")
    }
    async fn solo(&self) -> bool {
        self.flag("solo")
    }
    async fn awox(&self) -> bool {
        self.flag("awox")
    }
    /// Whether these are killreport's own estimate (the killmail came without zKillboard's
    /// values) rather than zKillboard's.
    async fn estimated(&self) -> bool {
        self.flag("estimated")
    }
    async fn labels(&self) -> Vec<String> {
        self.0
            .0
            .get("labels")
            .and_then(serde_json::Value::as_array)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// The celestial nearest to the kill.
    async fn location_id(&self) -> Option<ID> {
        self.0
            .0
            .get("locationID")
            .and_then(serde_json::Value::as_i64)
            .map(|id| ID(id.to_string()))
    }
}

/// A filter list holding one id.
fn only(id: i64) -> Option<Vec<ID>> {
    Some(vec![ID(id.to_string())])
}

/// An edge cursor: a killmail's place in its order: newest first `t<µs>i<id>`, most valuable
/// first `v<value>i<id>` (`v-infi<id>` without a value).
fn encode_cursor(key: PageKey) -> String {
    match key {
        PageKey::Time(time, id) => format!("t{}i{}", time.timestamp_micros(), id.0),
        PageKey::Value(value, id) => format!("v{value}i{}", id.0),
    }
}

fn decode_cursor(cursor: &str) -> Result<PageKey> {
    let bad = || bad_input(format!("{cursor:?} is not a cursor of this connection"));
    let (key, id) = cursor.rsplit_once('i').ok_or_else(bad)?;
    let id = KillmailId(id.parse().map_err(|_| bad())?);
    if let Some(micros) = key.strip_prefix('t') {
        let time = micros
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(bad)?;
        return Ok(PageKey::Time(time, id));
    }
    let value = key.strip_prefix('v').and_then(|v| v.parse().ok());
    Ok(PageKey::Value(value.ok_or_else(bad)?, id))
}

/// A page of killmails, and how many match in all.
pub type KillmailConnection = Connection<String, KillmailNode, Matching>;

/// What a page of killmails knows of everything its filter matches.
pub struct Matching {
    filter: crate::filter::Filter,
}

#[Object]
impl Matching {
    /// How many killmails the filter matches in all, on every page (counted when asked, from
    /// the killmail rows: over a large store and a broad filter it may take as long as the
    /// query time limit allows).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<i64> {
        let mut connection = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
        db::killmails::count(&mut connection, |sql| self.filter.push_sql(sql))
            .await
            .map_err(internal)
    }
}

/// One page of killmails matching `filter` in `order`: the first `first` (25 unless given)
/// after the edge cursor `after`, which must come from a page of the same order.
pub async fn killmails_page(
    ctx: &Context<'_>,
    filter: &KillmailFilter,
    order: Order,
    first: Option<i32>,
    after: Option<String>,
) -> Result<KillmailConnection> {
    let first = first.unwrap_or(25);
    if !(0..=MAX_PAGE).contains(&first) {
        return Err(bad_input(format!(
            "first must be between 0 and {MAX_PAGE}, not {first}"
        )));
    }
    let filter = filter.parse()?;
    let after = after.as_deref().map(decode_cursor).transpose()?;
    if let Some(key) = after.filter(|key| key.order() != order) {
        return Err(bad_input(format!(
            "the cursor {:?} belongs to a page in another order than {order:?}",
            encode_cursor(key)
        )));
    }
    let mut connection = ctx.data::<PgPool>()?.acquire().await.map_err(internal)?;
    let (stored, has_next) = db::killmails::page(
        &mut connection,
        |sql| filter.push_sql(sql),
        order,
        after,
        first.unsigned_abs(),
    )
    .await
    .map_err(internal)?;
    let mut page =
        Connection::with_additional_fields(after.is_some(), has_next, Matching { filter });
    page.edges.extend(
        stored
            .into_iter()
            .map(|(key, s)| Edge::new(encode_cursor(key), KillmailNode::from(s))),
    );
    Ok(page)
}

pub struct Character {
    pub id: i64,
    pub corporation_id: Option<i64>,
    pub alliance_id: Option<i64>,
    pub node: Option<KillmailNode>,
}

#[Object]
impl Character {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        entity_name(ctx, self.node.as_ref(), self.id).await
    }
    async fn corporation(&self) -> Option<Corporation> {
        self.corporation_id.map(|id| Corporation {
            id,
            alliance_id: self.alliance_id,
            node: self.node.clone(),
        })
    }
    async fn alliance(&self) -> Option<Alliance> {
        self.alliance_id.map(|id| Alliance {
            id,
            node: self.node.clone(),
        })
    }
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn killmails(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 25)] first: Option<i32>,
        after: Option<String>,
        #[graphql(default)] involvement: Involvement,
        #[graphql(default)] order_by: Order,
    ) -> Result<KillmailConnection> {
        let filter = KillmailFilter {
            character_ids: only(self.id),
            involvement,
            ..Default::default()
        };
        killmails_page(ctx, &filter, order_by, first, after).await
    }
    /// Its kills, losses, ISK destroyed and lost, solo kills and points between `from`
    /// (inclusive) and `to` (exclusive), on `killmail_time`.
    async fn stats(
        &self,
        ctx: &Context<'_>,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
    ) -> Result<super::stats::EntityStats> {
        super::stats::entity_stats(ctx, EntityKind::Character, self.id, from, to).await
    }
    /// Its top ships (flown on its kills), systems or victims between `from` and `to`.
    async fn top(
        &self,
        ctx: &Context<'_>,
        of: EntityTop,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
        #[graphql(default = 10)] first: Option<i32>,
    ) -> Result<Vec<super::stats::TopEntry>> {
        super::stats::entity_top(ctx, (EntityKind::Character, self.id), of, from, to, first).await
    }
}

pub struct Corporation {
    pub id: i64,
    pub alliance_id: Option<i64>,
    pub node: Option<KillmailNode>,
}

#[Object]
impl Corporation {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        entity_name(ctx, self.node.as_ref(), self.id).await
    }
    /// From ESI, once worker-enrich has described the corporation (as for the fields below).
    async fn ticker(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        Ok(entities::corporation(ctx, self.id)
            .await?
            .and_then(|c| c.ticker))
    }
    async fn member_count(&self, ctx: &Context<'_>) -> Result<Option<i32>> {
        Ok(entities::corporation(ctx, self.id)
            .await?
            .and_then(|c| c.member_count))
    }
    async fn ceo(&self, ctx: &Context<'_>) -> Result<Option<Character>> {
        let row = entities::corporation(ctx, self.id).await?;
        Ok(row.and_then(|c| {
            c.ceo_id.map(|id| Character {
                id,
                corporation_id: Some(self.id),
                alliance_id: c.alliance_id,
                node: None,
            })
        }))
    }
    async fn date_founded(&self, ctx: &Context<'_>) -> Result<Option<EsiTime>> {
        Ok(entities::corporation(ctx, self.id)
            .await?
            .and_then(|c| c.date_founded.map(EsiTime)))
    }
    /// Member counts of the last `days` days (today included), oldest first: one per day on
    /// which the corporation was described.
    async fn snapshots(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 30)] days: i32,
    ) -> Result<Vec<EntitySnapshot>> {
        entities::snapshots(ctx, Snapshotted::Corporation(self.id), days).await
    }
    /// Members now (the newest snapshot) less members `days` days ago (the newest snapshot
    /// at least that old); null without both.
    async fn member_count_change(&self, ctx: &Context<'_>, days: i32) -> Result<Option<i32>> {
        entities::member_change(ctx, Snapshotted::Corporation(self.id), days).await
    }
    async fn alliance(&self) -> Option<Alliance> {
        self.alliance_id.map(|id| Alliance {
            id,
            node: self.node.clone(),
        })
    }
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn killmails(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 25)] first: Option<i32>,
        after: Option<String>,
        #[graphql(default)] involvement: Involvement,
        #[graphql(default)] order_by: Order,
    ) -> Result<KillmailConnection> {
        let filter = KillmailFilter {
            corporation_ids: only(self.id),
            involvement,
            ..Default::default()
        };
        killmails_page(ctx, &filter, order_by, first, after).await
    }
    /// Its kills, losses, ISK destroyed and lost, solo kills and points between `from`
    /// (inclusive) and `to` (exclusive), on `killmail_time`.
    async fn stats(
        &self,
        ctx: &Context<'_>,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
    ) -> Result<super::stats::EntityStats> {
        super::stats::entity_stats(ctx, EntityKind::Corporation, self.id, from, to).await
    }
    /// Its top ships (flown on its kills), systems or victims between `from` and `to`.
    async fn top(
        &self,
        ctx: &Context<'_>,
        of: EntityTop,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
        #[graphql(default = 10)] first: Option<i32>,
    ) -> Result<Vec<super::stats::TopEntry>> {
        super::stats::entity_top(ctx, (EntityKind::Corporation, self.id), of, from, to, first).await
    }
}

pub struct Alliance {
    pub id: i64,
    pub node: Option<KillmailNode>,
}

#[Object]
impl Alliance {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        entity_name(ctx, self.node.as_ref(), self.id).await
    }
    /// From ESI, once worker-enrich has described the alliance (as for the fields below).
    async fn ticker(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        Ok(entities::alliance(ctx, self.id)
            .await?
            .and_then(|a| a.ticker))
    }
    /// Members of its corporations, summed.
    async fn member_count(&self, ctx: &Context<'_>) -> Result<Option<i32>> {
        Ok(entities::alliance(ctx, self.id)
            .await?
            .and_then(|a| a.member_count))
    }
    async fn corporation_count(&self, ctx: &Context<'_>) -> Result<Option<i32>> {
        Ok(entities::alliance(ctx, self.id)
            .await?
            .and_then(|a| a.corporation_count))
    }
    async fn executor_corporation(&self, ctx: &Context<'_>) -> Result<Option<Corporation>> {
        let row = entities::alliance(ctx, self.id).await?;
        Ok(row.and_then(|a| {
            a.executor_corporation_id.map(|id| Corporation {
                id,
                alliance_id: Some(self.id),
                node: None,
            })
        }))
    }
    async fn date_founded(&self, ctx: &Context<'_>) -> Result<Option<EsiTime>> {
        Ok(entities::alliance(ctx, self.id)
            .await?
            .and_then(|a| a.date_founded.map(EsiTime)))
    }
    /// Member and corporation counts of the last `days` days (today included), oldest first.
    async fn snapshots(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 30)] days: i32,
    ) -> Result<Vec<EntitySnapshot>> {
        entities::snapshots(ctx, Snapshotted::Alliance(self.id), days).await
    }
    /// Members now less members `days` days ago (see `Corporation.memberCountChange`).
    async fn member_count_change(&self, ctx: &Context<'_>, days: i32) -> Result<Option<i32>> {
        entities::member_change(ctx, Snapshotted::Alliance(self.id), days).await
    }
    /// Corporations now less corporations `days` days ago.
    async fn corporation_count_change(&self, ctx: &Context<'_>, days: i32) -> Result<Option<i32>> {
        entities::corporation_count_change(ctx, self.id, days).await
    }
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn killmails(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 25)] first: Option<i32>,
        after: Option<String>,
        #[graphql(default)] involvement: Involvement,
        #[graphql(default)] order_by: Order,
    ) -> Result<KillmailConnection> {
        let filter = KillmailFilter {
            alliance_ids: only(self.id),
            involvement,
            ..Default::default()
        };
        killmails_page(ctx, &filter, order_by, first, after).await
    }
    /// Its kills, losses, ISK destroyed and lost, solo kills and points between `from`
    /// (inclusive) and `to` (exclusive), on `killmail_time`.
    async fn stats(
        &self,
        ctx: &Context<'_>,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
    ) -> Result<super::stats::EntityStats> {
        super::stats::entity_stats(ctx, EntityKind::Alliance, self.id, from, to).await
    }
    /// Its top ships (flown on its kills), systems or victims between `from` and `to`.
    async fn top(
        &self,
        ctx: &Context<'_>,
        of: EntityTop,
        from: Option<EsiTime>,
        to: Option<EsiTime>,
        #[graphql(default = 10)] first: Option<i32>,
    ) -> Result<Vec<super::stats::TopEntry>> {
        super::stats::entity_top(ctx, (EntityKind::Alliance, self.id), of, from, to, first).await
    }
}

pub struct ItemType {
    pub id: i64,
}

#[Object]
impl ItemType {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        type_name(ctx, self.id).await
    }
    async fn group_name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        Ok(statics(ctx)?
            .types
            .get(&self.id)
            .and_then(|(_, group)| group.clone()))
    }
}

pub struct SolarSystem {
    pub id: i64,
}

#[Object]
impl SolarSystem {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        Ok(statics(ctx)?.systems.get(&self.id).map(|s| s.name.clone()))
    }
    async fn security_status(&self, ctx: &Context<'_>) -> Result<Option<f64>> {
        Ok(statics(ctx)?
            .systems
            .get(&self.id)
            .and_then(|s| s.security_status))
    }
    async fn region_id(&self, ctx: &Context<'_>) -> Result<Option<ID>> {
        Ok(statics(ctx)?
            .region_of(self.id)
            .map(|id| ID(id.to_string())))
    }
    async fn region(&self, ctx: &Context<'_>) -> Result<Option<Region>> {
        Ok(statics(ctx)?.region_of(self.id).map(|id| Region { id }))
    }
    async fn constellation(&self, ctx: &Context<'_>) -> Result<Option<Constellation>> {
        Ok(statics(ctx)?
            .constellation_of(self.id)
            .map(|id| Constellation { id }))
    }
    #[graphql(complexity = "super::limits::page(first, child_complexity)")]
    async fn killmails(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 25)] first: Option<i32>,
        after: Option<String>,
        #[graphql(default)] order_by: Order,
    ) -> Result<KillmailConnection> {
        let filter = KillmailFilter {
            solar_system_ids: only(self.id),
            ..Default::default()
        };
        killmails_page(ctx, &filter, order_by, first, after).await
    }
}

pub struct Constellation {
    pub id: i64,
}

#[Object]
impl Constellation {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        Ok(statics(ctx)?
            .constellations
            .get(&self.id)
            .map(|(name, _)| name.clone()))
    }
    async fn region(&self, ctx: &Context<'_>) -> Result<Option<Region>> {
        Ok(statics(ctx)?
            .constellations
            .get(&self.id)
            .map(|&(_, id)| Region { id }))
    }
}

pub struct Region {
    pub id: i64,
}

#[Object]
impl Region {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        Ok(statics(ctx)?.regions.get(&self.id).cloned())
    }
}

/// One slot rack or hold, with what was in it.
pub struct FittingSlot {
    slot: Slot,
    items: Vec<KillmailItem>,
}

/// The victim's items by slot and hold, racks first; empty ones left out (see
/// `valuation::fitting`).
fn fitting_slots(killmail: &Killmail) -> Vec<FittingSlot> {
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
