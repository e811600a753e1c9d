//! Who may write which documents, and read the states a push answers with: the owner rule and
//! a collection's claim-based rules (`access`, `read_filter`, `write_filter`), bound to one
//! caller's token claims once per push.

use super::collections::Collection;
use super::principal::Principal;
use super::selector::{Access, FilterFields, Selector};
use super::validate::ValidRow;
use super::{ProtocolError, Reason, shown};

/// A caller's write and read rules on one collection, bound to its claims.
pub struct Gate<'a> {
    principal: &'a Principal,
    access: Access,
    fields: &'a FilterFields,
    /// Bound `read_filter` (claim-based collections, ordinary principals).
    read: Option<Selector>,
    /// Bound `write_filter` (same).
    write: Option<Selector>,
}

impl<'a> Gate<'a> {
    /// Binds `collection`'s rules to `principal`'s claims. A claim that does not fit a rule is
    /// PERMISSION_DENIED naming the claim.
    pub fn new(
        collection: &'a Collection,
        principal: &'a Principal,
    ) -> Result<Gate<'a>, ProtocolError> {
        let rules = &collection.access;
        let bind = |rule: &Option<Selector>| {
            rule.as_ref()
                .filter(|_| !principal.service)
                .map(|r| r.bind_claims(&principal.claims))
                .transpose()
        };
        Ok(Gate {
            principal,
            access: rules.access,
            fields: &collection.filter_fields,
            read: bind(&rules.read)?,
            write: bind(&rules.write)?,
        })
    }

    /// Whether a push must read whole stored states (the write rule looks at their bodies).
    pub fn needs_bodies(collection: &Collection, principal: &Principal) -> bool {
        collection.access.write.is_some() && !principal.service
    }

    fn own(&self, owner: &str) -> bool {
        self.principal.service || owner == self.principal.subject
    }

    fn matches(rule: Option<&Selector>, fields: &FilterFields, body: &str) -> bool {
        match rule {
            None => false,
            Some(rule) if rule.is_everything() => true,
            Some(rule) => fields
                .project(body)
                .is_some_and(|p| rule.matches_projected(&p)),
        }
    }

    /// Whether the caller may read a stored state of `owner` with `body` (a conflict's or a
    /// refused row's server state is only ever shown then).
    pub fn may_read(&self, owner: &str, body: &str) -> bool {
        if self.principal.service {
            return true;
        }
        match self.access {
            Access::Owner => self.own(owner),
            Access::Claims => Self::matches(self.read.as_ref(), self.fields, body),
            Access::Either => {
                self.own(owner) || Self::matches(self.read.as_ref(), self.fields, body)
            }
        }
    }

    /// Refuses row `i` unless the caller may write it over `stored` (owner and body of the
    /// server's state, if any). Owner rule: its own documents. Claim rules: the stored state
    /// must be one it may read and inside `write_filter`, and so must the new state (an empty
    /// tombstone `{}` holds nothing and passes). `either`: one of the two. A row may never
    /// name another owner. The message never describes the stored state.
    pub fn check(
        &self,
        i: usize,
        row: &ValidRow,
        stored: Option<(&str, &str)>,
    ) -> Result<(), ProtocolError> {
        if self.principal.service {
            return Ok(());
        }
        if row
            .owner
            .as_ref()
            .is_some_and(|o| *o != self.principal.subject)
        {
            return Err(foreign_owner(i, row));
        }
        let by_owner = stored.is_none_or(|(owner, _)| self.own(owner));
        if self.access == Access::Owner || (self.access == Access::Either && by_owner) {
            return if by_owner {
                Ok(())
            } else {
                Err(ProtocolError::permission_denied(
                    Reason::NotOwner,
                    format!(
                        "rows[{i}] (id {}): this id is taken by another owner",
                        shown(&row.id)
                    ),
                )
                .at(format!("rows[{i}].new_document_state.id")))
            };
        }
        let write = self.write.as_ref();
        if let Some((owner, body)) = stored
            && !(self.may_read(owner, body) && Self::matches(write, self.fields, body))
        {
            return Err(ProtocolError::permission_denied(
                Reason::OutsideWriteFilter,
                format!(
                    "rows[{i}] (id {}): this id is taken by a document your token may not write",
                    shown(&row.id)
                ),
            )
            .at(format!("rows[{i}].new_document_state.id")));
        }
        let empty_tombstone = row.deleted && row.body.trim() == "{}";
        if !empty_tombstone && !Self::matches(write, self.fields, &row.body) {
            return Err(self.outside(i, &row.id));
        }
        Ok(())
    }

    /// Refuses a state a conflict strategy resolved row `i` to when it leaves the write rule
    /// (the rule holds for what is written, whoever computed it).
    pub fn check_resolved(
        &self,
        i: usize,
        id: &str,
        owner: &str,
        body: &str,
        deleted: bool,
    ) -> Result<(), ProtocolError> {
        let rule_applies = !self.principal.service
            && self.write.is_some()
            && !(self.access == Access::Either && self.own(owner));
        if !rule_applies
            || (deleted && body.trim() == "{}")
            || Self::matches(self.write.as_ref(), self.fields, body)
        {
            return Ok(());
        }
        Err(self.outside(i, id))
    }

    fn outside(&self, i: usize, id: &str) -> ProtocolError {
        ProtocolError::permission_denied(
            Reason::OutsideWriteFilter,
            format!(
                "rows[{i}] (id {}): the new state is outside this collection's write_filter for \
                 your token's claims",
                shown(id)
            ),
        )
        .at(format!("rows[{i}].new_document_state.json"))
    }
}

/// A row naming another owner than the caller.
pub fn foreign_owner(i: usize, row: &ValidRow) -> ProtocolError {
    ProtocolError::permission_denied(
        Reason::NotOwner,
        format!(
            "rows[{i}] (id {}): new_document_state.owner may only name yourself",
            shown(&row.id)
        ),
    )
    .at(format!("rows[{i}].new_document_state.owner"))
}
