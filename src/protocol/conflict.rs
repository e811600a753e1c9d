//! The push decision: which rows conflict, which states get written, with what revisions.
//! Pure functions of the rows and the current server states, so they run (again) inside the
//! store's transaction.

use std::collections::HashMap;

use super::access::{Gate, foreign_owner};
use super::principal::Principal;
use super::resolution::Decision;
pub use super::resolution::Resolver;
use super::validate::{Assumed, PlannedRow, Refusal, ValidRow};
use super::{ProtocolError, json_text};
use crate::store::{
    ConflictState, DocumentWrite, OverwrittenVersion, PushPlan, ResolvedState, StoredDocument,
};

/// How a push treats rows it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PushMode {
    /// One refused row fails the whole push; nothing is written.
    #[default]
    Atomic,
    /// Refused rows are reported one by one and the others are written.
    PerRow,
}

/// A refused row and the server's state of its id, when the caller may read it (never
/// another owner's document). `updated_at` is `None` when that state was written earlier in
/// the same push.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedRow {
    /// Index, id, reason, field and message.
    pub refusal: Refusal,
    /// The state the client should revert to; `None`: drop the local copy.
    pub current: Option<ConflictState>,
}

/// The state of one id while the batch is being decided.
struct Current {
    owner: String,
    body: String,
    deleted: bool,
    revision: String,
    /// `None` once a row of this batch has replaced the stored state.
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Decides an atomic batch against the current server states. Rows are applied in order: a
/// later row for the same id sees the state an earlier row wrote. A row touching another
/// owner's document refuses the whole batch (PERMISSION_DENIED), revealing only that the id is
/// taken.
pub fn plan_push(
    rows: &[ValidRow],
    stored: &HashMap<String, StoredDocument>,
    principal: &Principal,
    resolver: Resolver<'_>,
) -> Result<PushPlan<RefusedRow>, ProtocolError> {
    let gate = Gate::new(resolver.collection, principal)?;
    for (i, row) in rows.iter().enumerate() {
        ownership(i, row, stored, &gate)?;
    }
    let rows: Vec<Step<'_>> = rows.iter().map(Step::Write).collect();
    plan_steps(&rows, stored, &gate, principal, resolver)
}

/// Decides a per-row batch: rows refused by validation or for ownership are not written and
/// come back in `refused`, in row order, with the current state of their id when the caller
/// may read it. A refused row changes nothing: a later row for the same id is decided as if
/// the refused one were absent. Ownership is decided on `stored`, the states read inside the
/// push's transaction, so a concurrent create by another owner refuses the row, never
/// overwrites.
pub fn plan_push_per_row(
    rows: &[PlannedRow],
    stored: &HashMap<String, StoredDocument>,
    principal: &Principal,
    resolver: Resolver<'_>,
) -> Result<PushPlan<RefusedRow>, ProtocolError> {
    let gate = Gate::new(resolver.collection, principal)?;
    let steps: Vec<Step<'_>> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| match row {
            PlannedRow::Valid(v) => match ownership(i, v, stored, &gate) {
                Ok(()) => Step::Write(v),
                Err(error) => Step::Refuse(
                    Refusal {
                        index: i,
                        id: super::validate::refused_id(&v.id),
                        error,
                    },
                    Some(v.id.as_str()),
                ),
            },
            PlannedRow::Refused { refusal, id } => Step::Refuse(refusal.clone(), id.as_deref()),
        })
        .collect();
    plan_steps(&steps, stored, &gate, principal, resolver)
}

/// Per-row pushes: refuses, before the store is read, every row of an ordinary principal that
/// names another owner (it depends on the row alone).
pub fn refuse_foreign_owners(rows: Vec<PlannedRow>, principal: &Principal) -> Vec<PlannedRow> {
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| match row {
            PlannedRow::Valid(v) if !principal.service && names_another(&v, principal) => {
                PlannedRow::Refused {
                    refusal: Refusal {
                        index: i,
                        id: super::validate::refused_id(&v.id),
                        error: foreign_owner(i, &v),
                    },
                    id: Some(v.id),
                }
            }
            other => other,
        })
        .collect()
}

fn names_another(row: &ValidRow, principal: &Principal) -> bool {
    row.owner.as_ref().is_some_and(|o| *o != principal.subject)
}

/// One row of the decision: written (or conflicting), or refused with the id to report the
/// current state of.
enum Step<'a> {
    Write(&'a ValidRow),
    Refuse(Refusal, Option<&'a str>),
}

fn plan_steps(
    rows: &[Step<'_>],
    stored: &HashMap<String, StoredDocument>,
    gate: &Gate<'_>,
    principal: &Principal,
    resolver: Resolver<'_>,
) -> Result<PushPlan<RefusedRow>, ProtocolError> {
    let mut state: HashMap<&str, Current> = stored
        .values()
        .map(|d| {
            let current = Current {
                owner: d.owner.clone(),
                body: d.body.clone(),
                deleted: d.deleted,
                revision: d.revision.clone(),
                updated_at: Some(d.updated_at),
            };
            (d.id.as_str(), current)
        })
        .collect();
    let mut written_order: Vec<&str> = Vec::new();
    let mut written: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut plan = PushPlan::default();
    let strategy = resolver.strategy().label();
    let keep = resolver.collection.policy.keep_overwritten;
    for (index, step) in rows.iter().enumerate() {
        let row = match step {
            Step::Write(row) => row,
            Step::Refuse(refusal, id) => {
                // Only a state the caller may read: never another owner's document.
                let current = id
                    .and_then(|id| state.get(id))
                    .filter(|c| gate.may_read(&c.owner, &c.body))
                    .map(|c| c.conflict_state(id.unwrap_or_default()))
                    .transpose()?;
                plan.refused.push(RefusedRow {
                    refusal: refusal.clone(),
                    current,
                });
                continue;
            }
        };
        let current = state.get(row.id.as_str());
        // A conflicting row the strategy resolved: what it writes, and the losing versions.
        let mut resolved: Option<(String, bool)> = None;
        let mut losers: Vec<OverwrittenVersion> = Vec::new();
        if let Some(cur) = current
            && conflicts_with(row.assumed.as_ref(), cur)?
        {
            match resolver.decide(row, &cur.body, cur.deleted)? {
                Decision::Conflict { why, lost_client } => {
                    let mut state = cur.conflict_state(&row.id)?;
                    if let (Some(keep), true) = (keep, lost_client) {
                        let v = client_version(row, cur, strategy, principal, keep);
                        plan.overwritten.push(OverwrittenVersion {
                            resolved_revision: cur.revision.clone(),
                            ..v
                        });
                    }
                    state.why = why;
                    plan.conflicts.push(state);
                    continue;
                }
                Decision::Write {
                    body,
                    deleted,
                    lost_server,
                    lost_client,
                } => {
                    if let Some(keep) = keep {
                        if lost_server {
                            losers.push(server_version(&row.id, cur, strategy, principal, keep)?);
                        }
                        if lost_client {
                            losers.push(client_version(row, cur, strategy, principal, keep));
                        }
                    }
                    resolved = Some((body, deleted));
                }
            }
        }
        let is_resolved = resolved.is_some();
        let (body, deleted) = resolved.unwrap_or_else(|| (row.body.clone(), row.deleted));
        let revision = next_revision(current.map(|c| c.revision.as_str()), &body, deleted);
        // Updates keep the owner; a new document belongs to the caller, or to the owner a
        // service principal names.
        let owner = match current {
            Some(c) => c.owner.clone(),
            None => row
                .owner
                .clone()
                .unwrap_or_else(|| principal.subject.clone()),
        };
        if is_resolved {
            gate.check_resolved(index, &row.id, &owner, &body, deleted)?;
        }
        if written.insert(row.id.as_str()) {
            written_order.push(row.id.as_str());
        }
        if is_resolved {
            plan.resolved.push(ResolvedState {
                index,
                strategy,
                state: ConflictState {
                    id: row.id.clone(),
                    owner: owner.clone(),
                    body: body.clone(),
                    deleted,
                    revision: revision.clone(),
                    updated_at: None,
                    why: None,
                },
            });
            plan.overwritten
                .extend(losers.into_iter().map(|v| OverwrittenVersion {
                    resolved_revision: revision.clone(),
                    ..v
                }));
        }
        state.insert(
            row.id.as_str(),
            Current {
                owner,
                body,
                deleted,
                revision,
                updated_at: None,
            },
        );
    }
    plan.writes = written_order
        .into_iter()
        .filter_map(|id| {
            let s = state.remove(id)?;
            Some(DocumentWrite {
                id: id.to_owned(),
                owner: s.owner,
                body: s.body,
                deleted: s.deleted,
                revision: s.revision,
                is_new: !stored.contains_key(id),
            })
        })
        .collect();
    Ok(plan)
}

/// The server's state `cur` of `id` as a version that lost a resolution.
fn server_version(
    id: &str,
    cur: &Current,
    strategy: &'static str,
    principal: &Principal,
    keep: std::time::Duration,
) -> Result<OverwrittenVersion, ProtocolError> {
    let state = cur.conflict_state(id)?;
    Ok(OverwrittenVersion {
        id: state.id,
        owner: state.owner,
        body: state.body,
        deleted: state.deleted,
        revision: state.revision,
        source: "server",
        strategy,
        resolved_revision: String::new(),
        pushed_by: principal.subject.clone(),
        keep,
    })
}

/// The row's pushed state as a version that lost a resolution (of the document `cur`).
fn client_version(
    row: &ValidRow,
    cur: &Current,
    strategy: &'static str,
    principal: &Principal,
    keep: std::time::Duration,
) -> OverwrittenVersion {
    let revision = match &row.assumed {
        Some(Assumed::Revision(r)) => r.clone(),
        _ => String::new(),
    };
    OverwrittenVersion {
        id: row.id.clone(),
        owner: cur.owner.clone(),
        body: row.body.clone(),
        deleted: row.deleted,
        revision,
        source: "client",
        strategy,
        resolved_revision: String::new(),
        pushed_by: principal.subject.clone(),
        keep,
    }
}

impl Current {
    /// This state as reported back for `id`.
    fn conflict_state(&self, id: &str) -> Result<ConflictState, ProtocolError> {
        if self.body.is_empty() {
            // The store skipped a body this decision needs: a bug, never a wrong answer.
            return Err(ProtocolError::internal(format!(
                "the stored body of {id:?} was not read"
            )));
        }
        Ok(ConflictState {
            id: id.to_owned(),
            owner: self.owner.clone(),
            body: self.body.clone(),
            deleted: self.deleted,
            revision: self.revision.clone(),
            updated_at: self.updated_at,
            why: None,
        })
    }
}

/// Ordinary principals may only touch the documents the collection's rules give them (their
/// own, or those its claim rules allow: see [`Gate::check`]) and may only name themselves as
/// owner; service principals may do both. Row `i` is checked against the stored states: an
/// earlier row of the batch for the same id wrote a state that passed the same rules, so it
/// never changes the answer.
fn ownership(
    i: usize,
    row: &ValidRow,
    stored: &HashMap<String, StoredDocument>,
    gate: &Gate<'_>,
) -> Result<(), ProtocolError> {
    let current = stored
        .get(&row.id)
        .map(|d| (d.owner.as_str(), d.body.as_str()));
    gate.check(i, row, current)
}

/// A row conflicts when the server has the document (tombstones included) and the row either
/// assumes it is new or assumes a different state.
fn conflicts_with(assumed: Option<&Assumed>, current: &Current) -> Result<bool, ProtocolError> {
    Ok(match assumed {
        None => true,
        Some(Assumed::Revision(r)) => *r != current.revision,
        Some(Assumed::State { body, deleted }) => {
            if *deleted != current.deleted {
                true
            } else {
                // As jsonb compares: numbers by exact value, not as f64.
                !json_text::equal(body, &current.body).map_err(|e| {
                    ProtocolError::internal(format!("a body is not readable JSON: {e:?}"))
                })?
            }
        }
    })
}

/// `<generation>-<hash>`: the generation grows by one per write of the document, so a revision
/// never repeats for one id; the hash makes equal generations of different content differ.
pub fn next_revision(previous: Option<&str>, body: &str, deleted: bool) -> String {
    let generation = previous
        .and_then(|r| r.split_once('-'))
        .and_then(|(n, _)| n.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    // A fast non-cryptographic hash: revisions only need to differ between the states of one
    // document (and a client can only ever race itself on its own documents).
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(body.as_bytes(), u64::from(deleted));
    format!("{generation}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Reason;
    use crate::store::Position;

    fn stored(id: &str, body: &str, deleted: bool, revision: &str) -> StoredDocument {
        StoredDocument {
            id: id.into(),
            owner: "alice".into(),
            body: body.into(),
            deleted,
            revision: revision.into(),
            updated_at: chrono::Utc::now(),
            position: Position { tx: 5, seq: 1 },
            left_scope: false,
        }
    }

    fn row(id: &str, body: &str, assumed: Option<Assumed>) -> ValidRow {
        ValidRow {
            id: id.into(),
            owner: None,
            body: body.into(),
            deleted: false,
            assumed,
            assumed_body: None,
        }
    }

    /// A first-write-wins collection without schema.
    static FWW: std::sync::LazyLock<(crate::protocol::Collection, crate::protocol::Limits)> =
        std::sync::LazyLock::new(|| {
            let collection = crate::protocol::Collection {
                name: "t".into(),
                primary_key: "id".into(),
                schema: None,
                read_scopes: vec![],
                write_scopes: vec![],
                policy: Default::default(),
                filter_fields: Default::default(),
                access: Default::default(),
            };
            let limits = crate::protocol::Limits {
                pull_default: 10,
                pull_max: 100,
                push_rows_max: 100,
                document_bytes_max: 1 << 20,
                json_depth_max: 32,
                id_bytes_max: 64,
                push_bytes_max: 1 << 22,
                owner_bytes_max: 64,
            };
            (collection, limits)
        });

    fn fww() -> Resolver<'static> {
        Resolver {
            collection: &FWW.0,
            limits: &FWW.1,
        }
    }

    fn plan(
        rows: &[ValidRow],
        stored: &HashMap<String, StoredDocument>,
    ) -> Result<PushPlan<RefusedRow>, ProtocolError> {
        plan_push(rows, stored, &alice(), fww())
    }

    fn alice() -> Principal {
        Principal {
            subject: "alice".into(),
            scopes: Default::default(),
            service: false,
            expires_at: None,
            claims: Default::default(),
        }
    }

    #[test]
    fn a_matching_first_row_never_needs_the_stored_body_and_a_missing_one_is_not_returned() {
        // Stored at 1-a with its body left unread ("", as the store does for a match).
        let server: HashMap<_, _> = [("x".to_owned(), stored("x", "", false, "1-a"))].into();
        let first = row("x", r#"{"v":1}"#, Some(Assumed::Revision("1-a".into())));
        let again = row("x", r#"{"v":2}"#, Some(Assumed::Revision("1-a".into())));
        let p = plan(&[first, again], &server).unwrap();
        assert_eq!(p.writes[0].body, r#"{"v":1}"#);
        assert_eq!(
            p.conflicts[0].body, r#"{"v":1}"#,
            "the second row meets the first's write"
        );
        // A row that does conflict with an unread body is an internal error, not an empty state.
        let stale = row("x", "{}", Some(Assumed::Revision("0-z".into())));
        assert!(matches!(
            plan(&[stale], &server),
            Err(ProtocolError { kind: crate::protocol::Kind::Internal, message: m, .. }) if m.contains("not read")
        ));
    }

    #[test]
    fn other_owners_documents_are_refused_and_services_pass() {
        let server: HashMap<_, _> = [("x".to_owned(), stored("x", "{}", false, "1-a"))].into();
        let bob = Principal {
            subject: "bob".into(),
            ..alice()
        };
        let err = plan_push(&[row("x", "{}", None)], &server, &bob, fww()).unwrap_err();
        assert_eq!(err.reason, Reason::NotOwner);
        assert_eq!(err.field.as_deref(), Some("rows[0].new_document_state.id"));
        assert!(err.message.contains("taken"), "{err:?}");
        let mut named = row("y", "{}", None);
        named.owner = Some("alice".into());
        assert!(plan_push(&[named.clone()], &server, &bob, fww()).is_err());
        let service = Principal {
            subject: "svc".into(),
            service: true,
            ..alice()
        };
        let p = plan_push(&[named], &server, &service, fww()).unwrap();
        assert_eq!(p.writes[0].owner, "alice");
        let p = plan_push(
            &[row("x", "{}", Some(Assumed::Revision("1-a".into())))],
            &server,
            &service,
            fww(),
        )
        .unwrap();
        assert_eq!(p.writes[0].owner, "alice", "updates keep the owner");
    }

    #[test]
    fn per_row_refusals_report_only_visible_states_and_change_nothing() {
        let mut bobs = stored("b", r#"{"v": 0}"#, false, "1-b");
        bobs.owner = "bob".into();
        let server: HashMap<_, _> = [
            ("x".to_owned(), stored("x", r#"{"v": 1}"#, false, "1-a")),
            ("b".to_owned(), bobs),
        ]
        .into();
        let invalid = |index: usize, id: &str| PlannedRow::Refused {
            refusal: Refusal {
                index,
                id: id.into(),
                error: ProtocolError::invalid(Reason::InvalidDocument, "f", "m"),
            },
            id: Some(id.into()),
        };
        let rows = vec![
            invalid(0, "x"),
            PlannedRow::Valid(row(
                "x",
                r#"{"v":2}"#,
                Some(Assumed::Revision("1-a".into())),
            )),
            PlannedRow::Valid(row("b", "{}", None)),
            invalid(3, "n"),
            PlannedRow::Valid(row("n", "{}", None)),
            invalid(5, "b"),
        ];
        let p = plan_push_per_row(&rows, &server, &alice(), fww()).unwrap();
        assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
        let ids: Vec<&str> = p.writes.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["x", "n"], "the rows after a refused one go through");
        let refused: Vec<(usize, Reason, Option<&str>)> = p
            .refused
            .iter()
            .map(|r| {
                let body = r.current.as_ref().map(|c| c.body.as_str());
                (r.refusal.index, r.refusal.error.reason, body)
            })
            .collect();
        assert_eq!(
            refused,
            [
                (0, Reason::InvalidDocument, Some(r#"{"v": 1}"#)),
                (2, Reason::NotOwner, None),
                (3, Reason::InvalidDocument, None),
                (5, Reason::InvalidDocument, None),
            ],
            "alice's own state only; never bob's"
        );
        // Atomic: the first other owner's id refuses the batch.
        let valid: Vec<ValidRow> = rows
            .into_iter()
            .filter_map(|r| match r {
                PlannedRow::Valid(v) => Some(v),
                PlannedRow::Refused { .. } => None,
            })
            .collect();
        let err = plan_push(&valid, &server, &alice(), fww()).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("rows[1].new_document_state.id"));
    }

    #[test]
    fn bodies_compare_as_jsonb_does() {
        // The stored text as PostgreSQL prints jsonb; assumed bodies as clients write them.
        let server: HashMap<_, _> = [(
            "x".to_owned(),
            stored(
                "x",
                r#"{"a": 1, "b": [1, 2], "big": 100000000000000000000, "f": 0.3}"#,
                false,
                "4-aa",
            ),
        )]
        .into();
        let conflicts = |assumed: &str| {
            let a = Assumed::State {
                body: assumed.to_owned(),
                deleted: false,
            };
            plan(&[row("x", "{}", Some(a))], &server)
                .unwrap()
                .conflicts
                .len()
        };
        let same = r#"{"b":[1,2],"a":1.0,"f":3e-1,"big":1e20}"#;
        assert_eq!(conflicts(same), 0);
        for stale in [
            r#"{"a":1,"b":[1,2],"big":100000000000000000001,"f":0.3}"#,
            r#"{"a":1,"b":[1,2],"big":1e20,"f":0.30000000000000001}"#,
            r#"{"a":1,"b":[2,1],"big":1e20,"f":0.3}"#,
            r#"{"a":1,"b":[1,2],"big":1e20}"#,
        ] {
            assert_eq!(conflicts(stale), 1, "{stale}");
        }
    }

    #[test]
    fn revisions_grow_per_write() {
        let r1 = next_revision(None, "{}", false);
        // Generation, then XXH3-64 of the body (seeded with the tombstone flag) in hex.
        assert_eq!(r1, "1-1349cde127705c16");
        let r2 = next_revision(Some(&r1), "{}", false);
        assert!(r2.starts_with("2-"));
        assert_ne!(next_revision(None, "{}", true), r1);
    }

    #[test]
    fn conflict_rules() {
        let server: HashMap<_, _> =
            [("x".to_owned(), stored("x", r#"{"v": 1}"#, false, "4-aa"))].into();
        // Assumed new but the server has it: conflict, server state returned.
        let p = plan(&[row("x", r#"{"v":2}"#, None)], &server).unwrap();
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].revision, "4-aa");
        assert!(p.writes.is_empty());
        // Matching revision: written whatever the assumed body.
        let p = plan(
            &[row(
                "x",
                r#"{"v":2}"#,
                Some(Assumed::Revision("4-aa".into())),
            )],
            &server,
        )
        .unwrap();
        assert!(p.conflicts.is_empty());
        assert!(p.writes[0].revision.starts_with("5-") && !p.writes[0].is_new);
        // Stale revision: conflict.
        let p = plan(
            &[row(
                "x",
                r#"{"v":2}"#,
                Some(Assumed::Revision("3-aa".into())),
            )],
            &server,
        )
        .unwrap();
        assert_eq!(p.conflicts.len(), 1);
        // No revision: body by value plus deleted.
        let same = Assumed::State {
            body: r#"{"v":1.0}"#.into(),
            deleted: false,
        };
        assert!(
            plan(&[row("x", "{}", Some(same))], &server)
                .unwrap()
                .conflicts
                .is_empty()
        );
        let tomb = Assumed::State {
            body: r#"{"v":1}"#.into(),
            deleted: true,
        };
        assert_eq!(
            plan(&[row("x", "{}", Some(tomb))], &server)
                .unwrap()
                .conflicts
                .len(),
            1
        );
        // Assumed state for a document the server lacks: not a conflict.
        let p = plan(
            &[row("y", "{}", Some(Assumed::Revision("9-zz".into())))],
            &server,
        )
        .unwrap();
        assert!(p.conflicts.is_empty() && p.writes[0].is_new);
    }

    #[test]
    fn rows_for_one_id_apply_in_order() {
        let none = HashMap::new();
        let p = plan(
            &[row("n", r#"{"a":1}"#, None), row("n", r#"{"a":2}"#, None)],
            &none,
        )
        .unwrap();
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].body, r#"{"a":1}"#);
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].body, r#"{"a":1}"#);
        assert_eq!(p.conflicts[0].updated_at, None);
        let first = p.writes[0].revision.clone();
        let p = plan(
            &[
                row("n", r#"{"a":1}"#, None),
                row("n", r#"{"a":3}"#, Some(Assumed::Revision(first))),
            ],
            &none,
        )
        .unwrap();
        assert!(p.conflicts.is_empty());
        assert_eq!(p.writes.len(), 1);
        assert_eq!(p.writes[0].body, r#"{"a":3}"#);
        assert!(p.writes[0].revision.starts_with("2-") && p.writes[0].is_new);
    }
}
