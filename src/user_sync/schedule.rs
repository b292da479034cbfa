//! When pilots are synced: the scheduler every worker-user-killmails runs (one claims at a
//! time, under an advisory lock, so several workers queue each pilot once), and
//! `queue user-killmails`, which queues pilots by hand.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{Outlet, UserKillmailsJob};
use crate::db;
use crate::queue::Publisher;

/// Pilots claimed per look; more wait for the next.
const CLAIM_LIMIT: i64 = 500;

/// How often pilots are synced.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// A pilot is synced again this long after their last sync.
    pub interval: Duration,
    /// How often the scheduler looks for pilots due, among them those who just logged in.
    pub check_every: Duration,
}

impl Schedule {
    /// Queues every pilot due on `outlet` (the user-killmails queue), looking every
    /// `check_every` until `shutdown`. A look that fails (PostgreSQL or RabbitMQ away) is
    /// logged once per outage and tried again at the next.
    pub async fn run(self, pool: &PgPool, outlet: &Outlet, shutdown: &CancellationToken) {
        let mut failing = false;
        loop {
            match self.queue_due(pool, outlet).await {
                Ok(queued) => {
                    if failing {
                        tracing::info!("the user sync scheduler works again");
                        failing = false;
                    }
                    if queued > 0 {
                        tracing::info!(pilots = queued, "pilots queued for a history sync");
                    }
                }
                Err(error) if !failing => {
                    failing = true;
                    tracing::error!(
                        error = format!("{error:#}"),
                        "the user sync scheduler failed; trying again every {:?}",
                        self.check_every
                    );
                }
                Err(_) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.check_every) => {}
            }
        }
    }

    /// One look: claims the pilots due and queues them; the claim is committed only once
    /// RabbitMQ has confirmed every job, so a failure leaves them due.
    async fn queue_due(&self, pool: &PgPool, outlet: &Outlet) -> anyhow::Result<usize> {
        let mut tx = pool.begin().await?;
        let Some(due) = db::user_sync::claim_due(&mut tx, self.interval, CLAIM_LIMIT).await? else {
            return Ok(0);
        };
        let bodies: Vec<Vec<u8>> = due
            .iter()
            .map(|&character_id| UserKillmailsJob { character_id }.encode())
            .collect();
        outlet.publish_all(&bodies).await?;
        tx.commit().await?;
        Ok(due.len())
    }
}

/// What `queue user-killmails` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Queued {
    pub queued: Vec<i64>,
    /// Logged in, but the SSO refused their refresh token: they must log in again first.
    pub needs_login: Vec<i64>,
    /// Never logged in (or logged out).
    pub unknown: Vec<i64>,
}

impl std::fmt::Display for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} pilots queued for a history sync", self.queued.len())?;
        if !self.needs_login.is_empty() {
            write!(f, "; must log in again first: {:?}", self.needs_login)?;
        }
        if !self.unknown.is_empty() {
            write!(f, "; not logged in: {:?}", self.unknown)?;
        }
        Ok(())
    }
}

/// Queues a sync of the pilots `ids` (every logged-in pilot when `None`) on `publisher`'s
/// queue (user-killmails), now, whenever they were last synced; pilots who must log in again,
/// or never did, are left out and listed.
pub async fn queue_pilots(
    pool: &PgPool,
    publisher: &Publisher,
    ids: Option<&[i64]>,
) -> anyhow::Result<Queued> {
    let logins = db::user_sync::logins(pool, ids).await?;
    let mut out = Queued::default();
    for &(character_id, needs_login) in &logins {
        if needs_login {
            out.needs_login.push(character_id);
        } else {
            publisher
                .publish_raw(&UserKillmailsJob { character_id }.encode())
                .await?;
            out.queued.push(character_id);
        }
    }
    if let Some(ids) = ids {
        out.unknown = ids
            .iter()
            .copied()
            .filter(|id| !logins.iter().any(|(known, _)| known == id))
            .collect();
    }
    Ok(out)
}
