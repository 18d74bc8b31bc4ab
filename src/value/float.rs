//! INCRBYFLOAT and INCREX BYFLOAT, bit-exact with Redis on this platform: the arithmetic is C
//! `long double` (80-bit extended on x86-64), parsed with Redis's `string2ld` rules and printed
//! as Redis's `ld2string(LD_STR_HUMAN)` (`%.17Lf`, trailing zeros and `.` stripped, `-0` ->
//! `0`). Both are one C function (`longdouble.c`), INCREX's bounds a mode of it; this file is
//! its safe wrapper.

use std::os::raw::{c_char, c_int, c_long};

use crate::error::{Error, Result};

/// Redis's `MAX_LONG_DOUBLE_CHARS`: room for the longest `%.17Lf` of a finite long double.
const OUT_CAP: usize = 5 * 1024;

unsafe extern "C" {
    fn tally_incrbyfloat(
        old: *const c_char,
        old_len: usize,
        incr: *const c_char,
        incr_len: usize,
        bounded: c_int,
        lo: *const c_char,
        lo_len: usize,
        hi: *const c_char,
        hi_len: usize,
        saturate: c_int,
        out: *mut c_char,
        out_len: usize,
        applied: *mut c_char,
        applied_len: usize,
        applied_n: *mut c_long,
        refused: *mut c_int,
    ) -> c_long;
    fn tally_is_float(s: *const c_char, len: usize) -> c_int;
}

/// True if `s` is a valid INCRBYFLOAT operand (Redis `string2ld`).
pub fn is_float(s: &[u8]) -> bool {
    // SAFETY: the pointer and length describe a live slice; the C side only reads `len` bytes.
    unsafe { tally_is_float(s.as_ptr().cast(), s.len()) == 1 }
}

/// The bounds of INCREX BYFLOAT, as Redis float strings; `None` is the type's limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloatBounds<'a> {
    /// The smallest result allowed.
    pub lower: Option<&'a [u8]>,
    /// The largest result allowed.
    pub upper: Option<&'a [u8]>,
    /// Clamp a result outside the bounds to the bound instead of refusing it.
    pub saturate: bool,
}

/// What INCREX BYFLOAT computed, as Redis prints long doubles (`ld2string(LD_STR_HUMAN)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloatStep {
    /// The new value (the current one when refused).
    pub value: Vec<u8>,
    /// The increment actually made: the increment, `"0"` when refused, what reached the bound.
    pub applied: Vec<u8>,
    /// True if the result was out of bounds and nothing is to be stored.
    pub refused: bool,
}

fn ptr_len(s: Option<&[u8]>) -> (*const c_char, usize) {
    s.map_or((std::ptr::null(), 0), |s| (s.as_ptr().cast(), s.len()))
}

/// The one call into C: INCRBYFLOAT without `bounds`, INCREX BYFLOAT with them.
fn compute(old: Option<&[u8]>, incr: &[u8], bounds: Option<&FloatBounds>) -> Result<FloatStep> {
    let mut out = vec![0u8; OUT_CAP];
    // INCRBYFLOAT has no applied increment to print: no second buffer on its path.
    let mut applied = vec![0u8; if bounds.is_some() { OUT_CAP } else { 0 }];
    let (mut applied_n, mut refused): (c_long, c_int) = (0, 0);
    let (old_ptr, old_len) = ptr_len(old);
    let b = bounds.copied().unwrap_or_default();
    let ((lo, lo_len), (hi, hi_len)) = (ptr_len(b.lower), ptr_len(b.upper));
    // SAFETY: every pointer/length pair describes a live buffer (or is null with length 0); the
    // C side writes at most `out.len()` bytes into `out` and `applied.len()` into `applied`,
    // writes `applied` only when bounded, and reads at most the given lengths.
    let n = unsafe {
        tally_incrbyfloat(
            old_ptr,
            old_len,
            incr.as_ptr().cast(),
            incr.len(),
            c_int::from(bounds.is_some()),
            lo,
            lo_len,
            hi,
            hi_len,
            c_int::from(b.saturate),
            out.as_mut_ptr().cast(),
            out.len(),
            applied.as_mut_ptr().cast(),
            applied.len(),
            &mut applied_n,
            &mut refused,
        )
    };
    match n {
        -1 | -2 | -5 => Err(Error::NotFloat),
        -3 => Err(Error::NanOrInfinity),
        -6 => Err(super::crossed_bounds(
            String::from_utf8_lossy(b.lower.unwrap_or_default()),
            String::from_utf8_lossy(b.upper.unwrap_or_default()),
        )),
        n if n < 0 => Err(Error::InvalidArgument(
            "INCRBYFLOAT result does not fit".into(),
        )),
        n => {
            out.truncate(n as usize);
            applied.truncate(applied_n as usize);
            Ok(FloatStep {
                value: out,
                applied,
                refused: refused != 0,
            })
        }
    }
}

/// `old + incr` as Redis's INCRBYFLOAT stores and replies it. `old` is `None` for a missing key.
/// Errors: `NotFloat` for a bad stored value or increment, `NanOrInfinity` for an infinite result.
pub fn incr_by_float(old: Option<&[u8]>, incr: &[u8]) -> Result<Vec<u8>> {
    Ok(compute(old, incr, None)?.value)
}

/// `old + incr` kept within `bounds`, as INCREX BYFLOAT: the same long-double arithmetic as
/// [`incr_by_float`], with the type's limits (±`LDBL_MAX`) as the default bounds, so an
/// infinite result is refused (or clamped) like any other out-of-bounds one; only a NaN result
/// is `NanOrInfinity`. A bound that is not a float is `NotFloat`; `lower > upper` is
/// `InvalidArgument`. The arguments are checked before the stored value.
pub fn incr_by_float_bounded(
    old: Option<&[u8]>,
    incr: &[u8],
    bounds: &FloatBounds,
) -> Result<FloatStep> {
    compute(old, incr, Some(bounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: Option<&str>, incrs: &[&str]) -> String {
        let mut v = start.map(|s| s.as_bytes().to_vec());
        for i in incrs {
            v = Some(incr_by_float(v.as_deref(), i.as_bytes()).unwrap());
        }
        String::from_utf8(v.unwrap()).unwrap()
    }

    /// The table of REDIS_SEMANTICS §4, observed on Redis 7.0.15.
    #[test]
    fn matches_redis_table() {
        let rows: &[(Option<&str>, &[&str], &str)] = &[
            (None, &["10.5", "0.1"], "10.6"),
            (Some("10.50"), &["0.1"], "10.6"),
            (Some("5.0e3"), &["2.0e2"], "5200"),
            (Some("3.0e3"), &["1"], "3001"),
            (Some("1"), &["5.0e3"], "5001"),
            (None, &["0.1", "0.2"], "0.3"),
            (Some("1"), &["-1.1"], "-0.1"),
            (Some("1.5"), &["1.5"], "3"),
            (Some("17179869184"), &["1.5"], "17179869185.5"),
            (Some("17179869184"), &["17179869184"], "34359738368"),
            (None, &["1", "0.25", "-1.25"], "0"),
            (None, &["-0.0"], "0"),
            (Some("0.1"), &["0.7"], "0.8"),
            (Some("1.1"), &["2.2"], "3.3"),
            (Some("100"), &["-99.99"], "0.01"),
            (None, &["0.1"; 10], "1"),
            (None, &["1e20"], "100000000000000000000"),
            (Some("1"), &["1e-18"], "1"),
            (Some("1"), &["1e-17"], "1.00000000000000001"),
            (
                None,
                &["1234567890.123456789"],
                "1234567890.12345678894780576",
            ),
            (None, &["3.14159265358979323846"], "3.14159265358979324"),
            (Some("9007199254740992"), &["1"], "9007199254740993"),
            (Some("9223372036854775807"), &["1"], "9223372036854775808"),
            (Some("12345678901234567890"), &["1"], "12345678901234567891"),
        ];
        for (start, incrs, want) in rows {
            assert_eq!(run(*start, incrs), *want, "{start:?} + {incrs:?}");
        }
    }

    #[test]
    fn string2ld_rules() {
        for ok in [
            "+1",
            "01",
            "011",
            ".5",
            "5.",
            "1e5",
            "1E-5",
            "5.0e3",
            "0x10",
            "0x1A",
            "-0",
            "-0.0",
            "12345678901234567890",
            "1e400",
        ] {
            assert!(is_float(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "abc", "", " 1", "1 ", " 11 ", "1e", "1,5", "nan", "1e5000", "1e-5000", "1\u{0}2",
        ] {
            assert!(!is_float(bad.as_bytes()), "{bad:?}");
            assert!(matches!(
                incr_by_float(Some(bad.as_bytes()), b"1"),
                Err(Error::NotFloat)
            ));
            assert!(matches!(
                incr_by_float(None, bad.as_bytes()),
                Err(Error::NotFloat)
            ));
        }
        for inf in ["inf", "+inf", "-inf", "infinity"] {
            assert!(
                matches!(
                    incr_by_float(None, inf.as_bytes()),
                    Err(Error::NanOrInfinity)
                ),
                "{inf}"
            );
        }
        assert!(matches!(
            incr_by_float(Some(b"1e4932"), b"1.18e4932"),
            Err(Error::NanOrInfinity)
        ));
        // 2 x f64::MAX does not overflow a long double: a 309-digit integer string.
        let big =
            incr_by_float(Some(b"1.7976931348623157e308"), b"1.7976931348623157e308").unwrap();
        assert_eq!(big.len(), 309);
    }
}
