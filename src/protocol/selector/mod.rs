//! Selectors of selective sync: the subset of the Mango query language that RxDB users write,
//! over the fields a collection declares filterable (`filter_fields`), parsed and checked
//! ([`parse`]), compiled to parameterized SQL ([`sql`]) and evaluated in memory ([`matcher`])
//! with the same result, and bound to a caller's token claims ([`claims`]).
//!
//! # The language
//!
//! `{"done": false, "priority": {"$gte": 3}, "team": {"$in": ["a", "b"]}}`: keys are declared
//! dotted paths or `$and` / `$or` (non-empty arrays of selectors); several keys are an implicit
//! `$and`, a plain value an implicit `$eq`, an object of operators several clauses on one
//! field (each alone, as in MongoDB). Operators: `$eq $ne $gt $gte $lt $lte` (a value of the
//! field's declared type), `$in $nin` (an array of such values), `$exists` (a boolean). `{}`
//! matches everything. In `read_filter` / `write_filter` a value (or a whole `$in` list) may
//! be `{"$claim": "name"}`: the caller's token claim, bound with [`Selector::bind_claims`].
//! Anything else (`$not`, `$nor`, `$regex`, `$elemMatch`, `null`, objects, arrays as values) is
//! INVALID_ARGUMENT naming the path.
//!
//! # What matches (the same in SQL and in memory)
//!
//! As in mingo, which RxDB evaluates queries with (`src/operators/_predicates.ts`: `$ne` is
//! `!$eq`, `$nin` is `!$in`, comparisons need the value's type to equal the query value's,
//! and every operator on an array means "some element"), and in MongoDB:
//!
//! - A field's *candidates* are, for a scalar field (`number`), its value when it is a JSON
//!   value of the declared type; for an array field (`number[]`), the elements of its array
//!   that have the declared type. Anything else (absent, `null`, another type, an object, an
//!   array for a scalar field, a scalar for an array field) has no candidate.
//! - `$eq v`, `$gt v`, ..., `$in [..]`: some candidate equals / compares / is listed.
//! - `$ne v`, `$nin [..]`: the negations: no candidate equals / is listed. So they match
//!   documents where the field is absent or of another type, as in MongoDB and mingo.
//! - `$exists: true`: the path holds any value, `null` included; `false`: it does not. A path
//!   through something that is not an object (`meta.region` when `meta` is a string or an
//!   array) does not exist.
//! - Strings compare as UTF-8 bytes (PostgreSQL `COLLATE "C"`, Rust `str`'s order), numbers by
//!   exact decimal value (`1` = `1.0`, no rounding: jsonb's `numeric`), `false < true`.
//!
//! Departures from mingo, each for exactness or for an index:
//! - mingo also looks into an array held by a field declared scalar (and at a scalar held by
//!   an array field), and through arrays in the middle of a path (`meta.region` over
//!   `meta: [{region}]`). We follow the declaration, which keeps each field served by one
//!   index; it differs only on documents that break their declared types, which a
//!   collection's schema can forbid.
//! - mingo's `{"x": null}` also matches absent fields; we refuse `null` (say `$exists`).
//! - JavaScript compares numbers as `f64` and strings as UTF-16 code units; we compare exact
//!   decimals (different only beyond 15 significant digits) and UTF-8 bytes (different only
//!   between characters above U+FFFF and those in U+E000..U+FFFF).
//!
//! Streams should read a document's declared fields once ([`FilterFields::project`]) and
//! match every stream's selector against that [`Projection`]; removal records keep the same
//! projection of a document's previous state ([`FilterFields::projection_sql`]).
//!
//! # Wiring
//!
//! - Configuration: [`FilterFields::from_config`] (`filter_fields`),
//!   [`AccessRules::from_config`] (`access`, `read_filter`, `write_filter`).
//! - Store: run [`FilterFields::index_ddl`] for each collection (one index per declared path
//!   and type, shared by collections); splice [`Selector::to_sql`] as `AND (<sql>)` into a
//!   query over `syncline_documents d`, binding [`SqlParam`]s after the query's own.
//! - Requests: [`Selector::parse_json`] (wire bytes), then
//!   `Selector::intersect(&selector, &read_rule.bind_claims(&claims)?)`; bind checkpoints to
//!   [`Selector::digest`].
//! - Streams and removal records: [`FilterFields::project`] / [`Projection::from_json`],
//!   [`Selector::matches_projected`]; [`FilterFields::projection_sql`] for what a removal
//!   record keeps.
//!
//! # Bounds
//!
//! A selector's JSON is at most [`SELECTOR_BYTES_MAX`] bytes, [`DEPTH_MAX`] levels of
//! `$and`/`$or`, [`CLAUSES_MAX`] clauses, [`IN_VALUES_MAX`] values per list, [`VALUES_MAX`]
//! values in all and [`STRING_BYTES_MAX`] bytes per string: checked before anything is copied.

mod canonical;
pub mod claims;
pub mod fields;
mod json;
pub mod matcher;
pub mod parse;
pub mod sql;
#[cfg(test)]
mod tests;
pub mod value;

use std::sync::Arc;

pub use claims::{Access, AccessRules};
pub use fields::{FieldDecl, FieldType, FilterFields, ScalarType};
pub use matcher::Projection;
pub use sql::{SqlParam, SqlPredicate};
pub use value::{Num, Scalar};

/// Most bytes of a selector's JSON text.
pub const SELECTOR_BYTES_MAX: usize = 16 * 1024;
/// Most nesting of `$and` / `$or`.
pub const DEPTH_MAX: usize = 8;
/// Most clauses (one per operator on a field) in a selector.
pub const CLAUSES_MAX: usize = 64;
/// Most values in one `$in` / `$nin` list.
pub const IN_VALUES_MAX: usize = 256;
/// Most values in a whole selector (lists included).
pub const VALUES_MAX: usize = 1024;
/// Most bytes of a string value.
pub const STRING_BYTES_MAX: usize = 1024;

/// A checked selector over one collection's declared fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub(crate) root: Node,
    /// Whether `root` still holds `$claim` references: such a selector matches nothing until
    /// [`Selector::bind_claims`] replaces them.
    pub(crate) unbound: bool,
}

/// A selector's tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// Every child matches (`$and`, several keys); empty: everything matches.
    All(Vec<Node>),
    /// Some child matches (`$or`); empty: nothing matches.
    Any(Vec<Node>),
    /// One operator on one field.
    Clause(Clause),
    /// The document belongs to this owner. Never parsed from a selector's JSON: only the
    /// server builds it, for `access = "either"` (own documents, or those the claim rule allows).
    Owner(String),
}

/// One operator on one declared field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Clause {
    pub field: Arc<FieldDecl>,
    pub op: Op,
}

/// Comparison operators taking one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl CmpOp {
    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Eq => "$eq",
            CmpOp::Ne => "$ne",
            CmpOp::Gt => "$gt",
            CmpOp::Gte => "$gte",
            CmpOp::Lt => "$lt",
            CmpOp::Lte => "$lte",
        }
    }
}

/// What a clause tests.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// `$eq` ... `$lte`.
    Cmp(CmpOp, Operand),
    /// `$in` (`negated`: `$nin`).
    In { negated: bool, list: ListOperand },
    /// `$exists`.
    Exists(bool),
}

/// A value in a clause: given, or a token claim to be bound.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Value(Scalar),
    Claim(String),
}

/// The list of `$in` / `$nin`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ListOperand {
    Items(Vec<Operand>),
    Claim(String),
}

impl Selector {
    /// The selector that matches every document (`{}`).
    pub fn everything() -> Selector {
        Selector {
            root: Node::All(Vec::new()),
            unbound: false,
        }
    }

    /// The selector that matches no document.
    pub fn nothing() -> Selector {
        Selector {
            root: Node::Any(Vec::new()),
            unbound: false,
        }
    }

    /// Both `a` and `b` (`{"$and": [a, b]}`): a reader's selector intersected with its
    /// `read_filter` can only narrow it.
    pub fn intersect(a: &Selector, b: &Selector) -> Selector {
        Selector {
            root: Node::All(vec![a.root.clone(), b.root.clone()]),
            unbound: a.unbound || b.unbound,
        }
    }

    /// Either `a` or `b` (`{"$or": [a, b]}`).
    pub fn union(a: &Selector, b: &Selector) -> Selector {
        Selector {
            root: Node::Any(vec![a.root.clone(), b.root.clone()]),
            unbound: a.unbound || b.unbound,
        }
    }

    /// The documents of `owner` (the owner column, not a body field): with [`Selector::union`],
    /// the owner rule beside a claim rule.
    pub fn owned_by(owner: &str) -> Selector {
        Selector {
            root: Node::Owner(owner.to_owned()),
            unbound: false,
        }
    }

    /// Whether it still references token claims (bind them first: until then it matches
    /// nothing and does not compile).
    pub fn has_unbound_claims(&self) -> bool {
        self.unbound
    }

    /// Whether it matches everything as written (`{}`, or only empty `$and`s).
    pub fn is_everything(&self) -> bool {
        fn all(n: &Node) -> bool {
            matches!(n, Node::All(children) if children.iter().all(all))
        }
        all(&self.root)
    }

    /// The canonical form: equal for selectors that differ only in key order, in `$and` /
    /// `$or` nesting and order, in the spelling of numbers (`1.0` / `1`), in implicit versus
    /// explicit `$eq` or in duplicates. JSON text, fit for logs and digests.
    pub fn canonical(&self) -> String {
        canonical::canonical(&self.root)
    }

    /// A stable 32-byte digest of the canonical form and the declared types of the fields it
    /// names (a type change in the configuration changes what it selects), to bind
    /// checkpoints to the filter they were issued under.
    pub fn digest(&self) -> [u8; 32] {
        canonical::digest(&self.root)
    }
}
