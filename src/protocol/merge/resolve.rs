//! The strategies' rules (see [`super::resolve`]).

use super::{MergePolicy, Resolution, Side};

/// Placeholder until the strategies land: every conflict keeps the server's state.
pub(super) fn resolve(
    _policy: &MergePolicy,
    _base: Option<Side<'_>>,
    _server: Side<'_>,
    _client: Side<'_>,
) -> Resolution {
    Resolution::Keep { why: None }
}
