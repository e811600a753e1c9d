//! Which of two documents is the later write under last-write-wins, by the collection's
//! `lww_field`. The order depends only on the two states, never on which one arrived first,
//! so every process and every retry picks the same winner.

use std::cmp::Ordering;

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use super::Side;
use super::json::{Num, canonical};

/// An `lww_field` value as far as ordering goes.
#[derive(Debug, Clone, Copy)]
enum Key {
    /// Absent, or of a type (or text) that has no order: sorts below everything.
    Lowest,
    /// A JSON number.
    Number(Num),
    /// An RFC 3339 timestamp, compared as an instant (offsets applied).
    Instant(DateTime<FixedOffset>),
}

/// The `lww_field` value of `body` at `path` (through nested objects).
fn key(body: &Value, path: &[String]) -> Key {
    let mut at = body;
    for part in path {
        match at.get(part.as_str()) {
            Some(next) => at = next,
            None => return Key::Lowest,
        }
    }
    match at {
        Value::Number(n) => Key::Number(Num::of(n)),
        Value::String(s) => DateTime::parse_from_rfc3339(s).map_or(Key::Lowest, Key::Instant),
        _ => Key::Lowest,
    }
}

/// Numbers: exactly when both are integers, else as f64.
fn numbers(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(a), Num::Int(b)) => a.cmp(&b),
        _ => a
            .as_f64()
            .partial_cmp(&b.as_f64())
            .unwrap_or(Ordering::Equal),
    }
}

/// Orders two keys. A number and a timestamp have no order between them: both count as
/// lowest, so the tie-break decides.
fn keys(a: Key, b: Key) -> Ordering {
    match (a, b) {
        (Key::Number(a), Key::Number(b)) => numbers(a, b),
        (Key::Instant(a), Key::Instant(b)) => a.cmp(&b),
        (Key::Lowest, Key::Lowest) => Ordering::Equal,
        (Key::Lowest, _) => Ordering::Less,
        (_, Key::Lowest) => Ordering::Greater,
        (Key::Number(_), Key::Instant(_)) | (Key::Instant(_), Key::Number(_)) => Ordering::Equal,
    }
}

/// Orders `a` against `b` as writes: by `lww_field`, then by the canonical text of the
/// bodies (sorted keys, numbers by value), then a tombstone above a live document. `Equal`
/// only for the same state.
pub(super) fn compare(lww_field: &[String], a: Side<'_>, b: Side<'_>) -> Ordering {
    keys(key(a.body, lww_field), key(b.body, lww_field))
        .then_with(|| canonical(a.body).cmp(&canonical(b.body)))
        .then_with(|| a.deleted.cmp(&b.deleted))
}

/// True when `client` is the later write than `server`: always without `lww_field` (the
/// later push wins), else when it orders strictly above by [`compare`].
pub(super) fn client_wins(
    lww_field: Option<&[String]>,
    server: Side<'_>,
    client: Side<'_>,
) -> bool {
    match lww_field {
        None => true,
        Some(path) => compare(path, client, server) == Ordering::Greater,
    }
}
