//! JSON text read the way jsonb reads it, for what serde_json cannot tell: numbers by their
//! exact decimal value (conflict checks by value) and whether `numeric` can hold each number
//! (bodies PostgreSQL would refuse).
//!
//! A small tokenizer and tree over texts that serde_json (client bodies) or PostgreSQL (stored
//! bodies) already accepted; it still refuses anything malformed instead of guessing.

use std::borrow::Cow;

use super::json_number::{self, Decimal};

/// Deeper than any body validation lets through (`json_depth_max` is at most 128).
const DEPTH_MAX: usize = 160;

/// Why a text could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Not JSON.
    Malformed,
    /// Nested deeper than [`DEPTH_MAX`].
    TooDeep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    BeginObject,
    EndObject,
    BeginArray,
    EndArray,
    Colon,
    Comma,
    /// The text between the quotes, escapes as written.
    String(&'a str),
    Number(&'a str),
    Literal(Literal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    True,
    False,
    Null,
}

struct Tokens<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Self {
        Tokens { text, at: 0 }
    }

    fn next(&mut self) -> Result<Option<Token<'a>>, TextError> {
        let bytes = self.text.as_bytes();
        while let Some(b) = bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.at += 1;
        }
        let Some(&b) = bytes.get(self.at) else {
            return Ok(None);
        };
        let start = self.at;
        self.at += 1;
        let token = match b {
            b'{' => Token::BeginObject,
            b'}' => Token::EndObject,
            b'[' => Token::BeginArray,
            b']' => Token::EndArray,
            b':' => Token::Colon,
            b',' => Token::Comma,
            b'"' => {
                loop {
                    match bytes.get(self.at) {
                        None => return Err(TextError::Malformed),
                        Some(b'"') => break,
                        // Escapes are one character, or `u` and four hex digits: skipping one
                        // byte is enough to never take an escaped quote for the end.
                        Some(b'\\') => self.at += 2,
                        Some(_) => self.at += 1,
                    }
                }
                let s = self
                    .text
                    .get(start + 1..self.at)
                    .ok_or(TextError::Malformed)?;
                self.at += 1;
                Token::String(s)
            }
            b'-' | b'0'..=b'9' => {
                while bytes
                    .get(self.at)
                    .is_some_and(|b| matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    self.at += 1;
                }
                Token::Number(&self.text[start..self.at])
            }
            _ => {
                let rest = &self.text[start..];
                let (literal, len) = if rest.starts_with("true") {
                    (Literal::True, 4)
                } else if rest.starts_with("false") {
                    (Literal::False, 5)
                } else if rest.starts_with("null") {
                    (Literal::Null, 4)
                } else {
                    return Err(TextError::Malformed);
                };
                self.at = start + len;
                Token::Literal(literal)
            }
        };
        Ok(Some(token))
    }
}

/// A JSON value as jsonb holds it: objects keyed by unique keys (the last duplicate wins),
/// numbers as their text.
#[derive(Debug, Clone)]
enum Value<'a> {
    Literal(Literal),
    Number(&'a str),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Sorted by key.
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

fn string(raw: &str) -> Result<Cow<'_, str>, TextError> {
    if !raw.contains('\\') {
        return Ok(Cow::Borrowed(raw));
    }
    // Escapes (surrogate pairs included) exactly as the validator read them.
    let quoted = format!("\"{raw}\"");
    serde_json::from_str::<String>(&quoted)
        .map(Cow::Owned)
        .map_err(|_| TextError::Malformed)
}

fn parse(text: &str) -> Result<Value<'_>, TextError> {
    let mut tokens = Tokens::new(text);
    let first = tokens.next()?.ok_or(TextError::Malformed)?;
    let value = value(&mut tokens, first, 1)?;
    if tokens.next()?.is_some() {
        return Err(TextError::Malformed);
    }
    Ok(value)
}

fn value<'a>(
    tokens: &mut Tokens<'a>,
    first: Token<'a>,
    depth: usize,
) -> Result<Value<'a>, TextError> {
    if depth > DEPTH_MAX {
        return Err(TextError::TooDeep);
    }
    let next = |t: &mut Tokens<'a>| t.next()?.ok_or(TextError::Malformed);
    Ok(match first {
        Token::Literal(l) => Value::Literal(l),
        Token::Number(n) => {
            // Grammar only; the value is read when compared.
            if !json_number::is_number(n) {
                return Err(TextError::Malformed);
            }
            Value::Number(n)
        }
        Token::String(s) => Value::String(string(s)?),
        Token::BeginArray => {
            let mut items = Vec::new();
            let mut t = next(tokens)?;
            if t != Token::EndArray {
                loop {
                    items.push(value(tokens, t, depth + 1)?);
                    match next(tokens)? {
                        Token::Comma => t = next(tokens)?,
                        Token::EndArray => break,
                        _ => return Err(TextError::Malformed),
                    }
                }
            }
            Value::Array(items)
        }
        Token::BeginObject => {
            let mut fields = Vec::new();
            let mut t = next(tokens)?;
            if t != Token::EndObject {
                loop {
                    let Token::String(key) = t else {
                        return Err(TextError::Malformed);
                    };
                    if next(tokens)? != Token::Colon {
                        return Err(TextError::Malformed);
                    }
                    let first = next(tokens)?;
                    fields.push((string(key)?, value(tokens, first, depth + 1)?));
                    match next(tokens)? {
                        Token::Comma => t = next(tokens)?,
                        Token::EndObject => break,
                        _ => return Err(TextError::Malformed),
                    }
                }
            }
            // Stable: among equal keys the last written stays last, and is the one kept.
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            let mut unique: Vec<(Cow<'a, str>, Value<'a>)> = Vec::with_capacity(fields.len());
            for field in fields {
                match unique.last_mut() {
                    Some(last) if last.0 == field.0 => *last = field,
                    _ => unique.push(field),
                }
            }
            Value::Object(unique)
        }
        _ => return Err(TextError::Malformed),
    })
}

fn same(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Literal(x), Value::Literal(y)) => x == y,
        // A number out of every range (`None`) equals nothing, itself included.
        (Value::Number(x), Value::Number(y)) => match (Decimal::parse(x), Decimal::parse(y)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(i, j)| same(i, j))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((k, v), (l, w))| k == l && same(v, w))
        }
        _ => false,
    }
}

/// JSON equality as jsonb decides it: key order ignored (the last of duplicate keys counts),
/// strings by their characters, numbers by exact decimal value (`1.0` = `1`, `1e2` = `100`,
/// `100000000000000000001` != `100000000000000000000`). A text nested deeper than any valid
/// body equals nothing.
pub fn equal(a: &str, b: &str) -> Result<bool, TextError> {
    let a = parse(a)?;
    match parse(b) {
        Ok(b) => Ok(same(&a, &b)),
        Err(TextError::TooDeep) => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when PostgreSQL's `numeric` can hold every number of the text. A single pass that
/// builds nothing; `false` also for text it cannot read (the caller then looks closer).
pub fn numbers_fit(text: &str) -> bool {
    let mut tokens = Tokens::new(text);
    loop {
        match tokens.next() {
            Ok(Some(Token::Number(n))) => {
                if !json_number::plainly_fits(n) && !json_number::fits_numeric(n) {
                    return false;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// How many bytes longer the text is as PostgreSQL prints it back than as written, from
/// numbers written with exponents (`1e100000` is 8 bytes written, 100,001 printed). Only
/// numbers with an exponent grow; a text that cannot be read grows by 0 (the caller refuses it
/// anyway).
pub fn printed_growth(text: &str) -> usize {
    let mut tokens = Tokens::new(text);
    let mut growth = 0usize;
    loop {
        match tokens.next() {
            Ok(Some(Token::Number(n))) if n.bytes().any(|b| b == b'e' || b == b'E') => {
                let printed = json_number::printed_len(n).unwrap_or(usize::MAX);
                growth = growth.saturating_add(printed.saturating_sub(n.len()));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return growth,
        }
    }
}

/// The JSON Pointer of the first number `numeric` cannot hold (`/a/0`), if any. Keys in the
/// pointer are cut so that the path stays short.
pub fn unstorable_number(text: &str) -> Option<String> {
    fn find(v: &Value<'_>, path: &mut Vec<String>) -> bool {
        match v {
            Value::Number(n) => !json_number::fits_numeric(n),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                path.push(i.to_string());
                let found = find(item, path);
                if !found {
                    path.pop();
                }
                found
            }),
            Value::Object(fields) => fields.iter().any(|(k, item)| {
                let key = super::cut_text(k, 32).replace('~', "~0").replace('/', "~1");
                path.push(key);
                let found = find(item, path);
                if !found {
                    path.pop();
                }
                found
            }),
            _ => false,
        }
    }
    let value = parse(text).ok()?;
    let mut path = Vec::new();
    find(&value, &mut path).then(|| {
        if path.is_empty() {
            "/".to_owned()
        } else {
            path.iter().map(|p| format!("/{p}")).collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_follows_jsonb() {
        for (a, b) in [
            (r#"{"a":1,"b":[1,2]}"#, r#"{"b":[1,2],"a":1.0}"#),
            (r#"{"n":1e2}"#, r#"{"n": 100}"#),
            (r#"{"n":-0}"#, r#"{"n":0.00}"#),
            (r#"{"s":"\u00e9\n"}"#, "{\"s\":\"é\\n\"}"),
            (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
            (
                r#"{"x":{"y":[true,false,null]}}"#,
                r#" { "x" : { "y" : [ true , false , null ] } } "#,
            ),
            (r#"{"e":"\ud83d\ude00"}"#, "{\"e\":\"😀\"}"),
            ("{}", "{ }"),
        ] {
            assert_eq!(equal(a, b), Ok(true), "{a} == {b}");
            assert_eq!(equal(b, a), Ok(true), "{b} == {a}");
        }
        for (a, b) in [
            (
                r#"{"n":100000000000000000001}"#,
                r#"{"n":100000000000000000000}"#,
            ),
            (
                r#"{"n":18446744073709551615}"#,
                r#"{"n":18446744073709551616}"#,
            ),
            (r#"{"n":0.30000000000000001}"#, r#"{"n":0.3}"#),
            (r#"{"a":[1,2]}"#, r#"{"a":[2,1]}"#),
            (r#"{"a":1}"#, r#"{"a":1,"b":null}"#),
            (r#"{"a":"1"}"#, r#"{"a":1}"#),
            (r#"{"a":true}"#, r#"{"a":1}"#),
            (r#"{"a":2,"a":1}"#, r#"{"a":2}"#),
            (r#"{"s":"e\u0301"}"#, "{\"s\":\"é\"}"),
        ] {
            assert_eq!(equal(a, b), Ok(false), "{a} != {b}");
            assert_eq!(equal(b, a), Ok(false), "{b} != {a}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(equal("{}", &deep), Ok(false));
        for bad in [
            "",
            "{",
            r#"{"a":}"#,
            r#"{"a" 1}"#,
            "[1,]",
            "{} x",
            r#"{"a":01}"#,
            "nul",
        ] {
            assert_eq!(equal(bad, "{}"), Err(TextError::Malformed), "{bad}");
        }
    }

    /// Random values: a text equals itself re-serialized (keys reordered), equality agrees
    /// with serde_json's where numbers are small integers, and mangled texts never panic.
    #[test]
    fn agrees_with_serde_and_never_panics() {
        use rand::{Rng, SeedableRng};
        use serde_json::Value as V;
        fn random(rng: &mut impl Rng, depth: usize) -> V {
            match rng.random_range(0..if depth > 3 { 4 } else { 6 }) {
                0 => V::Null,
                1 => V::Bool(rng.random()),
                2 => V::from(rng.random_range(-3..3)),
                3 => V::from(["a", "é", "\"", "\u{1F600}", ""][rng.random_range(0..5)]),
                4 => V::Array(
                    (0..rng.random_range(0..3))
                        .map(|_| random(rng, depth + 1))
                        .collect(),
                ),
                _ => V::Object(
                    (0..rng.random_range(0..3))
                        .map(|k| (format!("k{k}"), random(rng, depth + 1)))
                        .collect(),
                ),
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (mut same_count, mut different) = (0, 0);
        for _ in 0..3_000 {
            let (a, b) = (random(&mut rng, 0), random(&mut rng, 0));
            let (ta, tb) = (a.to_string(), b.to_string());
            assert_eq!(
                equal(&ta, &serde_json::to_string_pretty(&a).unwrap()),
                Ok(true),
                "{ta}"
            );
            assert_eq!(equal(&ta, &tb), Ok(a == b), "{ta} vs {tb}");
            if a == b {
                same_count += 1
            } else {
                different += 1
            }
            let mut bytes = ta.into_bytes();
            for _ in 0..3 {
                let i = rng.random_range(0..bytes.len());
                let alphabet = b"{}[]\",:0e-.\\ x";
                bytes[i] = alphabet[rng.random_range(0..alphabet.len())];
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = (
                    equal(text, text),
                    numbers_fit(text),
                    unstorable_number(text),
                );
            }
        }
        assert!(
            same_count > 100 && different > 1000,
            "{same_count} / {different}"
        );
    }

    #[test]
    fn finds_the_path_of_numbers_numeric_cannot_hold() {
        assert!(numbers_fit(r#"{"a":1,"b":[1.5e300,-2],"c":"1e-99999"}"#));
        assert_eq!(
            unstorable_number(r#"{"a":1,"b":[2,1e-16384]}"#),
            Some("/b/1".to_owned())
        );
        assert!(!numbers_fit(r#"{"a":1,"b":[2,1e-16384]}"#));
        let long = format!(r#"{{"x":{{"a/b~":0.{}}}}}"#, "5".repeat(20_000));
        assert!(!numbers_fit(&long));
        assert_eq!(unstorable_number(&long).as_deref(), Some("/x/a~1b~0"));
        assert_eq!(unstorable_number(r#"{"a":1e-16383}"#), None);
    }
}
