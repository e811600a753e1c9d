//! Push: validates the rows, then decides and writes the batch in one transaction of the
//! store, resolving conflicts under the collection's strategy; with an idempotency key, the
//! store remembers the response in that same transaction and answers a retry with it.

use std::time::Duration;

use super::conflict::{self, PushMode, RefusedRow, Resolver};
use super::validate::{self, PlannedRow, RowInput};
use super::{Kind, Principal, ProtocolError, Reason, Replicator, push_targets};
use crate::store::{
    ConflictState, Idempotency, PushApplied, PushError, PushOutcome, ResolvedState, Store,
};
use crate::telemetry::metrics as m;

/// How long idempotency keys are remembered unless configured.
pub const IDEMPOTENCY_RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);

/// Longest idempotency key, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// The outcome of a push.
#[derive(Debug, Clone, Default)]
pub struct PushResult {
    /// The server state of every conflicting row that was not written, in row order.
    pub conflicts: Vec<ConflictState>,
    /// Per-row pushes: the refused rows, in row order.
    pub refused: Vec<RefusedRow>,
    /// The conflicting rows the collection's strategy resolved and wrote, in row order.
    pub resolved: Vec<ResolvedState>,
}

/// A push's idempotency key and what the store remembers under it.
pub struct IdempotentPush<'a> {
    /// The client's key.
    pub key: &'a str,
    /// Digest of the whole request (a retry must send the same request).
    pub request_hash: [u8; 32],
    /// Encodes the response to remember (the wire form the caller answers with).
    pub respond: &'a (dyn Fn(&PushResult) -> Vec<u8> + Send + Sync),
}

/// A push's answer: decided now, or the remembered response of an earlier push with the same
/// idempotency key.
#[derive(Debug)]
pub enum PushReply {
    /// Decided and committed by this call.
    Fresh(PushResult),
    /// The first response, as encoded by [`IdempotentPush::respond`]; nothing was written.
    Replayed(Vec<u8>),
}

impl<S: Store> Replicator<S> {
    /// Push (atomic): validates every row, then decides and writes the batch in one
    /// transaction. Returns the server state of every conflicting row that was not written.
    pub async fn push(
        &self,
        principal: &Principal,
        collection: &str,
        rows: Vec<RowInput>,
    ) -> Result<Vec<ConflictState>, ProtocolError> {
        Ok(self
            .push_rows(principal, collection, rows, PushMode::Atomic)
            .await?
            .conflicts)
    }

    /// Push in either mode, without an idempotency key (see [`Replicator::push_with`]).
    pub async fn push_rows(
        &self,
        principal: &Principal,
        collection: &str,
        rows: Vec<RowInput>,
        mode: PushMode,
    ) -> Result<PushResult, ProtocolError> {
        match self
            .push_with(principal, collection, rows, mode, None)
            .await?
        {
            PushReply::Fresh(result) => Ok(result),
            PushReply::Replayed(_) => Err(ProtocolError::internal(
                "a push without idempotency key was replayed",
            )),
        }
    }

    /// Push in either mode. Atomic: the first refused row fails the whole push. Per-row:
    /// refused rows (invalid, another owner's) are listed with the server's state of their id
    /// when the caller may read it, and every other row is decided and written in one
    /// transaction. Request-level errors (collection, scope, row count, key) fail both.
    /// Conflicting rows are resolved under the collection's strategy. With `idempotency`, a
    /// key remembered for this principal answers with its first response.
    pub async fn push_with(
        &self,
        principal: &Principal,
        collection: &str,
        rows: Vec<RowInput>,
        mode: PushMode,
        idempotency: Option<IdempotentPush<'_>>,
    ) -> Result<PushReply, ProtocolError> {
        let collection = self.collections.get(collection)?;
        principal.check_write(&collection)?;
        if let Some(i) = &idempotency {
            check_key(i.key)?;
        }
        let row_count = rows.len() as u64;
        let name = collection.name.clone();
        let rejected = |reason: &'static str, n: u64| {
            metrics::counter!(m::PUSH_ROWS_REJECTED, "collection" => name.clone(), "reason" => reason)
                .increment(n);
        };
        let resolver = Resolver {
            collection: &collection,
            limits: &self.limits,
        };
        let respond = idempotency.as_ref().map(|i| {
            move |outcome: &PushOutcome<RefusedRow>| (i.respond)(&result_of(outcome.clone()))
        });
        let remember = match (&idempotency, &respond) {
            (Some(i), Some(respond)) => Some(Idempotency {
                principal: &principal.subject,
                key: i.key,
                request_hash: i.request_hash,
                retention: self.idempotency_retention,
                respond,
            }),
            _ => None,
        };
        // The write rule looks at the stored states' bodies: none may be skipped.
        let whole_states = super::access::Gate::needs_bodies(&collection, principal);
        let applied = match mode {
            PushMode::Atomic => {
                let rows = validate::validate_rows(&collection, &self.limits, rows)
                    .inspect_err(|_| rejected("invalid", row_count))?;
                let refusals = self
                    .attachment_refusals(&collection.name, principal, rows.iter().enumerate())
                    .await?;
                if let Some(refusal) = refusals.into_iter().next() {
                    rejected("invalid", row_count);
                    return Err(refusal.1);
                }
                if rows.is_empty() {
                    return Ok(PushReply::Fresh(PushResult::default()));
                }
                let targets =
                    push_targets(rows.iter().map(|r| (r.id.as_str(), Some(r))), whole_states);
                self.store
                    .apply_push(
                        &collection.name,
                        &targets,
                        |current| conflict::plan_push(&rows, current, principal, resolver),
                        remember.as_ref(),
                    )
                    .await
            }
            PushMode::PerRow => {
                let rows = validate::validate_each(&collection, &self.limits, rows)
                    .inspect_err(|_| rejected("invalid", row_count))?;
                let rows = conflict::refuse_foreign_owners(rows, principal);
                let valid = rows.iter().enumerate().filter_map(|(i, r)| match r {
                    PlannedRow::Valid(v) => Some((i, v)),
                    PlannedRow::Refused { .. } => None,
                });
                let mut refusals: std::collections::HashMap<usize, ProtocolError> = self
                    .attachment_refusals(&collection.name, principal, valid)
                    .await?
                    .into_iter()
                    .collect();
                let rows: Vec<PlannedRow> = rows
                    .into_iter()
                    .enumerate()
                    .map(|(i, row)| match (refusals.remove(&i), row) {
                        (Some(error), PlannedRow::Valid(v)) => PlannedRow::Refused {
                            refusal: validate::Refusal {
                                index: i,
                                id: validate::refused_id(&v.id),
                                error,
                            },
                            id: Some(v.id),
                        },
                        (_, row) => row,
                    })
                    .collect();
                if rows.is_empty() {
                    return Ok(PushReply::Fresh(PushResult::default()));
                }
                // Refused rows' ids are read too (for their current state), in the same
                // round trip as the rest.
                let targets = push_targets(
                    rows.iter().filter_map(|r| match r {
                        PlannedRow::Valid(v) => Some((v.id.as_str(), Some(v))),
                        PlannedRow::Refused { id, .. } => id.as_deref().map(|id| (id, None)),
                    }),
                    whole_states,
                );
                self.store
                    .apply_push(
                        &collection.name,
                        &targets,
                        |current| conflict::plan_push_per_row(&rows, current, principal, resolver),
                        remember.as_ref(),
                    )
                    .await
            }
        };
        let applied = applied.map_err(|e| match e {
            PushError::Refused(refusal) => {
                if refusal.kind == Kind::PermissionDenied {
                    rejected("permission", row_count);
                }
                refusal
            }
            PushError::Store(e) => e.into(),
            PushError::KeyReused => ProtocolError::invalid(
                Reason::IdempotencyKeyReused,
                "idempotency_key",
                "idempotency_key: this key was used for a different push; send a new key for a \
                 new push, and the identical request when retrying",
            ),
        })?;
        let outcome = match applied {
            PushApplied::Applied(outcome) => outcome,
            PushApplied::Replayed(bytes) => {
                metrics::counter!(m::PUSH_REPLAYS, "collection" => name.clone()).increment(1);
                return Ok(PushReply::Replayed(bytes));
            }
        };
        if let Some(tx) = outcome.tx {
            // Wake local subscribers now; other processes hear the NOTIFY.
            self.hub.notify(&collection.name, tx);
        }
        metrics::counter!(m::DOCS_PUSHED, "collection" => name.clone())
            .increment(outcome.written as u64);
        if !outcome.conflicts.is_empty() {
            let n = outcome.conflicts.len() as u64;
            metrics::counter!(m::CONFLICTS, "collection" => name.clone()).increment(n);
            rejected("conflict", n);
        }
        let strategy = collection.policy.strategy;
        if strategy != super::merge::Strategy::FirstWriteWins {
            let resolution = |outcome: &'static str, n: usize| {
                if n > 0 {
                    metrics::counter!(m::PUSH_RESOLUTIONS, "collection" => name.clone(),
                        "strategy" => strategy.label(), "outcome" => outcome)
                    .increment(n as u64);
                }
            };
            let unresolvable = outcome.conflicts.iter().filter(|c| c.why.is_some()).count();
            resolution("written", outcome.resolved.len());
            resolution("lost", outcome.conflicts.len() - unresolvable);
            resolution("unresolvable", unresolvable);
        }
        for r in &outcome.refused {
            let reason = r.refusal.error.reason;
            metrics::counter!(m::PUSH_ROWS_REFUSED, "collection" => name.clone(), "reason" => reason.as_str())
                .increment(1);
            // Not written either: the family an atomic push would count the whole batch in.
            rejected(
                if reason == Reason::NotOwner {
                    "permission"
                } else {
                    "invalid"
                },
                1,
            );
        }
        Ok(PushReply::Fresh(result_of(outcome)))
    }
}

impl<S: Store> Replicator<S> {
    /// The rows (index, row) whose attachments the pusher may not reference: malformed
    /// `_attachments`, inline data, or a blob the server does not hold for this principal
    /// (it neither uploaded it nor can read a document referencing it: knowing a digest must
    /// not be enough to read its bytes through a document of one's own). One blob-index
    /// query for the whole push, only when some row describes attachments.
    async fn attachment_refusals<'r>(
        &self,
        collection: &str,
        principal: &Principal,
        rows: impl Iterator<Item = (usize, &'r validate::ValidRow)>,
    ) -> Result<Vec<(usize, ProtocolError)>, ProtocolError> {
        let mut refused = Vec::new();
        let mut described = Vec::new();
        for (i, row) in rows {
            match attachment_refs(i, row) {
                Ok(refs) if refs.is_empty() => {}
                Ok(refs) => described.push((i, row, refs)),
                Err(e) => refused.push((i, e)),
            }
        }
        if described.is_empty() {
            return Ok(refused);
        }
        let mut digests: Vec<String> = described
            .iter()
            .flat_map(|(_, _, refs)| refs.iter().map(|r| r.digest.clone()))
            .collect();
        digests.sort_unstable();
        digests.dedup();
        // The blobs of documents it may read: by owner, or by the collection's read rule.
        let declared = self.collections.get(collection)?;
        let scope = super::selective::scope(&declared, principal, b"")?;
        let held = self
            .store
            .attachments_held(collection, scope.blobs(principal), &digests)
            .await?;
        for (i, row, refs) in described {
            if let Err(e) = super::attachments::check_row(i, &row.id, &refs, &held) {
                refused.push((i, e));
            }
        }
        refused.sort_by_key(|(i, _)| *i);
        Ok(refused)
    }
}

/// The attachments a live row describes. The body is parsed only when it may hold the key:
/// its text names `_attachments`, or escapes a character (`\u005f...` spells the same key).
fn attachment_refs(
    i: usize,
    row: &validate::ValidRow,
) -> Result<Vec<super::attachments::AttachmentRef>, ProtocolError> {
    if row.deleted || !(row.body.contains("_attachments") || row.body.contains("\\u")) {
        return Ok(Vec::new());
    }
    let body: serde_json::Value = serde_json::from_str(&row.body)
        .map_err(|e| ProtocolError::internal(format!("a validated body does not parse: {e}")))?;
    super::attachments::references(&body, i, &row.id)
}

/// The result as answered: refused rows' states written by this push carry its commit time.
fn result_of(outcome: PushOutcome<RefusedRow>) -> PushResult {
    let mut refused = outcome.refused;
    for r in &mut refused {
        if let Some(current) = &mut r.current {
            current.updated_at = current.updated_at.or(outcome.written_at);
        }
    }
    PushResult {
        conflicts: outcome.conflicts,
        refused,
        resolved: outcome.resolved,
    }
}

/// 1 to 128 bytes of printable ASCII: stored as text, echoed in logs.
fn check_key(key: &str) -> Result<(), ProtocolError> {
    let ok = !key.is_empty()
        && key.len() <= IDEMPOTENCY_KEY_BYTES_MAX
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        return Ok(());
    }
    Err(ProtocolError::invalid(
        Reason::InvalidRequest,
        "idempotency_key",
        format!(
            "idempotency_key: 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes of printable ASCII without \
             spaces, got {} bytes",
            key.len()
        ),
    ))
}
