//! What a read sees: its selector, checked against the collection's declared fields, narrowed
//! by the collection's access rules for the caller, compiled for the store, and what its
//! checkpoints are bound to.

use super::checkpoint::RULE_LEN;
use super::collections::Collection;
use super::principal::Principal;
use super::selector::{Access, Selector};
use super::{ProtocolError, Reason};
use crate::store::filter::{FILTER_FIRST_PARAM, ReadFilter};

/// What one principal reads of one collection under one request's selector.
#[derive(Debug, Clone)]
pub struct ReadScope {
    /// The store's owner filter (`None`: every owner's documents, within `filter`).
    pub owner: Option<String>,
    /// The request's selector intersected with the caller's read rule; `None` when that
    /// selects everything within `owner`.
    pub filter: Option<Filter>,
    /// The digest of the request's own selector (`None`: it selects everything), which
    /// checkpoints are bound to: another selector is another sync.
    pub selector: Option<[u8; 32]>,
    /// The fingerprint of the caller's bound read rule, sealed in its checkpoints (claim-based
    /// rules only): a token of other claims is expired, and the client reconciles.
    pub rule: Option<[u8; RULE_LEN]>,
}

impl ReadScope {
    /// The owner filter as the store takes it.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
}

/// The scope of a read of `collection` by `principal` with the request's `selector` bytes.
/// Service principals and `access = "owner"` read by owner as ever; `claims` reads what the
/// bound `read_filter` allows, whoever owns it; `either` both. The reader's selector is
/// intersected with the rule, so it can only narrow it.
pub fn scope(
    collection: &Collection,
    principal: &Principal,
    selector: &[u8],
) -> Result<ReadScope, ProtocolError> {
    let selector = Selector::parse_json(selector, &collection.filter_fields)?;
    let digest = (!selector.is_everything()).then(|| selector.digest());
    let rules = &collection.access;
    let Some(rule) = rules.read.as_ref().filter(|_| !principal.service) else {
        return Ok(ReadScope {
            owner: principal.owner_filter().map(str::to_owned),
            filter: compile(selector)?,
            selector: digest,
            rule: None,
        });
    };
    let bound = rule.bind_claims(&principal.claims)?;
    let allowed = match rules.access {
        _ if bound.is_everything() => Selector::everything(),
        Access::Either => Selector::union(&Selector::owned_by(&principal.subject), &bound),
        Access::Claims | Access::Owner => bound,
    };
    let mut fingerprint = [0u8; RULE_LEN];
    fingerprint.copy_from_slice(&allowed.digest()[..RULE_LEN]);
    let combined = if selector.is_everything() {
        allowed
    } else {
        Selector::intersect(&selector, &allowed)
    };
    Ok(ReadScope {
        owner: None,
        filter: compile(combined)?,
        selector: digest,
        rule: Some(fingerprint),
    })
}

impl ReadScope {
    /// What `principal` may reference and download of the blobs of a collection read in this
    /// scope: its own uploads, and those of the documents it may read.
    pub fn blobs<'a>(&'a self, principal: &'a Principal) -> crate::store::filter::BlobScope<'a> {
        crate::store::filter::BlobScope {
            grantee: principal.owner_filter(),
            owner: self.owner(),
            filter: self.filter.as_ref().map(|f| &f.read),
        }
    }
}

/// What a filtered read needs.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The checked selector (matched in memory by streams).
    pub selector: Selector,
    /// Compiled for the store.
    pub read: ReadFilter,
    /// The digest checkpoints are bound to ([`Selector::digest`]).
    pub digest: [u8; 32],
}

/// The filter of a read of `collection` with the request's `selector` bytes: `None` when it
/// selects everything (empty or `{}`), which reads exactly like an unfiltered request.
pub fn filter(collection: &Collection, selector: &[u8]) -> Result<Option<Filter>, ProtocolError> {
    compile(Selector::parse_json(selector, &collection.filter_fields)?)
}

/// Compiles a checked, bound selector: `None` when it selects everything.
fn compile(selector: Selector) -> Result<Option<Filter>, ProtocolError> {
    if selector.is_everything() {
        return Ok(None);
    }
    let current = selector.to_sql(FILTER_FIRST_PARAM)?;
    let previous = selector.to_projection_sql(FILTER_FIRST_PARAM, "m.previous")?;
    if current.params != previous.params {
        // Both compile from one tree in one order; a difference is a bug, never the client's.
        return Err(ProtocolError::internal(
            "a selector's two compilations disagree on their parameters",
        ));
    }
    if current.params.len() > PARAMS_MAX {
        return Err(ProtocolError::invalid(
            Reason::LimitExceeded,
            "selector",
            format!(
                "selector: compiles to {} parameters, more than the {PARAMS_MAX} allowed",
                current.params.len()
            ),
        ));
    }
    Ok(Some(Filter {
        digest: selector.digest(),
        selector,
        read: ReadFilter {
            current: current.sql,
            previous: previous.sql,
            params: current.params,
        },
    }))
}

/// Most parameters of a compiled selector (PostgreSQL allows 65,535 binds per statement; the
/// selector's own bounds keep it far lower, this says so).
const PARAMS_MAX: usize = 4096;
