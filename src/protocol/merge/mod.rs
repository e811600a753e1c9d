//! Server-side conflict resolution: what a conflicting row becomes under its collection's
//! strategy. Pure functions of the three states (the client's base, the server's current
//! state, the client's new state), so the push decision can run them again inside the
//! store's transaction and every replica gets the same answer.

#[cfg(test)]
mod convergence_tests;
mod crdt;
mod json;
mod order;
mod policy;
mod resolve;
#[cfg(test)]
mod tests;
mod three_way;

pub use policy::{CrdtKind, FieldRule, MergePolicy, OnDelete, Strategy};

use serde_json::Value;

/// One state in a three-way decision.
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The JSON body (an object).
    pub body: &'a Value,
    /// Tombstone flag.
    pub deleted: bool,
}

/// What happens to a conflicting row.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Not written: the server's state stands and goes back as a conflict. `why` says why the
    /// strategy could not resolve the row (`None`: the row simply lost).
    Keep {
        /// Why no resolution was possible, in words for people.
        why: Option<String>,
    },
    /// Written: the state to store.
    Write {
        /// The resolved body.
        body: Value,
        /// Tombstone flag.
        deleted: bool,
    },
}

/// Resolves a conflicting row: `server` is the current state, `client` the row's new state,
/// `base` the state the client's edit started from (its assumed master state; `None` when it
/// believed the document new). First-write-wins always keeps the server's state; the other
/// strategies' exact rules are in the `resolve` and `three_way` modules' documentation.
pub fn resolve(
    policy: &MergePolicy,
    base: Option<Side<'_>>,
    server: Side<'_>,
    client: Side<'_>,
) -> Resolution {
    resolve::resolve(policy, base, server, client)
}
