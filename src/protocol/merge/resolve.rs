//! The strategies' rules (see [`super::resolve()`]). Only conflicting rows get here: the
//! client's assumed state differs from the server's.
//!
//! - `first-write-wins`: always keeps the server's state.
//! - `last-write-wins`: with `lww_field`, the client's state is written when it orders above
//!   the server's: by the field's value (numbers by value, RFC 3339 strings as instants; a
//!   missing or unorderable value, or a number against a timestamp, sorts lowest), then by the
//!   bodies' canonical text (sorted keys), then a tombstone above a live document; the
//!   greater wins, so the answer does not depend on arrival order. Tombstones are ordered by
//!   the body sent with the delete; `on_delete` does not apply. Without `lww_field` the
//!   client's state (the later push) is always written.
//! - `field-merge` and `crdt` (three-way, see [`super::three_way`]):
//!   - both deleted: keep;
//!   - no base (the client believed the document new): over a tombstone the client's state is
//!     written as sent (a re-create); over a live document nothing can be merged: keep, and
//!     say why;
//!   - client deleted, server live: `delete-wins` writes the tombstone, `edit-wins` keeps;
//!   - server deleted, client live: `delete-wins` keeps, `edit-wins` writes the client's
//!     state (the edit brings the document back);
//!   - both live: the bodies merge against the base's body (`{}` when the base is a
//!     tombstone: the client re-created a document it knew deleted); a merge equal to the
//!     server's body writes nothing (keep).

use super::json::same;
use super::three_way::Merger;
use super::{MergePolicy, OnDelete, Resolution, Side, Strategy, order};

/// Why a merge strategy keeps the server's state for a row without a base.
pub(super) const NO_BASE: &str =
    "no assumed_master_state to merge against: the client believed the document new";

pub(super) fn resolve(
    policy: &MergePolicy,
    base: Option<Side<'_>>,
    server: Side<'_>,
    client: Side<'_>,
) -> Resolution {
    match policy.strategy {
        Strategy::FirstWriteWins => keep(),
        Strategy::LastWriteWins => {
            if order::client_wins(policy.lww_field.as_deref(), server, client) {
                write(client)
            } else {
                keep()
            }
        }
        Strategy::FieldMerge | Strategy::Crdt => three_way(policy, base, server, client),
    }
}

fn three_way(
    policy: &MergePolicy,
    base: Option<Side<'_>>,
    server: Side<'_>,
    client: Side<'_>,
) -> Resolution {
    if server.deleted && client.deleted {
        return keep();
    }
    let Some(base) = base else {
        return if server.deleted {
            write(client)
        } else {
            Resolution::Keep {
                why: Some(NO_BASE.to_owned()),
            }
        };
    };
    match (server.deleted, client.deleted, policy.on_delete) {
        (false, true, OnDelete::DeleteWins) | (true, false, OnDelete::EditWins) => write(client),
        (false, true, OnDelete::EditWins) | (true, false, OnDelete::DeleteWins) => keep(),
        _ => {
            let empty = serde_json::Value::Object(serde_json::Map::new());
            let base_body = if base.deleted { &empty } else { base.body };
            match Merger::new(policy, server, client).body(base_body) {
                Some(merged) if !same(&merged, server.body) => Resolution::Write {
                    body: merged,
                    deleted: false,
                },
                _ => keep(),
            }
        }
    }
}

fn keep() -> Resolution {
    Resolution::Keep { why: None }
}

fn write(side: Side<'_>) -> Resolution {
    Resolution::Write {
        body: side.body.clone(),
        deleted: side.deleted,
    }
}
