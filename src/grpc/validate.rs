//! Pure request checks: each returns the engine-ready arguments or an INVALID_ARGUMENT error
//! that names the limit.

use prost::Message;

use super::pb;
use crate::config::{self, MAX_KEYS_PER_REQUEST, MAX_REQUEST_BYTES};
use crate::engine::{Condition, Expiry, IncrEx, SetOptions, TtlChange};
use crate::error::{Error, Result};

fn size(req: &impl Message) -> Result<()> {
    let n = req.encoded_len();
    if n > MAX_REQUEST_BYTES {
        return Err(Error::InvalidArgument(format!(
            "request is {n} bytes; the maximum request size is {MAX_REQUEST_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A key must be non-empty and within `MAX_KEY_BYTES`.
pub fn key(k: &str) -> Result<&[u8]> {
    if k.is_empty() {
        return Err(Error::InvalidArgument("key must not be empty".into()));
    }
    config::check_key(k.as_bytes())?;
    Ok(k.as_bytes())
}

pub fn incr(r: &pb::IncrRequest) -> Result<(&[u8], IncrEx)> {
    size(r)?;
    let invalid = |m: &str| Err(Error::InvalidArgument(m.into()));
    let expiry = match (r.ttl_ms, r.at_unix_ms) {
        (0, 0) => None,
        (ms, 0) => Some(Expiry::In(ms)),
        (0, at) => Some(Expiry::At(at)),
        _ => return invalid("give ttl_ms or at_unix_ms, not both"),
    };
    let ttl = match (expiry, r.ttl_if_none, r.persist) {
        (Some(_), _, true) => {
            return invalid("persist cannot be combined with ttl_ms or at_unix_ms");
        }
        (None, true, _) => return invalid("ttl_if_none needs ttl_ms or at_unix_ms"),
        (Some(e), true, false) => TtlChange::SetIfNone(e),
        (Some(e), false, false) => TtlChange::Set(e),
        (None, false, true) => TtlChange::Persist,
        (None, false, false) => TtlChange::Keep,
    };
    let req = IncrEx {
        by: r.by.unwrap_or(1),
        lower: r.lower_bound,
        upper: r.upper_bound,
        saturate: r.saturate,
        // gRPC's contract: a result past int64 is OUT_OF_RANGE, as INCRBY.
        refuse_overflow: false,
        ttl,
    };
    req.validate()?;
    Ok((key(&r.key)?, req))
}

pub fn incr_by_float(r: &pb::IncrByFloatRequest) -> Result<(&[u8], &[u8])> {
    size(r)?;
    Ok((key(&r.key)?, r.by.as_bytes()))
}

pub fn set(r: &pb::SetRequest) -> Result<(&[u8], &[u8], SetOptions)> {
    size(r)?;
    let value = match (r.value.is_empty(), r.value_bytes.is_empty()) {
        (_, true) => r.value.as_bytes(),
        (true, false) => &r.value_bytes[..],
        (false, false) => {
            return Err(Error::InvalidArgument(
                "give the value in value or in value_bytes, not both".into(),
            ));
        }
    };
    config::check_value(value)?;
    let expiry = r.expiry.map(|e| match e {
        pb::set_request::Expiry::TtlMs(ms) => Expiry::In(ms),
        pb::set_request::Expiry::AtUnixMs(at) => Expiry::At(at),
    });
    let opts = SetOptions {
        expiry,
        keep_ttl: r.keep_ttl,
        nx: r.nx,
        xx: r.xx,
        get: r.get,
    };
    Ok((key(&r.key)?, value, opts))
}

pub fn expire(r: &pb::ExpireRequest) -> Result<(&[u8], Expiry, Condition)> {
    size(r)?;
    let when = match r.when {
        Some(pb::expire_request::When::TtlMs(ms)) => Expiry::In(ms),
        Some(pb::expire_request::When::AtUnixMs(at)) => Expiry::At(at),
        None => {
            return Err(Error::InvalidArgument(
                "one of ttl_ms or at_unix_ms is required".into(),
            ));
        }
    };
    let cond = match pb::Condition::try_from(r.condition) {
        Ok(pb::Condition::None) => Condition::None,
        Ok(pb::Condition::Nx) => Condition::Nx,
        Ok(pb::Condition::Xx) => Condition::Xx,
        Ok(pb::Condition::Gt) => Condition::Gt,
        Ok(pb::Condition::Lt) => Condition::Lt,
        Err(_) => {
            return Err(Error::InvalidArgument(format!(
                "unknown condition {}",
                r.condition
            )));
        }
    };
    Ok((key(&r.key)?, when, cond))
}

/// A request that names one key and nothing else (Ttl, Persist).
pub fn key_only<'a>(r: &impl Message, k: &'a str) -> Result<&'a [u8]> {
    size(r)?;
    key(k)
}

pub fn delete(r: &pb::DeleteRequest) -> Result<Vec<Vec<u8>>> {
    size(r)?;
    if r.keys.len() > MAX_KEYS_PER_REQUEST {
        return Err(Error::InvalidArgument(format!(
            "{} keys in one request; the maximum is {MAX_KEYS_PER_REQUEST}",
            r.keys.len()
        )));
    }
    r.keys.iter().map(|k| key(k).map(<[u8]>::to_vec)).collect()
}

pub fn txn(r: &pb::TxnRequest) -> Result<crate::engine::Txn> {
    size(r)?;
    super::convert::txn(r)
}

pub fn throttle(r: &pb::ThrottleRequest) -> Result<(&[u8], crate::engine::Throttle)> {
    size(r)?;
    let t = crate::engine::Throttle {
        max_burst: r.max_burst,
        count_per_period: r.count_per_period,
        period_ms: r.period_ms,
        quantity: r.quantity.unwrap_or(1),
    };
    Ok((key(&r.key)?, t))
}
