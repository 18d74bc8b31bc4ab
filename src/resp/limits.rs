//! The rate-limiting commands: redis-cell's `CL.THROTTLE` (GCRA) and Redis 8.8's `INCREX` (the
//! bounded, expiring increment, BYINT or BYFLOAT). This module only parses their arguments with
//! Redis's rules and messages and shapes their replies; the arithmetic is the engine's
//! (`Tx::throttle`, `Tx::increx`, `Tx::increx_float`), shared with gRPC's `Throttle` and `Incr`,
//! so each command is one durable write and works inside MULTI/EXEC like any other.
//!
//! CL.THROTTLE's period is in seconds (the engine's in ms), and its reply gives `retry_after`
//! and `reset_after` in whole seconds, rounded up as redis-cell rounds (whole seconds, plus one
//! if any part of a second is left), from the engine's ms. The engine has already rounded ns up
//! to ms, so a remainder under 1 ms, which redis-cell drops, counts here as a part of a second:
//! the reply is never earlier than the limiter allows. Bad values get the engine's messages,
//! which name its fields (`period_ms` is the period converted to ms).
//!
//! INCREX replies `[new_value, actual_increment]`: integers with BYINT (or no BY*), and with
//! BYFLOAT two numbers printed as INCRBYFLOAT prints them, sent as Redis's
//! `addReplyHumanLongDouble` sends them (bulk strings in RESP2, doubles in RESP3). A result past
//! the type's limits counts as out of bounds (`[current, 0]`, or clamped with SATURATE), as
//! Redis 8.8 documents.

use bytes::Bytes;

use super::command::{arity_error, expiry_arg, int_arg, syntax};
use super::reply::Reply;
use crate::engine::{Expiry, IncrEx, IncrExFloat, Throttle, TtlChange, Tx};
use crate::error::{Error, Result};
use crate::value::is_float;

/// CL.THROTTLE's longest form: name, key, max_burst, count, period, quantity.
const THROTTLE_MAX_ARGS: usize = 6;
/// CL.THROTTLE's period unit, in the engine's ms.
const MS_PER_S: i64 = 1000;

/// A parsed CL.THROTTLE or INCREX.
#[derive(Debug)]
pub enum Cmd {
    Throttle(Bytes, Throttle),
    IncrEx(Bytes, IncrEx),
    IncrExFloat(Bytes, IncrExFloat),
}

/// Parses `cl.throttle` or `increx` (`args[0]`; arity already checked against the table).
/// `Ok(None)` for any other name.
pub fn prepare(name: &str, args: &[Bytes]) -> std::result::Result<Option<Cmd>, Reply> {
    Ok(Some(match name {
        "cl.throttle" => throttle(args)?,
        "increx" => increx(args)?,
        _ => return Ok(None),
    }))
}

fn throttle(args: &[Bytes]) -> std::result::Result<Cmd, Reply> {
    if args.len() > THROTTLE_MAX_ARGS {
        return Err(arity_error("cl.throttle"));
    }
    let t = Throttle {
        max_burst: int_arg(&args[2])?,
        count_per_period: int_arg(&args[3])?,
        // Saturating: a period too long in ms stays too long, and the engine says so; a
        // period <= 0 stays <= 0.
        period_ms: int_arg(&args[4])?.saturating_mul(MS_PER_S),
        quantity: args.get(5).map_or(Ok(1), |q| int_arg(q))?,
    };
    Ok(Cmd::Throttle(args[1].clone(), t))
}

/// Whole seconds, rounded up as redis-cell rounds its replies; -1 stays -1 ("not limited").
fn seconds(ms: i64) -> i64 {
    if ms < 0 {
        return -1;
    }
    ms / MS_PER_S + i64::from(ms % MS_PER_S != 0)
}

/// BYINT's or BYFLOAT's increment as given.
enum By {
    Int(i64),
    Float(Vec<u8>),
}

/// A Redis float argument (`string2ld`), or `value is not a valid float`.
fn float_arg(b: &Bytes) -> std::result::Result<Vec<u8>, Reply> {
    if is_float(b) {
        Ok(b.to_vec())
    } else {
        Err(Reply::from(Error::NotFloat))
    }
}

fn increx(args: &[Bytes]) -> std::result::Result<Cmd, Reply> {
    let mut by = None;
    let (mut lower, mut upper) = (None, None);
    let (mut saturate, mut persist, mut enx) = (false, false, false);
    let mut expiry: Option<Expiry> = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_lowercase();
        // Flags take one argument; an option with a value two, may come once, and not last.
        i += match (opt.as_slice(), args.get(i + 1)) {
            (b"saturate", _) => {
                saturate = true;
                1
            }
            (b"enx", _) => {
                enx = true;
                1
            }
            (b"persist", _) if expiry.is_none() => {
                persist = true;
                1
            }
            (b"byint", Some(v)) if by.is_none() => {
                by = Some(By::Int(int_arg(v)?));
                2
            }
            (b"byfloat", Some(v)) if by.is_none() => {
                by = Some(By::Float(float_arg(v)?));
                2
            }
            (b"lbound", Some(v)) if lower.is_none() => {
                lower = Some(v);
                2
            }
            (b"ubound", Some(v)) if upper.is_none() => {
                upper = Some(v);
                2
            }
            (b"ex" | b"px" | b"exat" | b"pxat", Some(v)) if expiry.is_none() && !persist => {
                let (seconds, absolute) = (opt[0] == b'e', opt.ends_with(b"at"));
                expiry = Some(expiry_arg(v, seconds, absolute, "increx").map_err(Reply::from)?);
                2
            }
            _ => return Err(syntax()),
        };
    }
    let ttl = match (expiry, persist, enx) {
        (Some(e), _, false) => TtlChange::Set(e),
        (Some(e), _, true) => TtlChange::SetIfNone(e),
        // ENX sets an expiry only if there is one to set.
        (None, _, true) => return Err(syntax()),
        (None, true, false) => TtlChange::Persist,
        (None, false, false) => TtlChange::Keep,
    };
    let key = args[1].clone();
    Ok(match by {
        Some(By::Float(by)) => Cmd::IncrExFloat(
            key,
            IncrExFloat {
                by,
                lower: lower.map(float_arg).transpose()?,
                upper: upper.map(float_arg).transpose()?,
                saturate,
                ttl,
            },
        ),
        by => Cmd::IncrEx(
            key,
            IncrEx {
                by: match by {
                    Some(By::Int(n)) => n,
                    _ => 1,
                },
                lower: lower.map(|b| int_arg(b)).transpose()?,
                upper: upper.map(|b| int_arg(b)).transpose()?,
                saturate,
                // Redis 8.8: past int64 is past a bound, `[current, 0]`.
                refuse_overflow: true,
                ttl,
            },
        ),
    })
}

impl Cmd {
    /// The one key the command touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Cmd::Throttle(k, _) | Cmd::IncrEx(k, _) | Cmd::IncrExFloat(k, _) => k,
        }
    }

    /// Runs the command in `tx`.
    pub fn exec(&self, tx: &mut Tx<'_>) -> Result<Reply> {
        Ok(match self {
            Cmd::Throttle(k, t) => {
                let o = tx.throttle(k, t)?;
                Reply::Array(vec![
                    Reply::Int(i64::from(o.limited)),
                    Reply::Int(o.limit),
                    Reply::Int(o.remaining),
                    Reply::Int(seconds(o.retry_after_ms)),
                    Reply::Int(seconds(o.reset_after_ms)),
                ])
            }
            Cmd::IncrEx(k, req) => {
                let o = tx.increx(k, req)?;
                Reply::Array(vec![Reply::Int(o.value), Reply::Int(o.applied)])
            }
            Cmd::IncrExFloat(k, req) => {
                let o = tx.increx_float(k, req)?;
                Reply::Array(vec![Reply::Double(o.value), Reply::Double(o.applied)])
            }
        })
    }
}
