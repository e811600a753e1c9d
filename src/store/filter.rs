//! What a filtered read hands the store: a compiled selector as SQL predicates with their
//! parameters. The protocol compiles them (`protocol::selector`); the store only splices them
//! where its statements say, and binds the parameters.

/// One parameter of a compiled predicate, with how to bind it (the SQL casts it to what it
/// needs).
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    /// Bind as `text`.
    Text(String),
    /// A decimal number's text, bind as `text` (cast to `numeric` in the SQL).
    Numeric(String),
    /// Bind as `boolean`.
    Bool(bool),
    /// Bind as `text[]`.
    TextArray(Vec<String>),
    /// Decimal numbers' texts, bind as `text[]` (cast to `numeric[]` in the SQL).
    NumericArray(Vec<String>),
    /// Bind as `boolean[]`.
    BoolArray(Vec<bool>),
    /// JSON text, bind as `text` (cast to `jsonb` in the SQL).
    Jsonb(String),
}

/// The placeholder number of a filter's first parameter: the filtered statements' own binds
/// come first.
pub const FILTER_FIRST_PARAM: usize = 8;

/// A reader's filter, compiled: which current states it receives, and which previous states
/// (removal records) it may hold. Both predicates use the same `params`, numbered from
/// [`FILTER_FIRST_PARAM`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReadFilter {
    /// A boolean SQL expression over the document body `d.body`.
    pub current: String,
    /// The same selector over a removal record's projection `m.previous`.
    pub previous: String,
    /// The parameters of both.
    pub params: Vec<SqlParam>,
}

impl ReadFilter {
    /// The predicate over `d.body` with its placeholders renumbered to start at `$first`, for
    /// a statement with other binds than the filtered page's.
    pub fn current_from(&self, first: usize) -> String {
        renumber(&self.current, first)
    }
}

/// `sql` with every placeholder `$n` (all at or above [`FILTER_FIRST_PARAM`]) moved to
/// `$(n - FILTER_FIRST_PARAM + first)`. A compiled predicate holds `$` only in placeholders:
/// values are parameters and paths are plain names.
fn renumber(sql: &str, first: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        if end > start {
            let n: usize = sql[start..end].parse().unwrap_or(FILTER_FIRST_PARAM);
            out.push_str(&(n.saturating_sub(FILTER_FIRST_PARAM) + first).to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_renumbered_and_nothing_else_changes() {
        let sql = "(d.body #> '{a}') = $8::text AND x = ANY($9::text[]) AND $10::int > 0 AND é";
        assert_eq!(
            super::renumber(sql, 5),
            "(d.body #> '{a}') = $5::text AND x = ANY($6::text[]) AND $7::int > 0 AND é"
        );
        assert_eq!(super::renumber(sql, 8), sql);
    }
}

/// A removal record: a write at `position` changed the declared fields of a live document
/// `id`, or deleted it; `previous` is the projection of the state it replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct MoveRecord {
    /// The document.
    pub id: String,
    /// Its owner.
    pub owner: String,
    /// The position of the write.
    pub position: super::Position,
    /// The previous state's declared fields, as JSON text (dotted path -> value).
    pub previous: String,
}

/// Who asks about blobs: what a principal may reference and download.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlobScope<'a> {
    /// The principal whose uploads count (its grants); `None`: a service, which may use
    /// every stored blob.
    pub grantee: Option<&'a str>,
    /// The owner filter of the documents it may read (`None`: every owner's, within `filter`).
    pub owner: Option<&'a str>,
    /// Its read rule on a collection with claim-based access rules.
    pub filter: Option<&'a ReadFilter>,
}
