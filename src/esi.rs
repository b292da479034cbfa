//! EVE's ESI: fetching a killmail by id and hash, resolving ids to names, and the day's item
//! prices. Every failure is
//! sorted into permanent (the request can never succeed) or transient (try again later).
//!
//! ESI punishes a process that keeps failing: after 100 errors in its one-minute window it
//! answers 420 to every request until the window resets, and rate-limited routes answer 429 with
//! a `Retry-After`. So every clone of one [`Esi`] shares one throttle: a 420, a 429 or an error
//! budget running low (`X-ESI-Error-Limit-Remain`) holds off all of the process's requests until
//! ESI said it would listen again (`X-ESI-Error-Limit-Reset`, `Retry-After`). The request that
//! met the limit, and any that would wait longer than the client's timeout, fail as transient,
//! so their jobs go round the retry queues instead of holding up a worker.
//!
//! ESI counts errors per client IP, not per process: several workers on one host share one
//! budget. A client given a Redis key ([`Esi::share_pauses`]) also writes every pause there
//! ("paused until", milliseconds since the epoch) and reads it before each request, so that a
//! 420 or 429 met by one process holds off all of them.
//!
//! Beside killmails and names, the entity routes worker-enrich needs: affiliations in bulk,
//! corporations, alliances (and their corporations) and item types by id.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::killmail::{Killmail, KillmailId};
use crate::telemetry;

/// The User-Agent of every outside request, as CCP and zKillboard ask.
pub const USER_AGENT: &str = concat!(
    "killreport/",
    env!("CARGO_PKG_VERSION"),
    " (EVE Online killmail backend)"
);

/// ESI's limit on ids per `POST /universe/names/`.
pub const NAMES_PER_CALL: usize = 1000;

/// With fewer errors than this left in ESI's window, requests stop until the window resets:
/// other tasks' requests in flight may still fail, and the last errors must not reach 420.
pub const ERROR_LIMIT_FLOOR: i64 = 10;

/// The pause after a 420 that does not say when its window resets: the whole window.
const ERROR_WINDOW: Duration = Duration::from_secs(60);

/// The pause after a 429 without a `Retry-After`.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(10);

/// No header stops requests for longer than this, so that a nonsense value cannot stall a
/// worker for good; ESI's own limits reset well within it.
const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);

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

/// A character's corporation, alliance and faction, as `POST /characters/affiliation/` says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Affiliation {
    pub character_id: i64,
    pub corporation_id: i64,
    pub alliance_id: Option<i64>,
    pub faction_id: Option<i64>,
}

/// `GET /corporations/{id}/`, the fields killreport keeps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CorporationInfo {
    pub name: String,
    pub ticker: String,
    pub member_count: i64,
    pub alliance_id: Option<i64>,
    pub faction_id: Option<i64>,
    pub ceo_id: Option<i64>,
    pub date_founded: Option<DateTime<Utc>>,
}

/// `GET /alliances/{id}/`, the fields killreport keeps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AllianceInfo {
    pub name: String,
    pub ticker: String,
    pub executor_corporation_id: Option<i64>,
    pub faction_id: Option<i64>,
    pub date_founded: Option<DateTime<Utc>>,
}

/// `GET /universe/types/{id}/`, the fields killreport keeps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TypeInfo {
    pub type_id: i64,
    pub name: String,
    pub group_id: i64,
}

/// Pauses shared with every process that names the same Redis key.
#[derive(Clone)]
struct SharedPauses {
    redis: ConnectionManager,
    key: String,
}

/// Sets the key to a later "paused until" only, expiring with the pause.
const EXTEND_PAUSE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 0";

fn epoch_millis() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl SharedPauses {
    /// The pause another process wrote, if it lasts beyond now. Redis failing is no reason to
    /// stop asking ESI: this process's own throttle still holds.
    async fn current(&self) -> Option<Duration> {
        let mut redis = self.redis.clone();
        let until: Option<u64> = match redis::cmd("GET")
            .arg(&self.key)
            .query_async(&mut redis)
            .await
        {
            Ok(until) => until,
            Err(error) => {
                tracing::debug!(%error, "reading the shared ESI pause failed");
                return None;
            }
        };
        let left = until?.checked_sub(epoch_millis())?;
        (left > 0).then(|| Duration::from_millis(left))
    }

    async fn extend(&self, duration: Duration) {
        let millis = u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut redis = self.redis.clone();
        let written = redis::Script::new(EXTEND_PAUSE)
            .key(&self.key)
            .arg(epoch_millis().saturating_add(millis))
            .arg(millis)
            .invoke_async::<()>(&mut redis)
            .await;
        if let Err(error) = written {
            tracing::warn!(%error, "sharing an ESI pause through Redis failed");
        }
    }
}

/// One type's prices, as `GET /markets/prices/` lists them (ISK; either may be missing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketPrice {
    pub type_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjusted_price: Option<f64>,
}

/// When ESI may be asked again: one per client, shared by all its clones.
#[derive(Debug, Default)]
struct Throttle {
    resume_at: Mutex<Option<Instant>>,
}

impl Throttle {
    fn resume_at(&self) -> Option<Instant> {
        // The guarded value is a plain instant, valid whatever a panicking holder did.
        *self
            .resume_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits out the current pause if it ends within `max_wait`; otherwise returns at once with
    /// how long it has left.
    async fn ready(&self, max_wait: Duration) -> Result<(), Duration> {
        let give_up = Instant::now() + max_wait;
        // Again after waking: another task may have met a limit meanwhile and paused longer.
        while let Some(until) = self.resume_at() {
            let now = Instant::now();
            if until <= now {
                break;
            }
            if until > give_up {
                return Err(until - now);
            }
            tokio::time::sleep_until(until).await;
        }
        Ok(())
    }

    /// Holds off every request for `duration` from now, unless a longer pause is already on.
    fn pause(&self, duration: Duration, why: &str) {
        let duration = duration.min(MAX_PAUSE);
        let now = Instant::now();
        let until = now + duration;
        let mut resume_at = self
            .resume_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let paused = resume_at.is_some_and(|t| t > now);
        if resume_at.is_none_or(|t| t < until) {
            *resume_at = Some(until);
        }
        drop(resume_at);
        let pause_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        // Once per pause: every task in flight meets the same limit.
        if paused {
            tracing::debug!(pause_ms, why, "ESI requests still paused");
        } else {
            tracing::warn!(pause_ms, why, "ESI requests paused");
        }
    }
}

/// How long ESI asks to be left alone after this answer, and why; `None` to carry on.
fn hold_off(status: StatusCode, headers: &HeaderMap) -> Option<(Duration, &'static str)> {
    let reset = header_number(headers, "x-esi-error-limit-reset")
        .map(|secs| Duration::from_secs(secs.max(0).unsigned_abs()));
    if status.as_u16() == 420 {
        return Some((reset.unwrap_or(ERROR_WINDOW), "error limited (420)"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = header_number(headers, RETRY_AFTER.as_str())
            .map(|secs| Duration::from_secs(secs.max(0).unsigned_abs()));
        return Some((retry_after.unwrap_or(RATE_LIMIT_WAIT), "rate limited (429)"));
    }
    let remain = header_number(headers, "x-esi-error-limit-remain")?;
    (remain < ERROR_LIMIT_FLOOR).then(|| {
        (
            reset.unwrap_or(ERROR_WINDOW),
            "error limit nearly reached (X-ESI-Error-Limit-Remain)",
        )
    })
}

/// A header holding a whole number, as ESI's limit headers and `Retry-After` in seconds do.
/// (`Retry-After` may also be a date; ESI sends seconds, and a date falls back to the default.)
fn header_number(headers: &HeaderMap, name: &str) -> Option<i64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Decodes and checks the body ESI answered `GET /killmails/{id}/{hash}/` with.
pub fn decode_killmail(id: KillmailId, body: &[u8]) -> Result<Killmail, EsiError> {
    let what = format!("fetching killmail {id}");
    let killmail: Killmail = serde_json::from_slice(body).map_err(|e| {
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
    killmail
        .validate()
        .map_err(|reason| EsiError::Permanent(format!("{what}: {reason}")))?;
    Ok(killmail)
}

/// An ESI client. Clones share their connections and their throttle, so one client cloned into
/// every task of a process keeps the whole process within ESI's limits.
#[derive(Clone)]
pub struct Esi {
    http: reqwest::Client,
    base_url: String,
    /// The longest a request waits for a pause to end; also each request's timeout.
    max_wait: Duration,
    throttle: Arc<Throttle>,
    shared: Option<SharedPauses>,
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
            max_wait: timeout,
            throttle: Arc::default(),
            shared: None,
        })
    }

    /// The same client, sharing its pauses with every process whose client names `key` on
    /// this Redis (see the module's documentation).
    #[must_use]
    pub fn share_pauses(mut self, redis: ConnectionManager, key: &str) -> Self {
        self.shared = Some(SharedPauses {
            redis,
            key: key.to_owned(),
        });
        self
    }

    /// Sends a request to `endpoint` (a metric label) once the throttle allows, and heeds
    /// what ESI says about its limits.
    async fn send(
        &self,
        endpoint: &'static str,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, EsiError> {
        let count = |status: String| {
            metrics::counter!(telemetry::ESI_REQUESTS, "endpoint" => endpoint, "status" => status)
                .increment(1);
        };
        if let Some(shared) = &self.shared
            && let Some(left) = shared.current().await
        {
            self.throttle.pause(left, "paused by another process");
        }
        if let Err(left) = self.throttle.ready(self.max_wait).await {
            count("paused".to_owned());
            return Err(EsiError::Transient(format!(
                "{what}: ESI requests are paused for another {} s (error or rate limited)",
                left.as_secs_f64().ceil()
            )));
        }
        let response = request.send().await.map_err(|e| {
            count("failed".to_owned());
            EsiError::from_reqwest(what, &e)
        })?;
        let status = response.status();
        count(status.as_u16().to_string());
        if let Some(remain) = header_number(response.headers(), "x-esi-error-limit-remain") {
            metrics::gauge!(telemetry::ESI_ERROR_LIMIT_REMAIN).set(remain as f64);
        }
        if let Some((duration, why)) = hold_off(status, response.headers()) {
            self.throttle.pause(duration, why);
            if let Some(shared) = &self.shared {
                shared.extend(duration.min(MAX_PAUSE)).await;
            }
        }
        if !status.is_success() {
            return Err(EsiError::from_status(what, status));
        }
        Ok(response)
    }

    /// `GET {base}{path}`, on a pilot's behalf when given their access token
    /// (`Authorization: Bearer`), throttled and judged like every request; the answer is the
    /// caller's to read (its body, `X-Pages`). A 403 (a scope or role the token lacks) is
    /// permanent. `what` names the request in errors; the token never appears in them.
    pub async fn get(
        &self,
        endpoint: &'static str,
        what: &str,
        path: &str,
        query: &[(&str, String)],
        access_token: Option<&str>,
    ) -> Result<reqwest::Response, EsiError> {
        let mut request = self
            .http
            .get(format!("{}{path}", self.base_url))
            .query(query);
        if let Some(token) = access_token {
            request = request.bearer_auth(token);
        }
        self.send(endpoint, what, request).await
    }

    /// `GET /killmails/{id}/{hash}/`.
    pub async fn killmail(&self, id: KillmailId, hash: &str) -> Result<Killmail, EsiError> {
        let what = format!("fetching killmail {id}");
        let url = format!("{}/killmails/{id}/{hash}/", self.base_url);
        let response = self.send("killmail", &what, self.http.get(url)).await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| EsiError::from_reqwest(&what, &e))?;
        decode_killmail(id, &body)
    }

    /// `POST /universe/names/` for any number of ids, in calls of at most 1,000. ESI refuses a
    /// whole call (404) when one id is unknown to it, so such a call is split until the unknown
    /// ids are isolated and left out.
    pub async fn names(&self, ids: &[i64]) -> Result<Vec<Name>, EsiError> {
        self.post_bulk("names", "/universe/names/", "resolving names", ids)
            .await
    }

    /// `POST /characters/affiliation/` for any number of character ids, split as
    /// [`Self::names`] is; ids ESI does not know are left out.
    pub async fn affiliations(&self, ids: &[i64]) -> Result<Vec<Affiliation>, EsiError> {
        self.post_bulk(
            "affiliation",
            "/characters/affiliation/",
            "reading affiliations",
            ids,
        )
        .await
    }

    /// A bulk POST of ids in calls of at most 1,000; a call refused for its input is halved
    /// until the ids ESI refuses are alone, and those are left out.
    async fn post_bulk<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        what: &str,
        ids: &[i64],
    ) -> Result<Vec<T>, EsiError> {
        let mut found = Vec::with_capacity(ids.len());
        let mut pending: Vec<&[i64]> = ids.chunks(NAMES_PER_CALL).collect();
        while let Some(chunk) = pending.pop() {
            let what = format!("{what} of {} ids", chunk.len());
            let request = self
                .http
                .post(format!("{}{path}", self.base_url))
                .json(chunk);
            let answer = match self.send(endpoint, &what, request).await {
                Ok(response) => response
                    .json::<Vec<T>>()
                    .await
                    .map_err(|e| EsiError::Transient(format!("{what}: unreadable answer: {e}"))),
                Err(error) => Err(error),
            };
            match answer {
                Ok(mut some) => found.append(&mut some),
                Err(EsiError::Permanent(_)) if chunk.len() > 1 => {
                    let (left, right) = chunk.split_at(chunk.len() / 2);
                    pending.push(left);
                    pending.push(right);
                }
                Err(EsiError::Permanent(reason)) => {
                    tracing::debug!(id = chunk[0], %reason, "ESI does not know id")
                }
                Err(error) => return Err(error),
            }
        }
        Ok(found)
    }

    /// `GET /markets/prices/`: every traded type's average and adjusted price, as of today.
    pub async fn market_prices(&self) -> Result<Vec<MarketPrice>, EsiError> {
        let what = "fetching market prices";
        let url = format!("{}/markets/prices/", self.base_url);
        self.send("market_prices", what, self.http.get(url))
            .await?
            .json()
            .await
            .map_err(|e| EsiError::Transient(format!("{what}: unreadable answer: {e}")))
    }

    /// `GET /corporations/{id}/`; `Ok(None)` when ESI has no such corporation.
    pub async fn corporation(&self, id: i64) -> Result<Option<CorporationInfo>, EsiError> {
        self.get_json("corporation", format!("/corporations/{id}/"))
            .await
    }

    /// `GET /alliances/{id}/`; `Ok(None)` when ESI has no such alliance.
    pub async fn alliance(&self, id: i64) -> Result<Option<AllianceInfo>, EsiError> {
        self.get_json("alliance", format!("/alliances/{id}/")).await
    }

    /// `GET /alliances/{id}/corporations/`: its member corporations' ids.
    pub async fn alliance_corporations(&self, id: i64) -> Result<Option<Vec<i64>>, EsiError> {
        self.get_json(
            "alliance_corporations",
            format!("/alliances/{id}/corporations/"),
        )
        .await
    }

    /// `GET /universe/types/{id}/`; `Ok(None)` when ESI has no such type.
    pub async fn item_type(&self, id: i64) -> Result<Option<TypeInfo>, EsiError> {
        self.get_json("type", format!("/universe/types/{id}/"))
            .await
    }

    /// A GET of `path` read as `T`; a refusal for the input itself (404, 400) is `Ok(None)`:
    /// ESI knows no such thing.
    async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: String,
    ) -> Result<Option<T>, EsiError> {
        let what = format!("GET {path}");
        let request = self.http.get(format!("{}{path}", self.base_url));
        let response = match self.send(endpoint, &what, request).await {
            Ok(response) => response,
            Err(EsiError::Permanent(reason)) => {
                tracing::debug!(%reason, "ESI does not know it");
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        response
            .json()
            .await
            .map(Some)
            .map_err(|e| EsiError::Transient(format!("{what}: unreadable answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).expect("a status code")
    }

    #[test]
    fn error_limited_answers_pause_until_the_window_resets() {
        let limited = headers(&[
            ("x-esi-error-limit-remain", "0"),
            ("x-esi-error-limit-reset", "7"),
        ]);
        assert_eq!(
            hold_off(status(420), &limited).map(|(d, _)| d),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            hold_off(status(420), &HeaderMap::new()).map(|(d, _)| d),
            Some(ERROR_WINDOW),
            "without a reset, the whole window"
        );
        let garbage = headers(&[("x-esi-error-limit-reset", "soon")]);
        assert_eq!(
            hold_off(status(420), &garbage).map(|(d, _)| d),
            Some(ERROR_WINDOW)
        );
    }

    #[test]
    fn a_low_error_budget_pauses_before_esi_starts_refusing() {
        for code in [200, 404, 502] {
            let low = headers(&[
                ("x-esi-error-limit-remain", "9"),
                ("x-esi-error-limit-reset", "12"),
            ]);
            assert_eq!(
                hold_off(status(code), &low).map(|(d, _)| d),
                Some(Duration::from_secs(12)),
                "after {code}"
            );
            let plenty = headers(&[
                ("x-esi-error-limit-remain", "10"),
                ("x-esi-error-limit-reset", "12"),
            ]);
            assert_eq!(hold_off(status(code), &plenty), None, "after {code}");
            assert_eq!(hold_off(status(code), &HeaderMap::new()), None);
        }
        let negative = headers(&[
            ("x-esi-error-limit-remain", "1"),
            ("x-esi-error-limit-reset", "-3"),
        ]);
        assert_eq!(
            hold_off(status(200), &negative).map(|(d, _)| d),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn rate_limited_answers_pause_as_retry_after_says() {
        let retry = headers(&[("retry-after", "3")]);
        assert_eq!(
            hold_off(status(429), &retry).map(|(d, _)| d),
            Some(Duration::from_secs(3))
        );
        let date = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(
            hold_off(status(429), &date).map(|(d, _)| d),
            Some(RATE_LIMIT_WAIT)
        );
    }

    #[tokio::test]
    async fn a_pause_holds_off_every_request_until_it_ends_and_never_shortens() {
        let throttle = Throttle::default();
        assert_eq!(throttle.ready(Duration::ZERO).await, Ok(()));
        throttle.pause(Duration::from_millis(200), "test");
        throttle.pause(Duration::from_millis(50), "a shorter pause changes nothing");
        let started = Instant::now();
        assert_eq!(throttle.ready(Duration::from_secs(5)).await, Ok(()));
        assert!(started.elapsed() >= Duration::from_millis(190));

        throttle.pause(Duration::from_secs(30), "test");
        let started = Instant::now();
        let left = throttle
            .ready(Duration::from_secs(1))
            .await
            .expect_err("too long to wait");
        assert!(left > Duration::from_secs(28));
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "gave up at once"
        );

        throttle.pause(Duration::from_secs(u64::MAX), "nonsense");
        let left = throttle.ready(Duration::ZERO).await.expect_err("paused");
        assert!(left <= MAX_PAUSE, "capped");
    }

    #[test]
    fn decodes_and_checks_a_killmail() {
        let body = br#"{"killmail_id": 5, "killmail_time": "2021-12-03T00:00:08Z",
            "solar_system_id": 30000142, "victim": {"ship_type_id": 670, "damage_taken": 1},
            "attackers": [{"damage_done": 1, "final_blow": true, "security_status": 0.5}]}"#;
        let killmail = decode_killmail(KillmailId(5), body).expect("a killmail");
        assert_eq!(killmail.killmail_id, KillmailId(5));
        let wrong = decode_killmail(KillmailId(6), body).expect_err("another id");
        assert!(matches!(&wrong, EsiError::Permanent(m) if m.contains("ESI sent killmail 5")));
        let html = decode_killmail(KillmailId(5), b"<html>").expect_err("not JSON");
        assert!(matches!(&html, EsiError::Permanent(m) if m.contains("not a killmail")));
    }
}
