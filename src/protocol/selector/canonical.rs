//! A selector's canonical text and digest.

use sha2::Digest;

use super::{Clause, ListOperand, Node, Op, Operand};

/// Domain separation for the digest (bump when the canonical form changes).
const DIGEST_DOMAIN: &[u8] = b"syncline.selector.v1\0";

pub(super) fn canonical(root: &Node) -> String {
    text(root)
}

pub(super) fn digest(root: &Node) -> [u8; 32] {
    let mut fields = Vec::new();
    collect_fields(root, &mut fields);
    fields.sort();
    fields.dedup();
    let mut hasher = sha2::Sha256::new();
    hasher.update(DIGEST_DOMAIN);
    hasher.update(text(root).as_bytes());
    for field in fields {
        hasher.update(b"\0");
        hasher.update(field.as_bytes());
    }
    hasher.finalize().into()
}

fn collect_fields(n: &Node, out: &mut Vec<String>) {
    match n {
        Node::All(children) | Node::Any(children) => {
            children.iter().for_each(|c| collect_fields(c, out))
        }
        Node::Clause(c) => out.push(format!("{}:{}", c.field.path, c.field.ty)),
        Node::Owner(_) => {}
    }
}

fn text(n: &Node) -> String {
    match n {
        Node::All(_) => group(n, "$and", "{}"),
        Node::Any(_) => group(n, "$or", "{\"$or\":[]}"),
        Node::Clause(c) => clause(c),
        Node::Owner(owner) => format!("{{\"$owner\":{}}}", serde_json::Value::from(owner.as_str())),
    }
}

/// `$and` / `$or`: nested groups of the same kind flattened, children sorted and deduplicated,
/// a single child standing alone.
fn group(n: &Node, name: &str, empty: &str) -> String {
    let mut parts = Vec::new();
    flatten(n, n, &mut parts);
    parts.sort();
    parts.dedup();
    match parts.len() {
        0 => empty.to_owned(),
        1 => parts.remove(0),
        _ => format!("{{\"{name}\":[{}]}}", parts.join(",")),
    }
}

fn flatten(kind: &Node, n: &Node, out: &mut Vec<String>) {
    match (kind, n) {
        (Node::All(_), Node::All(children)) | (Node::Any(_), Node::Any(children)) => {
            children.iter().for_each(|c| flatten(kind, c, out))
        }
        _ => out.push(text(n)),
    }
}

fn operand(o: &Operand) -> String {
    match o {
        Operand::Value(v) => v.canonical(),
        Operand::Claim(name) => claim(name),
    }
}

fn claim(name: &str) -> String {
    format!("{{\"$claim\":{}}}", serde_json::Value::from(name))
}

fn clause(c: &Clause) -> String {
    let (name, arg) = match &c.op {
        Op::Cmp(op, o) => (op.name(), operand(o)),
        Op::In { negated, list } => {
            let arg = match list {
                ListOperand::Claim(name) => claim(name),
                ListOperand::Items(items) => {
                    let mut values: Vec<String> = items.iter().map(operand).collect();
                    values.sort();
                    values.dedup();
                    format!("[{}]", values.join(","))
                }
            };
            (if *negated { "$nin" } else { "$in" }, arg)
        }
        Op::Exists(b) => ("$exists", b.to_string()),
    };
    format!(
        "{{{}:{{\"{name}\":{arg}}}}}",
        serde_json::Value::from(c.field.path.as_str())
    )
}
