//! Input validation for pushes: ids, sizes, JSON shape and depth, primary key, schema. Every
//! message names the row by index and id, e.g. `rows[3] (id "t-17"): ...`.

use serde_json::Value;

use super::collections::{Collection, Limits};
use super::{ProtocolError, Reason, cut_text, json_check, json_text, shown};

/// Longest assumed revision accepted: server revisions are `<generation>-<16 hex digits>`.
pub const REVISION_BYTES_MAX: usize = 128;
/// Characters of a parser's or schema validator's message passed on to the client.
const DETAIL_CHARS: usize = 200;

/// A document as a client sent it.
#[derive(Debug, Clone, Default)]
pub struct DocumentInput {
    /// Primary key.
    pub id: String,
    /// Body bytes (a JSON object, or empty for a tombstone).
    pub json: Vec<u8>,
    /// Tombstone flag.
    pub deleted: bool,
    /// Revision (meaningful in assumed states only).
    pub revision: String,
    /// Requested owner (new documents of service principals); empty = the caller.
    pub owner: String,
}

/// One push row as a client sent it.
#[derive(Debug, Clone, Default)]
pub struct RowInput {
    /// The desired state; `None` is invalid.
    pub new_state: Option<DocumentInput>,
    /// The state the client believes the server has; `None` = believed new.
    pub assumed: Option<DocumentInput>,
}

/// What the client believes the server holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Assumed {
    /// The server's revision: it alone decides.
    Revision(String),
    /// No revision: body (by JSON value, as jsonb compares) and tombstone flag decide.
    State {
        /// The body's text, checked to be a JSON object (`{}` when the client sent none).
        body: String,
        /// Tombstone flag.
        deleted: bool,
    },
}

/// A row that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRow {
    /// Primary key.
    pub id: String,
    /// Requested owner, when the row names one.
    pub owner: Option<String>,
    /// Body text to store (the client's bytes, or `{}` for an empty tombstone).
    pub body: String,
    /// Tombstone flag.
    pub deleted: bool,
    /// The client's belief, if any.
    pub assumed: Option<Assumed>,
    /// The body and tombstone flag of an assumed state that also carries a revision, kept
    /// (parsed and checked) only for collections whose strategy merges against it.
    pub assumed_body: Option<(String, bool)>,
}

impl ValidRow {
    /// The state the client's edit started from, when it sent one: the base of a three-way
    /// merge.
    pub fn base(&self) -> Option<(&str, bool)> {
        match &self.assumed {
            Some(Assumed::State { body, deleted }) => Some((body.as_str(), *deleted)),
            Some(Assumed::Revision(_)) => self.assumed_body.as_ref().map(|(b, d)| (b.as_str(), *d)),
            None => None,
        }
    }
}

/// What is wrong with a body or value, and which reason that is.
type Problem = (Reason, String);

fn invalid(text: impl Into<String>) -> Problem {
    (Reason::InvalidDocument, text.into())
}

fn over(text: impl Into<String>) -> Problem {
    (Reason::LimitExceeded, text.into())
}

/// Validates every row; the first invalid one fails the whole push.
pub fn validate_rows(
    collection: &Collection,
    limits: &Limits,
    rows: Vec<RowInput>,
) -> Result<Vec<ValidRow>, ProtocolError> {
    check_row_count(limits, rows.len())?;
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| validate_row(collection, limits, Where::Row(i), row))
        .collect()
}

/// Where a document came from, as its error messages and field paths name it.
#[derive(Debug, Clone, Copy)]
pub enum Where {
    /// Row `i` of a push: `rows[i]`.
    Row(usize),
    /// Line `n` (from 1) of an import file: `line n`.
    Line(u64),
}

impl std::fmt::Display for Where {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Where::Row(i) => write!(f, "rows[{i}]"),
            Where::Line(n) => write!(f, "line {n}"),
        }
    }
}

/// A row refused on its own (per-row pushes): its index, its id as sent (cut short), and the
/// error an atomic push would fail with.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The row's index in the request.
    pub index: usize,
    /// The row's id as sent, cut to a bounded length.
    pub id: String,
    /// Why: reason, field and message, as an atomic push reports them.
    pub error: ProtocolError,
}

/// A row of a per-row push after validation: valid, or refused.
#[derive(Debug, Clone)]
pub enum PlannedRow {
    /// Passed validation.
    Valid(ValidRow),
    /// Refused; `id` is its full id when that is a storable one (so that the server's state
    /// of it can be reported), else `None`.
    Refused {
        /// Why.
        refusal: Refusal,
        /// The id to look the current state up by.
        id: Option<String>,
    },
}

/// Longest id quoted back in a [`Refusal`] (ids over the limit are cut).
const REFUSED_ID_CHARS: usize = 128;

/// Validates each row on its own: an invalid row becomes a [`Refusal`] and the others go on.
/// Only the row count fails the whole request.
pub fn validate_each(
    collection: &Collection,
    limits: &Limits,
    rows: Vec<RowInput>,
) -> Result<Vec<PlannedRow>, ProtocolError> {
    check_row_count(limits, rows.len())?;
    Ok(rows
        .into_iter()
        .enumerate()
        .map(|(index, row)| {
            let sent = row.new_state.as_ref().map(|n| n.id.as_str()).unwrap_or("");
            let id = refused_id(sent);
            let storable =
                !sent.is_empty() && sent.len() <= limits.id_bytes_max && !sent.contains('\0');
            let lookup = storable.then(|| sent.to_owned());
            match validate_row(collection, limits, Where::Row(index), row) {
                Ok(valid) => PlannedRow::Valid(valid),
                Err(error) => PlannedRow::Refused {
                    refusal: Refusal { index, id, error },
                    id: lookup,
                },
            }
        })
        .collect())
}

/// An id as a refusal quotes it: at most [`REFUSED_ID_CHARS`] characters.
pub fn refused_id(id: &str) -> String {
    match id.char_indices().nth(REFUSED_ID_CHARS) {
        Some((cut, _)) => id[..cut].to_owned(),
        None => id.to_owned(),
    }
}

fn check_row_count(limits: &Limits, rows: usize) -> Result<(), ProtocolError> {
    if rows > limits.push_rows_max {
        return Err(ProtocolError::invalid(
            Reason::LimitExceeded,
            "rows",
            format!(
                "rows: {rows} rows exceed the limit of {} per push",
                limits.push_rows_max
            ),
        ));
    }
    Ok(())
}

/// Validates one document exactly as a push row is validated (ids, sizes, JSON, depth,
/// primary key, schema), naming it by `at` in errors.
pub fn validate_row(
    collection: &Collection,
    limits: &Limits,
    at: Where,
    row: RowInput,
) -> Result<ValidRow, ProtocolError> {
    let Some(new) = row.new_state else {
        return Err(ProtocolError::invalid(
            Reason::InvalidRequest,
            format!("{at}.new_document_state"),
            format!("{at}: new_document_state is required"),
        ));
    };
    let shown_id = shown(&new.id);
    // `field` is the path below the row; the message starts with it too.
    let fail = |field: &str, (reason, what): Problem| {
        ProtocolError::invalid(
            reason,
            format!("{at}.{field}"),
            format!("{at} (id {shown_id}): {what}"),
        )
    };
    const ID: &str = "new_document_state.id";
    const OWNER: &str = "new_document_state.owner";
    const JSON: &str = "new_document_state.json";
    if new.id.is_empty() {
        return Err(fail(ID, invalid("new_document_state.id must not be empty")));
    }
    if new.id.len() > limits.id_bytes_max {
        return Err(fail(
            ID,
            over(format!(
                "new_document_state.id is {} bytes, over the limit of {}",
                new.id.len(),
                limits.id_bytes_max
            )),
        ));
    }
    if new.id.contains('\0') {
        return Err(fail(
            ID,
            invalid("new_document_state.id must not contain NUL"),
        ));
    }
    // The owner is stored and indexed as text: bounded, and without NUL (PostgreSQL's text
    // cannot hold it).
    if new.owner.len() > limits.owner_bytes_max {
        return Err(fail(
            OWNER,
            over(format!(
                "new_document_state.owner is {} bytes, over the limit of {}",
                new.owner.len(),
                limits.owner_bytes_max
            )),
        ));
    }
    if new.owner.contains('\0') {
        return Err(fail(
            OWNER,
            invalid("new_document_state.owner must not contain NUL"),
        ));
    }
    let body = if new.deleted && new.json.is_empty() {
        None
    } else {
        Some(
            body_text(limits, new.json)
                .map_err(|(r, e)| fail(JSON, (r, format!("new_document_state.json: {e}"))))?,
        )
    };
    if let Some(text) = &body {
        // The tree is built only when a schema needs it or the body may be invalid: the
        // slow path then words the exact error.
        let checked = if collection.schema.is_none() {
            json_check::check(
                text,
                limits.json_depth_max,
                &collection.primary_key,
                &new.id,
            )
        } else {
            None
        };
        if checked.is_none() {
            check_value(collection, limits, &new.id, text, new.deleted)
                .map_err(|p| fail(JSON, p))?;
        }
        // serde_json reads numbers as f64; jsonb stores them as numeric, whose range is
        // narrower in places (`1e-16384` is 0.0 to serde and an error to PostgreSQL). Bodies
        // of integers only (read exactly) skip the second pass.
        let integers_only = checked.is_some_and(|c| !c.non_integers);
        if !integers_only && !json_text::numbers_fit(text) {
            let at = json_text::unstorable_number(text).unwrap_or_else(|| "/".to_owned());
            return Err(fail(
                JSON,
                invalid(format!(
                    "new_document_state.json: the number at {at} is out of PostgreSQL's \
                     numeric range (at most 16383 digits after the decimal point, values below \
                     10^131072)"
                )),
            ));
        }
        // PostgreSQL prints numbers without exponents, and pages carry the printed text:
        // `[1e100000]` is 10 bytes pushed and 100 KB on every pull. The limit holds for the
        // stored form too.
        if !integers_only {
            let stored = text.len().saturating_add(json_text::printed_growth(text));
            if stored > limits.document_bytes_max {
                return Err(fail(
                    JSON,
                    over(format!(
                        "new_document_state.json is {stored} bytes as stored (numbers written \
                         with exponents are stored in full), over the limit of {}",
                        limits.document_bytes_max
                    )),
                ));
            }
        }
    }
    let mut assumed_body = None;
    let assumed = match row.assumed {
        None => None,
        Some(a) => {
            if a.id != new.id {
                return Err(fail(
                    "assumed_master_state.id",
                    (
                        Reason::InvalidRequest,
                        format!(
                            "assumed_master_state.id {} differs from new_document_state.id",
                            shown(&a.id)
                        ),
                    ),
                ));
            }
            if !a.revision.is_empty() {
                // Compared in SQL: text without NUL, and no longer than a revision can be.
                const REVISION: &str = "assumed_master_state.revision";
                if a.revision.len() > REVISION_BYTES_MAX {
                    return Err(fail(
                        REVISION,
                        over(format!(
                            "assumed_master_state.revision is {} bytes; revisions are at most {}",
                            a.revision.len(),
                            REVISION_BYTES_MAX
                        )),
                    ));
                }
                if a.revision.contains('\0') {
                    return Err(fail(
                        REVISION,
                        (
                            Reason::InvalidRequest,
                            "assumed_master_state.revision must not contain NUL".into(),
                        ),
                    ));
                }
                if collection.policy.needs_base() && (!a.json.is_empty() || a.deleted) {
                    assumed_body = Some((assumed_text(limits, a.json, &fail)?, a.deleted));
                }
                Some(Assumed::Revision(a.revision))
            } else {
                let body = assumed_text(limits, a.json, &fail)?;
                Some(Assumed::State {
                    body,
                    deleted: a.deleted,
                })
            }
        }
    };
    let body = body.unwrap_or_else(|| "{}".to_owned());
    let owner = (!new.owner.is_empty()).then_some(new.owner);
    Ok(ValidRow {
        owner,
        id: new.id,
        body,
        deleted: new.deleted,
        assumed,
        assumed_body,
    })
}

/// An assumed state's body as text, checked to be a JSON object (`{}` when empty).
fn assumed_text(
    limits: &Limits,
    json: Vec<u8>,
    fail: &impl Fn(&str, Problem) -> ProtocolError,
) -> Result<String, ProtocolError> {
    if json.is_empty() {
        return Ok("{}".to_owned());
    }
    const ASSUMED: &str = "assumed_master_state.json";
    parse_body(limits, &json)
        .map_err(|(r, e)| fail(ASSUMED, (r, format!("assumed_master_state.json: {e}"))))?;
    // Checked UTF-8 by parse_body.
    String::from_utf8(json).map_err(|_| {
        fail(
            ASSUMED,
            invalid("assumed_master_state.json: not valid UTF-8"),
        )
    })
}

/// Checks a document the server resolved exactly as a pushed one is checked (size, depth,
/// primary key, numbers, schema), returning why it fails.
pub fn check_resolved(
    collection: &Collection,
    limits: &Limits,
    id: &str,
    text: &str,
    deleted: bool,
) -> Result<(), String> {
    check_size(limits, text.as_bytes()).map_err(|(_, e)| e)?;
    check_value(collection, limits, id, text, deleted).map_err(|(_, e)| e)?;
    if !json_text::numbers_fit(text) {
        return Err("a number is out of PostgreSQL's numeric range".into());
    }
    Ok(())
}

/// The body's text: within the size limit, not empty, UTF-8.
fn body_text(limits: &Limits, json: Vec<u8>) -> Result<String, Problem> {
    check_size(limits, &json)?;
    String::from_utf8(json).map_err(|_| invalid("not valid UTF-8"))
}

fn check_size(limits: &Limits, json: &[u8]) -> Result<(), Problem> {
    if json.len() > limits.document_bytes_max {
        return Err(over(format!(
            "{} bytes, over the limit of {}",
            json.len(),
            limits.document_bytes_max
        )));
    }
    if json.is_empty() {
        return Err(invalid("empty; a live document needs a JSON object"));
    }
    Ok(())
}

/// The full check on the parsed tree, with the message naming the field: shape, primary key,
/// and the collection's schema for live documents.
fn check_value(
    collection: &Collection,
    limits: &Limits,
    id: &str,
    text: &str,
    deleted: bool,
) -> Result<(), Problem> {
    let value =
        parse_value(limits, text).map_err(|(r, e)| (r, format!("new_document_state.json: {e}")))?;
    check_primary_key(collection, id, &value)
        .map_err(|e| invalid(format!("new_document_state.json: {e}")))?;
    if !deleted
        && let Some(schema) = &collection.schema
        && let Some(error) = schema.iter_errors(&value).next()
    {
        let path = error.instance_path.to_string();
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        // The validator's message quotes the offending value: cut it.
        let (path, error) = (
            cut_text(&path, DETAIL_CHARS),
            cut_text(&error.to_string(), DETAIL_CHARS),
        );
        return Err(invalid(format!(
            "new_document_state.json does not match the collection schema at {path}: {error}"
        )));
    }
    Ok(())
}

/// Parses a body: size, UTF-8 JSON, an object, depth, no NUL in strings (PostgreSQL's jsonb
/// cannot store `\u0000`).
fn parse_body(limits: &Limits, json: &[u8]) -> Result<Value, Problem> {
    check_size(limits, json)?;
    let text = std::str::from_utf8(json).map_err(|_| invalid("not valid UTF-8"))?;
    parse_value(limits, text)
}

/// Parses JSON text into a tree: an object, within the depth limit, without NUL.
fn parse_value(limits: &Limits, text: &str) -> Result<Value, Problem> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            over(format!(
                "nested deeper than the limit of {}",
                limits.json_depth_max
            ))
        } else {
            invalid(format!(
                "invalid JSON: {}",
                cut_text(&e.to_string(), DETAIL_CHARS)
            ))
        }
    })?;
    if !value.is_object() {
        return Err(invalid("must be a JSON object"));
    }
    check_shape(&value, limits.json_depth_max)?;
    Ok(value)
}

/// Walks the value without recursion: depth limit and NUL characters.
fn check_shape(value: &Value, depth_max: usize) -> Result<(), Problem> {
    let mut stack = vec![(value, 1usize)];
    while let Some((v, depth)) = stack.pop() {
        if depth > depth_max {
            return Err(over(format!("nested deeper than the limit of {depth_max}")));
        }
        match v {
            Value::String(s) if s.contains('\0') => {
                return Err(invalid("strings must not contain \\u0000"));
            }
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => {
                for (k, item) in map {
                    if k.contains('\0') {
                        return Err(invalid("keys must not contain \\u0000"));
                    }
                    stack.push((item, depth + 1));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_primary_key(collection: &Collection, id: &str, body: &Value) -> Result<(), String> {
    match body.get(&collection.primary_key) {
        None => Ok(()),
        Some(Value::String(s)) if s == id => Ok(()),
        Some(other) => Err(format!(
            "primary key field {:?} is {}, not the document id",
            collection.primary_key,
            cut_text(&other.to_string(), DETAIL_CHARS)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn collection(schema: Option<Value>) -> Collection {
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

    fn row(id: &str, json: &str) -> RowInput {
        RowInput {
            new_state: Some(DocumentInput {
                id: id.into(),
                json: json.as_bytes().to_vec(),
                ..Default::default()
            }),
            assumed: None,
        }
    }

    fn error_of(c: &Collection, rows: Vec<RowInput>) -> String {
        match validate_rows(c, &limits(), rows) {
            Err(e) if e.kind == crate::protocol::Kind::InvalidArgument => e.message,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_input_names_row_and_field() {
        let c = collection(None);
        let ok = row("a", "{}");
        let cases = [
            (
                row("", "{}"),
                "rows[1] (id \"\"): new_document_state.id must not be empty",
            ),
            (row("123456789", "{}"), "over the limit of 8"),
            (
                row("b", "{"),
                "rows[1] (id \"b\"): new_document_state.json: invalid JSON",
            ),
            (row("b", "[1]"), "must be a JSON object"),
            (
                row("b", r#"{"a":{"b":{"c":{"d":{}}}}}"#),
                "nested deeper than the limit of 4",
            ),
            (
                row("b", &format!("{{\"a\":\"{}\"}}", "x".repeat(300))),
                "over the limit of 200",
            ),
            (row("b", r#"{"id":"c"}"#), "primary key field \"id\""),
            (row("b", r#"{"s":"a\u0000"}"#), "\\u0000"),
            (
                row("b", r#"{"n":[1e-16384]}"#),
                "the number at /n/0 is out of",
            ),
            (
                row("b", r#"{"o":{"n":0e-99999}}"#),
                "the number at /o/n is out of",
            ),
            (
                RowInput::default(),
                "rows[1]: new_document_state is required",
            ),
        ];
        for (bad, expected) in cases {
            let m = error_of(&c, vec![ok.clone(), bad]);
            assert!(m.contains(expected), "{m:?} should contain {expected:?}");
        }
        let m = error_of(&c, vec![ok.clone(), ok.clone(), ok.clone(), ok]);
        assert!(m.contains("4 rows exceed the limit of 3"), "{m}");
    }

    #[test]
    fn schema_failures_name_the_path_and_tombstones_skip_the_schema() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {"n": {"type": "integer"}},
            "required": ["n"]
        });
        let c = collection(Some(schema));
        let m = error_of(&c, vec![row("a", r#"{"n":"x"}"#)]);
        assert!(m.contains("rows[0] (id \"a\")") && m.contains("/n"), "{m}");
        // The validator quotes the value: the message is cut.
        let l = Limits {
            document_bytes_max: 100_000,
            ..limits()
        };
        let long = format!(r#"{{"n":"{}"}}"#, "x".repeat(50_000));
        let m = match validate_rows(&c, &l, vec![row("a", &long)]) {
            Err(e) => e.message,
            other => panic!("{other:?}"),
        };
        assert!(m.contains("/n") && m.len() < 600, "{} bytes", m.len());
        // The schema path reads numbers again too.
        let m = error_of(&c, vec![row("a", r#"{"n":1,"x":1.50e-16382}"#)]);
        assert!(m.contains("the number at /x is out of"), "{m}");
        let mut tomb = row("a", "");
        tomb.new_state.as_mut().unwrap().deleted = true;
        let rows = validate_rows(&c, &limits(), vec![tomb]).unwrap();
        assert_eq!(rows[0].body, "{}");
        assert!(rows[0].deleted);
    }

    #[test]
    fn assumed_state_is_parsed_or_taken_as_revision() {
        let c = collection(None);
        let mut r = row("a", r#"{"id":"a"}"#);
        r.assumed = Some(DocumentInput {
            id: "a".into(),
            json: br#"{"x":1}"#.to_vec(),
            ..Default::default()
        });
        let v = validate_rows(&c, &limits(), vec![r.clone()]).unwrap();
        assert_eq!(
            v[0].assumed,
            Some(Assumed::State {
                body: r#"{"x":1}"#.to_owned(),
                deleted: false
            })
        );
        r.assumed.as_mut().unwrap().revision = "3-abc".into();
        let v = validate_rows(&c, &limits(), vec![r.clone()]).unwrap();
        assert_eq!(v[0].assumed, Some(Assumed::Revision("3-abc".into())));
        r.assumed.as_mut().unwrap().id = "b".into();
        assert!(error_of(&c, vec![r]).contains("assumed_master_state.id"));
    }

    /// Random JSON with unique keys: nested objects and arrays, NULs, the primary key with
    /// the right or a wrong value or type.
    fn random_json(rng: &mut impl rand::Rng, depth: usize, top: bool) -> String {
        let scalar = |rng: &mut dyn rand::RngCore| match rng.next_u32() % 7 {
            0 => "1".to_owned(),
            1 => "-2.5e3".to_owned(),
            2 => "true".to_owned(),
            3 => "null".to_owned(),
            4 => r#""a\u0000b""#.to_owned(),
            5 => r#""\u00e9\"""#.to_owned(),
            _ => r#""plain""#.to_owned(),
        };
        if !top && (depth >= 6 || rng.random_bool(0.4)) {
            return scalar(rng);
        }
        if !top && rng.random_bool(0.3) {
            let items: Vec<String> = (0..rng.random_range(0..3))
                .map(|_| random_json(rng, depth + 1, false))
                .collect();
            return format!("[{}]", items.join(","));
        }
        let mut fields = Vec::new();
        for k in 0..rng.random_range(0..4) {
            let key = if rng.random_bool(0.05) {
                format!(r#""k\u0000{k}""#)
            } else {
                format!(r#""k{k}""#)
            };
            fields.push(format!("{key}:{}", random_json(rng, depth + 1, false)));
        }
        if top && rng.random_bool(0.5) {
            let value = match rng.next_u32() % 4 {
                0 => r#""a""#,
                1 => r#""b""#,
                2 => "7",
                _ => r#"{"x":1}"#,
            };
            fields.push(format!(r#""id":{value}"#));
        }
        format!("{{{}}}", fields.join(","))
    }

    #[test]
    fn the_fast_check_agrees_with_the_full_one() {
        use rand::SeedableRng;
        let c = collection(None);
        let l = limits();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..5_000 {
            let text = random_json(&mut rng, 1, true);
            let full = check_value(&c, &l, "a", &text, false).is_ok();
            let fast = json_check::certainly_valid(&text, l.json_depth_max, "id", "a");
            assert_eq!(fast, full, "{text}");
            if full { valid += 1 } else { invalid += 1 }
        }
        assert!(
            valid > 500 && invalid > 500,
            "{valid} valid, {invalid} invalid"
        );
    }
}
