//! The job runner every worker runs on. A job type names its queue and decodes its message
//! ([`Job`]); a [`Handler`] does the work of a batch and says what became of each job. The
//! runner does the rest, once for every worker: connecting and reconnecting (see
//! [`Connector`]), prefetch, batching, a panic caught per job, one settle step (acked only
//! once the handler returned, that is after its data is committed; retried through the delay
//! queues; or dead-lettered with its reason, cut to a bounded length), a graceful stop within
//! a grace period, and the connection state `/readyz` reports.
//!
//! Whatever befalls a job, it ends settled exactly once, or unsettled and back on the queue.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use anyhow::Context;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{Connector, ConsumerCancelled};
use super::{DELIVERIES_HEADER, Publisher, RetryOutcome, Topology, bounded_reason, header_int};
use crate::backoff::Backoff;
use crate::telemetry;

/// How many times a batch that failed transiently is tried again whole while its handler says
/// it is available, before its jobs are handled one by one (and retried through the ladder).
const BATCH_RETRIES: u32 = 5;
/// The waits between those tries, and between checks while the handler is unavailable.
const PAUSE: Backoff = Backoff {
    first: Duration::from_millis(200),
    max: Duration::from_secs(10),
};
/// The longest a paused batch is held: RabbitMQ takes back a delivery left unacked for 30
/// minutes (its default `consumer_timeout`), and a delivery taken back counts against the
/// delivery limit; so the batch is put back first, as it is, and taken again.
const PAUSE_HOLD: Duration = Duration::from_secs(600);

/// How a pause ended.
enum Pause {
    /// The handler is available: try the batch again.
    Resume,
    Shutdown,
    /// Held [`PAUSE_HOLD`]: put the batch back.
    HandBack,
}

/// A kind of job: the queue it travels on and how its message is read.
pub trait Job: Sized + Send {
    /// The queue it travels on unless a process is given another name (tests isolate
    /// themselves with their own).
    const QUEUE: &'static str;

    /// Decodes and checks a message body; the error is the reason it is dead-lettered with.
    fn decode(body: &[u8]) -> Result<Self, String>;
}

/// Why a job (or a whole batch) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// It can never succeed (bad input): dead-lettered with this reason.
    Permanent(String),
    /// It may succeed later (an outage): retried through the delay queues, then dead-lettered.
    Transient(String),
}

/// What became of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its work is committed: acked.
    Done,
    Failed(Failure),
    /// Given up without a result (shutdown came while it waited): left unacked, so it goes
    /// back to the queue with the connection.
    Unsettled,
    /// Held too long while the handler was unavailable: put back at the end of its queue as it
    /// is, before RabbitMQ takes it back (which would count against its delivery limit).
    PutBack,
}

/// The work of one kind of job.
pub trait Handler: Send + Sync {
    type Job: Job;

    /// The worker's name, on its RabbitMQ connection and consumer.
    const NAME: &'static str;

    /// Handles a batch of jobs, in the order they came; returns one outcome per job, in the
    /// same order, once their data is committed. `Err` says the batch failed as a whole: the
    /// runner then hands each job over alone, so one bad job cannot hold back the others.
    fn handle(
        &self,
        jobs: Vec<Self::Job>,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Result<Vec<Outcome>, Failure>> + Send;

    /// Whether what the handler needs (its store) answers now. While it does not, a batch
    /// that failed transiently waits for it instead of being handled job by job.
    fn available(&self) -> impl Future<Output = bool> + Send;
}

/// How a worker consumes: where, how much at once, and how long it may take to stop.
#[derive(Debug, Clone)]
pub struct Consuming {
    pub connector: Connector,
    pub topology: Topology,
    /// Jobs RabbitMQ hands the worker before it has settled them.
    pub prefetch: u16,
    /// At most this many jobs are handled as one batch.
    pub max_batch: usize,
    /// How long a batch waits to fill once its first job has arrived.
    pub max_wait: Duration,
    /// How long the batch in hand may take to finish once shutdown is asked for; then its
    /// jobs are left to the queue.
    pub grace: Duration,
    /// A job is handed to the handler at most this many times without being settled; the
    /// next delivery dead-letters it.
    pub delivery_limit: u32,
}

/// Consumes `consuming.topology.queue` with `handler` until `shutdown`, reconnecting whenever
/// the connection to RabbitMQ is lost (what was unsettled went back to the queue with it).
pub async fn run<H: Handler>(
    handler: &H,
    consuming: &Consuming,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    consuming
        .connector
        .run(shutdown, |connection| async move {
            let publisher = Publisher::new(&connection, consuming.topology.clone())
                .await
                .context("declaring the RabbitMQ topology")?;
            let channel = connection
                .create_channel()
                .await
                .context("opening a channel")?;
            channel
                .basic_qos(consuming.prefetch, BasicQosOptions::default())
                .await?;
            let queue = &consuming.topology.queue;
            let consumer = channel
                .basic_consume(
                    queue,
                    H::NAME,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("consuming {queue}"))?;
            tracing::info!(%queue, "{} consuming", H::NAME);
            let session = Session {
                handler,
                publisher,
                consuming,
            };
            let worked = crate::shutdown::finish_within(
                shutdown,
                consuming.grace,
                session.consume(consumer, shutdown),
            )
            .await;
            worked.unwrap_or_else(|| {
                tracing::warn!(grace = ?consuming.grace, "the batch in hand did not finish in time; its unsettled jobs go back to the queue");
                Ok(())
            })
        })
        .await
}

/// One connection's worth of consuming.
struct Session<'a, H> {
    handler: &'a H,
    publisher: Publisher,
    consuming: &'a Consuming,
}

impl<H: Handler> Session<'_, H> {
    /// Takes batches and handles them until `shutdown` or the consumer ends. Deliveries not
    /// yet settled when it returns go back to the queue when the connection closes.
    async fn consume(
        &self,
        mut consumer: lapin::Consumer,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = consumer.next() => next,
            };
            let Some(first) = first else {
                return Err(ConsumerCancelled {
                    queue: self.consuming.topology.queue.clone(),
                }
                .into());
            };
            let mut deliveries = vec![first?];
            let deadline = Instant::now() + self.consuming.max_wait;
            while deliveries.len() < self.consuming.max_batch {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(delivery)) => deliveries.push(delivery?),
                    Ok(None) | Err(_) => break,
                }
            }
            let mut fresh = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                if delivery.redelivered {
                    self.count_redelivery(&delivery).await?;
                } else {
                    fresh.push(delivery);
                }
            }
            let deliveries = fresh;
            if deliveries.is_empty() {
                continue;
            }
            let bodies: Vec<&[u8]> = deliveries.iter().map(|d| d.data.as_slice()).collect();
            let outcomes = outcomes(self.handler, &bodies, shutdown).await;
            for (delivery, outcome) in deliveries.iter().zip(outcomes) {
                self.settle(delivery, outcome).await?;
            }
        }
    }

    /// A delivery RabbitMQ hands out again, its earlier delivery never settled: the worker
    /// that had it died or lost its connection, perhaps because of the job itself. It goes
    /// back to the end of the queue with the count in a header, or, at the limit, to the dead
    /// letters, so that a job that kills every worker cannot go round for ever.
    async fn count_redelivery(&self, delivery: &Delivery) -> anyhow::Result<()> {
        let headers = delivery.properties.headers().as_ref();
        let deliveries = header_int(headers, DELIVERIES_HEADER).unwrap_or(1) + 1;
        if deliveries > i64::from(self.consuming.delivery_limit) {
            let reason = format!(
                "handed out {} times and never settled (each time the worker died or lost its connection while handling it)",
                deliveries - 1
            );
            tracing::error!(%reason, "job dead-lettered");
            self.publisher.dead_letter(delivery, &reason).await?;
            let queue = self.consuming.topology.queue.clone();
            metrics::counter!(telemetry::JOBS, "queue" => queue, "outcome" => "dead_lettered")
                .increment(1);
        } else {
            tracing::warn!(
                deliveries,
                "a job came back unsettled; queued again with its count"
            );
            self.publisher.requeue_counted(delivery, deliveries).await?;
        }
        Ok(())
    }

    /// Acks, retries or dead-letters a delivery; an error only when the broker fails.
    /// Each settled job is counted by its queue and what became of it.
    async fn settle(&self, delivery: &Delivery, outcome: Outcome) -> anyhow::Result<()> {
        let settled = match outcome {
            Outcome::Done => {
                delivery.ack(BasicAckOptions::default()).await?;
                "done"
            }
            Outcome::Unsettled => return Ok(()),
            Outcome::PutBack => {
                let headers = delivery.properties.headers().as_ref();
                let deliveries = header_int(headers, DELIVERIES_HEADER).unwrap_or(1);
                self.publisher.requeue_counted(delivery, deliveries).await?;
                "put_back"
            }
            Outcome::Failed(Failure::Permanent(reason)) => {
                let reason = bounded_reason(&reason);
                tracing::warn!(%reason, "job dead-lettered");
                self.publisher.dead_letter(delivery, &reason).await?;
                "dead_lettered"
            }
            Outcome::Failed(Failure::Transient(reason)) => {
                let reason = bounded_reason(&reason);
                match self.publisher.retry_later(delivery, &reason).await? {
                    RetryOutcome::Delayed(delay) => {
                        tracing::warn!(%reason, retry_in = ?delay, "job failed; will retry");
                        "retried"
                    }
                    RetryOutcome::DeadLettered => {
                        tracing::error!(%reason, "job failed too often; dead-lettered");
                        "dead_lettered"
                    }
                }
            }
        };
        let queue = self.consuming.topology.queue.clone();
        metrics::counter!(telemetry::JOBS, "queue" => queue, "outcome" => settled).increment(1);
        Ok(())
    }
}

/// One outcome per message body, in order: undecodable ones fail for good; the rest are
/// handled as one batch. A batch that fails transiently is tried again whole, after a pause
/// that lasts as long as the handler is unavailable (see [`paused`]); one that fails for good
/// or panics, or still fails transiently after [`BATCH_RETRIES`] tries with the handler
/// available, is handled job by job, so that one bad job is singled out. A job that panics
/// even alone is dead-lettered with the panic's message: uncaught, it would end the worker, go
/// back to the queue and end the next worker too, for ever.
pub async fn outcomes<H: Handler>(
    handler: &H,
    bodies: &[&[u8]],
    shutdown: &CancellationToken,
) -> Vec<Outcome> {
    let mut retries = 0;
    let held_since = Instant::now();
    loop {
        let mut outcomes = vec![Outcome::Done; bodies.len()];
        let mut jobs = Vec::with_capacity(bodies.len());
        let mut positions = Vec::with_capacity(bodies.len());
        for (position, body) in bodies.iter().enumerate() {
            match H::Job::decode(body) {
                Ok(job) => {
                    jobs.push(job);
                    positions.push(position);
                }
                Err(reason) => outcomes[position] = Outcome::Failed(Failure::Permanent(reason)),
            }
        }
        if jobs.is_empty() {
            return outcomes;
        }
        // Unwind safety: what a handler shares (pools, channels, clients) stays usable after a
        // panic, and a transaction it had open is rolled back when dropped.
        let handled = AssertUnwindSafe(handler.handle(jobs, shutdown))
            .catch_unwind()
            .await;
        let again = match &handled {
            Ok(Err(Failure::Transient(_))) => retries < BATCH_RETRIES || !handler.available().await,
            _ => false,
        };
        match handled {
            Ok(Ok(handled)) => {
                let mut handled = handled.into_iter();
                for position in positions {
                    outcomes[position] = handled.next().unwrap_or_else(|| {
                        Outcome::Failed(Failure::Transient(
                            "the handler gave no outcome".to_owned(),
                        ))
                    });
                }
                return outcomes;
            }
            Ok(Err(Failure::Transient(reason))) if again => {
                retries += 1;
                let given_up = match paused(handler, &reason, retries, held_since, shutdown).await {
                    Pause::Resume => continue,
                    Pause::Shutdown => Outcome::Unsettled,
                    Pause::HandBack => Outcome::PutBack,
                };
                for position in positions {
                    outcomes[position] = given_up.clone();
                }
                return outcomes;
            }
            Ok(Err(failure)) if positions.len() == 1 => {
                outcomes[positions[0]] = Outcome::Failed(failure);
                return outcomes;
            }
            Err(panic) if positions.len() == 1 => {
                let reason = format!("handler panicked: {}", panic_message(panic.as_ref()));
                outcomes[positions[0]] = Outcome::Failed(Failure::Permanent(reason));
                return outcomes;
            }
            Ok(Err(failure)) => {
                tracing::warn!(
                    ?failure,
                    jobs = positions.len(),
                    "batch failed; handling its jobs one by one"
                );
                return split(handler, bodies, outcomes, &positions, shutdown).await;
            }
            Err(panic) => {
                tracing::error!(
                    panic = panic_message(panic.as_ref()),
                    jobs = positions.len(),
                    "handling a batch panicked; handling its jobs one by one"
                );
                return split(handler, bodies, outcomes, &positions, shutdown).await;
            }
        }
    }
}

/// `outcomes` with the jobs at `positions` each handled alone.
async fn split<H: Handler>(
    handler: &H,
    bodies: &[&[u8]],
    mut outcomes: Vec<Outcome>,
    positions: &[usize],
    shutdown: &CancellationToken,
) -> Vec<Outcome> {
    for &position in positions {
        outcomes[position] = Box::pin(outcome_alone(handler, bodies[position], shutdown)).await;
    }
    outcomes
}

/// Waits before a batch that failed transiently (the `failures`-th time in a row) is tried
/// again: a [`PAUSE`] delay, then for as long as the handler is unavailable, consuming nothing
/// meanwhile, but holding the batch (taken at `held_since`) no longer than [`PAUSE_HOLD`].
async fn paused<H: Handler>(
    handler: &H,
    reason: &str,
    failures: u32,
    held_since: Instant,
    shutdown: &CancellationToken,
) -> Pause {
    let reason = bounded_reason(reason);
    tracing::warn!(%reason, failures, "batch failed transiently; it will be tried again whole");
    let mut waits = failures;
    let mut announced = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Pause::Shutdown,
            () = tokio::time::sleep(PAUSE.delay(waits)) => {}
        }
        if handler.available().await {
            if announced {
                tracing::info!("available again; consuming resumes with the batch in hand");
            }
            return Pause::Resume;
        }
        if held_since.elapsed() >= PAUSE_HOLD {
            tracing::warn!(held = ?PAUSE_HOLD, "still unavailable: the batch goes back to the queue as it is, to be taken again");
            return Pause::HandBack;
        }
        if !announced {
            announced = true;
            tracing::error!(%reason, "unavailable: consuming paused until it is back (nothing is retried or dead-lettered meanwhile)");
        }
        waits = waits.saturating_add(1);
    }
}

/// The outcome of one job handled alone.
async fn outcome_alone<H: Handler>(
    handler: &H,
    body: &[u8],
    shutdown: &CancellationToken,
) -> Outcome {
    outcomes(handler, &[body], shutdown)
        .await
        .pop()
        .unwrap_or(Outcome::Unsettled)
}

/// The message a panic was raised with, as `panic!` and `expect` leave it.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A job whose body says what handling it does.
    struct Scripted(String);

    impl Job for Scripted {
        const QUEUE: &'static str = "scripted";

        fn decode(body: &[u8]) -> Result<Self, String> {
            match std::str::from_utf8(body) {
                Ok("undecodable") | Err(_) => Err("not a scripted job".to_owned()),
                Ok(text) => Ok(Self(text.to_owned())),
            }
        }
    }

    /// Records every batch it is given; a batch with a `panic` job panics, one with a `fail`
    /// job fails as a whole (permanently when alone), one with a `down` job fails transiently
    /// as a whole while `outage` lasts: the handler is unavailable for that many checks.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<Vec<String>>>,
        outage: Mutex<u32>,
    }

    impl Handler for Recorder {
        type Job = Scripted;
        const NAME: &'static str = "test";

        async fn handle(
            &self,
            jobs: Vec<Scripted>,
            _shutdown: &CancellationToken,
        ) -> Result<Vec<Outcome>, Failure> {
            let names: Vec<String> = jobs.iter().map(|j| j.0.clone()).collect();
            self.seen.lock().expect("not poisoned").push(names.clone());
            if names.iter().any(|n| n == "panic") {
                panic!("job {} is poison", names.join(","));
            }
            if names.iter().any(|n| n == "fail") {
                return Err(Failure::Permanent("bad data".to_owned()));
            }
            if names.iter().any(|n| n == "down") && *self.outage.lock().expect("not poisoned") > 0 {
                return Err(Failure::Transient("the store is away".to_owned()));
            }
            Ok(names
                .iter()
                .map(|n| match n.as_str() {
                    "later" => Outcome::Failed(Failure::Transient("ESI is away".to_owned())),
                    _ => Outcome::Done,
                })
                .collect())
        }

        async fn available(&self) -> bool {
            let mut outage = self.outage.lock().expect("not poisoned");
            *outage = outage.saturating_sub(1);
            *outage == 0
        }
    }

    async fn run(handler: &Recorder, bodies: &[&str]) -> Vec<Outcome> {
        let bodies: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
        outcomes(handler, &bodies, &CancellationToken::new()).await
    }

    fn seen(handler: &Recorder) -> Vec<Vec<String>> {
        handler.seen.lock().expect("not poisoned").clone()
    }

    #[tokio::test]
    async fn a_batch_is_handled_once_and_each_job_gets_its_outcome() {
        let handler = Recorder::default();
        let outcomes = run(&handler, &["a", "undecodable", "later", "b"]).await;
        assert_eq!(
            outcomes,
            vec![
                Outcome::Done,
                Outcome::Failed(Failure::Permanent("not a scripted job".to_owned())),
                Outcome::Failed(Failure::Transient("ESI is away".to_owned())),
                Outcome::Done,
            ]
        );
        assert_eq!(seen(&handler), vec![vec!["a", "later", "b"]]);
    }

    #[tokio::test]
    async fn a_panicking_job_is_singled_out_and_the_others_are_done() {
        let handler = Recorder::default();
        let outcomes = run(&handler, &["a", "panic", "b"]).await;
        assert_eq!(
            outcomes,
            vec![
                Outcome::Done,
                Outcome::Failed(Failure::Permanent(
                    "handler panicked: job panic is poison".to_owned()
                )),
                Outcome::Done,
            ]
        );
        assert_eq!(
            seen(&handler),
            vec![vec!["a", "panic", "b"], vec!["a"], vec!["panic"], vec!["b"]],
            "the batch, then each job alone"
        );
    }

    #[tokio::test]
    async fn a_batch_that_fails_as_a_whole_is_handled_job_by_job() {
        let handler = Recorder::default();
        let outcomes = run(&handler, &["a", "fail"]).await;
        assert_eq!(
            outcomes,
            vec![
                Outcome::Done,
                Outcome::Failed(Failure::Permanent("bad data".to_owned())),
            ]
        );
        assert_eq!(
            seen(&handler),
            vec![vec!["a", "fail"], vec!["a"], vec!["fail"]]
        );
    }

    #[tokio::test]
    async fn a_batch_failing_while_the_store_is_away_waits_whole_and_is_never_split() {
        let handler = Recorder::default();
        *handler.outage.lock().expect("not poisoned") = 3;
        let outcomes = run(&handler, &["a", "down"]).await;
        assert_eq!(outcomes, vec![Outcome::Done, Outcome::Done]);
        assert_eq!(
            seen(&handler),
            vec![vec!["a", "down"], vec!["a", "down"]],
            "tried again whole once available, not job by job"
        );
    }

    #[tokio::test]
    async fn shutdown_during_a_pause_leaves_the_batch_to_the_queue() {
        let handler = Recorder::default();
        *handler.outage.lock().expect("not poisoned") = u32::MAX;
        let shutdown = CancellationToken::new();
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stopping.cancel();
        });
        let bodies: Vec<&[u8]> = vec![b"down", b"undecodable"];
        let outcomes = outcomes(&handler, &bodies, &shutdown).await;
        assert_eq!(
            outcomes,
            vec![
                Outcome::Unsettled,
                Outcome::Failed(Failure::Permanent("not a scripted job".to_owned())),
            ]
        );
    }

    #[test]
    fn panic_messages_are_read_from_both_kinds_of_payload() {
        let payload = std::panic::catch_unwind(|| panic!("static text")).expect_err("panics");
        assert_eq!(panic_message(payload.as_ref()), "static text");
        let n = 7;
        let payload = std::panic::catch_unwind(|| panic!("formatted {n}")).expect_err("panics");
        assert_eq!(panic_message(payload.as_ref()), "formatted 7");
        let payload = std::panic::catch_unwind(|| std::panic::panic_any(5_u8)).expect_err("panics");
        assert_eq!(panic_message(payload.as_ref()), "a panic without a message");
    }
}
