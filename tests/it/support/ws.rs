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
        let mut request = url.into_client_request().expect("a WebSocket URL");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocol.name().parse().expect("header"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket connect");
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol.name())
        );
        let mut client = Self { socket, protocol };
        client
            .send(json!({"type": "connection_init", "payload": {}}))
            .await;
        let ack = client.receive().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .expect("send");
    }

    /// The next protocol message that is not a keepalive.
    async fn receive(&mut self) -> Value {
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
        loop {
            let frame = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("closed in time");
            match frame {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
