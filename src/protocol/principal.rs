//! Who is calling, and what that lets them see and change.

use std::collections::HashSet;
use std::time::SystemTime;

use super::ProtocolError;
use super::collections::Collection;

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
}

impl Principal {
    /// The principal of an unauthenticated server (`auth.mode = "none"`): a service.
    pub fn anonymous_service() -> Principal {
        Principal {
            subject: String::new(),
            scopes: HashSet::new(),
            service: true,
            expires_at: None,
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
            Err(ProtocolError::PermissionDenied(format!(
                "collection {name:?}: {what} needs one of the scopes {required:?}"
            )))
        }
    }
}
