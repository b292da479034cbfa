//! RabbitMQ: the topology every process declares (idempotently), typed jobs, a publisher that
//! waits for the broker's confirm, what becomes of a job that cannot finish (retried later
//! through a delay queue, or dead-lettered with its reason), the connection a process keeps,
//! and the job runner every worker runs on.

mod connection;
pub mod dlq;
mod job;
mod publisher;
pub mod runner;

pub use connection::{Broker, Connector, ConsumerCancelled, connect};
pub use job::IngestJob;
pub use publisher::{PublishError, Publisher, RetryOutcome};

use std::borrow::Cow;
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

/// Header on a dead letter: why it can never succeed.
pub const REASON_HEADER: &str = "x-killreport-reason";
/// The longest reason put in a header, in bytes: a reason may quote its input, and a header
/// must not carry a whole killmail (or a 200 KB hash).
pub const MAX_REASON_BYTES: usize = 1024;
/// Header on a retried job: how many times it has failed so far.
pub const ATTEMPTS_HEADER: &str = "x-killreport-attempts";

/// Header on a job put back on its queue after a delivery that was never settled (the worker
/// died, or its connection was lost, while handling it): how many such deliveries it has had.
pub const DELIVERIES_HEADER: &str = "x-killreport-deliveries";

/// How long a job that failed transiently waits before its next attempt; after the last delay
/// it is dead-lettered, where `queue dlq replay` can send it round again. The default of
/// [`Topology::retry_delays`].
pub const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
];

/// Names of the exchange and queues one kind of job travels through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    /// The work queue; also the routing key jobs are published with.
    pub queue: String,
    /// The retry ladder: one delay queue per attempt ([`RETRY_DELAYS`] unless told otherwise).
    pub retry_delays: Vec<Duration>,
}

impl Topology {
    pub fn new(exchange: &str, queue: &str) -> Self {
        Self {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
            retry_delays: RETRY_DELAYS.to_vec(),
        }
    }

    /// The same topology with another retry ladder (tests make it short); an empty one keeps
    /// the default.
    #[must_use]
    pub fn with_retry_delays(mut self, delays: Vec<Duration>) -> Self {
        if !delays.is_empty() {
            self.retry_delays = delays;
        }
        self
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// The delay queue of retry `attempt` (counted from 0), named by its delay.
    pub fn retry_queue(&self, attempt: usize) -> String {
        let delay = self.retry_delays[attempt];
        if delay.subsec_millis() == 0 {
            format!("{}.retry.{}s", self.queue, delay.as_secs())
        } else {
            format!("{}.retry.{}ms", self.queue, delay.as_millis())
        }
    }

    /// Declares the exchange, the work queue, its retry queues (each a fixed delay whose expired
    /// messages go back to the work queue) and its dead-letter queue. Safe to repeat.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                &self.exchange,
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        // A message the broker itself rejects (nack without requeue) still lands in the DLQ.
        let mut work_args = FieldTable::default();
        work_args.insert("x-dead-letter-exchange".into(), string(""));
        work_args.insert(
            "x-dead-letter-routing-key".into(),
            string(&self.dead_letter_queue()),
        );
        channel
            .queue_declare(&self.queue, durable, work_args)
            .await?;
        channel
            .queue_bind(
                &self.queue,
                &self.exchange,
                &self.queue,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(&self.dead_letter_queue(), durable, FieldTable::default())
            .await?;
        for (attempt, delay) in self.retry_delays.iter().enumerate() {
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            );
            args.insert("x-dead-letter-exchange".into(), string(&self.exchange));
            args.insert("x-dead-letter-routing-key".into(), string(&self.queue));
            channel
                .queue_declare(&self.retry_queue(attempt), durable, args)
                .await?;
        }
        Ok(())
    }
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// `reason`, cut to at most [`MAX_REASON_BYTES`] on a character boundary, with how much was
/// left out.
pub fn bounded_reason(reason: &str) -> Cow<'_, str> {
    if reason.len() <= MAX_REASON_BYTES {
        return Cow::Borrowed(reason);
    }
    let mut end = MAX_REASON_BYTES - 40;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let left_out = reason.len() - end;
    Cow::Owned(format!("{}… ({left_out} more bytes)", &reason[..end]))
}

/// Reads a numeric header of a delivery, if it is there.
pub fn header_int(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Reads a text header of a delivery, if it is there.
pub fn header_text(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary_and_says_so() {
        assert_eq!(bounded_reason("short"), "short");
        let long = format!("bad hash: {}", "é".repeat(100_000));
        let cut = bounded_reason(&long);
        assert!(cut.len() <= MAX_REASON_BYTES, "{} bytes", cut.len());
        assert!(cut.starts_with("bad hash: éé"));
        assert!(cut.ends_with("more bytes)"), "{cut}");
    }
}
