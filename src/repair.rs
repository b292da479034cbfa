//! Gap repair: zKillboard's daily history, `{base}/api/history/YYYYMMDD.json` (a JSON object of
//! killmail id → hash), compared with the store; every killmail it lists that the store lacks
//! is queued as a `killmail.ingest` job of id and hash, which worker-killmails completes from
//! ESI. `queue repair --from --to` runs it for a range of days; the R2Z2 poller runs it for the
//! days an outage longer than R2Z2 keeps its files lost. A day zKillboard has no history for, or
//! whose history is not such an object, is reported with its reason and the others go on; only
//! the store or the broker failing ends a run.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt, stream};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::killmail::{KillmailId, Source, check_hash};
use crate::queue::{IngestJob, Publisher};

/// The most a day's history may weigh: a busy day lists about 20,000 killmails (1.3 MB).
const MAX_HISTORY_BYTES: usize = 32 << 20;
/// Jobs published at once, each waiting for the broker's confirm.
const PUBLISHING_AHEAD: usize = 64;
/// Tries of a history that fails to arrive (5xx, 429, a dropped connection).
const ATTEMPTS: u32 = 3;

/// Where the history is, and where the missing killmails go.
#[derive(Clone)]
pub struct Repair {
    pub http: reqwest::Client,
    /// zKillboard's base URL, like `https://zkillboard.com`.
    pub base_url: String,
    pub pool: PgPool,
    /// Where the missing killmails are queued, for worker-killmails.
    pub publisher: Publisher,
    /// The wait before a history that failed to arrive is asked again.
    pub retry_pause: Duration,
}

/// What became of one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayOutcome {
    /// The history was compared with the store: the killmails it lists, those the store
    /// lacked (each queued), and entries that are not a killmail id and hash.
    Compared {
        listed: usize,
        queued: usize,
        refused: usize,
        first_refusal: Option<String>,
    },
    /// zKillboard has no history for the day (404).
    Missing { url: String },
    /// The history could not be read, and why.
    Failed { reason: String },
}

#[derive(Debug, Clone)]
pub struct Day {
    pub day: NaiveDate,
    pub outcome: DayOutcome,
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}  ", self.day)?;
        match &self.outcome {
            DayOutcome::Compared {
                listed,
                queued,
                refused,
                first_refusal,
            } => {
                write!(
                    f,
                    "history lists {listed} killmails: {} stored, {queued} missing and queued \
                     for ESI",
                    listed - queued
                )?;
                if let Some(reason) = first_refusal {
                    write!(f, "; {refused} entries refused, the first: {reason}")?;
                }
                Ok(())
            }
            DayOutcome::Missing { url } => write!(f, "missing upstream: {url} answered 404"),
            DayOutcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// What a repair did: each day, and the killmails over all of them.
#[derive(Debug, Default)]
pub struct RepairSummary {
    pub days: Vec<Day>,
    /// Killmails the histories list.
    pub listed: usize,
    /// Of those, the ones the store lacked, now queued.
    pub queued: usize,
    pub elapsed: Duration,
    pub interrupted: bool,
}

impl RepairSummary {
    /// Days whose history could not be compared.
    pub fn not_compared(&self) -> usize {
        self.days
            .iter()
            .filter(|d| !matches!(d.outcome, DayOutcome::Compared { .. }))
            .count()
    }
}

impl fmt::Display for RepairSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.interrupted {
            writeln!(
                f,
                "interrupted: what was queued stays; run it again to finish"
            )?;
        }
        let count =
            |of: fn(&DayOutcome) -> bool| self.days.iter().filter(|d| of(&d.outcome)).count();
        writeln!(
            f,
            "days compared:    {}",
            count(|o| matches!(o, DayOutcome::Compared { .. }))
        )?;
        writeln!(
            f,
            "days missing:     {}",
            count(|o| matches!(o, DayOutcome::Missing { .. }))
        )?;
        writeln!(
            f,
            "days failed:      {}",
            count(|o| matches!(o, DayOutcome::Failed { .. }))
        )?;
        for day in &self.days {
            if !matches!(day.outcome, DayOutcome::Compared { .. }) {
                writeln!(f, "  {day}")?;
            }
        }
        writeln!(f, "killmails listed: {}", self.listed)?;
        writeln!(f, "already stored:   {}", self.listed - self.queued)?;
        writeln!(f, "queued for ESI:   {}", self.queued)?;
        write!(f, "elapsed:          {:.2} s", self.elapsed.as_secs_f64())
    }
}

impl Repair {
    /// Repairs every day from `from` to `to`, both included, in order; `on_day` is told of
    /// each as it ends. Fails only when the store or the broker does; once `shutdown` is
    /// cancelled, the remaining days are left.
    pub async fn run(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        shutdown: &CancellationToken,
        mut on_day: impl FnMut(&Day),
    ) -> anyhow::Result<RepairSummary> {
        anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
        let started = Instant::now();
        let mut summary = RepairSummary::default();
        for day in from.iter_days().take_while(|d| *d <= to) {
            let outcome = tokio::select! {
                outcome = self.day(day) => outcome?,
                () = shutdown.cancelled() => {
                    summary.interrupted = true;
                    break;
                }
            };
            if let DayOutcome::Compared { listed, queued, .. } = &outcome {
                summary.listed += listed;
                summary.queued += queued;
            }
            let day = Day { day, outcome };
            on_day(&day);
            summary.days.push(day);
        }
        summary.elapsed = started.elapsed();
        Ok(summary)
    }

    async fn day(&self, day: NaiveDate) -> anyhow::Result<DayOutcome> {
        let url = history_url(&self.base_url, day);
        let body = match self.fetch(&url).await {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(DayOutcome::Missing { url }),
            Err(reason) => return Ok(DayOutcome::Failed { reason }),
        };
        let history = match decode_history(&body) {
            Ok(history) => history,
            Err(reason) => return Ok(DayOutcome::Failed { reason }),
        };
        let ids: Vec<i64> = history.entries.iter().map(|(id, _)| id.0).collect();
        let missing = db::killmails::missing(&self.pool, &ids)
            .await
            .context("looking up which killmails the store holds")?;
        let missing: std::collections::HashSet<i64> = missing.into_iter().collect();
        let jobs = history
            .entries
            .into_iter()
            .filter(|(id, _)| missing.contains(&id.0))
            .map(|(killmail_id, hash)| IngestJob {
                killmail_id,
                hash,
                killmail: None,
                zkb: None,
                source: Source::Esi,
            });
        let queued = stream::iter(jobs)
            .map(|job| async move {
                self.publisher
                    .publish(&job)
                    .await
                    .with_context(|| format!("queueing killmail {}", job.killmail_id))
            })
            .buffered(PUBLISHING_AHEAD)
            .try_fold(0, |n, ()| async move { Ok(n + 1) })
            .await?;
        tracing::info!(%day, listed = ids.len(), queued, "zKillboard's history compared with the store");
        Ok(DayOutcome::Compared {
            listed: ids.len(),
            queued,
            refused: history.refused.len(),
            first_refusal: history.refused.into_iter().next(),
        })
    }

    /// The history at `url`: `None` when zKillboard has none (404); an error is the day's
    /// reason.
    async fn fetch(&self, url: &str) -> Result<Option<Vec<u8>>, String> {
        let mut attempt = 1;
        loop {
            match fetch_once(&self.http, url).await {
                Err(Fetch::Again(reason)) if attempt < ATTEMPTS => {
                    tracing::info!(url, attempt, %reason, "asking for zKillboard's history again");
                    tokio::time::sleep(self.retry_pause * attempt).await;
                    attempt += 1;
                }
                Err(Fetch::Again(reason) | Fetch::Final(reason)) => return Err(reason),
                Ok(body) => return Ok(body),
            }
        }
    }
}

enum Fetch {
    /// Worth asking again.
    Again(String),
    Final(String),
}

async fn fetch_once(http: &reqwest::Client, url: &str) -> Result<Option<Vec<u8>>, Fetch> {
    let mut response = http
        .get(url)
        .send()
        .await
        .map_err(|e| Fetch::Again(format!("requesting {url}: {e}")))?;
    let status = response.status();
    match status {
        StatusCode::NOT_FOUND => return Ok(None),
        status if status.is_success() => {}
        status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            return Err(Fetch::Again(format!("{url} answered {status}")));
        }
        status => return Err(Fetch::Final(format!("{url} answered {status}"))),
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Fetch::Again(format!("reading {url}: {e}")))?
    {
        if body.len() + chunk.len() > MAX_HISTORY_BYTES {
            return Err(Fetch::Final(format!(
                "{url} is larger than {} MB: not a day's history",
                MAX_HISTORY_BYTES >> 20
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The history of `day` at zKillboard's `base`.
pub fn history_url(base: &str, day: NaiveDate) -> String {
    format!(
        "{}/api/history/{}.json",
        base.trim_end_matches('/'),
        day.format("%Y%m%d")
    )
}

/// A day's history, read.
#[derive(Debug, PartialEq, Eq)]
pub struct History {
    /// Killmail ids and hashes, by id.
    pub entries: Vec<(KillmailId, String)>,
    /// Why each entry that is not a killmail id and hash was refused.
    pub refused: Vec<String>,
}

/// Reads a day's history: a JSON object of killmail id → hash (an empty array for a day
/// without any, as PHP writes an empty object). Entries that are not an id and a hash are
/// refused one by one; anything else is not a history at all.
pub fn decode_history(body: &[u8]) -> Result<History, String> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(Value::Array(items)) if items.is_empty() => serde_json::Map::new(),
        Ok(other) => {
            return Err(format!(
                "not zKillboard's history (an object of killmail id → hash): a JSON {}",
                crate::zkb::kind(&other)
            ));
        }
        Err(error) => {
            let start: String = String::from_utf8_lossy(&body[..body.len().min(40)])
                .chars()
                .map(|c| if c.is_control() { '.' } else { c })
                .collect();
            return Err(format!(
                "not zKillboard's history (an object of killmail id → hash): {error}; it \
                 begins {start:?}"
            ));
        }
    };
    let mut history = History {
        entries: Vec::with_capacity(map.len()),
        refused: Vec::new(),
    };
    for (key, value) in map {
        let id = match key.parse::<i64>() {
            Ok(id) if id > 0 => KillmailId(id),
            _ => {
                history
                    .refused
                    .push(format!("{key:?} is not a killmail id"));
                continue;
            }
        };
        match value {
            Value::String(hash) => match check_hash(&hash) {
                Ok(()) => history.entries.push((id, hash)),
                Err(reason) => history.refused.push(format!("killmail {id}: {reason}")),
            },
            other => history.refused.push(format!(
                "killmail {id}: the hash is a JSON {}",
                crate::zkb::kind(&other)
            )),
        }
    }
    history.entries.sort_by_key(|(id, _)| *id);
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_day_is_at_zkillboards_address() {
        let day = NaiveDate::from_ymd_opt(2021, 12, 3).expect("a date");
        assert_eq!(
            history_url("https://zkillboard.com/", day),
            "https://zkillboard.com/api/history/20211203.json"
        );
    }

    #[test]
    fn a_history_is_read_by_id_and_bad_entries_refused_one_by_one() {
        let body = format!(
            r#"{{"97089203": "{HASH}", "97089202": "{HASH}", "x": "{HASH}", "5": "short", "6": 7}}"#
        );
        let history = decode_history(body.as_bytes()).expect("a history");
        assert_eq!(
            history.entries,
            vec![
                (KillmailId(97089202), HASH.to_owned()),
                (KillmailId(97089203), HASH.to_owned())
            ]
        );
        assert_eq!(history.refused.len(), 3, "{:?}", history.refused);
        assert_eq!(decode_history(b"[]").expect("empty").entries, vec![]);
        for bad in [&b"<html>502</html>"[..], b"[1, 2]", b"\"text\""] {
            let error = decode_history(bad).expect_err("not a history");
            assert!(error.contains("not zKillboard's history"), "{error}");
        }
    }
}
