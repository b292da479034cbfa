//! A minimal GraphQL-over-WebSocket client speaking either protocol, as Apollo Client
//! (`graphql-transport-ws`) or subscriptions-transport-ws (`graphql-ws`) would.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

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
        let mut client = Self::open(url, protocol)
            .await
            .unwrap_or_else(|e| panic!("WebSocket connect: {e}"));
        client.init().await;
        client
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

    /// The next protocol message that is not a keepalive.
    pub async fn receive(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a message in time")
                .expect("the socket stays open")
                .expect("a frame");
            let Message::Text(text) = frame else { continue };
            let message: Value = serde_json::from_str(&text).expect("JSON");
            match message["type"].as_str() {
                Some("ka") | Some("pong") => continue,
                Some("ping") => self.send(json!({"type": "pong"})).await,
                _ => return message,
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = match self.protocol {
            Protocol::TransportWs => "subscribe",
            Protocol::LegacyWs => "start",
        };
        self.send(
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}),
        )
        .await;
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

    /// Reads until a `pong` (`None`) or the server's close frame (its code and reason; 1000
    /// when the server ended the connection without one).
    pub async fn close_or_pong(&mut self) -> Option<(u16, String)> {
        loop {
            match self.socket.next().await {
                Some(Ok(Message::Text(text))) if text.contains(r#""type":"pong""#) => return None,
                Some(Ok(Message::Close(frame))) => {
                    return Some(frame.map_or((1000, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    }));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some((1000, String::new())),
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
