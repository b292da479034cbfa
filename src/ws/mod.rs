//! GraphQL over WebSocket for `server`: both protocols (see `protocol`), subscriptions shared
//! between identical documents (see `executions`), and the limits that keep one client from hurting
//! the others. Each connection is two tasks: a session that reads the client's messages and a
//! writer that drains a bounded send queue into the socket, so writes to many sockets run in
//! parallel and a client that does not read fills only its own queue, then is closed (1008)
//! and may resume with `after`. A connection may name a session in `connection_init`
//! (`{"authorization": "Bearer …"}`): its operations run as that pilot, and it is closed with
//! 4403 when the session expires or is ended.

mod executions;
mod outbox;
pub mod peers;
pub mod protocol;
pub mod push;
mod sharing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tungstenite::Message;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::{Role, WebSocketConfig};

use async_graphql::parser::types::ExecutableDocument;

use self::executions::{Executions, Joined, Membership};
use self::outbox::Outbox;
use self::peers::{Peers, peer_ip};
use self::protocol::{ClientMessage, Close, Outgoing, Protocol, code};

use crate::auth::Gate;
use crate::auth::sessions::{Caller, Watch};
use crate::graphql::KillreportSchema;
use crate::live::Hub;
use crate::telemetry;

/// What one server allows its WebSocket clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections at once; more are refused with 503 before the upgrade.
    pub max_connections: usize,
    /// Operations at once on one connection; more get an `error` message.
    pub max_subscriptions: usize,
    /// Messages queued for one client; a client this far behind is closed.
    pub send_queue: usize,
    /// Bytes queued for one client; a client this far behind is closed too.
    pub send_queue_bytes: usize,
    /// Between pings; a client silent for two of these is gone, and one that has not sent
    /// `connection_init` after one is closed.
    pub keepalive: Duration,
    /// The largest message a client may send.
    pub max_message_bytes: usize,
    /// Results held for a resuming subscriber while it catches up (see `executions`).
    pub catch_up_hold: usize,
    /// A connection without an operation this long (from its start, or since its last one
    /// ended) is closed (1000).
    pub subscribe_within: Duration,
    /// Connections by address, shared with the server's other WebSockets.
    pub peers: Peers,
}

/// The WebSocket side of a server; clone it freely.
#[derive(Clone)]
pub struct WsService {
    schema: KillreportSchema,
    executions: Executions,
    limits: Arc<Limits>,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// Who calls: the session in `connection_init`'s `authorization`; `None`, nobody has one.
    gate: Option<Gate>,
}

/// A client's connection once upgraded: tungstenite's own socket, not axum's wrapper of it, so
/// that long messages can go out in fragments (see `protocol::FRAGMENT`).
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How long a closing connection may take to say goodbye to a client that does not read.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// Bytes read from a socket at a time; a larger message still arrives whole.
const READ_BUFFER: usize = 1024;
/// Messages a connection sends in one write, at most, when several are waiting.
const WRITE_BATCH: usize = 64;
/// Bytes of small messages gathered before they are written without waiting for the batch.
const WRITE_BUFFER: usize = 16 * 1024;

impl WsService {
    pub fn new(
        schema: KillreportSchema,
        hub: Hub,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            executions: Executions::new(schema.clone(), hub, limits.catch_up_hold),
            schema,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            limits: Arc::new(limits),
            shutdown,
            gate: None,
        }
    }

    /// Connections tell their session in `connection_init`'s payload
    /// (`{"authorization": "Bearer …"}`), and are closed with 4403 when it ends.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Waits until every connection has said goodbye (after shutdown: its 1001 close frame is
    /// sent), or `CLOSE_GRACE` has passed; the HTTP server's graceful shutdown does not wait
    /// for upgraded connections.
    pub async fn closed(&self) {
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(CLOSE_GRACE, self.connections.acquire_many(all)).await;
    }

    /// Accepts a WebSocket handshake (HTTP/1.1) speaking `protocol`, unless the server already
    /// holds as many connections as it may (503), the client's address does (429), or it is
    /// not a valid one (400).
    pub fn upgrade(&self, request: Request, protocol: Protocol) -> Response {
        let peer = match peer_ip(&request).map(|ip| self.limits.peers.enter(ip)) {
            Some(Err(too_many)) => return too_many.into_response(),
            Some(Ok(place)) => Some(place),
            None => None,
        };
        let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            let message = format!(
                "too many connections: this server holds at most {}",
                self.limits.max_connections
            );
            return (StatusCode::SERVICE_UNAVAILABLE, message).into_response();
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .max_message_size(Some(self.limits.max_message_bytes))
            .max_frame_size(Some(self.limits.max_message_bytes));
        let service = self.clone();
        accept(
            request,
            config,
            Some(protocol.sec_websocket_protocol()),
            move |socket| async move {
                service.serve(socket, protocol).await;
                drop((permit, peer));
            },
        )
    }

    async fn serve(self, socket: Socket, protocol: Protocol) {
        let label = protocol.sec_websocket_protocol();
        metrics::counter!(telemetry::WS_CONNECTIONS_OPENED, "protocol" => label).increment(1);
        let open = metrics::gauge!(telemetry::WS_CONNECTIONS, "protocol" => label);
        open.increment(1);
        let (sink, stream) = socket.split();
        let bound = outbox::Bound {
            messages: self.limits.send_queue,
            bytes: self.limits.send_queue_bytes,
        };
        let (outbox, queue) = Outbox::new(bound, protocol);
        let (closing, close) = oneshot::channel();
        let session = Session {
            service: self,
            protocol,
            outbox,
            operations: HashMap::new(),
            initialised: false,
            last_operation: Instant::now(),
            caller: Caller::Anonymous,
            watch: None,
        };
        // Two tasks: a message queued wakes only the writer, not the session's reads and
        // timers too.
        let writer = tokio::spawn(write(sink, queue, close, protocol));
        session.run(stream, closing).await;
        let _ = writer.await;
        open.decrement(1);
    }
}

struct Session {
    service: WsService,
    protocol: Protocol,
    outbox: Outbox,
    /// Running subscriptions by id; dropping one leaves its execution.
    operations: HashMap<String, Membership>,
    initialised: bool,
    /// When the client last started an operation.
    last_operation: Instant,
    /// Who the client is, as its `connection_init` said.
    caller: Caller,
    /// The client's session, watched for its end, while it has one.
    watch: Option<Watch>,
}

/// What to do after a client's message.
enum Flow {
    Continue,
    Close(Option<Close>),
}

impl Session {
    /// Reads the client's messages until the connection ends; tells the writer how to close.
    async fn run(
        mut self,
        mut stream: SplitStream<Socket>,
        closing: oneshot::Sender<Option<Close>>,
    ) {
        let keepalive = self.service.limits.keepalive;
        let mut ticks = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        let init_deadline = tokio::time::sleep(keepalive);
        tokio::pin!(init_deadline);
        let shutdown = self.service.shutdown.clone();
        let overflowed = self.outbox.overflowed().clone();
        let mut heard = Instant::now();
        // Whether the client has ended its side: nothing more to read.
        let mut ended = false;
        let within = self.service.limits.subscribe_within;
        // Since when the connection has had no operation, while it has none.
        let mut unused = Some(Instant::now());
        let close = loop {
            let deadline = unused.unwrap_or_else(Instant::now) + within;
            let session_end = self.session_end();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    break Some(Close::new(code::GOING_AWAY, "server shutting down"));
                }
                reason = session_end => break Some(Close::new(code::FORBIDDEN, reason)),
                () = tokio::time::sleep_until(deadline), if unused.is_some() => {
                    // Subscriptions the server completed meanwhile count as none.
                    self.operations.retain(|_, membership| !membership.ended());
                    if self.operations.is_empty() {
                        let reason = format!(
                            "no subscription for {} s; connect again to subscribe",
                            within.as_secs()
                        );
                        break Some(Close::new(code::NORMAL, reason));
                    }
                    unused = None;
                }
                () = overflowed.cancelled() => {
                    metrics::counter!(telemetry::WS_CLOSED_TOO_SLOW).increment(1);
                    let limits = &self.service.limits;
                    let reason = format!(
                        "too slow: {} messages or {} bytes unread; resubscribe with after: <last cursor>",
                        limits.send_queue, limits.send_queue_bytes
                    );
                    break Some(Close::new(code::POLICY, reason));
                }
                () = &mut init_deadline, if !self.initialised => {
                    break Some(Close::new(code::INIT_TIMEOUT, "Connection initialisation timeout"));
                }
                _ = ticks.tick() => {
                    if heard.elapsed() > keepalive * 2 {
                        break Some(Close::new(code::GOING_AWAY, "no answer to pings"));
                    }
                    self.outbox.push(Outgoing::KeepAlive);
                }
                frame = stream.next() => {
                    heard = Instant::now();
                    ended = matches!(frame, None | Some(Err(_)) | Some(Ok(Message::Close(_))));
                    let flow = match frame {
                        Some(Ok(message)) => self.receive(message).await,
                        Some(Err(error)) => Flow::Close(self.read_failed(&error)),
                        None => Flow::Close(None),
                    };
                    if let Flow::Close(close) = flow {
                        break close;
                    }
                    // A query answered counts as asking for something, as a subscription does.
                    unused = match (self.operations.is_empty(), unused) {
                        (false, _) => None,
                        (true, None) => Some(Instant::now()),
                        (true, Some(since)) => Some(since.max(self.last_operation)),
                    };
                }
            }
        };
        // Leaving every execution before the writer finishes: nothing more is queued for it.
        self.operations.clear();
        let _ = closing.send(close);
        if !ended && !shutdown.is_cancelled() {
            // The closing handshake: the client's close frame (or its end) before the socket
            // goes; dropped sooner, a client still reading may lose the close frame to a reset.
            // A stopping server does not wait for answers.
            let answered = async { while let Some(Ok(_)) = stream.next().await {} };
            let _ = tokio::time::timeout(CLOSE_GRACE, answered).await;
        }
    }

    /// Resolves when the connection's session ends (logout anywhere) or expires, with the
    /// reason; never without a session.
    fn session_end(&self) -> impl Future<Output = &'static str> + use<> {
        let held = self
            .watch
            .as_ref()
            .zip(self.caller.session())
            .map(|(watch, session)| (watch.ended.clone(), session.expires_at));
        async move {
            let Some((ended, expires_at)) = held else {
                return std::future::pending().await;
            };
            let left = (expires_at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            tokio::select! {
                () = ended.cancelled() => "the session was ended (logged out); log in again",
                () = tokio::time::sleep(left) => "the session expired; log in again",
            }
        }
    }

    /// The caller `connection_init`'s payload names (`authorization`: `Bearer <token>`).
    async fn identify(&mut self, payload: Option<&serde_json::Value>) {
        let Some(gate) = &self.service.gate else {
            return;
        };
        let authorization = payload
            .and_then(|payload| {
                payload
                    .get("authorization")
                    .or_else(|| payload.get("Authorization"))
            })
            .and_then(serde_json::Value::as_str);
        self.caller = gate.caller(authorization).await;
        self.watch = self
            .caller
            .session()
            .map(|session| gate.sessions.watch(session));
    }

    /// A read error ends the connection; a message over the size limit is told so.
    fn read_failed(&self, error: &tungstenite::Error) -> Option<Close> {
        matches!(error, tungstenite::Error::Capacity(_)).then(|| {
            Close::new(
                code::TOO_BIG,
                format!(
                    "message too big: at most {} bytes",
                    self.service.limits.max_message_bytes
                ),
            )
        })
    }

    async fn receive(&mut self, message: Message) -> Flow {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return Flow::Close(Some(Close::new(
                    code::BAD_REQUEST,
                    "binary messages are not GraphQL messages; send text",
                )));
            }
            // Pings are answered by the WebSocket layer itself; any frame shows the peer lives.
            // (Raw frames are never read: fragments arrive as the message they make up.)
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Flow::Continue,
            Message::Close(_) => return Flow::Close(None),
        };
        let message = match serde_json::from_str::<ClientMessage>(&text) {
            Ok(message) => message,
            Err(error) => {
                return Flow::Close(Some(Close::new(
                    code::BAD_REQUEST,
                    format!("invalid message: {error}"),
                )));
            }
        };
        match message {
            ClientMessage::ConnectionInit { payload } => {
                if self.initialised {
                    return Flow::Close(Some(Close::new(
                        code::TOO_MANY_INITS,
                        "Too many initialisation requests",
                    )));
                }
                self.identify(payload.as_ref()).await;
                self.initialised = true;
                self.outbox.push(Outgoing::Ack);
                if self.protocol == Protocol::SubscriptionsTransportWS {
                    self.outbox.push(Outgoing::KeepAlive);
                }
            }
            ClientMessage::Subscribe { id, payload } => {
                if !self.initialised {
                    return Flow::Close(Some(Close::new(code::UNAUTHORIZED, "Unauthorized")));
                }
                if id.len() > protocol::MAX_ID_BYTES {
                    return Flow::Close(Some(Close::new(
                        code::BAD_REQUEST,
                        format!(
                            "operation id of {} bytes: at most {}",
                            id.len(),
                            protocol::MAX_ID_BYTES
                        ),
                    )));
                }
                // Subscriptions the server has completed no longer hold their ids or places.
                self.operations.retain(|_, membership| !membership.ended());
                if self.operations.contains_key(&id) {
                    if self.protocol == Protocol::GraphQLWS {
                        return Flow::Close(Some(Close::new(
                            code::DUPLICATE_ID,
                            format!("Subscriber for {id} already exists"),
                        )));
                    }
                    // The legacy protocol restarts an operation whose id is reused.
                    self.operations.remove(&id);
                }
                self.last_operation = Instant::now();
                self.start(id, *payload).await;
            }
            ClientMessage::Complete { id } => {
                if self.operations.remove(&id).is_some()
                    && self.protocol == Protocol::SubscriptionsTransportWS
                {
                    self.outbox.push(Outgoing::Complete {
                        id: protocol::id_json(&id),
                    });
                }
            }
            ClientMessage::Ping { payload } => self.outbox.push(Outgoing::Pong(payload)),
            ClientMessage::Pong { .. } => {}
            ClientMessage::ConnectionTerminate => return Flow::Close(None),
        }
        Flow::Continue
    }

    /// Starts operation `id`: a subscription joins its execution; a query or mutation is
    /// answered at once.
    async fn start(&mut self, id: String, request: async_graphql::Request) {
        let mut request = match &self.service.gate {
            Some(gate) => gate.admit(request, &self.caller),
            None => request,
        };
        let id_json = protocol::id_json(&id);
        if self.operations.len() >= self.service.limits.max_subscriptions {
            let message = format!(
                "too many operations on this connection: at most {}; complete one first",
                self.service.limits.max_subscriptions
            );
            self.outbox.push(Outgoing::Error {
                id: id_json,
                payload: protocol::error_list(&message, "TOO_MANY_SUBSCRIPTIONS"),
            });
            return;
        }
        let operation_name = request.operation_name.clone();
        // Priced as it is parsed, as over POST: a document too deep or too large to parse
        // safely is refused here.
        let subscription = match crate::graphql::parse(&mut request) {
            Ok(document) => is_subscription(document, operation_name.as_deref()),
            Err(error) => {
                let payload = serde_json::to_string(&[error]).unwrap_or_default();
                self.outbox.push(Outgoing::Error {
                    id: id_json,
                    payload: payload.into(),
                });
                return;
            }
        };
        if subscription {
            match self
                .service
                .executions
                .join(request, Arc::clone(&id_json), self.outbox.clone())
            {
                Joined::Live(membership) => {
                    self.operations.insert(id, membership);
                }
                Joined::Failed(errors) => self.outbox.push(Outgoing::Error {
                    id: id_json,
                    payload: errors,
                }),
            }
            return;
        }
        // Boxed: an execution's state is large, and kept inline it would be part of every idle
        // connection's task.
        let response = Box::pin(self.service.schema.execute(request)).await;
        match serde_json::to_string(&response) {
            Ok(payload) => {
                let next = protocol::next(&id_json, &payload, self.protocol);
                self.outbox.push(Outgoing::Text(next));
                self.outbox.push(Outgoing::Complete { id: id_json });
            }
            Err(error) => tracing::error!(%error, "a query result did not serialize"),
        }
    }
}

/// Answers a WebSocket handshake (HTTP/1.1) with 101 and `subprotocol`, then hands the socket
/// to `serve` on a task of its own; a request that is not a valid handshake gets 400 with the
/// reason. The one handshake of every WebSocket endpoint (`/graphql`, `updates`).
pub fn accept<F, Fut>(
    mut request: Request,
    config: WebSocketConfig,
    subprotocol: Option<&'static str>,
    serve: F,
) -> Response
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let key = match handshake_key(&request) {
        Ok(key) => key,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    let upgrading = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrading.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config));
                serve(socket.await).await;
            }
            Err(error) => tracing::debug!(%error, "a WebSocket upgrade did not complete"),
        }
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        );
    if let Some(subprotocol) = subprotocol {
        response = response.header(header::SEC_WEBSOCKET_PROTOCOL, subprotocol);
    }
    response.body(Body::empty()).expect("a valid 101 response")
}

/// The client's `Sec-WebSocket-Key`, once `request` is checked to be a WebSocket handshake.
fn handshake_key(request: &Request) -> Result<HeaderValue, &'static str> {
    let headers = request.headers();
    let lists = |name: header::HeaderName, value: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(value))
            })
        })
    };
    if request.method() != Method::GET {
        return Err("a WebSocket handshake is a GET");
    }
    if !lists(header::CONNECTION, "upgrade") || !lists(header::UPGRADE, "websocket") {
        return Err("ask for a WebSocket with Connection: upgrade and Upgrade: websocket");
    }
    if !lists(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err("this server speaks WebSocket version 13");
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .ok_or("Sec-WebSocket-Key is missing")
}

/// Whether the operation a request names (or its only one) is a subscription.
fn is_subscription(document: &ExecutableDocument, operation_name: Option<&str>) -> bool {
    sharing::operation(document, operation_name)
        .is_some_and(|o| o.node.ty == async_graphql::parser::types::OperationType::Subscription)
}

/// Drains the send queue into the socket until the session says how to close, then says
/// goodbye within `CLOSE_GRACE`. Each live result is counted and timed once it is written.
async fn write(
    mut sink: SplitSink<Socket, Message>,
    mut queue: outbox::Receiver<Outgoing>,
    mut close: oneshot::Receiver<Option<Close>>,
    protocol: Protocol,
) {
    let label = protocol.sec_websocket_protocol();
    let deliveries = metrics::counter!(telemetry::WS_DELIVERIES, "protocol" => label);
    let delivery = metrics::histogram!(telemetry::WS_DELIVERY);
    // When each live result of the write under way was built.
    let mut events = Vec::new();
    let close = loop {
        let message = tokio::select! {
            biased;
            close = &mut close => break close.ok().flatten(),
            message = queue.recv() => message,
        };
        let Some(message) = message else {
            break (&mut close).await.ok().flatten();
        };
        // What else is queued already goes out with it, in one write to the socket.
        let sent = async {
            let mut next = Some(message);
            let mut batched = 0;
            while let Some(message) = next.take() {
                if let Outgoing::Event { since, .. } = &message {
                    events.push(*since);
                }
                for frame in message.frames(protocol) {
                    sink.feed(frame).await?;
                }
                batched += 1;
                if batched < WRITE_BATCH {
                    next = queue.try_recv();
                }
            }
            sink.flush().await
        };
        tokio::select! {
            biased;
            close = &mut close => break close.ok().flatten(),
            sent = sent => if sent.is_err() { return },
        }
        deliveries.increment(events.len() as u64);
        for since in events.drain(..) {
            delivery.record(since.elapsed());
        }
    };
    let goodbye = async {
        if let Some(close) = close {
            sink.send(close.frame()).await.ok();
        }
        sink.close().await.ok();
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, goodbye).await;
}
