//! Bulk import's rules, independent of files and terminals: one JSON line becomes a push row,
//! validated exactly as Push validates it, and a batch is decided against the stored states so
//! that a rerun of the same file writes nothing twice.
//!
//! A line is the document's body. Its id is the collection's primary key field (required, a
//! string). Two reserved fields (RxDB's own names; they are removed from the body before it is
//! validated and stored): `_deleted` (a boolean; `true` imports a tombstone) and `_owner` (a
//! string; the owner of a new document, instead of the import's `--owner`).

use std::collections::{BTreeMap, HashMap};

use serde_json::value::RawValue;

use super::collections::{Collection, Limits};
use super::validate::{self, DocumentInput, RowInput, ValidRow, Where};
use super::{ProtocolError, Reason, conflict, cut_text, json_text, shown};
use crate::store::{DocumentWrite, PushPlan, PushTarget, StoredDocument};

/// The reserved field that marks a line as a tombstone.
pub const DELETED_FIELD: &str = "_deleted";
/// The reserved field that names a new document's owner.
pub const OWNER_FIELD: &str = "_owner";
/// Characters of a JSON parser's message quoted in an error.
const DETAIL_CHARS: usize = 200;

/// What an import does with a stored document whose state differs from its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Write the line as the document's next revision, like an update (the file is the truth).
    #[default]
    Overwrite,
    /// Leave the stored document as it is.
    Keep,
    /// Stop the import before the batch is written.
    Fail,
}

/// A validated line.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportRow {
    /// Its line number, from 1.
    pub line: u64,
    /// The document, as a push row that assumes nothing.
    pub row: ValidRow,
}

/// What one batch did, by document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Documents that did not exist.
    pub created: u64,
    /// Stored documents replaced by a different state (`OnConflict::Overwrite`).
    pub updated: u64,
    /// Stored documents already in the line's state: not rewritten.
    pub unchanged: u64,
    /// Stored documents in another state left as they were (`OnConflict::Keep`).
    pub kept: u64,
}

impl BatchCounts {
    /// Adds another batch's counts.
    pub fn add(&mut self, other: BatchCounts) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.kept += other.kept;
    }
}

/// Turns line `line` (its text, without the line break) into a validated row. `owner` is the
/// owner of new documents whose line has no `_owner`.
pub fn parse_line(
    collection: &Collection,
    limits: &Limits,
    line: u64,
    text: &str,
    owner: &str,
) -> Result<ImportRow, ProtocolError> {
    let fail = |what: String| {
        ProtocolError::invalid(
            Reason::InvalidDocument,
            format!("line {line}"),
            format!("line {line}: {what}"),
        )
    };
    let text = text.trim();
    if !text.starts_with('{') {
        return Err(fail("must be a JSON object (one document per line)".into()));
    }
    // The values stay text (RawValue): numbers keep their exact digits, and a body without
    // reserved fields is validated and stored as written.
    let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            fail(format!(
                "nested deeper than the limit of {}",
                limits.json_depth_max
            ))
        } else {
            fail(format!(
                "invalid JSON: {}",
                cut_text(&e.to_string(), DETAIL_CHARS)
            ))
        }
    })?;
    let key = &collection.primary_key;
    let id = match fields.get(key) {
        None => {
            return Err(fail(format!(
                "the primary key field {key:?} is missing; it holds the document id"
            )));
        }
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| {
            fail(format!(
                "the primary key field {key:?} is {}, not a string",
                cut_text(raw.get(), DETAIL_CHARS)
            ))
        })?,
    };
    let deleted = match fields.get(DELETED_FIELD) {
        None => false,
        Some(raw) => serde_json::from_str::<bool>(raw.get()).map_err(|_| {
            fail(format!(
                "(id {}) {DELETED_FIELD} is {}, not true or false",
                shown(&id),
                cut_text(raw.get(), DETAIL_CHARS)
            ))
        })?,
    };
    let owner = match fields.get(OWNER_FIELD) {
        None => owner.to_owned(),
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| {
            fail(format!(
                "(id {}) {OWNER_FIELD} is {}, not a string",
                shown(&id),
                cut_text(raw.get(), DETAIL_CHARS)
            ))
        })?,
    };
    let body = if fields.contains_key(DELETED_FIELD) || fields.contains_key(OWNER_FIELD) {
        without_reserved(&fields)
    } else {
        text.to_owned()
    };
    let row = RowInput {
        new_state: Some(DocumentInput {
            id,
            json: body.into_bytes(),
            deleted,
            revision: String::new(),
            owner,
        }),
        assumed: None,
    };
    let row = validate::validate_row(collection, limits, Where::Line(line), row)?;
    Ok(ImportRow { line, row })
}

/// The object without its reserved fields, values as written.
fn without_reserved(fields: &BTreeMap<String, &RawValue>) -> String {
    let mut body = String::from("{");
    for (k, v) in fields {
        if k == DELETED_FIELD || k == OWNER_FIELD {
            continue;
        }
        if body.len() > 1 {
            body.push(',');
        }
        // A string always serializes.
        body.push_str(&serde_json::to_string(k).unwrap_or_default());
        body.push(':');
        body.push_str(v.get());
    }
    body.push('}');
    body
}

/// Keeps the last line of each id (a batch writes each id once, in its file's final state),
/// in line order.
pub fn last_per_id(rows: Vec<ImportRow>) -> Vec<ImportRow> {
    let mut last: HashMap<String, u64> = HashMap::with_capacity(rows.len());
    for r in &rows {
        last.insert(r.row.id.clone(), r.line);
    }
    rows.into_iter()
        .filter(|r| last.get(&r.row.id) == Some(&r.line))
        .collect()
}

/// The ids a batch touches, for the store (distinct: see [`last_per_id`]); every stored body is
/// read, since deciding compares it.
pub fn targets(rows: &[ImportRow]) -> Vec<PushTarget> {
    rows.iter()
        .map(|r| PushTarget {
            id: r.row.id.clone(),
            skip_body_at: None,
            new: false,
        })
        .collect()
}

/// Decides a batch (distinct ids) against the stored states: a new id is created, a stored
/// document in the same state (body by value, as jsonb compares, and tombstone flag) is left
/// alone, and one in another state is handled as `on_conflict` says. Written states get the
/// push's revisions; updates keep their owner.
pub fn plan_import(
    rows: &[ImportRow],
    stored: &HashMap<String, StoredDocument>,
    on_conflict: OnConflict,
) -> Result<(PushPlan, BatchCounts), ProtocolError> {
    let mut counts = BatchCounts::default();
    let mut writes = Vec::with_capacity(rows.len());
    for ImportRow { line, row } in rows {
        let current = stored.get(&row.id);
        if let Some(cur) = current {
            let same = cur.deleted == row.deleted
                && json_text::equal(&row.body, &cur.body).map_err(|e| {
                    ProtocolError::internal(format!("a body is not readable JSON: {e:?}"))
                })?;
            if same {
                counts.unchanged += 1;
                continue;
            }
            match on_conflict {
                OnConflict::Overwrite => counts.updated += 1,
                OnConflict::Keep => {
                    counts.kept += 1;
                    continue;
                }
                OnConflict::Fail => {
                    return Err(ProtocolError::invalid(
                        Reason::InvalidDocument,
                        format!("line {line}"),
                        format!(
                            "line {line} (id {}): the stored document differs (revision {}); \
                             --on-conflict fail refuses to replace it",
                            shown(&row.id),
                            shown(&cur.revision)
                        ),
                    ));
                }
            }
        } else {
            counts.created += 1;
        }
        writes.push(DocumentWrite {
            id: row.id.clone(),
            owner: match current {
                Some(c) => c.owner.clone(),
                None => row.owner.clone().unwrap_or_default(),
            },
            body: row.body.clone(),
            deleted: row.deleted,
            revision: conflict::next_revision(
                current.map(|c| c.revision.as_str()),
                &row.body,
                row.deleted,
            ),
            is_new: current.is_none(),
        });
    }
    Ok((
        PushPlan {
            writes,
            ..PushPlan::default()
        },
        counts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Position;

    fn limits() -> Limits {
        Limits {
            pull_default: 10,
            pull_max: 100,
            push_rows_max: 3,
            document_bytes_max: 200,
            json_depth_max: 4,
            id_bytes_max: 8,
            push_bytes_max: 1000,
            owner_bytes_max: 8,
        }
    }

    fn collection(schema: Option<serde_json::Value>) -> Collection {
        Collection {
            name: "t".into(),
            primary_key: "id".into(),
            schema: schema.map(|s| jsonschema::validator_for(&s).unwrap()),
            read_scopes: vec![],
            write_scopes: vec![],
            policy: Default::default(),
            filter_fields: Default::default(),
            access: Default::default(),
        }
    }

    fn parse(c: &Collection, text: &str) -> Result<ImportRow, String> {
        parse_line(c, &limits(), 7, text, "svc").map_err(|e| e.to_string())
    }

    #[test]
    fn a_line_is_a_body_with_its_id_and_reserved_fields_removed() {
        let c = collection(None);
        let r = parse(&c, r#"{"id":"a","n":1.50}"#).unwrap();
        assert_eq!(r.line, 7);
        assert_eq!(r.row.id, "a");
        assert_eq!(r.row.body, r#"{"id":"a","n":1.50}"#, "kept as written");
        assert_eq!(r.row.owner.as_deref(), Some("svc"));
        assert!(!r.row.deleted);

        let r = parse(&c, r#"{"id":"b","_deleted":true,"_owner":"bob","n":1.50}"#).unwrap();
        assert!(r.row.deleted);
        assert_eq!(r.row.owner.as_deref(), Some("bob"));
        assert_eq!(r.row.body, r#"{"id":"b","n":1.50}"#, "digits kept exactly");
    }

    #[test]
    fn bad_lines_name_their_line_and_field() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "additionalProperties": true
        });
        let c = collection(Some(schema));
        let cases = [
            ("[1]", "line 7: must be a JSON object"),
            ("{\"id\":", "line 7: invalid JSON"),
            (
                r#"{"n":1}"#,
                "line 7: the primary key field \"id\" is missing",
            ),
            (
                r#"{"id":3}"#,
                "line 7: the primary key field \"id\" is 3, not a string",
            ),
            (r#"{"id":"a","_deleted":"yes"}"#, "_deleted is \"yes\""),
            (r#"{"id":"a","_owner":1}"#, "_owner is 1, not a string"),
            (
                r#"{"id":"a","n":"x"}"#,
                "line 7 (id \"a\"): new_document_state.json does not match the collection schema at /n",
            ),
            (r#"{"id":"a","_owner":"123456789"}"#, "owner is 9 bytes"),
            (r#"{"id":"123456789"}"#, "id is 9 bytes"),
            (
                r#"{"id":"a","x":[[[[1]]]]}"#,
                "nested deeper than the limit of 4",
            ),
        ];
        for (text, want) in cases {
            let got = parse(&c, text).unwrap_err();
            assert!(got.contains(want), "{text}: {got}");
        }
        // A tombstone skips the schema, as in a push.
        assert!(parse(&c, r#"{"id":"a","n":"x","_deleted":true}"#).is_ok());
    }

    fn stored(id: &str, body: &str, deleted: bool) -> StoredDocument {
        StoredDocument {
            id: id.into(),
            owner: "alice".into(),
            body: body.into(),
            deleted,
            revision: "3-abc".into(),
            updated_at: chrono::Utc::now(),
            position: Position { tx: 5, seq: 1 },
            left_scope: false,
        }
    }

    #[test]
    fn same_states_are_not_rewritten_and_conflicts_follow_the_policy() {
        let c = collection(None);
        let rows: Vec<ImportRow> = [
            r#"{"id":"new","v":1}"#,
            r#"{"v":1.0,"id":"same"}"#,
            r#"{"id":"diff","v":2}"#,
        ]
        .iter()
        .map(|t| parse(&c, t).unwrap())
        .collect();
        let mut current = HashMap::new();
        current.insert(
            "same".into(),
            stored("same", r#"{"id": "same", "v": 1}"#, false),
        );
        current.insert(
            "diff".into(),
            stored("diff", r#"{"id": "diff", "v": 1}"#, false),
        );

        let (plan, counts) = plan_import(&rows, &current, OnConflict::Overwrite).unwrap();
        assert_eq!(
            counts,
            BatchCounts {
                created: 1,
                updated: 1,
                unchanged: 1,
                kept: 0
            }
        );
        let ids: Vec<&str> = plan.writes.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["new", "diff"]);
        assert_eq!(plan.writes[0].owner, "svc");
        assert!(plan.writes[0].revision.starts_with("1-"));
        assert_eq!(plan.writes[1].owner, "alice", "updates keep their owner");
        assert!(plan.writes[1].revision.starts_with("4-"));

        let (plan, counts) = plan_import(&rows, &current, OnConflict::Keep).unwrap();
        assert_eq!((plan.writes.len(), counts.kept), (1, 1));

        let err = plan_import(&rows, &current, OnConflict::Fail).unwrap_err();
        assert!(err.to_string().starts_with("line 7 (id \"diff\")"), "{err}");

        // A tombstone differs from the live state with the same body.
        current.insert(
            "same".into(),
            stored("same", r#"{"id": "same", "v": 1}"#, true),
        );
        let (_, counts) = plan_import(&rows[1..2], &current, OnConflict::Overwrite).unwrap();
        assert_eq!(counts.updated, 1);
    }

    #[test]
    fn the_last_line_of_an_id_wins_within_a_batch() {
        let c = collection(None);
        let rows = vec![
            parse_line(&c, &limits(), 1, r#"{"id":"a","v":1}"#, "").unwrap(),
            parse_line(&c, &limits(), 2, r#"{"id":"b"}"#, "").unwrap(),
            parse_line(&c, &limits(), 3, r#"{"id":"a","v":2}"#, "").unwrap(),
        ];
        let kept: Vec<u64> = last_per_id(rows).iter().map(|r| r.line).collect();
        assert_eq!(kept, [2, 3]);
    }
}
