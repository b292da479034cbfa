//! Publishing with publisher confirms: a publish returns only once the broker has taken
//! responsibility for the message, so a caller can advance a cursor or ack a delivery safely.
//! Every publish is `mandatory`: a message that no queue took comes back and is an error, not a
//! success; and a confirm that does not come within [`CONFIRM_TIMEOUT`] is one too.

use std::time::Duration;

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection};

use super::{
    ATTEMPTS_HEADER, DELIVERIES_HEADER, IngestJob, REASON_HEADER, Topology, bounded_reason,
};

/// How long a publish waits for the broker's confirm unless told otherwise.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ returned the message: no queue took it ({code} {text} for {routing_key:?})")]
    Returned {
        code: u16,
        text: String,
        routing_key: String,
    },
    #[error("RabbitMQ did not confirm the message within {0:?}")]
    Unconfirmed(Duration),
}

/// What became of a job handed to [`Publisher::retry_later`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Queued to run again after this delay.
    Delayed(Duration),
    /// Out of attempts: dead-lettered.
    DeadLettered,
}

#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    topology: Topology,
    confirm_timeout: Duration,
}

impl Publisher {
    /// A connection named `name` on the broker at `url`, and a publisher on it for
    /// `topology` (which it declares): what a process that only publishes needs.
    pub async fn open(
        url: &str,
        name: &str,
        topology: Topology,
    ) -> anyhow::Result<(Connection, Publisher)> {
        let connection = super::connect(url, name)
            .await
            .context("connecting to RabbitMQ")?;
        let publisher = Publisher::new(&connection, topology)
            .await
            .context("declaring the RabbitMQ topology")?;
        Ok((connection, publisher))
    }

    /// Opens a confirm-mode channel on `connection` and declares `topology`.
    pub async fn new(connection: &Connection, topology: Topology) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology.declare(&channel).await?;
        Ok(Self {
            channel,
            topology,
            confirm_timeout: CONFIRM_TIMEOUT,
        })
    }

    /// The same publisher, waiting `timeout` for each confirm.
    #[must_use]
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Publishes a job to the work queue and waits for the broker's confirm.
    pub async fn publish(&self, job: &IngestJob) -> Result<(), PublishError> {
        self.publish_body(
            &self.topology.exchange,
            &self.topology.queue,
            &job.encode(),
            FieldTable::default(),
        )
        .await
    }

    /// Publishes any body as a job, as `queue dlq replay` and tests do.
    pub async fn publish_raw(&self, body: &[u8]) -> Result<(), PublishError> {
        self.publish_body(
            &self.topology.exchange,
            &self.topology.queue,
            body,
            FieldTable::default(),
        )
        .await
    }

    /// Puts a body straight into the dead-letter queue with its reason.
    pub async fn dead_letter_body(&self, body: &[u8], reason: &str) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(bounded_reason(reason).as_ref())),
        );
        self.publish_body("", &self.topology.dead_letter_queue(), body, headers)
            .await
    }

    /// Dead-letters a delivery with its reason, then acks it.
    pub async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), PublishError> {
        self.dead_letter_body(&delivery.data, reason).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Sends a delivery that failed transiently to the retry queue of its next attempt (or to
    /// the dead-letter queue when it has had them all), then acks it.
    pub async fn retry_later(
        &self,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<RetryOutcome, PublishError> {
        let attempts =
            super::header_int(delivery.properties.headers().as_ref(), ATTEMPTS_HEADER).unwrap_or(0);
        let attempt = usize::try_from(attempts).unwrap_or(usize::MAX);
        let outcome = match self.topology.retry_delays.get(attempt) {
            Some(delay) => {
                let mut headers = FieldTable::default();
                headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongLongInt(attempts + 1));
                headers.insert(
                    REASON_HEADER.into(),
                    AMQPValue::LongString(LongString::from(bounded_reason(reason).as_ref())),
                );
                self.publish_body(
                    "",
                    &self.topology.retry_queue(attempt),
                    &delivery.data,
                    headers,
                )
                .await?;
                RetryOutcome::Delayed(*delay)
            }
            None => {
                let reason = format!("gave up after {attempts} attempts: {reason}");
                self.dead_letter_body(&delivery.data, &reason).await?;
                RetryOutcome::DeadLettered
            }
        };
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(outcome)
    }

    /// Puts a delivery back at the end of the work queue with `deliveries` in its headers (all
    /// others kept), then acks it; see the job runner's delivery limit.
    pub async fn requeue_counted(
        &self,
        delivery: &Delivery,
        deliveries: i64,
    ) -> Result<(), PublishError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(DELIVERIES_HEADER.into(), AMQPValue::LongLongInt(deliveries));
        self.publish_body("", &self.topology.queue, &delivery.data, headers)
            .await?;
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn publish_body(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        headers: FieldTable,
    ) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let confirming = async {
            let confirm = self
                .channel
                .basic_publish(exchange, routing_key, options, body, properties)
                .await?;
            confirm.await
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirming)
            .await
            .map_err(|_| PublishError::Unconfirmed(self.confirm_timeout))??;
        match confirmation {
            Confirmation::Nack(_) => Err(PublishError::Nacked),
            Confirmation::Ack(Some(returned)) => Err(PublishError::Returned {
                code: returned.reply_code,
                text: returned.reply_text.to_string(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        }
    }
}
