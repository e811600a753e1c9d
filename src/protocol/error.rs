//! The protocol layer's error: one variant per status family, mapped to gRPC in `api::status`.

/// Why a request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Bad input; the message names the field (and row).
    #[error("{0}")]
    InvalidArgument(String),
    /// Missing, malformed, expired or badly signed credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The principal may not do this (another owner's document, a scope it lacks).
    #[error("{0}")]
    PermissionDenied(String),
    /// Unknown collection.
    #[error("{0}")]
    NotFound(String),
    /// A configured limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The database is unreachable, contended or the server is draining: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected database error. The text is logged, never sent to clients.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::store::StoreError> for ProtocolError {
    fn from(err: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match err {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "database unavailable");
                ProtocolError::Unavailable("the database is unavailable; retry later".into())
            }
            StoreError::Contention(m) => {
                tracing::warn!(error = %m, "push contention");
                ProtocolError::Unavailable(
                    "too many concurrent writes to the same documents; retry".into(),
                )
            }
            StoreError::Rejected(e) => e,
            StoreError::Internal(m) => ProtocolError::Internal(m),
        }
    }
}
