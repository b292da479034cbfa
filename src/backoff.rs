//! Waiting politely after a failure: [`Backoff`], doubling delays with jitter, and
//! [`until_up`], which a long-running process uses to wait for a dependency started after it.
//! Below every module that retries (the feeds, the job runner, the processes' start).

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// How long to wait after consecutive failures: doubling from `first` up to `max`, each delay
/// drawn from its upper half so that many workers refused together do not return together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Reconnecting to a service of ours (PostgreSQL, Redis, RabbitMQ): soon, then at most
    /// every 30 s.
    pub const RECONNECT: Self = Self {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };

    /// The delay after the `failures`-th consecutive failure (counting from 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let doubling = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        let ceiling = self.first.saturating_mul(doubling).min(self.max);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// Connects with `connect` until it succeeds, with [`Backoff::RECONNECT`], so that a process
/// started before `what` (PostgreSQL still booting, say) waits for it instead of exiting.
/// Logged when waiting starts and whenever the error changes (a wrong password is not retried
/// in silence); gives up only at shutdown.
pub async fn until_up<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut connect: F,
) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut failures = 0;
    let mut last_error = String::new();
    loop {
        let error = match connect().await {
            Ok(connected) => {
                if failures > 0 {
                    tracing::info!("{what} is up");
                }
                return Ok(connected);
            }
            Err(error) => format!("{:#}", error.into()),
        };
        failures += 1;
        let delay = Backoff::RECONNECT.delay(failures);
        if error != last_error {
            tracing::warn!(%error, retry_in = ?delay, "waiting for {what}");
        }
        last_error = error;
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("stopped while waiting for {what}: {last_error}"),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let first = backoff.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let capped = backoff.delay(40);
            assert!(capped >= Duration::from_millis(500) && capped <= Duration::from_millis(1000));
        }
    }
}
