//! JSON as the selector parser reads it: like `serde_json::Value`, but numbers keep their
//! text. serde_json reads numbers as `f64` with a best-effort (not always nearest) conversion,
//! so `1.8217090164508454` could become a neighbouring double; a selector must compare with
//! the number the client wrote, as jsonb stores documents' numbers exactly.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// A JSON value whose numbers are their text.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Json>),
    /// Keys in order; a repeated key keeps its last value (as serde_json and jsonb do).
    Object(BTreeMap<String, Json>),
}

impl Json {
    /// Reads JSON text (its depth is bounded by serde_json's recursion limit).
    pub fn from_slice(bytes: &[u8]) -> Result<Json, serde_json::Error> {
        let raw: &RawValue = serde_json::from_slice(bytes)?;
        Json::from_raw(raw)
    }

    fn from_raw(raw: &RawValue) -> Result<Json, serde_json::Error> {
        let text = raw.get().trim_start();
        Ok(match text.as_bytes().first() {
            Some(b'{') => {
                let map: BTreeMap<String, &RawValue> = serde_json::from_str(text)?;
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    out.insert(k, Json::from_raw(v)?);
                }
                Json::Object(out)
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(text)?;
                let items = items.into_iter().map(Json::from_raw);
                Json::Array(items.collect::<Result<_, _>>()?)
            }
            Some(b'"') => Json::String(serde_json::from_str(text)?),
            Some(b't') => Json::Bool(true),
            Some(b'f') => Json::Bool(false),
            Some(b'n') => Json::Null,
            _ => Json::Number(text.trim_end().to_owned()),
        })
    }

    /// From a parsed value (its numbers as serde_json prints them).
    pub fn from_value(v: &serde_json::Value) -> Json {
        use serde_json::Value as V;
        match v {
            V::Null => Json::Null,
            V::Bool(b) => Json::Bool(*b),
            V::Number(n) => Json::Number(n.to_string()),
            V::String(s) => Json::String(s.clone()),
            V::Array(items) => Json::Array(items.iter().map(Json::from_value).collect()),
            V::Object(map) => Json::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), Json::from_value(v)))
                    .collect(),
            ),
        }
    }

    /// The value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(map) => map.get(key),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
}
