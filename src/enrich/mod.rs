//! Enrichment: the work of `worker-enrich`. Characters, corporations and alliances are
//! described by ESI (names in bulk, affiliations in bulk, corporation and alliance details with
//! their member counts), and item types newer than the shipped static data are named; each
//! description of a corporation or alliance also records its counts as the day's snapshot.
//!
//! The work travels as [`EnrichJob`]s on their own queue (`entity.enrich`), run by the job
//! runner like killmails: [`queue_refresh`], [`queue_all`] and [`queue_snapshot`] put them
//! there (for `queue characters|corporations|alliances|snapshot` and admin mutations), and the
//! worker's [`schedule`] queues ids first seen on stored killmails, the affiliations of pilots
//! seen lately and the daily snapshots by itself.

pub mod schedule;

use std::collections::HashSet;

use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;
pub use crate::db::enrichment::Kind;
use crate::esi::{Esi, EsiError};
use crate::queue::runner::{Failure, Handler, Job, Outcome};
use crate::queue::{PublishError, Publisher};

/// A corporation described within this long is not asked for again when its alliance is.
const CORPORATION_FRESH_SECS: i64 = 86_400;

/// One job: describe these ids of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichJob {
    pub kind: Kind,
    pub ids: Vec<i64>,
}

impl EnrichJob {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serializes")
    }
}

impl Job for EnrichJob {
    const QUEUE: &'static str = "entity.enrich";

    fn decode(body: &[u8]) -> Result<Self, String> {
        let job: Self =
            serde_json::from_slice(body).map_err(|e| format!("not an entity.enrich job: {e}"))?;
        if job.ids.is_empty() {
            return Err("an entity.enrich job without ids".to_owned());
        }
        if let Some(bad) = job.ids.iter().find(|id| **id <= 0) {
            return Err(format!("{bad} is not an id"));
        }
        Ok(job)
    }
}

/// How many ids one job carries: what one bulk call takes for characters; for the others,
/// what a worker gets through in a few seconds (one request each, more for an alliance).
pub fn ids_per_job(kind: Kind) -> usize {
    match kind {
        Kind::Characters => crate::esi::NAMES_PER_CALL,
        Kind::Corporations => 50,
        Kind::Alliances => 10,
        Kind::Types => 100,
    }
}

/// Queues these ids of `kind` to be described again, in jobs of [`ids_per_job`]; returns how
/// many jobs. `publisher` must publish on the enrich queue's topology.
pub async fn queue_refresh(
    publisher: &Publisher,
    kind: Kind,
    ids: &[i64],
) -> Result<usize, PublishError> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut jobs = 0;
    for chunk in ids.chunks(ids_per_job(kind)) {
        let job = EnrichJob {
            kind,
            ids: chunk.to_vec(),
        };
        publisher.publish_raw(&job.encode()).await?;
        jobs += 1;
    }
    Ok(jobs)
}

/// Queues every id of `kind` the store knows to be described again; returns how many jobs.
pub async fn queue_all(pool: &PgPool, publisher: &Publisher, kind: Kind) -> anyhow::Result<usize> {
    let ids = db::enrichment::all_ids(pool, kind).await?;
    Ok(queue_refresh(publisher, kind, &ids).await?)
}

/// Queues today's snapshot of every corporation or alliance the store knows: each is described
/// again, which records its counts for the day. `kind` is `Corporations` or `Alliances`.
pub async fn queue_snapshot(
    pool: &PgPool,
    publisher: &Publisher,
    kind: Kind,
) -> anyhow::Result<usize> {
    anyhow::ensure!(
        matches!(kind, Kind::Corporations | Kind::Alliances),
        "snapshots are of corporations or alliances"
    );
    queue_all(pool, publisher, kind).await
}

/// `entity.enrich`: asks ESI and stores what it says. ESI's failures are each job's outcome (a
/// rate limit or an outage: retried later); the store's fail the batch, which the runner holds
/// while the store is away.
pub struct EnrichHandler {
    pub pool: PgPool,
    pub esi: Esi,
    /// Requests to ESI in flight at once for one job.
    pub concurrency: usize,
}

/// Why a job did not finish.
enum Stop {
    Esi(EsiError),
    Store(sqlx::Error),
}

impl From<EsiError> for Stop {
    fn from(error: EsiError) -> Self {
        Stop::Esi(error)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        Stop::Store(error)
    }
}

impl Handler for EnrichHandler {
    type Job = EnrichJob;
    const NAME: &'static str = "worker-enrich";

    async fn handle(
        &self,
        jobs: Vec<EnrichJob>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Outcome>, Failure> {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            if shutdown.is_cancelled() {
                outcomes.push(Outcome::Unsettled);
                continue;
            }
            let outcome = match self.enrich(job.kind, &job.ids).await {
                Ok(()) => Outcome::Done,
                Err(Stop::Esi(EsiError::Transient(reason))) => {
                    Outcome::Failed(Failure::Transient(reason))
                }
                Err(Stop::Esi(EsiError::Permanent(reason))) => {
                    Outcome::Failed(Failure::Permanent(reason))
                }
                Err(Stop::Store(error)) => {
                    let reason = format!("storing {} {:?}: {error}", job.ids.len(), job.kind);
                    return Err(if db::is_data_error(&error) {
                        Failure::Permanent(reason)
                    } else {
                        Failure::Transient(reason)
                    });
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    async fn available(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

impl EnrichHandler {
    async fn enrich(&self, kind: Kind, ids: &[i64]) -> Result<(), Stop> {
        match kind {
            Kind::Characters => self.characters(ids).await,
            Kind::Corporations => self.corporations(ids).await,
            Kind::Alliances => self.alliances(ids).await,
            Kind::Types => self.types(ids).await,
        }
    }

    /// Names and affiliations in bulk; then the corporations and alliances those name that
    /// the store has not had described (lately).
    async fn characters(&self, ids: &[i64]) -> Result<(), Stop> {
        let names = self.esi.names(ids).await?;
        let affiliations = self.esi.affiliations(ids).await?;
        let known: HashSet<i64> = names
            .iter()
            .map(|n| n.id)
            .chain(affiliations.iter().map(|a| a.character_id))
            .collect();
        let unknown: Vec<i64> = ids
            .iter()
            .copied()
            .filter(|id| !known.contains(id))
            .collect();
        let mut tx = self.pool.begin().await?;
        db::enrichment::save_character_names(&mut tx, &names).await?;
        db::enrichment::save_affiliations(&mut *tx, &affiliations).await?;
        db::names::remember_unnamed(&mut *tx, &unknown).await?;
        tx.commit().await?;
        tracing::info!(
            characters = ids.len(),
            named = names.len(),
            unknown = unknown.len(),
            "characters described"
        );

        let corporations = sorted(affiliations.iter().map(|a| a.corporation_id));
        let corporations =
            db::enrichment::stale_corporations(&self.pool, &corporations, CORPORATION_FRESH_SECS)
                .await?;
        self.corporations(&corporations).await?;
        let alliances = sorted(affiliations.iter().filter_map(|a| a.alliance_id));
        let alliances = db::enrichment::undescribed_alliances(&self.pool, &alliances).await?;
        self.alliances(&alliances).await
    }

    async fn corporations(&self, ids: &[i64]) -> Result<(), Stop> {
        let (found, unknown, failed) = self.each(ids, |id| self.esi.corporation(id)).await;
        let mut tx = self.pool.begin().await?;
        for (id, info) in &found {
            db::enrichment::save_corporation(&mut tx, *id, info).await?;
        }
        db::names::remember_unnamed(&mut *tx, &unknown).await?;
        tx.commit().await?;
        failed.map_or(Ok(()), |error| Err(error.into()))
    }

    /// Each alliance with its corporations, those not described within a day described first,
    /// so that its member count sums fresh counts.
    async fn alliances(&self, ids: &[i64]) -> Result<(), Stop> {
        let mut unknown = Vec::new();
        for &id in ids {
            let (Some(info), Some(corporations)) = (
                self.esi.alliance(id).await?,
                self.esi.alliance_corporations(id).await?,
            ) else {
                unknown.push(id);
                continue;
            };
            let stale = db::enrichment::stale_corporations(
                &self.pool,
                &corporations,
                CORPORATION_FRESH_SECS,
            )
            .await?;
            self.corporations(&stale).await?;
            let mut tx = self.pool.begin().await?;
            db::enrichment::save_alliance(&mut tx, id, &info, &corporations).await?;
            tx.commit().await?;
        }
        db::names::remember_unnamed(&self.pool, &unknown).await?;
        Ok(())
    }

    async fn types(&self, ids: &[i64]) -> Result<(), Stop> {
        let (found, unknown, failed) = self.each(ids, |id| self.esi.item_type(id)).await;
        let mut tx = self.pool.begin().await?;
        for (_, info) in &found {
            db::enrichment::save_type(&mut *tx, info).await?;
        }
        db::names::remember_unnamed(&mut *tx, &unknown).await?;
        tx.commit().await?;
        failed.map_or(Ok(()), |error| Err(error.into()))
    }

    /// Asks `fetch` about each id, [`Self::concurrency`] at once: what ESI described, the ids
    /// it does not know, and the first failure (what was found before it is kept).
    async fn each<T, F, Fut>(
        &self,
        ids: &[i64],
        fetch: F,
    ) -> (Vec<(i64, T)>, Vec<i64>, Option<EsiError>)
    where
        F: Fn(i64) -> Fut,
        Fut: Future<Output = Result<Option<T>, EsiError>>,
    {
        let answers: Vec<(i64, Result<Option<T>, EsiError>)> = stream::iter(ids.iter().copied())
            .map(|id| {
                let answer = fetch(id);
                async move { (id, answer.await) }
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let (mut found, mut unknown, mut failed) = (Vec::new(), Vec::new(), None);
        for (id, answer) in answers {
            match answer {
                Ok(Some(info)) => found.push((id, info)),
                Ok(None) => unknown.push(id),
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        (found, unknown, failed)
    }
}

fn sorted(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut ids: Vec<i64> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_a_kind_and_some_ids() {
        let job = EnrichJob::decode(br#"{"kind": "alliances", "ids": [99000001, 99000002]}"#);
        assert_eq!(
            job,
            Ok(EnrichJob {
                kind: Kind::Alliances,
                ids: vec![99000001, 99000002]
            })
        );
        let encoded = EnrichJob::decode(&job.expect("a job").encode()).expect("round trip");
        assert_eq!(encoded.kind, Kind::Alliances);
        for (body, reason) in [
            (&br#"{"kind": "types", "ids": []}"#[..], "without ids"),
            (br#"{"kind": "types", "ids": [5, -1]}"#, "-1 is not an id"),
            (
                br#"{"kind": "planets", "ids": [5]}"#,
                "not an entity.enrich job",
            ),
            (b"[1, 2]", "not an entity.enrich job"),
        ] {
            let refused = EnrichJob::decode(body).expect_err("refused");
            assert!(refused.contains(reason), "{refused}");
        }
    }
}
