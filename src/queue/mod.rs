//! RabbitMQ: the topology every process declares (idempotently), typed jobs, a publisher that
//! waits for the broker's confirm, and what a consumer does with a job it cannot finish: retry
//! it later through a delay queue, or dead-letter it with its reason.

pub mod dlq;
mod job;
mod publisher;

pub use job::IngestJob;
pub use publisher::{PublishError, Publisher, RetryOutcome};

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

/// Header on a dead letter: why it can never succeed.
pub const REASON_HEADER: &str = "x-killreport-reason";
/// Header on a retried job: how many times it has failed so far.
pub const ATTEMPTS_HEADER: &str = "x-killreport-attempts";

/// How long a job that failed transiently waits before its next attempt; after the last delay
/// it is dead-lettered, where `queue dlq replay` can send it round again.
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
}

impl Topology {
    pub fn new(exchange: &str, queue: &str) -> Self {
        Self {
            exchange: exchange.to_owned(),
            queue: queue.to_owned(),
        }
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    pub fn retry_queue(&self, attempt: usize) -> String {
        format!("{}.retry.{}s", self.queue, RETRY_DELAYS[attempt].as_secs())
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
        for (attempt, delay) in RETRY_DELAYS.iter().enumerate() {
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

/// Opens a connection to RabbitMQ.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(url, properties).await
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
