//! ListOverwritten: the versions that lost an automatic conflict resolution, kept for the
//! collection's `keep_overwritten` so that an app can show them after the fact.

use super::{Kind, ProtocolError, Reason, Replicator};
use crate::store::{OverwrittenRecord, Store};

/// Most versions one ListOverwritten returns (and its default).
pub const LIST_MAX: usize = 100;

impl<S: Store> Replicator<S> {
    /// The kept losing versions of `id`, newest first. Only the document's owner and service
    /// principals see any (on a collection with claim rules: whoever may read each version);
    /// for anyone else the list is empty, exactly as for an id that never lost anything, so
    /// the answer reveals nothing of other owners' documents.
    pub async fn list_overwritten(
        &self,
        principal: &super::Principal,
        collection: &str,
        id: &str,
        limit: u32,
    ) -> Result<Vec<OverwrittenRecord>, ProtocolError> {
        let collection = self.collections.get(collection)?;
        principal.check_read(&collection)?;
        if collection.policy.keep_overwritten.is_none() {
            return Err(ProtocolError::new(
                Kind::FailedPrecondition,
                Reason::OverwrittenNotKept,
                format!(
                    "collection {} keeps no overwritten versions (set keep_overwritten)",
                    super::shown(&collection.name)
                ),
            )
            .at("collection"));
        }
        if id.is_empty() || id.len() > self.limits.id_bytes_max {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "id",
                format!(
                    "id: an id has 1 to {} bytes, got {}",
                    self.limits.id_bytes_max,
                    id.len()
                ),
            ));
        }
        let limit = match limit {
            0 => LIST_MAX,
            n => (n as usize).min(LIST_MAX),
        };
        // Under claim rules the owner does not decide: each version is shown to whoever may
        // read it (as a conflict's state is).
        let gate = super::access::Gate::new(&collection, principal)?;
        let by_rules = collection.access.read.is_some() && !principal.service;
        let owner = if by_rules {
            None
        } else {
            principal.owner_filter()
        };
        let mut versions = self
            .store
            .overwritten_versions(&collection.name, id, owner, limit)
            .await?;
        if by_rules {
            versions.retain(|r| gate.may_read(&r.version.owner, &r.version.body));
        }
        Ok(versions)
    }
}
