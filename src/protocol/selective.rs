//! A filtered reader's filter: its selector, checked against the collection's declared fields,
//! compiled for the store, and the digest its checkpoints are bound to.

use super::collections::Collection;
use super::selector::Selector;
use super::{ProtocolError, Reason};
use crate::store::filter::{FILTER_FIRST_PARAM, ReadFilter};

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
    let selector = Selector::parse_json(selector, &collection.filter_fields)?;
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
