//! Latency: percentiles over samples, and the two plain benchmarks, job publish → event on
//! Redis through a running worker-killmails (`ingest_latency`) and one GraphQL query after
//! another (`query_latency`). Figures are printed, never asserted; see BENCHMARKS.md.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use killreport::events::KillmailAdded;
use killreport::killmail::{KillmailId, Received};
use killreport::queue::Publisher;
use tokio::time::Instant;

use crate::workload;

/// Latency percentiles over a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

impl Percentiles {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = (q * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        }
    }
}

impl fmt::Display for Percentiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        )
    }
}

/// What an injection run saw.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub sent: usize,
    pub received: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub elapsed: Duration,
    pub latency: Percentiles,
}

impl fmt::Display for IngestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sent {}, received {}, lost {}, duplicated {} in {:.1} s",
            self.sent,
            self.received,
            self.lost,
            self.duplicated,
            self.elapsed.as_secs_f64()
        )?;
        write!(f, "job publish → event received: {}", self.latency)
    }
}

/// Publishes one `killmail.ingest` job per killmail at `rate` per second and waits (at most
/// `patience` after the last publish) for each one's event on `channel`. The killmails must be
/// new to the store, or no event comes for them.
pub async fn ingest_latency(
    publisher: &Publisher,
    redis_url: &str,
    channel: &str,
    killmails: &[Received],
    rate: f64,
    patience: Duration,
) -> anyhow::Result<IngestReport> {
    let client = redis::Client::open(redis_url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    let mut messages = pubsub.into_on_message();

    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(KillmailId, Instant)>();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let publishing = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for received in killmails {
            ticker.tick().await;
            let job = workload::ingest_job(received);
            // The clock starts before the publish: the broker's confirm is part of the path.
            let at = Instant::now();
            sent_tx.send((job.killmail_id, at)).ok();
            publisher.publish(&job).await?;
        }
        anyhow::Ok(Instant::now())
    };

    // First receipt of each killmail, and how many receipts in all.
    let mut received_at: HashMap<KillmailId, (Instant, usize)> = HashMap::new();

    tokio::pin!(publishing);
    let mut finished_publishing = None;
    loop {
        let deadline = finished_publishing.map(|at: Instant| at + patience);
        tokio::select! {
            result = &mut publishing, if finished_publishing.is_none() => {
                finished_publishing = Some(result?);
            }
            message = messages.next() => {
                let at = Instant::now();
                let Some(message) = message else { anyhow::bail!("Redis subscription ended") };
                let payload: String = message.get_payload()?;
                if let Ok(event) = serde_json::from_str::<KillmailAdded>(&payload) {
                    received_at.entry(event.killmail.killmail_id).or_insert((at, 0)).1 += 1;
                }
                if finished_publishing.is_some() && received_at.len() >= killmails.len() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(|| Instant::now() + patience)), if deadline.is_some() => break,
        }
    }
    let mut sent = 0;
    let mut latencies = Vec::with_capacity(killmails.len());
    let mut duplicated = 0;
    while let Ok((id, sent_at)) = sent_rx.try_recv() {
        sent += 1;
        if let Some((at, count)) = received_at.get(&id) {
            latencies.push(at.saturating_duration_since(sent_at));
            duplicated += count - 1;
        }
    }
    Ok(IngestReport {
        sent,
        received: latencies.len(),
        lost: sent - latencies.len(),
        duplicated,
        elapsed: started.elapsed(),
        latency: Percentiles::of(latencies),
    })
}

/// Times `requests` sequential POSTs of one GraphQL query; fails on any GraphQL error.
pub async fn query_latency(
    url: &str,
    body: &serde_json::Value,
    requests: usize,
) -> anyhow::Result<Percentiles> {
    let http = reqwest::Client::new();
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        let started = Instant::now();
        let response: serde_json::Value = http.post(url).json(body).send().await?.json().await?;
        samples.push(started.elapsed());
        if let Some(errors) = response.get("errors") {
            anyhow::bail!("the query failed: {errors}");
        }
    }
    Ok(Percentiles::of(samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let ms = Duration::from_millis;
        let samples: Vec<Duration> = (1..=1000).rev().map(ms).collect();
        let p = Percentiles::of(samples);
        assert_eq!(
            (p.p50, p.p99, p.p999, p.max),
            (ms(500), ms(990), ms(999), ms(1000))
        );

        let one = Percentiles::of(vec![ms(7)]);
        assert_eq!((one.p50, one.p999, one.max), (ms(7), ms(7), ms(7)));
        assert_eq!(Percentiles::of(Vec::new()).max, Duration::ZERO);
    }
}
