//! Sockets the server pushes messages to (`/updates`, zKillboard's `/websocket/`): an
//! [`Audience`] of clients, each with a bounded queue that is filled without waiting (a client
//! whose queue is full is cut off with 1008, and nobody else waits for it), and [`run`], one
//! connection's loop: it writes the queue to the socket, pings, drops a client silent for the
//! idle time (1001), answers what the client says through a callback, and closes with 1001 at
//! shutdown; a [`Gate`] holds their number and waits for their goodbyes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::Socket;

/// How long a closing connection may take to say goodbye to a client that does not read.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The largest message a client may send to a pushed socket.
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;

/// A pushed socket's settings: what clients send is small, so it is read in small pieces (the
/// default read buffer, 128 KiB, was most of an idle connection's memory).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(super::READ_BUFFER)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// How many connections an endpoint holds at once; clone it freely.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Gate {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A place for one more connection, held until dropped.
    pub fn enter(&self) -> Result<OwnedSemaphorePermit, Full> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| Full(self.max))
    }

    /// Waits until every connection has said goodbye (after shutdown: its 1001 is sent), at
    /// most `CLOSE_GRACE`; the HTTP server's graceful shutdown does not wait for upgraded
    /// connections.
    pub async fn closed(&self) {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(CLOSE_GRACE, self.permits.acquire_many(all)).await;
    }
}

/// No place left at a [`Gate`] holding this many: answered 503 with the reason.
#[derive(Debug)]
pub struct Full(usize);

impl IntoResponse for Full {
    fn into_response(self) -> Response {
        let reason = format!("too many connections: this server holds at most {}", self.0);
        let body = axum::Json(json!({ "error": reason }));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Every connected client's queue; clone it freely.
#[derive(Clone, Default)]
pub struct Audience {
    clients: Arc<Mutex<HashMap<u64, Client>>>,
    next: Arc<AtomicU64>,
}

struct Client {
    queue: mpsc::Sender<Arc<str>>,
    /// Cancelled when a message did not fit in the queue.
    overflowed: CancellationToken,
}

/// One client's side: its id, its queue, and its place in the audience until dropped.
pub struct Listener {
    pub id: u64,
    queue: mpsc::Receiver<Arc<str>>,
    overflowed: CancellationToken,
    capacity: usize,
    audience: Audience,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.audience.clients().remove(&self.id);
    }
}

impl Audience {
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Client>> {
        // Every change is one insert or one remove: a poisoned map is still consistent.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new client with a queue of `capacity` messages; from now on it receives what is sent.
    pub fn join(&self, capacity: usize) -> Listener {
        let (queue, receiver) = mpsc::channel(capacity.max(1));
        let overflowed = CancellationToken::new();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients().insert(
            id,
            Client {
                queue,
                overflowed: overflowed.clone(),
            },
        );
        Listener {
            id,
            queue: receiver,
            overflowed,
            capacity,
            audience: self.clone(),
        }
    }

    /// Queues `text` for every client.
    pub fn send_all(&self, text: &Arc<str>) {
        for client in self.clients().values() {
            client.offer(text);
        }
    }

    /// Queues `text` for each of `ids` still connected.
    pub fn send_to(&self, ids: impl IntoIterator<Item = u64>, text: &Arc<str>) {
        let clients = self.clients();
        for id in ids {
            if let Some(client) = clients.get(&id) {
                client.offer(text);
            }
        }
    }
}

impl Client {
    fn offer(&self, text: &Arc<str>) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(Arc::clone(text)) {
            self.overflowed.cancel();
        }
    }
}

/// Serves one connection until it ends: the listener's queue out, pings every third of `idle`,
/// the client's text messages to `answer` (whose reply, if any, goes out at once); a client
/// that has sent nothing, not even a pong, for `idle` is closed.
pub async fn run(
    socket: Socket,
    mut listener: Listener,
    idle: Duration,
    shutdown: CancellationToken,
    mut answer: impl FnMut(&str) -> Option<String>,
) {
    let (mut sink, mut stream) = socket.split();
    let ping_every = (idle / 3).max(Duration::from_millis(10));
    let mut pings = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut heard = Instant::now();
    let overflowed = listener.overflowed.clone();
    let capacity = listener.capacity;
    let too_slow = || {
        let reason = format!("too slow: {capacity} messages unread");
        Some((CloseCode::Policy, reason))
    };
    let going_away = || Some((CloseCode::Away, "server shutting down".to_owned()));
    let close = loop {
        let outgoing = tokio::select! {
            biased;
            () = shutdown.cancelled() => break going_away(),
            () = overflowed.cancelled() => break too_slow(),
            _ = pings.tick() => {
                if heard.elapsed() >= idle {
                    let reason = format!("idle: nothing heard for {} s", idle.as_secs());
                    break Some((CloseCode::Away, reason));
                }
                Message::Ping(Default::default())
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                Some(Ok(message)) => {
                    heard = Instant::now();
                    let reply = match message {
                        Message::Text(text) => answer(text.as_str()),
                        _ => None,
                    };
                    match reply {
                        Some(reply) => Message::Text(reply.into()),
                        None => continue,
                    }
                }
            },
            Some(text) = listener.queue.recv() => Message::Text(text.as_ref().into()),
        };
        tokio::select! {
            biased;
            () = overflowed.cancelled() => break too_slow(),
            () = shutdown.cancelled() => break going_away(),
            sent = sink.send(outgoing) => if sent.is_err() { break None },
        }
    };
    drop(listener);
    let closing = close.is_some();
    let goodbye = async {
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            sink.send(Message::Close(Some(frame))).await.ok();
        }
        sink.close().await.ok();
        // The closing handshake: the client's answer before the socket goes, or a client
        // reading late may lose the close frame to a reset. A stopping server does not wait.
        if closing && !shutdown.is_cancelled() {
            while let Some(Ok(_)) = stream.next().await {}
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
}
