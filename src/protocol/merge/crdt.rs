//! The value rules of CRDT fields and of the `union` field rule. Each returns `None` when it
//! does not apply to the values at hand (the caller then merges the field like any other).

use std::collections::HashSet;

use serde_json::{Number, Value};

use super::json::{Num, canonical};

/// A counter: the server's value plus the client's delta (`client - base`, a missing or
/// non-numeric base counting as 0). Integers stay integers (exact, `None` beyond 64 bits);
/// otherwise f64, `None` unless finite. `None` also when the server's or the client's value
/// is not a number.
pub(super) fn counter(base: Option<&Value>, server: &Value, client: &Value) -> Option<Value> {
    let s = Num::of(server.as_number()?);
    let c = Num::of(client.as_number()?);
    let b = base.and_then(Value::as_number).map_or(Num::Int(0), Num::of);
    match (s, c, b) {
        // Each operand fits 64 bits, so i128 cannot overflow; the result must fit again.
        (Num::Int(s), Num::Int(c), Num::Int(b)) => {
            let sum = s + (c - b);
            if let Ok(i) = i64::try_from(sum) {
                Some(Value::from(i))
            } else {
                u64::try_from(sum).ok().map(Value::from)
            }
        }
        _ => {
            let sum = s.as_f64() + (c.as_f64() - b.as_f64());
            Number::from_f64(sum).map(Value::Number)
        }
    }
}

/// A union of arrays: the server's elements in order, then the client's elements that are not
/// already there (by value; a client's own duplicates are added once). `None` unless both
/// are arrays.
pub(super) fn union(server: &Value, client: &Value) -> Option<Value> {
    let (Value::Array(s), Value::Array(c)) = (server, client) else {
        return None;
    };
    let mut seen: HashSet<String> = s.iter().map(canonical).collect();
    let mut out = s.clone();
    for item in c {
        if seen.insert(canonical(item)) {
            out.push(item.clone());
        }
    }
    Some(Value::Array(out))
}

/// A grow-only set: the [`union`] of both sides, an absent side counting as empty, so
/// neither side's removals (of elements or of the whole field) ever win. `None` when a
/// present side is not an array.
pub(super) fn g_set(server: Option<&Value>, client: Option<&Value>) -> Option<Value> {
    let empty = Value::Array(Vec::new());
    match (server, client) {
        (None, None) => None,
        (s, c) => union(s.unwrap_or(&empty), c.unwrap_or(&empty)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counters_add_the_delta() {
        assert_eq!(
            counter(Some(&json!(5)), &json!(8), &json!(7)),
            Some(json!(10))
        );
        assert_eq!(counter(None, &json!(8), &json!(2)), Some(json!(10)));
        assert_eq!(
            counter(Some(&json!("x")), &json!(8), &json!(2)),
            Some(json!(10))
        );
        assert_eq!(
            counter(Some(&json!(1.5)), &json!(2), &json!(2)),
            Some(json!(2.5))
        );
        assert_eq!(
            counter(Some(&json!(0)), &json!(u64::MAX - 1), &json!(1)),
            Some(json!(u64::MAX))
        );
        assert_eq!(counter(Some(&json!(0)), &json!(u64::MAX), &json!(1)), None);
        assert_eq!(counter(Some(&json!(0)), &json!(i64::MIN), &json!(-1)), None);
        assert_eq!(
            counter(Some(&json!(-1e308)), &json!(1e308), &json!(1e308)),
            None
        );
        assert_eq!(counter(Some(&json!(0)), &json!("8"), &json!(1)), None);
    }

    #[test]
    fn sets_grow_only() {
        assert_eq!(
            union(&json!([1, 2, 2]), &json!([3, 2.0, 3, {"a": 1}])),
            Some(json!([1, 2, 2, 3, {"a": 1}]))
        );
        assert_eq!(union(&json!([1]), &json!("x")), None);
        assert_eq!(g_set(None, Some(&json!([1]))), Some(json!([1])));
        assert_eq!(g_set(Some(&json!([1])), None), Some(json!([1])));
        assert_eq!(g_set(Some(&json!({})), Some(&json!([1]))), None);
    }
}
