//! The messages of both GraphQL-over-WebSocket protocols: `graphql-transport-ws` (graphql-ws,
//! what Apollo Client and GraphiQL speak) and the legacy `graphql-ws`
//! (subscriptions-transport-ws). Clients' messages are read into one vocabulary; ours are
//! written in the client's. Close codes are graphql-ws's where it has one.

use std::sync::Arc;

pub use async_graphql::http::WebSocketProtocols as Protocol;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::{Bytes, Message, Utf8Bytes};

/// A client's message, in either protocol (the legacy names are aliases).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    #[serde(alias = "start")]
    Subscribe {
        id: String,
        payload: Box<async_graphql::Request>,
    },
    #[serde(alias = "stop")]
    Complete {
        id: String,
    },
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {
        #[serde(default)]
        payload: Option<Value>,
    },
    ConnectionTerminate,
}

/// The longest operation id a client may give: ids are repeated in every message of their
/// operation.
pub const MAX_ID_BYTES: usize = 128;

/// Messages longer than this go out in fragments of this size: the socket's write buffer keeps
/// the capacity of the largest frame it has held, so one whole 300 KB message would cost its
/// connection 300 KB for as long as it stays open.
pub const FRAGMENT: usize = 16 * 1024;

/// A message for the client. Ids and payloads are JSON text already, shared between every
/// subscriber of one execution.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Ack,
    /// A WebSocket ping frame, and the legacy protocol's `ka`.
    KeepAlive,
    Pong(Option<Value>),
    /// A message built already (see [`next`]): one text, shared by every client it goes to.
    Text(Utf8Bytes),
    /// A subscription's result for a live event, built at `since` (its delivery is timed).
    Event {
        text: Utf8Bytes,
        since: Instant,
    },
    /// The operation failed before it produced anything; `payload` is a list of errors.
    Error {
        id: Arc<str>,
        payload: Arc<str>,
    },
    Complete {
        id: Arc<str>,
    },
}

impl Outgoing {
    /// The frames that carry this message in `protocol`, in order; a long text in fragments
    /// of [`FRAGMENT`] bytes, each a slice of the one shared text.
    pub fn frames(self, protocol: Protocol) -> Frames {
        let legacy = protocol == Protocol::SubscriptionsTransportWS;
        let text = |text: String| Message::Text(Utf8Bytes::from(text));
        let (first, second) = match self {
            Outgoing::Ack => (text(r#"{"type":"connection_ack"}"#.to_owned()), None),
            Outgoing::KeepAlive => (
                Message::Ping(Default::default()),
                legacy.then(|| Message::Text(Utf8Bytes::from_static(r#"{"type":"ka"}"#))),
            ),
            Outgoing::Pong(payload) => {
                let pong = match payload {
                    Some(payload) => format!(r#"{{"type":"pong","payload":{payload}}}"#),
                    None => r#"{"type":"pong"}"#.to_owned(),
                };
                (text(pong), None)
            }
            Outgoing::Text(text) | Outgoing::Event { text, .. } if text.len() > FRAGMENT => {
                return Frames {
                    whole: [None, None],
                    long: Some((Bytes::from(text), 0)),
                };
            }
            Outgoing::Text(text) | Outgoing::Event { text, .. } => (Message::Text(text), None),
            Outgoing::Error { id, payload } => (
                text(format!(
                    r#"{{"id":{id},"type":"error","payload":{payload}}}"#
                )),
                None,
            ),
            Outgoing::Complete { id } => {
                (text(format!(r#"{{"id":{id},"type":"complete"}}"#)), None)
            }
        };
        Frames {
            whole: [Some(first), second],
            long: None,
        }
    }
}

/// The frames of one [`Outgoing`] message, in order.
pub struct Frames {
    /// Whole frames still to go.
    whole: [Option<Message>; 2],
    /// A long text still to go in fragments, and how many of its bytes have gone: a text
    /// frame, then continuation frames, the last one final.
    long: Option<(Bytes, usize)>,
}

impl Iterator for Frames {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        if let Some((text, sent)) = &mut self.long {
            if *sent == text.len() {
                return None;
            }
            let end = text.len().min(*sent + FRAGMENT);
            let opcode = if *sent == 0 {
                Data::Text
            } else {
                Data::Continue
            };
            let part = text.slice(*sent..end);
            *sent = end;
            return Some(Message::Frame(Frame::message(
                part,
                OpCode::Data(opcode),
                end == text.len(),
            )));
        }
        self.whole.iter_mut().find_map(Option::take)
    }
}

/// The `next` message (`data` in the legacy protocol) carrying `payload` for operation `id`;
/// both are JSON text already.
pub fn next(id: &str, payload: &str, protocol: Protocol) -> Utf8Bytes {
    let kind = match protocol {
        Protocol::SubscriptionsTransportWS => "data",
        Protocol::GraphQLWS => "next",
    };
    format!(r#"{{"id":{id},"type":"{kind}","payload":{payload}}}"#).into()
}

/// The first protocol of a `Sec-WebSocket-Protocol` list that the server speaks.
pub fn negotiate(requested: &str) -> Option<Protocol> {
    requested
        .split(',')
        .find_map(|name| name.trim().parse::<Protocol>().ok())
}

/// An operation id as JSON text, ready to splice into messages.
pub fn id_json(id: &str) -> Arc<str> {
    Value::from(id).to_string().into()
}

/// A list of GraphQL errors with one message, as JSON text.
pub fn error_list(message: &str, code: &str) -> Arc<str> {
    serde_json::json!([{ "message": message, "extensions": { "code": code } }])
        .to_string()
        .into()
}

/// Why the server closes a connection: a WebSocket close code and a reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

/// Close reasons are at most 123 bytes on the wire.
const MAX_REASON: usize = 123;

impl Close {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Self { code, reason }
    }

    pub fn frame(self) -> Message {
        Message::Close(Some(CloseFrame {
            code: self.code.into(),
            reason: Utf8Bytes::from(self.reason),
        }))
    }
}

/// Close codes. 1xxx are WebSocket's own; 44xx are graphql-ws's.
pub mod code {
    /// The server is done with a connection that asked for nothing.
    pub const NORMAL: u16 = 1000;
    /// The server is going away: shutdown, or a peer that stopped answering pings.
    pub const GOING_AWAY: u16 = 1001;
    /// A client that does not read what it asked for fast enough.
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const BAD_REQUEST: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    /// The connection's session expired or was ended (logout).
    pub const FORBIDDEN: u16 = 4403;
    pub const INIT_TIMEOUT: u16 = 4408;
    pub const DUPLICATE_ID: u16 = 4409;
    pub const TOO_MANY_INITS: u16 = 4429;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_protocols_vocabularies_are_read() {
        for text in [
            r#"{"type":"subscribe","id":"1","payload":{"query":"subscription { killmailAdded { id } }"}}"#,
            r#"{"type":"start","id":"1","payload":{"query":"{ x }","variables":null}}"#,
        ] {
            let message: ClientMessage = serde_json::from_str(text).expect(text);
            assert!(matches!(message, ClientMessage::Subscribe { id, .. } if id == "1"));
        }
        let stop: ClientMessage =
            serde_json::from_str(r#"{"type":"stop","id":"7"}"#).expect("stop");
        assert!(matches!(stop, ClientMessage::Complete { id } if id == "7"));
        let error = serde_json::from_str::<ClientMessage>(r#"{"type":"shout"}"#)
            .expect_err("unknown type")
            .to_string();
        assert!(error.contains("unknown variant `shout`"), "{error}");
    }

    #[test]
    fn the_first_protocol_spoken_is_chosen() {
        assert_eq!(
            negotiate("foo, graphql-ws"),
            Some(Protocol::SubscriptionsTransportWS)
        );
        assert_eq!(
            negotiate("graphql-transport-ws,graphql-ws"),
            Some(Protocol::GraphQLWS)
        );
        assert_eq!(negotiate("mqtt"), None);
    }

    #[test]
    fn next_is_data_in_the_legacy_protocol_and_ids_are_escaped() {
        let id = id_json("a\"b");
        let payload = r#"{"data":{}}"#;
        assert_eq!(
            next(&id, payload, Protocol::GraphQLWS).as_str(),
            r#"{"id":"a\"b","type":"next","payload":{"data":{}}}"#
        );
        assert_eq!(
            next(&id, payload, Protocol::SubscriptionsTransportWS).as_str(),
            r#"{"id":"a\"b","type":"data","payload":{"data":{}}}"#
        );
    }

    #[test]
    fn a_long_message_goes_out_in_fragments_that_make_it_whole() {
        let text = "é".repeat(FRAGMENT); // 2 × FRAGMENT bytes, cut inside characters
        let frames: Vec<Message> = Outgoing::Text(text.clone().into())
            .frames(Protocol::GraphQLWS)
            .collect();
        assert_eq!(frames.len(), 2);
        let mut whole = Vec::new();
        for (i, frame) in frames.into_iter().enumerate() {
            let Message::Frame(frame) = frame else {
                panic!("a raw frame")
            };
            let header = frame.header();
            let opcode = if i == 0 { Data::Text } else { Data::Continue };
            assert_eq!(header.opcode, OpCode::Data(opcode));
            assert_eq!(header.is_final, i == 1);
            assert!(frame.payload().len() <= FRAGMENT);
            whole.extend_from_slice(frame.payload());
        }
        assert_eq!(String::from_utf8(whole).expect("UTF-8 again"), text);
        let short = Outgoing::Text("{}".into()).frames(Protocol::GraphQLWS);
        assert!(matches!(short.collect::<Vec<_>>()[..], [Message::Text(_)]));
    }

    #[test]
    fn a_long_close_reason_is_cut_at_a_character_boundary() {
        let close = Close::new(4400, "é".repeat(100));
        assert!(close.reason.len() <= MAX_REASON);
        assert!(close.reason.chars().all(|c| c == 'é'));
    }
}
