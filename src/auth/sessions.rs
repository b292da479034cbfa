//! API sessions: handed out at login as random, opaque bearer tokens (32 bytes, base64url),
//! stored only as their SHA-256 hashes, expiring after a set time, ended by logout. A caller
//! is worked out once per request (HTTP) or per connection (WebSocket `connection_init`), and
//! a connection that holds a session is told when it ends or expires: one query per interval
//! checks every session the process's connections hold, whichever process ended it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::sso::Secret;
use crate::db::sessions::{self, LiveSession};

/// Ended and expired sessions are forgotten this long after.
const KEEP_DEAD: Duration = Duration::from_secs(7 * 86_400);
/// How often dead sessions are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// How sessions live.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// How long a session lasts from login.
    pub ttl: Duration,
    /// How often the sessions held by this process's connections are checked for logouts.
    pub check_every: Duration,
    /// Characters that may run the operational mutations.
    pub admins: HashSet<i64>,
}

/// A live session, as a request or connection holds it.
#[derive(Debug, Clone)]
pub struct Session {
    pub character_id: i64,
    pub expires_at: DateTime<Utc>,
    /// Whether the character is in `ADMIN_CHARACTER_IDS`.
    pub admin: bool,
    token_hash: Vec<u8>,
}

/// Who sends a request: request data for the resolvers that need a session.
#[derive(Debug, Clone)]
pub enum Caller {
    Anonymous,
    /// A bearer token that is no (live) session: unknown, expired or ended.
    Refused,
    Known(Session),
}

impl Caller {
    pub fn session(&self) -> Option<&Session> {
        match self {
            Caller::Known(session) => Some(session),
            Caller::Anonymous | Caller::Refused => None,
        }
    }
}

/// The token of an `Authorization` value: `Bearer <token>` (the scheme in any case).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub fn hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// 32 random bytes, base64url: a session token, a `state`, a PKCE verifier.
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The process's sessions; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    pool: PgPool,
    settings: Arc<SessionSettings>,
    watched: Arc<Mutex<Watched>>,
}

#[derive(Default)]
struct Watched {
    next: u64,
    /// Token hash → the connections holding it (by number), each with its signal.
    by_hash: HashMap<Vec<u8>, HashMap<u64, CancellationToken>>,
}

/// A connection's hold on a session: `ended` is cancelled when the session ends or expires;
/// dropping it stops the watch.
pub struct Watch {
    pub ended: CancellationToken,
    hash: Vec<u8>,
    number: u64,
    watched: Arc<Mutex<Watched>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(holders) = watched.by_hash.get_mut(&self.hash) {
            holders.remove(&self.number);
            if holders.is_empty() {
                watched.by_hash.remove(&self.hash);
            }
        }
    }
}

impl Sessions {
    /// The sessions of `pool`, checked every `settings.check_every` until `shutdown`.
    pub fn start(pool: PgPool, settings: SessionSettings, shutdown: CancellationToken) -> Self {
        let sessions = Self {
            pool,
            settings: Arc::new(settings),
            watched: Arc::default(),
        };
        tokio::spawn(sessions.clone().check(shutdown));
        sessions
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// Opens a session for `character_id`; returns its bearer token, shown once.
    pub async fn open(&self, character_id: i64) -> sqlx::Result<(Secret, DateTime<Utc>)> {
        let token = random_token();
        let ttl = chrono::TimeDelta::from_std(self.settings.ttl).unwrap_or(chrono::TimeDelta::MAX);
        let expires_at = Utc::now() + ttl;
        sessions::create(&self.pool, &hash(&token), character_id, expires_at).await?;
        Ok((Secret::new(token), expires_at))
    }

    /// Who sends `authorization` (an `Authorization` value, or `None`).
    pub async fn caller(&self, authorization: Option<&str>) -> sqlx::Result<Caller> {
        let Some(value) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let Some(token) = bearer(value) else {
            return Ok(Caller::Refused);
        };
        let token_hash = hash(token);
        Ok(match sessions::find(&self.pool, &token_hash).await? {
            Some(LiveSession {
                character_id,
                expires_at,
            }) => Caller::Known(Session {
                character_id,
                expires_at,
                admin: self.settings.admins.contains(&character_id),
                token_hash,
            }),
            None => Caller::Refused,
        })
    }

    /// Ends the session of `token`; returns its character if it was live.
    pub async fn end(&self, token: &str) -> sqlx::Result<Option<i64>> {
        sessions::end(&self.pool, &hash(token)).await
    }

    /// Watches `session` for its end (logout anywhere) or expiry.
    pub fn watch(&self, session: &Session) -> Watch {
        let ended = CancellationToken::new();
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let number = watched.next;
        watched.next += 1;
        watched
            .by_hash
            .entry(session.token_hash.clone())
            .or_default()
            .insert(number, ended.clone());
        Watch {
            ended,
            hash: session.token_hash.clone(),
            number,
            watched: Arc::clone(&self.watched),
        }
    }

    /// Every interval: tells the connections whose sessions are no longer live; every hour,
    /// forgets sessions long dead.
    async fn check(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(self.settings.check_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut swept = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let held: Vec<Vec<u8>> = {
                let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
                watched.by_hash.keys().cloned().collect()
            };
            if !held.is_empty() {
                match sessions::live_among(&self.pool, &held).await {
                    Ok(live) => self.signal_ended(held, &live),
                    // Checked again next interval.
                    Err(error) => tracing::warn!(%error, "checking the held sessions failed"),
                }
            }
            if swept.elapsed() >= SWEEP_EVERY {
                swept = tokio::time::Instant::now();
                let before = Utc::now()
                    - chrono::TimeDelta::from_std(KEEP_DEAD).unwrap_or(chrono::TimeDelta::MAX);
                if let Err(error) = sessions::delete_dead(&self.pool, before).await {
                    tracing::warn!(%error, "forgetting dead sessions failed");
                }
            }
        }
    }

    fn signal_ended(&self, held: Vec<Vec<u8>>, live: &[Vec<u8>]) {
        let live: HashSet<&Vec<u8>> = live.iter().collect();
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        for hash in held.iter().filter(|hash| !live.contains(hash)) {
            if let Some(holders) = watched.by_hash.remove(hash) {
                holders.values().for_each(CancellationToken::cancel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_authorization_values() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_eq!(hash(&a).len(), 32);
        assert_ne!(hash(&a), a.as_bytes());
    }
}
