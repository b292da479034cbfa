//! EVE's ESI: fetching a killmail by id and hash, and resolving ids to names. Every failure is
//! sorted into permanent (the request can never succeed) or transient (try again later).

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::killmail::{Killmail, KillmailId};

/// The User-Agent of every outside request, as CCP and zKillboard ask.
pub const USER_AGENT: &str = concat!(
    "killreport/",
    env!("CARGO_PKG_VERSION"),
    " (EVE Online killmail backend)"
);

/// ESI's limit on ids per `POST /universe/names/`.
pub const NAMES_PER_CALL: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum EsiError {
    /// Bad input: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
    /// An outage, a timeout or a rate limit: retry later.
    #[error("{0}")]
    Transient(String),
}

impl EsiError {
    fn from_reqwest(what: &str, error: &reqwest::Error) -> Self {
        EsiError::Transient(format!("{what}: {error}"))
    }

    fn from_status(what: &str, status: StatusCode) -> Self {
        let message = format!("{what}: ESI answered {status}");
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.as_u16() == 420
        {
            EsiError::Transient(message)
        } else {
            EsiError::Permanent(message)
        }
    }
}

/// A resolved name, as `POST /universe/names/` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Name {
    pub id: i64,
    pub category: String,
    pub name: String,
}

#[derive(Clone)]
pub struct Esi {
    http: reqwest::Client,
    base_url: String,
}

impl Esi {
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    /// `GET /killmails/{id}/{hash}/`.
    pub async fn killmail(&self, id: KillmailId, hash: &str) -> Result<Killmail, EsiError> {
        let what = format!("fetching killmail {id}");
        let url = format!("{}/killmails/{id}/{hash}/", self.base_url);
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| EsiError::from_reqwest(&what, &e))?;
        if !response.status().is_success() {
            return Err(EsiError::from_status(&what, response.status()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| EsiError::from_reqwest(&what, &e))?;
        let killmail: Killmail = serde_json::from_slice(&body).map_err(|e| {
            EsiError::Permanent(format!(
                "{what}: ESI sent something that is not a killmail: {e}"
            ))
        })?;
        if killmail.killmail_id != id {
            return Err(EsiError::Permanent(format!(
                "{what}: ESI sent killmail {}",
                killmail.killmail_id
            )));
        }
        killmail.validate().map_err(EsiError::Permanent)?;
        Ok(killmail)
    }

    /// `POST /universe/names/` for any number of ids, in calls of at most 1,000. ESI refuses a
    /// whole call (404) when one id is unknown to it, so such a call is split until the unknown
    /// ids are isolated and left out.
    pub async fn names(&self, ids: &[i64]) -> Result<Vec<Name>, EsiError> {
        let mut names = Vec::with_capacity(ids.len());
        let mut pending: Vec<&[i64]> = ids.chunks(NAMES_PER_CALL).collect();
        while let Some(chunk) = pending.pop() {
            match self.names_call(chunk).await {
                Ok(mut found) => names.append(&mut found),
                Err(EsiError::Permanent(_)) if chunk.len() > 1 => {
                    let (left, right) = chunk.split_at(chunk.len() / 2);
                    pending.push(left);
                    pending.push(right);
                }
                Err(EsiError::Permanent(reason)) => {
                    tracing::debug!(id = chunk[0], %reason, "ESI cannot name id")
                }
                Err(error) => return Err(error),
            }
        }
        Ok(names)
    }

    async fn names_call(&self, ids: &[i64]) -> Result<Vec<Name>, EsiError> {
        let what = format!("resolving {} names", ids.len());
        let response = self
            .http
            .post(format!("{}/universe/names/", self.base_url))
            .json(ids)
            .send()
            .await
            .map_err(|e| EsiError::from_reqwest(&what, &e))?;
        if !response.status().is_success() {
            return Err(EsiError::from_status(&what, response.status()));
        }
        response
            .json()
            .await
            .map_err(|e| EsiError::Transient(format!("{what}: unreadable answer: {e}")))
    }
}
