//! The killmail store: set-based writes of whole batches (the killmail rows by binary COPY into
//! an unindexed staging table, then one `INSERT … SELECT … ON CONFLICT`, which tells the new
//! ones; their attackers, and their items as one row a killmail, which cannot conflict, by
//! binary COPY), and the exact ESI killmail rebuilt from the rows.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, Postgres, QueryBuilder};

use super::batch_stats::{self, Facts};
use super::copy::{BinaryRows, Mark};
use crate::events::KillmailAdded;
use crate::killmail::{Attacker, Item, Killmail, KillmailId, Position, Received, Seq, Victim, Zkb};

/// Arbitrary, but fixed: writers hold it while drawing ingest sequence numbers, so the numbers
/// become visible in the order they were drawn.
const SEQ_LOCK: i64 = 0x6b72_5f73_6571;

/// A killmail this batch added to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub killmail_id: KillmailId,
    pub seq: Seq,
    /// killreport's own zkb-style block, stored with it when it came without zKillboard's
    /// (see `valuation`).
    pub estimate: Option<Zkb>,
}

/// A killmail as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKillmail {
    pub seq: Seq,
    pub hash: String,
    pub killmail: Killmail,
    /// zKillboard's block when it came with one, else killreport's estimate (marked
    /// `"estimated": true`; see `valuation`), so that every reader sees one value.
    pub zkb: Option<Zkb>,
}

impl StoredKillmail {
    /// The killmail's event, with these names: the one place an event is built from the
    /// store, for the announcer, the server's replays and GraphQL alike.
    pub fn into_event(self, names: BTreeMap<String, String>) -> KillmailAdded {
        KillmailAdded {
            seq: self.seq,
            hash: Some(self.hash),
            killmail: self.killmail,
            zkb: self.zkb,
            names,
        }
    }
}

/// A batch of killmails encoded for the store: the killmail rows for the staging table, each
/// killmail's attackers as rows of their own table, and its items as one `killmail_items` row
/// (none when it has no items), of which those of the killmails the store turns out not to hold
/// are sent, and what each killmail adds to the statistics. Encoding is most of the work on
/// this side of the store, so an import does it while the batch before is being written.
pub struct Encoded {
    /// The killmails, each once, in the batch's order.
    ids: Vec<KillmailId>,
    staged: BinaryRows,
    attackers: BinaryRows,
    /// One row a killmail with items.
    items: BinaryRows,
    /// Where each killmail's attackers and items begin and end, in `ids`' order.
    spans: Vec<[(Mark, Mark); 2]>,
    /// What each killmail adds to the statistics when it is history, in `ids`' order.
    facts: Vec<Facts>,
    /// Whether any killmail carries a zkb block (which one the store holds without may gain).
    with_zkb: bool,
    /// killreport's own blocks for killmails without zKillboard's, by killmail id (see
    /// [`Encoded::set_estimates`]).
    estimates: (Vec<i64>, Vec<serde_json::Value>),
}

impl Encoded {
    pub fn new(batch: &[Received]) -> Self {
        let mut seen = HashSet::new();
        let batch: Vec<&Received> = batch
            .iter()
            .filter(|r| seen.insert(r.killmail.killmail_id))
            .collect();
        let mut encoded = Self {
            ids: Vec::with_capacity(batch.len()),
            staged: BinaryRows::with_capacity(batch.len() * 300),
            attackers: BinaryRows::with_capacity(batch.len() * 4 * 120),
            // 16 items a killmail, 60 bytes each in six arrays, and the arrays' headers.
            items: BinaryRows::with_capacity(batch.len() * (16 * 60 + 160)),
            spans: Vec::with_capacity(batch.len()),
            facts: Vec::with_capacity(batch.len()),
            with_zkb: false,
            estimates: Default::default(),
        };
        for (ord, received) in batch.into_iter().enumerate() {
            encoded.add(index_i32(ord), received);
        }
        encoded
    }

    /// Gives the killmails without a zkb block killreport's own, written with them (see
    /// `valuation::estimates`).
    pub fn set_estimates(&mut self, estimates: Vec<(KillmailId, serde_json::Value)>) {
        self.estimates = estimates.into_iter().map(|(id, e)| (id.0, e)).unzip();
    }

    fn add(&mut self, ord: i32, received: &Received) {
        let killmail = &received.killmail;
        let victim = &killmail.victim;
        let position = victim.position;
        self.ids.push(killmail.killmail_id);
        self.with_zkb |= received.zkb.is_some();
        let row = self
            .staged
            .row(19)
            .int4(ord)
            .int8(killmail.killmail_id.0)
            .text(&received.hash)
            .timestamptz(killmail.killmail_time)
            .int8(killmail.solar_system_id)
            .opt_int8(killmail.moon_id)
            .opt_int8(killmail.war_id)
            .opt_int8(victim.character_id)
            .opt_int8(victim.corporation_id)
            .opt_int8(victim.alliance_id)
            .opt_int8(victim.faction_id)
            .int8(victim.ship_type_id)
            .int8(victim.damage_taken)
            .opt_float8(position.map(|p| p.x))
            .opt_float8(position.map(|p| p.y))
            .opt_float8(position.map(|p| p.z))
            .int4(index_i32(killmail.attackers.len()));
        // A malformed zkb block never keeps a valid killmail out: its bad fields are fixed or
        // dropped (see `Zkb::sanitized`), each fix logged.
        let fixed = received.zkb.as_ref().and_then(|zkb| {
            let (fixed, fixes) = zkb.sanitized()?;
            tracing::warn!(
                killmail.id = %killmail.killmail_id,
                fixes = fixes.join("; "),
                "malformed zkb block: the killmail is stored with its bad fields fixed or dropped"
            );
            Some(fixed)
        });
        let zkb = fixed.as_ref().or(received.zkb.as_ref());
        match zkb {
            Some(zkb) => row.jsonb(&zkb.0),
            None => row.null(),
        }
        .text(received.source.as_str());

        let attackers_from = self.attackers.mark();
        for (index, a) in killmail.attackers.iter().enumerate() {
            self.attackers
                .row(12)
                .int8(killmail.killmail_id.0)
                .int4(index_i32(index))
                .timestamptz(killmail.killmail_time)
                .opt_int8(a.character_id)
                .opt_int8(a.corporation_id)
                .opt_int8(a.alliance_id)
                .opt_int8(a.faction_id)
                .opt_int8(a.ship_type_id)
                .opt_int8(a.weapon_type_id)
                .int8(a.damage_done)
                .bool(a.final_blow)
                .float8(a.security_status);
        }
        let items_from = self.items.mark();
        // The items in pre-order, as parallel arrays: an item's position is its index.
        let items = killmail.items_preorder();
        if !items.is_empty() {
            self.items
                .row(7)
                .int8(killmail.killmail_id.0)
                .int4_array(items.iter().map(|(parent, _)| parent.map(index_i32)))
                .int8_array(items.iter().map(|(_, item)| Some(item.item_type_id)))
                .int4_array(items.iter().map(|(_, item)| Some(item.flag)))
                .int4_array(items.iter().map(|(_, item)| Some(item.singleton)))
                .int8_array(items.iter().map(|(_, item)| item.quantity_destroyed))
                .int8_array(items.iter().map(|(_, item)| item.quantity_dropped));
        }
        self.spans.push([
            (attackers_from, self.attackers.mark()),
            (items_from, self.items.mark()),
        ]);
        self.facts.push(Facts::new(killmail, zkb));
    }
}

/// Stores every killmail of a batch that the store does not hold yet, queues its announcement
/// (see `db::announcements`) unless `announced` is false (history, which is not news), and
/// returns those, in ingest order. A killmail already held is left as it is, except that a
/// `zkb` block is added when it had none. Run it in a transaction: the lock it takes is
/// released at commit.
///
/// The killmail rows go by binary COPY into an unindexed staging table and from there into
/// `killmails` by one `INSERT … SELECT … ON CONFLICT DO NOTHING`, which tells the new ones;
/// their attackers and items (one `killmail_items` row a killmail), which cannot conflict, go
/// straight into their tables by binary COPY. The statistics aggregates are kept in the same
/// transaction: by the statement triggers, or, for history, from the sums of [`batch_stats`]
/// once the batch is in.
pub async fn store_encoded(
    tx: &mut PgConnection,
    encoded: Encoded,
    announced: bool,
) -> sqlx::Result<Vec<Stored>> {
    let Encoded {
        ids,
        staged,
        attackers,
        items,
        spans,
        facts,
        with_zkb,
        estimates: (estimate_ids, estimates),
    } = encoded;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    // Held to the commit: it orders the sequence numbers.
    lock_ingest(&mut *tx).await?;
    if !announced {
        // History: a crash of the database may lose the last moments of it, which a backfill
        // imports again, as the day was not recorded (that record is committed durably, and
        // with it everything written before). Its statistics are added once the batch is in
        // (below), not by the statement triggers.
        sqlx::query!(
            "SELECT set_config('synchronous_commit', 'off', true) AS synchronous_commit,
                    set_config('killreport.stats_deferred', 'on', true) AS stats_deferred"
        )
        .fetch_one(&mut *tx)
        .await?;
    }
    // This connection's own staging table (see the migration that made its template), empty
    // at each commit.
    sqlx::query!(
        "DO $$ BEGIN
             IF to_regclass('pg_temp.killmail_staging') IS NULL THEN
                 CREATE TEMPORARY TABLE killmail_staging (LIKE killmail_staging)
                     ON COMMIT DELETE ROWS;
             END IF;
         END $$"
    )
    .execute(&mut *tx)
    .await?;
    staged
        .send(
            tx,
            "COPY killmail_staging (
                 ord, killmail_id, hash, killmail_time, solar_system_id, moon_id, war_id,
                 victim_character_id, victim_corporation_id, victim_alliance_id,
                 victim_faction_id, victim_ship_type_id, victim_damage_taken,
                 victim_position_x, victim_position_y, victim_position_z, attacker_count, zkb,
                 source)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let inserted = sqlx::query!(
        r#"
        INSERT INTO killmails (
            killmail_id, hash, killmail_time, solar_system_id, region_id, moon_id, war_id,
            victim_character_id, victim_corporation_id, victim_alliance_id, victim_faction_id,
            victim_ship_type_id, victim_damage_taken,
            victim_position_x, victim_position_y, victim_position_z,
            attacker_count, zkb, estimate, source)
        SELECT u.killmail_id, u.hash, u.killmail_time, u.solar_system_id, s.region_id, u.moon_id,
               u.war_id, u.victim_character_id, u.victim_corporation_id, u.victim_alliance_id,
               u.victim_faction_id, u.victim_ship_type_id, u.victim_damage_taken,
               u.victim_position_x, u.victim_position_y, u.victim_position_z, u.attacker_count,
               u.zkb, e.estimate, u.source
        FROM killmail_staging u
        LEFT JOIN solar_systems s ON s.solar_system_id = u.solar_system_id
        LEFT JOIN UNNEST($1::int8[], $2::jsonb[]) AS e(killmail_id, estimate)
            ON e.killmail_id = u.killmail_id
        ORDER BY u.ord
        ON CONFLICT (killmail_id) DO NOTHING
        RETURNING killmail_id, seq, estimate
        "#,
        &estimate_ids,
        &estimates
    )
    .fetch_all(&mut *tx)
    .await?;
    if with_zkb && inserted.len() < ids.len() {
        // A killmail held without zkb gains the one this batch brings.
        sqlx::query!(
            "UPDATE killmails k SET zkb = u.zkb
             FROM killmail_staging u
             WHERE k.killmail_id = u.killmail_id AND k.zkb IS NULL AND u.zkb IS NOT NULL"
        )
        .execute(&mut *tx)
        .await?;
    }

    let mut stored: Vec<Stored> = inserted
        .into_iter()
        .map(|row| Stored {
            killmail_id: KillmailId(row.killmail_id),
            seq: Seq(row.seq),
            estimate: row.estimate.map(Zkb),
        })
        .collect();
    stored.sort_by_key(|s| s.seq);
    if announced && !stored.is_empty() {
        let seqs: Vec<i64> = stored.iter().map(|s| s.seq.0).collect();
        let stored_ids: Vec<i64> = stored.iter().map(|s| s.killmail_id.0).collect();
        sqlx::query!(
            "INSERT INTO pending_announcements (seq, killmail_id)
             SELECT * FROM UNNEST($1::int8[], $2::int8[])",
            &seqs,
            &stored_ids
        )
        .execute(&mut *tx)
        .await?;
    }

    let (attackers, items) = if stored.len() == ids.len() {
        (attackers, items)
    } else {
        let new: HashSet<KillmailId> = stored.iter().map(|s| s.killmail_id).collect();
        let spans: Vec<&[(Mark, Mark); 2]> = ids
            .iter()
            .zip(&spans)
            .filter(|(id, _)| new.contains(id))
            .map(|(_, spans)| spans)
            .collect();
        (
            attackers.select(spans.iter().map(|s| s[0])),
            items.select(spans.iter().map(|s| s[1])),
        )
    };
    if !attackers.is_empty() {
        attackers
            .send(
                tx,
                "COPY attackers (
                     killmail_id, attacker_index, killmail_time, character_id, corporation_id,
                     alliance_id, faction_id, ship_type_id, weapon_type_id, damage_done,
                     final_blow, security_status)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
    }
    if !items.is_empty() {
        items
            .send(
                tx,
                "COPY killmail_items (
                     killmail_id, parent_index, item_type_id, flag, singleton,
                     quantity_destroyed, quantity_dropped)
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
    }
    if !announced {
        // History: its statistics summed here, each aggregate row sent once (see
        // `batch_stats`).
        let estimates: HashMap<KillmailId, Option<&Zkb>> = stored
            .iter()
            .map(|s| (s.killmail_id, s.estimate.as_ref()))
            .collect();
        let new: Vec<(&Facts, Option<&Zkb>)> = ids
            .iter()
            .zip(&facts)
            .filter_map(|(id, facts)| Some((facts, *estimates.get(id)?)))
            .collect();
        batch_stats::add(tx, &new).await?;
    }
    Ok(stored)
}

/// Takes the store's write lock, to the end of the transaction: it orders the ingest sequence
/// numbers, and it is how a revaluation waits for every store in flight (one that read the
/// prices before a day's arrived) to commit. Taking it again in the same transaction is free.
pub async fn lock_ingest(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", SEQ_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// One page of the killmails without a zkb block whose time is within `from..to` (either end
/// open when `None`), after the position `after`, oldest first: (time, id).
pub async fn without_zkb(
    db: impl PgExecutor<'_>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<(DateTime<Utc>, KillmailId)>,
    limit: i64,
) -> sqlx::Result<Vec<(DateTime<Utc>, KillmailId)>> {
    let (after_time, after_id) = after.map_or((None, None), |(t, id)| (Some(t), Some(id.0)));
    let rows = sqlx::query!(
        "SELECT killmail_time, killmail_id FROM killmails
         WHERE zkb IS NULL
           AND ($1::timestamptz IS NULL OR killmail_time >= $1)
           AND ($2::timestamptz IS NULL OR killmail_time < $2)
           AND ($3::timestamptz IS NULL OR (killmail_time, killmail_id) > ($3, $4::int8))
         ORDER BY killmail_time, killmail_id
         LIMIT $5",
        from,
        to,
        after_time,
        after_id,
        limit
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.killmail_time, KillmailId(r.killmail_id)))
        .collect())
}

/// Replaces the `estimate` of each killmail named (one UPDATE for them all), keeping the
/// `ganked` label, which the store gives from other killmails (see its migration), not the
/// killmail's own rules.
pub async fn set_estimates(
    db: impl PgExecutor<'_>,
    estimates: Vec<(KillmailId, serde_json::Value)>,
) -> sqlx::Result<u64> {
    let (ids, estimates): (Vec<i64>, Vec<serde_json::Value>) =
        estimates.into_iter().map(|(id, e)| (id.0, e)).unzip();
    let done = sqlx::query!(
        r#"UPDATE killmails k SET estimate = u.estimate
         FROM (SELECT v.killmail_id,
                      CASE WHEN coalesce(o.estimate -> 'labels' ? 'ganked', false)
                           THEN jsonb_set(v.estimate, '{labels}',
                                          coalesce(v.estimate -> 'labels', '[]') || '["ganked"]')
                           ELSE v.estimate END AS estimate
               FROM UNNEST($1::int8[], $2::jsonb[]) AS v(killmail_id, estimate)
               JOIN killmails o ON o.killmail_id = v.killmail_id) u
         WHERE k.killmail_id = u.killmail_id AND k.estimate IS DISTINCT FROM u.estimate"#,
        &ids,
        &estimates
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

fn index_i32(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

/// Loads killmails by id, rebuilt exactly as ESI delivered them, in the order of `ids`
/// (ids the store does not hold are left out).
pub async fn load(db: &mut PgConnection, ids: &[KillmailId]) -> sqlx::Result<Vec<StoredKillmail>> {
    let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
    let rows = sqlx::query!(
        r#"
        SELECT killmail_id, hash, seq, killmail_time, solar_system_id, moon_id, war_id,
               victim_character_id, victim_corporation_id, victim_alliance_id, victim_faction_id,
               victim_ship_type_id, victim_damage_taken,
               victim_position_x, victim_position_y, victim_position_z,
               coalesce(zkb, estimate) AS "zkb?"
        FROM killmails WHERE killmail_id = ANY($1)
        "#,
        &ids
    )
    .fetch_all(&mut *db)
    .await?;
    let mut attackers = load_attackers(&mut *db, &ids).await?;
    let mut items = load_items(&mut *db, &ids).await?;

    let mut by_id: HashMap<i64, StoredKillmail> = rows
        .into_iter()
        .map(|row| {
            let id = row.killmail_id;
            let position = match (
                row.victim_position_x,
                row.victim_position_y,
                row.victim_position_z,
            ) {
                (Some(x), Some(y), Some(z)) => Some(Position { x, y, z }),
                _ => None,
            };
            let killmail = Killmail {
                killmail_id: KillmailId(id),
                killmail_time: row.killmail_time,
                solar_system_id: row.solar_system_id,
                moon_id: row.moon_id,
                war_id: row.war_id,
                victim: Victim {
                    character_id: row.victim_character_id,
                    corporation_id: row.victim_corporation_id,
                    alliance_id: row.victim_alliance_id,
                    faction_id: row.victim_faction_id,
                    ship_type_id: row.victim_ship_type_id,
                    damage_taken: row.victim_damage_taken,
                    position,
                    items: items.remove(&id).unwrap_or_default(),
                },
                attackers: attackers.remove(&id).unwrap_or_default(),
            };
            let stored = StoredKillmail {
                seq: Seq(row.seq),
                hash: row.hash,
                killmail,
                zkb: row.zkb.map(Zkb),
            };
            (id, stored)
        })
        .collect();
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

async fn load_attackers(
    db: impl PgExecutor<'_>,
    ids: &[i64],
) -> sqlx::Result<HashMap<i64, Vec<Attacker>>> {
    let rows = sqlx::query!(
        "SELECT killmail_id, character_id, corporation_id, alliance_id, faction_id, ship_type_id,
                weapon_type_id, damage_done, final_blow, security_status
         FROM attackers WHERE killmail_id = ANY($1) ORDER BY killmail_id, attacker_index",
        ids
    )
    .fetch_all(db)
    .await?;
    let mut out: HashMap<i64, Vec<Attacker>> = HashMap::new();
    for row in rows {
        out.entry(row.killmail_id).or_default().push(Attacker {
            character_id: row.character_id,
            corporation_id: row.corporation_id,
            alliance_id: row.alliance_id,
            faction_id: row.faction_id,
            ship_type_id: row.ship_type_id,
            weapon_type_id: row.weapon_type_id,
            damage_done: row.damage_done,
            final_blow: row.final_blow,
            security_status: row.security_status,
        });
    }
    Ok(out)
}

/// Rebuilds each killmail's item tree from its row of pre-order arrays (a killmail without
/// items has no row).
async fn load_items(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<HashMap<i64, Vec<Item>>> {
    let rows = sqlx::query!(
        r#"SELECT killmail_id, parent_index AS "parent_index: Vec<Option<i32>>", item_type_id,
                  flag, singleton, quantity_destroyed AS "quantity_destroyed: Vec<Option<i64>>",
                  quantity_dropped AS "quantity_dropped: Vec<Option<i64>>"
           FROM killmail_items WHERE killmail_id = ANY($1)"#,
        ids
    )
    .fetch_all(db)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        // The table's check holds the arrays to one length; a breach is an error, not a panic.
        let n = row.item_type_id.len();
        if [
            row.parent_index.len(),
            row.flag.len(),
            row.singleton.len(),
            row.quantity_destroyed.len(),
            row.quantity_dropped.len(),
        ]
        .iter()
        .any(|&len| len != n)
        {
            return Err(sqlx::Error::Decode(
                format!(
                    "killmail {}: its item arrays differ in length",
                    row.killmail_id
                )
                .into(),
            ));
        }
        let flat = (0..n)
            .map(|i| {
                let item = Item {
                    item_type_id: row.item_type_id[i],
                    flag: row.flag[i],
                    singleton: row.singleton[i],
                    quantity_destroyed: row.quantity_destroyed[i],
                    quantity_dropped: row.quantity_dropped[i],
                    items: Vec::new(),
                };
                (row.parent_index[i], item)
            })
            .collect();
        out.insert(row.killmail_id, build_tree(flat));
    }
    Ok(out)
}

/// Pre-order means a container comes before its contents: walking backwards, every item can be
/// moved into its parent before the parent itself is moved.
fn build_tree(flat: Vec<(Option<i32>, Item)>) -> Vec<Item> {
    let mut nodes: Vec<(Option<usize>, Option<Item>)> = flat
        .into_iter()
        .map(|(parent, item)| (parent.and_then(|p| usize::try_from(p).ok()), Some(item)))
        .collect();
    let mut roots = Vec::new();
    for index in (0..nodes.len()).rev() {
        let (parent, node) = &mut nodes[index];
        let parent = *parent;
        let Some(mut item) = node.take() else {
            continue;
        };
        item.items.reverse();
        match parent
            .and_then(|p| nodes.get_mut(p))
            .and_then(|(_, n)| n.as_mut())
        {
            Some(container) => container.items.push(item),
            None => roots.push(item),
        }
    }
    roots.reverse();
    roots
}

/// The order of a page of killmails.
#[derive(async_graphql::Enum, Copy, Clone, Debug, Default, Eq, PartialEq)]
#[graphql(name = "KillmailOrder")]
pub enum Order {
    /// Newest first, by time, then id.
    #[default]
    Time,
    /// Most valuable first (zKillboard's value, else killreport's estimate), then by id;
    /// killmails without a value last.
    Value,
}

/// The sort key of [`Order::Value`]: the value, a killmail without one as minus infinity, so
/// that it sorts last and a cursor can stand on it (the index `killmails_value` holds it).
pub const VALUE_KEY: &str = "coalesce(k.total_value, '-Infinity')";

/// Where a killmail stands in an [`Order`]: a page continues after one.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum PageKey {
    Time(DateTime<Utc>, KillmailId),
    /// Its [`VALUE_KEY`] and id.
    Value(f64, KillmailId),
}

impl PageKey {
    pub fn order(self) -> Order {
        match self {
            PageKey::Time(..) => Order::Time,
            PageKey::Value(..) => Order::Value,
        }
    }

    /// ` AND …`: the killmails after this one in its order, as one range of its index.
    fn push_after(self, sql: &mut QueryBuilder<'_, Postgres>) {
        let id = match self {
            PageKey::Time(time, id) => {
                sql.push(" AND (k.killmail_time, k.killmail_id) < (")
                    .push_bind(time);
                id
            }
            PageKey::Value(value, id) => {
                sql.push(format_args!(" AND ({VALUE_KEY}, k.killmail_id) < ("))
                    .push_bind(value);
                id
            }
        };
        sql.push(", ").push_bind(id.0).push(")");
    }
}

/// One page of the killmails meeting `conditions` (which append ` AND …` conditions on
/// `killmails k`) in `order`, rebuilt as [`load`] does: at most `limit` of them after the
/// position `after` (which must be of the same order), each with its position, and whether
/// more follow. A page is one keyset query for the ids plus one batched load.
pub async fn page(
    db: &mut PgConnection,
    conditions: impl FnOnce(&mut QueryBuilder<'_, Postgres>),
    order: Order,
    after: Option<PageKey>,
    limit: u32,
) -> sqlx::Result<(Vec<(PageKey, StoredKillmail)>, bool)> {
    debug_assert!(after.is_none_or(|after| after.order() == order));
    // The conditions decide the shape of the statement, so it is built here; every value is
    // bound.
    let mut sql = QueryBuilder::new(format!(
        "SELECT k.killmail_id, k.killmail_time, {VALUE_KEY} FROM killmails k WHERE true"
    ));
    conditions(&mut sql);
    if let Some(after) = after {
        after.push_after(&mut sql);
    }
    match order {
        Order::Time => sql.push(" ORDER BY k.killmail_time DESC, k.killmail_id DESC LIMIT "),
        Order::Value => sql.push(format_args!(
            " ORDER BY {VALUE_KEY} DESC, k.killmail_id DESC LIMIT "
        )),
    }
    .push_bind(i64::from(limit) + 1);
    let mut found: Vec<(i64, DateTime<Utc>, f64)> =
        sql.build_query_as().fetch_all(&mut *db).await?;
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let positions: HashMap<KillmailId, PageKey> = found
        .iter()
        .map(|&(id, time, value)| {
            let id = KillmailId(id);
            let position = match order {
                Order::Time => PageKey::Time(time, id),
                Order::Value => PageKey::Value(value, id),
            };
            (id, position)
        })
        .collect();
    let ids: Vec<KillmailId> = found.iter().map(|&(id, ..)| KillmailId(id)).collect();
    let page = load(db, &ids)
        .await?
        .into_iter()
        .filter_map(|stored| {
            let position = positions.get(&stored.killmail.killmail_id)?;
            Some((*position, stored))
        })
        .collect();
    Ok((page, more))
}

/// How many killmails meet `conditions` (the same as [`page`]'s), in all.
pub async fn count(
    db: &mut PgConnection,
    conditions: impl FnOnce(&mut QueryBuilder<'_, Postgres>),
) -> sqlx::Result<i64> {
    let mut sql = QueryBuilder::new("SELECT count(*) FROM killmails k WHERE true");
    conditions(&mut sql);
    sql.build_query_scalar().fetch_one(db).await
}

/// Killmails stored after `after`, in ingest order, at most `limit` of them.
pub async fn since(
    db: &mut PgConnection,
    after: Seq,
    limit: i64,
) -> sqlx::Result<Vec<StoredKillmail>> {
    let ids = sqlx::query_scalar!(
        "SELECT killmail_id FROM killmails WHERE seq > $1 ORDER BY seq LIMIT $2",
        after.0,
        limit
    )
    .fetch_all(&mut *db)
    .await?;
    let ids: Vec<KillmailId> = ids.into_iter().map(KillmailId).collect();
    let mut killmails = load(db, &ids).await?;
    killmails.sort_by_key(|k| k.seq);
    Ok(killmails)
}

/// The newest ingest sequence number in the store (0 when empty).
pub async fn latest_seq(db: impl PgExecutor<'_>) -> sqlx::Result<Seq> {
    let seq = sqlx::query_scalar!(r#"SELECT coalesce(max(seq), 0) AS "seq!" FROM killmails"#)
        .fetch_one(db)
        .await?;
    Ok(Seq(seq))
}

/// Killmails stored after ingest sequence `after`: the newest sequence (`after` when none)
/// and how many there are.
pub async fn stored_since(db: impl PgExecutor<'_>, after: Seq) -> sqlx::Result<(Seq, i64)> {
    let row = sqlx::query!(
        r#"SELECT coalesce(max(seq), $1) AS "newest!", count(*) AS "count!"
           FROM killmails WHERE seq > $1"#,
        after.0
    )
    .fetch_one(db)
    .await?;
    Ok((Seq(row.newest), row.count))
}

/// When the killmail of ingest sequence `seq` was stored; `None` when none has it.
pub async fn ingested_at(db: impl PgExecutor<'_>, seq: Seq) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar!("SELECT ingested_at FROM killmails WHERE seq = $1", seq.0)
        .fetch_optional(db)
        .await
}

/// Of `ids`, those the store does not hold, in the order given.
pub async fn missing(db: impl PgExecutor<'_>, ids: &[i64]) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar!(
        r#"SELECT u.id AS "id!" FROM UNNEST($1::int8[]) WITH ORDINALITY AS u(id, ord)
           WHERE NOT EXISTS (SELECT 1 FROM killmails k WHERE k.killmail_id = u.id)
           ORDER BY u.ord"#,
        ids
    )
    .fetch_all(db)
    .await
}
