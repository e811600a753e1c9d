//! Token claims in the configured access rules: `read_filter = { team = { "$claim" = "team" } }`
//! takes its value from the caller's token, and `access` says how these rules combine with
//! the owner rule.

use serde_json::Value;

use super::json::Json;
use super::parse::scalar_of;
use super::{
    Clause, FieldDecl, FilterFields, IN_VALUES_MAX, ListOperand, Node, Op, Operand, Selector,
};
use crate::protocol::{ProtocolError, Reason};

impl Selector {
    /// Replaces every `{"$claim": name}` with the caller's claim `name` (a top-level claim, or
    /// a dotted path into objects when no claim has that exact name). A claim that is missing
    /// or `null` makes the whole selector match nothing, never everything. A claim of the
    /// wrong type (or an over-long list, a string with NUL) is PERMISSION_DENIED: the token
    /// does not fit the collection's rules; the message names the claim, not its value.
    pub fn bind_claims(&self, claims: &Value) -> Result<Selector, ProtocolError> {
        if !self.unbound {
            return Ok(self.clone());
        }
        match bind_node(&self.root, claims)? {
            Some(root) => Ok(Selector {
                root,
                unbound: false,
            }),
            None => Ok(Selector::nothing()),
        }
    }
}

/// `None`: a claim is missing.
fn bind_node(n: &Node, claims: &Value) -> Result<Option<Node>, ProtocolError> {
    let bind_all = |children: &[Node]| -> Result<Option<Vec<Node>>, ProtocolError> {
        let mut out = Vec::with_capacity(children.len());
        for c in children {
            match bind_node(c, claims)? {
                Some(c) => out.push(c),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    };
    Ok(match n {
        Node::All(children) => bind_all(children)?.map(Node::All),
        Node::Any(children) => bind_all(children)?.map(Node::Any),
        Node::Owner(owner) => Some(Node::Owner(owner.clone())),
        Node::Clause(c) => {
            let op = match &c.op {
                Op::Cmp(op, o) => bind_operand(&c.field, o, claims)?.map(|o| Op::Cmp(*op, o)),
                Op::In { negated, list } => bind_list(&c.field, list, claims)?.map(|list| Op::In {
                    negated: *negated,
                    list,
                }),
                Op::Exists(b) => Some(Op::Exists(*b)),
            };
            op.map(|op| {
                Node::Clause(Clause {
                    field: c.field.clone(),
                    op,
                })
            })
        }
    })
}

fn lookup<'c>(claims: &'c Value, name: &str) -> Option<&'c Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut current = claims;
    for segment in name.split('.') {
        current = current.get(segment)?;
    }
    Some(current)
}

fn unfit(name: &str, field: &FieldDecl, why: &str) -> ProtocolError {
    ProtocolError::permission_denied(
        Reason::ScopeMissing,
        format!(
            "token claim {:?} does not fit the collection's access rules: {why} ({} is declared {})",
            crate::protocol::cut_text(name, 64),
            field.path,
            field.ty
        ),
    )
}

fn present<'c>(claims: &'c Value, name: &str) -> Option<&'c Value> {
    lookup(claims, name).filter(|v| !v.is_null())
}

fn bind_operand(
    field: &FieldDecl,
    o: &Operand,
    claims: &Value,
) -> Result<Option<Operand>, ProtocolError> {
    match o {
        Operand::Value(_) => Ok(Some(o.clone())),
        Operand::Claim(name) => match present(claims, name) {
            None => Ok(None),
            Some(v) => scalar_of(field, &Json::from_value(v))
                .map(|s| Some(Operand::Value(s)))
                .map_err(|(_, why)| unfit(name, field, &why)),
        },
    }
}

fn bind_list(
    field: &FieldDecl,
    list: &ListOperand,
    claims: &Value,
) -> Result<Option<ListOperand>, ProtocolError> {
    match list {
        ListOperand::Items(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match bind_operand(field, item, claims)? {
                    Some(o) => out.push(o),
                    None => return Ok(None),
                }
            }
            Ok(Some(ListOperand::Items(out)))
        }
        ListOperand::Claim(name) => {
            let Some(v) = present(claims, name) else {
                return Ok(None);
            };
            let values: &[Value] = match v {
                Value::Array(items) => items,
                single => std::slice::from_ref(single),
            };
            if values.len() > IN_VALUES_MAX {
                return Err(unfit(
                    name,
                    field,
                    &format!("more than {IN_VALUES_MAX} values"),
                ));
            }
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                let s = scalar_of(field, &Json::from_value(v))
                    .map_err(|(_, why)| unfit(name, field, &why))?;
                out.push(Operand::Value(s));
            }
            Ok(Some(ListOperand::Items(out)))
        }
    }
}

/// How a collection's claim rules combine with the owner rule (`access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Access {
    /// `owner` (the default): a principal reads and writes its own documents (service
    /// principals all); no claim rules.
    #[default]
    Owner,
    /// `claims`: a principal reads the documents matching `read_filter` and writes those whose
    /// current and new states match `write_filter` (bound to its claims); owners do not matter.
    Claims,
    /// `either`: what the owner rule or the claim rules allow.
    Either,
}

/// A collection's parsed access rules.
#[derive(Debug, Clone, Default)]
pub struct AccessRules {
    /// How the rules combine with the owner rule.
    pub access: Access,
    /// Every read is intersected with it (after [`Selector::bind_claims`]).
    pub read: Option<Selector>,
    /// Pushes must keep both the server's and the new state inside it.
    pub write: Option<Selector>,
}

impl AccessRules {
    /// Parses `access`, `read_filter` and `write_filter` of a collection. `claims` and
    /// `either` need both filters (`{}` allows every document), `owner` allows neither: a rule
    /// that would be silently ignored, or a missing one read as "everything", is an error.
    pub fn from_config(
        fields: &FilterFields,
        access: Option<&str>,
        read_filter: Option<&Value>,
        write_filter: Option<&Value>,
    ) -> Result<AccessRules, String> {
        let collection = fields.collection();
        let access = match access {
            None | Some("owner") => Access::Owner,
            Some("claims") => Access::Claims,
            Some("either") => Access::Either,
            Some(other) => {
                return Err(format!(
                    "collection {collection:?}: access {other:?} is not owner, claims or either"
                ));
            }
        };
        let read = read_filter
            .map(|v| Selector::parse_rule(v, fields, "read_filter"))
            .transpose()?;
        let write = write_filter
            .map(|v| Selector::parse_rule(v, fields, "write_filter"))
            .transpose()?;
        match access {
            Access::Owner if read.is_some() || write.is_some() => Err(format!(
                "collection {collection:?}: read_filter and write_filter need access = \"claims\" or \"either\""
            )),
            Access::Claims | Access::Either if read.is_none() || write.is_none() => Err(format!(
                "collection {collection:?}: access = \"claims\" or \"either\" needs both read_filter and write_filter ({{}} allows every document)"
            )),
            _ => Ok(AccessRules {
                access,
                read,
                write,
            }),
        }
    }
}
