//! JSON numbers as PostgreSQL reads them: jsonb stores every number as `numeric`, so a number's
//! exact decimal value is what jsonb compares, and `numeric`'s range is what it accepts.
//! serde_json (without `arbitrary_precision`) reads numbers as `f64`, which loses both.

use std::borrow::Cow;

/// `numeric`'s largest display scale: digits after the decimal point (`NUMERIC_DSCALE_MAX`).
const DSCALE_MAX: i64 = 0x3FFF;
/// `numeric`'s largest weight, in base-10000 digits (`NUMERIC_WEIGHT_MAX`), so the largest
/// power of ten of a number's first digit is 4 * 32767 + 3 = 131071.
const FIRST_DIGIT_POWER_MAX: i64 = 4 * 32767 + 3;
/// `numeric_in` refuses exponents of `INT_MAX / 2` or more either way.
const EXPONENT_MAX: i64 = (i32::MAX / 2) as i64;

/// A number's exact value: sign, significant digits (no leading or trailing zeros) and the
/// power of ten of the last one. Zero has no digits and no sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal<'a> {
    negative: bool,
    digits: Cow<'a, str>,
    exponent: i64,
}

/// The pieces of a number's text: `-int.frac e exp`.
struct Parts<'a> {
    negative: bool,
    int: &'a str,
    frac: &'a str,
    /// `None` when it does not fit an i64 (far beyond any range that matters).
    exp: Option<i64>,
}

fn parts(text: &str) -> Option<Parts<'_>> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || (int.len() > 1 && int.starts_with('0')) {
        return None;
    }
    if frac.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    let exp = match exp {
        None => Some(0),
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !all_digits(digits) {
                return None;
            }
            e.parse::<i64>().ok()
        }
    };
    Some(Parts {
        negative,
        int,
        frac: frac.unwrap_or(""),
        exp,
    })
}

/// True when the text is a JSON number.
pub fn is_number(text: &str) -> bool {
    parts(text).is_some()
}

impl<'a> Decimal<'a> {
    /// The exact value of a JSON number's text; `None` when the text is not a JSON number or
    /// its exponent does not fit an i64 (no stored number is that far out).
    pub fn parse(text: &'a str) -> Option<Decimal<'a>> {
        let p = parts(text)?;
        let exp = p.exp?;
        let int = p.int.trim_start_matches('0');
        let (digits, trailing): (Cow<'a, str>, usize) = if int.is_empty() {
            let frac = p.frac.trim_start_matches('0');
            let kept = frac.trim_end_matches('0');
            (Cow::Borrowed(kept), frac.len() - kept.len())
        } else if p.frac.is_empty() {
            let kept = int.trim_end_matches('0');
            (Cow::Borrowed(kept), int.len() - kept.len())
        } else {
            let frac = p.frac.trim_end_matches('0');
            if frac.is_empty() {
                let kept = int.trim_end_matches('0');
                (Cow::Borrowed(kept), int.len() - kept.len() + p.frac.len())
            } else {
                let owned = format!("{int}{frac}");
                (Cow::Owned(owned), p.frac.len() - frac.len())
            }
        };
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                exponent: 0,
            });
        }
        let frac_len = i64::try_from(p.frac.len()).ok()?;
        let trailing = i64::try_from(trailing).ok()?;
        Some(Decimal {
            negative: p.negative,
            digits,
            exponent: exp.checked_sub(frac_len)?.checked_add(trailing)?,
        })
    }
}

/// True when PostgreSQL's `numeric` (and so jsonb) accepts this JSON number: at most 16383
/// digits after the decimal point as written (trailing zeros count) and a value below
/// 10^131072, with an exponent under 2^30.
pub fn fits_numeric(text: &str) -> bool {
    let Some(p) = parts(text) else {
        return false;
    };
    let Some(exp) = p.exp.filter(|e| e.abs() < EXPONENT_MAX) else {
        return false;
    };
    let frac_len = i64::try_from(p.frac.len()).unwrap_or(i64::MAX);
    if frac_len.saturating_sub(exp) > DSCALE_MAX {
        return false;
    }
    match Decimal::parse(text) {
        // Zero fits whatever its exponent.
        Some(d) if d.digits.is_empty() => true,
        Some(d) => {
            let len = i64::try_from(d.digits.len()).unwrap_or(i64::MAX);
            d.exponent.saturating_add(len - 1) <= FIRST_DIGIT_POWER_MAX
        }
        None => false,
    }
}

/// An upper bound of the length of the number as PostgreSQL prints it back (`numeric` has no
/// exponent form: `1e5` reads back as `100000`, `1e-5` as `0.00001`); `None` when it is not a
/// number `numeric` holds. A short text can print long: the difference counts towards a
/// document's stored size.
pub fn printed_len(text: &str) -> Option<usize> {
    let p = parts(text)?;
    let exp = p.exp?;
    let frac_len = i64::try_from(p.frac.len()).ok()?;
    // Digits after the decimal point: as written, shifted by the exponent.
    let scale = frac_len.saturating_sub(exp).max(0);
    // Digits before it: the significant ones and the zeros after them, or a single 0.
    let int_digits = match Decimal::parse(text) {
        Some(d) if !d.digits.is_empty() => {
            let len = i64::try_from(d.digits.len()).ok()?;
            len.saturating_add(d.exponent).max(1)
        }
        _ => 1,
    };
    // Sign, integer digits, point, fraction.
    let total = 2i64.saturating_add(int_digits).saturating_add(scale);
    usize::try_from(total).ok()
}

/// True when the text certainly fits without looking closer: short and without exponent.
pub fn plainly_fits(text: &str) -> bool {
    text.len() <= 32 && !text.bytes().any(|b| b == b'e' || b == b'E')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        Decimal::parse(a).unwrap() == Decimal::parse(b).unwrap()
    }

    #[test]
    fn numbers_compare_by_exact_value() {
        for (a, b) in [
            ("1", "1.0"),
            ("1e2", "100"),
            ("1E+2", "100.000"),
            ("0", "-0"),
            ("0", "0.000e-5"),
            ("-0.0", "0e10"),
            ("12.5", "125e-1"),
            ("0.001", "1e-3"),
            ("100000000000000000000", "1e20"),
            ("-2.50", "-25e-1"),
            ("10.01", "1001e-2"),
        ] {
            assert!(eq(a, b), "{a} == {b}");
        }
        for (a, b) in [
            ("100000000000000000001", "100000000000000000000"),
            ("18446744073709551615", "18446744073709551616"),
            ("0.30000000000000001", "0.3"),
            ("1", "-1"),
            ("1e2", "1e3"),
            ("10", "1"),
            ("0.1", "1"),
            ("9007199254740993", "9007199254740992"),
        ] {
            assert!(!eq(a, b), "{a} != {b}");
        }
        assert!(Decimal::parse("1e99999999999999999999").is_none());
        for bad in ["", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1x", "--1"] {
            assert!(Decimal::parse(bad).is_none(), "{bad}");
        }
    }

    /// Each case was tried against PostgreSQL 15 (`SELECT '{"a": <n>}'::jsonb`);
    /// tests/replication/inputs.rs checks a table like it against the live database.
    #[test]
    fn printed_length_bounds_what_postgres_prints() {
        for (text, printed) in [
            ("0", "0"),
            ("-12.50", "-12.50"),
            ("1e5", "100000"),
            ("1.5e3", "1500"),
            ("1e-5", "0.00001"),
            ("-2.5e-3", "-0.0025"),
            ("12345678901234567890", "12345678901234567890"),
        ] {
            let bound = printed_len(text).unwrap();
            assert!(
                bound >= printed.len(),
                "{text}: {bound} < {}",
                printed.len()
            );
            assert!(bound <= printed.len() + 2, "{text}: {bound} is loose");
        }
        assert!(printed_len("1e100000").unwrap() > 100_000);
        assert!(printed_len("9e-16000").unwrap() > 16_000);
    }

    #[test]
    fn numeric_range_matches_postgres() {
        let digits = |n: usize| "1".repeat(n);
        let fits = [
            "1e-16383".to_owned(),
            "0e-16383".to_owned(),
            "1.5e-16382".to_owned(),
            "1.0e-16382".to_owned(),
            "10000000000000000000000e-16383".to_owned(),
            "1e131071".to_owned(),
            "9e131071".to_owned(),
            "0.0000e16390".to_owned(),
            "0e99999999".to_owned(),
            "-0".to_owned(),
            "1e1001".to_owned(),
            format!("0.{}", digits(16383)),
            digits(131072),
        ];
        let refused = [
            "1e-16384".to_owned(),
            "0e-16384".to_owned(),
            "1e-20000".to_owned(),
            "1.50e-16382".to_owned(),
            "100e-16385".to_owned(),
            "1e131072".to_owned(),
            "1e1073741822".to_owned(),
            "0e1073741823".to_owned(),
            "1e-1073741823".to_owned(),
            "1e99999999999999999999".to_owned(),
            format!("0.{}", digits(16384)),
            format!("0.{}", digits(20000)),
            digits(131073),
        ];
        for n in &fits {
            assert!(fits_numeric(n), "{}", &n[..n.len().min(40)]);
        }
        for n in &refused {
            assert!(!fits_numeric(n), "{}", &n[..n.len().min(40)]);
            assert!(!plainly_fits(n));
        }
    }
}
