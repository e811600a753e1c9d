//! JSON equality and canonical text for merging, the way jsonb sees values: object keys in no
//! particular order, numbers by value (`1` and `1.0` are the same number). A body read back
//! from PostgreSQL and the same body held by a JavaScript client may differ in exactly these
//! ways; a merge that told them apart would see changes nobody made.

use std::fmt::Write as _;

use serde_json::{Number, Value};

/// Deeper than any stored body (`json_depth_max` is at most 128, serde_json's parser stops at
/// 128); values built deeper than this are compared as different and printed with a marker
/// instead of overflowing the stack.
pub(super) const DEPTH_MAX: usize = 256;

/// A number reduced to one form per value: integral values (of any JSON spelling) that fit
/// 128 bits are integers, everything else is an `f64` (never NaN: serde_json refuses it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Num {
    /// An integral value.
    Int(i128),
    /// A fractional (or huge) value.
    Float(f64),
}

/// 2^64: below it, an integral f64 is exactly an i128 and may equal a u64.
const INT_FLOAT_MAX: f64 = 18_446_744_073_709_551_616.0;

impl Num {
    /// The normal form of `n`.
    pub(super) fn of(n: &Number) -> Num {
        if let Some(i) = n.as_i64() {
            return Num::Int(i128::from(i));
        }
        if let Some(u) = n.as_u64() {
            return Num::Int(i128::from(u));
        }
        let f = n.as_f64().unwrap_or(0.0);
        if f.fract() == 0.0 && f.abs() < INT_FLOAT_MAX {
            // Exact: an integral f64 below 2^64 is representable as i128.
            Num::Int(f as i128)
        } else {
            Num::Float(f)
        }
    }

    /// The value as an f64 (rounded when it is a large integer).
    pub(super) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// True when `a` and `b` are the same JSON value as jsonb compares them; absent values
/// (`None`) equal only each other.
pub(super) fn same_opt(a: Option<&Value>, b: Option<&Value>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same(a, b),
        _ => false,
    }
}

/// True when `a` and `b` are the same JSON value as jsonb compares them.
pub(super) fn same(a: &Value, b: &Value) -> bool {
    same_at(a, b, 0)
}

fn same_at(a: &Value, b: &Value, depth: usize) -> bool {
    if depth > DEPTH_MAX {
        return false;
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => Num::of(x) == Num::of(y),
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_at(x, y, depth + 1))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_at(v, w, depth + 1)))
        }
        _ => false,
    }
}

/// The canonical text of `v`: keys sorted, no spaces, numbers in their normal form (so two
/// values have the same text exactly when [`same`] holds). Used to order documents for
/// tie-breaks and to find duplicates in set unions.
pub(super) fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out, 0);
    out
}

fn write_canonical(v: &Value, out: &mut String, depth: usize) {
    if depth > DEPTH_MAX {
        out.push('\u{0}');
        return;
    }
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match Num::of(n) {
            Num::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Num::Float(f) => {
                out.push_str(&Number::from_f64(f).map_or_else(String::new, |n| n.to_string()))
            }
        },
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out, depth + 1);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here, not by relying on serde_json's map: its `preserve_order` feature
            // (which any dependency may switch on) keeps insertion order instead.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(item, out, depth + 1);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    // serde_json's escaping: a String always serializes.
    out.push_str(&Value::from(s).to_string());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_compare_by_value_and_keys_in_any_order() {
        assert!(same(
            &json!({"a": 1, "b": [2.0]}),
            &json!({"b": [2], "a": 1.0})
        ));
        assert!(same(
            &json!(u64::MAX),
            &json!(18_446_744_073_709_551_615u64)
        ));
        assert!(same(&json!(-0.0), &json!(0)));
        assert!(!same(&json!(1), &json!(1.5)));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!same(&json!("1"), &json!(1)));
        assert_eq!(
            canonical(&json!({"b": [2.0, 1.5], "a": "x\"y"})),
            r#"{"a":"x\"y","b":[2,1.5]}"#
        );
        assert_eq!(canonical(&json!(1e300)), canonical(&json!(1.0e300)));
    }

    #[test]
    fn canonical_text_agrees_with_equality() {
        let values = [
            json!(1),
            json!(1.0),
            json!(-0.0),
            json!(0),
            json!(1.25),
            json!(9.223_372_036_854_776e18),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e30),
            json!({"a": [1, {"b": 2.0}]}),
            json!({"a": [1.0, {"b": 2}]}),
            json!("s"),
            json!(null),
        ];
        for a in &values {
            for b in &values {
                assert_eq!(same(a, b), canonical(a) == canonical(b), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn values_deeper_than_the_guard_do_not_overflow() {
        let mut deep = json!(1);
        for _ in 0..DEPTH_MAX + 10 {
            deep = json!([deep]);
        }
        assert!(!same(&deep, &deep.clone()));
        assert!(canonical(&deep).contains('\u{0}'));
    }
}
