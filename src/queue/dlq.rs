//! The dead-letter queue, for people: look at what failed and why, send it round again once the
//! cause is fixed, or drop it.

use lapin::Channel;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;

use super::{Publisher, REASON_HEADER, Topology, header_text};

/// A dead letter: the job's body as it was, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub reason: Option<String>,
}

/// Reads up to `limit` dead letters without removing them: they are returned to the queue, in
/// order, when this is done.
pub async fn list(
    channel: &Channel,
    topology: &Topology,
    limit: usize,
) -> lapin::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    let mut last_tag = None;
    while letters.len() < limit {
        let Some(message) = channel
            .basic_get(
                &topology.dead_letter_queue(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        let delivery = message.delivery;
        last_tag = Some(delivery.delivery_tag);
        letters.push(DeadLetter {
            reason: header_text(delivery.properties.headers().as_ref(), REASON_HEADER),
            body: delivery.data,
        });
    }
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
    }
    Ok(letters)
}

/// Moves up to `limit` dead letters back onto the work queue, each removed only after the
/// broker confirmed its copy. Returns how many moved. Only the letters there when it starts
/// are moved: a job that fails again while the replay runs (a worker is consuming) lands
/// behind them and stays, rather than going round for ever.
pub async fn replay(
    channel: &Channel,
    publisher: &Publisher,
    limit: usize,
) -> anyhow::Result<usize> {
    let waiting = channel
        .queue_declare(
            &publisher.topology().dead_letter_queue(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count();
    let limit = limit.min(usize::try_from(waiting).unwrap_or(usize::MAX));
    let mut moved = 0;
    while moved < limit {
        let Some(message) = channel
            .basic_get(
                &publisher.topology().dead_letter_queue(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        publisher.publish_raw(&message.delivery.data).await?;
        message.delivery.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    Ok(moved)
}

/// Deletes every dead letter; returns how many there were.
pub async fn purge(channel: &Channel, topology: &Topology) -> lapin::Result<u32> {
    channel
        .queue_purge(&topology.dead_letter_queue(), QueuePurgeOptions::default())
        .await
}
