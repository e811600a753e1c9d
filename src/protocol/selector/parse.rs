//! JSON to a checked [`Selector`]: every path declared, every value of its field's type,
//! every bound kept. Errors are INVALID_ARGUMENT naming the path
//! (`selector.priority.$gte: expected a number (priority is declared number)`).

use super::json::Json as Value;

use super::fields::{FieldDecl, FilterFields, ScalarType};
use super::value::{Num, Scalar};
use super::{
    CLAUSES_MAX, Clause, CmpOp, DEPTH_MAX, IN_VALUES_MAX, ListOperand, Node, Op, Operand,
    SELECTOR_BYTES_MAX, STRING_BYTES_MAX, Selector, VALUES_MAX,
};
use crate::protocol::json_number::fits_numeric;
use crate::protocol::{ProtocolError, Reason, cut_text};

/// Characters of a client key quoted in a path.
const KEY_SHOWN_CHARS: usize = 64;
/// Most bytes of a claim's name.
const CLAIM_NAME_BYTES_MAX: usize = 256;

const SUPPORTED: &str = "$eq, $ne, $gt, $gte, $lt, $lte, $in, $nin, $exists, $and, $or";

impl Selector {
    /// Parses a client's selector from its JSON bytes (the wire form), checking the size
    /// before parsing. Empty bytes are `{}` (no filter).
    pub fn parse_json(bytes: &[u8], fields: &FilterFields) -> Result<Selector, ProtocolError> {
        if bytes.len() > SELECTOR_BYTES_MAX {
            return Err(ProtocolError::invalid(
                Reason::LimitExceeded,
                "selector",
                format!(
                    "selector: {} bytes, more than the {SELECTOR_BYTES_MAX} allowed",
                    bytes.len()
                ),
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Selector::everything());
        }
        let value = Value::from_slice(bytes).map_err(|e| {
            ProtocolError::invalid(
                Reason::InvalidRequest,
                "selector",
                format!("selector: not JSON ({})", cut_text(&e.to_string(), 120)),
            )
        })?;
        Parser::new(fields, false).run(&value, "selector")
    }

    /// Parses a client's selector. `$claim` is refused: only the configuration's rules use it.
    /// Numbers are read as serde_json read them: prefer [`Selector::parse_json`], which
    /// keeps the numbers as written.
    pub fn parse(
        value: &serde_json::Value,
        fields: &FilterFields,
    ) -> Result<Selector, ProtocolError> {
        Parser::new(fields, false).run(&Value::from_value(value), "selector")
    }

    /// Parses a configured rule (`read_filter`, `write_filter`, named by `key`), where values
    /// may be `{"$claim": "name"}`. Errors name the collection and the rule's path.
    pub fn parse_rule(
        value: &serde_json::Value,
        fields: &FilterFields,
        key: &str,
    ) -> Result<Selector, String> {
        Parser::new(fields, true)
            .run(&Value::from_value(value), key)
            .map_err(|e| format!("collection {:?}: {}", fields.collection(), e.message))
    }
}

struct Parser<'f> {
    fields: &'f FilterFields,
    claims_allowed: bool,
    clauses: usize,
    values: usize,
    unbound: bool,
}

fn invalid(path: &str, why: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::invalid(Reason::InvalidRequest, path, format!("{path}: {why}"))
}

fn over_limit(path: &str, why: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::invalid(Reason::LimitExceeded, path, format!("{path}: {why}"))
}

fn key_path(path: &str, key: &str) -> String {
    format!("{path}.{}", cut_text(key, KEY_SHOWN_CHARS))
}

impl<'f> Parser<'f> {
    fn new(fields: &'f FilterFields, claims_allowed: bool) -> Self {
        Parser {
            fields,
            claims_allowed,
            clauses: 0,
            values: 0,
            unbound: false,
        }
    }

    fn run(mut self, value: &Value, root: &str) -> Result<Selector, ProtocolError> {
        let node = self.selector(value, root, 0)?;
        Ok(Selector {
            root: node,
            unbound: self.unbound,
        })
    }

    fn selector(&mut self, value: &Value, path: &str, depth: usize) -> Result<Node, ProtocolError> {
        let Value::Object(map) = value else {
            return Err(invalid(path, "expected an object (a selector)"));
        };
        let mut nodes = Vec::with_capacity(map.len().min(CLAUSES_MAX));
        for (key, arg) in map {
            let at = key_path(path, key);
            match key.as_str() {
                "$and" | "$or" => {
                    if depth + 1 > DEPTH_MAX {
                        return Err(over_limit(
                            &at,
                            format_args!("nested deeper than {DEPTH_MAX} levels of $and/$or"),
                        ));
                    }
                    let Value::Array(items) = arg else {
                        return Err(invalid(&at, "expected a non-empty array of selectors"));
                    };
                    if items.is_empty() {
                        return Err(invalid(&at, "expected a non-empty array of selectors"));
                    }
                    if items.len() > CLAUSES_MAX {
                        return Err(over_limit(
                            &at,
                            format_args!("more than {CLAUSES_MAX} selectors"),
                        ));
                    }
                    let mut children = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        children.push(self.selector(item, &format!("{at}[{i}]"), depth + 1)?);
                    }
                    nodes.push(if key == "$and" {
                        Node::All(children)
                    } else {
                        Node::Any(children)
                    });
                }
                k if k.starts_with('$') => {
                    return Err(invalid(
                        &at,
                        format_args!("unsupported operator here (supported: {SUPPORTED})"),
                    ));
                }
                _ => {
                    let Some(field) = self.fields.get(key) else {
                        return Err(invalid(
                            &at,
                            format_args!(
                                "not a filterable field of collection {:?} (filter_fields)",
                                self.fields.collection()
                            ),
                        ));
                    };
                    let field = field.clone();
                    self.field(&field, arg, &at, &mut nodes)?;
                }
            }
        }
        Ok(Node::All(nodes))
    }

    /// The clauses on one field: an implicit `$eq`, or an object of operators.
    fn field(
        &mut self,
        field: &std::sync::Arc<FieldDecl>,
        arg: &Value,
        path: &str,
        nodes: &mut Vec<Node>,
    ) -> Result<(), ProtocolError> {
        let operators = match arg {
            Value::Object(map) if !is_claim(arg) && map.keys().any(|k| k.starts_with('$')) => map,
            _ => {
                let operand = self.operand(field, arg, path)?;
                return self.push(nodes, field, Op::Cmp(CmpOp::Eq, operand), path);
            }
        };
        for (name, value) in operators {
            let at = key_path(path, name);
            let cmp = match name.as_str() {
                "$eq" => Some(CmpOp::Eq),
                "$ne" => Some(CmpOp::Ne),
                "$gt" => Some(CmpOp::Gt),
                "$gte" => Some(CmpOp::Gte),
                "$lt" => Some(CmpOp::Lt),
                "$lte" => Some(CmpOp::Lte),
                _ => None,
            };
            let op = if let Some(cmp) = cmp {
                Op::Cmp(cmp, self.operand(field, value, &at)?)
            } else {
                match name.as_str() {
                    "$in" | "$nin" => Op::In {
                        negated: name == "$nin",
                        list: self.list(field, value, &at)?,
                    },
                    "$exists" => match value {
                        Value::Bool(b) => Op::Exists(*b),
                        _ => return Err(invalid(&at, "expected true or false")),
                    },
                    n if n.starts_with('$') => {
                        return Err(invalid(
                            &at,
                            format_args!("unsupported operator (supported: {SUPPORTED})"),
                        ));
                    }
                    _ => {
                        return Err(invalid(
                            &at,
                            "field names and operators mixed in one object (dotted paths name nested fields)",
                        ));
                    }
                }
            };
            self.push(nodes, field, op, &at)?;
        }
        Ok(())
    }

    fn push(
        &mut self,
        nodes: &mut Vec<Node>,
        field: &std::sync::Arc<FieldDecl>,
        op: Op,
        path: &str,
    ) -> Result<(), ProtocolError> {
        self.clauses += 1;
        if self.clauses > CLAUSES_MAX {
            return Err(over_limit(
                path,
                format_args!("more than {CLAUSES_MAX} clauses in the selector"),
            ));
        }
        nodes.push(Node::Clause(Clause {
            field: field.clone(),
            op,
        }));
        Ok(())
    }

    /// A `$in` / `$nin` list.
    fn list(
        &mut self,
        field: &FieldDecl,
        value: &Value,
        path: &str,
    ) -> Result<ListOperand, ProtocolError> {
        if is_claim(value) {
            return Ok(ListOperand::Claim(self.claim(value, path)?));
        }
        let Value::Array(items) = value else {
            return Err(invalid(
                path,
                format_args!(
                    "expected an array of {}s ({} is declared {})",
                    field.ty.scalar.as_str(),
                    field.path,
                    field.ty
                ),
            ));
        };
        if items.len() > IN_VALUES_MAX {
            return Err(over_limit(
                path,
                format_args!("{} values, more than {IN_VALUES_MAX}", items.len()),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(self.operand(field, item, &format!("{path}[{i}]"))?);
        }
        Ok(ListOperand::Items(out))
    }

    /// One value of the field's type, or a claim.
    fn operand(
        &mut self,
        field: &FieldDecl,
        value: &Value,
        path: &str,
    ) -> Result<Operand, ProtocolError> {
        if is_claim(value) {
            return Ok(Operand::Claim(self.claim(value, path)?));
        }
        self.values += 1;
        if self.values > VALUES_MAX {
            return Err(over_limit(
                path,
                format_args!("more than {VALUES_MAX} values in the selector"),
            ));
        }
        scalar_of(field, value)
            .map(Operand::Value)
            .map_err(|(reason, why)| ProtocolError::invalid(reason, path, format!("{path}: {why}")))
    }

    fn claim(&mut self, value: &Value, path: &str) -> Result<String, ProtocolError> {
        let at = format!("{path}.$claim");
        if !self.claims_allowed {
            return Err(invalid(
                &at,
                "$claim is only allowed in a collection's read_filter and write_filter",
            ));
        }
        match value.get("$claim") {
            Some(Value::String(name)) if !name.is_empty() && name.len() <= CLAIM_NAME_BYTES_MAX => {
                self.unbound = true;
                Ok(name.clone())
            }
            _ => Err(invalid(&at, "expected the name of a token claim")),
        }
    }
}

/// Whether `value` is `{"$claim": ...}` (and nothing else).
fn is_claim(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1 && map.contains_key("$claim"))
}

/// A JSON value as a value of `field`'s type; the error says what was expected (with
/// [`Reason::LimitExceeded`] for an over-long string).
pub(crate) fn scalar_of(field: &FieldDecl, value: &Value) -> Result<Scalar, (Reason, String)> {
    let expected = || {
        let article = match field.ty.scalar {
            ScalarType::String => "a string",
            ScalarType::Number => "a number",
            ScalarType::Boolean => "a boolean",
        };
        let hint = if value.is_null() {
            "; null is not supported, use {\"$exists\": false}"
        } else {
            ""
        };
        format!(
            "expected {article} ({} is declared {}){hint}",
            field.path, field.ty
        )
    };
    match (field.ty.scalar, value) {
        (ScalarType::String, Value::String(s)) => {
            if s.len() > STRING_BYTES_MAX {
                return Err((
                    Reason::LimitExceeded,
                    format!(
                        "a string of {} bytes, more than {STRING_BYTES_MAX}",
                        s.len()
                    ),
                ));
            }
            if s.contains('\0') {
                return Err((
                    Reason::InvalidRequest,
                    "a string holding NUL (\\u0000), which no stored document can hold".to_owned(),
                ));
            }
            Ok(Scalar::Str(s.clone()))
        }
        // Beyond numeric's range, the query would fail: refuse it here.
        (ScalarType::Number, Value::Number(n)) => Num::parse(n)
            .filter(|num| fits_numeric(n) && fits_numeric(&num.canonical()))
            .map(Scalar::Num)
            .ok_or_else(|| {
                (
                    Reason::InvalidRequest,
                    "a number beyond what PostgreSQL's numeric holds".to_owned(),
                )
            }),
        (ScalarType::Boolean, Value::Bool(b)) => Ok(Scalar::Bool(*b)),
        _ => Err((Reason::InvalidRequest, expected())),
    }
}
