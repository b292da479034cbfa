//! Hostile inputs for proptest: arbitrary bytes, arbitrary JSON, and real bodies mutated byte
//! by byte (flipped, inserted, removed, truncated) or field by field (a value replaced by a
//! hostile one, a key removed). The decoders' fuzzing and the WebSocket fuzzing draw from here.

use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};

/// One change to a body's bytes.
#[derive(Debug, Clone)]
enum ByteEdit {
    Set(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

/// Bytes that matter to a JSON parser come up more often than chance would have them.
fn json_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        select(b"{}[]\":,-+.0123456789eE \\ntfalsu".to_vec()),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        4 => (any::<Index>(), json_byte()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        2 => (any::<Index>(), json_byte()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        2 => any::<Index>().prop_map(ByteEdit::Remove),
        1 => any::<Index>().prop_map(ByteEdit::Truncate),
    ]
}

fn edit_bytes(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        match edit {
            ByteEdit::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            ByteEdit::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            ByteEdit::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
            ByteEdit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        }
    }
    bytes
}

/// One change to a body's JSON: the value at one place (chosen among all of them, in
/// pre-order) replaced, or removed from its object or array.
#[derive(Debug, Clone)]
enum JsonEdit {
    Replace(Index, Value),
    Remove(Index),
}

/// Values that have broken decoders before: extremes, wrong types, near-valid text, and a
/// nesting deeper than serde_json's recursion limit.
fn hostile_value() -> impl Strategy<Value = Value> {
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        select(vec![
            0,
            -1,
            1,
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::MAX,
            i64::MIN,
        ])
        .prop_map(Value::from),
        Just(json!(u64::MAX)),
        any::<f64>().prop_map(|f| json!(f)),
        select(vec![
            "",
            "2021-12-03T00:00:08Z",
            "2021-12-03T23:59:60Z",
            "0000-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            "2021-02-30T00:00:00Z",
            "0123456789abcdef0123456789abcdef01234567",
            "0123456789ABCDEF0123456789ABCDEF0123456Z",
            "redisq",
            "import",
            "\u{0}",
            "\u{1F680}",
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!([{}])),
        Just(deep),
    ]
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        3 => (any::<Index>(), hostile_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<Index>().prop_map(JsonEdit::Remove),
    ]
}

/// Values below the root, counted in pre-order.
fn count_places(value: &Value) -> usize {
    match value {
        Value::Object(map) => map.values().map(|v| 1 + count_places(v)).sum(),
        Value::Array(items) => items.iter().map(|v| 1 + count_places(v)).sum(),
        _ => 0,
    }
}

/// Applies `edit` to the `n`-th value below `value` in pre-order; `n` counts down as the walk
/// passes values by. True once done.
fn edit_place(value: &mut Value, n: &mut usize, edit: &JsonEdit) -> bool {
    let keys: Vec<String> = match value {
        Value::Object(map) => map.keys().cloned().collect(),
        Value::Array(items) => (0..items.len()).map(|i| i.to_string()).collect(),
        _ => return false,
    };
    for (i, key) in keys.iter().enumerate() {
        if *n == 0 {
            match (value, edit) {
                (Value::Object(map), JsonEdit::Replace(_, new)) => {
                    map.insert(key.clone(), new.clone());
                }
                (Value::Array(items), JsonEdit::Replace(_, new)) => items[i] = new.clone(),
                (Value::Object(map), JsonEdit::Remove(_)) => {
                    map.remove(key);
                }
                (Value::Array(items), JsonEdit::Remove(_)) => {
                    items.remove(i);
                }
                _ => {}
            }
            return true;
        }
        *n -= 1;
        let child = match value {
            Value::Object(map) => map.get_mut(key),
            Value::Array(items) => items.get_mut(i),
            _ => None,
        };
        if child.is_some_and(|child| edit_place(child, n, edit)) {
            return true;
        }
    }
    false
}

fn edit_json(body: &[u8], edits: &[JsonEdit]) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(body).expect("fixtures are JSON");
    for edit in edits {
        let places = count_places(&value);
        if places == 0 {
            break;
        }
        let (JsonEdit::Replace(index, _) | JsonEdit::Remove(index)) = edit;
        edit_place(&mut value, &mut index.index(places), edit);
    }
    serde_json::to_vec(&value).expect("a value serializes")
}

/// Any JSON document, a few levels deep.
pub fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A decoder's input: arbitrary bytes, arbitrary JSON, or one of `corpus` mutated.
pub fn input(corpus: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let by_bytes = (
        select(corpus.clone()),
        prop::collection::vec(byte_edit(), 1..6),
    )
        .prop_map(|(body, edits)| edit_bytes(body, &edits));
    let by_fields = (select(corpus), prop::collection::vec(json_edit(), 1..4))
        .prop_map(|(body, edits)| edit_json(&body, &edits));
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => any_json().prop_map(|v| serde_json::to_vec(&v).expect("a value serializes")),
        3 => by_bytes,
        4 => by_fields,
    ]
}
