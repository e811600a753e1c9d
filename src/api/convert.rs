//! Protobuf <-> domain conversions.

use chrono::{DateTime, Utc};

use crate::proto;
use crate::protocol::{DocumentInput, ProtocolError, PushMode, Reason, RefusedRow, RowInput};
use crate::store::{ConflictState, StoredDocument};

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// A stored document as sent to clients.
pub fn document(d: StoredDocument) -> proto::Document {
    proto::Document {
        id: d.id,
        json: d.body.into_bytes(),
        deleted: d.deleted,
        revision: d.revision,
        updated_at: Some(timestamp(d.updated_at)),
        owner: d.owner,
        left_scope: d.left_scope,
    }
}

/// A conflict's server state as sent to clients.
pub fn conflict(c: ConflictState) -> proto::Document {
    proto::Document {
        id: c.id,
        json: c.body.into_bytes(),
        deleted: c.deleted,
        revision: c.revision,
        updated_at: c.updated_at.map(timestamp),
        owner: c.owner,
        left_scope: false,
    }
}

fn input(d: proto::Document) -> DocumentInput {
    DocumentInput {
        id: d.id,
        json: d.json,
        deleted: d.deleted,
        revision: d.revision,
        owner: d.owner,
    }
}

/// A push row as the protocol takes it.
pub fn row(r: proto::ChangeRow) -> RowInput {
    RowInput {
        new_state: r.new_document_state.map(input),
        assumed: r.assumed_master_state.map(input),
    }
}

/// The token of an optional checkpoint.
pub fn token(c: Option<proto::Checkpoint>) -> String {
    c.map(|c| c.token).unwrap_or_default()
}

/// A token as a checkpoint message.
pub fn checkpoint(token: String) -> Option<proto::Checkpoint> {
    Some(proto::Checkpoint { token })
}

/// The push mode a request asks for; unknown values are refused (a newer client's mode must
/// not silently become atomic).
pub fn push_mode(mode: i32) -> Result<PushMode, ProtocolError> {
    match proto::PushMode::try_from(mode) {
        Ok(proto::PushMode::Unspecified | proto::PushMode::Atomic) => Ok(PushMode::Atomic),
        Ok(proto::PushMode::PerRow) => Ok(PushMode::PerRow),
        Err(_) => Err(ProtocolError::invalid(
            Reason::InvalidRequest,
            "mode",
            format!("mode: {mode} is not a push mode of this server"),
        )),
    }
}

/// A refused row as sent to clients.
pub fn refused(r: RefusedRow) -> proto::RefusedRow {
    let e = r.refusal.error;
    proto::RefusedRow {
        index: u32::try_from(r.refusal.index).unwrap_or(u32::MAX),
        id: r.refusal.id,
        reason: e.reason.as_str().to_owned(),
        field: e.field.unwrap_or_default(),
        message: e.message,
        current: r.current.map(conflict),
    }
}

/// A kept losing version as sent to clients.
pub fn overwritten(r: crate::store::OverwrittenRecord) -> proto::OverwrittenVersion {
    let v = r.version;
    proto::OverwrittenVersion {
        document: Some(proto::Document {
            id: v.id,
            json: v.body.into_bytes(),
            deleted: v.deleted,
            revision: v.revision,
            updated_at: Some(timestamp(r.overwritten_at)),
            owner: v.owner,
            left_scope: false,
        }),
        source: v.source.to_owned(),
        strategy: v.strategy.to_owned(),
        resolved_revision: v.resolved_revision,
        pushed_by: v.pushed_by,
    }
}

/// A resolved row as sent to clients.
pub fn resolved(r: crate::store::ResolvedState) -> proto::ResolvedRow {
    proto::ResolvedRow {
        index: u32::try_from(r.index).unwrap_or(u32::MAX),
        document: Some(conflict(r.state)),
        strategy: r.strategy.to_owned(),
    }
}

/// A push's result as sent to clients.
pub fn push_response(result: crate::protocol::PushResult) -> proto::PushResponse {
    let mut unresolved = Vec::new();
    let conflicts = result
        .conflicts
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            if let Some(message) = c.why.take() {
                unresolved.push(proto::UnresolvedConflict {
                    conflict: u32::try_from(i).unwrap_or(u32::MAX),
                    message,
                });
            }
            conflict(c)
        })
        .collect();
    proto::PushResponse {
        conflicts,
        refused: result.refused.into_iter().map(refused).collect(),
        resolved: result.resolved.into_iter().map(resolved).collect(),
        replayed: false,
        unresolved,
    }
}
