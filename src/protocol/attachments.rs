//! The push-side rule for attachments, as pure functions: a live document describes its
//! attachments the way RxDB does (`_attachments: {"<name>": {"digest", "length", "type"}}`)
//! and may reference only blobs the server holds for the pusher; the bytes never travel
//! inline (`data`). The push path reads every row's [`references`], asks the blob index once
//! which digests the pusher may reference (`blobs::Attachments::held`), then runs
//! [`check_row`] on each row.

use std::collections::HashMap;

use serde_json::Value;

use super::{ProtocolError, Reason, shown};
use crate::blobs::digest_problem;

/// One attachment a document describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRef {
    /// Its name (the key in `_attachments`).
    pub name: String,
    /// The blob's digest.
    pub digest: String,
    /// The blob's length in bytes.
    pub length: u64,
}

fn field(row: usize, name: &str) -> String {
    format!("rows[{row}].new_document_state.json._attachments.{name}")
}

fn refuse(row: usize, id: &str, name: &str, why: String) -> ProtocolError {
    ProtocolError::invalid(
        Reason::InvalidDocument,
        field(row, &cut(name)),
        format!(
            "rows[{row}] (id {}): _attachments.{}: {why}",
            shown(id),
            shown(name)
        ),
    )
}

fn cut(name: &str) -> String {
    crate::protocol::cut_text(name, 64)
}

/// The attachments the body of row `row` (document `id`) describes. Tombstones reference
/// nothing: call this for live documents only. Refuses a malformed `_attachments` (not an
/// object, an entry without a valid `digest`, a `length` that is not a non-negative integer,
/// a `type` that is not a string) and inline `data`.
pub fn references(body: &Value, row: usize, id: &str) -> Result<Vec<AttachmentRef>, ProtocolError> {
    let Some(attachments) = body.get("_attachments") else {
        return Ok(Vec::new());
    };
    let Some(attachments) = attachments.as_object() else {
        return Err(ProtocolError::invalid(
            Reason::InvalidDocument,
            format!("rows[{row}].new_document_state.json._attachments"),
            format!(
                "rows[{row}] (id {}): _attachments must be an object of name -> {{digest, length, type}}",
                shown(id)
            ),
        ));
    };
    let mut out = Vec::with_capacity(attachments.len());
    for (name, entry) in attachments {
        let Some(entry) = entry.as_object() else {
            return Err(refuse(
                row,
                id,
                name,
                "must be an object {digest, length, type}".into(),
            ));
        };
        if entry.contains_key("data") {
            return Err(refuse(
                row,
                id,
                name,
                "inline data is not accepted: upload the bytes (AttachmentService.Upload) and \
                 send only digest, length and type"
                    .into(),
            ));
        }
        let digest = match entry.get("digest").and_then(Value::as_str) {
            Some(d) => match digest_problem(d) {
                None => d.to_owned(),
                Some(why) => {
                    return Err(refuse(row, id, name, format!("digest {}: {why}", shown(d))));
                }
            },
            None => return Err(refuse(row, id, name, "digest (a string) is missing".into())),
        };
        let Some(length) = entry.get("length").and_then(Value::as_u64) else {
            return Err(refuse(
                row,
                id,
                name,
                "length must be a non-negative integer".into(),
            ));
        };
        if entry.get("type").is_some_and(|t| !t.is_string()) {
            return Err(refuse(row, id, name, "type must be a string".into()));
        }
        out.push(AttachmentRef {
            name: name.clone(),
            digest,
            length,
        });
    }
    Ok(out)
}

/// Refuses row `row` (document `id`) when one of its attachments names a blob the pusher may
/// not reference (`held`: digest -> stored length, from the blob index), or gives another
/// length than the stored blob's.
pub fn check_row(
    row: usize,
    id: &str,
    refs: &[AttachmentRef],
    held: &HashMap<String, u64>,
) -> Result<(), ProtocolError> {
    for r in refs {
        match held.get(&r.digest) {
            None => {
                return Err(refuse(
                    row,
                    id,
                    &r.name,
                    format!(
                        "the server holds no blob {} for you: upload it first \
                         (AttachmentService.Missing tells which)",
                        r.digest
                    ),
                ));
            }
            Some(&length) if length != r.length => {
                return Err(refuse(
                    row,
                    id,
                    &r.name,
                    format!(
                        "length {} is not the stored blob's length {length}",
                        r.length
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn references_are_read_and_checked() {
        let body = json!({"id": "a", "_attachments": {"photo": {"digest": D, "length": 5, "type": "image/png"}}});
        let refs = references(&body, 0, "a").unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].digest, D);
        assert!(references(&json!({"id": "a"}), 0, "a").unwrap().is_empty());

        let held = HashMap::from([(D.to_owned(), 5)]);
        assert!(check_row(0, "a", &refs, &held).is_ok());
        let e = check_row(3, "a", &refs, &HashMap::new()).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("rows[3].new_document_state.json._attachments.photo")
        );
        assert!(e.message.contains("upload it first"), "{}", e.message);
        let e = check_row(0, "a", &refs, &HashMap::from([(D.to_owned(), 6)])).unwrap_err();
        assert!(e.message.contains("length 5"), "{}", e.message);
    }

    #[test]
    fn inline_data_and_malformed_entries_are_refused() {
        for (bad, says) in [
            (json!({"_attachments": []}), "must be an object"),
            (json!({"_attachments": {"p": 1}}), "must be an object"),
            (
                json!({"_attachments": {"p": {"digest": D, "length": 5, "type": "t", "data": "aGVsbG8="}}}),
                "inline data",
            ),
            (json!({"_attachments": {"p": {"length": 5}}}), "digest"),
            (
                json!({"_attachments": {"p": {"digest": "md5-abc", "length": 5}}}),
                "64 lowercase hex",
            ),
            (
                json!({"_attachments": {"p": {"digest": D, "length": -1}}}),
                "length",
            ),
            (
                json!({"_attachments": {"p": {"digest": D, "length": 1, "type": 2}}}),
                "type",
            ),
        ] {
            let e = references(&bad, 1, "x").unwrap_err();
            assert!(e.message.contains(says), "{bad}: {}", e.message);
            assert!(
                e.field
                    .unwrap()
                    .starts_with("rows[1].new_document_state.json._attachments")
            );
        }
    }
}
