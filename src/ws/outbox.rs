//! A client's send queue, as its session and its subscriptions' executions see it: bounded,
//! never waited on, so one client that does not read cannot hold up an execution shared with
//! others; a message that does not fit marks the client as too slow, and its session closes it.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{Outgoing, Protocol};

/// The sending side of a client's queue; clone it freely.
#[derive(Clone)]
pub struct Outbox {
    sender: mpsc::Sender<Outgoing>,
    protocol: Protocol,
    /// Cancelled when a message did not fit: the client is too slow and is closed.
    overflowed: CancellationToken,
}

impl Outbox {
    /// A queue of `capacity` messages for a client speaking `protocol`, and its receiving end
    /// (the connection's writer).
    pub fn new(capacity: usize, protocol: Protocol) -> (Self, mpsc::Receiver<Outgoing>) {
        let (sender, queue) = mpsc::channel(capacity);
        let outbox = Self {
            sender,
            protocol,
            overflowed: CancellationToken::new(),
        };
        (outbox, queue)
    }

    /// Queues a message without waiting; a full queue marks the client as too slow.
    pub fn push(&self, message: Outgoing) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.sender.try_send(message) {
            self.overflowed.cancel();
        }
    }

    /// The protocol the client speaks, which the messages queued for it are written in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Cancelled once a message did not fit.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.overflowed
    }
}
