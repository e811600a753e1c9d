//! The filterable fields a collection declares (`[[collections]] filter_fields`), and the SQL
//! each one is read through.
//!
//! A declared path is trusted configuration: its segments are checked here to be plain names
//! (`[A-Za-z_][A-Za-z0-9_]*`, never a number, so that `#>` cannot read it as an array index),
//! and only then spliced into SQL as a literal. That is what lets a compiled predicate repeat
//! the index expression of [`FieldDecl::index_expression`] word for word, which PostgreSQL
//! needs to use the index. Client text never reaches SQL: a selector may only name a declared
//! path (looked up here), and its values always travel as parameters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Most fields one collection may declare filterable.
pub const FILTER_FIELDS_MAX: usize = 64;
/// Most segments of a declared dotted path.
pub const PATH_SEGMENTS_MAX: usize = 8;
/// Most bytes of one segment of a declared path.
pub const SEGMENT_BYTES_MAX: usize = 64;

/// The JSON type of a filterable value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScalarType {
    /// A JSON string, compared byte by byte (UTF-8), as `COLLATE "C"` does.
    String,
    /// A JSON number, compared by exact decimal value, as jsonb's `numeric` does.
    Number,
    /// `true` or `false` (`false < true`).
    Boolean,
}

impl ScalarType {
    /// The name used in configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ScalarType::String => "string",
            ScalarType::Number => "number",
            ScalarType::Boolean => "boolean",
        }
    }

    /// The `jsonb_typeof` of values of this type.
    pub(crate) fn jsonb_type(self) -> &'static str {
        self.as_str()
    }
}

/// A declared field's type: a scalar, or an array whose elements are that scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldType {
    /// The type of the value (or of each element).
    pub scalar: ScalarType,
    /// Whether the field holds an array of `scalar`s ("some element" semantics).
    pub array: bool,
}

impl FieldType {
    /// Parses `string`, `number`, `boolean`, or one of them followed by `[]`.
    pub fn parse(text: &str) -> Option<FieldType> {
        let (name, array) = match text.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (text, false),
        };
        let scalar = match name {
            "string" => ScalarType::String,
            "number" => ScalarType::Number,
            "boolean" => ScalarType::Boolean,
            _ => return None,
        };
        Some(FieldType { scalar, array })
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scalar.as_str())?;
        if self.array {
            f.write_str("[]")?;
        }
        Ok(())
    }
}

/// One declared filterable field.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldDecl {
    /// The dotted path as configured (`meta.region`).
    pub path: String,
    /// Its segments (`["meta", "region"]`).
    pub segments: Vec<String>,
    /// Its declared type.
    pub ty: FieldType,
}

impl FieldDecl {
    /// The path as a PostgreSQL `text[]` literal, `'{meta,region}'`. Safe to splice only
    /// because [`check_segment`] admitted every segment.
    pub(crate) fn path_literal(&self) -> String {
        format!("'{{{}}}'", self.segments.join(","))
    }

    /// `<body> #> '{path}'`: the raw jsonb at the path (SQL NULL when absent).
    pub(crate) fn raw(&self, body: &str) -> String {
        format!("({body} #> {})", self.path_literal())
    }

    /// The typed value of a scalar field over `body`: the value when it is a JSON scalar of the
    /// declared type, else NULL (absent, null, another type, an array or an object). Strings
    /// carry `COLLATE "C"` so that they order as bytes, like Rust's `str`.
    pub(crate) fn typed(&self, body: &str) -> String {
        typed_value(&self.raw(body), self.ty.scalar)
    }

    /// The expression of the index that serves this field, over the column `body` of
    /// `syncline_documents`. A compiled predicate uses the same expression (over `d.body`),
    /// which PostgreSQL matches to the index (the table alias does not matter).
    ///
    /// - scalars: a btree on `(collection, <typed value>)`, the typed value being the JSON
    ///   value when it has the declared type and NULL otherwise (so that the index can be
    ///   built whatever the documents hold: a cast of a string to numeric would fail);
    /// - arrays: a GIN `jsonb_path_ops` index on the raw value, for `@>` (`$eq`, `$in`).
    pub fn index_expression(&self) -> String {
        if self.ty.array {
            format!("{} jsonb_path_ops", self.raw("body"))
        } else {
            format!("collection, ({})", self.typed("body"))
        }
    }

    /// A `CREATE INDEX` statement for this field's index on `syncline_documents`, named after
    /// the path and type (one index serves every collection declaring the same field). Run
    /// it `CONCURRENTLY` on a live database (outside a transaction).
    pub fn index_ddl(&self, concurrently: bool) -> String {
        let method = if self.ty.array { "gin" } else { "btree" };
        format!(
            "CREATE INDEX {}IF NOT EXISTS {} ON syncline_documents USING {method} ({})",
            if concurrently { "CONCURRENTLY " } else { "" },
            self.index_name(),
            self.index_expression()
        )
    }

    /// The index's name: `syncline_filter_` and a digest of the path and type (names are cut
    /// at 63 bytes, paths are not).
    pub fn index_name(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{}\0{}", self.path, self.ty).as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("syncline_filter_{hex}")
    }
}

/// The typed value of jsonb expression `raw` (see [`FieldDecl::typed`]).
pub(crate) fn typed_value(raw: &str, scalar: ScalarType) -> String {
    let value = match scalar {
        ScalarType::String => format!("{raw} #>> '{{}}'"),
        ScalarType::Number => format!("{raw}::numeric"),
        ScalarType::Boolean => format!("{raw}::boolean"),
    };
    let typed = format!(
        "CASE WHEN jsonb_typeof({raw}) = '{}' THEN {value} END",
        scalar.jsonb_type()
    );
    match scalar {
        ScalarType::String => format!("({typed}) COLLATE \"C\""),
        _ => format!("({typed})"),
    }
}

/// A collection's declared filterable fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterFields {
    collection: String,
    by_path: BTreeMap<String, Arc<FieldDecl>>,
}

impl FilterFields {
    /// Parses `filter_fields` of `collection`. Errors name the collection and the key.
    pub fn from_config(
        collection: &str,
        declared: &BTreeMap<String, String>,
    ) -> Result<FilterFields, String> {
        let at = |key: &str| format!("collection {collection:?}: filter_fields.{key:?}");
        if declared.len() > FILTER_FIELDS_MAX {
            return Err(format!(
                "collection {collection:?}: filter_fields declares {} fields (at most {FILTER_FIELDS_MAX})",
                declared.len()
            ));
        }
        let mut by_path = BTreeMap::new();
        for (path, ty) in declared {
            let ty = FieldType::parse(ty).ok_or_else(|| {
                format!(
                    "{}: unknown type {ty:?} (expected string, number, boolean, string[], number[] or boolean[])",
                    at(path)
                )
            })?;
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if segments.len() > PATH_SEGMENTS_MAX {
                return Err(format!(
                    "{}: more than {PATH_SEGMENTS_MAX} segments",
                    at(path)
                ));
            }
            for segment in &segments {
                check_segment(segment).map_err(|why| format!("{}: {why}", at(path)))?;
            }
            let decl = FieldDecl {
                path: path.clone(),
                segments,
                ty,
            };
            by_path.insert(path.clone(), Arc::new(decl));
        }
        Ok(FilterFields {
            collection: collection.to_owned(),
            by_path,
        })
    }

    /// The collection these fields belong to.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// The declaration of `path`, if declared.
    pub fn get(&self, path: &str) -> Option<&Arc<FieldDecl>> {
        self.by_path.get(path)
    }

    /// Every declared field, by path.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<FieldDecl>> {
        self.by_path.values()
    }

    /// Whether no field is declared (no selector can name anything).
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// A jsonb expression over the body expression `body` (trusted SQL, e.g. `d.body` or a
    /// trigger's `OLD.body`) computing [`FilterFields::project_json`]'s object: what a removal
    /// record keeps of a document's previous state, for
    /// [`super::Selector::matches_projection`]. Fixed text: paths come from the configuration.
    pub fn projection_sql(&self, body: &str) -> String {
        if self.is_empty() {
            return "'{}'::jsonb".to_owned();
        }
        let rows: Vec<String> = self
            .iter()
            .map(|f| format!("('{}', {body} #> {})", f.path, f.path_literal()))
            .collect();
        format!(
            "(SELECT coalesce(jsonb_object_agg(p.k, p.v), '{{}}'::jsonb) FROM (VALUES {}) AS p(k, v) WHERE p.v IS NOT NULL)",
            rows.join(", ")
        )
    }

    /// The `CREATE INDEX` statements the store must run for these fields.
    pub fn index_ddl(&self, concurrently: bool) -> Vec<String> {
        self.iter().map(|f| f.index_ddl(concurrently)).collect()
    }
}

/// Admits a path segment that is a plain name: safe inside a `'{a,b}'` literal (no quote,
/// comma, brace, backslash or space) and never read by `#>` as an array index.
fn check_segment(segment: &str) -> Result<(), String> {
    let mut bytes = segment.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "segment {segment:?} is not a plain name ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    if segment.len() > SEGMENT_BYTES_MAX {
        return Err(format!("segment longer than {SEGMENT_BYTES_MAX} bytes"));
    }
    Ok(())
}
