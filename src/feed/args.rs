//! The live feeds' settings as `worker-redisq` reads them, in the manner of [`crate::config`]:
//! a clap group with the defaults zKillboard asks for, flattened into the binary.

use std::time::Duration;

use clap::Args;

use super::{Backoff, R2z2Settings, RedisqSettings};

#[derive(Debug, Clone, Args)]
pub struct FeedArgs {
    /// zKillboard's R2Z2, read when no REDISQ_URL is given.
    #[arg(
        long,
        env = "R2Z2_BASE_URL",
        default_value = "https://r2z2.zkillboard.com"
    )]
    pub r2z2_base_url: String,
    /// Milliseconds to wait when the next R2Z2 sequence is not produced yet (404).
    #[arg(long, env = "R2Z2_IDLE_WAIT_MS", default_value_t = 6000)]
    pub r2z2_idle_wait_ms: u64,
    /// Least milliseconds between two R2Z2 requests (R2Z2 allows under 10 a second).
    #[arg(long, env = "R2Z2_MIN_INTERVAL_MS", default_value_t = 110)]
    pub r2z2_min_interval_ms: u64,
    /// A RedisQ-compatible listen URL; when set, it is long-polled instead of R2Z2.
    #[arg(long, env = "REDISQ_URL")]
    pub redisq_url: Option<String>,
    /// This install's RedisQ queue; keep it stable so a restart resumes it.
    #[arg(long, env = "REDISQ_QUEUE_ID", default_value = "killreport")]
    pub redisq_queue_id: String,
    /// Seconds RedisQ may hold a poll open (1–10).
    #[arg(
        long,
        env = "REDISQ_TTW",
        default_value_t = 10,
        value_parser = clap::value_parser!(u8).range(1..=10)
    )]
    pub redisq_ttw: u8,
    /// Least milliseconds between two RedisQ polls.
    #[arg(long, env = "REDISQ_MIN_INTERVAL_MS", default_value_t = 500)]
    pub redisq_min_interval_ms: u64,
    /// Seconds before a feed request is abandoned (for RedisQ, beyond its ttw) and retried.
    #[arg(long, env = "FEED_TIMEOUT_SECS", default_value_t = 20)]
    pub feed_timeout_secs: u64,
}

impl FeedArgs {
    pub fn http_client(&self) -> anyhow::Result<reqwest::Client> {
        super::http_client(Duration::from_secs(self.feed_timeout_secs))
    }

    pub fn r2z2_settings(&self) -> R2z2Settings {
        R2z2Settings {
            idle_wait: Duration::from_millis(self.r2z2_idle_wait_ms),
            min_interval: Duration::from_millis(self.r2z2_min_interval_ms),
            ..R2z2Settings::default()
        }
    }

    pub fn redisq_settings(&self) -> RedisqSettings {
        RedisqSettings {
            queue_id: self.redisq_queue_id.clone(),
            ttw: self.redisq_ttw,
            min_interval: Duration::from_millis(self.redisq_min_interval_ms),
            timeout: Duration::from_secs(self.feed_timeout_secs),
            backoff: Backoff::default(),
        }
    }
}
