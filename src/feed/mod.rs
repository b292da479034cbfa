//! zKillboard's live feeds, turned into `killmail.ingest` jobs: R2Z2 (numbered files read in
//! sequence, with a cursor in PostgreSQL) and RedisQ-compatible long-poll endpoints. Both are
//! polled politely: a minimum interval between requests, a descriptive User-Agent, and
//! exponential backoff with jitter when the service refuses or fails. A job is published with a
//! broker confirm before the feed moves on; an entry that can never become a job is
//! dead-lettered with its reason instead of being retried forever. What an entry says is read
//! by [`crate::zkb`], as the importer reads it from files.

pub mod r2z2;
pub mod redisq;
mod resync;

pub use r2z2::{R2z2Poller, R2z2Settings};
pub use redisq::{RedisqPoller, RedisqSettings};

use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::queue::runner::Job;
use crate::queue::{IngestJob, PublishError, Publisher};
use crate::telemetry;

/// The feed a `worker-redisq` follows, with what following it needs besides a publisher.
#[derive(Debug, Clone)]
pub enum Followed {
    /// R2Z2, whose cursor is kept in `pool`.
    R2z2 {
        base_url: String,
        pool: PgPool,
        settings: R2z2Settings,
    },
    /// A RedisQ-compatible listen URL.
    Redisq {
        url: String,
        settings: RedisqSettings,
    },
}

impl Followed {
    /// How long following may take to stop after shutdown, given the time a publish and a
    /// cursor save may take: a RedisQ poll under way may bring a package already taken off the
    /// server's queue, so it is given its whole wait to answer; an R2Z2 fetch is dropped at
    /// once, as the cursor moves only once its job is confirmed.
    pub fn grace(&self, finishing: Duration) -> Duration {
        match self {
            Self::R2z2 { .. } => finishing,
            Self::Redisq { settings, .. } => finishing + Duration::from_secs(settings.ttw.into()),
        }
    }

    /// Polls the feed, publishing each killmail as a job, until `shutdown` or a failure.
    pub async fn follow(
        &self,
        http: reqwest::Client,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        match self.clone() {
            Self::R2z2 {
                base_url,
                pool,
                settings,
            } => {
                tracing::info!(%base_url, "following R2Z2");
                let poller = R2z2Poller {
                    http,
                    base_url,
                    pool,
                    publisher,
                    settings,
                };
                poller.run(shutdown).await
            }
            Self::Redisq { url, settings } => {
                let poller = RedisqPoller {
                    http,
                    url,
                    publisher,
                    settings,
                };
                poller.run(shutdown).await
            }
        }
    }
}

/// An HTTP client for the feeds: killreport's User-Agent, bounded connects and requests.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(crate::esi::USER_AGENT)
        .connect_timeout(Duration::from_secs(10).min(timeout))
        .timeout(timeout)
        .build()
        .context("building the feed's HTTP client")
}

/// Sleeps for `duration` unless shutdown comes first; false when it did.
async fn pause(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(duration) => true,
    }
}

/// What a feed endpoint answered, once pacing, rate limits and failures are dealt with.
#[derive(Debug)]
enum Answer {
    Body(Vec<u8>),
    NotFound,
    /// Refused or failed (already logged): ask again after this delay.
    Retry(Duration),
}

/// One feed's HTTP side: paces requests, sorts answers, and keeps the backoff state.
struct FeedHttp {
    name: &'static str,
    min_interval: Duration,
    backoff: Backoff,
    last_request: Option<Instant>,
    failures: u32,
    /// Inside a run of 403/429 answers, which are logged once, when the run starts.
    refused: bool,
}

impl FeedHttp {
    fn new(name: &'static str, min_interval: Duration, backoff: Backoff) -> Self {
        Self {
            name,
            min_interval,
            backoff,
            last_request: None,
            failures: 0,
            refused: false,
        }
    }

    /// Sends `request` no sooner than the minimum interval after the previous one; the
    /// request is timed, by what it answered.
    async fn get(&mut self, request: reqwest::RequestBuilder, what: &str) -> Answer {
        if let Some(last) = self.last_request {
            tokio::time::sleep_until(last + self.min_interval).await;
        }
        let started = Instant::now();
        self.last_request = Some(started);
        let answer = self.send(request, what).await;
        let outcome = match answer {
            Answer::Body(_) => "ok",
            Answer::NotFound => "not_found",
            Answer::Retry(_) => "retry",
        };
        metrics::histogram!(telemetry::FEED_REQUEST, "feed" => self.name, "outcome" => outcome)
            .record(started.elapsed());
        answer
    }

    async fn send(&mut self, request: reqwest::RequestBuilder, what: &str) -> Answer {
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return Answer::Retry(self.failed(what, &error_chain(&error))),
        };
        let status = response.status();
        if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return self.refused(what, status, retry_after);
        }
        if status == StatusCode::NOT_FOUND {
            self.succeeded();
            return Answer::NotFound;
        }
        if !status.is_success() {
            return Answer::Retry(self.failed(what, &format!("answered {status}")));
        }
        match response.bytes().await {
            Ok(body) => {
                self.succeeded();
                Answer::Body(body.to_vec())
            }
            Err(error) => Answer::Retry(self.failed(what, &error_chain(&error))),
        }
    }

    /// Counts a failure, an HTTP one or an answer that made no sense, and returns how long to
    /// wait before asking again.
    fn failed(&mut self, what: &str, error: &str) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.backoff.delay(self.failures);
        tracing::warn!(
            feed = self.name,
            error,
            failures = self.failures,
            retry_in_ms = millis(delay),
            "{what} failed; retrying"
        );
        delay
    }

    fn refused(&mut self, what: &str, status: StatusCode, retry_after: Option<Duration>) -> Answer {
        self.failures = self.failures.saturating_add(1);
        // Capped, so that a nonsense Retry-After cannot stall the feed for good; asking again
        // too early only earns another refusal.
        let delay = self
            .backoff
            .delay(self.failures)
            .max(retry_after.unwrap_or_default().min(self.backoff.max));
        if self.refused {
            tracing::debug!(feed = self.name, %status, retry_in_ms = millis(delay), "{what}: still refused");
        } else {
            self.refused = true;
            tracing::warn!(
                feed = self.name,
                %status,
                retry_in_ms = millis(delay),
                "{what}: refused (rate limited); backing off until it answers again"
            );
        }
        Answer::Retry(delay)
    }

    fn succeeded(&mut self) {
        if self.refused {
            tracing::info!(feed = self.name, "answering again after refusing requests");
        }
        self.refused = false;
        self.failures = 0;
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs a job through the same checks `worker-killmails` applies, so an entry it would reject
/// is dead-lettered here, at the feed, with the feed's own reason.
fn checked(job: &IngestJob) -> Result<IngestJob, String> {
    IngestJob::decode(&job.encode())
}

/// Publishes a job and waits for the broker's confirm. A nack is retried a few times; a broken
/// channel is returned at once, since only a new connection (a restart) can mend it, and the
/// feed then resumes where its confirms stopped.
async fn publish(publisher: &Publisher, job: &IngestJob) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 5;
    let backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    let mut attempt = 1;
    loop {
        match publisher.publish(job).await {
            Ok(()) => return Ok(()),
            Err(PublishError::Nacked) if attempt < ATTEMPTS => {
                tracing::warn!(killmail.id = %job.killmail_id, attempt, "RabbitMQ nacked a job; publishing it again");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt += 1;
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("publishing the job for killmail {}", job.killmail_id)
                });
            }
        }
    }
}
