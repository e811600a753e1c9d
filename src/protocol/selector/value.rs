//! Selector values: strings, exact decimal numbers and booleans, ordered as PostgreSQL orders
//! them (strings as bytes under `COLLATE "C"`, numbers as `numeric`, `false < true`).

use std::cmp::Ordering;
use std::fmt::Write as _;

use super::fields::ScalarType;

/// An exact decimal number: sign, significant digits (no leading or trailing zeros) and the
/// power of ten of the last digit. Zero has no digits and is not negative, so equal values
/// have equal representations (`1`, `1.0` and `10e-1` are one number, as in `numeric`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Num {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Num {
    /// The value of a JSON number's text; `None` when it is not one, or when its exponent is
    /// beyond anything `numeric` (or `f64`) holds.
    pub fn parse(text: &str) -> Option<Num> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits_only(int) || !digits_only(frac) {
            return None;
        }
        if mantissa.contains('.') && frac.is_empty() {
            return None;
        }
        let exp: i64 = match exp {
            None => 0,
            Some(e) => {
                let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
                if unsigned.is_empty() || !digits_only(unsigned) {
                    return None;
                }
                // Far beyond numeric's range (about 1e131072) either way.
                if unsigned.trim_start_matches('0').len() > 9 {
                    return None;
                }
                e.parse().ok()?
            }
        };
        let all = format!("{int}{frac}");
        let exponent = exp - frac.len() as i64;
        let trimmed_start = all.trim_start_matches('0');
        let digits = trimmed_start.trim_end_matches('0');
        if digits.is_empty() {
            return Some(Num::zero());
        }
        let trailing = (trimmed_start.len() - digits.len()) as i64;
        Some(Num {
            negative,
            digits: digits.to_owned(),
            exponent: exponent + trailing,
        })
    }

    fn zero() -> Num {
        Num {
            negative: false,
            digits: String::new(),
            exponent: 0,
        }
    }

    /// The canonical text: `0`, or the digits as an integer with an exponent when it is not
    /// zero (`-15e-1`). A valid JSON number and a valid `numeric` literal.
    pub fn canonical(&self) -> String {
        if self.digits.is_empty() {
            return "0".to_owned();
        }
        let mut out = String::with_capacity(self.digits.len() + 8);
        if self.negative {
            out.push('-');
        }
        out.push_str(&self.digits);
        if self.exponent != 0 {
            let _ = write!(out, "e{}", self.exponent);
        }
        out
    }

    /// -1, 0 or 1.
    fn sign(&self) -> i8 {
        match (self.digits.is_empty(), self.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        }
    }
}

impl Ord for Num {
    fn cmp(&self, other: &Num) -> Ordering {
        let by_sign = self.sign().cmp(&other.sign());
        if by_sign != Ordering::Equal || self.sign() == 0 {
            return by_sign;
        }
        // Same sign, both non-zero: compare magnitudes. The leading digit's power of ten
        // decides first; then the digit strings, where a prefix is the smaller (the missing
        // digits are zeros and the other's are not all zeros, having no trailing zeros).
        let top = |n: &Num| n.digits.len() as i64 + n.exponent;
        let magnitude = top(self)
            .cmp(&top(other))
            .then_with(|| self.digits.as_bytes().cmp(other.digits.as_bytes()));
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }
}

impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Num) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A value a selector compares with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// A string (never holding NUL, which jsonb cannot store).
    Str(String),
    /// A number.
    Num(Num),
    /// A boolean.
    Bool(bool),
}

impl Scalar {
    /// The value's type.
    pub fn scalar_type(&self) -> ScalarType {
        match self {
            Scalar::Str(_) => ScalarType::String,
            Scalar::Num(_) => ScalarType::Number,
            Scalar::Bool(_) => ScalarType::Boolean,
        }
    }

    /// Compares values of one type (`None` across types: they never compare).
    pub fn compare(&self, other: &Scalar) -> Option<Ordering> {
        match (self, other) {
            (Scalar::Str(a), Scalar::Str(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Scalar::Num(a), Scalar::Num(b)) => Some(a.cmp(b)),
            (Scalar::Bool(a), Scalar::Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// The canonical JSON text of the value.
    pub fn canonical(&self) -> String {
        match self {
            Scalar::Str(s) => serde_json::Value::from(s.as_str()).to_string(),
            Scalar::Num(n) => n.canonical(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}
