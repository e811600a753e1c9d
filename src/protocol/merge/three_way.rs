//! The three-way merge of two live bodies against the client's base (`field-merge`, `crdt`).
//!
//! Key by key over the union of the three objects' keys, an absent key being a value of its
//! own ("missing"), at dotted path `p`:
//! - server == client: that value; server == base: the client's (a client-only change,
//!   removal included); client == base: the server's;
//! - both changed: two objects (the base an object or missing) merge recursively; anything
//!   else follows the path's rule: `server` (default), `client`, or `union` (two arrays: the
//!   server's elements then the client's it lacks; otherwise the server's value).
//!
//! Under `crdt`, a declared CRDT field takes its own rule first, whichever side changed
//! (a counter's delta counts even when both sides happen to hold the same number):
//! - `counter`: server + (client - base), a missing or non-numeric base counting as 0;
//!   integers exact, floats finite; otherwise (a side not a number, overflow) the field merges
//!   as above;
//! - `g-set`: the union, an absent side counting as empty (removals never win); a side that
//!   is not an array merges as above;
//! - `lww`: when the sides differ, the value of the document that wins by `lww_field` (the
//!   last-write-wins order, ties broken the same way), or the client's without `lww_field`.
//!
//! Objects that hold CRDT fields below them are always merged key by key, so no CRDT field is
//! decided wholesale with its parent. Values compare as jsonb does (keys in any order,
//! numbers by value). Recursion stops at [`DEPTH_MAX`], where the path's rule decides.

use std::cell::Cell;

use serde_json::{Map, Value};

use super::json::{DEPTH_MAX, same_opt};
use super::{CrdtKind, FieldRule, MergePolicy, Side, Strategy, crdt, order};

/// One merge of two documents under a policy.
pub(super) struct Merger<'a> {
    policy: &'a MergePolicy,
    server: Side<'a>,
    client: Side<'a>,
    /// Whether the client's document wins the last-write-wins order, once asked.
    client_later: Cell<Option<bool>>,
}

impl<'a> Merger<'a> {
    /// A merge of `client` into `server` (both whole documents) under `policy`.
    pub(super) fn new(policy: &'a MergePolicy, server: Side<'a>, client: Side<'a>) -> Self {
        Merger {
            policy,
            server,
            client,
            client_later: Cell::new(None),
        }
    }

    /// The merged body, from the base body `base`.
    pub(super) fn body(&self, base: &Value) -> Option<Value> {
        self.value(
            "",
            0,
            Some(base),
            Some(self.server.body),
            Some(self.client.body),
        )
    }

    fn value(
        &self,
        path: &str,
        depth: usize,
        b: Option<&Value>,
        s: Option<&Value>,
        c: Option<&Value>,
    ) -> Option<Value> {
        if self.policy.strategy == Strategy::Crdt {
            if let Some(&kind) = self.policy.crdt.get(path) {
                if let Some(merged) = self.crdt_value(kind, b, s, c) {
                    return merged;
                }
            } else if self.holds_crdt(path)
                && let Some(merged) = self.objects(path, depth, b, s, c)
            {
                return Some(merged);
            }
        }
        if same_opt(s, c) {
            return s.cloned();
        }
        if same_opt(s, b) {
            return c.cloned();
        }
        if same_opt(c, b) {
            return s.cloned();
        }
        if let Some(merged) = self.objects(path, depth, b, s, c) {
            return Some(merged);
        }
        self.rule(path, s, c)
    }

    /// A CRDT field's value; `None` when its rule does not apply to these values.
    fn crdt_value(
        &self,
        kind: CrdtKind,
        b: Option<&Value>,
        s: Option<&Value>,
        c: Option<&Value>,
    ) -> Option<Option<Value>> {
        match kind {
            CrdtKind::Counter => crdt::counter(b, s?, c?).map(Some),
            CrdtKind::GSet => crdt::g_set(s, c).map(Some),
            CrdtKind::Lww if same_opt(s, c) => Some(s.cloned()),
            CrdtKind::Lww => Some(if self.client_later() { c } else { s }.cloned()),
        }
    }

    /// Both sides' objects merged key by key; `None` unless both sides are objects, the base
    /// an object or missing, and the depth allows.
    fn objects(
        &self,
        path: &str,
        depth: usize,
        b: Option<&Value>,
        s: Option<&Value>,
        c: Option<&Value>,
    ) -> Option<Value> {
        let (Some(Value::Object(s)), Some(Value::Object(c))) = (s, c) else {
            return None;
        };
        let b = match b {
            None => None,
            Some(Value::Object(b)) => Some(b),
            Some(_) => return None,
        };
        if depth >= DEPTH_MAX {
            return None;
        }
        let keys = s
            .keys()
            .chain(c.keys().filter(|k| !s.contains_key(*k)))
            .chain(
                b.into_iter()
                    .flat_map(Map::keys)
                    .filter(|k| !s.contains_key(*k) && !c.contains_key(*k)),
            );
        let mut out = Map::new();
        for key in keys {
            let child = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let merged = self.value(
                &child,
                depth + 1,
                b.and_then(|b| b.get(key)),
                s.get(key),
                c.get(key),
            );
            if let Some(v) = merged {
                out.insert(key.clone(), v);
            }
        }
        Some(Value::Object(out))
    }

    /// A field changed on both sides, by its rule.
    fn rule(&self, path: &str, s: Option<&Value>, c: Option<&Value>) -> Option<Value> {
        match self.policy.rules.get(path).copied().unwrap_or_default() {
            FieldRule::Server => s.cloned(),
            FieldRule::Client => c.cloned(),
            FieldRule::Union => match (s, c) {
                (Some(sv), Some(cv)) => crdt::union(sv, cv).or_else(|| s.cloned()),
                _ => s.cloned(),
            },
        }
    }

    /// True when a declared CRDT field lies strictly below `path`.
    fn holds_crdt(&self, path: &str) -> bool {
        self.policy.crdt.keys().any(|k| {
            path.is_empty()
                || (k.len() > path.len()
                    && k.starts_with(path)
                    && k.as_bytes().get(path.len()) == Some(&b'.'))
        })
    }

    fn client_later(&self) -> bool {
        if let Some(known) = self.client_later.get() {
            return known;
        }
        let later = order::client_wins(self.policy.lww_field.as_deref(), self.server, self.client);
        self.client_later.set(Some(later));
        later
    }
}
