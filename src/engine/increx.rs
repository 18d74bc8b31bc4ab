//! INCREX (Redis 8.8; REDIS_SEMANTICS §7.6), the bounded and expiring increment: one atomic
//! step that adds to an integer, refuses (or clamps, with `saturate`) a result outside the
//! bounds, and sets, keeps or removes the TTL. It is what a rate limiter needs in one durable
//! write: `by 1, upper_bound LIMIT, ttl W, ttl_if_none` counts a hit, starts the window on the
//! first one, and never leaves a counter without its TTL. gRPC's `Incr` runs on it (and RESP's
//! INCREX can, sharing this one operation).
//!
//! Semantics chosen where INCREX's documentation is silent: a result that overflows int64 is
//! `Error::Overflow` (as INCRBY) unless `saturate`, which clamps to the bound or to the int64
//! limit; an out-of-bounds result on a missing key creates nothing; the TTL reported after the
//! call is -2 when the key does not exist, -1 when it has none.

use super::Tx;
use super::expire::Expiry;
use crate::error::{Error, Result};
use crate::value;

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
            ttl: TtlChange::Keep,
        }
    }

    /// Checks the request on its own; `InvalidArgument` names the field.
    pub fn validate(&self) -> Result<()> {
        if let (Some(l), Some(u)) = (self.lower, self.upper)
            && l > u
        {
            return Err(Error::InvalidArgument(format!(
                "lower_bound {l} is greater than upper_bound {u}"
            )));
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

impl Tx<'_> {
    /// INCREX; see the module doc. Nothing is recorded when the increment is refused.
    pub fn increx(&mut self, key: &[u8], req: &IncrEx) -> Result<IncrExOutcome> {
        req.validate()?;
        let now = self.now();
        let cur = self.entry(key)?;
        let old = value::stored_int(cur.as_ref().map(|e| e.value.as_slice()))?;
        let cur_deadline = cur.as_ref().and_then(|e| e.deadline_ms);
        let ttl_of = |exists: bool, deadline: Option<i64>| match (exists, deadline) {
            (false, _) => -2,
            (true, None) => -1,
            (true, Some(d)) => (d - now).max(0),
        };
        let (lo, hi) = (req.lower.unwrap_or(i64::MIN), req.upper.unwrap_or(i64::MAX));
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
            None => return Err(Error::Overflow),
            Some(_) => {
                return Ok(IncrExOutcome {
                    value: old,
                    applied: 0,
                    ttl_ms: ttl_of(cur.is_some(), cur_deadline),
                });
            }
        };
        let deadline = match req.ttl {
            TtlChange::Keep => cur_deadline,
            TtlChange::Persist => None,
            TtlChange::Set(e) => Some(e.resolve_for_set(now, "increx")?),
            TtlChange::SetIfNone(e) => match cur_deadline {
                Some(d) => Some(d),
                None => Some(e.resolve_for_set(now, "increx")?),
            },
        };
        self.store_or_expire(key, value::format_int(new), deadline)?;
        let exists = deadline.is_none_or(|d| d > now);
        Ok(IncrExOutcome {
            value: new,
            applied: new - old,
            ttl_ms: ttl_of(exists, deadline),
        })
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
}
