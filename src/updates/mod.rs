//! `/updates`: every event of the bus (see `bus`) pushed to browsers on the local network, as
//! `{"type", "data", "timestamp"}` text messages. One Redis subscription per server process
//! brings the posted events; the `killmail` events are made here, from the live hub's killmails,
//! so every server process gives them in `seq` order with any gap filled from the store, and no
//! worker publishes a killmail twice. The socket only emits: what clients send is ignored but
//! shows they live; a client silent for the idle time is dropped. Each client has a bounded
//! queue: one that falls that far behind is cut off (1008), and nobody else waits for it.

pub mod management;
pub mod peer;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::bus::{Event, check_type};
use crate::filter::Filter;
use crate::live::Hub;
use crate::ws::accept;
use crate::ws::push::{self, Audience, Gate};

use self::peer::Peers;

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
    audience: Audience,
    gate: Gate,
    shutdown: CancellationToken,
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
                gate: Gate::new(settings.max_connections),
                settings,
                audience: Audience::default(),
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

    /// Hands `event` to every client, serialized once; a client whose queue is full is cut off.
    pub fn broadcast(&self, event: &Event) {
        let text: Arc<str> = serde_json::to_string(event)
            .expect("an event always serializes")
            .into();
        self.inner.audience.send_all(&text);
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

    /// Waits until every connection has said goodbye (see [`Gate::closed`]).
    pub async fn closed(&self) {
        self.inner.gate.closed().await;
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
        let permit = match self.inner.gate.enter() {
            Ok(permit) => permit,
            Err(full) => return full.into_response(),
        };
        // Registered before the handshake is answered: every event after it reaches the client.
        let listener = self.inner.audience.join(self.inner.settings.send_queue);
        let (idle, shutdown) = (self.inner.settings.idle, self.inner.shutdown.clone());
        accept(request, push::config(), None, move |socket| async move {
            // What the client says is ignored; that it speaks shows it lives.
            push::run(socket, listener, idle, shutdown, |_: &str| None).await;
            drop(permit);
        })
    }
}
