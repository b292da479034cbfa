//! A fan-out run against one target (one server, or several sharing the clients round-robin):
//! connect every subscriber with bounded concurrency, let them settle and weigh the idle
//! server, inject the killmails at a fixed rate, wait until everything expected has arrived or
//! patience runs out, then close the clients and count what each one got.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use killreport::events::{EventPublisher, KillmailAdded};
use killreport::killmail::{Received, Seq};
use killreport::queue::Publisher;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::client::{self, Ending, Outcome, Protocol, Shared, Subscriber};
use crate::documents::Document;
use crate::latency::Percentiles;
use crate::process::{self, PeakSampler};
use crate::report::{FanoutReport, ServerCost, UrlTally};
use crate::target::Target;
use crate::workload;

/// How killmails enter the system.
pub enum Injector {
    /// Straight onto the events channel, as the worker would announce them (fan-out only),
    /// for servers that take an event's payload as it comes. killreport's server takes it only
    /// as a hint and delivers what its store holds, so it needs the killmails stored: `Jobs`.
    /// Sequence numbers keep increasing across targets: a server drops one it has seen.
    Redis {
        publisher: EventPublisher,
        next_seq: i64,
    },
    /// As `killmail.ingest` jobs, through worker-killmails and the store (the whole pipeline);
    /// the killmails must be new to that store.
    Jobs(Box<Publisher>),
}

impl Injector {
    pub fn describe(&self) -> &'static str {
        match self {
            Injector::Redis { .. } => "events on Redis",
            Injector::Jobs(_) => "killmail.ingest jobs",
        }
    }

    async fn inject(&mut self, received: &Received) -> anyhow::Result<()> {
        match self {
            Injector::Redis {
                publisher,
                next_seq,
            } => {
                let event = KillmailAdded {
                    seq: Seq(*next_seq),
                    killmail: received.killmail.clone(),
                    zkb: received.zkb.clone(),
                    hash: Some(received.hash.clone()),
                    names: Default::default(),
                };
                *next_seq += 1;
                publisher
                    .publish(std::slice::from_ref(&event))
                    .await
                    .context("publishing an event on Redis")
            }
            Injector::Jobs(publisher) => publisher
                .publish(&workload::ingest_job(received))
                .await
                .context("publishing a killmail.ingest job"),
        }
    }
}

/// What every target of a run gets alike.
pub struct Plan {
    pub clients: usize,
    pub documents: Vec<Document>,
    pub killmails: Vec<Received>,
    pub rate: f64,
    /// How long to wait for stragglers after the last injection.
    pub patience: Duration,
    /// How long subscriptions are left idle before the server is weighed and injection starts.
    pub settle: Duration,
    pub connect_concurrency: usize,
    pub connect_timeout: Duration,
    /// How often each client sends a graphql-transport-ws `ping` (as Apollo's and graphql-ws'
    /// `keepAlive` option does); a server may close a connection that stays silent.
    pub client_ping: Option<Duration>,
    subscribe: Vec<Arc<str>>,
    expected: Vec<Arc<[bool]>>,
    /// What a client of `/websocket/` (killstream) or `/updates` should get: every killmail.
    everything: Arc<[bool]>,
}

impl Plan {
    pub fn new(
        clients: usize,
        documents: Vec<Document>,
        killmails: Vec<Received>,
        rate: f64,
    ) -> anyhow::Result<Self> {
        let expected = documents
            .iter()
            .map(|d| d.expected(&killmails).map(Arc::from))
            .collect::<anyhow::Result<_>>()?;
        let subscribe = documents
            .iter()
            .map(|d| Arc::from(d.subscribe_message(client::SUBSCRIPTION_ID)))
            .collect();
        Ok(Self {
            clients,
            documents,
            rate,
            patience: Duration::from_secs(60),
            settle: Duration::from_secs(2),
            connect_concurrency: 150,
            connect_timeout: Duration::from_secs(10),
            client_ping: Some(Duration::from_secs(10)),
            subscribe,
            expected,
            everything: vec![true; killmails.len()].into(),
            killmails,
        })
    }

    /// How many of the injected killmails document `index` should receive.
    pub fn matching(&self, index: usize) -> usize {
        self.expected[index].iter().filter(|&&e| e).count()
    }

    /// Which of `target`'s URLs client `i` uses: round-robin in whole rounds of the document
    /// mix, so that every server gets every document (client `i` has document `i mod N`).
    fn server_of(&self, i: usize, target: &Target) -> usize {
        (i / self.documents.len()) % target.urls.len()
    }

    /// Which killmails client `i` of `target` should get: its document's on `/graphql`, every
    /// one on `/websocket/` (killstream) and `/updates`.
    fn expected_of(&self, target: &Target, i: usize) -> &Arc<[bool]> {
        match Protocol::of(&target.urls[self.server_of(i, target)]) {
            Protocol::Graphql => &self.expected[i % self.documents.len()],
            Protocol::Zkillboard | Protocol::Updates => &self.everything,
        }
    }

    /// How many killmails client `i` of `target` should get.
    fn expected_count(&self, target: &Target, i: usize) -> usize {
        self.expected_of(target, i).iter().filter(|&&e| e).count()
    }

    /// Client `i`'s subscription on `target`.
    fn subscriber(&self, target: &Target, i: usize) -> Subscriber {
        let url = target.urls[self.server_of(i, target)].clone();
        let protocol = Protocol::of(&url);
        let subscribe = match protocol {
            Protocol::Graphql => self.subscribe[i % self.documents.len()].clone(),
            Protocol::Zkillboard | Protocol::Updates => Arc::from(client::KILLSTREAM),
        };
        Subscriber {
            url,
            protocol,
            subscribe,
            expected: self.expected_of(target, i).clone(),
            // Spread over the interval, so pings do not come in waves.
            ping: self.client_ping.map(|every| {
                let offset = every.mul_f64((i % 1000) as f64 / 1000.0);
                (offset, every)
            }),
        }
    }
}

/// Runs `plan` against `target`, injecting with `injector`.
pub async fn run(
    target: &Target,
    plan: &Plan,
    injector: &mut Injector,
) -> anyhow::Result<FanoutReport> {
    let pids = &target.pids;
    let weigh = || -> anyhow::Result<Option<process::Usage>> {
        if pids.is_empty() {
            return Ok(None);
        }
        process::usage(pids)
            .with_context(|| format!("measuring target {}", target.name))
            .map(Some)
    };
    let before = weigh()?;
    let sampler = (!pids.is_empty()).then(|| PeakSampler::start(pids.clone()));

    let shared = Arc::new(Shared {
        events: plan
            .killmails
            .iter()
            .enumerate()
            .map(|(i, r)| (r.killmail.killmail_id.0, i as u32))
            .collect(),
        arrived: AtomicUsize::new(0),
    });
    let stop = CancellationToken::new();
    let connecting = Instant::now();
    let (clients, connected) = connect_all(target, plan, &shared, &stop).await;
    let connect_time = connecting.elapsed();
    let held: Vec<usize> = connected
        .iter()
        .filter_map(|(i, result)| result.is_ok().then_some(*i))
        .collect();
    let expected: usize = held.iter().map(|&i| plan.expected_count(target, i)).sum();
    let connect_failures = tally(connected.into_iter().filter_map(|(_, r)| r.err()));

    if held.is_empty() {
        // Nothing to measure, and events would only move a server's sequence on.
        stop.cancel();
    }
    tokio::time::sleep(plan.settle).await;
    let idle = weigh()?;

    let own_cpu = process::own_cpu_seconds();
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(plan.killmails.len());
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate.max(0.001)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for received in plan.killmails.iter().filter(|_| !held.is_empty()) {
        ticker.tick().await;
        // The clock starts before the publish: a broker's confirm is part of the path.
        sent_at.push(Instant::now());
        injector.inject(received).await?;
    }
    let deadline = tokio::time::Instant::now() + plan.patience;
    while shared.arrived.load(Ordering::Relaxed) < expected
        && tokio::time::Instant::now() < deadline
        && !clients.iter().all(|c| c.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = weigh()?;
    let loadgen_cpu = process::own_cpu_seconds() - own_cpu;

    stop.cancel();
    // (client index, what it saw) for every client that connected.
    let mut outcomes = Vec::with_capacity(clients.len());
    for (i, client) in clients.into_iter().enumerate() {
        if let Some(outcome) = client.await.context("a client task failed")? {
            outcomes.push((i, outcome));
        }
    }
    let peak_rss_kib = match sampler {
        Some(sampler) => sampler.finish().await,
        None => 0,
    };

    let mut latencies = Vec::with_capacity(expected);
    let mut last_receipt = started;
    let mut per_url: Vec<UrlTally> = target
        .urls
        .iter()
        .map(|url| UrlTally {
            url: url.clone(),
            ..UrlTally::default()
        })
        .collect();
    for (i, outcome) in &outcomes {
        for &(event, at) in &outcome.received {
            latencies.push(at.saturating_duration_since(sent_at[event as usize]));
            last_receipt = last_receipt.max(at);
        }
        let expected = plan.expected_count(target, *i);
        let tally = &mut per_url[plan.server_of(*i, target)];
        tally.held += 1;
        tally.expected += expected;
        tally.delivered += outcome.received.len();
        tally.complete += usize::from(
            outcome.received.len() == expected && outcome.duplicated + outcome.unexpected == 0,
        );
    }
    let sum = |count: fn(&Outcome) -> usize| outcomes.iter().map(|(_, o)| count(o)).sum::<usize>();
    let server = match (before, idle, after) {
        (Some(before), Some(idle), Some(after)) => Some(ServerCost {
            cpu_seconds: after.cpu_seconds - idle.cpu_seconds,
            idle_kib_per_subscriber: (idle.rss_kib as f64 - before.rss_kib as f64)
                / held.len().max(1) as f64,
            peak_rss_kib: peak_rss_kib.max(after.rss_kib),
            hwm_kib: after.hwm_kib,
        }),
        _ => None,
    };
    Ok(FanoutReport {
        target: target.clone(),
        injected_as: injector.describe(),
        asked: plan.clients,
        held: held.len(),
        connect_time,
        connect_failures,
        documents: plan.documents.len(),
        events: plan.killmails.len(),
        expected,
        delivered: latencies.len(),
        duplicated: sum(|o| o.duplicated),
        unexpected: sum(|o| o.unexpected),
        foreign: sum(|o| o.foreign),
        errors: sum(|o| o.errors),
        endings: tally(
            outcomes
                .iter()
                .filter_map(|(_, o)| o.ending.as_ref().map(describe)),
        ),
        per_url,
        elapsed: last_receipt.saturating_duration_since(started),
        latency: Percentiles::of(latencies),
        server,
        loadgen_cpu_seconds: loadgen_cpu,
    })
}

type Connected = Vec<(usize, Result<(), String>)>;

/// Starts every client, at most `connect_concurrency` opening at once; each goes on reading as
/// soon as it is subscribed (a socket nobody reads misses its keep-alive pings). Gives the
/// client tasks and, per client, whether it connected.
async fn connect_all(
    target: &Target,
    plan: &Plan,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> (Vec<tokio::task::JoinHandle<Option<Outcome>>>, Connected) {
    let opening = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::unbounded_channel();
    let clients = (0..plan.clients)
        .map(|i| {
            let subscriber = plan.subscriber(target, i);
            let (opening, connected, shared, stop) = (
                opening.clone(),
                connected_tx.clone(),
                shared.clone(),
                stop.clone(),
            );
            let timeout = plan.connect_timeout;
            tokio::spawn(async move {
                let permit = opening.acquire_owned().await;
                let socket = client::connect(&subscriber, timeout).await;
                drop(permit);
                let (result, outcome) = match socket {
                    Ok(socket) => (Ok(()), Some(socket)),
                    Err(reason) => (Err(reason), None),
                };
                connected.send((i, result)).ok();
                drop(connected);
                match outcome {
                    Some(socket) => Some(client::receive(socket, subscriber, shared, stop).await),
                    None => None,
                }
            })
        })
        .collect();
    drop(connected_tx);
    let mut connected = Vec::with_capacity(plan.clients);
    while let Some(result) = connected_rx.recv().await {
        connected.push(result);
    }
    (clients, connected)
}

fn describe(ending: &Ending) -> String {
    match ending {
        Ending::Closed { code, reason } => format!("closed by the server: {code} {reason:?}"),
        Ending::Refused(message) => format!("subscription ended: {message}"),
        Ending::Failed(error) => format!("connection failed: {error}"),
    }
}

/// Distinct messages with how often each came, most frequent first.
fn tally(messages: impl Iterator<Item = String>) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for message in messages {
        *counts.entry(message).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_put_the_most_frequent_first() {
        let counted = tally(["b", "a", "b"].into_iter().map(String::from));
        assert_eq!(counted, [("b".to_owned(), 2), ("a".to_owned(), 1)]);
    }
}
