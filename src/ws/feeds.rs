//! Shared execution of subscriptions. Subscribers whose document and variables are the same
//! (after normalising whitespace, commas and comments) join one *feed*: one execution of the
//! document, each result serialized once and handed to every member's send queue. The work per
//! event therefore grows with the number of distinct documents, not of subscribers. A document
//! that resumes (`after`) replays a history of its own, so it gets a feed of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use async_graphql::Positioned;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
};
use async_graphql::{Request, Response};
use axum::extract::ws::Utf8Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;

use super::Outbox;
use super::protocol::{self, Outgoing, Protocol};
use crate::graphql::KillreportSchema;

/// Every shared feed of a server, by key; clone it freely.
#[derive(Clone)]
pub struct Feeds {
    schema: KillreportSchema,
    shared: Arc<Mutex<HashMap<String, Arc<Feed>>>>,
}

struct Feed {
    /// Its key among the shared feeds; `None` for a feed of its own.
    key: Option<String>,
    members: Mutex<Members>,
    task: OnceLock<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct Members {
    next: u64,
    by_number: HashMap<u64, Member>,
}

struct Member {
    id: Arc<str>,
    outbox: Outbox,
}

/// One subscriber's place in a feed; leaving is dropping it.
pub struct Membership {
    shared: Arc<Mutex<HashMap<String, Arc<Feed>>>>,
    feed: Arc<Feed>,
    number: u64,
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

impl Feeds {
    pub fn new(schema: KillreportSchema) -> Self {
        Self {
            schema,
            shared: Arc::default(),
        }
    }

    /// Starts subscription `id` for the client behind `outbox`: joins the feed already running
    /// `request`, or starts one. `request` must hold a subscription operation, parsed.
    pub fn join(&self, mut request: Request, id: Arc<str>, outbox: Outbox) -> Joined {
        let key = shared_key(&mut request);
        let mut shared = lock(&self.shared);
        if let Some(feed) = key.as_ref().and_then(|key| shared.get(key)) {
            return Joined::Live(self.add_member(feed, id, outbox));
        }
        let mut results = Box::pin(self.schema.execute_stream(request));
        // The resolver registers with the live hub and returns without waiting, so one poll
        // shows whether the operation failed up front (validation, arguments): then it yields
        // an error response without data at once. Otherwise nothing is ready yet, or a first
        // live result is.
        let first = match results
            .as_mut()
            .poll_next(&mut std::task::Context::from_waker(
                futures::task::noop_waker_ref(),
            )) {
            std::task::Poll::Ready(Some(response))
                if response.data == async_graphql::Value::Null && response.is_err() =>
            {
                return Joined::Failed(errors_json(&response));
            }
            std::task::Poll::Ready(Some(response)) => Some(response),
            std::task::Poll::Ready(None) => {
                return Joined::Failed(protocol::error_list(
                    "the subscription ended before it started",
                    "INTERNAL",
                ));
            }
            std::task::Poll::Pending => None,
        };
        let feed = Arc::new(Feed {
            key: key.clone(),
            members: Mutex::default(),
            task: OnceLock::new(),
        });
        let membership = self.add_member(&feed, id, outbox);
        let task = tokio::spawn(Arc::clone(&feed).run(Arc::clone(&self.shared), first, results));
        // Set before anyone can leave: the membership is not handed out yet.
        let _ = feed.task.set(task.abort_handle());
        if let Some(key) = key {
            shared.insert(key, feed);
        }
        Joined::Live(membership)
    }

    fn add_member(&self, feed: &Arc<Feed>, id: Arc<str>, outbox: Outbox) -> Membership {
        let mut members = lock(&feed.members);
        let number = members.next;
        members.next += 1;
        members.by_number.insert(number, Member { id, outbox });
        Membership {
            shared: Arc::clone(&self.shared),
            feed: Arc::clone(feed),
            number,
        }
    }
}

impl Feed {
    /// Hands every result to every member, serialized once; then says the subscription is
    /// complete (the live hub ended: the server is stopping).
    async fn run(
        self: Arc<Self>,
        shared: Arc<Mutex<HashMap<String, Arc<Feed>>>>,
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
    /// member.
    fn deliver(&self, response: &Response) {
        let payload = match serde_json::to_string(response) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "a subscription result did not serialize");
                return;
            }
        };
        let members = lock(&self.members);
        let mut messages = HashMap::new();
        // Most members number alike: the last message fits the next member without a lookup.
        let mut last: Option<(&str, Protocol, Utf8Bytes)> = None;
        for member in members.by_number.values() {
            let protocol = member.outbox.protocol;
            let message = match &last {
                Some((id, was, message)) if *id == &*member.id && *was == protocol => {
                    message.clone()
                }
                _ => messages
                    .entry((&*member.id, protocol))
                    .or_insert_with(|| protocol::next(&member.id, &payload, protocol))
                    .clone(),
            };
            member.outbox.push(Outgoing::Text(message.clone()));
            last = Some((&member.id, protocol, message));
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        // The shared map is locked first, as in `join`, so a feed is never emptied and looked
        // up at the same time.
        let mut shared = lock(&self.shared);
        let mut members = lock(&self.feed.members);
        members.by_number.remove(&self.number);
        if !members.by_number.is_empty() {
            return;
        }
        if let Some(key) = &self.feed.key
            && shared
                .get(key)
                .is_some_and(|feed| Arc::ptr_eq(feed, &self.feed))
        {
            shared.remove(key);
        }
        if let Some(task) = self.feed.task.get() {
            task.abort();
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

/// The key under which `request` is shared, or `None` when it must run on its own: when it
/// resumes from a cursor (its history is its own) or its root selection is not plain fields.
fn shared_key(request: &mut Request) -> Option<String> {
    let variables = request.variables.clone();
    let operation_name = request.operation_name.clone();
    let document = request.parsed_query().ok()?;
    let operation = operation(document, operation_name.as_deref())?;
    if operation.node.ty != OperationType::Subscription {
        return None;
    }
    for selection in &operation.node.selection_set.node.items {
        let Selection::Field(field) = &selection.node else {
            return None;
        };
        let after = field
            .node
            .arguments
            .iter()
            .find(|(name, _)| name.node.as_str() == "after");
        if let Some((_, value)) = after {
            // The argument's value: a literal, or a variable given or defaulted.
            let resolved = value.node.clone().into_const_with(|name| {
                let default = || {
                    let definitions = &operation.node.variable_definitions;
                    definitions
                        .iter()
                        .find(|definition| definition.node.name.node == name)
                        .and_then(|definition| definition.node.default_value.clone())
                        .map(|value| value.node)
                };
                let value = variables.get(&name).cloned().or_else(default);
                Ok::<_, std::convert::Infallible>(value.unwrap_or(async_graphql::Value::Null))
            });
            if resolved.is_ok_and(|value| value != async_graphql::Value::Null) {
                return None;
            }
        }
    }
    let mut key = normalize(&request.query);
    key.push('\n');
    key.push_str(operation_name.as_deref().unwrap_or(""));
    key.push('\n');
    canonical(
        &serde_json::to_value(&variables).unwrap_or(Value::Null),
        &mut key,
    );
    Some(key)
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

    fn key(query: &str, variables: Value) -> Option<String> {
        let mut request = Request::new(query).variables(Variables::from_json(variables));
        shared_key(&mut request)
    }

    #[test]
    fn only_subscriptions_that_do_not_resume_are_shared() {
        let document = "subscription($after: String) { killmailAdded(after: $after) { id } }";
        assert!(key(document, serde_json::json!({})).is_some());
        assert!(key(document, serde_json::json!({"after": null})).is_some());
        assert!(key(document, serde_json::json!({"after": "12"})).is_none());
        assert!(
            key(
                "subscription { killmailAdded(after: \"12\") { id } }",
                Value::Null
            )
            .is_none()
        );
        assert!(
            key(
                "subscription { killmailAdded(after: null) { id } }",
                Value::Null
            )
            .is_some()
        );
        assert!(
            key(
                "subscription($a: String = \"3\") { killmailAdded(after: $a) { id } }",
                Value::Null
            )
            .is_none()
        );
        assert!(key("query { killmail(id: 1) { id } }", Value::Null).is_none());
        assert!(key("subscription Named { killmailAdded { id } }", Value::Null).is_some());
    }
}
