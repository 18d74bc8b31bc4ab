//! Throttle: a GCRA rate limiter (the generic cell rate algorithm) with redis-cell's
//! `CL.THROTTLE` arithmetic, as one atomic, durable write. The key holds the theoretical arrival
//! time (TAT) in unix nanoseconds, as an integer string, and expires when the limiter is full
//! again, so an idle limiter costs nothing.
//!
//! With `emission = period / count_per_period` (truncated to ns) and `tolerance = emission *
//! (max_burst + 1)`: a request of `quantity` moves the TAT to `max(tat, now) + emission *
//! quantity`; it is allowed if that is at most `now + tolerance`. One deliberate difference from
//! redis-cell: it compares whole seconds (`diff.num_seconds() < 0`), so it lets a request
//! through up to a second early; Tally compares exactly, which matters for periods under a
//! few seconds. `quantity` 0 only looks.

use super::Tx;
use crate::error::{Error, Result};
use crate::value;

const NS_PER_MS: i64 = 1_000_000;

/// A throttle request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Requests allowed at once beyond the steady rate (the limit is `max_burst + 1`).
    pub max_burst: i64,
    /// Requests allowed per period, in the long run.
    pub count_per_period: i64,
    /// The period, in ms.
    pub period_ms: i64,
    /// How much this request uses (1 usually; 0 looks without using).
    pub quantity: i64,
}

/// What a throttle request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleOutcome {
    /// True if refused (nothing was used).
    pub limited: bool,
    /// `max_burst + 1`.
    pub limit: i64,
    /// Requests still allowed right now.
    pub remaining: i64,
    /// When a refused request would be allowed, in ms; -1 if allowed (or never: `quantity` is
    /// over the limit).
    pub retry_after_ms: i64,
    /// When the limiter is full again, in ms.
    pub reset_after_ms: i64,
}

/// Whole ms, rounded up (waiting that long is always enough).
fn ms_ceil(ns: i64) -> i64 {
    ns.div_euclid(NS_PER_MS) + i64::from(ns.rem_euclid(NS_PER_MS) != 0)
}

impl Throttle {
    /// Emission interval and tolerance in ns, or `InvalidArgument` naming the bad field.
    fn intervals(&self) -> Result<(i64, i64)> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.into()));
        if self.max_burst < 0 {
            return bad("max_burst must be >= 0");
        }
        if self.count_per_period <= 0 {
            return bad("count_per_period must be > 0");
        }
        if self.period_ms <= 0 {
            return bad("period_ms must be > 0");
        }
        if self.quantity < 0 {
            return bad("quantity must be >= 0");
        }
        let too_big = || Error::InvalidArgument("period_ms and max_burst are too large".into());
        let emission =
            self.period_ms.checked_mul(NS_PER_MS).ok_or_else(too_big)? / self.count_per_period;
        let tolerance = emission
            .checked_mul(self.max_burst + 1)
            .ok_or_else(too_big)?;
        Ok((emission, tolerance))
    }
}

impl Tx<'_> {
    /// One throttle request on `key`; see the module doc.
    pub fn throttle(&mut self, key: &[u8], t: &Throttle) -> Result<ThrottleOutcome> {
        let (emission, tolerance) = t.intervals()?;
        let increment = emission
            .checked_mul(t.quantity)
            .ok_or_else(|| Error::InvalidArgument("quantity is too large for this rate".into()))?;
        let now = self.now().saturating_mul(NS_PER_MS);
        let tat = match self.entry(key)? {
            None => now,
            Some(e) => value::parse_int(&e.value).ok_or(Error::NotInteger)?,
        };
        let new_tat = tat.max(now).saturating_add(increment);
        let diff = now - (new_tat - tolerance);
        let (limited, retry_after, ttl) = if diff < 0 {
            let retry = if increment <= tolerance { -diff } else { -1 };
            (true, retry, tat - now)
        } else {
            let ttl = new_tat - now;
            self.store_or_expire(
                key,
                value::format_int(new_tat),
                Some(self.now() + ms_ceil(ttl)),
            )?;
            (false, -1, ttl)
        };
        let next = tolerance - ttl;
        let remaining = if next > -emission { next / emission } else { 0 };
        Ok(ThrottleOutcome {
            limited,
            limit: t.max_burst + 1,
            remaining,
            retry_after_ms: if retry_after < 0 {
                -1
            } else {
                ms_ceil(retry_after)
            },
            reset_after_ms: ms_ceil(ttl.max(0)),
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

    /// redis-cell's own table (`it_rate_limits`): 5 at once, 1 per second.
    #[test]
    fn redis_cells_rate_limit_table() {
        let d = tempfile::tempdir().unwrap();
        let start = 1_800_000_000_000;
        let clock = Arc::new(ManualClock::new(start));
        let e = Engine::open(Config::new(d.path()), clock.clone()).unwrap();
        // (at ms, quantity, remaining, reset_after ms, retry_after ms, limited)
        let cases: [(i64, i64, i64, i64, i64, bool); 15] = [
            (0, 6, 5, 0, -1, true),
            (0, 1, 4, 1000, -1, false),
            (0, 1, 3, 2000, -1, false),
            (0, 1, 2, 3000, -1, false),
            (0, 1, 1, 4000, -1, false),
            (0, 1, 0, 5000, -1, false),
            (0, 1, 0, 5000, 1000, true),
            (3000, 1, 2, 3000, -1, false),
            (3100, 1, 1, 3900, -1, false),
            (4000, 1, 1, 4000, -1, false),
            (8000, 1, 4, 1000, -1, false),
            (9500, 1, 4, 1000, -1, false),
            (9500, 0, 4, 1000, -1, false),
            (9500, 2, 2, 3000, -1, false),
            (9500, 5, 2, 3000, 3000, true),
        ];
        let t = Throttle {
            max_burst: 4,
            count_per_period: 1,
            period_ms: 1000,
            quantity: 1,
        };
        for (i, (at, quantity, remaining, reset, retry, limited)) in cases.into_iter().enumerate() {
            clock.set(start + at);
            let req = Throttle { quantity, ..t };
            let out = e
                .run(&[b"foo"], |tx| tx.throttle(b"foo", &req))
                .unwrap()
                .value;
            let want = ThrottleOutcome {
                limited,
                limit: 5,
                remaining,
                retry_after_ms: retry,
                reset_after_ms: reset,
            };
            assert_eq!(out, want, "case {i}");
        }
    }

    #[test]
    fn redis_cell_readme_example_and_bad_parameters() {
        let d = tempfile::tempdir().unwrap();
        let e = Engine::open(Config::new(d.path()), Arc::new(ManualClock::new(1 << 40))).unwrap();
        let t = Throttle {
            max_burst: 15,
            count_per_period: 30,
            period_ms: 60_000,
            quantity: 1,
        };
        // CL.THROTTLE user123 15 30 60 -> [0, 16, 15, -1, 2]
        let out = e.run(&[b"u"], |tx| tx.throttle(b"u", &t)).unwrap().value;
        assert_eq!(
            (
                out.limited,
                out.limit,
                out.remaining,
                out.retry_after_ms,
                out.reset_after_ms
            ),
            (false, 16, 15, -1, 2000)
        );
        for (bad, msg) in [
            (Throttle { max_burst: -1, ..t }, "max_burst must be >= 0"),
            (
                Throttle {
                    count_per_period: 0,
                    ..t
                },
                "count_per_period must be > 0",
            ),
            (Throttle { period_ms: 0, ..t }, "period_ms must be > 0"),
            (Throttle { quantity: -1, ..t }, "quantity must be >= 0"),
        ] {
            let err = e.run(&[b"u"], |tx| tx.throttle(b"u", &bad)).unwrap_err();
            assert_eq!(err.to_string(), msg);
        }
    }
}
