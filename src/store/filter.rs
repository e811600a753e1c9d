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
