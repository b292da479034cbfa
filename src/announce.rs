//! Announcing stored killmails on Redis, with every name the store has or can get in time: the
//! outbox (`db::announcements`) claimed in the publisher's transaction, names asked of ESI
//! within a budget, and the sweep that announces whatever waited (Redis down, a worker killed
//! between commit and publish). Used by `worker-killmails` and `queue import`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::db::killmails::{Stored, StoredKillmail};
use crate::esi::Esi;
use crate::events::{EventPublisher, KillmailAdded};
use crate::killmail::{KillmailId, Received, Seq};
use crate::queue::runner::panic_message;
use crate::telemetry;

/// While Redis is down, how often the sweep tries to announce what waits for it.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// Announcements one sweep transaction claims.
const SWEEP_BATCH: i64 = 500;

/// Announces newly stored killmails on Redis, with every name the store has or can get in time.
///
/// When a publish fails, Redis counts as down (logged once): new killmails are still stored
/// and acked, their announcements wait in the outbox, and [`Self::sweep`] announces all that
/// waited, oldest first, as soon as Redis answers again.
#[derive(Clone)]
pub struct Announcer {
    pool: PgPool,
    events: EventPublisher,
    /// Where unknown character, corporation and alliance names are resolved. Without it, only
    /// names already stored are sent.
    names: Option<Names>,
    /// Whether the last publish went through; shared by clones.
    redis_up: Arc<AtomicBool>,
}

/// While ESI fails to name people, how often an announcement asks it again; the others go out
/// at once with the names the store has.
const NAMES_PROBE: Duration = Duration::from_secs(10);

/// ESI's names for the announcer: how long an announcement may wait for them, and when ESI
/// last failed to give them, while it fails (shared by clones).
#[derive(Clone)]
struct Names {
    esi: Esi,
    budget: Duration,
    failing: Arc<Mutex<Option<Instant>>>,
}

impl Announcer {
    pub fn new(
        pool: PgPool,
        events: EventPublisher,
        resolve_names: Option<(Esi, Duration)>,
    ) -> Self {
        Self {
            pool,
            events,
            names: resolve_names.map(|(esi, budget)| Names {
                esi,
                budget,
                failing: Arc::default(),
            }),
            redis_up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Publishes events (the Redis client gives up within seconds: see
    /// [`EventPublisher::connect`]); a failure marks Redis down, logged when it goes down rather
    /// than on every attempt.
    async fn publish(&self, events: &[KillmailAdded]) -> anyhow::Result<()> {
        let Err(error) = self.events.publish(events).await else {
            return Ok(());
        };
        let error = anyhow::Error::new(error);
        if self.redis_up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                error = format!("{error:#}"),
                "Redis is down: killmails are still stored, their announcements wait until it is back"
            );
        }
        Err(error.context("publishing on Redis"))
    }

    /// Publishes one event per stored killmail, in ingest order; returns how many. While
    /// Redis is down the announcements are left waiting for the sweep, at once: a failed
    /// publish is not an error of the batch's, and the worker stores on at full speed. Called
    /// just after their commit, which is when the announcement lag is counted from.
    pub async fn announce(
        &self,
        received: &[Received],
        stored: &[Stored],
    ) -> anyhow::Result<usize> {
        let committed = Instant::now();
        if stored.is_empty() || !self.redis_up.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let by_id: HashMap<KillmailId, &Received> = received
            .iter()
            .map(|r| (r.killmail.killmail_id, r))
            .collect();
        let new: Vec<(&Stored, &Received)> = stored
            .iter()
            .filter_map(|s| by_id.get(&s.killmail_id).map(|r| (s, *r)))
            .collect();

        let entities: BTreeSet<i64> = new
            .iter()
            .flat_map(|(_, r)| r.killmail.entity_ids())
            .collect();
        let entities: Vec<i64> = entities.into_iter().collect();
        if let Some(names) = &self.names {
            self.resolve(names, &entities).await;
        }

        // Claimed in a transaction that commits only once Redis has the events: if publishing
        // fails, the announcements stay pending for `announce_overdue`.
        let mut tx = self.pool.begin().await?;
        let seqs: Vec<Seq> = new.iter().map(|(s, _)| s.seq).collect();
        let claimed: HashSet<Seq> = db::announcements::claim(&mut tx, &seqs)
            .await?
            .into_iter()
            .collect();
        let new: Vec<(&Stored, &Received)> = new
            .into_iter()
            .filter(|(s, _)| claimed.contains(&s.seq))
            .collect();
        let new: Vec<StoredKillmail> = new
            .into_iter()
            .map(|(s, r)| StoredKillmail {
                seq: s.seq,
                hash: r.hash.clone(),
                killmail: r.killmail.clone(),
                zkb: r.zkb.clone().or_else(|| s.estimate.clone()),
            })
            .collect();
        let events = db::names::events(&mut *tx, new).await?;
        if self.publish(&events).await.is_err() {
            // Logged by `publish`; the rolled-back claim leaves them for the sweep.
            return Ok(0);
        }
        tx.commit().await?;
        metrics::histogram!(telemetry::ANNOUNCE_LAG).record_many(committed.elapsed(), events.len());
        Ok(events.len())
    }

    /// Announces every killmail whose announcement has been pending longer than `older_than`
    /// (Redis was down, or a worker died between commit and publish), oldest first, in
    /// transactions of [`SWEEP_BATCH`]; returns how many. Consumers see them out of order;
    /// the server puts them back in order by `seq`.
    pub async fn announce_overdue(&self, older_than: Duration) -> anyhow::Result<usize> {
        let older_than_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let mut announced = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let ids = db::announcements::claim_overdue(&mut tx, older_than_ms, SWEEP_BATCH).await?;
            if ids.is_empty() {
                return Ok(announced);
            }
            let claimed = ids.len();
            let mut stored = db::killmails::load(&mut tx, &ids).await?;
            stored.sort_by_key(|s| s.seq);
            let events = db::names::events(&mut *tx, stored).await?;
            self.publish(&events).await?;
            tx.commit().await?;
            announced += events.len();
            if i64::try_from(claimed).unwrap_or(i64::MAX) < SWEEP_BATCH {
                return Ok(announced);
            }
        }
    }

    /// Runs [`Self::announce_overdue`] every `every` until `shutdown`; while Redis is down,
    /// every [`REDIS_RETRY`] and for every waiting announcement, quietly until one goes
    /// through. A round that panics is rolled back and logged like a failed one, so that the
    /// announcements it held stay pending and the sweep, beside the worker, carries on.
    pub async fn sweep(&self, every: Duration, shutdown: CancellationToken) {
        let mut last_round = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REDIS_RETRY) => {}
            }
            let down = !self.redis_up.load(Ordering::Relaxed);
            if !down && last_round.elapsed() < every {
                continue;
            }
            last_round = Instant::now();
            let older_than = if down { Duration::ZERO } else { every };
            let round = AssertUnwindSafe(self.announce_overdue(older_than)).catch_unwind();
            match round.await {
                Ok(Ok(n)) if down => {
                    self.redis_up.store(true, Ordering::Relaxed);
                    tracing::info!(announced = n, "Redis is back; announced what waited for it");
                }
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(announced = n, "announced overdue killmails"),
                Ok(Err(error)) if down => {
                    tracing::debug!(error = format!("{error:#}"), "Redis still down")
                }
                Ok(Err(error)) => tracing::warn!(
                    error = format!("{error:#}"),
                    "overdue announcements failed; will retry"
                ),
                Err(panic) => tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    "overdue announcements panicked; will retry"
                ),
            }
        }
    }

    /// Asks ESI for the names the store lacks, giving up when the budget runs out: an event
    /// without a name is better than a late event. While ESI fails, only one announcement in
    /// [`NAMES_PROBE`] asks (and waits); the outage is logged when it starts and ends.
    async fn resolve(&self, names: &Names, entities: &[i64]) {
        let lock = || names.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if lock().is_some_and(|failed| failed.elapsed() < NAMES_PROBE) {
            return;
        }
        // Whether ESI was asked: with every name stored already, nothing is learnt of it.
        let work = async {
            let unnamed = db::names::unnamed(&self.pool, entities).await?;
            if unnamed.is_empty() {
                return Ok(false);
            }
            let found = names.esi.names(&unnamed).await?;
            db::names::save(&self.pool, &found).await?;
            let named: HashSet<i64> = found.iter().map(|name| name.id).collect();
            let nameless: Vec<i64> = unnamed
                .into_iter()
                .filter(|id| !named.contains(id))
                .collect();
            db::names::remember_unnamed(&self.pool, &nameless).await?;
            anyhow::Ok(true)
        };
        let error = match tokio::time::timeout(names.budget, work).await {
            Ok(Ok(false)) => return,
            Ok(Ok(true)) => {
                if lock().take().is_some() {
                    tracing::info!("ESI names characters and corporations again");
                }
                return;
            }
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => format!("no answer within {:?}", names.budget),
        };
        if lock().replace(Instant::now()).is_none() {
            tracing::warn!(
                %error,
                "names not resolved: events go out with the names the store has, and ESI is asked again every {NAMES_PROBE:?} until it answers"
            );
        }
    }
}
