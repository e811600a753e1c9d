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
            StoreError::Internal(m) => ProtocolError::Internal(m),
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
