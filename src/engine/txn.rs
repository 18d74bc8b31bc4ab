//! Compare-and-swap transactions, after etcd's Txn: compares on keys, then one list of ops if
//! all of them hold and another if not, run as one [`Engine::run`]: under the stripe locks of
//! every key named, with time frozen, later ops seeing earlier ones, and every change in one
//! WAL record, so a Txn is all there or all absent after a crash. An op that fails fails the
//! whole Txn (its error names the op) and nothing is applied.
//!
//! How compares read a key (an expired key is missing):
//! - `Exists(b)`: whether the key exists; only `Equal` and `NotEqual`.
//! - `Int(n)`: the value as a Redis integer; a missing key counts as 0 (as for Incr); a value
//!   that is not an integer fails the Txn with `NotInteger`, as Incr would.
//! - `Value(bytes)`: the stored bytes, compared bytewise (lexicographically); a missing key
//!   counts as the empty string (tell the two apart with `Exists`).

use std::cmp::Ordering;

use super::{Ack, Condition, Engine, Expiry, IncrEx, IncrExOutcome, SetOptions, SetOutcome, Tx};
use crate::error::{Error, Result};
use crate::value;

/// Most compares and ops (both branches) in one Txn.
pub const MAX_TXN_ITEMS: usize = 1000;

/// A compare's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What a compare checks the key against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Int(i64),
    Value(Vec<u8>),
    Exists(bool),
}

/// One compare: `key op target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: Target,
}

/// One op of a branch.
#[derive(Debug, Clone)]
pub enum TxnOp {
    Incr(Vec<u8>, IncrEx),
    IncrByFloat(Vec<u8>, Vec<u8>),
    Set(Vec<u8>, Vec<u8>, SetOptions),
    Delete(Vec<Vec<u8>>),
    Expire(Vec<u8>, Expiry, Condition),
    Get(Vec<u8>),
}

impl TxnOp {
    fn keys(&self) -> Vec<&[u8]> {
        match self {
            TxnOp::Incr(k, _)
            | TxnOp::IncrByFloat(k, _)
            | TxnOp::Set(k, ..)
            | TxnOp::Expire(k, ..)
            | TxnOp::Get(k) => vec![k],
            TxnOp::Delete(ks) => ks.iter().map(Vec::as_slice).collect(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            TxnOp::Incr(..) => "incr",
            TxnOp::IncrByFloat(..) => "incr_by_float",
            TxnOp::Set(..) => "set",
            TxnOp::Delete(..) => "delete",
            TxnOp::Expire(..) => "expire",
            TxnOp::Get(..) => "get",
        }
    }

    fn run(&self, tx: &mut Tx<'_>) -> Result<TxnResult> {
        Ok(match self {
            TxnOp::Incr(k, req) => TxnResult::Incr(tx.increx(k, req)?),
            TxnOp::IncrByFloat(k, by) => TxnResult::IncrByFloat(tx.incr_by_float(k, by)?),
            TxnOp::Set(k, v, opts) => TxnResult::Set(tx.set(k, v, opts, "set")?),
            TxnOp::Delete(ks) => {
                let ks: Vec<&[u8]> = ks.iter().map(Vec::as_slice).collect();
                TxnResult::Delete(tx.delete(&ks)?)
            }
            TxnOp::Expire(k, when, cond) => {
                TxnResult::Expire(tx.expire(k, *when, *cond, "expire")?)
            }
            TxnOp::Get(k) => TxnResult::Get(tx.get(k)?),
        })
    }
}

/// What one op returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnResult {
    Incr(IncrExOutcome),
    IncrByFloat(Vec<u8>),
    Set(SetOutcome),
    Delete(i64),
    Expire(bool),
    Get(Option<Vec<u8>>),
}

/// A whole transaction.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// What a Txn did: which branch ran, and its ops' results in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    pub succeeded: bool,
    pub results: Vec<TxnResult>,
}

impl Txn {
    /// Checks the shape: the item limit, and operators that fit their target.
    pub fn validate(&self) -> Result<()> {
        let n = self.compare.len() + self.success.len() + self.failure.len();
        if n > MAX_TXN_ITEMS {
            return Err(Error::InvalidArgument(format!(
                "{n} compares and ops in one Txn; the maximum is {MAX_TXN_ITEMS}"
            )));
        }
        for (i, c) in self.compare.iter().enumerate() {
            if matches!(c.target, Target::Exists(_))
                && matches!(c.op, CompareOp::Greater | CompareOp::Less)
            {
                return Err(Error::InvalidArgument(format!(
                    "compare[{i}]: an exists compare takes only EQUAL or NOT_EQUAL"
                )));
            }
        }
        Ok(())
    }
}

/// Evaluates one compare in `tx`.
fn holds(tx: &Tx<'_>, c: &Compare) -> Result<bool> {
    let cur = tx.entry(&c.key)?;
    let ord = match &c.target {
        Target::Exists(want) => cur.is_some().cmp(want),
        Target::Int(n) => value::stored_int(cur.as_ref().map(|e| e.value.as_slice()))?.cmp(n),
        Target::Value(want) => {
            let v: &[u8] = cur.as_ref().map_or(&[], |e| &e.value);
            v.cmp(want.as_slice())
        }
    };
    Ok(match c.op {
        CompareOp::Equal => ord == Ordering::Equal,
        CompareOp::NotEqual => ord != Ordering::Equal,
        CompareOp::Greater => ord == Ordering::Greater,
        CompareOp::Less => ord == Ordering::Less,
    })
}

impl Txn {
    /// Every key the Txn names (its stripe locks).
    pub fn keys(&self) -> Vec<&[u8]> {
        let mut keys: Vec<&[u8]> = self.compare.iter().map(|c| c.key.as_slice()).collect();
        for op in self.success.iter().chain(&self.failure) {
            keys.extend(op.keys());
        }
        keys
    }

    /// Runs the Txn (checked with [`Txn::validate`]) in `tx`, which must hold the stripes of
    /// [`Txn::keys`]: every compare, then the branch they choose.
    pub fn run(&self, tx: &mut Tx<'_>) -> Result<TxnOutcome> {
        // Every compare is evaluated (not just up to the first false one), so a compare on a
        // non-integer value fails the Txn whatever the order.
        let mut succeeded = true;
        for (i, c) in self.compare.iter().enumerate() {
            succeeded &= holds(tx, c).map_err(Error::at(format!("compare[{i}]")))?;
        }
        let (branch, name) = if succeeded {
            (&self.success, "success")
        } else {
            (&self.failure, "failure")
        };
        let mut results = Vec::with_capacity(branch.len());
        for (i, op) in branch.iter().enumerate() {
            let r = op
                .run(tx)
                .map_err(Error::at(format!("{name}[{i}] ({})", op.name())))?;
            results.push(r);
        }
        Ok(TxnOutcome { succeeded, results })
    }
}

impl Engine {
    /// Runs `txn` atomically; see the module doc.
    pub fn txn(&self, txn: &Txn) -> Result<Ack<TxnOutcome>> {
        txn.validate()?;
        self.run(&txn.keys(), |tx| txn.run(tx))
    }
}
