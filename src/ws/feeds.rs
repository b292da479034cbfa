//! Shared execution of subscriptions. Subscribers whose document and variables are the same
//! (after normalising whitespace, commas and comments) join one *feed*: one execution of the
//! document, each result serialized once and handed to every member's send queue. The work per
//! event therefore grows with the number of distinct documents, not of subscribers.
//!
//! A subscriber that resumes from a cursor given as a variable (`after: $after`) joins the feed
//! of the same document without a cursor at once, but catches up first: it replays, alone, what
//! was stored after its cursor up to the last event the server had passed on when it joined,
//! while the feed holds its results for it; then the held results newer than the replay go out,
//! and it is a member like any other. So a server restart, after which every client resumes,
//! does not leave one execution per client behind. A document with a literal cursor runs
//! alone throughout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_graphql::Positioned;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
};
use async_graphql::{Name, Request, Response, Variables};
use futures::{Stream, StreamExt};
use serde_json::Value;
use tungstenite::Utf8Bytes;

use super::Outbox;
use super::protocol::{self, Outgoing, Protocol};
use crate::graphql::{CatchUpTo, KillreportSchema, SeqTap};
use crate::killmail::Seq;
use crate::live::Hub;

type SharedFeeds = Arc<Mutex<HashMap<String, Arc<Feed>>>>;

/// Every shared feed of a server, by key; clone it freely.
#[derive(Clone)]
pub struct Feeds {
    schema: KillreportSchema,
    hub: Hub,
    shared: SharedFeeds,
    /// Results a feed holds for a member that is catching up; when more come, the member
    /// replays further instead.
    hold: usize,
}

struct Feed {
    /// Its key among the shared feeds; `None` for a feed of its own.
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
    /// While the member catches up: the feed's results for it, held.
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

/// One subscriber's place in a feed; leaving is dropping it.
pub struct Membership {
    shared: SharedFeeds,
    feed: Arc<Feed>,
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

/// How a request runs.
enum Sharing {
    /// On a feed of its own: not plain fields at the root, or a literal cursor.
    Alone,
    /// On the shared feed with this key.
    Shared(String),
    /// Catching up alone, then on the shared feed with this key.
    Resuming(String, Resume),
}

/// A request that resumes from the cursor in one of its variables.
struct Resume {
    query: String,
    operation_name: Option<String>,
    variables: Variables,
    /// The variable holding the cursor.
    variable: Name,
    after: Seq,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is a single insert or remove: a panic elsewhere cannot
    // leave them half-done, so a poisoned lock is taken as it is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Feeds {
    pub fn new(schema: KillreportSchema, hub: Hub, hold: usize) -> Self {
        Self {
            schema,
            hub,
            shared: Arc::default(),
            hold,
        }
    }

    /// Starts subscription `id` for the client behind `outbox`: joins the feed already running
    /// `request`, or starts one. `request` must hold a subscription operation, parsed.
    pub fn join(&self, mut request: Request, id: Arc<str>, outbox: Outbox) -> Joined {
        let live = |id, outbox| Joining {
            id,
            outbox,
            catching_up: false,
        };
        let joined = match sharing(&mut request) {
            Sharing::Alone => self.start(None, request, live(id, outbox)),
            Sharing::Shared(key) => self.enter(key, request, live(id, outbox)),
            Sharing::Resuming(key, resume) => self.resume(key, resume, id, outbox),
        };
        match joined {
            Ok(membership) => Joined::Live(membership),
            Err(errors) => Joined::Failed(errors),
        }
    }

    /// Joins the shared feed `key`, or starts it with `request`.
    fn enter(
        &self,
        key: String,
        request: Request,
        joining: Joining,
    ) -> Result<Membership, Arc<str>> {
        let mut shared = lock(&self.shared);
        if let Some(feed) = shared.get(&key) {
            return Ok(self.add_member(feed, joining));
        }
        let membership = self.start(Some(key.clone()), request, joining)?;
        shared.insert(key, Arc::clone(&membership.feed));
        Ok(membership)
    }

    /// Starts a feed running `request`, with one member.
    fn start(
        &self,
        key: Option<String>,
        request: Request,
        joining: Joining,
    ) -> Result<Membership, Arc<str>> {
        let seq = SeqTap::default();
        let mut results = Box::pin(self.schema.execute_stream(request.data(seq.clone())));
        let first = poll_once(&mut results)?;
        let feed = Arc::new(Feed {
            key,
            members: Mutex::default(),
            task: OnceLock::new(),
            seq,
            hold: self.hold,
        });
        let membership = self.add_member(&feed, joining);
        let task = tokio::spawn(Arc::clone(&feed).run(Arc::clone(&self.shared), first, results));
        // Set before anyone can leave: the membership is not handed out yet.
        let _ = feed.task.set(task.abort_handle());
        Ok(membership)
    }

    /// Joins the shared feed `key` as a member that catches up first (see the module's notes).
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
        // Read after joining: every event after this one reaches the member through the feed.
        let until = self.hub.last();
        let catch_up = CatchUp {
            feeds: self.clone(),
            feed: Arc::clone(&membership.feed),
            number: membership.number,
            resume,
            id,
            outbox,
        };
        membership.catch_up = Some(tokio::spawn(catch_up.run(until)).abort_handle());
        Ok(membership)
    }

    fn add_member(&self, feed: &Arc<Feed>, joining: Joining) -> Membership {
        let mut members = lock(&feed.members);
        let number = members.next;
        members.next += 1;
        let member = Member {
            id: joining.id,
            outbox: joining.outbox,
            catching_up: joining.catching_up.then(Held::default),
        };
        members.by_number.insert(number, member);
        Membership {
            shared: Arc::clone(&self.shared),
            feed: Arc::clone(feed),
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

impl Feed {
    /// Hands every result to every member, serialized once; then says the subscription is
    /// complete (the live hub ended: the server is stopping).
    async fn run(
        self: Arc<Self>,
        shared: SharedFeeds,
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
            if shared.get(key).is_some_and(|feed| Arc::ptr_eq(feed, &self)) {
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
        let mut members = lock(&self.members);
        let mut messages = HashMap::new();
        // Most members number alike: the last message fits the next member without a lookup.
        let mut last: Option<(Arc<str>, Protocol, Utf8Bytes)> = None;
        for member in members.by_number.values_mut() {
            let protocol = member.outbox.protocol;
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
                None => member.outbox.push(Outgoing::Text(message)),
                Some(held) if held.results.len() < self.hold => {
                    held.results.push((seq, message));
                }
                Some(held) => held.overflowed = true,
            }
        }
    }

    /// Removes member `number`; the last one out stops the feed.
    fn leave(self: &Arc<Self>, shared: &SharedFeeds, number: u64) {
        // The shared map is locked first, as in `join`, so a feed is never emptied and looked
        // up at the same time.
        let mut shared = lock(shared);
        let mut members = lock(&self.members);
        if members.by_number.remove(&number).is_none() || !members.by_number.is_empty() {
            return;
        }
        if let Some(key) = &self.key
            && shared.get(key).is_some_and(|feed| Arc::ptr_eq(feed, self))
        {
            shared.remove(key);
        }
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl Membership {
    /// Whether the server has completed this subscription: its feed ended (the server is
    /// stopping), or its replay failed.
    pub fn ended(&self) -> bool {
        self.feed.task.get().is_some_and(|task| task.is_finished())
            || !lock(&self.feed.members)
                .by_number
                .contains_key(&self.number)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(catch_up) = &self.catch_up {
            catch_up.abort();
        }
        self.feed.leave(&self.shared, self.number);
    }
}

/// A resuming member's replay, up to the point from which its feed serves it.
struct CatchUp {
    feeds: Feeds,
    feed: Arc<Feed>,
    number: u64,
    resume: Resume,
    id: Arc<str>,
    outbox: Outbox,
}

impl CatchUp {
    /// Replays up to `until`, then hands over to the feed: sends what it held for the member
    /// after `until` and lets it send the rest. When it held too much, replays further first.
    async fn run(self, mut until: Seq) {
        let mut after = self.resume.after;
        loop {
            let request = self.resume.request(Some((after, until)));
            let mut results = self.feeds.schema.execute_stream(request);
            while let Some(response) = results.next().await {
                if let Some(payload) = serialize(&response) {
                    let next = protocol::next(&self.id, &payload, self.outbox.protocol);
                    self.outbox.push(Outgoing::Text(next));
                }
                if failed(&response) {
                    // The replay failed (the store is unreachable): the subscription ends, and
                    // the client may resume again.
                    self.outbox.push(Outgoing::Complete {
                        id: Arc::clone(&self.id),
                    });
                    self.feed.leave(&self.feeds.shared, self.number);
                    return;
                }
            }
            let mut members = lock(&self.feed.members);
            let Some(member) = members.by_number.get_mut(&self.number) else {
                return;
            };
            let Some(held) = member.catching_up.take() else {
                return;
            };
            if held.overflowed {
                // Read under the members' lock: what the feed holds from now on is newer.
                member.catching_up = Some(Held::default());
                (after, until) = (until, self.feeds.hub.last());
                tracing::debug!(
                    until = until.0,
                    "a resuming subscriber fell behind while catching up; replaying further"
                );
                continue;
            }
            tracing::debug!(
                until = until.0,
                held = held.results.len(),
                "a resuming subscriber caught up and joins its shared feed"
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

impl Resume {
    /// The request replaying from `after` up to `until`, or with `None` the same request
    /// without a cursor (live only).
    fn request(&self, replay: Option<(Seq, Seq)>) -> Request {
        let mut variables = self.variables.clone();
        let cursor = match replay {
            Some((after, _)) => async_graphql::Value::String(after.0.to_string()),
            None => async_graphql::Value::Null,
        };
        variables.insert(self.variable.clone(), cursor);
        let mut request = Request::new(self.query.clone()).variables(variables);
        request.operation_name = self.operation_name.clone();
        match replay {
            Some((_, until)) => request.data(CatchUpTo(until)),
            None => request,
        }
    }
}

fn errors_json(response: &Response) -> Arc<str> {
    serde_json::to_string(&response.errors)
        .unwrap_or_else(|_| "[]".to_owned())
        .into()
}

/// The operation a request runs: the one it names, or the document's only one.
pub fn operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&document.operations, name) {
        (DocumentOperations::Single(operation), _) => Some(operation),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next()
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// How `request` runs (see [`Sharing`]). Its key is the normalised document, the operation
/// name and the variables in canonical JSON, the cursor variable left out when null or a
/// cursor (it has no default), so a resuming subscriber and one without a cursor share.
fn sharing(request: &mut Request) -> Sharing {
    let mut variables = request.variables.clone();
    let operation_name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return Sharing::Alone;
    };
    let Some(operation) = operation(document, operation_name.as_deref()) else {
        return Sharing::Alone;
    };
    if operation.node.ty != OperationType::Subscription {
        return Sharing::Alone;
    }
    let root = &operation.node.selection_set.node.items;
    let mut resume = None;
    for selection in root {
        let Selection::Field(field) = &selection.node else {
            return Sharing::Alone;
        };
        let after = field
            .node
            .arguments
            .iter()
            .find(|(name, _)| name.node.as_str() == "after");
        let Some((_, value)) = after else {
            continue;
        };
        // A literal, or the variable it names.
        let mut named = None;
        let literal = value.node.clone().into_const_with(|name| {
            named = Some(name);
            Ok::<_, std::convert::Infallible>(async_graphql::Value::Null)
        });
        let Some(variable) = named else {
            if literal.is_ok_and(|value| value == async_graphql::Value::Null) {
                continue;
            }
            return Sharing::Alone;
        };
        let defaulted = operation
            .node
            .variable_definitions
            .iter()
            .any(|definition| {
                definition.node.name.node == variable && definition.node.default_value.is_some()
            });
        match variables.get(&variable) {
            None | Some(async_graphql::Value::Null) if !defaulted => {}
            // A cursor that is not one is left to the resolver to refuse.
            Some(async_graphql::Value::String(cursor)) if !defaulted && root.len() == 1 => {
                match cursor.parse::<i64>() {
                    Ok(after) if after >= 0 => resume = Some((variable.clone(), Seq(after))),
                    _ => return Sharing::Alone,
                }
            }
            _ => return Sharing::Alone,
        }
        variables.remove(&variable);
    }
    let mut key = normalize(&request.query);
    key.push('\n');
    key.push_str(operation_name.as_deref().unwrap_or(""));
    key.push('\n');
    canonical(
        &serde_json::to_value(&variables).unwrap_or(Value::Null),
        &mut key,
    );
    match resume {
        None => Sharing::Shared(key),
        Some((variable, after)) => Sharing::Resuming(
            key,
            Resume {
                query: request.query.clone(),
                operation_name,
                variables: request.variables.clone(),
                variable,
                after,
            },
        ),
    }
}

/// A document with its insignificant characters dropped: comments, commas and whitespace
/// (one space is kept between two words or numbers). Strings are kept as they are.
pub fn normalize(query: &str) -> String {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(query.len());
    let mut gap = false;
    let mut rest = query;
    while let Some(c) = rest.chars().next() {
        if c == '#' {
            let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
            rest = &rest[end..];
            gap = true;
            continue;
        }
        if c.is_whitespace() || c == ',' || c == '\u{feff}' {
            rest = &rest[c.len_utf8()..];
            gap = true;
            continue;
        }
        if gap && out.chars().next_back().is_some_and(word) && word(c) {
            out.push(' ');
        }
        gap = false;
        if c == '"' {
            let length = string_length(rest);
            out.push_str(&rest[..length]);
            rest = &rest[length..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The length of the string literal at the start of `text` (a `"…"` or `"""…"""` string),
/// or of all of `text` when it never ends.
fn string_length(text: &str) -> usize {
    if let Some(body) = text.strip_prefix(r#"""""#) {
        let mut at = 0;
        while let Some(found) = body[at..].find(r#"""""#) {
            let end = at + found;
            if !body[..end].ends_with('\\') {
                return 3 + end + 3;
            }
            at = end + 3;
        }
        return text.len();
    }
    let mut escaped = false;
    for (index, c) in text.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return index + 1,
            '\n' => return index,
            _ => escaped = false,
        }
    }
    text.len()
}

/// JSON with object keys in sorted order, so equal values give equal text.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by_key(|(key, _)| key.as_str());
            out.push('{');
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::Variables;

    use super::*;

    #[test]
    fn documents_differing_only_in_layout_normalise_alike() {
        let a = "subscription OnNew {\n  killmailAdded(filter: {npc: false, minValue: 1e9}) {\n    killmailId # the id\n    victim { characterName }\n  }\n}";
        let b = "subscription OnNew{killmailAdded(filter:{npc:false minValue:1e9}){killmailId victim{characterName}}}";
        assert_eq!(normalize(a), normalize(b));
        assert_eq!(
            normalize(b),
            "subscription OnNew{killmailAdded(filter:{npc:false minValue:1e9}){killmailId victim{characterName}}}"
        );
        assert_ne!(
            normalize("subscription { killmailAdded { id } }"),
            normalize("subscription { killmailAdded { id hash } }")
        );
    }

    #[test]
    fn strings_keep_their_commas_spaces_and_hashes() {
        let query = r#"subscription { killmailAdded(after: "1, # 2") { id } } # "x""#;
        assert_eq!(
            normalize(query),
            r#"subscription{killmailAdded(after:"1, # 2"){id}}"#
        );
        let block = "query { a(s: \"\"\" x , \\\"\"\" y \"\"\") }";
        assert_eq!(normalize(block), "query{a(s:\"\"\" x , \\\"\"\" y \"\"\")}");
    }

    #[test]
    fn variables_are_keyed_whatever_their_order() {
        let mut a = String::new();
        canonical(
            &serde_json::json!({"f": {"npc": true, "allianceIds": ["1"]}, "g": 1}),
            &mut a,
        );
        let mut b = String::new();
        canonical(
            &serde_json::json!({"g": 1, "f": {"allianceIds": ["1"], "npc": true}}),
            &mut b,
        );
        assert_eq!(a, b);
    }

    fn sharing_of(query: &str, variables: Value) -> Sharing {
        let mut request = Request::new(query).variables(Variables::from_json(variables));
        sharing(&mut request)
    }

    /// The shared feed's key, and the cursor when the subscriber catches up first.
    fn key(query: &str, variables: Value) -> Option<(String, Option<Seq>)> {
        match sharing_of(query, variables) {
            Sharing::Alone => None,
            Sharing::Shared(key) => Some((key, None)),
            Sharing::Resuming(key, resume) => Some((key, Some(resume.after))),
        }
    }

    #[test]
    fn a_subscriber_resuming_through_a_variable_shares_the_feed_without_a_cursor() {
        let document = "subscription($after: String) { killmailAdded(after: $after) { id } }";
        let (live, cursor) = key(document, serde_json::json!({})).expect("shared");
        assert_eq!(cursor, None);
        assert_eq!(
            key(document, serde_json::json!({"after": null})),
            Some((live.clone(), None))
        );
        assert_eq!(
            key(document, serde_json::json!({"after": "12"})),
            Some((live, Some(Seq(12))))
        );
        // Not a cursor: the resolver refuses it, on a feed of its own.
        assert!(key(document, serde_json::json!({"after": "twelve"})).is_none());
        assert!(key(document, serde_json::json!({"after": "-1"})).is_none());
    }

    #[test]
    fn literal_and_defaulted_cursors_and_queries_run_alone() {
        let alone = |query: &str| key(query, Value::Null).is_none();
        assert!(alone(
            "subscription { killmailAdded(after: \"12\") { id } }"
        ));
        assert!(!alone("subscription { killmailAdded(after: null) { id } }"));
        assert!(alone(
            "subscription($a: String = \"3\") { killmailAdded(after: $a) { id } }"
        ));
        assert!(alone("query { killmail(id: 1) { id } }"));
        assert!(!alone("subscription Named { killmailAdded { id } }"));
        // Two root fields: which event a result is would be ambiguous.
        assert!(
            key(
                "subscription($a: String) { a: killmailAdded(after: $a) { id } b: killmailAdded { id } }",
                serde_json::json!({"a": "5"})
            )
            .is_none()
        );
    }
}
