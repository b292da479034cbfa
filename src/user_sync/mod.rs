//! Logged-in pilots' own killmail history (worker-user-killmails, `queue user-killmails`): a
//! `user-killmails` job per pilot, run by the job runner, reads the pilot's recent killmails
//! from ESI with their SSO access token (refreshed here when it is about to expire), and their
//! corporation's when they are a director, back to the newest killmail the last sync found, and
//! queues each new one as a `killmail.ingest` job with source `user`, for worker-killmails to
//! fetch and store. A scheduler queues every pilot due for a sync: one who just logged in
//! within seconds, the others once per interval.

pub mod history;
mod outlet;
mod schedule;

pub use outlet::Outlet;
pub use schedule::{Queued, Schedule, queue_pilots};

use std::collections::HashSet;

use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use self::history::{KillmailRef, Whose};
use crate::auth::Auth;
use crate::auth::tokens::{self, TokenError};
use crate::db;
use crate::esi::{Esi, EsiError};
use crate::killmail::{KillmailId, Source};
use crate::queue::IngestJob;
use crate::queue::runner::{Failure, Handler, Job, Outcome};

/// The scope to read a pilot's own killmails.
pub const KILLMAILS_SCOPE: &str = "esi-killmails.read_killmails.v1";
/// The scope to read their corporation's killmails (directors only).
pub const CORPORATION_KILLMAILS_SCOPE: &str = "esi-killmails.read_corporation_killmails.v1";
/// The scope to read their roles, which say whether they are a director.
pub const ROLES_SCOPE: &str = "esi-characters.read_corporation_roles.v1";

/// `user-killmails`: sync one pilot's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKillmailsJob {
    pub character_id: i64,
}

impl UserKillmailsJob {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job always serializes")
    }
}

impl Job for UserKillmailsJob {
    const QUEUE: &'static str = "user-killmails";

    fn decode(body: &[u8]) -> Result<Self, String> {
        let job: Self =
            serde_json::from_slice(body).map_err(|e| format!("not a user-killmails job: {e}"))?;
        if job.character_id <= 0 {
            return Err(format!("no character has id {}", job.character_id));
        }
        Ok(job)
    }
}

/// What one sync read: a job for each new killmail, and how far each history now goes.
#[derive(Debug, Default)]
struct Read {
    jobs: Vec<IngestJob>,
    /// The newest killmail of the pilot's history, and how many were new there.
    newest: Option<KillmailId>,
    found: usize,
    /// For a director: their corporation, its newest killmail, and how many were new there.
    corporation: Option<(i64, Option<KillmailId>, usize)>,
}

/// `user-killmails`: syncs each pilot of a batch (a few at once) and queues what it found.
pub struct UserKillmailsHandler {
    pub pool: PgPool,
    pub esi: Esi,
    /// The SSO and the key of stored tokens, to refresh access tokens.
    pub auth: Auth,
    /// Where the killmails found go: the `killmail.ingest` queue.
    pub ingest: Outlet,
    /// Pilots synced at once.
    pub concurrency: usize,
}

impl Handler for UserKillmailsHandler {
    type Job = UserKillmailsJob;
    const NAME: &'static str = "worker-user-killmails";

    /// One outcome per pilot; nothing of a batch is committed together. At shutdown the syncs
    /// under way are given up unsettled: what they queued is queued again by the next one, and
    /// a killmail queued twice is stored once.
    async fn handle(
        &self,
        jobs: Vec<UserKillmailsJob>,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Outcome>, Failure> {
        let count = jobs.len();
        let syncs = stream::iter(jobs)
            .map(|job| self.sync(job.character_id))
            .buffered(self.concurrency.max(1))
            .collect::<Vec<_>>();
        tokio::select! {
            biased;
            outcomes = syncs => Ok(outcomes),
            () = shutdown.cancelled() => Ok(vec![Outcome::Unsettled; count]),
        }
    }

    async fn available(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

impl UserKillmailsHandler {
    /// Syncs one pilot. A pilot who logged out, or whose login the SSO refused (now or
    /// before), is skipped with a log line: only the pilot can mend that, by logging in again.
    async fn sync(&self, character_id: i64) -> Outcome {
        let login = match db::user_sync::login(&self.pool, character_id).await {
            Ok(Some(login)) => login,
            Ok(None) => {
                tracing::info!(
                    character.id = character_id,
                    "not logged in (any more): nothing to sync"
                );
                return Outcome::Done;
            }
            Err(error) => {
                return transient(format!(
                    "reading the login of character {character_id}: {error}"
                ));
            }
        };
        if login.needs_login {
            tracing::info!(
                character.id = character_id,
                "the pilot must log in again before their history can be read; skipped"
            );
            return Outcome::Done;
        }
        let token = match tokens::access_token(&self.pool, &self.auth, character_id).await {
            Ok(token) => token,
            Err(TokenError::NeedsLogin(_)) => {
                tracing::info!(
                    character.id = character_id,
                    "the SSO refused the pilot's refresh token: they must log in again before their history can be read; skipped"
                );
                return Outcome::Done;
            }
            Err(TokenError::NotLoggedIn(_)) => {
                tracing::info!(
                    character.id = character_id,
                    "logged out meanwhile: nothing to sync"
                );
                return Outcome::Done;
            }
            Err(error) if error.is_transient() => {
                return transient(format!(
                    "getting an access token of character {character_id}: {error}"
                ));
            }
            Err(error) => {
                return Outcome::Failed(Failure::Permanent(format!(
                    "getting an access token of character {character_id}: {error}"
                )));
            }
        };
        match self.read(&login, token.token.expose()).await {
            Ok(read) => {
                let bodies: Vec<Vec<u8>> = read.jobs.iter().map(IngestJob::encode).collect();
                if let Err(error) = self.ingest.publish_all(&bodies).await {
                    return transient(format!(
                        "queueing the killmails of character {character_id}: {error:#}"
                    ));
                }
                let corporation = read
                    .corporation
                    .and_then(|(id, newest, _)| Some((id, newest?)));
                if let Err(error) = self.record(character_id, read.newest, corporation).await {
                    return transient(format!(
                        "recording the sync of character {character_id}: {error}"
                    ));
                }
                tracing::info!(
                    character.id = character_id,
                    found = read.found,
                    corporation.id = read.corporation.map(|(id, _, _)| id),
                    corporation.found = read.corporation.map(|(_, _, found)| found),
                    queued = read.jobs.len(),
                    "history synced"
                );
                Outcome::Done
            }
            Err(failure) => Outcome::Failed(failure),
        }
    }

    /// Reads what is new in the pilot's history, and their corporation's if they are a
    /// director, as far as their scopes allow.
    async fn read(&self, login: &db::user_sync::Login, token: &str) -> Result<Read, Failure> {
        let id = login.character_id;
        let has = |scope: &str| login.scopes.iter().any(|s| s == scope);
        let mut read = Read::default();
        let mut refs = Vec::new();
        if has(KILLMAILS_SCOPE) {
            let known = login.newest_killmail_id;
            refs = history::recent_killmails(&self.esi, Whose::Character(id), token, known)
                .await
                .map_err(esi_failure)?;
            read.found = refs.len();
        } else {
            tracing::info!(
                character.id = id,
                scope = KILLMAILS_SCOPE,
                "the pilot did not grant the scope; their own killmails are not read"
            );
        }
        read.newest = newest(&refs);
        if has(ROLES_SCOPE) && has(CORPORATION_KILLMAILS_SCOPE) {
            // The corporation of the moment: pilots move, and the director role goes with it.
            let affiliation = history::affiliation(&self.esi, id)
                .await
                .map_err(esi_failure)?;
            let corporation_id = affiliation.corporation_id;
            db::user_sync::set_affiliation(&self.pool, id, corporation_id, affiliation.alliance_id)
                .await
                .map_err(|e| {
                    store_failure(&format!("recording the corporation of character {id}"), &e)
                })?;
            if history::is_director(&self.esi, id, token)
                .await
                .map_err(esi_failure)?
            {
                let known = db::user_sync::corporation_newest(&self.pool, corporation_id)
                    .await
                    .map_err(|e| {
                        store_failure(
                            &format!("reading how far corporation {corporation_id} is synced"),
                            &e,
                        )
                    })?;
                let whose = Whose::Corporation(corporation_id);
                let theirs = history::recent_killmails(&self.esi, whose, token, known)
                    .await
                    .map_err(esi_failure)?;
                read.corporation = Some((corporation_id, newest(&theirs), theirs.len()));
                refs.extend(theirs);
            }
        }
        let mut seen = HashSet::new();
        read.jobs = refs
            .into_iter()
            .filter(|r| seen.insert(r.killmail_id))
            .map(|r| IngestJob {
                killmail_id: r.killmail_id,
                hash: r.killmail_hash,
                killmail: None,
                zkb: None,
                source: Source::User,
            })
            .collect();
        Ok(read)
    }

    async fn record(
        &self,
        character_id: i64,
        newest: Option<KillmailId>,
        corporation: Option<(i64, KillmailId)>,
    ) -> sqlx::Result<()> {
        let mut tx = self.pool.begin().await?;
        db::user_sync::record_sync(&mut tx, character_id, newest, corporation).await?;
        tx.commit().await
    }
}

fn newest(refs: &[KillmailRef]) -> Option<KillmailId> {
    refs.iter().map(|r| r.killmail_id).max()
}

fn esi_failure(error: EsiError) -> Failure {
    match error {
        EsiError::Permanent(reason) => Failure::Permanent(reason),
        EsiError::Transient(reason) => Failure::Transient(reason),
    }
}

/// The store failed: a passing reason, as far as one sync can tell.
fn store_failure(what: &str, error: &sqlx::Error) -> Failure {
    Failure::Transient(format!("{what}: {error}"))
}

fn transient(reason: String) -> Outcome {
    Outcome::Failed(Failure::Transient(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_names_a_character_or_is_refused_with_the_reason() {
        let job = UserKillmailsJob::decode(br#"{"character_id": 2112625428}"#).expect("a job");
        assert_eq!(job.character_id, 2_112_625_428);
        assert_eq!(UserKillmailsJob::decode(&job.encode()), Ok(job));
        let no = UserKillmailsJob::decode(b"{}").expect_err("no id");
        assert!(no.starts_with("not a user-killmails job"), "{no}");
        let negative = UserKillmailsJob::decode(br#"{"character_id": -1}"#).expect_err("no id");
        assert_eq!(negative, "no character has id -1");
    }
}
