//! Engine results to response messages (shared by the unary calls and `Txn`), and a `Txn`
//! request to the engine's [`Txn`]: each op is checked by the same function as its unary call,
//! and a bad one is named by its place (`success[2]`).

use super::{pb, validate};
use crate::engine::{
    Compare, CompareOp, IncrExOutcome, SetOutcome, Target, ThrottleOutcome, Txn, TxnOp, TxnOutcome,
    TxnResult,
};
use crate::error::{Error, Result};

/// A stored value for a `string` field, and its exact bytes for the `bytes` field beside it when
/// it is not valid UTF-8 (a binary value written over RESP); those are empty otherwise.
pub fn text(v: Vec<u8>) -> (String, Vec<u8>) {
    match String::from_utf8(v) {
        Ok(s) => (s, Vec::new()),
        Err(e) => {
            let b = e.into_bytes();
            (String::from_utf8_lossy(&b).into_owned(), b)
        }
    }
}

pub fn incr_response(out: IncrExOutcome) -> pb::IncrResponse {
    pb::IncrResponse {
        value: out.value,
        applied: out.applied,
        ttl_ms: out.ttl_ms,
    }
}

pub fn incr_by_float_response(v: Vec<u8>) -> pb::IncrByFloatResponse {
    pb::IncrByFloatResponse {
        value: String::from_utf8_lossy(&v).into_owned(),
    }
}

pub fn throttle_response(o: ThrottleOutcome) -> pb::ThrottleResponse {
    pb::ThrottleResponse {
        limited: o.limited,
        limit: o.limit,
        remaining: o.remaining,
        retry_after_ms: o.retry_after_ms,
        reset_after_ms: o.reset_after_ms,
    }
}

pub fn get_response(v: Option<Vec<u8>>) -> pb::GetResponse {
    match v {
        Some(v) => {
            let (value, value_bytes) = text(v);
            pb::GetResponse {
                found: true,
                value,
                value_bytes,
            }
        }
        None => pb::GetResponse::default(),
    }
}

pub fn set_response(out: SetOutcome) -> pb::SetResponse {
    let (old_value, old_value_bytes) = match out.old.map(text) {
        Some((s, b)) => (Some(s), b),
        None => (None, Vec::new()),
    };
    pb::SetResponse {
        applied: out.applied,
        old_value,
        old_value_bytes,
    }
}

fn compare(c: &pb::Compare) -> Result<Compare> {
    let op = match pb::compare::Operator::try_from(c.op) {
        Ok(pb::compare::Operator::Equal) => CompareOp::Equal,
        Ok(pb::compare::Operator::NotEqual) => CompareOp::NotEqual,
        Ok(pb::compare::Operator::Greater) => CompareOp::Greater,
        Ok(pb::compare::Operator::Less) => CompareOp::Less,
        Err(_) => {
            return Err(Error::InvalidArgument(format!("unknown operator {}", c.op)));
        }
    };
    let target = match &c.target {
        Some(pb::compare::Target::IntValue(n)) => Target::Int(*n),
        Some(pb::compare::Target::Value(v)) => Target::Value(v.as_bytes().to_vec()),
        Some(pb::compare::Target::Exists(b)) => Target::Exists(*b),
        None => {
            return Err(Error::InvalidArgument(
                "one of int_value, value or exists is required".into(),
            ));
        }
    };
    Ok(Compare {
        key: validate::key(&c.key)?.to_vec(),
        op,
        target,
    })
}

fn op(o: &pb::Op) -> Result<TxnOp> {
    use pb::op::Op as P;
    let id = match &o.op {
        Some(P::Incr(r)) => &r.request_id,
        Some(P::IncrByFloat(r)) => &r.request_id,
        Some(P::Set(r)) => &r.request_id,
        Some(P::Delete(r)) => &r.request_id,
        Some(P::Expire(r)) => &r.request_id,
        Some(P::Get(_)) | None => &None,
    };
    if id.is_some() {
        return Err(Error::InvalidArgument(
            "request_id is not allowed on an op inside a Txn; give it on the TxnRequest".into(),
        ));
    }
    Ok(match &o.op {
        Some(P::Incr(r)) => {
            let (k, req) = validate::incr(r)?;
            TxnOp::Incr(k.to_vec(), req)
        }
        Some(P::IncrByFloat(r)) => {
            let (k, by) = validate::incr_by_float(r)?;
            TxnOp::IncrByFloat(k.to_vec(), by.to_vec())
        }
        Some(P::Set(r)) => {
            let (k, v, opts) = validate::set(r)?;
            TxnOp::Set(k.to_vec(), v.to_vec(), opts)
        }
        Some(P::Delete(r)) => TxnOp::Delete(validate::delete(r)?),
        Some(P::Expire(r)) => {
            let (k, when, cond) = validate::expire(r)?;
            TxnOp::Expire(k.to_vec(), when, cond)
        }
        Some(P::Get(r)) => TxnOp::Get(validate::key_only(r, &r.key)?.to_vec()),
        None => return Err(Error::InvalidArgument("an op must name its kind".into())),
    })
}

/// The engine's Txn for `r`; the caller has checked the request's size.
pub fn txn(r: &pb::TxnRequest) -> Result<Txn> {
    let branch = |ops: &[pb::Op], name: &str| -> Result<Vec<TxnOp>> {
        ops.iter()
            .enumerate()
            .map(|(i, o)| op(o).map_err(Error::at(format!("{name}[{i}]"))))
            .collect()
    };
    let txn = Txn {
        compare: (r.compare.iter().enumerate())
            .map(|(i, c)| compare(c).map_err(Error::at(format!("compare[{i}]"))))
            .collect::<Result<_>>()?,
        success: branch(&r.success, "success")?,
        failure: branch(&r.failure, "failure")?,
    };
    txn.validate()?;
    Ok(txn)
}

/// The response for what a Txn did.
pub fn txn_response(out: TxnOutcome) -> pb::TxnResponse {
    use pb::op_result::Result as R;
    let results = out
        .results
        .into_iter()
        .map(|r| pb::OpResult {
            result: Some(match r {
                TxnResult::Incr(o) => R::Incr(incr_response(o)),
                TxnResult::IncrByFloat(v) => R::IncrByFloat(incr_by_float_response(v)),
                TxnResult::Set(o) => R::Set(set_response(o)),
                TxnResult::Delete(n) => R::Delete(pb::DeleteResponse { deleted: n }),
                TxnResult::Expire(applied) => R::Expire(pb::ExpireResponse { applied }),
                TxnResult::Get(v) => R::Get(get_response(v)),
            }),
        })
        .collect();
    pb::TxnResponse {
        succeeded: out.succeeded,
        results,
    }
}
