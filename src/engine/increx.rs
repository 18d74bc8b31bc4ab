//! INCREX (Redis 8.8; REDIS_SEMANTICS §7.6), the bounded and expiring increment: one atomic
//! step that adds to a number, refuses (or clamps, with `saturate`) a result outside the
//! bounds, and sets, keeps or removes the TTL. It is what a rate limiter needs in one durable
//! write: `by 1, upper_bound LIMIT, ttl W, ttl_if_none` counts a hit, starts the window on the
//! first one, and never leaves a counter without its TTL. gRPC's `Incr` and RESP's INCREX run
//! on [`Tx::increx`]; RESP's INCREX BYFLOAT on [`Tx::increx_float`], the same step over
//! INCRBYFLOAT's long-double arithmetic (`value::incr_by_float_bounded`). The TTL handling is
//! one function for both ([`Tx::bounded_step`]).
//!
//! A result past int64 is `Error::Overflow` (INCRBY's rule, and gRPC's contract) unless
//! `saturate`, which clamps to the bound or to the int64 limit, or `refuse_overflow`, which
//! refuses it like any out-of-bounds result (RESP's INCREX: Redis 8.8 documents the type's
//! limits as bounds). Chosen where INCREX's documentation is silent: an out-of-bounds result on
//! a missing key creates nothing; the expiry argument is checked before the key is read, so it
//! errs even when the increment is then refused (Redis checks it while parsing); the TTL
//! reported after the call is -2 when the key does not exist, -1 when it has none.

use super::Tx;
use super::expire::Expiry;
use crate::error::{Error, Result};
use crate::value::{self, FloatBounds};

/// What INCREX does to the TTL when it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TtlChange {
    /// Keep whatever TTL the key has (INCRBY's behaviour).
    #[default]
    Keep,
    /// Set this TTL (EX/PX/EXAT/PXAT).
    Set(Expiry),
    /// Set this TTL only if the key has none (ENX): a window starts on the first hit.
    SetIfNone(Expiry),
    /// Remove the TTL (PERSIST).
    Persist,
}

/// An INCREX request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrEx {
    /// The increment.
    pub by: i64,
    /// The smallest result allowed.
    pub lower: Option<i64>,
    /// The largest result allowed.
    pub upper: Option<i64>,
    /// Clamp an out-of-bounds result to the bound instead of refusing it.
    pub saturate: bool,
    /// Refuse a result past int64 like an out-of-bounds one instead of `Error::Overflow`.
    pub refuse_overflow: bool,
    /// The TTL change, made only when the increment applies.
    pub ttl: TtlChange,
}

impl IncrEx {
    /// A plain INCRBY: no bounds, TTL kept.
    pub fn by(by: i64) -> IncrEx {
        IncrEx {
            by,
            lower: None,
            upper: None,
            saturate: false,
            refuse_overflow: false,
            ttl: TtlChange::Keep,
        }
    }

    /// Checks the request on its own; `InvalidArgument` names the field.
    pub fn validate(&self) -> Result<()> {
        if let (Some(l), Some(u)) = (self.lower, self.upper)
            && l > u
        {
            return Err(value::crossed_bounds(l, u));
        }
        Ok(())
    }
}

/// What INCREX did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncrExOutcome {
    /// The value after the call (the current one when the increment was refused).
    pub value: i64,
    /// The increment actually applied: `by`, 0 when refused, or what reached the bound.
    pub applied: i64,
    /// The TTL after the call in ms: -1 none, -2 the key does not exist.
    pub ttl_ms: i64,
}

/// An INCREX BYFLOAT request: the increment and bounds are Redis float strings (`string2ld`).
/// The type's limits (±`LDBL_MAX`) are always bounds: an infinite result is refused or clamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrExFloat {
    /// The increment.
    pub by: Vec<u8>,
    /// The smallest result allowed.
    pub lower: Option<Vec<u8>>,
    /// The largest result allowed.
    pub upper: Option<Vec<u8>>,
    /// Clamp an out-of-bounds result to the bound instead of refusing it.
    pub saturate: bool,
    /// The TTL change, made only when the increment applies.
    pub ttl: TtlChange,
}

/// What INCREX BYFLOAT did, printed as INCRBYFLOAT prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrExFloatOutcome {
    /// The value after the call (the current one when the increment was refused).
    pub value: Vec<u8>,
    /// The increment actually applied: `by`, `"0"` when refused, or what reached the bound.
    pub applied: Vec<u8>,
    /// The TTL after the call in ms: -1 none, -2 the key does not exist.
    pub ttl_ms: i64,
}

impl Tx<'_> {
    /// INCREX; see the module doc. Nothing is recorded when the increment is refused.
    pub fn increx(&mut self, key: &[u8], req: &IncrEx) -> Result<IncrExOutcome> {
        req.validate()?;
        let (lo, hi) = (req.lower.unwrap_or(i64::MIN), req.upper.unwrap_or(i64::MAX));
        let (mut value, mut applied) = (0, 0);
        let ttl_ms = self.bounded_step(key, req.ttl, |stored| {
            let old = value::stored_int(stored)?;
            let new = match old.checked_add(req.by) {
                Some(v) if (lo..=hi).contains(&v) => v,
                Some(v) if req.saturate => v.clamp(lo, hi),
                None if req.saturate => {
                    if req.by > 0 {
                        hi
                    } else {
                        lo
                    }
                }
                None if !req.refuse_overflow => return Err(Error::Overflow),
                _ => {
                    value = old;
                    return Ok(None);
                }
            };
            (value, applied) = (new, new - old);
            Ok(Some(value::format_int(new)))
        })?;
        Ok(IncrExOutcome {
            value,
            applied,
            ttl_ms,
        })
    }

    /// INCREX BYFLOAT; see [`IncrExFloat`]. Nothing is recorded when the increment is refused.
    pub fn increx_float(&mut self, key: &[u8], req: &IncrExFloat) -> Result<IncrExFloatOutcome> {
        let bounds = FloatBounds {
            lower: req.lower.as_deref(),
            upper: req.upper.as_deref(),
            saturate: req.saturate,
        };
        let mut step = None;
        let ttl_ms = self.bounded_step(key, req.ttl, |stored| {
            // At most a few KiB (`%.17Lf` of a long double): always within the value limit.
            let s = value::incr_by_float_bounded(stored, &req.by, &bounds)?;
            let new = (!s.refused).then(|| s.value.clone());
            step = Some(s);
            Ok(new)
        })?;
        let s = step.expect("bounded_step runs the step unless it errs");
        Ok(IncrExFloatOutcome {
            value: s.value,
            applied: s.applied,
            ttl_ms,
        })
    }

    /// INCREX apart from the arithmetic: resolves the TTL change (first, so a bad expiry errs
    /// whatever is stored), reads the key, lets `step` turn the stored value (`None`: missing)
    /// into the one to store (`None`: refused, nothing recorded), and stores it with the TTL
    /// the change asks for. Returns the TTL after the call in ms (-1 none, -2 no key).
    fn bounded_step(
        &mut self,
        key: &[u8],
        ttl: TtlChange,
        step: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    ) -> Result<i64> {
        let now = self.now();
        let wanted = match ttl {
            TtlChange::Set(e) | TtlChange::SetIfNone(e) => Some(e.resolve_for_set(now, "increx")?),
            TtlChange::Keep | TtlChange::Persist => None,
        };
        let cur = self.entry(key)?;
        let cur_deadline = cur.as_ref().and_then(|e| e.deadline_ms);
        let ttl_of = |exists: bool, deadline: Option<i64>| match (exists, deadline) {
            (false, _) => -2,
            (true, None) => -1,
            (true, Some(d)) => (d - now).max(0),
        };
        let Some(new) = step(cur.as_ref().map(|e| e.value.as_slice()))? else {
            return Ok(ttl_of(cur.is_some(), cur_deadline));
        };
        let deadline = match ttl {
            TtlChange::Keep => cur_deadline,
            TtlChange::Persist => None,
            TtlChange::Set(_) => wanted,
            TtlChange::SetIfNone(_) => cur_deadline.or(wanted),
        };
        self.store_or_expire(key, new, deadline)?;
        Ok(ttl_of(deadline.is_none_or(|d| d > now), deadline))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::engine::Engine;

    fn engine() -> (tempfile::TempDir, Arc<Engine>, Arc<ManualClock>) {
        let d = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let e = Engine::open(Config::new(d.path()), clock.clone()).unwrap();
        (d, e, clock)
    }

    fn run(e: &Engine, key: &str, req: IncrEx) -> Result<(i64, i64, i64)> {
        let k = key.as_bytes();
        e.run(&[k], |tx| tx.increx(k, &req))
            .map(|a| (a.value.value, a.value.applied, a.value.ttl_ms))
    }

    #[test]
    fn a_rate_limiter_in_one_call() {
        let (_d, e, clock) = engine();
        let hit = IncrEx {
            upper: Some(3),
            ttl: TtlChange::SetIfNone(Expiry::In(60_000)),
            ..IncrEx::by(1)
        };
        assert_eq!(run(&e, "rl", hit).unwrap(), (1, 1, 60_000));
        clock.advance(10_000);
        // The window is not extended by later hits.
        assert_eq!(run(&e, "rl", hit).unwrap(), (2, 1, 50_000));
        assert_eq!(run(&e, "rl", hit).unwrap(), (3, 1, 50_000));
        // Over the limit: refused, value and TTL untouched.
        assert_eq!(run(&e, "rl", hit).unwrap(), (3, 0, 50_000));
        clock.advance(50_001);
        assert_eq!(run(&e, "rl", hit).unwrap(), (1, 1, 60_000));
    }

    #[test]
    fn bounds_saturate_and_ttl_changes() {
        let (_d, e, _clock) = engine();
        let sat = IncrEx {
            lower: Some(0),
            upper: Some(10),
            saturate: true,
            ..IncrEx::by(7)
        };
        assert_eq!(run(&e, "s", sat).unwrap(), (7, 7, -1));
        assert_eq!(run(&e, "s", sat).unwrap(), (10, 3, -1));
        assert_eq!(
            run(&e, "s", IncrEx { by: -25, ..sat }).unwrap(),
            (0, -10, -1)
        );
        // Refused on a missing key: nothing is created.
        let refuse = IncrEx {
            lower: Some(5),
            ..IncrEx::by(1)
        };
        assert_eq!(run(&e, "m", refuse).unwrap(), (0, 0, -2));
        assert_eq!(e.get(b"m").unwrap().value, None);
        // Overflow: an error, or the int64 limit when saturating.
        run(&e, "o", IncrEx::by(i64::MAX)).unwrap();
        assert!(matches!(run(&e, "o", IncrEx::by(1)), Err(Error::Overflow)));
        let up = IncrEx {
            saturate: true,
            ..IncrEx::by(1)
        };
        assert_eq!(run(&e, "o", up).unwrap(), (i64::MAX, 0, -1));
        // Set, keep, persist.
        let set = IncrEx {
            ttl: TtlChange::Set(Expiry::In(5_000)),
            ..IncrEx::by(1)
        };
        assert_eq!(run(&e, "t", set).unwrap(), (1, 1, 5_000));
        assert_eq!(run(&e, "t", IncrEx::by(1)).unwrap(), (2, 1, 5_000));
        let persist = IncrEx {
            ttl: TtlChange::Persist,
            ..IncrEx::by(1)
        };
        assert_eq!(run(&e, "t", persist).unwrap(), (3, 1, -1));
        // A deadline in the past: applied, and the key is gone.
        let past = IncrEx {
            ttl: TtlChange::Set(Expiry::At(1)),
            ..IncrEx::by(1)
        };
        assert_eq!(run(&e, "t", past).unwrap(), (4, 1, -2));
        assert_eq!(e.get(b"t").unwrap().value, None);
        // Bad requests change nothing.
        let bad = IncrEx {
            lower: Some(2),
            upper: Some(1),
            ..IncrEx::by(1)
        };
        assert!(matches!(run(&e, "b", bad), Err(Error::InvalidArgument(_))));
        let bad_ttl = IncrEx {
            ttl: TtlChange::Set(Expiry::In(0)),
            ..IncrEx::by(1)
        };
        assert!(matches!(
            run(&e, "b", bad_ttl),
            Err(Error::InvalidExpireTime(_))
        ));
        assert_eq!(e.get(b"b").unwrap().value, None);
        let _ = e.set(b"str", b"hello", &Default::default()).unwrap();
        assert!(matches!(
            run(&e, "str", IncrEx::by(1)),
            Err(Error::NotInteger)
        ));
    }

    #[test]
    fn overflow_refused_and_expiry_checked_before_the_key() {
        let (_d, e, _clock) = engine();
        run(&e, "o", IncrEx::by(i64::MAX - 1)).unwrap();
        let refuse = IncrEx {
            refuse_overflow: true,
            ..IncrEx::by(2)
        };
        // Past int64 counts as past a bound: refused, not an error, and nothing changes.
        assert_eq!(run(&e, "o", refuse).unwrap(), (i64::MAX - 1, 0, -1));
        assert_eq!(
            run(&e, "o", IncrEx { by: 1, ..refuse }).unwrap(),
            (i64::MAX, 1, -1)
        );
        // A bad expiry errs although the increment would be refused anyway.
        let bad = IncrEx {
            upper: Some(0),
            ttl: TtlChange::SetIfNone(Expiry::In(-1)),
            ..IncrEx::by(1)
        };
        assert!(matches!(
            run(&e, "x", bad),
            Err(Error::InvalidExpireTime("increx"))
        ));
    }

    fn run_float(e: &Engine, key: &str, req: &IncrExFloat) -> Result<(String, String, i64)> {
        let k = key.as_bytes();
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        e.run(&[k], |tx| tx.increx_float(k, req))
            .map(|a| (text(a.value.value), text(a.value.applied), a.value.ttl_ms))
    }

    #[test]
    fn byfloat_bounds_saturate_and_ttl() {
        let (_d, e, clock) = engine();
        let hit = IncrExFloat {
            by: b"0.1".to_vec(),
            lower: None,
            upper: Some(b"0.3".to_vec()),
            saturate: false,
            ttl: TtlChange::SetIfNone(Expiry::In(10_000)),
        };
        let r = |v: &str, a: &str, t: i64| (v.to_string(), a.to_string(), t);
        assert_eq!(run_float(&e, "f", &hit).unwrap(), r("0.1", "0.1", 10_000));
        clock.advance(1_000);
        assert_eq!(run_float(&e, "f", &hit).unwrap(), r("0.2", "0.1", 9_000));
        // 0.1 + 0.1 + 0.1 is 0.3 in long double as INCRBYFLOAT prints it, and within the bound.
        assert_eq!(run_float(&e, "f", &hit).unwrap(), r("0.3", "0.1", 9_000));
        // Past the bound: refused, value and TTL untouched.
        assert_eq!(run_float(&e, "f", &hit).unwrap(), r("0.3", "0", 9_000));
        assert_eq!(e.get(b"f").unwrap().value, Some(b"0.3".to_vec()));
        // SATURATE clamps to the bound; the applied increment is what reached it.
        let sat = IncrExFloat {
            by: b"-5".to_vec(),
            lower: Some(b"-1.5".to_vec()),
            saturate: true,
            ttl: TtlChange::Persist,
            ..hit.clone()
        };
        assert_eq!(run_float(&e, "f", &sat).unwrap(), r("-1.5", "-1.8", -1));
        // An infinite result is out of the type's bounds: refused, or clamped to LDBL_MAX.
        let inf = IncrExFloat {
            by: b"1e4932".to_vec(),
            lower: None,
            upper: None,
            saturate: false,
            ttl: TtlChange::Keep,
        };
        let _ = e.set(b"big", b"1e4932", &Default::default()).unwrap();
        let (v, a, _) = run_float(&e, "big", &inf).unwrap();
        assert!(v.len() > 4900 && a == "0", "{a}");
        let sat = IncrExFloat {
            saturate: true,
            ..inf.clone()
        };
        let (max, _, _) = run_float(&e, "big", &sat).unwrap();
        // LDBL_MAX = 1.18973149535723176502e4932, printed in full.
        assert!(
            max.starts_with("118973149535723176") && max.len() == 4933,
            "{max}"
        );
        // Refused on a missing key creates nothing; bad bounds and values are errors.
        let none = IncrExFloat {
            upper: Some(b"-1".to_vec()),
            ..inf.clone()
        };
        assert_eq!(run_float(&e, "m", &none).unwrap(), r("0", "0", -2));
        assert_eq!(e.get(b"m").unwrap().value, None);
        let crossed = IncrExFloat {
            lower: Some(b"2".to_vec()),
            upper: Some(b"1.5".to_vec()),
            ..hit.clone()
        };
        assert_eq!(
            run_float(&e, "m", &crossed).unwrap_err().to_string(),
            "lower_bound 2 is greater than upper_bound 1.5"
        );
        let _ = e.set(b"str", b"hello", &Default::default()).unwrap();
        assert!(matches!(run_float(&e, "str", &hit), Err(Error::NotFloat)));
    }
}
