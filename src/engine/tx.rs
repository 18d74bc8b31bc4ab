//! [`Tx`]: the context every command runs in. It holds the stripe locks of the command's keys
//! (taken by [`Engine::run`]), one frozen "now", and the ops produced so far. Reads see those ops
//! first, so a MULTI/EXEC of several commands behaves as if they ran one after another, yet the
//! whole group becomes one WAL record, applied atomically, with time frozen (as Redis 7 does).
//!
//! Every command validates before it records an op: a command that fails adds nothing, so a
//! failing command inside EXEC does not leave half of itself behind.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use super::expire::Expiry;
use super::{Engine, SetOptions, SetOutcome};
use crate::config;
use crate::error::{Error, Result};
use crate::storage::{Entry, Store};
use crate::value;
use crate::wal::{Op, record};

/// What GETEX does to the TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetEx {
    /// Leave it.
    Keep,
    /// Remove it (PERSIST).
    Persist,
    /// Set it (EX/PX/EXAT/PXAT).
    Expire(Expiry),
}

/// A command's view of the store; see the module doc.
pub struct Tx<'e> {
    pub(super) store: &'e Store,
    /// SCAN's cursors (module `keyspace`).
    pub(super) cursors: &'e super::keyspace::Cursors,
    now: i64,
    pub(super) ops: Vec<Op>,
    /// Key -> index in `ops` of its last op, once there are more than [`SCAN_OPS`] ops, so a
    /// transaction of n commands reads its own writes in O(n), not O(n²).
    last_op: Option<HashMap<Vec<u8>, usize>>,
    /// Encoded size of `ops`, against `record::MAX_BODY`.
    ops_bytes: usize,
    /// The record size an op was refused at for outgrowing one record: the whole transaction
    /// must fail.
    pub(super) too_large: Option<usize>,
    /// Value bytes returned so far, against `config::MAX_REPLY_BYTES`.
    reply_bytes: Cell<usize>,
    /// Runs alone (`Engine::run_exclusive`): only then may it clear the keyspace.
    pub(super) exclusive: bool,
    /// A clear is among `ops` (every key before it is gone).
    cleared: bool,
}

/// Up to this many ops, a key's own latest op is found by scanning them (no hashing, no
/// allocation: the common one-command case).
const SCAN_OPS: usize = 16;

impl<'e> Tx<'e> {
    pub(super) fn new(engine: &'e Engine, now: i64) -> Tx<'e> {
        Tx {
            store: &engine.store,
            cursors: &engine.cursors,
            now,
            ops: Vec::new(),
            last_op: None,
            ops_bytes: 0,
            too_large: None,
            reply_bytes: Cell::new(0),
            exclusive: false,
            cleared: false,
        }
    }

    /// Counts `value` against the reply limit of this command or transaction.
    pub(super) fn returning(&self, value: Vec<u8>) -> Result<Vec<u8>> {
        let total = self.reply_bytes.get() + value.len();
        if total > config::MAX_REPLY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "reply too large: this command or transaction would return more than {} bytes \
                 of values; read fewer keys at once",
                config::MAX_REPLY_BYTES
            )));
        }
        self.reply_bytes.set(total);
        Ok(value)
    }

    /// The frozen time of this command or transaction, unix ms.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The entry as stored, expired or not, after this transaction's own ops.
    /// Once an op has been refused for outgrowing one record the whole transaction fails, so
    /// every later command fails at once too, without copying values it would never write.
    fn physical(&self, key: &[u8]) -> Result<Option<Entry>> {
        if let Some(n) = self.too_large {
            return Err(record::too_large(n));
        }
        let last = match &self.last_op {
            Some(index) => match index.get(key) {
                Some(&i) => Some(&self.ops[i]),
                None if self.cleared => return Ok(None),
                None => None,
            },
            None => self
                .ops
                .iter()
                .rev()
                .find(|op| op.is_clear() || (!op.is_request() && op.key() == key)),
        };
        match last {
            Some(Op::Clear) => Ok(None),
            Some(Op::Put {
                value, deadline_ms, ..
            }) => Ok(Some(Entry {
                value: value.clone(),
                deadline_ms: *deadline_ms,
            })),
            Some(Op::Delete { .. }) => Ok(None),
            Some(Op::Request { .. }) | None => self.store.get(key),
        }
    }

    /// FLUSHDB / FLUSHALL: every key goes, as one op (request ids stay). Only in a
    /// transaction that runs alone; and not before the startup census is done, while writes
    /// still reach sled directly (a clear there could not wait for the WAL).
    pub fn clear(&mut self) -> Result<()> {
        if !self.exclusive {
            return Err(Error::InvalidArgument(
                "internal: a clear must run alone (Engine::run_exclusive)".into(),
            ));
        }
        if !self.store.table_enabled() {
            return Err(Error::Unavailable(
                "FLUSHDB waits for the startup key census to finish; retry in a moment".into(),
            ));
        }
        self.count_bytes(&Op::Clear)?;
        if let Some(index) = &mut self.last_op {
            index.clear();
        }
        self.cleared = true;
        self.ops.push(Op::Clear);
        Ok(())
    }

    /// Records `op`, keeping the index of last ops once there are many. Refuses it when the
    /// ops would no longer fit one WAL record: EXPIREs or PERSISTs copy whole values into
    /// their ops, so a small request could otherwise build far more in memory than the WAL
    /// then refuses (`record::check_size`).
    fn record(&mut self, op: Op) -> Result<()> {
        self.count_bytes(&op)?;
        if let Some(index) = &mut self.last_op {
            index.insert(op.key().to_vec(), self.ops.len());
        }
        self.ops.push(op);
        if self.last_op.is_none() && self.ops.len() > SCAN_OPS {
            // Only what follows the last clear: keys before it are gone.
            let from = self.ops.iter().rposition(Op::is_clear).map_or(0, |i| i + 1);
            let index = self.ops[from..]
                .iter()
                .enumerate()
                .map(|(i, op)| (op.key().to_vec(), from + i))
                .collect();
            self.last_op = Some(index);
        }
        Ok(())
    }

    /// True once this command or transaction has changed something (SCRIPT KILL's test).
    pub fn wrote(&self) -> bool {
        self.ops.iter().any(|op| !op.is_request())
    }

    /// The ops produced so far (`dedupe` keeps a copy with a request id).
    pub(super) fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Adds a request-id op (last, after the command's own ops), counted against the record
    /// size like any op.
    pub(super) fn remember(&mut self, op: Op) -> Result<()> {
        self.count_bytes(&op)?;
        self.ops.push(op);
        Ok(())
    }

    /// Counts `op` against the record limit, refusing it when the ops would no longer fit one
    /// WAL record. The refusal is remembered, so that the whole command or EXEC fails (see
    /// `Engine::run`), not just the command that crossed the limit.
    fn count_bytes(&mut self, op: &Op) -> Result<()> {
        self.ops_bytes += op.encoded_len();
        let body = record::body_len(&[]) + self.ops_bytes;
        if body > record::MAX_BODY {
            self.too_large = Some(body);
            return Err(record::too_large(body));
        }
        Ok(())
    }

    /// The live entry: missing from the millisecond after its deadline.
    pub fn entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(self
            .physical(key)?
            .filter(|e| e.deadline_ms.is_none_or(|d| self.now <= d)))
    }

    pub(super) fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        deadline_ms: Option<i64>,
    ) -> Result<()> {
        self.record(Op::Put {
            key: key.to_vec(),
            value,
            deadline_ms,
        })
    }

    /// Removes the key physically if it is there (live or expired).
    pub(super) fn remove(&mut self, key: &[u8]) -> Result<()> {
        if self.physical(key)?.is_some() {
            self.record(Op::Delete { key: key.to_vec() })?;
        }
        Ok(())
    }

    /// Stores `value` with `deadline_ms`, or removes the key if that deadline has passed.
    pub(super) fn store_or_expire(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        deadline_ms: Option<i64>,
    ) -> Result<()> {
        match deadline_ms {
            Some(d) if d <= self.now => self.remove(key),
            _ => self.put(key, value, deadline_ms),
        }
    }

    /// GET.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.entry(key)?
            .map(|e| self.returning(e.value))
            .transpose()
    }

    /// INCRBY: keeps the TTL; a missing key counts as 0.
    pub fn incr(&mut self, key: &[u8], by: i64) -> Result<i64> {
        // INCREX without bounds or TTL change is exactly INCRBY.
        Ok(self.increx(key, &super::IncrEx::by(by))?.value)
    }

    /// INCRBYFLOAT: keeps the TTL; a missing key counts as 0.
    pub fn incr_by_float(&mut self, key: &[u8], by: &[u8]) -> Result<Vec<u8>> {
        let cur = self.entry(key)?;
        let v = value::incr_by_float(cur.as_ref().map(|e| e.value.as_slice()), by)?;
        config::check_value(&v)?;
        self.put(key, v.clone(), cur.and_then(|e| e.deadline_ms))?;
        Ok(v)
    }

    /// SET with options; see [`SetOptions`]. `cmd` names the command in an expiry error
    /// (`set`, `setex`, `psetex`, …).
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        opts: &SetOptions,
        cmd: &'static str,
    ) -> Result<SetOutcome> {
        config::check_value(value)?;
        if opts.nx && opts.xx {
            return Err(Error::InvalidArgument(
                "nx and xx cannot be combined".into(),
            ));
        }
        if opts.keep_ttl && opts.expiry.is_some() {
            return Err(Error::InvalidArgument(
                "keep_ttl cannot be combined with a TTL".into(),
            ));
        }
        let deadline = opts
            .expiry
            .map(|e| e.resolve_for_set(self.now, cmd))
            .transpose()?;
        let cur = self.entry(key)?;
        let exists = cur.is_some();
        let (old, cur_deadline) = match cur {
            Some(e) if opts.get => (Some(self.returning(e.value)?), e.deadline_ms),
            Some(e) => (None, e.deadline_ms),
            None => (None, None),
        };
        if (opts.nx && exists) || (opts.xx && !exists) {
            return Ok(SetOutcome {
                applied: false,
                old,
            });
        }
        let deadline_ms = if opts.keep_ttl {
            cur_deadline
        } else {
            deadline
        };
        // An EXAT/PXAT in the past is accepted: the reply is OK and the key is gone.
        self.store_or_expire(key, value.to_vec(), deadline_ms)?;
        Ok(SetOutcome { applied: true, old })
    }

    /// GETDEL.
    pub fn getdel(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v = self.get(key)?;
        if v.is_some() {
            self.remove(key)?;
        }
        Ok(v)
    }

    /// GETEX: a missing key gives `None` before the expiry is checked (as Redis).
    pub fn getex(&mut self, key: &[u8], what: GetEx) -> Result<Option<Vec<u8>>> {
        let Some(cur) = self.entry(key)? else {
            return Ok(None);
        };
        let value = self.returning(cur.value)?;
        match what {
            GetEx::Keep => {}
            GetEx::Persist => {
                if cur.deadline_ms.is_some() {
                    self.put(key, value.clone(), None)?;
                }
            }
            GetEx::Expire(e) => {
                let d = e.resolve_for_set(self.now, "getex")?;
                self.store_or_expire(key, value.clone(), Some(d))?;
            }
        }
        Ok(Some(value))
    }

    /// DEL: counts live keys, a key named twice once; expired ones are removed too.
    pub fn delete(&mut self, keys: &[&[u8]]) -> Result<i64> {
        let mut n = 0;
        let mut seen = HashSet::with_capacity(keys.len());
        for k in keys {
            if !seen.insert(*k) {
                continue;
            }
            n += i64::from(self.entry(k)?.is_some());
            self.remove(k)?;
        }
        Ok(n)
    }

    /// EXISTS: counts every argument, duplicates included.
    pub fn exists(&self, keys: &[&[u8]]) -> Result<i64> {
        let mut n = 0;
        for k in keys {
            n += i64::from(self.entry(k)?.is_some());
        }
        Ok(n)
    }

    /// MGET.
    pub fn mget(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// MSET: clears TTLs; the last value of a repeated key wins.
    pub fn mset(&mut self, pairs: &[(&[u8], &[u8])]) -> Result<()> {
        for (_, v) in pairs {
            config::check_value(v)?;
        }
        for (k, v) in pairs {
            self.put(k, v.to_vec(), None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::clock::SystemClock;
    use crate::config::Config;
    use crate::engine::{Engine, SetOptions};

    /// A transaction long enough to switch from scanning its ops to the index of last ops
    /// still reads its own writes exactly, across puts, deletes and re-puts of one key.
    #[test]
    fn a_long_transaction_reads_its_own_writes() {
        let d = tempfile::tempdir().unwrap();
        let e = Engine::open(Config::new(d.path()), Arc::new(SystemClock)).unwrap();
        let key = |i: usize| format!("k{}", i % 50).into_bytes();
        let keys: Vec<Vec<u8>> = (0..50).map(key).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let ack = e
            .run(&refs, |tx| {
                for i in 0..1000 {
                    assert_eq!(tx.incr(&key(i), 1)?, (i / 50 + 1) as i64);
                }
                assert_eq!(tx.delete(&[b"k0", b"k0", b"k1", b"nope"])?, 2);
                assert_eq!(tx.get(b"k0")?, None);
                tx.set(b"k0", b"x", &SetOptions::default(), "set")?;
                assert_eq!(tx.get(b"k0")?, Some(b"x".to_vec()));
                assert_eq!(tx.mget(&[b"k1", b"k2"])?, vec![None, Some(b"20".to_vec())]);
                Ok(())
            })
            .unwrap();
        e.wait(ack.lsn).unwrap();
        assert_eq!(e.get(b"k0").unwrap().value, Some(b"x".to_vec()));
        assert_eq!(e.get(b"k1").unwrap().value, None);
        assert_eq!(e.get(b"k49").unwrap().value, Some(b"20".to_vec()));
    }
}
