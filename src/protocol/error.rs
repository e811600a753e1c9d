//! The protocol layer's error: a status family, a stable reason code and, for bad input, the
//! offending field's path. Mapped to gRPC (with `google.rpc` details) in `api::status`.

use std::fmt;

/// The status family of an error (one gRPC code each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad input; the message names the field (and row).
    InvalidArgument,
    /// Missing, malformed, expired or badly signed credentials.
    Unauthenticated,
    /// The principal may not do this (another owner's document, a scope it lacks).
    PermissionDenied,
    /// Unknown collection.
    NotFound,
    /// A configured limit was reached.
    ResourceExhausted,
    /// The request cannot be served in the system's current state (a checkpoint older than
    /// the purge horizon): retrying the same request will not help.
    FailedPrecondition,
    /// The database is unreachable, contended or the server is draining: retry later.
    Unavailable,
    /// A bug or an unexpected database error. The text is logged, never sent to clients.
    Internal,
}

/// Why a request or row was refused, as a stable code programs can switch on. Sent as
/// `google.rpc.ErrorInfo.reason` and `RefusedRow.reason`; the README lists them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A malformed request field (not a document's content).
    InvalidRequest,
    /// A document the server will not store: not a JSON object, schema failure, primary key
    /// mismatch, bad id or owner.
    InvalidDocument,
    /// A size or count limit (INVALID_ARGUMENT for a request, RESOURCE_EXHAUSTED for capacity).
    LimitExceeded,
    /// A checkpoint token this server did not issue for this collection and caller.
    CheckpointInvalid,
    /// A genuine checkpoint the server can no longer serve exactly: at or below the
    /// collection's purge horizon, or of another dataset generation. Start over from an
    /// empty checkpoint.
    CheckpointExpired,
    /// The collection is not declared on this server.
    CollectionNotFound,
    /// The id belongs to another owner, or a row names another owner.
    NotOwner,
    /// The caller lacks a scope the collection requires.
    ScopeMissing,
    /// Missing, malformed or badly signed credentials.
    TokenInvalid,
    /// A token that would be valid but has expired: refresh it and retry.
    TokenExpired,
    /// The database cannot be reached.
    DatabaseUnavailable,
    /// Too many concurrent writes to the same documents.
    Contention,
    /// The server is draining.
    ShuttingDown,
    /// A server bug or an unexpected failure.
    Internal,
    /// A push's idempotency key is remembered for a different request.
    IdempotencyKeyReused,
    /// ListOverwritten on a collection that keeps no overwritten versions.
    OverwrittenNotKept,
    /// No attachment with that digest the caller may read (absent, or referenced by no
    /// document it can read: the two are not told apart).
    AttachmentNotFound,
    /// A pushed row's new state, or the stored state it would replace, is outside the
    /// collection's `write_filter` for the caller's token claims.
    OutsideWriteFilter,
}

impl Reason {
    /// Every reason, for documentation and tests.
    pub const ALL: [Reason; 18] = [
        Reason::InvalidRequest,
        Reason::InvalidDocument,
        Reason::LimitExceeded,
        Reason::CheckpointInvalid,
        Reason::CheckpointExpired,
        Reason::CollectionNotFound,
        Reason::NotOwner,
        Reason::ScopeMissing,
        Reason::TokenInvalid,
        Reason::TokenExpired,
        Reason::DatabaseUnavailable,
        Reason::Contention,
        Reason::ShuttingDown,
        Reason::Internal,
        Reason::IdempotencyKeyReused,
        Reason::OverwrittenNotKept,
        Reason::AttachmentNotFound,
        Reason::OutsideWriteFilter,
    ];

    /// The code as sent (upper snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::InvalidDocument => "INVALID_DOCUMENT",
            Reason::LimitExceeded => "LIMIT_EXCEEDED",
            Reason::CheckpointInvalid => "CHECKPOINT_INVALID",
            Reason::CheckpointExpired => "CHECKPOINT_EXPIRED",
            Reason::CollectionNotFound => "COLLECTION_NOT_FOUND",
            Reason::NotOwner => "NOT_OWNER",
            Reason::ScopeMissing => "SCOPE_MISSING",
            Reason::TokenInvalid => "TOKEN_INVALID",
            Reason::TokenExpired => "TOKEN_EXPIRED",
            Reason::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            Reason::Contention => "CONTENTION",
            Reason::ShuttingDown => "SHUTTING_DOWN",
            Reason::Internal => "INTERNAL",
            Reason::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Reason::OverwrittenNotKept => "OVERWRITTEN_NOT_KEPT",
            Reason::AttachmentNotFound => "ATTACHMENT_NOT_FOUND",
            Reason::OutsideWriteFilter => "OUTSIDE_WRITE_FILTER",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    /// The status family.
    pub kind: Kind,
    /// The stable reason code.
    pub reason: Reason,
    /// The offending request field's path (`rows[3].new_document_state.json`), when one is.
    pub field: Option<String>,
    /// Words for people; for [`Kind::Internal`] the logged text, never sent.
    pub message: String,
}

impl ProtocolError {
    /// An error without a field.
    pub fn new(kind: Kind, reason: Reason, message: impl Into<String>) -> Self {
        ProtocolError {
            kind,
            reason,
            field: None,
            message: message.into(),
        }
    }

    /// The same error, naming the offending field.
    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// INVALID_ARGUMENT about `field`.
    pub fn invalid(reason: Reason, field: impl Into<String>, message: impl Into<String>) -> Self {
        ProtocolError::new(Kind::InvalidArgument, reason, message).at(field)
    }

    /// UNAUTHENTICATED.
    pub fn unauthenticated(reason: Reason, message: impl Into<String>) -> Self {
        ProtocolError::new(Kind::Unauthenticated, reason, message)
    }

    /// PERMISSION_DENIED.
    pub fn permission_denied(reason: Reason, message: impl Into<String>) -> Self {
        ProtocolError::new(Kind::PermissionDenied, reason, message)
    }

    /// RESOURCE_EXHAUSTED: a capacity limit ([`Reason::LimitExceeded`]).
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        ProtocolError::new(Kind::ResourceExhausted, Reason::LimitExceeded, message)
    }

    /// FAILED_PRECONDITION about `field`: the checkpoint it holds has expired
    /// ([`Reason::CheckpointExpired`]).
    pub fn checkpoint_expired(field: impl Into<String>, message: impl Into<String>) -> Self {
        ProtocolError::new(Kind::FailedPrecondition, Reason::CheckpointExpired, message).at(field)
    }

    /// UNAVAILABLE: retry later.
    pub fn unavailable(reason: Reason, message: impl Into<String>) -> Self {
        ProtocolError::new(Kind::Unavailable, reason, message)
    }

    /// INTERNAL; `message` is logged, never sent.
    pub fn internal(message: impl Into<String>) -> Self {
        ProtocolError::new(Kind::Internal, Reason::Internal, message)
    }
}

impl From<crate::store::StoreError> for ProtocolError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                ProtocolError::unavailable(
                    Reason::DatabaseUnavailable,
                    "the database is unavailable; retry later",
                )
            }
            StoreError::Contention(m) => {
                tracing::warn!(error = %m, "push contention");
                ProtocolError::unavailable(
                    Reason::Contention,
                    "too many concurrent writes to the same documents; retry",
                )
            }
            StoreError::Internal(m) => ProtocolError::internal(m),
        }
    }
}

/// Characters of a client value quoted in a message; longer values are cut.
const SHOWN_CHARS: usize = 64;

/// A client value as quoted in messages (`"value"`), cut after 64 characters (`"valu..."`), so
/// that an error never grows with the input.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}", format!("{}...", &value[..cut])),
        None => format!("{value:?}"),
    }
}

/// Free text derived from client input (a parser's or schema validator's message) cut to a
/// bounded length.
pub fn cut_text(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_values_are_cut() {
        assert_eq!(shown("t-1"), "\"t-1\"");
        let long = "é".repeat(10_000_000);
        let s = shown(&long);
        assert!(s.ends_with("...\"") && s.chars().count() == 64 + 5, "{s}");
        assert_eq!(cut_text("abcdef", 3), "abc...");
        assert_eq!(cut_text("abc", 3), "abc");
    }
}
