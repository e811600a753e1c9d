//! A collection's conflict policy, from its configuration and its schema's annotations.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::config::CollectionConfig;

/// How a collection resolves conflicting rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The server's state wins; the row goes back as a conflict (RxDB's default).
    #[default]
    FirstWriteWins,
    /// The later write wins, by `lww_field` or by arrival.
    LastWriteWins,
    /// Three-way merge against the client's base, field by field.
    FieldMerge,
    /// Field merge with CRDT fields (counters, grow-only sets, last-writer registers).
    Crdt,
}

impl Strategy {
    /// The configuration's (and the wire's) name.
    pub fn label(self) -> &'static str {
        match self {
            Strategy::FirstWriteWins => "first-write-wins",
            Strategy::LastWriteWins => "last-write-wins",
            Strategy::FieldMerge => "field-merge",
            Strategy::Crdt => "crdt",
        }
    }

    fn parse(text: &str) -> Option<Strategy> {
        [
            Strategy::FirstWriteWins,
            Strategy::LastWriteWins,
            Strategy::FieldMerge,
            Strategy::Crdt,
        ]
        .into_iter()
        .find(|s| s.label() == text)
    }
}

/// What a field changed on both sides becomes under a merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldRule {
    /// The server's value.
    #[default]
    Server,
    /// The client's value.
    Client,
    /// Arrays: the server's elements, then the client's that the server lacks.
    Union,
}

/// A field merged as a CRDT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrdtKind {
    /// A number: the server's value plus the client's delta (new minus base).
    Counter,
    /// An array that only grows: the union of both sides.
    GSet,
    /// A register: the later write's value.
    Lww,
}

impl CrdtKind {
    fn parse(text: &str) -> Option<CrdtKind> {
        match text {
            "counter" => Some(CrdtKind::Counter),
            "g-set" => Some(CrdtKind::GSet),
            "lww" => Some(CrdtKind::Lww),
            _ => None,
        }
    }
}

/// Who wins when a delete conflicts with an edit (merge strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDelete {
    /// The document stays deleted.
    #[default]
    DeleteWins,
    /// The edited document survives (or comes back).
    EditWins,
}

/// A collection's conflict policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MergePolicy {
    /// The strategy.
    pub strategy: Strategy,
    /// The ordering field's path (split at dots), when configured.
    pub lww_field: Option<Vec<String>>,
    /// Per-field rules for fields changed on both sides, by dotted path.
    pub rules: HashMap<String, FieldRule>,
    /// CRDT fields by dotted path (configuration and schema annotations).
    pub crdt: HashMap<String, CrdtKind>,
    /// Delete against edit.
    pub on_delete: OnDelete,
    /// How long losing versions are kept; `None`: not kept.
    pub keep_overwritten: Option<Duration>,
}

impl MergePolicy {
    /// The policy of `cc`, whose parsed schema is `schema`. Errors name the collection and
    /// the key.
    pub fn from_config(
        cc: &CollectionConfig,
        schema: Option<&Value>,
    ) -> Result<MergePolicy, String> {
        let at = |key: &str, why: String| format!("collection {:?}: {key} {why}", cc.name);
        let strategy = match cc.conflict.as_deref() {
            None => Strategy::FirstWriteWins,
            Some(text) => Strategy::parse(text).ok_or_else(|| {
                at(
                    "conflict",
                    format!(
                        "{text:?}: expected first-write-wins, last-write-wins, field-merge or crdt"
                    ),
                )
            })?,
        };
        let lww_field = cc
            .lww_field
            .as_deref()
            .map(|p| path(p).map_err(|why| at("lww_field", why)))
            .transpose()?;
        let mut rules = HashMap::new();
        for (p, rule) in &cc.merge_rules {
            path(p).map_err(|why| at("merge_rules", why))?;
            let rule = match rule.as_str() {
                "server" => FieldRule::Server,
                "client" => FieldRule::Client,
                "union" => FieldRule::Union,
                other => {
                    return Err(at(
                        "merge_rules",
                        format!("{p:?} = {other:?}: expected server, client or union"),
                    ));
                }
            };
            rules.insert(p.clone(), rule);
        }
        let mut crdt = HashMap::new();
        if let Some(schema) = schema {
            annotations(schema, "", &mut crdt).map_err(|why| at("schema", why))?;
        }
        for (p, kind) in &cc.crdt_fields {
            path(p).map_err(|why| at("crdt_fields", why))?;
            let kind = CrdtKind::parse(kind).ok_or_else(|| {
                at(
                    "crdt_fields",
                    format!("{p:?} = {kind:?}: expected counter, g-set or lww"),
                )
            })?;
            crdt.insert(p.clone(), kind);
        }
        let on_delete = match cc.on_delete.as_deref() {
            None | Some("delete-wins") => OnDelete::DeleteWins,
            Some("edit-wins") => OnDelete::EditWins,
            Some(other) => {
                return Err(at(
                    "on_delete",
                    format!("{other:?}: expected delete-wins or edit-wins"),
                ));
            }
        };
        let keep_overwritten = cc
            .keep_overwritten
            .as_deref()
            .map(|t| crate::config::parse_retention(t).map_err(|why| at("keep_overwritten", why)))
            .transpose()?;
        let merging = matches!(strategy, Strategy::FieldMerge | Strategy::Crdt);
        if !merging && (!rules.is_empty() || cc.on_delete.is_some()) {
            return Err(at(
                "merge_rules/on_delete",
                format!(
                    "apply to field-merge and crdt only, not {}",
                    strategy.label()
                ),
            ));
        }
        if strategy != Strategy::Crdt && !cc.crdt_fields.is_empty() {
            return Err(at(
                "crdt_fields",
                format!(
                    "apply to conflict = \"crdt\" only, not {}",
                    strategy.label()
                ),
            ));
        }
        if matches!(strategy, Strategy::FirstWriteWins | Strategy::FieldMerge)
            && lww_field.is_some()
        {
            return Err(at(
                "lww_field",
                format!(
                    "applies to last-write-wins and crdt only, not {}",
                    strategy.label()
                ),
            ));
        }
        if strategy == Strategy::FirstWriteWins && keep_overwritten.is_some() {
            return Err(at(
                "keep_overwritten",
                "needs an automatic strategy: first-write-wins overwrites nothing".into(),
            ));
        }
        Ok(MergePolicy {
            strategy,
            lww_field,
            rules,
            crdt,
            on_delete,
            keep_overwritten,
        })
    }

    /// True when resolving needs the client's base (its assumed master state's body).
    pub fn needs_base(&self) -> bool {
        matches!(self.strategy, Strategy::FieldMerge | Strategy::Crdt)
    }
}

/// A dotted path's segments: non-empty, at most 32 of them.
fn path(text: &str) -> Result<Vec<String>, String> {
    let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    if text.is_empty() || parts.len() > 32 || parts.iter().any(String::is_empty) {
        return Err(format!(
            "{text:?}: expected a dotted field path such as \"stats.likes\""
        ));
    }
    Ok(parts)
}

/// Collects `"crdt": {"type": ...}` annotations from the schema's nested `properties`.
fn annotations(
    schema: &Value,
    prefix: &str,
    out: &mut HashMap<String, CrdtKind>,
) -> Result<(), String> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (name, sub) in props {
        let p = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if let Some(c) = sub.get("crdt") {
            let kind = c
                .get("type")
                .and_then(Value::as_str)
                .and_then(CrdtKind::parse)
                .ok_or_else(|| {
                    format!("properties {p:?}: crdt must be {{\"type\": \"lww\" | \"g-set\" | \"counter\"}}")
                })?;
            out.insert(p.clone(), kind);
        }
        annotations(sub, &p, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(lines: &str, schema: Option<Value>) -> Result<MergePolicy, String> {
        let config = crate::config::Config::from_toml(&format!(
            "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n{lines}\n"
        ))
        .map_err(|e| e.to_string())?;
        MergePolicy::from_config(&config.collections[0], schema.as_ref())
    }

    #[test]
    fn every_key_parses_into_the_policy() {
        let p = parse(
            "conflict = \"crdt\"\nlww_field = \"meta.at\"\nmerge_rules = { tags = \"union\", \"a.b\" = \"client\" }\n\
             crdt_fields = { likes = \"counter\" }\non_delete = \"edit-wins\"\nkeep_overwritten = \"7d\"",
            Some(json!({"properties": {"stats": {"properties": {"seen": {"crdt": {"type": "g-set"}}}}}})),
        )
        .expect("parses");
        assert_eq!(p.strategy, Strategy::Crdt);
        assert_eq!(p.lww_field, Some(vec!["meta".to_owned(), "at".to_owned()]));
        assert_eq!(p.rules.get("tags"), Some(&FieldRule::Union));
        assert_eq!(p.rules.get("a.b"), Some(&FieldRule::Client));
        assert_eq!(p.crdt.get("likes"), Some(&CrdtKind::Counter));
        assert_eq!(p.crdt.get("stats.seen"), Some(&CrdtKind::GSet));
        assert_eq!(p.on_delete, OnDelete::EditWins);
        assert_eq!(p.keep_overwritten, Some(Duration::from_secs(7 * 86_400)));
        let default = parse("", None).expect("parses");
        assert_eq!(default, MergePolicy::default());
        assert!(!default.needs_base() && p.needs_base());
    }

    #[test]
    fn bad_settings_name_the_collection_and_key() {
        for (lines, key) in [
            ("conflict = \"newest\"", "conflict"),
            (
                "conflict = \"field-merge\"\nmerge_rules = { tags = \"both\" }",
                "merge_rules",
            ),
            (
                "conflict = \"field-merge\"\nmerge_rules = { \"a..b\" = \"server\" }",
                "merge_rules",
            ),
            (
                "conflict = \"crdt\"\ncrdt_fields = { n = \"sum\" }",
                "crdt_fields",
            ),
            (
                "conflict = \"field-merge\"\ncrdt_fields = { n = \"counter\" }",
                "crdt_fields",
            ),
            (
                "conflict = \"last-write-wins\"\nmerge_rules = { a = \"client\" }",
                "merge_rules",
            ),
            (
                "conflict = \"last-write-wins\"\non_delete = \"edit-wins\"",
                "on_delete",
            ),
            ("conflict = \"crdt\"\non_delete = \"never\"", "on_delete"),
            ("keep_overwritten = \"7d\"", "keep_overwritten"),
            (
                "conflict = \"crdt\"\nkeep_overwritten = \"a week\"",
                "keep_overwritten",
            ),
            ("lww_field = \"at\"", "lww_field"),
            (
                "conflict = \"field-merge\"\nlww_field = \"at\"",
                "lww_field",
            ),
            (
                "conflict = \"last-write-wins\"\nlww_field = \"\"",
                "lww_field",
            ),
        ] {
            let err = parse(lines, None).expect_err(lines);
            assert!(
                err.contains("collection \"t\"") && err.contains(key),
                "{lines}: {err}"
            );
        }
        let err = parse(
            "conflict = \"crdt\"",
            Some(json!({"properties": {"n": {"crdt": {"type": "max"}}}})),
        )
        .expect_err("bad annotation");
        assert!(err.contains("schema") && err.contains("\"n\""), "{err}");
    }
}
