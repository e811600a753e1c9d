//! A body check that builds nothing: one pass of the JSON parser through a visitor that
//! accepts exactly the bodies a push may store (an object, nested at most `depth_max` deep, no
//! NUL in keys or strings, its primary key field absent or equal to the id). Parsing into a
//! `serde_json::Value` tree costs an allocation per key and value; this is the push's hot path.
//!
//! It only says "certainly valid". On `false` the caller takes the slow path, which builds the
//! tree and words the exact error; so this check may be stricter than the rules, never looser.

use std::cell::Cell;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// True when `json` is certainly a storable body for document `id`.
#[cfg(test)]
pub fn certainly_valid(json: &str, depth_max: usize, primary_key: &str, id: &str) -> bool {
    check(json, depth_max, primary_key, id).is_some()
}

/// What the one pass learned of a body that is certainly valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// It holds a number serde_json read as f64 (a fraction, an exponent, or an integer
    /// beyond 64 bits): only those can fall outside PostgreSQL's numeric range, which the f64
    /// hides, so only then must the text be read again.
    pub non_integers: bool,
}

/// [`certainly_valid`], telling also whether the body holds non-integer numbers; `None` when
/// it is not certainly valid.
pub fn check(json: &str, depth_max: usize, primary_key: &str, id: &str) -> Option<Checked> {
    let non_integers = Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(json);
    let top = Top {
        depth_max,
        primary_key,
        id,
        non_integers: &non_integers,
    };
    (de.deserialize_map(top).is_ok() && de.end().is_ok()).then(|| Checked {
        non_integers: non_integers.get(),
    })
}

/// Any failure: the slow path says which.
fn reject<E: de::Error>() -> E {
    E::custom("rejected")
}

/// The top-level object (depth 1), where the primary key lives.
struct Top<'a> {
    depth_max: usize,
    primary_key: &'a str,
    id: &'a str,
    non_integers: &'a Cell<bool>,
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if self.depth_max < 1 {
            return Err(reject());
        }
        while let Some(key) = map.next_key_seed(Key)? {
            if key.is_primary(self.primary_key) {
                if self.depth_max < 2 {
                    return Err(reject());
                }
                map.next_value_seed(PrimaryKey(self.id))?;
            } else {
                map.next_value_seed(Nested {
                    depth: 2,
                    depth_max: self.depth_max,
                    non_integers: self.non_integers,
                })?;
            }
        }
        Ok(())
    }
}

/// A key, kept only as long as needed to compare it with the primary key's name.
enum KeyText<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl KeyText<'_> {
    fn is_primary(&self, name: &str) -> bool {
        match self {
            KeyText::Borrowed(k) => *k == name,
            KeyText::Owned(k) => k == name,
        }
    }
}

struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = KeyText<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<KeyText<'de>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = KeyText<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E: de::Error>(self, k: &'de str) -> Result<KeyText<'de>, E> {
        if k.contains('\0') {
            return Err(reject());
        }
        Ok(KeyText::Borrowed(k))
    }

    fn visit_str<E: de::Error>(self, k: &str) -> Result<KeyText<'de>, E> {
        if k.contains('\0') {
            return Err(reject());
        }
        Ok(KeyText::Owned(k.to_owned()))
    }
}

/// The primary key's value: a string equal to the id.
struct PrimaryKey<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for PrimaryKey<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PrimaryKey<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the document id")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v == self.0 { Ok(()) } else { Err(reject()) }
    }
}

/// Any value at `depth` (the top-level object is depth 1).
#[derive(Clone, Copy)]
struct Nested<'a> {
    depth: usize,
    depth_max: usize,
    non_integers: &'a Cell<bool>,
}

impl<'a> Nested<'a> {
    fn deeper(self) -> Nested<'a> {
        Nested {
            depth: self.depth + 1,
            ..self
        }
    }
}

impl<'de> DeserializeSeed<'de> for Nested<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // Scalars count as a level too, as in the slow path's walk.
        if self.depth > self.depth_max {
            return Err(reject());
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.non_integers.set(true);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if v.contains('\0') {
            Err(reject())
        } else {
            Ok(())
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.deeper())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key)?.is_some() {
            map.next_value_seed(self.deeper())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(json: &str) -> bool {
        certainly_valid(json, 3, "id", "a")
    }

    #[test]
    fn accepts_storable_bodies() {
        assert!(ok(r#"{}"#));
        assert!(ok(
            r#"{"id":"a","n":1,"f":1.5,"b":true,"z":null,"s":"x\"y"}"#
        ));
        assert!(ok(r#"{"x":{"y":1}}"#), "depth 3");
        assert!(ok(r#"{"x":{"y":[]}}"#), "depth 3");
        assert!(ok(r#"{"escaped\u0041key":"v\u00e9"}"#));
        assert!(ok(r#"{"n":-1,"big":18446744073709551615,"e":-2.5e-3}"#));
    }

    #[test]
    fn tells_whether_numbers_need_a_second_look() {
        let seen = |json: &str| check(json, 3, "id", "a").map(|c| c.non_integers);
        assert_eq!(
            seen(r#"{"a":1,"b":[-2,18446744073709551615],"s":"1.5e3"}"#),
            Some(false)
        );
        for json in [
            r#"{"a":1.5}"#,
            r#"{"a":[1e3]}"#,
            r#"{"a":1e-16384}"#,
            r#"{"a":{"b":100000000000000000000}}"#,
        ] {
            assert_eq!(seen(json), Some(true), "{json}");
        }
    }

    #[test]
    fn agrees_with_the_depth_limit_at_its_edges() {
        assert!(certainly_valid("{}", 1, "id", "a"));
        assert!(!certainly_valid(r#"{"id":"a"}"#, 1, "id", "a"));
        assert!(!certainly_valid(r#"{"x":1}"#, 1, "id", "a"));
        assert!(certainly_valid(r#"{"id":"a","x":1}"#, 2, "id", "a"));
        assert!(!certainly_valid("{}", 0, "id", "a"));
    }

    #[test]
    fn rejects_everything_the_rules_refuse() {
        for bad in [
            "",
            "[]",
            "1",
            r#""s""#,
            "null",
            r#"{"x":{"y":{"z":1}}}"#,
            r#"{"x":[[1]]}"#,
            r#"{"x":{"y":[1,2]}}"#,
            r#"{"s":"a\u0000b"}"#,
            r#"{"k\u0000":1}"#,
            r#"{"x":{"k\u0000":1}}"#,
            r#"{"id":"b"}"#,
            r#"{"id":1}"#,
            r#"{"id":null}"#,
            r#"{"i\u0064":"b"}"#,
            r#"{"a":1"#,
            r#"{"a":1} x"#,
            r#"{"a":01}"#,
        ] {
            assert!(!ok(bad), "accepted {bad:?}");
        }
    }
}
