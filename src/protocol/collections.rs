//! The declared collections, their compiled JSON Schemas and the request limits.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Kind, ProtocolError, Reason};
use crate::config::Config;

/// One declared collection.
pub struct Collection {
    /// Its name.
    pub name: String,
    /// Body field that must equal the document id when present.
    pub primary_key: String,
    /// Compiled schema for live documents, if configured.
    pub schema: Option<jsonschema::Validator>,
    /// Scopes allowed to read (empty = any principal).
    pub read_scopes: Vec<String>,
    /// Scopes allowed to write (empty = any principal).
    pub write_scopes: Vec<String>,
    /// What conflicting rows become.
    pub policy: super::merge::MergePolicy,
    /// The fields selectors may name (`filter_fields`), each served by an index.
    pub filter_fields: super::selector::FilterFields,
    /// Who reads and writes which documents (`access`, `read_filter`, `write_filter`).
    pub access: super::selector::AccessRules,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .field("primary_key", &self.primary_key)
            .field("schema", &self.schema.is_some())
            .finish()
    }
}

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Documents per pull when the request says 0.
    pub pull_default: u32,
    /// Maximum documents per pull or stream batch.
    pub pull_max: u32,
    /// Maximum rows per push.
    pub push_rows_max: usize,
    /// Maximum body bytes.
    pub document_bytes_max: usize,
    /// Maximum JSON nesting.
    pub json_depth_max: usize,
    /// Maximum id bytes.
    pub id_bytes_max: usize,
    /// Maximum body bytes in one push, new and assumed states together.
    pub push_bytes_max: usize,
    /// Maximum bytes of an owner named in a push.
    pub owner_bytes_max: usize,
}

impl Limits {
    /// Takes the limits from the configuration.
    pub fn from_config(c: &Config) -> Limits {
        Limits {
            pull_default: c.pull_limit_default,
            pull_max: c.pull_limit_max,
            push_rows_max: c.push_rows_max,
            document_bytes_max: c.document_bytes_max,
            json_depth_max: c.json_depth_max,
            id_bytes_max: c.id_bytes_max,
            push_bytes_max: c.push_bytes_max,
            owner_bytes_max: c.owner_bytes_max,
        }
    }

    /// The most one document can weigh in a page or stream batch: its body as PostgreSQL gives
    /// it back (jsonb's text form adds a space after each `,` and `:`, so up to half again the
    /// bytes pushed), its id, and room for its owner, revision and fixed fields.
    pub fn document_page_bytes(&self) -> usize {
        const METADATA_BYTES: usize = 2048;
        self.document_bytes_max
            .saturating_add(self.document_bytes_max / 2)
            .saturating_add(self.id_bytes_max)
            .saturating_add(METADATA_BYTES)
    }

    /// The most a page or stream batch can weigh: a page ends at `page_bytes` but keeps the
    /// document that crosses it.
    pub fn batch_bytes(&self, page_bytes: usize) -> usize {
        page_bytes.saturating_add(self.document_page_bytes())
    }

    /// The effective page size for a requested limit.
    pub fn pull_limit(&self, requested: u32) -> u32 {
        match requested {
            0 => self.pull_default,
            n => n.min(self.pull_max),
        }
    }
}

/// All declared collections by name.
#[derive(Debug, Clone, Default)]
pub struct Collections {
    by_name: HashMap<String, Arc<Collection>>,
}

impl Collections {
    /// Loads and compiles every collection's schema. Errors name the collection and file.
    pub fn from_config(c: &Config) -> Result<Collections, String> {
        let mut by_name = HashMap::new();
        for cc in &c.collections {
            let filter_fields =
                super::selector::FilterFields::from_config(&cc.name, &cc.filter_fields)?;
            let access = super::selector::AccessRules::from_config(
                &filter_fields,
                cc.access.as_deref(),
                cc.read_filter.as_ref(),
                cc.write_filter.as_ref(),
            )?;
            let mut schema_value = None;
            let schema = match &cc.schema {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!("collection {:?}: schema {}: {e}", cc.name, path.display())
                    })?;
                    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                        format!("collection {:?}: schema {}: {e}", cc.name, path.display())
                    })?;
                    let compiled = compile_schema(&value).map_err(|e| {
                        format!("collection {:?}: schema {}: {e}", cc.name, path.display())
                    })?;
                    schema_value = Some(value);
                    Some(compiled)
                }
            };
            let policy = super::merge::MergePolicy::from_config(cc, schema_value.as_ref())?;
            let collection = Collection {
                name: cc.name.clone(),
                primary_key: cc.primary_key.clone(),
                schema,
                read_scopes: cc.read_scopes.clone(),
                write_scopes: cc.write_scopes.clone(),
                policy,
                filter_fields,
                access,
            };
            by_name.insert(cc.name.clone(), Arc::new(collection));
        }
        Ok(Collections { by_name })
    }

    /// Looks a collection up; unknown names are NOT_FOUND.
    pub fn get(&self, name: &str) -> Result<Arc<Collection>, ProtocolError> {
        if name.is_empty() {
            return Err(ProtocolError::invalid(
                Reason::InvalidRequest,
                "collection",
                "collection: must not be empty",
            ));
        }
        self.by_name.get(name).cloned().ok_or_else(|| {
            ProtocolError::new(
                Kind::NotFound,
                Reason::CollectionNotFound,
                format!(
                    "collection {} is not declared on this server",
                    super::shown(name)
                ),
            )
            .at("collection")
        })
    }

    /// Every collection.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Collection>> {
        self.by_name.values()
    }

    /// Every collection name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// Compiles a JSON Schema. RxDB schemas carry keywords of their own (`primaryKey`, `version`,
/// `encrypted`, ...) that standard validators ignore, so an RxDB schema file works as is.
fn compile_schema(value: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules_are_checked_at_start_up() {
        let load = |keys: &str| {
            let config = Config::from_toml(&format!(
                "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\n\
                 filter_fields = {{ team = \"string\" }}\n{keys}\n"
            ))
            .expect("parses");
            Collections::from_config(&config)
        };
        for (keys, why) in [
            ("read_filter = { team = \"a\" }", "need access"),
            ("access = \"claims\"\nread_filter = {}", "needs both"),
            ("access = \"team\"", "not owner, claims or either"),
            (
                "access = \"either\"\nread_filter = { done = false }\nwrite_filter = {}",
                "done",
            ),
        ] {
            let err = load(keys).expect_err(keys);
            assert!(
                err.contains("collection \"t\"") && err.contains(why),
                "{keys}: {err}"
            );
        }
        let loaded = load(
            "access = \"claims\"\nread_filter = { team = { \"$claim\" = \"team\" } }\n\
             write_filter = { team = { \"$claim\" = \"team\" } }",
        )
        .expect("valid rules");
        let t = loaded.get("t").expect("declared");
        assert_eq!(t.access.access, super::super::selector::Access::Claims);
        assert!(
            t.access
                .read
                .as_ref()
                .is_some_and(|r| r.has_unbound_claims())
        );
    }

    #[test]
    fn filter_fields_are_declared_and_checked() {
        let config = |fields: &str| {
            Config::from_toml(&format!(
                "[auth]\nmode = \"none\"\n[[collections]]\nname = \"t\"\nfilter_fields = {fields}\n"
            ))
            .expect("parses")
        };
        let collections = Collections::from_config(&config(
            "{ done = \"boolean\", \"meta.region\" = \"string\" }",
        ))
        .expect("valid declaration");
        let t = collections.get("t").expect("declared");
        assert!(t.filter_fields.get("meta.region").is_some());
        assert!(t.filter_fields.get("done").is_some());
        let err = Collections::from_config(&config("{ done = \"bool\" }")).expect_err("bad type");
        assert!(
            err.contains("collection \"t\"") && err.contains("done"),
            "{err}"
        );
    }
}
