//! JSON compared as its readers see it: numbers as numbers (`5` and `5.0` alike), key order
//! aside, and the first place two values differ named, so that a failing round trip says where.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every number as an f64, so that `5` and `5.0` compare equal, as they do to JSON readers.
pub fn normalise(value: Value) -> Value {
    match value {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), Value::from),
        Value::Array(values) => Value::Array(values.into_iter().map(normalise).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, normalise(v))).collect())
        }
        other => other,
    }
}

/// The first place two JSON values differ, as a path like `victim.items[3].flag`, with both
/// sides; `None` when they are equal (key order aside).
pub fn first_difference(expected: &Value, actual: &Value, path: &str) -> Option<String> {
    let at = |p: &str| {
        if p.is_empty() {
            "(root)".to_owned()
        } else {
            p.to_owned()
        }
    };
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let keys: BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            keys.into_iter().find_map(|key| {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (e.get(key), a.get(key)) {
                    (Some(e), Some(a)) => first_difference(e, a, &sub),
                    (Some(e), None) => Some(format!("{sub}: expected {e}, missing")),
                    (None, Some(a)) => Some(format!("{sub}: not expected, got {a}")),
                    (None, None) => None,
                }
            })
        }
        (Value::Array(e), Value::Array(a)) => {
            let common = e
                .iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (e, a))| first_difference(e, a, &format!("{path}[{i}]")));
            common.or_else(|| {
                (e.len() != a.len()).then(|| {
                    format!(
                        "{}: expected {} elements, got {}",
                        at(path),
                        e.len(),
                        a.len()
                    )
                })
            })
        }
        (e, a) if e == a => None,
        (e, a) => Some(format!("{}: expected {e}, got {a}", at(path))),
    }
}
