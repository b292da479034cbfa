//! `/updates`: every event of the bus (see `bus`) pushed to browsers on the local network, as
//! `{"type", "data", "timestamp"}` text messages. One Redis subscription per server process
//! brings the posted events; the `killmail` events are made here, from the live hub's killmails,
//! so every server process gives them in `seq` order with any gap filled from the store, and no
//! worker publishes a killmail twice. The socket only emits: what clients send is ignored but
//! shows they live; a client silent for the idle time is dropped. Each client has a bounded
//! queue: one that falls that far behind is cut off (1008), and nobody else waits for it.

pub mod management;
pub mod peer;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::backoff::Backoff;
use crate::bus::{Event, check_type};
use crate::filter::Filter;
use crate::live::Hub;
use crate::ws::{Socket, accept};

use self::peer::Peers;

/// The largest message a client may send (it is ignored anyway).
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// How long a closing connection may take to say goodbye to a client that does not read.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Settings {
    /// A client silent this long (no message, no answer to pings) is dropped.
    pub idle: Duration,
    /// Events queued for one client; one this far behind is cut off.
    pub send_queue: usize,
    /// Connections at once; more are refused with 503.
    pub max_connections: usize,
    pub peers: Peers,
}

/// The `/updates` side of a server; clone it freely.
#[derive(Clone)]
pub struct Updates {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    clients: Mutex<HashMap<u64, Client>>,
    next: AtomicU64,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
}

struct Client {
    queue: mpsc::Sender<Arc<str>>,
    /// Cancelled when an event did not fit in the queue.
    overflowed: CancellationToken,
}

/// Takes a client off the list when its connection ends.
struct Registered {
    updates: Updates,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.updates.clients().remove(&self.id);
    }
}

impl Updates {
    /// Starts passing on the events of `channel` and the hub's killmails until `shutdown`.
    pub async fn start(
        settings: Settings,
        redis_url: &str,
        channel: &str,
        hub: &Hub,
        shutdown: CancellationToken,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        let updates = Self {
            inner: Arc::new(Inner {
                connections: Arc::new(Semaphore::new(settings.max_connections)),
                settings,
                clients: Mutex::default(),
                next: AtomicU64::new(0),
                shutdown,
            }),
        };
        tokio::spawn(
            updates
                .clone()
                .relay_bus(client, channel.to_owned(), pubsub),
        );
        tokio::spawn(updates.clone().relay_killmails(hub.clone()));
        Ok(updates)
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Client>> {
        // Every change is one insert or one remove: a poisoned map is still consistent.
        self.inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `event` to every client, serialized once; a client whose queue is full is cut off.
    pub fn broadcast(&self, event: &Event) {
        let text: Arc<str> = serde_json::to_string(event)
            .expect("an event always serializes")
            .into();
        for client in self.clients().values() {
            if let Err(mpsc::error::TrySendError::Full(_)) = client.queue.try_send(text.clone()) {
                client.overflowed.cancel();
            }
        }
    }

    /// Passes on the bus channel's events, resubscribing after each outage.
    async fn relay_bus(self, client: redis::Client, channel: String, first: redis::aio::PubSub) {
        let shutdown = self.inner.shutdown.clone();
        let mut pubsub = Some(first);
        let mut failures = 0;
        loop {
            let subscribed = match pubsub.take() {
                Some(pubsub) => Ok(pubsub),
                None => {
                    async {
                        let mut pubsub = client.get_async_pubsub().await?;
                        pubsub.subscribe(&channel).await?;
                        Ok::<_, redis::RedisError>(pubsub)
                    }
                    .await
                }
            };
            match subscribed {
                Ok(pubsub) => {
                    if failures > 0 {
                        tracing::info!("the event bus subscription is back");
                    }
                    failures = 0;
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            message = messages.next() => match message {
                                Some(message) => self.relay(message.get_payload_bytes()),
                                None => break,
                            },
                        }
                    }
                    tracing::warn!("the event bus subscription was lost; resubscribing");
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%error, "subscribing to the event bus failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Backoff::RECONNECT.delay(failures.max(1))) => {}
            }
        }
    }

    /// One bus message: an event someone published, passed on if it is one.
    fn relay(&self, payload: &[u8]) {
        match serde_json::from_slice::<Event>(payload) {
            Ok(event) if check_type(&event.kind).is_ok() => self.broadcast(&event),
            Ok(_) | Err(_) => tracing::warn!("ignoring a malformed message on the event bus"),
        }
    }

    /// Gives every killmail the hub passes on as a `killmail` event.
    async fn relay_killmails(self, hub: Hub) {
        let killmails = hub.subscribe(Arc::new(Filter::default()), None);
        tokio::pin!(killmails);
        while let Some(added) = killmails.next().await {
            match added {
                Ok(added) => self.broadcast(&Event::killmail(&added)),
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "killmail events stopped");
                    return;
                }
            }
        }
    }

    /// Waits until every connection has said goodbye (after shutdown), at most `CLOSE_GRACE`.
    pub async fn closed(&self) {
        let all = u32::try_from(self.inner.settings.max_connections).unwrap_or(u32::MAX);
        let wait = self.inner.connections.acquire_many(all);
        let _ = tokio::time::timeout(CLOSE_GRACE, wait).await;
    }

    /// Upgrades a request from `socket` to an `/updates` connection, unless its client is not
    /// an internal peer (403), the server is full (503) or it is no WebSocket handshake (400).
    pub fn upgrade(&self, socket: IpAddr, request: Request) -> Response {
        if let Err(client) = self.inner.settings.peers.admit(socket, request.headers()) {
            let reason = match client {
                Some(client) => format!("/updates is for the local network; {client} is not on it"),
                None => {
                    "/updates is for the local network; X-Forwarded-For is unreadable".to_owned()
                }
            };
            return (
                StatusCode::FORBIDDEN,
                axum::Json(json!({ "error": reason })),
            )
                .into_response();
        }
        let Ok(permit) = Arc::clone(&self.inner.connections).try_acquire_owned() else {
            let reason = format!(
                "too many connections: this server holds at most {}",
                self.inner.settings.max_connections
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "error": reason })),
            )
                .into_response();
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE));
        // Registered before the handshake is answered: every event after it reaches the client.
        let (sender, queue) = mpsc::channel(self.inner.settings.send_queue);
        let overflowed = CancellationToken::new();
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        self.clients().insert(
            id,
            Client {
                queue: sender,
                overflowed: overflowed.clone(),
            },
        );
        let registered = Registered {
            updates: self.clone(),
            id,
        };
        accept(request, config, None, move |socket| async move {
            registered.updates.serve(socket, queue, overflowed).await;
            drop((registered, permit));
        })
    }

    async fn serve(
        &self,
        socket: Socket,
        mut queue: mpsc::Receiver<Arc<str>>,
        overflowed: CancellationToken,
    ) {
        let settings = &self.inner.settings;
        let (mut sink, mut stream) = socket.split();
        let idle = settings.idle;
        let ping_every = idle / 3;
        let mut pings = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut heard = Instant::now();
        let shutdown = self.inner.shutdown.clone();
        let too_slow = || {
            let reason = format!("too slow: {} events unread", settings.send_queue);
            Some((CloseCode::Policy, reason))
        };
        let close = loop {
            let outgoing = tokio::select! {
                biased;
                () = shutdown.cancelled() => break Some((CloseCode::Away, "server shutting down".to_owned())),
                () = overflowed.cancelled() => break too_slow(),
                _ = pings.tick() => {
                    if heard.elapsed() >= idle {
                        break Some((CloseCode::Away, format!("idle: nothing heard for {} s", idle.as_secs())));
                    }
                    Message::Ping(Default::default())
                }
                frame = stream.next() => match frame {
                    // Clients' messages are ignored; any frame shows the client lives.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                    Some(Ok(_)) => {
                        heard = Instant::now();
                        continue;
                    }
                },
                Some(text) = queue.recv() => Message::Text(text.as_ref().into()),
            };
            tokio::select! {
                biased;
                () = overflowed.cancelled() => break too_slow(),
                () = shutdown.cancelled() => break Some((CloseCode::Away, "server shutting down".to_owned())),
                sent = sink.send(outgoing) => if sent.is_err() { break None },
            }
        };
        drop(queue);
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
            // reading late may lose the close frame to a reset. A stopping server does not
            // wait.
            if closing && !shutdown.is_cancelled() {
                while let Some(Ok(_)) = stream.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
    }
}
