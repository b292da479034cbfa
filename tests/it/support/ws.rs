//! A minimal GraphQL-over-WebSocket client speaking either protocol, as Apollo Client
//! (`graphql-transport-ws`) or subscriptions-transport-ws (`graphql-ws`) would, and a
//! `killmailAdded` subscriber that resumes with `after` whenever its connection drops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

/// The GraphQL WebSocket endpoint of the server at `base` (`http://host:port`).
pub fn graphql_url(base: &str) -> String {
    format!("{}/graphql", base.replace("http://", "ws://"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    TransportWs,
    LegacyWs,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::TransportWs => "graphql-transport-ws",
            Protocol::LegacyWs => "graphql-ws",
        }
    }
}

pub struct WsClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    protocol: Protocol,
}

impl WsClient {
    /// Connects and completes `connection_init` / `connection_ack`.
    pub async fn connect(url: &str, protocol: Protocol) -> Self {
        Self::try_connect(url, protocol)
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Self::connect`], saying what went wrong instead of panicking (the server may be down).
    pub async fn try_connect(url: &str, protocol: Protocol) -> Result<Self, String> {
        let mut client = tokio::time::timeout(PATIENCE, Self::open(url, protocol))
            .await
            .map_err(|_| "WebSocket connect timed out".to_owned())?
            .map_err(|e| format!("WebSocket connect: {e}"))?;
        client
            .try_send(json!({"type": "connection_init", "payload": {}}))
            .await?;
        let ack = client.try_receive().await?;
        if ack["type"] != "connection_ack" {
            return Err(format!("not a connection_ack: {ack}"));
        }
        Ok(client)
    }

    /// Completes the WebSocket handshake only; the server's refusal is the error.
    pub async fn open(
        url: &str,
        protocol: Protocol,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request().expect("a WebSocket URL");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocol.name().parse().expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request).await?;
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol.name())
        );
        Ok(Self { socket, protocol })
    }

    /// Sends `connection_init` and expects `connection_ack`.
    pub async fn init(&mut self) {
        self.send(json!({"type": "connection_init", "payload": {}}))
            .await;
        let ack = self.receive().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
    }

    pub async fn send(&mut self, message: Value) {
        self.send_frame(Message::Text(message.to_string().into()))
            .await;
    }

    /// Sends any frame as it is, however wrong.
    pub async fn send_frame(&mut self, frame: Message) {
        self.socket.send(frame).await.expect("send");
    }

    async fn try_send(&mut self, message: Value) -> Result<(), String> {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// The next protocol message that is not a keepalive.
    pub async fn receive(&mut self) -> Value {
        self.try_receive()
            .await
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Self::receive`], saying why nothing came (a timeout, a closed socket) instead of
    /// panicking.
    pub async fn try_receive(&mut self) -> Result<Value, String> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .map_err(|_| format!("no message within {PATIENCE:?}"))?
                .ok_or("the socket closed")?
                .map_err(|e| format!("reading a frame: {e}"))?;
            let text = match frame {
                Message::Text(text) => text,
                Message::Close(frame) => return Err(format!("closed by the server: {frame:?}")),
                _ => continue,
            };
            let message: Value =
                serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?;
            match message["type"].as_str() {
                Some("ka") | Some("pong") => continue,
                Some("ping") => self.try_send(json!({"type": "pong"})).await?,
                _ => return Ok(message),
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.try_subscribe(id, query, variables)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    pub async fn try_subscribe(
        &mut self,
        id: &str,
        query: &str,
        variables: Value,
    ) -> Result<(), String> {
        let kind = match self.protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        };
        self.try_send(
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}),
        )
        .await
    }

    /// The next result's `data` for subscription `id`; panics on an error message.
    pub async fn next_data(&mut self, id: &str) -> Value {
        let kind = match self.protocol {
            Protocol::TransportWs => "next",
            Protocol::LegacyWs => "data",
        };
        let message = self.receive().await;
        assert_eq!(message["id"], id, "{message}");
        assert_eq!(message["type"], kind, "{message}");
        assert!(message["payload"]["errors"].is_null(), "{message}");
        message["payload"]["data"].clone()
    }

    /// Asserts nothing but keepalives arrives within `quiet`.
    pub async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(message) = tokio::time::timeout(quiet, self.receive()).await {
            panic!("unexpected message {message}");
        }
    }

    /// Reads until the server closes the socket; its close code, if it sent a close frame.
    pub async fn close_code(&mut self) -> Option<u16> {
        self.close_frame().await.map(|(code, _)| code)
    }

    /// Reads until a `pong` (`None`) or the server's close frame (its code and reason; 1005,
    /// "no status", when the frame has none); a connection that ends without a close frame (a
    /// reset, a socket dropped) is the error, with what happened.
    pub async fn close_or_pong(&mut self) -> Result<Option<(u16, String)>, String> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"pong""#) => {
                    return Ok(None);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Some(frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    })));
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(format!("reading: {error}")),
                None => return Err("the socket ended".to_owned()),
            }
        }
    }

    /// Reads until the server closes the socket; its close code and reason, if it sent them.
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("closed in time");
            match frame {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// What a [`ResumingSubscriber`] has received so far.
#[derive(Debug, Default, Clone)]
pub struct Deliveries {
    /// Every killmail id delivered, in arrival order, duplicates included.
    pub killmail_ids: Vec<i64>,
    /// Why each session ended before the subscriber resumed (one entry per resume).
    pub resumed_after: Vec<String>,
}

/// A `killmailAdded` subscriber (graphql-transport-ws) that behaves as a client should across
/// outages: whenever its socket drops or its subscription ends, it connects again and
/// subscribes with `after` set to the last cursor it received, so that it should get every
/// killmail exactly once. It runs until dropped.
pub struct ResumingSubscriber {
    received: Arc<Mutex<Deliveries>>,
    task: JoinHandle<()>,
}

impl ResumingSubscriber {
    pub fn start(url: String) -> Self {
        let received = Arc::new(Mutex::new(Deliveries::default()));
        let task = {
            let received = Arc::clone(&received);
            tokio::spawn(async move {
                // The store starts empty, so the first subscription asks for everything after
                // the beginning: it then cannot miss a killmail stored while it was being set up.
                let mut after = "0".to_owned();
                loop {
                    let ended = Self::session(&url, &mut after, &received).await;
                    lock(&received).resumed_after.push(ended);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self { received, task }
    }

    /// Subscribes once and records what arrives; returns why the session ended.
    async fn session(url: &str, after: &mut String, received: &Mutex<Deliveries>) -> String {
        const QUERY: &str = "subscription Resume($after: String) {
            killmailAdded(after: $after) { killmailId cursor }
        }";
        let mut client = match WsClient::try_connect(url, Protocol::TransportWs).await {
            Ok(client) => client,
            Err(error) => return error,
        };
        if let Err(error) = client
            .try_subscribe("resume", QUERY, json!({"after": after}))
            .await
        {
            return error;
        }
        loop {
            let message = match client.try_receive().await {
                Ok(message) => message,
                Err(error) => return error,
            };
            if message["type"] != "next" || !message["payload"]["errors"].is_null() {
                return format!("the subscription ended: {message}");
            }
            let killmail = &message["payload"]["data"]["killmailAdded"];
            let (Some(id), Some(cursor)) = (
                killmail["killmailId"]
                    .as_str()
                    .and_then(|id| id.parse().ok()),
                killmail["cursor"].as_str(),
            ) else {
                return format!("a killmail without id or cursor: {message}");
            };
            lock(received).killmail_ids.push(id);
            *after = cursor.to_owned();
        }
    }

    pub fn deliveries(&self) -> Deliveries {
        lock(&self.received).clone()
    }
}

impl Drop for ResumingSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(received: &Mutex<Deliveries>) -> std::sync::MutexGuard<'_, Deliveries> {
    received.lock().expect("the subscriber's record")
}

/// A plain WebSocket client's socket (no GraphQL protocol), as browsers and bots hold one.
pub type PlainSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The next text message on `socket`, as JSON (pings are answered by the client library);
/// fails the test after [`PATIENCE`] or on anything else.
pub async fn next_json(socket: &mut PlainSocket) -> Value {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a message within PATIENCE")
            .expect("the socket open")
            .expect("a frame");
        match frame {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("not a text message: {other:?}"),
        }
    }
}
