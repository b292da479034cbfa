//! Which execution a subscription request joins, worked out from the request alone (no I/O):
//! its key, which is the document with its insignificant characters dropped, the operation name
//! and the variables in canonical JSON; or that it runs alone. A request resuming from a
//! cursor given as a variable (`after: $after`) is keyed as the same document without a
//! cursor, and keeps what it needs to replay up to the point where it joins (see
//! `executions`). A subscription whose results depend on the caller's session
//! (`graphql::PRIVATE_SUBSCRIPTIONS`) always runs alone.

use async_graphql::Positioned;
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
};
use async_graphql::{Name, Request, Variables};
use serde_json::Value;

use crate::graphql::CatchUpTo;
use crate::killmail::Seq;

/// How a request runs.
pub enum Sharing {
    /// On an execution of its own: not plain fields at the root, or a literal cursor.
    Alone,
    /// On the shared execution with this key.
    Shared(String),
    /// Catching up alone, then on the shared execution with this key.
    Resuming(String, Resume),
}

impl Sharing {
    /// How `request` runs. Its key is the normalised document, the operation name and the
    /// variables in canonical JSON, the cursor variable left out when null or a cursor (it has no
    /// default), so a resuming subscriber and one without a cursor share.
    pub fn of(request: &mut Request) -> Sharing {
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
            // Its results depend on the caller's session.
            if crate::graphql::PRIVATE_SUBSCRIPTIONS.contains(&field.node.name.node.as_str()) {
                return Sharing::Alone;
            }
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
                // A cursor that is not one is left to the resolver to refuse. Only
                // `killmailAdded` resumes on a shared execution (`events` runs alone).
                Some(async_graphql::Value::String(cursor))
                    if !defaulted
                        && root.len() == 1
                        && field.node.name.node.as_str() == "killmailAdded" =>
                {
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
}

/// A request that resumes from the cursor in one of its variables.
pub struct Resume {
    query: String,
    operation_name: Option<String>,
    variables: Variables,
    /// The variable holding the cursor.
    variable: Name,
    /// The cursor it resumes from.
    pub after: Seq,
}

impl Resume {
    /// The request replaying from `after` up to `until`, or with `None` the same request
    /// without a cursor (live only).
    pub fn request(&self, replay: Option<(Seq, Seq)>) -> Request {
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

/// A document with its insignificant characters dropped: comments, commas and whitespace
/// (one space is kept between two words or numbers). Strings are kept as they are.
fn normalize(query: &str) -> String {
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
        Sharing::of(&mut request)
    }

    /// The shared execution's key, and the cursor when the subscriber catches up first.
    fn key(query: &str, variables: Value) -> Option<(String, Option<Seq>)> {
        match sharing_of(query, variables) {
            Sharing::Alone => None,
            Sharing::Shared(key) => Some((key, None)),
            Sharing::Resuming(key, resume) => Some((key, Some(resume.after))),
        }
    }

    #[test]
    fn a_subscriber_resuming_through_a_variable_shares_the_execution_without_a_cursor() {
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
        // Not a cursor: the resolver refuses it, on an execution of its own.
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
