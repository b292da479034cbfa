//! Sockets the server pushes messages to (`/updates`, zKillboard's `/websocket/`): an
//! [`Audience`] of clients, each with a queue bounded in messages and bytes that is filled
//! without waiting (a client whose queue is full is cut off with 1008, and nobody else waits for
//! it), and [`run`], one connection's loop: it writes the queue to the socket, pings, drops a
//! client silent for the idle time (1001) or one that has not subscribed in time (1000),
//! answers what the client says through a [`Client`], and closes with 1001 at shutdown; a
//! [`Gate`] holds their number, in all and (with [`Peers`]) from one address, and waits for
//! their goodbyes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use super::Socket;
use super::outbox::{self, Bound};
use super::peers::{PeerPlace, Peers, TooMany};

/// How long a closing connection may take to say goodbye to a client that does not read.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The largest message a client may send to a pushed socket.
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;

/// Bytes queued for one pushed client, at most, whatever its queue's length in messages: a
/// `killstream` client is sent whole killmails, the largest a few hundred kilobytes.
pub const MAX_QUEUED_BYTES: usize = 4 * 1024 * 1024;

/// A pushed socket's settings: what clients send is small, so it is read in small pieces (the
/// default read buffer, 128 KiB, was most of an idle connection's memory).
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(super::READ_BUFFER)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// How many connections an endpoint holds at once, and from one address when given
/// [`Peers`]; clone it freely.
#[derive(Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: usize,
    peers: Option<Peers>,
}

/// A connection's place at a [`Gate`], held until dropped.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    _peer: Option<PeerPlace>,
}

impl Gate {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            peers: None,
        }
    }

    /// This gate, also counting connections by address with `peers` (shared with others).
    pub fn with_peers(mut self, peers: Peers) -> Self {
        self.peers = Some(peers);
        self
    }

    /// A place for one more connection from `ip` (when known): refused with 503 when the
    /// endpoint is full, 429 when the address holds as many as it may.
    pub fn enter_from(&self, ip: Option<IpAddr>) -> Result<Place, Refused> {
        let peer = match (&self.peers, ip) {
            (Some(peers), Some(ip)) => Some(peers.enter(ip).map_err(Refused::Peer)?),
            _ => None,
        };
        let permit = self.enter().map_err(Refused::Full)?;
        Ok(Place {
            _permit: permit,
            _peer: peer,
        })
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

/// Why a [`Gate`] refused a connection.
#[derive(Debug)]
pub enum Refused {
    Full(Full),
    Peer(TooMany),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Full(full) => full.into_response(),
            Refused::Peer(too_many) => too_many.into_response(),
        }
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
    clients: Arc<Mutex<HashMap<u64, outbox::Sender<Arc<str>>>>>,
    next: Arc<AtomicU64>,
}

/// One client's side: its id, its queue, and its place in the audience until dropped.
pub struct Listener {
    pub id: u64,
    queue: outbox::Receiver<Arc<str>>,
    overflowed: CancellationToken,
    bound: Bound,
    audience: Audience,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.audience.clients().remove(&self.id);
    }
}

impl Audience {
    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, outbox::Sender<Arc<str>>>> {
        // Every change is one insert or one remove: a poisoned map is still consistent.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new client with a queue of `capacity` messages (and [`MAX_QUEUED_BYTES`]); from now
    /// on it receives what is sent.
    pub fn join(&self, capacity: usize) -> Listener {
        let bound = Bound {
            messages: capacity,
            bytes: MAX_QUEUED_BYTES,
        };
        let (queue, receiver) = outbox::queue(bound);
        let overflowed = queue.overflowed().clone();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients().insert(id, queue);
        Listener {
            id,
            queue: receiver,
            overflowed,
            bound,
            audience: self.clone(),
        }
    }

    /// Queues `text` for every client.
    pub fn send_all(&self, text: &Arc<str>) {
        for client in self.clients().values() {
            client.offer(Arc::clone(text));
        }
    }

    /// Queues `text` for each of `ids` still connected.
    pub fn send_to(&self, ids: impl IntoIterator<Item = u64>, text: &Arc<str>) {
        let clients = self.clients();
        for id in ids {
            if let Some(client) = clients.get(&id) {
                client.offer(Arc::clone(text));
            }
        }
    }
}

/// What a pushed socket's client says, and whether it has asked for anything yet.
pub trait Client {
    /// Answers one text message; the reply, if any, goes out at once.
    fn answer(&mut self, text: &str) -> Option<String>;

    /// How long the client may go without a subscription before it is closed; `None` when it
    /// needs none (it is sent everything).
    fn subscribe_within(&self) -> Option<Duration> {
        None
    }

    fn subscribed(&self) -> bool {
        true
    }
}

/// A client that needs no subscription, answering with the closure.
impl<F: FnMut(&str) -> Option<String>> Client for F {
    fn answer(&mut self, text: &str) -> Option<String> {
        self(text)
    }
}

/// Serves one connection until it ends: the listener's queue out, pings every third of `idle`,
/// the client's text messages to `client` (whose reply, if any, goes out at once); a client
/// that has sent nothing, not even a pong, for `idle` is closed, and so is one without a
/// subscription for its `subscribe_within`.
pub async fn run(
    socket: Socket,
    mut listener: Listener,
    idle: Duration,
    shutdown: CancellationToken,
    mut client: impl Client,
) {
    let (mut sink, mut stream) = socket.split();
    let ping_every = (idle / 3).max(Duration::from_millis(10));
    let mut pings = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut heard = Instant::now();
    let overflowed = listener.overflowed.clone();
    let bound = listener.bound;
    let too_slow = || {
        let reason = format!(
            "too slow: {} messages or {} bytes unread",
            bound.messages, bound.bytes
        );
        Some((CloseCode::Policy, reason))
    };
    let going_away = || Some((CloseCode::Away, "server shutting down".to_owned()));
    // Since when the client has had no subscription, while it has none.
    let mut unsubscribed = Some(Instant::now());
    let within = client.subscribe_within();
    let far = Duration::from_secs(86_400 * 365);
    let close = loop {
        let deadline = unsubscribed.unwrap_or_else(Instant::now) + within.unwrap_or(far);
        let outgoing = tokio::select! {
            biased;
            () = shutdown.cancelled() => break going_away(),
            () = overflowed.cancelled() => break too_slow(),
            () = tokio::time::sleep_until(deadline), if within.is_some() && unsubscribed.is_some() => {
                let seconds = within.unwrap_or_default().as_secs();
                let reason = format!("no subscription for {seconds} s; connect again to subscribe");
                break Some((CloseCode::Normal, reason));
            }
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
                        Message::Text(text) => client.answer(text.as_str()),
                        _ => None,
                    };
                    unsubscribed = match (client.subscribed(), unsubscribed) {
                        (true, _) => None,
                        (false, since) => Some(since.unwrap_or_else(Instant::now)),
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
