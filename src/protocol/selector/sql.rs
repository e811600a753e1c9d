//! Compiles a selector to a SQL predicate over `syncline_documents d`, for a store to splice
//! as `AND (<sql>)`.
//!
//! The text holds only fixed fragments, the declared paths (trusted configuration, checked in
//! [`super::fields`], spliced so that the expressions equal the indexes' ones) and `$n`
//! placeholders. Every value from a selector or a claim is a parameter, with an explicit cast.
//!
//! Per clause (K: the field's typed value, see [`FieldDecl::index_expression`]; X: the raw
//! jsonb at the path):
//!
//! | clause | scalar field | array field |
//! | --- | --- | --- |
//! | `$eq v` | `K = $n` (btree) | `X @> $n` with `[v]` (GIN) |
//! | `$ne v` | `(K = $n) IS NOT TRUE` | `(X @> $n) IS NOT TRUE` |
//! | `$gt v` ... | `K > $n` (btree) | `EXISTS` over the typed elements |
//! | `$in [..]` | `K = ANY($n)` (btree) | `X @> $a OR X @> $b ...` (GIN) |
//! | `$nin [..]` | `(K = ANY($n)) IS NOT TRUE` | `(X @> $a OR ...) IS NOT TRUE` |
//! | `$exists` | `X IS [NOT] NULL` | same |
//!
//! `X @> '[v]'` holds exactly when some top-level element of an array X equals v (a scalar X,
//! an object, or v nested deeper do not contain it), which is the matcher's rule.

use std::fmt::Write as _;

use super::fields::{FieldDecl, ScalarType, typed_value};
use super::value::Scalar;
use super::{Clause, CmpOp, ListOperand, Node, Op, Operand, Selector};
use crate::protocol::ProtocolError;

/// The documents' body column as a compiled predicate names it.
const BODY: &str = "d.body";

/// A compiled selector: SQL text and its parameters, numbered from the `first_param` given
/// to [`Selector::to_sql`].
#[derive(Debug, Clone, PartialEq)]
pub struct SqlPredicate {
    /// A boolean expression over `d.body`.
    pub sql: String,
    /// The values of `$first_param`, `$first_param + 1`, ..., in order.
    pub params: Vec<SqlParam>,
}

/// One parameter, with how to bind it (the store's type: it binds them).
pub use crate::store::filter::SqlParam;

impl Selector {
    /// Compiles to a predicate whose placeholders start at `$first_param` (so that it composes
    /// with a query's own binds). A selector with unbound claims does not compile.
    pub fn to_sql(&self, first_param: usize) -> Result<SqlPredicate, ProtocolError> {
        self.compile(first_param, Source::Body)
    }

    /// Compiles to a predicate over a removal record's projection column `column` (trusted
    /// SQL, e.g. `m.previous`: an object of dotted path to value, as
    /// [`super::FilterFields::projection_sql`] and the moves trigger write it), with the same
    /// result as [`Selector::matches_projection`] and the same parameters, in the same order,
    /// as [`Selector::to_sql`] with the same `first_param`: one set of binds serves both.
    pub fn to_projection_sql(
        &self,
        first_param: usize,
        column: &'static str,
    ) -> Result<SqlPredicate, ProtocolError> {
        self.compile(first_param, Source::Projection(column))
    }

    fn compile(&self, first_param: usize, source: Source) -> Result<SqlPredicate, ProtocolError> {
        if self.unbound {
            return Err(ProtocolError::internal(
                "a selector with unbound claims reached compilation",
            ));
        }
        let mut out = Compiler {
            sql: String::new(),
            params: Vec::new(),
            first: first_param,
            source,
        };
        out.node(&self.root);
        Ok(SqlPredicate {
            sql: out.sql,
            params: out.params,
        })
    }
}

/// Where a compiled predicate reads a field's value from.
#[derive(Clone, Copy)]
enum Source {
    /// The document body `d.body`, by path (`#>`), as the indexes do.
    Body,
    /// A flat projection column: `<column> -> 'dotted.path'`.
    Projection(&'static str),
}

struct Compiler {
    sql: String,
    params: Vec<SqlParam>,
    first: usize,
    source: Source,
}

fn cmp_sql(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Eq | CmpOp::Ne => "=",
        CmpOp::Gt => ">",
        CmpOp::Gte => ">=",
        CmpOp::Lt => "<",
        CmpOp::Lte => "<=",
    }
}

impl Compiler {
    /// The raw jsonb of `field` (SQL NULL when absent). Paths are checked plain names joined
    /// by dots (see `fields::check_segment`), so they are safe inside a literal.
    fn raw(&self, field: &FieldDecl) -> String {
        match self.source {
            Source::Body => field.raw(BODY),
            Source::Projection(column) => format!("({column} -> '{}')", field.path),
        }
    }

    /// The typed value of a scalar `field` (see [`FieldDecl::typed`]).
    fn typed(&self, field: &FieldDecl) -> String {
        match self.source {
            Source::Body => field.typed(BODY),
            Source::Projection(_) => typed_value(&self.raw(field), field.ty.scalar),
        }
    }

    /// Adds a parameter; returns its placeholder with the cast it needs.
    fn param(&mut self, p: SqlParam) -> String {
        let cast = match &p {
            SqlParam::Text(_) => "::text",
            SqlParam::Numeric(_) => "::text::numeric",
            SqlParam::Bool(_) => "::boolean",
            SqlParam::TextArray(_) => "::text[]",
            SqlParam::NumericArray(_) => "::text[]::numeric[]",
            SqlParam::BoolArray(_) => "::boolean[]",
            SqlParam::Jsonb(_) => "::text::jsonb",
        };
        let n = self.first + self.params.len();
        self.params.push(p);
        format!("${n}{cast}")
    }

    fn scalar(&mut self, v: &Scalar) -> String {
        self.param(match v {
            Scalar::Str(s) => SqlParam::Text(s.clone()),
            Scalar::Num(n) => SqlParam::Numeric(n.canonical()),
            Scalar::Bool(b) => SqlParam::Bool(*b),
        })
    }

    /// `[v]` as jsonb, for `@>`.
    fn contained(&mut self, v: &Scalar) -> String {
        self.param(SqlParam::Jsonb(format!("[{}]", v.canonical())))
    }

    fn node(&mut self, n: &Node) {
        match n {
            Node::All(children) => self.join(children, " AND ", "true"),
            Node::Any(children) => self.join(children, " OR ", "false"),
            Node::Clause(c) => {
                let sql = self.clause(c);
                self.sql.push_str(&sql);
            }
            Node::Owner(owner) => {
                let column = match self.source {
                    Source::Body => "d.owner".to_owned(),
                    // `m.previous` -> `m.owner`: a removal record's owner.
                    Source::Projection(column) => match column.split_once('.') {
                        Some((table, _)) => format!("{table}.owner"),
                        None => "owner".to_owned(),
                    },
                };
                let p = self.param(SqlParam::Text(owner.clone()));
                let _ = write!(self.sql, "({column} = {p})");
            }
        }
    }

    fn join(&mut self, children: &[Node], sep: &str, empty: &str) {
        match children {
            [] => return self.sql.push_str(empty),
            [only] => return self.node(only),
            _ => {}
        }
        self.sql.push('(');
        for (i, child) in children.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(sep);
            }
            self.node(child);
        }
        self.sql.push(')');
    }

    fn clause(&mut self, c: &Clause) -> String {
        let field: &FieldDecl = &c.field;
        let raw = self.raw(field);
        match &c.op {
            Op::Exists(true) => format!("({raw} IS NOT NULL)"),
            Op::Exists(false) => format!("({raw} IS NULL)"),
            Op::Cmp(op, Operand::Value(v)) if !field.ty.array => {
                let k = self.typed(field);
                let p = self.scalar(v);
                match op {
                    CmpOp::Ne => format!("(({k} = {p}) IS NOT TRUE)"),
                    op => format!("({k} {} {p})", cmp_sql(*op)),
                }
            }
            Op::Cmp(op @ (CmpOp::Eq | CmpOp::Ne), Operand::Value(v)) => {
                let p = self.contained(v);
                match op {
                    CmpOp::Ne => format!("(({raw} @> {p}) IS NOT TRUE)"),
                    _ => format!("({raw} @> {p})"),
                }
            }
            Op::Cmp(op, Operand::Value(v)) => {
                let element = typed_value("sel_e.v", field.ty.scalar);
                let p = self.scalar(v);
                format!(
                    "(EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof({raw}) = 'array' THEN {raw} END) AS sel_e(v) WHERE {element} {} {p}))",
                    cmp_sql(*op)
                )
            }
            Op::In {
                negated,
                list: ListOperand::Items(items),
            } => {
                let values: Vec<&Scalar> = items
                    .iter()
                    .filter_map(|i| match i {
                        Operand::Value(v) => Some(v),
                        Operand::Claim(_) => None,
                    })
                    .collect();
                let listed = if field.ty.array {
                    if values.is_empty() {
                        "false".to_owned()
                    } else {
                        let mut any = String::from("(");
                        for (i, v) in values.iter().enumerate() {
                            if i > 0 {
                                any.push_str(" OR ");
                            }
                            let p = self.contained(v);
                            let _ = write!(any, "{raw} @> {p}");
                        }
                        any.push(')');
                        any
                    }
                } else {
                    let k = self.typed(field);
                    let p = self.list(field.ty.scalar, &values);
                    format!("({k} = ANY({p}))")
                };
                if *negated {
                    format!("({listed} IS NOT TRUE)")
                } else {
                    listed
                }
            }
            // Unreachable: `to_sql` refuses selectors with unbound claims.
            Op::Cmp(_, Operand::Claim(_))
            | Op::In {
                list: ListOperand::Claim(_),
                ..
            } => "false".to_owned(),
        }
    }

    fn list(&mut self, scalar: ScalarType, values: &[&Scalar]) -> String {
        let param = match scalar {
            ScalarType::String => SqlParam::TextArray(
                values
                    .iter()
                    .filter_map(|v| match v {
                        Scalar::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
            ScalarType::Number => SqlParam::NumericArray(
                values
                    .iter()
                    .filter_map(|v| match v {
                        Scalar::Num(n) => Some(n.canonical()),
                        _ => None,
                    })
                    .collect(),
            ),
            ScalarType::Boolean => SqlParam::BoolArray(
                values
                    .iter()
                    .filter_map(|v| match v {
                        Scalar::Bool(b) => Some(*b),
                        _ => None,
                    })
                    .collect(),
            ),
        };
        self.param(param)
    }
}
