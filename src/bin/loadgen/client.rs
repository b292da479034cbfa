//! One benchmark subscriber, which notes the first receipt of every killmail it was meant to get
//! and counts the rest (duplicates, killmails it should not have got) without a lock shared with
//! other clients. It speaks what its URL's path says ([`Protocol::of`]): a graphql-transport-ws
//! connection holding one subscription (`/graphql`), zKillboard's websocket subscribed to
//! `killstream` (`/websocket/`), or killreport's `/updates`, which sends every event.
//!
//! Messages are not parsed as JSON on the hot path: a `next` payload of a 600-attacker fight is
//! about 100 KB and arrives at every subscriber, so the killmail id is read straight out of the
//! text (every document of the mix selects `killmailId` first; a `killmail` event of `/updates`
//! carries `killmailId`, a killstream message `killmail_id`). Each connection holds exactly one
//! subscription, so which subscription a message belongs to is known without reading its id.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PROTOCOL: &str = "graphql-transport-ws";
/// The id every client subscribes under (one subscription per connection).
pub(crate) const SUBSCRIPTION_ID: &str = "1";

/// What the client side of a run shares: which killmail is which event, and a count of
/// expected first deliveries so far, so the run knows when everything has arrived.
#[derive(Debug)]
pub struct Shared {
    /// Killmail id → its index among the injected events.
    pub events: HashMap<i64, u32>,
    pub arrived: AtomicUsize,
}

/// What a subscriber speaks, told by its URL's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// graphql-transport-ws on `/graphql`: the subscription document of the mix.
    Graphql,
    /// zKillboard's websocket on `/websocket/`: the `killstream` channel, every killmail.
    Zkillboard,
    /// killreport's `/updates`: every event, each killmail as a `killmail` event.
    Updates,
}

impl Protocol {
    pub fn of(url: &str) -> Self {
        let path = url.trim_end_matches('/');
        if path.ends_with("/websocket") {
            Protocol::Zkillboard
        } else if path.ends_with("/updates") {
            Protocol::Updates
        } else {
            Protocol::Graphql
        }
    }

    /// The key whose number is a delivery's killmail id.
    fn id_key(self) -> &'static str {
        match self {
            Protocol::Graphql | Protocol::Updates => "\"killmailId\":",
            Protocol::Zkillboard => "\"killmail_id\":",
        }
    }
}

/// What zKillboard's websocket clients send to get every killmail.
pub(crate) const KILLSTREAM: &str = r#"{"action":"sub","channel":"killstream"}"#;

/// What one subscriber must send and receive.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub url: String,
    pub protocol: Protocol,
    /// The `subscribe` message (for `/updates`, none is sent).
    pub subscribe: Arc<str>,
    /// Per event index, whether this subscriber should receive it.
    pub expected: Arc<[bool]>,
    /// When to send the first `ping` after subscribing, and how often after that.
    pub ping: Option<(Duration, Duration)>,
}

/// How a connection that stopped before the end of the run stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ending {
    /// The server closed the WebSocket.
    Closed { code: u16, reason: String },
    /// The server sent `error` or `complete` for the subscription.
    Refused(String),
    /// The connection failed (reset, protocol violation, end of stream without a close).
    Failed(String),
}

/// Everything one subscriber saw after it connected.
#[derive(Debug, Default)]
pub struct Outcome {
    /// First receipt of each expected event: (event index, when).
    pub received: Vec<(u32, Instant)>,
    pub duplicated: usize,
    /// Injected killmails this subscriber's filter should not have let through.
    pub unexpected: usize,
    /// Killmails that were not injected by this run (someone else publishing on the channel).
    pub foreign: usize,
    /// `next` payloads carrying GraphQL errors.
    pub errors: usize,
    pub ending: Option<Ending>,
}

/// A message from the server, told apart cheaply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A `next` with this killmail id, and whether its payload also has errors.
    Killmail {
        id: i64,
        errors: bool,
    },
    Ping,
    ConnectionAck,
    /// `error`, `complete`, or a `next` without a killmail: the message itself.
    Refusal(String),
    Other,
}

impl Incoming {
    pub(crate) fn classify(text: &str, protocol: Protocol) -> Self {
        // A data payload is found by its first `killmailId` (selected first by every
        // document, so near the start) and is not otherwise read.
        if let Some(id) = number_after(text, protocol.id_key()) {
            return Incoming::Killmail {
                id,
                errors: text.contains("\"errors\""),
            };
        }
        // Everything else is small: parse it properly.
        let Ok(message) = serde_json::from_str::<serde_json::Value>(text) else {
            return Incoming::Refusal(format!("not JSON: {}", clip(text)));
        };
        if message["action"] == "error" {
            // zKillboard's websocket refusing what the client sent.
            return Incoming::Refusal(clip(text));
        }
        match message["type"].as_str() {
            Some("ping") => Incoming::Ping,
            Some("pong") => Incoming::Other,
            Some("connection_ack") => Incoming::ConnectionAck,
            Some("error" | "complete" | "next") => Incoming::Refusal(clip(text)),
            _ => Incoming::Other,
        }
    }
}

/// The number after the first `key`, quoted (an `ID`) or not.
pub(crate) fn number_after(text: &str, key: &str) -> Option<i64> {
    let start = text.find(key)? + key.len();
    let rest = text[start..].trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

fn clip(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Opens a connection and its subscription. `/graphql`: WebSocket handshake with the
/// `graphql-transport-ws` subprotocol, `connection_init`, wait for `connection_ack`, then
/// `subscribe`; `/websocket/`: handshake, then `sub` to `killstream`; `/updates`: the handshake
/// alone. The subscription is registered some time after this returns (neither protocol
/// acknowledges it), except on `/updates`, before the handshake is answered.
pub async fn connect(subscriber: &Subscriber, timeout: Duration) -> Result<Socket, String> {
    let opening = async {
        let mut request = subscriber
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let graphql = subscriber.protocol == Protocol::Graphql;
        if graphql {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        }
        // Tens of thousands of sockets: keep each one's buffers small; a big payload grows the
        // read buffer for the time it takes.
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = 8 * 1024;
        config.write_buffer_size = 0;
        let (mut socket, response) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                .await
                .map_err(|e| e.to_string())?;
        match subscriber.protocol {
            Protocol::Graphql => {}
            Protocol::Zkillboard => {
                send(&mut socket, subscriber.subscribe.as_ref().into()).await?;
                return Ok(socket);
            }
            Protocol::Updates => return Ok(socket),
        }
        let chosen = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok());
        if chosen != Some(PROTOCOL) {
            return Err(format!("the server chose subprotocol {chosen:?}"));
        }
        send(
            &mut socket,
            r#"{"type":"connection_init","payload":{}}"#.into(),
        )
        .await?;
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => match Incoming::classify(&text, Protocol::Graphql)
                {
                    Incoming::ConnectionAck => break,
                    Incoming::Ping => send(&mut socket, PONG.into()).await?,
                    Incoming::Refusal(message) => return Err(message),
                    _ => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    return Err(match frame {
                        Some(frame) => format!("closed {} {}", u16::from(frame.code), frame.reason),
                        None => "closed".into(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection ended before connection_ack".into()),
            }
        }
        send(&mut socket, subscriber.subscribe.as_ref().into()).await?;
        Ok(socket)
    };
    tokio::time::timeout(timeout, opening)
        .await
        .unwrap_or_else(|_| Err(format!("no connection_ack within {timeout:?}")))
}

const PING: &str = r#"{"type":"ping"}"#;
const PONG: &str = r#"{"type":"pong"}"#;

async fn send(socket: &mut Socket, text: Utf8Bytes) -> Result<(), String> {
    socket
        .send(Message::Text(text))
        .await
        .map_err(|e| e.to_string())
}

/// Reads `socket` until `stop` (then closes it with 1000) or until the server ends it.
pub async fn receive(
    mut socket: Socket,
    subscriber: Subscriber,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut seen = vec![false; subscriber.expected.len()];
    let mut pings = subscriber
        .ping
        .map(|(first, every)| tokio::time::interval_at(tokio::time::Instant::now() + first, every));
    loop {
        let frame = tokio::select! {
            biased;
            frame = socket.next() => frame,
            () = next_ping(&mut pings) => {
                // The other protocols have no ping message: a WebSocket ping shows the client
                // lives.
                let ping = match subscriber.protocol {
                    Protocol::Graphql => Message::Text(PING.into()),
                    Protocol::Zkillboard | Protocol::Updates => Message::Ping(Default::default()),
                };
                if let Err(e) = socket.send(ping).await.map_err(|e| e.to_string()) {
                    outcome.ending = Some(Ending::Failed(e));
                    return outcome;
                }
                continue;
            }
            () = stop.cancelled() => {
                let close = socket.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: CloseCode::Normal,
                    reason: "benchmark over".into(),
                }));
                // A server that has stopped reading is not waited for.
                tokio::time::timeout(Duration::from_secs(1), close).await.ok();
                return outcome;
            }
        };
        let at = Instant::now();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                outcome.ending = Some(match frame {
                    Some(frame) => Ending::Closed {
                        code: frame.code.into(),
                        reason: frame.reason.to_string(),
                    },
                    None => Ending::Closed {
                        code: u16::from(CloseCode::Status),
                        reason: String::new(),
                    },
                });
                return outcome;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                outcome.ending = Some(Ending::Failed(e.to_string()));
                return outcome;
            }
            None => {
                outcome.ending = Some(Ending::Failed("connection ended without a close".into()));
                return outcome;
            }
        };
        match Incoming::classify(&text, subscriber.protocol) {
            Incoming::Killmail { id, errors } => {
                outcome.errors += usize::from(errors);
                let Some(&event) = shared.events.get(&id) else {
                    outcome.foreign += 1;
                    continue;
                };
                let event = event as usize;
                if !subscriber.expected[event] {
                    outcome.unexpected += 1;
                } else if std::mem::replace(&mut seen[event], true) {
                    outcome.duplicated += 1;
                } else {
                    outcome.received.push((event as u32, at));
                    shared.arrived.fetch_add(1, Ordering::Relaxed);
                }
            }
            Incoming::Ping => {
                if let Err(e) = send(&mut socket, PONG.into()).await {
                    outcome.ending = Some(Ending::Failed(e));
                    return outcome;
                }
            }
            Incoming::Refusal(message) => {
                // The subscription is over, but the connection stays until the server ends it.
                outcome.ending = Some(Ending::Refused(message));
            }
            Incoming::ConnectionAck | Incoming::Other => {}
        }
    }
}

/// The next tick of `pings`, or never.
async fn next_ping(pings: &mut Option<tokio::time::Interval>) {
    match pings {
        Some(pings) => {
            pings.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_killmail_id_is_read_without_parsing() {
        let next = r#"{"type":"next","id":"1","payload":{"data":{"killmailAdded":{"killmailId":"97089202","attackers":[{"character":{"id":"5"}}]}}}}"#;
        assert_eq!(
            Incoming::classify(next, Protocol::Graphql),
            Incoming::Killmail {
                id: 97089202,
                errors: false
            }
        );
        // graphql-ws puts the id first; a number instead of an ID string is read too.
        let peer =
            r#"{"id":"1","type":"next","payload":{"data":{"killmailAdded":{"killmailId": 42}}}}"#;
        assert_eq!(number_after(peer, Protocol::Graphql.id_key()), Some(42));
        let partial = r#"{"id":"1","type":"next","payload":{"errors":[{"message":"x"}],"data":{"killmailAdded":{"killmailId":"7","finalBlow":null}}}}"#;
        assert_eq!(
            Incoming::classify(partial, Protocol::Graphql),
            Incoming::Killmail {
                id: 7,
                errors: true
            }
        );
        assert_eq!(
            number_after(r#"{"killmailId":"x"}"#, "\"killmailId\":"),
            None
        );
        let update = r#"{"type":"killmail","data":{"attackerCount":3,"killmailId":97089202}}"#;
        assert_eq!(
            Incoming::classify(update, Protocol::Updates),
            Incoming::Killmail {
                id: 97089202,
                errors: false
            }
        );
        let killstream = r#"{"attackers":[{"character_id":5}],"killmail_id":42,"zkb":{}}"#;
        assert_eq!(
            Incoming::classify(killstream, Protocol::Zkillboard),
            Incoming::Killmail {
                id: 42,
                errors: false
            }
        );
    }

    #[test]
    fn the_protocol_is_told_by_the_path() {
        assert_eq!(Protocol::of("ws://h:4000/graphql"), Protocol::Graphql);
        assert_eq!(Protocol::of("ws://h:4000/websocket/"), Protocol::Zkillboard);
        assert_eq!(Protocol::of("ws://h:4000/updates"), Protocol::Updates);
    }

    #[test]
    fn small_messages_are_parsed() {
        assert_eq!(
            Incoming::classify(r#"{"type":"ping"}"#, Protocol::Graphql),
            Incoming::Ping
        );
        assert_eq!(
            Incoming::classify(
                r#"{"type":"connection_ack","payload":{}}"#,
                Protocol::Graphql
            ),
            Incoming::ConnectionAck
        );
        assert_eq!(
            Incoming::classify(r#"{"type":"pong"}"#, Protocol::Graphql),
            Incoming::Other
        );
        let error = r#"{"id":"1","type":"error","payload":[{"message":"Unknown field"}]}"#;
        assert_eq!(
            Incoming::classify(error, Protocol::Graphql),
            Incoming::Refusal(error.to_owned())
        );
        let null = r#"{"id":"1","type":"next","payload":{"data":null,"errors":[]}}"#;
        assert!(matches!(
            Incoming::classify(null, Protocol::Graphql),
            Incoming::Refusal(_)
        ));
        assert!(matches!(
            Incoming::classify("nope", Protocol::Graphql),
            Incoming::Refusal(_)
        ));
    }

    #[test]
    fn long_text_is_clipped_on_a_char_boundary() {
        let long = "é".repeat(300);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), 201);
        assert!(clipped.ends_with('…'));
    }
}
