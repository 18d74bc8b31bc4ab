//! Redis-exact parsing and formatting of the values Tally stores. Values are byte strings, as in
//! Redis; counters are the ones that parse as integers under Redis's `string2ll` rules, and
//! INCRBYFLOAT operands are those that parse under `string2ld` (see `float`).

mod float;

pub use float::{FloatBounds, FloatStep, incr_by_float, incr_by_float_bounded, is_float};

use crate::error::{Error, Result};

/// Longest string `string2ll` accepts plus one (Redis's `LONG_STR_SIZE`).
const LONG_STR_SIZE: usize = 21;

/// Parses `s` exactly as Redis's `string2ll`: optional `-`, no `+`, no leading zeros, no `-0`,
/// no spaces, every byte used, within int64.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= LONG_STR_SIZE {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    // Accumulate as a negative number so that i64::MIN fits without a special case.
    let mut v: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(b - b'0'))?;
    }
    if neg { Some(v) } else { v.checked_neg() }
}

/// A stored value as a counter, as INCR reads it: `string2ll`, a missing value counting as 0.
pub fn stored_int(old: Option<&[u8]>) -> Result<i64> {
    match old {
        None => Ok(0),
        Some(s) => parse_int(s).ok_or(Error::NotInteger),
    }
}

/// Applies an increment with Redis's overflow rule, reading the old value with `string2ll`.
/// A missing value counts as 0.
pub fn incr(old: Option<&[u8]>, by: i64) -> Result<i64> {
    stored_int(old)?.checked_add(by).ok_or(Error::Overflow)
}

/// INCREX's error for `lower > upper`, for both number types.
pub fn crossed_bounds(lower: impl std::fmt::Display, upper: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!(
        "lower_bound {lower} is greater than upper_bound {upper}"
    ))
}

/// Formats an integer the way Redis stores it.
pub fn format_int(v: i64) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string2ll_table() {
        for (s, v) in [
            ("0", 0),
            ("-1", -1),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("42", 42),
        ] {
            assert_eq!(parse_int(s.as_bytes()), Some(v), "{s}");
        }
        for s in [
            "hello",
            " 1",
            "1 ",
            "+1",
            "01",
            "00",
            "-01",
            "1.0",
            "1e3",
            "0x10",
            "",
            "-0",
            "-",
            "1\x002",
            "１",
            "12345678901234567890",
            "9223372036854775808",
            "-9223372036854775809",
        ] {
            assert_eq!(parse_int(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn overflow_rules() {
        assert!(matches!(
            incr(Some(b"9223372036854775807"), 1),
            Err(Error::Overflow)
        ));
        assert_eq!(incr(Some(b"9223372036854775807"), 0).unwrap(), i64::MAX);
        assert!(matches!(
            incr(Some(b"-9223372036854775808"), -1),
            Err(Error::Overflow)
        ));
        assert!(matches!(incr(Some(b"1"), i64::MAX), Err(Error::Overflow)));
        assert!(matches!(incr(Some(b"-1"), i64::MIN), Err(Error::Overflow)));
        assert!(matches!(incr(Some(b"hello"), 1), Err(Error::NotInteger)));
        assert_eq!(incr(None, -1).unwrap(), -1);
    }
}
