//! RedisQ-compatible long polling: `GET {url}?queueID=…&ttw=…` answers `{"package": null}` when
//! nothing came within `ttw` seconds, or one package `{killID, killmail?, zkb}`, possibly through
//! a 302 to where the package is. The server keeps each queue's position, so there is no cursor
//! here; a package without its killmail becomes a job that `worker-killmails` completes from ESI
//! with `zkb.hash`.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{Answer, FeedHttp, checked, pause, publish};
use crate::backoff::Backoff;
use crate::killmail::Source;
use crate::queue::{IngestJob, Publisher};
use crate::zkb;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisqSettings {
    /// Names this install's queue on the server; keep it stable so a restart resumes it.
    pub queue_id: String,
    /// Seconds the server may hold a poll open waiting for a killmail (1–10).
    pub ttw: u8,
    /// The least time between two polls (zKillboard allowed 2 requests a second).
    pub min_interval: Duration,
    /// How long an answer may take beyond `ttw`.
    pub timeout: Duration,
    /// After 403/429 (refused) or a failure.
    pub backoff: Backoff,
}

impl Default for RedisqSettings {
    fn default() -> Self {
        Self {
            queue_id: "killreport".to_owned(),
            ttw: 10,
            min_interval: Duration::from_millis(500),
            timeout: Duration::from_secs(20),
            backoff: Backoff::default(),
        }
    }
}

/// Long-polls a RedisQ-compatible endpoint and queues one `killmail.ingest` job per package.
pub struct RedisqPoller {
    /// Follows redirects, as reqwest's client does by default.
    pub http: reqwest::Client,
    /// The listen endpoint, like `https://zkillredisq.stream/listen.php`.
    pub url: String,
    pub publisher: Publisher,
    pub settings: RedisqSettings,
}

/// Why an answer did not become a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageError {
    /// Not a RedisQ answer at all (an error page, say): ask again later.
    NotRedisq(String),
    /// A package that can never become a job: dead-letter it, it is already off the queue.
    Malformed(String),
}

/// Decodes a RedisQ answer: `None` for `{"package": null}`, else a checked job.
pub fn decode_package(body: &[u8]) -> Result<Option<IngestJob>, PackageError> {
    let mut answer: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| PackageError::NotRedisq(format!("not JSON: {e}")))?;
    let package = answer
        .get_mut("package")
        .map(serde_json::Value::take)
        .ok_or_else(|| PackageError::NotRedisq("the answer has no `package`".into()))?;
    let job = zkb::redisq_package(package, Source::Redisq).map_err(PackageError::Malformed)?;
    job.map(|job| checked(&job))
        .transpose()
        .map_err(PackageError::Malformed)
}

/// The poll URL: `url` with `queueID` and `ttw` set, its other query parameters kept.
pub fn listen_url(url: &str, queue_id: &str, ttw: u8) -> Result<reqwest::Url, String> {
    let mut listen = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let kept: Vec<(String, String)> = listen
        .query_pairs()
        .filter(|(key, _)| key != "queueID" && key != "ttw")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    listen
        .query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("queueID", queue_id)
        .append_pair("ttw", &ttw.clamp(1, 10).to_string());
    Ok(listen)
}

impl RedisqPoller {
    /// Polls until `shutdown`. A poll under way is let finish, since the package it brings is
    /// already off the server's queue; so stopping takes up to `ttw` seconds.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = &self.settings;
        let url = listen_url(&self.url, &settings.queue_id, settings.ttw)
            .map_err(anyhow::Error::msg)
            .context("REDISQ_URL")?;
        let mut http = FeedHttp::new("redisq", settings.min_interval, settings.backoff);
        let timeout = Duration::from_secs(settings.ttw.clamp(1, 10).into()) + settings.timeout;
        tracing::info!(queue_id = %settings.queue_id, ttw = settings.ttw, "long-polling RedisQ");
        while !shutdown.is_cancelled() {
            let request = self.http.get(url.clone()).timeout(timeout);
            let delay = match http.get(request, "polling RedisQ").await {
                Answer::Body(body) => match decode_package(&body) {
                    Ok(None) => continue,
                    Ok(Some(job)) => {
                        publish(&self.publisher, &job).await?;
                        tracing::debug!(killmail.id = %job.killmail_id, "queued");
                        continue;
                    }
                    Err(PackageError::Malformed(reason)) => {
                        let reason = format!("RedisQ package: {reason}");
                        tracing::warn!(%reason, "dead-lettering a RedisQ package that is not a killmail");
                        self.publisher
                            .dead_letter_body(&body, &reason)
                            .await
                            .context("dead-lettering a RedisQ package")?;
                        continue;
                    }
                    Err(PackageError::NotRedisq(reason)) => http.failed("polling RedisQ", &reason),
                },
                Answer::NotFound => http.failed("polling RedisQ", "answered 404"),
                Answer::Retry(delay) => delay,
            };
            if !pause(&shutdown, delay).await {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::killmail::{Killmail, KillmailId, Zkb};

    const WITH_KILLMAIL: &str = include_str!(
        "../../tests/it/fixtures/upstream/redisq/redisq-package-119455394.andimiller-killmail-router.json"
    );
    const ZKB_ONLY: &str = include_str!(
        "../../tests/it/fixtures/upstream/redisq/redisq-package-130678514-zkb-only.zkillboard-redisq-readme.json"
    );

    #[test]
    fn decodes_a_real_package_with_its_killmail() {
        let job = decode_package(WITH_KILLMAIL.as_bytes())
            .expect("a valid package")
            .expect("not null");
        let value: serde_json::Value = serde_json::from_str(WITH_KILLMAIL).expect("JSON");
        assert_eq!(job.killmail_id, KillmailId(119455394));
        assert_eq!(
            job.hash,
            value["package"]["zkb"]["hash"].as_str().expect("hash")
        );
        let killmail: Killmail =
            serde_json::from_value(value["package"]["killmail"].clone()).expect("ESI");
        assert_eq!(job.killmail, Some(killmail));
        assert_eq!(job.zkb, Some(Zkb(value["package"]["zkb"].clone())));
        assert_eq!(job.source, Source::Redisq);
    }

    #[test]
    fn decodes_a_real_package_without_its_killmail() {
        let job = decode_package(ZKB_ONLY.as_bytes())
            .expect("a valid package")
            .expect("not null");
        assert_eq!(job.killmail_id, KillmailId(130678514));
        assert_eq!(job.hash, "145c457c34ce9c9e8d67e942e764d8f439b22271");
        assert_eq!(job.killmail, None, "worker-killmails fetches it from ESI");
    }

    #[test]
    fn a_null_package_is_no_job() {
        assert_eq!(decode_package(br#"{"package":null}"#), Ok(None));
    }

    #[test]
    fn sorts_what_is_not_a_job() {
        assert!(matches!(
            decode_package(b"<html>oops</html>"),
            Err(PackageError::NotRedisq(_))
        ));
        assert!(matches!(
            decode_package(br#"{"error": "slow down"}"#),
            Err(PackageError::NotRedisq(_))
        ));
        assert!(matches!(
            decode_package(br#"{"package": {"killID": 5}}"#),
            Err(PackageError::Malformed(_))
        ));
        assert!(matches!(
            decode_package(br#"{"package": {"killID": 5, "zkb": {"totalValue": 1}}}"#),
            Err(PackageError::Malformed(reason)) if reason.contains("zkb.hash")
        ));
        let mut value: serde_json::Value = serde_json::from_str(WITH_KILLMAIL).expect("JSON");
        value["package"]["killID"] = serde_json::json!(1);
        let body = serde_json::to_vec(&value).expect("serializes");
        assert!(matches!(
            decode_package(&body),
            Err(PackageError::Malformed(_))
        ));
    }

    #[test]
    fn the_listen_url_carries_queue_id_and_ttw_and_keeps_other_parameters() {
        let url =
            listen_url("https://zkillredisq.stream/listen.php", "my install", 10).expect("a URL");
        assert_eq!(
            url.as_str(),
            "https://zkillredisq.stream/listen.php?queueID=my+install&ttw=10"
        );
        let url = listen_url(
            "http://127.0.0.1:1/redisq/?queueID=old&key=v&ttw=3",
            "q",
            42,
        )
        .expect("a URL");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/redisq/?key=v&queueID=q&ttw=10"
        );
        assert!(listen_url("not a url", "q", 1).is_err());
    }
}
