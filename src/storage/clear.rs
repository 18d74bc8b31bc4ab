//! FLUSHDB / FLUSHALL in storage: the `Clear` op. Request ids stay; every key goes.
//!
//! During replay and the census (the table off) a clear removes sled's values and TTL index
//! at once: replayed records are durable. While serving, sled must not lose values before
//! the WAL holds the clear (a crash would lose acknowledged keys), so the clear is logical
//! first: the write-back table is emptied and counts one more clear, and while sled has not
//! had that clear yet (`sled_stale`), a key the table lacks reads as absent. The next
//! write-back, once the WAL has made the clear durable, removes sled's values, before it
//! writes the values of keys set after the clear. The TTL index goes at once: it is a hint
//! the startup census rebuilds from the values after a crash.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Delta, Store, TTL, VALUE};
use crate::error::Result;
use crate::wal::Op;

/// Keys removed from sled per pause of appends.
const CLEAR_CHUNK: usize = 1024;

impl Store {
    /// Applies a record whose last clear is `ops[i]`: its ids, then the clear, then the ops
    /// after it (on the empty keyspace).
    pub(super) fn apply_clear(
        &self,
        lsn: u64,
        ops: &[Op],
        i: usize,
        counted: impl Fn(&[u8]) -> bool,
    ) -> Result<Delta> {
        let rest: Vec<Op> = ops[..i]
            .iter()
            .filter(|op| op.is_request())
            .chain(&ops[i + 1..])
            .cloned()
            .collect();
        let now = |f: &mut dyn FnMut()| f();
        if !self.table.enabled() {
            // Replay: the record is durable, and a failure stops startup.
            self.remove_range(VALUE, &now)?;
            self.remove_range(TTL, &now)?;
            let mut delta = match rest.is_empty() {
                true => Delta::default(),
                false => self.apply_counting(lsn, &rest, counted)?,
            };
            delta.reset = true;
            return Ok(delta);
        }
        // What can fail comes before the table changes: a failure then leaves the keys as
        // they were (less some TTL-index hints, which the census restores at the next start).
        self.remove_range(TTL, &now)?;
        self.table.clear();
        match self.apply_counting(lsn, &rest, counted) {
            Ok(mut delta) => {
                delta.reset = true;
                Ok(delta)
            }
            Err(e) => {
                // The table is emptied and cannot be restored, and the record will not be
                // logged: stop, so that recovery rebuilds the state from the WAL (where
                // neither this FLUSHDB nor anything after it is).
                tracing::error!(
                    "FLUSHDB failed after clearing the write-back table ({e}); aborting"
                );
                std::process::abort();
            }
        }
    }

    /// True while a clear has emptied the table but not yet sled's values.
    pub(super) fn sled_stale(&self) -> bool {
        self.table.clears.load(Ordering::Acquire)
            != self.table.cleared_in_sled.load(Ordering::Acquire)
    }

    /// True if a write-back has a clear to bring to sled (the engine then runs one even with
    /// no key written since).
    pub fn clear_pending(&self) -> bool {
        self.sled_stale()
    }

    /// Removes sled's values (the write-back, for a durable clear), with appends paused
    /// [`CLEAR_CHUNK`] keys at a time.
    pub(super) fn clear_sled_values(&self, paused: &impl Fn(&mut dyn FnMut())) -> Result<()> {
        self.remove_range(VALUE, paused)
    }

    /// Removes every entry whose key starts with `prefix`, in chunks, each inside `paused`.
    fn remove_range(&self, prefix: u8, paused: &impl Fn(&mut dyn FnMut())) -> Result<()> {
        loop {
            let mut result: Result<usize> = Ok(0);
            paused(&mut || {
                result = (|| -> Result<usize> {
                    let mut n = 0;
                    for r in self
                        .db
                        .range(vec![prefix]..vec![prefix + 1])
                        .take(CLEAR_CHUNK)
                    {
                        let (k, _) = r?;
                        self.db.remove(k)?;
                        n += 1;
                    }
                    Ok(n)
                })();
            });
            if result? < CLEAR_CHUNK {
                return Ok(());
            }
        }
    }
}

impl super::table::Table {
    /// Empties every generation (a clear): counts the clear first, so that no reader finds a
    /// key gone from the table while sled still looks current.
    pub(super) fn clear(&self) {
        self.clears.fetch_add(1, Ordering::AcqRel);
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let n = s.current.len() + s.sealed.len();
            self.dirty.fetch_sub(n, Ordering::Relaxed);
            s.current.clear();
            s.sealed = Arc::default();
            s.clean.clear();
            s.clean_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open, put};
    use super::super::value_key;
    use crate::wal::Op;

    /// While serving, a clear empties what reads see at once but leaves sled's values until
    /// the write-back that follows its durability; keys set after it survive that write-back.
    #[test]
    fn a_clear_reaches_sled_only_at_the_write_back() {
        let (_d, s) = open();
        s.enable_table();
        s.apply(1, &[put("old", "1", Some(100)), put("gone", "2", None)])
            .unwrap();
        s.write_back(|f| f(), || Ok(())).unwrap();
        assert!(s.db.get(value_key(b"old")).unwrap().is_some());
        let d = s
            .apply(2, &[Op::Clear, put("new", "3", Some(200))])
            .unwrap();
        assert!(d.reset);
        assert_eq!((d.keys, d.ttl_keys), (1, 1));
        assert_eq!(s.get(b"old").unwrap(), None);
        assert_eq!(s.keys_after(None, 10).unwrap().0.len(), 1);
        // The index is cleared at once (a hint the census rebuilds), the new key indexed.
        assert_eq!(s.due(i64::MAX, 10).unwrap(), vec![(b"new".to_vec(), 200)]);
        assert!(
            s.db.get(value_key(b"old")).unwrap().is_some(),
            "sled cleared early"
        );
        assert!(s.clear_pending());
        // A write-back whose durability wait fails leaves sled alone.
        assert!(
            s.write_back(|f| f(), || Err(crate::error::Error::NoSpace))
                .is_err()
        );
        assert!(s.db.get(value_key(b"old")).unwrap().is_some());
        s.write_back(|f| f(), || Ok(())).unwrap();
        assert!(!s.clear_pending());
        assert_eq!(s.db.get(value_key(b"old")).unwrap(), None);
        assert_eq!(s.db.get(value_key(b"gone")).unwrap(), None);
        assert_eq!(s.get(b"new").unwrap().unwrap().value, b"3");
        assert!(s.db.get(value_key(b"new")).unwrap().is_some());
    }

    /// During replay (the table off) a clear applies to sled directly.
    #[test]
    fn a_replayed_clear_empties_sled() {
        let (_d, s) = open();
        s.apply(1, &[put("a", "1", Some(5))]).unwrap();
        let d = s.apply(2, &[Op::Clear]).unwrap();
        assert!(d.reset && d.keys == 0);
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.due(i64::MAX, 10).unwrap(), vec![]);
    }
}
