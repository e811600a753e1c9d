//! Evaluates a selector on one document in memory, with the same result as its SQL (see the
//! rules in the module above). Streams run it on each document they are handed and on
//! removal records, never a query per stream.

use std::borrow::Cow;
use std::cmp::Ordering;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use super::fields::{FieldDecl, FilterFields};
use super::value::{Num, Scalar};
use super::{Clause, CmpOp, ListOperand, Node, Op, Operand, Selector};

impl Selector {
    /// Whether the document (a JSON object) matches. A selector with unbound claims matches
    /// nothing.
    ///
    /// serde_json holds numbers as `i64`, `u64` or `f64`: a document number with more
    /// significant digits than an `f64` keeps (17) was rounded when parsed, and may compare
    /// differently from PostgreSQL. [`Selector::matches_json`] reads the text and is exact.
    pub fn matches(&self, document: &Value) -> bool {
        !self.unbound && node(&self.root, &ValueDoc(document))
    }

    /// Whether the document, given as JSON text (as the store returns bodies), matches:
    /// numbers are read from the text exactly, as jsonb holds them. Text that is not JSON
    /// matches nothing.
    pub fn matches_json(&self, body: &str) -> bool {
        if self.unbound {
            return false;
        }
        match serde_json::from_str::<&RawValue>(body) {
            Ok(raw) => node(&self.root, &TextDoc(raw)),
            Err(_) => false,
        }
    }

    /// Whether a document matched, judged from its projection (see
    /// [`FilterFields::project_json`] and [`FilterFields::projection_sql`]): what a removal
    /// record keeps of a document's previous state. Same result as on the whole document.
    pub fn matches_projection(&self, projection: &str) -> bool {
        if self.unbound {
            return false;
        }
        match serde_json::from_str::<&RawValue>(projection) {
            Ok(raw) => node(&self.root, &ProjectionDoc(raw)),
            Err(_) => false,
        }
    }
}

impl FilterFields {
    /// The declared fields' values in `body` (JSON text), as a flat object keyed by dotted
    /// path (`{"done":false,"meta.region":"eu"}`), absent fields left out and values copied
    /// as written (numbers exact). `None` when `body` is not JSON. The store's
    /// [`FilterFields::projection_sql`] computes the same object.
    pub fn project_json(&self, body: &str) -> Option<String> {
        let root = serde_json::from_str::<&RawValue>(body).ok()?;
        let mut out = String::from("{");
        for field in self.iter() {
            if let Some(raw) = raw_at(root, &field.segments) {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(field.path.as_str()).to_string());
                out.push(':');
                out.push_str(raw.get());
            }
        }
        out.push('}');
        Some(out)
    }
}

/// A value found in a document, as far as selectors care.
#[derive(Debug, Clone)]
enum Leaf<'a> {
    Str(Cow<'a, str>),
    Num(Num),
    Bool(bool),
    /// `null`, an object, or an array inside an array.
    Other,
}

/// What a path holds.
#[derive(Debug, Clone)]
enum Found<'a> {
    Missing,
    One(Leaf<'a>),
    Array(Vec<Leaf<'a>>),
}

/// A document the matcher can look paths up in.
trait Doc {
    fn find(&self, field: &FieldDecl) -> Cow<'_, Found<'_>>;
    /// The document's owner, when known (a body alone has none: `owned_by` never matches it).
    fn owner(&self) -> Option<&str> {
        None
    }
}

/// A projection with the owner of the document it was read from.
struct OwnedProjection<'a> {
    projection: &'a Projection,
    owner: &'a str,
}

impl Doc for OwnedProjection<'_> {
    fn find(&self, field: &FieldDecl) -> Cow<'_, Found<'_>> {
        self.projection.find(field)
    }
    fn owner(&self) -> Option<&str> {
        Some(self.owner)
    }
}

struct ValueDoc<'a>(&'a Value);

impl Doc for ValueDoc<'_> {
    fn find(&self, field: &FieldDecl) -> Cow<'_, Found<'_>> {
        Cow::Owned(self.lookup(field))
    }
}

impl ValueDoc<'_> {
    fn lookup(&self, field: &FieldDecl) -> Found<'_> {
        let mut current = self.0;
        for segment in &field.segments {
            match current {
                Value::Object(map) => match map.get(segment) {
                    Some(v) => current = v,
                    None => return Found::Missing,
                },
                _ => return Found::Missing,
            }
        }
        match current {
            Value::Array(items) => Found::Array(items.iter().map(value_leaf).collect()),
            v => Found::One(value_leaf(v)),
        }
    }
}

fn value_leaf(v: &Value) -> Leaf<'_> {
    match v {
        Value::String(s) => Leaf::Str(Cow::Borrowed(s)),
        Value::Number(n) => Num::parse(&n.to_string()).map_or(Leaf::Other, Leaf::Num),
        Value::Bool(b) => Leaf::Bool(*b),
        _ => Leaf::Other,
    }
}

struct TextDoc<'a>(&'a RawValue);

impl Doc for TextDoc<'_> {
    fn find(&self, field: &FieldDecl) -> Cow<'_, Found<'_>> {
        Cow::Owned(raw_at(self.0, &field.segments).map_or(Found::Missing, raw_found))
    }
}

/// A projection: the declared fields' values keyed by their dotted paths.
struct ProjectionDoc<'a>(&'a RawValue);

impl Doc for ProjectionDoc<'_> {
    fn find(&self, field: &FieldDecl) -> Cow<'_, Found<'_>> {
        Cow::Owned(
            raw_at(self.0, std::slice::from_ref(&field.path)).map_or(Found::Missing, raw_found),
        )
    }
}

/// The declared fields' values of one document, read once: every stream of the collection
/// then matches its selector against it without parsing anything
/// ([`Selector::matches_projected`]).
#[derive(Debug, Clone, Default)]
pub struct Projection {
    /// By dotted path; absent fields are not here.
    values: std::collections::BTreeMap<String, Found<'static>>,
}

impl Projection {
    /// Bytes it holds on the heap (paths, strings, array elements, and the map's per-entry
    /// cost, approximated), so that a buffer of projections is bounded in bytes.
    pub fn heap_bytes(&self) -> usize {
        const ENTRY: usize = 64;
        let leaf = |l: &Leaf<'_>| {
            std::mem::size_of::<Leaf<'static>>()
                + match l {
                    Leaf::Str(s) => s.len(),
                    _ => 0,
                }
        };
        self.values
            .iter()
            .map(|(path, found)| {
                ENTRY
                    + path.len()
                    + match found {
                        Found::Missing => 0,
                        Found::One(l) => leaf(l),
                        Found::Array(items) => items.iter().map(leaf).sum(),
                    }
            })
            .sum()
    }

    /// Reads a projection's JSON text ([`FilterFields::project_json`],
    /// [`FilterFields::projection_sql`]: a removal record's previous values). `None` when it
    /// is not a JSON object.
    pub fn from_json(projection: &str) -> Option<Projection> {
        let map: std::collections::BTreeMap<String, &RawValue> =
            serde_json::from_str(projection).ok()?;
        Some(Projection {
            values: map
                .into_iter()
                .map(|(k, raw)| (k, owned(raw_found(raw))))
                .collect(),
        })
    }
}

impl FilterFields {
    /// Reads the declared fields of a document's JSON text once (numbers exact). `None` when
    /// `body` is not JSON.
    pub fn project(&self, body: &str) -> Option<Projection> {
        let root = serde_json::from_str::<&RawValue>(body).ok()?;
        let values = self
            .iter()
            .filter_map(|f| {
                raw_at(root, &f.segments).map(|raw| (f.path.clone(), owned(raw_found(raw))))
            })
            .collect();
        Some(Projection { values })
    }
}

impl Selector {
    /// Whether the document `projection` was read from matches (same result as
    /// [`Selector::matches_json`] on it, for a projection of this selector's collection).
    pub fn matches_projected(&self, projection: &Projection) -> bool {
        !self.unbound && node(&self.root, projection)
    }

    /// [`Selector::matches_projected`] for a document of `owner` ([`Selector::owned_by`]
    /// clauses compare with it).
    pub fn matches_projected_of(&self, projection: &Projection, owner: &str) -> bool {
        !self.unbound && node(&self.root, &OwnedProjection { projection, owner })
    }
}

impl Doc for Projection {
    fn find(&self, field: &FieldDecl) -> Cow<'_, Found<'_>> {
        match self.values.get(&field.path) {
            Some(found) => Cow::Borrowed(found),
            None => Cow::Owned(Found::Missing),
        }
    }
}

fn owned(found: Found<'_>) -> Found<'static> {
    let leaf = |l: Leaf<'_>| match l {
        Leaf::Str(s) => Leaf::Str(Cow::Owned(s.into_owned())),
        Leaf::Num(n) => Leaf::Num(n),
        Leaf::Bool(b) => Leaf::Bool(b),
        Leaf::Other => Leaf::Other,
    };
    match found {
        Found::Missing => Found::Missing,
        Found::One(l) => Found::One(leaf(l)),
        Found::Array(items) => Found::Array(items.into_iter().map(leaf).collect()),
    }
}

/// The value at a path through objects (anything else on the way: absent).
fn raw_at<'a>(root: &'a RawValue, segments: &[String]) -> Option<&'a RawValue> {
    let mut current = root;
    for segment in segments {
        if !current.get().starts_with('{') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(current.get());
        current = FindKey(segment).deserialize(&mut de).ok()??;
    }
    Some(current)
}

fn raw_found(raw: &RawValue) -> Found<'_> {
    let text = raw.get();
    if text.starts_with('[') {
        match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => Found::Array(items.into_iter().map(text_leaf).collect()),
            Err(_) => Found::One(Leaf::Other),
        }
    } else {
        Found::One(text_leaf(raw))
    }
}

fn text_leaf(raw: &RawValue) -> Leaf<'_> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            serde_json::from_str::<String>(text).map_or(Leaf::Other, |s| Leaf::Str(Cow::Owned(s)))
        }
        Some(b't') => Leaf::Bool(true),
        Some(b'f') => Leaf::Bool(false),
        Some(b'-' | b'0'..=b'9') => Num::parse(text).map_or(Leaf::Other, Leaf::Num),
        _ => Leaf::Other,
    }
}

/// Finds the value of one key in an object's text, borrowing it; the last one wins when a
/// key repeats, as in jsonb and serde_json.
struct FindKey<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for FindKey<'_> {
    type Value = Option<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FindKey<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(wanted) = map.next_key_seed(KeyIs(self.0))? {
            if wanted {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Compares a key with the wanted one without copying it.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

fn node(n: &Node, doc: &dyn Doc) -> bool {
    match n {
        Node::All(children) => children.iter().all(|c| node(c, doc)),
        Node::Any(children) => children.iter().any(|c| node(c, doc)),
        Node::Clause(c) => clause(c, doc),
        Node::Owner(owner) => doc.owner() == Some(owner.as_str()),
    }
}

fn clause(c: &Clause, doc: &dyn Doc) -> bool {
    let found = doc.find(&c.field);
    let found: &Found<'_> = &found;
    // The candidates: the value of a scalar field, the elements of an array field (of the
    // declared type: others never compare, see `compare`).
    let candidates: &[Leaf<'_>] = match (found, c.field.ty.array) {
        (Found::One(leaf), false) => std::slice::from_ref(leaf),
        (Found::Array(items), true) => items,
        _ => &[],
    };
    let any = |test: fn(Ordering) -> bool, value: &Scalar| {
        candidates
            .iter()
            .any(|leaf| compare(leaf, value).is_some_and(test))
    };
    match &c.op {
        Op::Exists(wanted) => !matches!(found, Found::Missing) == *wanted,
        Op::Cmp(op, Operand::Value(v)) => match op {
            CmpOp::Eq => any(Ordering::is_eq, v),
            CmpOp::Ne => !any(Ordering::is_eq, v),
            CmpOp::Gt => any(Ordering::is_gt, v),
            CmpOp::Gte => any(Ordering::is_ge, v),
            CmpOp::Lt => any(Ordering::is_lt, v),
            CmpOp::Lte => any(Ordering::is_le, v),
        },
        Op::In {
            negated,
            list: ListOperand::Items(items),
        } => {
            let listed = items.iter().any(|item| match item {
                Operand::Value(v) => any(Ordering::is_eq, v),
                // Unreachable: selectors with claims match nothing until bound.
                Operand::Claim(_) => false,
            });
            listed != *negated
        }
        // Unreachable for the same reason.
        Op::Cmp(_, Operand::Claim(_))
        | Op::In {
            list: ListOperand::Claim(_),
            ..
        } => false,
    }
}

/// A document's leaf against a selector value of the same type (`None` across types).
fn compare(leaf: &Leaf<'_>, value: &Scalar) -> Option<Ordering> {
    match (leaf, value) {
        (Leaf::Str(a), Scalar::Str(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
        (Leaf::Num(a), Scalar::Num(b)) => Some(a.cmp(b)),
        (Leaf::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}
