//! `/updates`: every event of the event log (see `event_log`: posted events and every stored
//! killmail as a `killmail` event) pushed to browsers on the local network. Over a WebSocket,
//! as `{"type", "data", "timestamp"}` text messages: the socket only emits; what clients send
//! is ignored but shows they live; a client silent for the idle time is dropped; each client
//! has a bounded queue, and one that falls that far behind is cut off (1008) while nobody else
//! waits for it. Asked for `text/event-stream`, as Server-Sent Events (see `sse`), each with
//! its cursor as the `id`, resuming after `Last-Event-ID`.

pub mod management;
pub mod peer;
mod sse;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bus::Event;
use crate::event_log::EventLog;
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
    log: EventLog,
    audience: Audience,
    gate: Gate,
    shutdown: CancellationToken,
}

impl Updates {
    /// Starts passing on the events of `log` to WebSocket clients until `shutdown`.
    pub fn start(settings: Settings, log: EventLog, shutdown: CancellationToken) -> Self {
        let updates = Self {
            inner: Arc::new(Inner {
                gate: Gate::new(settings.max_connections),
                settings,
                log,
                audience: Audience::default(),
                shutdown,
            }),
        };
        tokio::spawn(updates.clone().relay());
        updates
    }

    /// Hands `event` to every WebSocket client, serialized once; a client whose queue is full
    /// is cut off.
    pub fn broadcast(&self, event: &Event) {
        let text: Arc<str> = serde_json::to_string(event)
            .expect("an event always serializes")
            .into();
        self.inner.audience.send_all(&text);
    }

    /// Passes every event of the log on to the WebSocket clients, live.
    async fn relay(self) {
        let events = self.inner.log.subscribe(None, None);
        tokio::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok((_, event)) => self.broadcast(&event),
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "/updates events stopped");
                    return;
                }
            }
        }
    }

    /// Waits until every connection has said goodbye (see [`Gate::closed`]).
    pub async fn closed(&self) {
        self.inner.gate.closed().await;
    }

    /// Answers a request from `socket`: refused unless its client is an internal peer (403)
    /// or while the server is full (503); Server-Sent Events when its `Accept` asks for
    /// `text/event-stream` (and it is no WebSocket handshake); otherwise a WebSocket upgrade
    /// (400 if it is no handshake).
    pub async fn serve(&self, socket: IpAddr, request: Request) -> Response {
        if let Err(client) = self.inner.settings.peers.admit(socket, request.headers()) {
            let reason = match client {
                Some(client) => format!("/updates is for the local network; {client} is not on it"),
                None => {
                    "/updates is for the local network; X-Forwarded-For is unreadable".to_owned()
                }
            };
            return refusal(StatusCode::FORBIDDEN, &reason);
        }
        let permit = match self.inner.gate.enter() {
            Ok(permit) => permit,
            Err(full) => return full.into_response(),
        };
        if sse::asked_for(request.headers()) && !request.headers().contains_key(header::UPGRADE) {
            return sse::serve(self, permit, request.headers()).await;
        }
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

/// A refusal with its reason as JSON.
fn refusal(status: StatusCode, reason: &str) -> Response {
    (status, axum::Json(json!({ "error": reason }))).into_response()
}
