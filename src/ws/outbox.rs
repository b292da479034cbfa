//! A client's send queue, as its session and its subscriptions' executions (or a pushed
//! socket's audience) see it: bounded in messages and in bytes, never waited on, so one client
//! that does not read cannot hold up an execution shared with others; a message that does not
//! fit marks the client as too slow, and its session closes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::protocol::{Outgoing, Protocol};

/// How many bytes a queued message holds the client's place for.
pub trait Weight {
    fn bytes(&self) -> usize;
}

impl Weight for Arc<str> {
    fn bytes(&self) -> usize {
        self.len()
    }
}

/// How much one client may have waiting.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub messages: usize,
    pub bytes: usize,
}

/// The filling side of a client's queue; clone it freely.
pub struct Sender<T> {
    sender: mpsc::Sender<T>,
    queued: Arc<AtomicUsize>,
    bound: Bound,
    /// Cancelled when a message did not fit: the client is too slow and is closed.
    overflowed: CancellationToken,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
            queued: Arc::clone(&self.queued),
            bound: self.bound,
            overflowed: self.overflowed.clone(),
        }
    }
}

/// The draining side: the connection's writer.
pub struct Receiver<T> {
    receiver: mpsc::Receiver<T>,
    queued: Arc<AtomicUsize>,
}

/// A queue holding at most `bound` (at least one message, of any size).
pub fn queue<T: Weight>(bound: Bound) -> (Sender<T>, Receiver<T>) {
    let (sender, receiver) = mpsc::channel(bound.messages.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    let sender = Sender {
        sender,
        queued: Arc::clone(&queued),
        bound,
        overflowed: CancellationToken::new(),
    };
    (sender, Receiver { receiver, queued })
}

impl<T: Weight> Sender<T> {
    /// Queues a message without waiting; one that does not fit marks the client as too slow.
    pub fn offer(&self, message: T) {
        let bytes = message.bytes();
        let before = self.queued.fetch_add(bytes, Ordering::Relaxed);
        // A first message is taken whatever its size: the bound is on what waits behind it.
        let fits = before == 0 || before + bytes <= self.bound.bytes;
        if !fits || self.sender.try_send(message).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            if !self.sender.is_closed() {
                self.overflowed.cancel();
            }
        }
    }

    /// Cancelled once a message did not fit.
    pub fn overflowed(&self) -> &CancellationToken {
        &self.overflowed
    }
}

impl<T: Weight> Receiver<T> {
    pub async fn recv(&mut self) -> Option<T> {
        let message = self.receiver.recv().await?;
        self.queued.fetch_sub(message.bytes(), Ordering::Relaxed);
        Some(message)
    }

    pub fn try_recv(&mut self) -> Option<T> {
        let message = self.receiver.try_recv().ok()?;
        self.queued.fetch_sub(message.bytes(), Ordering::Relaxed);
        Some(message)
    }
}

/// What a GraphQL client's queue holds, by the bytes its text takes.
impl Weight for Outgoing {
    fn bytes(&self) -> usize {
        match self {
            Outgoing::Text(text) | Outgoing::Event { text, .. } => text.len(),
            Outgoing::Error { id, payload } => id.len() + payload.len(),
            Outgoing::Complete { id } => id.len(),
            Outgoing::Pong(Some(payload)) => payload.to_string().len(),
            Outgoing::Ack | Outgoing::KeepAlive | Outgoing::Pong(None) => 0,
        }
    }
}

/// The sending side of a GraphQL client's queue; clone it freely.
#[derive(Clone)]
pub struct Outbox {
    sender: Sender<Outgoing>,
    protocol: Protocol,
}

impl Outbox {
    /// A queue of at most `bound` for a client speaking `protocol`, and its receiving end
    /// (the connection's writer).
    pub fn new(bound: Bound, protocol: Protocol) -> (Self, Receiver<Outgoing>) {
        let (sender, queue) = queue(bound);
        (Self { sender, protocol }, queue)
    }

    /// Queues a message without waiting; a full queue marks the client as too slow.
    pub fn push(&self, message: Outgoing) {
        self.sender.offer(message);
    }

    /// The protocol the client speaks, which the messages queued for it are written in.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Cancelled once a message did not fit.
    pub fn overflowed(&self) -> &CancellationToken {
        self.sender.overflowed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: usize) -> Arc<str> {
        "x".repeat(bytes).into()
    }

    #[tokio::test]
    async fn a_queue_overflows_on_bytes_as_on_messages_and_drains_both() {
        let (sender, mut receiver) = queue::<Arc<str>>(Bound {
            messages: 10,
            bytes: 1000,
        });
        // A first message goes in whatever its size.
        sender.offer(text(5000));
        assert!(!sender.overflowed().is_cancelled());
        assert_eq!(receiver.recv().await.map(|t| t.len()), Some(5000));
        sender.offer(text(600));
        sender.offer(text(400));
        assert!(!sender.overflowed().is_cancelled());
        sender.offer(text(1));
        assert!(sender.overflowed().is_cancelled(), "1001 bytes waiting");
        assert_eq!(receiver.try_recv().map(|t| t.len()), Some(600));
        assert_eq!(receiver.try_recv().map(|t| t.len()), Some(400));
        assert!(receiver.try_recv().is_none());

        let (sender, _receiver) = queue::<Arc<str>>(Bound {
            messages: 2,
            bytes: 1000,
        });
        for _ in 0..3 {
            sender.offer(text(1));
        }
        assert!(sender.overflowed().is_cancelled(), "3 messages waiting");
    }
}
