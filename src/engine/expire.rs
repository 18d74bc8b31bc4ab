//! Expiry: EXPIRE/TTL/PERSIST semantics and the sweep step, in absolute unix milliseconds.
//!
//! A deadline is stored with the value and written in the same WAL record as the write that
//! sets it, so it survives restarts as an absolute time: downtime counts. A key is missing for
//! every operation from the millisecond after its deadline (lazy expiry); the sweeper
//! (`crate::expiry`) removes it physically through [`Engine::sweep`], which logs a Delete like any
//! client write and re-checks the deadline under the key's lock when it applies.

use super::{Ack, Engine, Tx};
use crate::error::{Error, Result};
use crate::wal::Op;

/// When a TTL ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This many milliseconds from now (EXPIRE/PEXPIRE, SET EX/PX).
    In(i64),
    /// At this unix time in milliseconds (EXPIREAT/PEXPIREAT, SET EXAT/PXAT).
    At(i64),
}

impl Expiry {
    /// The absolute deadline for EXPIRE-family commands: any value, but `now + ms` must not
    /// overflow (Redis: `ms > LLONG_MAX - now` is an error). `cmd` names the command in the error.
    pub fn resolve_for_expire(self, now: i64, cmd: &'static str) -> Result<i64> {
        match self {
            Expiry::In(ms) => now.checked_add(ms).ok_or(Error::InvalidExpireTime(cmd)),
            Expiry::At(at) => Ok(at),
        }
    }

    /// The absolute deadline for SET/GETEX: the argument must be positive, and `now + ms` must
    /// not overflow.
    pub fn resolve_for_set(self, now: i64, cmd: &'static str) -> Result<i64> {
        match self {
            Expiry::In(ms) if ms > 0 => now.checked_add(ms).ok_or(Error::InvalidExpireTime(cmd)),
            Expiry::At(at) if at > 0 => Ok(at),
            _ => Err(Error::InvalidExpireTime(cmd)),
        }
    }
}

/// EXPIRE's NX/XX/GT/LT (Redis 7). "No TTL" counts as an infinite deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    /// Always.
    #[default]
    None,
    /// Only if the key has no TTL.
    Nx,
    /// Only if the key has a TTL.
    Xx,
    /// Only if the new deadline is later (never for a key without TTL).
    Gt,
    /// Only if the new deadline is earlier (always for a key without TTL).
    Lt,
    /// LT and XX together: only a key that has a TTL, and only to an earlier deadline.
    /// (GT with XX needs no variant: GT already never applies to a key without TTL.)
    LtXx,
}

impl Condition {
    fn allows(self, current: Option<i64>, new: i64) -> bool {
        match self {
            Condition::None => true,
            Condition::Nx => current.is_none(),
            Condition::Xx => current.is_some(),
            Condition::Gt => current.is_some_and(|c| new > c),
            Condition::Lt => current.is_none_or(|c| new < c),
            Condition::LtXx => current.is_some_and(|c| new < c),
        }
    }
}

/// A key's TTL as Redis's PTTL/PEXPIRETIME see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist (or has expired): -2.
    Missing,
    /// The key has no TTL: -1.
    Persistent,
    /// The key expires at `deadline_ms`, `remaining_ms` from now.
    Expires { deadline_ms: i64, remaining_ms: i64 },
}

impl Tx<'_> {
    /// PEXPIRE/PEXPIREAT with a condition; see [`Engine::expire`]. `cmd` names the command in
    /// the overflow error.
    pub fn expire(
        &mut self,
        key: &[u8],
        when: Expiry,
        cond: Condition,
        cmd: &'static str,
    ) -> Result<bool> {
        // Checked before the key is looked at, as Redis does: an overflow errs even on a missing key.
        let deadline = when.resolve_for_expire(self.now(), cmd)?;
        let Some(cur) = self.entry(key)? else {
            return Ok(false);
        };
        if !cond.allows(cur.deadline_ms, deadline) {
            return Ok(false);
        }
        self.store_or_expire(key, cur.value, Some(deadline))?;
        Ok(true)
    }

    /// PTTL and PEXPIRETIME in one answer.
    pub fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        Ok(match self.entry(key)? {
            None => Ttl::Missing,
            Some(e) => match e.deadline_ms {
                None => Ttl::Persistent,
                Some(d) => Ttl::Expires {
                    deadline_ms: d,
                    remaining_ms: (d - self.now()).max(0),
                },
            },
        })
    }

    /// PERSIST: removes the TTL; false if the key is missing or has none.
    pub fn persist(&mut self, key: &[u8]) -> Result<bool> {
        match self.entry(key)? {
            Some(e) if e.deadline_ms.is_some() => {
                self.store_or_expire(key, e.value, None)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl Engine {
    /// Redis PEXPIRE/PEXPIREAT with a condition. Returns whether the TTL was set; a deadline at or
    /// before now deletes the key (and counts as set). A missing key gives false.
    pub fn expire(&self, key: &[u8], when: Expiry, cond: Condition) -> Result<Ack<bool>> {
        self.run(&[key], |tx| tx.expire(key, when, cond, "expire"))
    }

    /// Redis PTTL and PEXPIRETIME in one answer.
    pub fn ttl(&self, key: &[u8]) -> Result<Ack<Ttl>> {
        self.run(&[key], |tx| tx.ttl(key))
    }

    /// Redis PERSIST.
    pub fn persist(&self, key: &[u8]) -> Result<Ack<bool>> {
        self.run(&[key], |tx| tx.persist(key))
    }

    /// One sweep step: removes up to `limit` keys whose deadline has passed, as one logged
    /// record, and drops index entries that no longer match their key. Each key's deadline is
    /// re-checked under its lock, since a client may have given it a new TTL or persisted it
    /// after the index was read. Returns the number of keys removed.
    pub fn sweep(&self, limit: usize) -> Result<usize> {
        let now = self.clock.now_ms();
        let due = self.store.due(now, limit)?;
        if due.is_empty() {
            return Ok(0);
        }
        let _g = self.lock_keys(due.iter().map(|(k, _)| k.as_slice()))?;
        let mut ops = Vec::with_capacity(due.len());
        for (key, d) in &due {
            match self.store.get(key)?.and_then(|e| e.deadline_ms) {
                Some(cur) if cur == *d && now > cur => ops.push(Op::Delete { key: key.clone() }),
                // The key's TTL changed (or it is gone): the entry is stale, not the key.
                Some(cur) if cur == *d => {}
                // With appends paused, as every other write to sled (see `storage::table`).
                _ => self
                    .wal
                    .with_appends_paused(|| self.store.remove_index(key, *d))?,
            }
        }
        if !ops.is_empty() {
            self.write(&ops)?;
            crate::fault::point(crate::fault::Point::Sweep);
            self.expired
                .fetch_add(ops.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(ops.len())
    }

    /// The earliest deadline in the TTL index, if any.
    pub fn next_deadline(&self) -> Result<Option<i64>> {
        self.store.earliest_deadline()
    }
}
