//! Who is calling, and what that lets them see and change.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::Value;

use super::collections::Collection;
use super::{ProtocolError, Reason};

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim; owner of the documents this principal creates.
    pub subject: String,
    /// Scopes granted by the token.
    pub scopes: HashSet<String>,
    /// Holds the service scope: reads and writes every document.
    pub service: bool,
    /// When the credential stops being valid (streams end then).
    pub expires_at: Option<SystemTime>,
    /// Every claim of the token (a JSON object; `{}` without a token), for the collections'
    /// claim-based access rules (`read_filter`, `write_filter`). Shared: read, never changed.
    pub claims: Arc<Value>,
}

/// Why `subject` cannot name a principal, if it cannot: empty, longer than `bytes_max`, or
/// holding a control character (NUL included: PostgreSQL text cannot store it). A subject
/// becomes the owner stored and indexed with every document it writes.
pub fn subject_problem(subject: &str, bytes_max: usize) -> Option<String> {
    if subject.is_empty() {
        Some("empty".into())
    } else if subject.len() > bytes_max {
        Some(format!(
            "{} bytes, over the limit of {bytes_max}",
            subject.len()
        ))
    } else if subject.chars().any(char::is_control) {
        Some("contains a control character".into())
    } else {
        None
    }
}

impl Principal {
    /// The principal of an unauthenticated server (`auth.mode = "none"`): a service.
    pub fn anonymous_service() -> Principal {
        Principal {
            subject: String::new(),
            scopes: HashSet::new(),
            service: true,
            expires_at: None,
            claims: Arc::new(Value::Object(serde_json::Map::new())),
        }
    }

    /// The owner filter for reads: `None` for a service (every document).
    pub fn owner_filter(&self) -> Option<&str> {
        (!self.service).then_some(self.subject.as_str())
    }

    /// Refuses a read of `collection` when its `read_scopes` exclude this principal.
    pub fn check_read(&self, collection: &Collection) -> Result<(), ProtocolError> {
        self.check_scopes(&collection.read_scopes, "read", &collection.name)
    }

    /// Refuses a push to `collection` when its `write_scopes` exclude this principal.
    pub fn check_write(&self, collection: &Collection) -> Result<(), ProtocolError> {
        self.check_scopes(&collection.write_scopes, "write", &collection.name)
    }

    fn check_scopes(
        &self,
        required: &[String],
        what: &str,
        name: &str,
    ) -> Result<(), ProtocolError> {
        if self.service || required.is_empty() || required.iter().any(|s| self.scopes.contains(s)) {
            Ok(())
        } else {
            Err(ProtocolError::permission_denied(
                Reason::ScopeMissing,
                format!("collection {name:?}: {what} needs one of the scopes {required:?}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_problem;

    #[test]
    fn subjects_are_bounded_and_printable() {
        assert_eq!(subject_problem("alice", 5), None);
        assert_eq!(subject_problem("ユーザー", 12), None);
        for bad in ["", "alice!", "a\0", "a\n", "\u{7f}", "\u{85}", "\u{1b}[m"] {
            assert!(subject_problem(bad, 5).is_some(), "{bad:?}");
        }
        assert!(
            subject_problem("ユーザー", 11)
                .unwrap()
                .contains("12 bytes")
        );
    }
}
