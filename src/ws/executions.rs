//! Shared execution of subscriptions. Subscribers whose document and variables are the same
//! (after normalising whitespace, commas and comments; see `sharing`) join one *execution*:
//! the document runs once, each result is serialized once and handed to every member's send
//! queue. The work per event therefore grows with the number of distinct documents, not of
//! subscribers.
//!
//! A subscriber that resumes from a cursor given as a variable (`after: $after`) joins the
//! execution of the same document without a cursor at once, but catches up first: it replays,
//! alone, what was stored after its cursor up to the last event the server had passed on when
//! it joined, while the execution holds its results for it; then the held results newer than
//! the replay go out, and it is a member like any other. So a server restart, after which
//! every client resumes, does not leave one execution per client behind. A document with a
//! literal cursor runs alone throughout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_graphql::{Request, Response};
use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tungstenite::Utf8Bytes;

use super::outbox::Outbox;
use super::protocol::{self, Outgoing, Protocol};
use super::sharing::{Resume, Sharing};
use crate::graphql::{KillreportSchema, SeqTap};
use crate::killmail::Seq;
use crate::live::Hub;
use crate::telemetry;

type Shared = Arc<Mutex<HashMap<String, Arc<Execution>>>>;

/// Every shared execution of a server, by key; clone it freely.
#[derive(Clone)]
pub struct Executions {
    schema: KillreportSchema,
    hub: Hub,
    shared: Shared,
    /// Results an execution holds for a member that is catching up; when more come, the
    /// member replays further instead.
    hold: usize,
}

struct Execution {
    /// Its key among the shared executions; `None` for an execution of its own.
    key: Option<String>,
    members: Mutex<Members>,
    task: OnceLock<tokio::task::AbortHandle>,
    /// The sequence of the event behind the latest result.
    seq: SeqTap,
    hold: usize,
}

#[derive(Default)]
struct Members {
    next: u64,
    by_number: HashMap<u64, Member>,
}

struct Member {
    id: Arc<str>,
    outbox: Outbox,
    /// While the member catches up: the execution's results for it, held.
    catching_up: Option<Held>,
}

/// A subscriber about to become a member: its operation id, its client's send queue, and
/// whether it catches up first.
struct Joining {
    id: Arc<str>,
    outbox: Outbox,
    catching_up: bool,
}

/// Results held for a member that is catching up, with their events' sequences.
#[derive(Default)]
struct Held {
    results: Vec<(Seq, Utf8Bytes)>,
    /// More came than are held: the member must replay further.
    overflowed: bool,
}

/// One subscriber's place in an execution; leaving is dropping it.
pub struct Membership {
    shared: Shared,
    execution: Arc<Execution>,
    number: u64,
    /// A resuming member's replay, while it runs.
    catch_up: Option<tokio::task::AbortHandle>,
}

/// How a subscription started.
pub enum Joined {
    Live(Membership),
    /// It failed before producing anything (invalid document, bad arguments): these errors.
    Failed(Arc<str>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a single insert or remove: a panic elsewhere cannot
    // leave them half-done, so a poisoned lock is taken as it is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Executions {
    pub fn new(schema: KillreportSchema, hub: Hub, hold: usize) -> Self {
        Self {
            schema,
            hub,
            shared: Arc::default(),
            hold,
        }
    }

    /// Starts subscription `id` for the client behind `outbox`: joins the execution already
    /// running `request`, or starts one. `request` must hold a subscription operation, parsed.
    pub fn join(&self, mut request: Request, id: Arc<str>, outbox: Outbox) -> Joined {
        let live = |id, outbox| Joining {
            id,
            outbox,
            catching_up: false,
        };
        let joined = match Sharing::of(&mut request) {
            Sharing::Alone => self.start(None, request, live(id, outbox)),
            Sharing::Shared(key) => self.enter(key, request, live(id, outbox)),
            Sharing::Resuming(key, resume) => self.resume(key, resume, id, outbox),
        };
        match joined {
            Ok(membership) => Joined::Live(membership),
            Err(errors) => Joined::Failed(errors),
        }
    }

    /// Joins the shared execution `key`, or starts it with `request`.
    fn enter(
        &self,
        key: String,
        request: Request,
        joining: Joining,
    ) -> Result<Membership, Arc<str>> {
        let mut shared = lock(&self.shared);
        if let Some(execution) = shared.get(&key) {
            return Ok(self.add_member(execution, joining));
        }
        let membership = self.start(Some(key.clone()), request, joining)?;
        shared.insert(key, Arc::clone(&membership.execution));
        Ok(membership)
    }

    /// Starts an execution of `request`, with one member.
    fn start(
        &self,
        key: Option<String>,
        request: Request,
        joining: Joining,
    ) -> Result<Membership, Arc<str>> {
        let seq = SeqTap::default();
        let mut results = Box::pin(self.schema.execute_stream(request.data(seq.clone())));
        let first = poll_once(&mut results)?;
        metrics::gauge!(telemetry::WS_EXECUTIONS).increment(1);
        let execution = Arc::new(Execution {
            key,
            members: Mutex::default(),
            task: OnceLock::new(),
            seq,
            hold: self.hold,
        });
        let membership = self.add_member(&execution, joining);
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(Arc::clone(&execution).run(shared, first, results));
        // Set before anyone can leave: the membership is not handed out yet.
        let _ = execution.task.set(task.abort_handle());
        Ok(membership)
    }

    /// Joins the shared execution `key` as a member that catches up first (see the module's
    /// notes).
    fn resume(
        &self,
        key: String,
        resume: Resume,
        id: Arc<str>,
        outbox: Outbox,
    ) -> Result<Membership, Arc<str>> {
        let joining = Joining {
            id: Arc::clone(&id),
            outbox: outbox.clone(),
            catching_up: true,
        };
        let mut membership = self.enter(key, resume.request(None), joining)?;
        // Read after joining: every event after this one reaches the member through the
        // execution.
        let until = self.hub.last();
        let catch_up = CatchUp {
            executions: self.clone(),
            execution: Arc::clone(&membership.execution),
            number: membership.number,
            resume,
            id,
            outbox,
        };
        membership.catch_up = Some(tokio::spawn(catch_up.run(until)).abort_handle());
        Ok(membership)
    }

    fn add_member(&self, execution: &Arc<Execution>, joining: Joining) -> Membership {
        let mut members = lock(&execution.members);
        let number = members.next;
        members.next += 1;
        subscriptions(joining.outbox.protocol()).increment(1);
        let member = Member {
            id: joining.id,
            outbox: joining.outbox,
            catching_up: joining.catching_up.then(Held::default),
        };
        members.by_number.insert(number, member);
        Membership {
            shared: Arc::clone(&self.shared),
            execution: Arc::clone(execution),
            number,
            catch_up: None,
        }
    }
}

/// Polls a new execution once. The resolver registers with the live hub and returns without
/// waiting, so one poll shows whether the operation failed up front (validation, arguments):
/// then it yields an error response without data at once. Otherwise nothing is ready yet, or
/// a first live result is.
fn poll_once(
    results: &mut (impl Stream<Item = Response> + Unpin),
) -> Result<Option<Response>, Arc<str>> {
    let mut context = std::task::Context::from_waker(futures::task::noop_waker_ref());
    match results.poll_next_unpin(&mut context) {
        std::task::Poll::Ready(Some(response)) if failed(&response) => Err(errors_json(&response)),
        std::task::Poll::Ready(Some(response)) => Ok(Some(response)),
        std::task::Poll::Ready(None) => Err(protocol::error_list(
            "the subscription ended before it started",
            "INTERNAL",
        )),
        std::task::Poll::Pending => Ok(None),
    }
}

/// Whether a response is a failure of the whole operation: errors and no data.
fn failed(response: &Response) -> bool {
    response.data == async_graphql::Value::Null && response.is_err()
}

/// A response as JSON text, or `None` (logged) in the unlikely case it does not serialize.
fn serialize(response: &Response) -> Option<String> {
    serde_json::to_string(response)
        .inspect_err(|error| tracing::error!(%error, "a subscription result did not serialize"))
        .ok()
}

impl Execution {
    /// Hands every result to every member, serialized once; then says the subscription is
    /// complete (the live hub ended: the server is stopping).
    async fn run(
        self: Arc<Self>,
        shared: Shared,
        first: Option<Response>,
        mut results: impl Stream<Item = Response> + Unpin,
    ) {
        if let Some(response) = first {
            self.deliver(&response);
        }
        while let Some(response) = results.next().await {
            self.deliver(&response);
        }
        if let Some(key) = &self.key {
            let mut shared = lock(&shared);
            if shared
                .get(key)
                .is_some_and(|other| Arc::ptr_eq(other, &self))
            {
                shared.remove(key);
            }
        }
        for member in lock(&self.members).by_number.values() {
            member.outbox.push(Outgoing::Complete {
                id: Arc::clone(&member.id),
            });
        }
    }

    /// Serializes `response` once and builds its message once per operation id and protocol
    /// (clients that number their operations alike share one text), then queues it for every
    /// member, or holds it for those catching up.
    fn deliver(&self, response: &Response) {
        let Some(payload) = serialize(response) else {
            return;
        };
        let seq = self.seq.get();
        let since = Instant::now();
        let mut members = lock(&self.members);
        let mut messages = HashMap::new();
        // Most members number alike: the last message fits the next member without a lookup.
        let mut last: Option<(Arc<str>, Protocol, Utf8Bytes)> = None;
        for member in members.by_number.values_mut() {
            let protocol = member.outbox.protocol();
            let message = match &last {
                Some((id, was, message)) if *id == member.id && *was == protocol => message.clone(),
                _ => {
                    let message = messages
                        .entry((Arc::clone(&member.id), protocol))
                        .or_insert_with(|| protocol::next(&member.id, &payload, protocol))
                        .clone();
                    last = Some((Arc::clone(&member.id), protocol, message.clone()));
                    message
                }
            };
            match &mut member.catching_up {
                None => member.outbox.push(Outgoing::Event {
                    text: message,
                    since,
                }),
                Some(held) if held.results.len() < self.hold => {
                    held.results.push((seq, message));
                }
                Some(held) => held.overflowed = true,
            }
        }
    }

    /// Removes member `number`; the last one out stops the execution.
    fn leave(self: &Arc<Self>, shared: &Shared, number: u64) {
        // The shared map is locked first, as in `join`, so an execution is never emptied and
        // looked up at the same time.
        let mut shared = lock(shared);
        let mut members = lock(&self.members);
        let Some(member) = members.by_number.remove(&number) else {
            return;
        };
        subscriptions(member.outbox.protocol()).decrement(1);
        if !members.by_number.is_empty() {
            return;
        }
        if let Some(key) = &self.key
            && shared
                .get(key)
                .is_some_and(|other| Arc::ptr_eq(other, self))
        {
            shared.remove(key);
        }
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl Membership {
    /// Whether the server has completed this subscription: its execution ended (the server is
    /// stopping), or its replay failed.
    pub fn ended(&self) -> bool {
        self.execution
            .task
            .get()
            .is_some_and(|task| task.is_finished())
            || !lock(&self.execution.members)
                .by_number
                .contains_key(&self.number)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(catch_up) = &self.catch_up {
            catch_up.abort();
        }
        self.execution.leave(&self.shared, self.number);
    }
}

/// A resuming member's replay, up to the point from which its execution serves it.
struct CatchUp {
    executions: Executions,
    execution: Arc<Execution>,
    number: u64,
    resume: Resume,
    id: Arc<str>,
    outbox: Outbox,
}

impl CatchUp {
    /// Replays up to `until`, then hands over to the execution: sends what it held for the
    /// member after `until` and lets it send the rest. When it held too much, replays further
    /// first.
    async fn run(self, mut until: Seq) {
        let mut after = self.resume.after;
        loop {
            let request = self.resume.request(Some((after, until)));
            let mut results = self.executions.schema.execute_stream(request);
            while let Some(response) = results.next().await {
                if let Some(payload) = serialize(&response) {
                    let next = protocol::next(&self.id, &payload, self.outbox.protocol());
                    self.outbox.push(Outgoing::Text(next));
                }
                if failed(&response) {
                    // The replay failed (the store is unreachable): the subscription ends, and
                    // the client may resume again.
                    self.outbox.push(Outgoing::Complete {
                        id: Arc::clone(&self.id),
                    });
                    self.execution.leave(&self.executions.shared, self.number);
                    return;
                }
            }
            let mut members = lock(&self.execution.members);
            let Some(member) = members.by_number.get_mut(&self.number) else {
                return;
            };
            let Some(held) = member.catching_up.take() else {
                return;
            };
            if held.overflowed {
                // Read under the members' lock: what the execution holds from now on is newer.
                member.catching_up = Some(Held::default());
                (after, until) = (until, self.executions.hub.last());
                tracing::debug!(
                    until = until.0,
                    "a resuming subscriber fell behind while catching up; replaying further"
                );
                continue;
            }
            tracing::debug!(
                until = until.0,
                held = held.results.len(),
                "a resuming subscriber caught up and joins its shared execution"
            );
            for (seq, message) in held.results {
                if seq > until {
                    member.outbox.push(Outgoing::Text(message));
                }
            }
            return;
        }
    }
}

impl Drop for Execution {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::WS_EXECUTIONS).decrement(1);
    }
}

/// The gauge of subscriptions running in `protocol`.
fn subscriptions(protocol: Protocol) -> metrics::Gauge {
    metrics::gauge!(telemetry::WS_SUBSCRIPTIONS, "protocol" => protocol.sec_websocket_protocol())
}

fn errors_json(response: &Response) -> Arc<str> {
    serde_json::to_string(&response.errors)
        .unwrap_or_else(|_| "[]".to_owned())
        .into()
}
