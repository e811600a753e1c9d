//! A scan of a Push request's wire bytes before it is decoded: counts the rows and sums their
//! body bytes without building anything, so an oversized request is refused before prost
//! allocates a `ChangeRow` per row.
//!
//! An empty `ChangeRow` is 2 bytes on the wire and a few hundred in memory once decoded and
//! converted: a 64 MiB message of them used to cost tens of gigabytes. The scan is O(fields)
//! and allocates only its error message.
//!
//! It reads only what it counts (fields `rows`, `new_document_state`, `assumed_master_state`,
//! `json`, `id`, `owner`) and skips everything else the way prost does; malformations it meets
//! are refused with the same generic message as prost's, the rest is left to prost.

use crate::protocol::Limits;
use crate::protocol::validate::REVISION_BYTES_MAX;
/// Protobuf framing of one document besides its strings: six field keys and length prefixes,
/// the `deleted` flag and an `updated_at` timestamp, rounded up.
const DOCUMENT_FRAMING_BYTES: usize = 128;
/// Framing of one row: its key and length in the request, and the two documents' keys and
/// lengths.
const ROW_FRAMING_BYTES: usize = 3 * 11;
/// Room for the collection name, the request's own framing and fields a newer client may add.
const REQUEST_SLACK_BYTES: usize = 64 * 1024;

/// The refusal the generic decoding error and every malformation share: never decoder text.
pub const MALFORMED: &str = "the request is not a valid protobuf message for this method";

/// The limits the scan enforces, copied from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Most rows in one push.
    pub push_rows_max: usize,
    /// Most body bytes (new and assumed states together) in one push.
    pub push_bytes_max: usize,
    /// Most bytes of one body.
    pub document_bytes_max: usize,
    /// Most bytes of one id.
    pub id_bytes_max: usize,
    /// Most bytes of one owner.
    pub owner_bytes_max: usize,
}

impl WireLimits {
    /// Takes the limits that bound a push.
    pub fn from_limits(l: &Limits) -> WireLimits {
        WireLimits {
            push_rows_max: l.push_rows_max,
            push_bytes_max: l.push_bytes_max,
            document_bytes_max: l.document_bytes_max,
            id_bytes_max: l.id_bytes_max,
            owner_bytes_max: l.owner_bytes_max,
        }
    }

    /// Bytes of one document's strings and framing, its body aside.
    fn document_overhead(&self) -> usize {
        self.id_bytes_max
            .saturating_add(self.owner_bytes_max)
            .saturating_add(REVISION_BYTES_MAX)
            .saturating_add(DOCUMENT_FRAMING_BYTES)
    }

    /// The largest encoded row within the limits: two documents, each at every limit.
    pub fn row_bytes_max(&self) -> usize {
        self.document_bytes_max
            .saturating_add(self.document_overhead())
            .saturating_mul(2)
            .saturating_add(ROW_FRAMING_BYTES)
    }

    /// The largest Push request within the limits: every row at its largest, bodies capped by
    /// `push_bytes_max`, plus slack. The default decoding limit, so that no valid push is ever
    /// refused by the transport and nothing much larger is ever buffered.
    pub fn message_bytes_max(&self) -> usize {
        let bodies = self
            .document_bytes_max
            .saturating_mul(2)
            .saturating_mul(self.push_rows_max)
            .min(self.push_bytes_max);
        let framing = self
            .document_overhead()
            .saturating_mul(2)
            .saturating_add(ROW_FRAMING_BYTES)
            .saturating_mul(self.push_rows_max);
        bodies
            .saturating_add(framing)
            .saturating_add(REQUEST_SLACK_BYTES)
    }
}

/// Why a request was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// Not protobuf: answered with [`MALFORMED`].
    Malformed,
    /// Over a limit: the field's path (`rows[3].new_document_state.json`) and a message
    /// naming it.
    Limit {
        /// The offending field's path.
        field: String,
        /// What is over which limit.
        message: String,
    },
}

/// `PushRequest.mode`'s value for per-row pushes (`PUSH_MODE_PER_ROW`).
const MODE_PER_ROW: u64 = 2;

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const FIXED32: u64 = 5;
/// prost's recursion limit, which also bounds nested groups.
const DEPTH_MAX: u32 = 100;

/// A cursor over a message's bytes.
struct Wire<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Wire { bytes, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// A varint as prost reads it: at most 10 bytes, the tenth at most 1.
    fn varint(&mut self) -> Result<u64, ScanError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *self.bytes.get(self.at).ok_or(ScanError::Malformed)?;
            self.at += 1;
            if i == 9 && b > 1 {
                return Err(ScanError::Malformed);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(ScanError::Malformed)
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u64, u64), ScanError> {
        let key = self.varint()?;
        let (field, wire_type) = (key >> 3, key & 7);
        if key > u64::from(u32::MAX) || wire_type > FIXED32 || field == 0 {
            return Err(ScanError::Malformed);
        }
        Ok((field, wire_type))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], ScanError> {
        let n = usize::try_from(n).map_err(|_| ScanError::Malformed)?;
        let end = self.at.checked_add(n).ok_or(ScanError::Malformed)?;
        let bytes = self.bytes.get(self.at..end).ok_or(ScanError::Malformed)?;
        self.at = end;
        Ok(bytes)
    }

    /// A length-delimited payload.
    fn payload(&mut self) -> Result<&'a [u8], ScanError> {
        let n = self.varint()?;
        self.take(n)
    }

    /// Skips one field's value, as prost skips unknown fields.
    fn skip(&mut self, field: u64, wire_type: u64, depth: u32) -> Result<(), ScanError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.payload().map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP => {
                if depth >= DEPTH_MAX {
                    return Err(ScanError::Malformed);
                }
                loop {
                    let (inner, wt) = self.key()?;
                    if wt == END_GROUP {
                        return if inner == field {
                            Ok(())
                        } else {
                            Err(ScanError::Malformed)
                        };
                    }
                    self.skip(inner, wt, depth + 1)?;
                }
            }
            _ => Err(ScanError::Malformed),
        }
    }
}

/// Checks a `PushRequest`'s bytes against the limits before anything is decoded.
///
/// A document over a per-row limit fails an atomic push here. A per-row push lets the row
/// through to be refused on its own by validation (with the same message), its whole size
/// counted against `push_bytes_max`, so what is decoded stays bounded.
pub fn scan_push(bytes: &[u8], limits: &WireLimits) -> Result<(), ScanError> {
    let mut wire = Wire::new(bytes);
    let mut rows = 0usize;
    let mut body_bytes = 0usize;
    let mut oversized_bytes = 0usize;
    // The mode may come after the rows: the first row over its limits waits for it.
    let mut first_oversized = None;
    let mut per_row = false;
    while !wire.done() {
        let (field, wire_type) = wire.key()?;
        if field == 3 && wire_type == VARINT {
            per_row = wire.varint()? == MODE_PER_ROW;
            continue;
        }
        if field != 2 {
            wire.skip(field, wire_type, 0)?;
            continue;
        }
        if wire_type != LEN {
            return Err(ScanError::Malformed);
        }
        let row = wire.payload()?;
        // Rows past the limit are only counted, for the message.
        if rows < limits.push_rows_max {
            match scan_row(rows, row, limits)? {
                Ok(bytes) => body_bytes = body_bytes.saturating_add(bytes),
                Err(over) => {
                    oversized_bytes = oversized_bytes.saturating_add(row.len());
                    first_oversized.get_or_insert(over);
                }
            }
        }
        rows += 1;
    }
    if let Some(over) = first_oversized {
        if !per_row {
            return Err(over);
        }
        body_bytes = body_bytes.saturating_add(oversized_bytes);
    }
    if rows > limits.push_rows_max {
        return Err(ScanError::Limit {
            field: "rows".into(),
            message: format!(
                "rows: {rows} rows exceed the limit of {} per push",
                limits.push_rows_max
            ),
        });
    }
    if body_bytes > limits.push_bytes_max {
        return Err(ScanError::Limit {
            field: "rows".into(),
            message: format!(
                "rows: the bodies total {body_bytes} bytes, over the limit of {} per push \
                 (new and assumed states together); split the push",
                limits.push_bytes_max
            ),
        });
    }
    Ok(())
}

/// One row: its size, each document's field sizes; returns its body bytes, or (inner error)
/// the first document field over its limit.
fn scan_row(
    index: usize,
    row: &[u8],
    limits: &WireLimits,
) -> Result<Result<usize, ScanError>, ScanError> {
    let mut wire = Wire::new(row);
    let mut new = DocumentSizes::default();
    let mut assumed = DocumentSizes::default();
    while !wire.done() {
        let (field, wire_type) = wire.key()?;
        let document = match field {
            1 => &mut new,
            2 => &mut assumed,
            _ => {
                wire.skip(field, wire_type, 0)?;
                continue;
            }
        };
        if wire_type != LEN {
            return Err(ScanError::Malformed);
        }
        // A repeated message field merges: sizes add up, as a bound.
        document.add(scan_document(wire.payload()?)?);
    }
    for (name, document) in [
        ("new_document_state", &new),
        ("assumed_master_state", &assumed),
    ] {
        if let Some((field, error)) = document.over_limit(limits) {
            // Named by the new state's id, as validation names rows.
            let id = new.shown_id();
            return Ok(Err(ScanError::Limit {
                field: format!("rows[{index}].{name}.{field}"),
                message: format!("rows[{index}]{id}: {name}.{error}"),
            }));
        }
    }
    if row.len() > limits.row_bytes_max() {
        // Every field is within its limit, so the bytes are in fields the server ignores.
        return Err(ScanError::Limit {
            field: format!("rows[{index}]"),
            message: format!(
                "rows[{index}]: {} bytes, over the limit of {} for one row",
                row.len(),
                limits.row_bytes_max()
            ),
        });
    }
    Ok(Ok(new.json.saturating_add(assumed.json)))
}

/// What the scan learns of one document: the sizes of the fields it bounds.
#[derive(Default)]
struct DocumentSizes<'a> {
    id: &'a [u8],
    json: usize,
    owner: usize,
}

impl<'a> DocumentSizes<'a> {
    fn add(&mut self, other: DocumentSizes<'a>) {
        if !other.id.is_empty() {
            self.id = other.id;
        }
        self.json = self.json.saturating_add(other.json);
        self.owner = self.owner.max(other.owner);
    }

    /// The first field over its limit, worded as validation words it (`json: N bytes, ...`).
    /// Returns the field's name and the message.
    fn over_limit(&self, limits: &WireLimits) -> Option<(&'static str, String)> {
        if self.json > limits.document_bytes_max {
            return Some((
                "json",
                format!(
                    "json: {} bytes, over the limit of {}",
                    self.json, limits.document_bytes_max
                ),
            ));
        }
        if self.id.len() > limits.id_bytes_max {
            return Some((
                "id",
                format!(
                    "id is {} bytes, over the limit of {}",
                    self.id.len(),
                    limits.id_bytes_max
                ),
            ));
        }
        if self.owner > limits.owner_bytes_max {
            return Some((
                "owner",
                format!(
                    "owner is {} bytes, over the limit of {}",
                    self.owner, limits.owner_bytes_max
                ),
            ));
        }
        None
    }

    /// ` (id "...")` as validation shows it, when the id is UTF-8.
    fn shown_id(&self) -> String {
        match std::str::from_utf8(self.id) {
            Ok(id) => format!(" (id {})", crate::protocol::shown(id)),
            Err(_) => String::new(),
        }
    }
}

fn scan_document(bytes: &[u8]) -> Result<DocumentSizes<'_>, ScanError> {
    let mut wire = Wire::new(bytes);
    let mut sizes = DocumentSizes::default();
    while !wire.done() {
        let (field, wire_type) = wire.key()?;
        match (field, wire_type) {
            (1, LEN) => sizes.id = wire.payload()?,
            (2, LEN) => sizes.json = sizes.json.saturating_add(wire.payload()?.len()),
            (6, LEN) => sizes.owner = wire.payload()?.len(),
            (1 | 2 | 6, _) => return Err(ScanError::Malformed),
            _ => wire.skip(field, wire_type, 0)?,
        }
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ChangeRow, Document, PushRequest};
    use prost::Message;

    fn limits() -> WireLimits {
        WireLimits {
            push_rows_max: 3,
            push_bytes_max: 100,
            document_bytes_max: 40,
            id_bytes_max: 8,
            owner_bytes_max: 8,
        }
    }

    fn row(id: &str, json: &str) -> ChangeRow {
        ChangeRow {
            new_document_state: Some(Document {
                id: id.into(),
                json: json.as_bytes().to_vec(),
                ..Default::default()
            }),
            assumed_master_state: None,
        }
    }

    fn push(rows: Vec<ChangeRow>) -> Vec<u8> {
        PushRequest {
            collection: "tasks".into(),
            rows,
            mode: 0,
            idempotency_key: String::new(),
        }
        .encode_to_vec()
    }

    fn limit_error(bytes: &[u8]) -> String {
        match scan_push(bytes, &limits()) {
            Err(ScanError::Limit { message, .. }) => message,
            other => panic!("expected a limit error, got {other:?}"),
        }
    }

    #[test]
    fn counts_rows_and_body_bytes() {
        assert_eq!(scan_push(&push(vec![row("a", "{}"); 3]), &limits()), Ok(()));
        let m = limit_error(&push(vec![ChangeRow::default(); 4]));
        assert_eq!(m, "rows: 4 rows exceed the limit of 3 per push");
        let big = format!(r#"{{"s":"{}"}}"#, "x".repeat(30));
        let mut r = row("a", &big);
        r.assumed_master_state = r.new_document_state.clone();
        let m = limit_error(&push(vec![r.clone(), r]));
        assert!(
            m.contains("the bodies total 152 bytes, over the limit of 100"),
            "{m}"
        );
    }

    #[test]
    fn per_row_pushes_let_oversized_documents_through_within_the_request_bytes() {
        let per_row = |rows: Vec<ChangeRow>| {
            PushRequest {
                collection: "tasks".into(),
                rows,
                mode: MODE_PER_ROW as i32,
                idempotency_key: String::new(),
            }
            .encode_to_vec()
        };
        let rows = vec![row("a", "{}"), row("b", &"x".repeat(41))];
        // Atomic: refused with the field's path; per-row: let through, to be refused alone.
        match scan_push(&push(rows.clone()), &limits()) {
            Err(ScanError::Limit { field, .. }) => {
                assert_eq!(field, "rows[1].new_document_state.json")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(scan_push(&per_row(rows), &limits()), Ok(()));
        let long_id = vec![row("a", "{}"), row(&"i".repeat(9), "{}")];
        assert_eq!(scan_push(&per_row(long_id), &limits()), Ok(()));
        // The whole oversized row counts against push_bytes_max: 46 + 46 + 2 body bytes
        // would pass; with the rows' framing and ids they do not.
        let two_big = vec![
            row("a", &"x".repeat(46)),
            row("b", &"x".repeat(46)),
            row("c", "{}"),
        ];
        match scan_push(&per_row(two_big), &limits()) {
            Err(ScanError::Limit { field, message }) => {
                assert_eq!(field, "rows");
                assert!(
                    message.contains("over the limit of 100 per push"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The row count still fails the whole request.
        let four = per_row(vec![row("a", &"x".repeat(41)); 4]);
        assert!(
            matches!(scan_push(&four, &limits()), Err(ScanError::Limit { field, .. }) if field == "rows")
        );
    }

    #[test]
    fn names_the_row_and_field_over_its_limit() {
        let m = limit_error(&push(vec![row("a", "{}"), row("b", &"x".repeat(41))]));
        assert_eq!(
            m,
            "rows[1] (id \"b\"): new_document_state.json: 41 bytes, over the limit of 40"
        );
        let mut r = row("a", "{}");
        r.assumed_master_state = Some(Document {
            owner: "o".repeat(9),
            ..Default::default()
        });
        let m = limit_error(&push(vec![r]));
        assert_eq!(
            m,
            "rows[0] (id \"a\"): assumed_master_state.owner is 9 bytes, over the limit of 8"
        );
        let mut r = row("a", "{}");
        r.new_document_state.as_mut().unwrap().revision = "r".repeat(1000);
        let m = limit_error(&push(vec![r]));
        assert!(
            m.starts_with("rows[0]: ") && m.contains("for one row"),
            "{m}"
        );
    }

    #[test]
    fn the_largest_valid_push_fits_the_message_limit() {
        let l = WireLimits {
            push_bytes_max: usize::MAX,
            ..limits()
        };
        let full = Document {
            id: "i".repeat(8),
            json: vec![b'x'; 40],
            deleted: true,
            revision: "r".repeat(REVISION_BYTES_MAX),
            updated_at: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: i32::MIN,
            }),
            owner: "o".repeat(8),
            left_scope: true,
        };
        let r = ChangeRow {
            new_document_state: Some(full.clone()),
            assumed_master_state: Some(full),
        };
        let bytes = PushRequest {
            collection: "c".repeat(64),
            rows: vec![r.clone(); 3],
            mode: 0,
            idempotency_key: String::new(),
        }
        .encode_to_vec();
        assert_eq!(scan_push(&bytes, &l), Ok(()));
        assert!(r.encoded_len() <= l.row_bytes_max());
        assert!(bytes.len() <= l.message_bytes_max());
        assert!(l.message_bytes_max() < bytes.len() + REQUEST_SLACK_BYTES + 1024);
    }

    #[test]
    fn malformed_bytes_are_refused_and_prost_agrees() {
        for bad in [
            &[0x12][..],                               // rows: no length
            &[0x12, 0x05, 0x0a][..],                   // rows: length past the end
            &[0x10, 0x01][..],                         // rows as a varint
            &[0x00, 0x01][..],                         // field 0
            &[0x08, 0xff, 0xff][..],                   // truncated varint
            &[0x1c][..],                               // end group without a start
            &[0x1b, 0x24][..],                         // group ended by another field's end
            &[0x12, 0x02, 0x0a, 0x03][..],             // document past the row's end
            &[0x12, 0x04, 0x0a, 0x02, 0x10, 0x80][..], // json as a varint
        ] {
            assert_eq!(
                scan_push(bad, &limits()),
                Err(ScanError::Malformed),
                "{bad:x?}"
            );
            assert!(PushRequest::decode(bad).is_err(), "prost accepts {bad:x?}");
        }
    }

    /// Never stricter than prost: mutated valid requests that prost accepts pass the scan
    /// when no limit binds.
    #[test]
    fn accepts_whatever_prost_accepts() {
        use rand::{Rng, SeedableRng};
        let open = WireLimits {
            push_rows_max: usize::MAX,
            push_bytes_max: usize::MAX,
            document_bytes_max: usize::MAX,
            id_bytes_max: usize::MAX,
            owner_bytes_max: usize::MAX,
        };
        let mut full = row("a", r#"{"x":1}"#);
        full.assumed_master_state = Some(Document {
            id: "a".into(),
            revision: "1-ab".into(),
            owner: "o".into(),
            deleted: true,
            ..Default::default()
        });
        let seed = push(vec![full, ChangeRow::default(), row("b", "{}")]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let mut bytes = seed.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[i] = rng.random(),
                    1 => {
                        bytes.remove(i);
                    }
                    _ => bytes.insert(i, rng.random()),
                }
            }
            if PushRequest::decode(bytes.as_slice()).is_ok() {
                accepted += 1;
                assert_eq!(scan_push(&bytes, &open), Ok(()), "{bytes:x?}");
            } else {
                refused += 1;
            }
        }
        assert!(accepted > 1000 && refused > 1000, "{accepted} / {refused}");
    }
}
