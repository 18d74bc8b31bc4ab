//! [`Tx`]: the context every command runs in. It holds the stripe locks of the command's keys
//! (taken by [`Engine::run`]), one frozen "now", and the ops produced so far. Reads see those ops
//! first, so a MULTI/EXEC of several commands behaves as if they ran one after another, yet the
//! whole group becomes one WAL record, applied atomically, with time frozen (as Redis 7 does).
//!
//! Every command validates before it records an op: a command that fails adds nothing, so a
//! failing command inside EXEC does not leave half of itself behind.

use std::cell::Cell;

use super::expire::Expiry;
use super::{Engine, SetOptions, SetOutcome};
use crate::config;
use crate::error::{Error, Result};
use crate::storage::{Entry, Store};
use crate::value;
use crate::wal::Op;

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
    store: &'e Store,
    now: i64,
    pub(super) ops: Vec<Op>,
    /// Value bytes returned so far, against `config::MAX_REPLY_BYTES`.
    reply_bytes: Cell<usize>,
}

impl<'e> Tx<'e> {
    pub(super) fn new(engine: &'e Engine, now: i64) -> Tx<'e> {
        Tx {
            store: &engine.store,
            now,
            ops: Vec::new(),
            reply_bytes: Cell::new(0),
        }
    }

    /// Counts `value` against the reply limit of this command or transaction.
    fn returning(&self, value: Vec<u8>) -> Result<Vec<u8>> {
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
    fn physical(&self, key: &[u8]) -> Result<Option<Entry>> {
        for op in self.ops.iter().rev() {
            match op {
                Op::Put {
                    key: k,
                    value,
                    deadline_ms,
                } if k == key => {
                    return Ok(Some(Entry {
                        value: value.clone(),
                        deadline_ms: *deadline_ms,
                    }));
                }
                Op::Delete { key: k } if k == key => return Ok(None),
                _ => {}
            }
        }
        self.store.get(key)
    }

    /// The live entry: missing from the millisecond after its deadline.
    pub fn entry(&self, key: &[u8]) -> Result<Option<Entry>> {
        Ok(self
            .physical(key)?
            .filter(|e| e.deadline_ms.is_none_or(|d| self.now <= d)))
    }

    fn put(&mut self, key: &[u8], value: Vec<u8>, deadline_ms: Option<i64>) {
        self.ops.push(Op::Put {
            key: key.to_vec(),
            value,
            deadline_ms,
        });
    }

    /// Removes the key physically if it is there (live or expired).
    fn remove(&mut self, key: &[u8]) -> Result<()> {
        if self.physical(key)?.is_some() {
            self.ops.push(Op::Delete { key: key.to_vec() });
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
            _ => {
                self.put(key, value, deadline_ms);
                Ok(())
            }
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
        let cur = self.entry(key)?;
        let v = value::incr(cur.as_ref().map(|e| e.value.as_slice()), by)?;
        self.put(key, value::format_int(v), cur.and_then(|e| e.deadline_ms));
        Ok(v)
    }

    /// INCRBYFLOAT: keeps the TTL; a missing key counts as 0.
    pub fn incr_by_float(&mut self, key: &[u8], by: &[u8]) -> Result<Vec<u8>> {
        let cur = self.entry(key)?;
        let v = value::incr_by_float(cur.as_ref().map(|e| e.value.as_slice()), by)?;
        config::check_value(&v)?;
        self.put(key, v.clone(), cur.and_then(|e| e.deadline_ms));
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
                    self.put(key, value.clone(), None);
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
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].contains(k) {
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
            self.put(k, v.to_vec(), None);
        }
        Ok(())
    }
}
