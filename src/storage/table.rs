//! The write-back table: the newest state of the keys written since the last write-back, in
//! memory, so that the hot path of a write costs a hash-map insert instead of sled's.
//!
//! Profiled at 50 clients of `redis-benchmark -t incr -r 1000`, sled's `get` plus `insert`
//! (with the leaf rewrites and allocations they bring) was about a third of Tally's user-space
//! CPU per request. Now:
//! - Once the startup census is done (see `engine::census`; until then, and during replay,
//!   writes go to sled as before), [`Store::apply`] puts a record's new values here, and
//!   [`Store::get`] looks here before sled. A deleted key is kept as a tombstone.
//! - Every write-back (the engine's `tally-write-back` thread, every `WRITE_BACK_INTERVAL`, and
//!   each checkpoint before it syncs sled) *seals* the table, with appends paused, so that the
//!   sealed generation is the state after one LSN: a consistent cut. It then writes that
//!   generation to sled as one `apply_batch`, which sled recovers all or none of, so sled never
//!   holds part of a record. Reads meanwhile see the sealed generation. Its values then join
//!   a cache of clean values (at most [`CLEAN_KEYS`]; a full shard of it is emptied), so a hot
//!   key costs sled one write per write-back, not one per request, and no read at all.
//! - Durability is unchanged: the WAL is the durability point, and replay rebuilds what the
//!   table held. A checkpoint writes back before it syncs sled, so everything up to its LSN is
//!   in sled's files when `CHECKPOINT` says so.
//! - TTL index: it stays in sled and exact, as before. When a write changes a key's deadline,
//!   the new deadline's entry goes in and the old one's goes out at once, so the sweeper finds
//!   keys on time. A crash before the write-back can leave sled's value with a deadline whose
//!   entry is gone; the startup census adds such missing entries (and a stale entry is a hint
//!   the sweeper re-checks), so that is repaired as after any crash.
//! - Request ids go to sled at once, as before (module `requests`).
//! - Memory: the keys written since the last write-back, in at most two generations (the
//!   current one and the one being written), plus the clean cache; about 100 bytes plus key
//!   and value each.
//!
//! A future reader of sled's key range (SCAN, KEYS) must merge this table in.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Delta, Entry, Store, decode_deadline, encode_entry, transitions, ttl_key, value_key};
use crate::error::Result;
use crate::wal::Op;

/// Shards of the table: a key's shard lock is held only for one map operation.
const SHARDS: usize = 64;
/// Most clean values cached (see the module doc): about 7 MiB of small counters.
pub const CLEAN_KEYS: usize = 65_536;

/// A key's state in the table: `None` is a tombstone (deleted since the last write-back).
type State = Option<Entry>;
type Generation = HashMap<Vec<u8>, State>;

#[derive(Default)]
struct Shard {
    /// Written since the last seal.
    current: Generation,
    /// Sealed, being written to sled.
    sealed: Arc<Generation>,
    /// Values known to equal sled's (no tombstones), at most `CLEAN_KEYS / SHARDS`.
    clean: Generation,
}

/// See the module doc.
pub(super) struct Table {
    /// Off during replay and the census: writes then go straight to sled.
    enabled: AtomicBool,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Serializes write-backs; true while a sealed generation is still to be written (a
    /// failed write-back leaves it for the next).
    sealed: Mutex<bool>,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            enabled: AtomicBool::new(false),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            sealed: Mutex::new(false),
        }
    }
}

impl Table {
    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the key's state in the table; `None` when the table does not hold it.
    fn with<R>(&self, key: &[u8], f: impl FnOnce(&State) -> R) -> Option<R> {
        let s = self.shard(key);
        s.current
            .get(key)
            .or_else(|| s.sealed.get(key))
            .or_else(|| s.clean.get(key))
            .map(f)
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Keys held not yet written to sled (both generations; a key in both counts twice).
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                s.current.len() + s.sealed.len()
            })
            .sum()
    }

    /// Drops the sealed generations, now in sled, keeping their values as clean ones.
    fn retire_sealed(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let sealed = std::mem::take(&mut s.sealed);
            // Unique: only write-backs clone it, and they are serialized.
            let sealed = Arc::try_unwrap(sealed).unwrap_or_else(|a| (*a).clone());
            for (key, state) in sealed {
                match state {
                    None => {
                        s.clean.remove(&key);
                    }
                    Some(e) => {
                        if s.clean.len() >= CLEAN_KEYS / SHARDS && !s.clean.contains_key(&key) {
                            s.clean.clear();
                        }
                        s.clean.insert(key, Some(e));
                    }
                }
            }
        }
    }
}

impl Store {
    /// Turns the table on (the engine does, with appends paused, once the census is done).
    pub fn enable_table(&self) {
        self.table.enabled.store(true, Ordering::Release);
    }

    /// Keys held in the write-back table.
    pub fn table_keys(&self) -> usize {
        self.table.len()
    }

    /// The key's state in the table, if it holds it: `Some(None)` for a deleted key.
    pub(super) fn table_get(&self, key: &[u8]) -> Option<Option<Entry>> {
        self.table.with(key, Clone::clone)
    }

    /// [`Store::apply`] with the table on: ids into sled first (see `requests`), then the
    /// changed deadlines' index entries, then the values into the table. Every read and decode
    /// that can fail happens before the table changes, so an error leaves none of the record
    /// applied (the id is taken back out; the index is fixed by the census, see the module doc).
    pub(super) fn apply_to_table(&self, lsn: u64, ops: &[Op]) -> Result<Delta> {
        let mut delta = Delta::default();
        let mut stored = Vec::new();
        for (id, created_ms, entry) in ops.iter().filter_map(Op::as_request) {
            let old = self.put_request(lsn, id, entry, created_ms)?;
            delta.requests += i64::from(old.is_none());
            stored.push((id, old));
        }
        if !stored.is_empty() {
            self.crash_point_after_request();
        }
        let staged = transitions(ops, |key| self.deadline_of(key)).and_then(|t| {
            for (op, old) in &t {
                let (old, new) = (old.flatten(), super::state_after(op).flatten());
                if let Some(d) = new
                    && old != new
                {
                    self.db.insert(ttl_key(d, op.key()), &[][..])?;
                }
                if let Some(d) = old
                    && old != new
                {
                    self.db.remove(ttl_key(d, op.key()))?;
                }
            }
            Ok(t)
        });
        let staged = match staged {
            Ok(t) => t,
            Err(e) => {
                for (id, old) in stored.into_iter().rev() {
                    self.unput_request(lsn, id, old)?;
                }
                return Err(e);
            }
        };
        for (op, old) in staged {
            let (key, new) = match op {
                Op::Put {
                    key,
                    value,
                    deadline_ms,
                } => (
                    key,
                    Some(Entry {
                        value: value.clone(),
                        deadline_ms: *deadline_ms,
                    }),
                ),
                Op::Delete { key } => (key, None),
                Op::Request { .. } => unreachable!("transitions skips request ops"),
            };
            let d = super::change(
                old.is_some(),
                old.flatten(),
                new.is_some(),
                new.as_ref().and_then(|e| e.deadline_ms),
            );
            delta.keys += d.keys;
            delta.ttl_keys += d.ttl_keys;
            self.table.shard(key).current.insert(key.clone(), new);
        }
        Ok(delta)
    }

    /// Whether `key` exists (`None`: absent) and its deadline, table first.
    fn deadline_of(&self, key: &[u8]) -> Result<Option<Option<i64>>> {
        if let Some(s) = self.table.with(key, |s| s.as_ref().map(|e| e.deadline_ms)) {
            return Ok(s);
        }
        match self.db.get(value_key(key))? {
            Some(raw) => Ok(Some(decode_deadline(&raw)?)),
            None => Ok(None),
        }
    }

    /// Runs `f` while no write-back runs (so nothing writes sled's values; the power-loss
    /// simulation copies sled's files in it). Take it before pausing appends, as
    /// [`Store::write_back`] does.
    pub fn with_write_back_paused<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.table.sealed.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// One write-back (see the module doc): writes a generation left by a failed one, then
    /// seals the table inside `paused` (which must run its argument with appends paused) and
    /// writes the sealed generation to sled as one batch. Returns the keys written.
    pub fn write_back(&self, paused: impl FnOnce(&mut dyn FnMut())) -> Result<usize> {
        let mut pending = self.table.sealed.lock().unwrap_or_else(|p| p.into_inner());
        let mut written = 0;
        if *pending {
            written += self.write_sealed()?;
            *pending = false;
        }
        let mut any = false;
        paused(&mut || {
            for s in self.table.shards.iter() {
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                if !s.current.is_empty() {
                    s.sealed = Arc::new(std::mem::take(&mut s.current));
                    any = true;
                }
            }
        });
        if any {
            *pending = true;
            written += self.write_sealed()?;
            *pending = false;
        }
        Ok(written)
    }

    /// Writes the sealed generation to sled as one batch, then drops it from the table.
    fn write_sealed(&self) -> Result<usize> {
        let sealed: Vec<Arc<Generation>> = self
            .table
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).sealed.clone())
            .collect();
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for (key, state) in sealed.iter().flat_map(|g| g.iter()) {
            let vkey = value_key(key);
            let old = match self.db.get(&vkey)? {
                Some(raw) => decode_deadline(&raw)?,
                None => None,
            };
            let new = state.as_ref().and_then(|e| e.deadline_ms);
            match state {
                Some(e) => {
                    if let Some(d) = new {
                        batch.insert(ttl_key(d, key), &[][..]);
                    }
                    batch.insert(vkey, encode_entry(&e.value, new));
                }
                None => batch.remove(vkey),
            }
            if let Some(d) = old
                && new != Some(d)
            {
                batch.remove(ttl_key(d, key));
            }
            n += 1;
        }
        if n > 0 {
            self.db.apply_batch(batch)?;
        }
        drop(sealed);
        self.table.retire_sealed();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open, put};
    use super::*;

    fn write_back(s: &Store) -> usize {
        s.write_back(|f| f()).unwrap()
    }

    #[test]
    fn writes_go_to_the_table_and_reach_sled_at_write_back() {
        let (_d, s) = open();
        s.apply(1, &[put("a", "1", None)]).unwrap();
        s.enable_table();
        let d = s
            .apply(2, &[put("a", "2", Some(100)), put("b", "3", None)])
            .unwrap();
        assert_eq!((d.keys, d.ttl_keys), (1, 1));
        assert_eq!(s.get(b"a").unwrap().unwrap().value, b"2");
        assert!(
            s.db.get(value_key(b"b")).unwrap().is_none(),
            "b in sled early"
        );
        // The new deadline is indexed at once, for the sweeper.
        assert_eq!(s.due(i64::MAX, 10).unwrap(), vec![(b"a".to_vec(), 100)]);
        s.apply(3, &[Op::Delete { key: "a".into() }]).unwrap();
        assert_eq!(s.get(b"a").unwrap(), None, "a tombstone hides sled's value");
        assert_eq!(write_back(&s), 2);
        assert_eq!(s.table_keys(), 0);
        // b stays cached as a clean value, a (deleted) does not.
        assert!(s.table_get(b"b").is_some() && s.table_get(b"a").is_none());
        assert_eq!(s.db.get(value_key(b"a")).unwrap(), None);
        assert_eq!(s.get(b"b").unwrap().unwrap().value, b"3");
        assert_eq!(s.due(i64::MAX, 10).unwrap(), vec![]);
        assert_eq!(write_back(&s), 0);
    }

    #[test]
    fn a_changed_deadline_moves_its_index_entry_at_once() {
        let (_d, s) = open();
        s.enable_table();
        s.apply(1, &[put("k", "1", Some(100))]).unwrap();
        write_back(&s);
        let d = s.apply(2, &[put("k", "2", Some(200))]).unwrap();
        assert_eq!((d.keys, d.ttl_keys), (0, 0));
        // At once, not at the write-back: a key whose deadline changes on every write would
        // otherwise pile up one stale entry per write.
        assert_eq!(s.due(i64::MAX, 10).unwrap(), vec![(b"k".to_vec(), 200)]);
        s.apply(3, &[put("k", "3", Some(300))]).unwrap();
        write_back(&s);
        assert_eq!(s.due(i64::MAX, 10).unwrap(), vec![(b"k".to_vec(), 300)]);
        assert_eq!(s.get(b"k").unwrap().unwrap().deadline_ms, Some(300));
    }

    #[test]
    fn a_record_that_fails_in_the_table_applies_none_of_its_ops() {
        let (_d, s) = open();
        s.db.insert(value_key(b"b"), &b"bad"[..]).unwrap();
        s.enable_table();
        let e = s
            .apply(1, &[put("a", "1", None), put("b", "2", None)])
            .unwrap_err();
        assert!(e.is_corruption(), "{e}");
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.table_keys(), 0);
    }

    #[test]
    fn reads_see_a_sealed_generation_until_it_is_in_sled() {
        let (_d, s) = open();
        s.enable_table();
        s.apply(1, &[put("k", "1", None)]).unwrap();
        s.write_back(|seal| {
            seal();
            // Sealed, not yet written: still readable, and a new write goes to `current`.
            assert_eq!(s.get(b"k").unwrap().unwrap().value, b"1");
        })
        .unwrap();
        s.apply(2, &[put("k", "2", None)]).unwrap();
        assert_eq!(s.get(b"k").unwrap().unwrap().value, b"2");
        write_back(&s);
        assert_eq!(s.get(b"k").unwrap().unwrap().value, b"2");
    }

    #[test]
    fn the_clean_cache_is_bounded() {
        let (_d, s) = open();
        s.enable_table();
        for i in 0..3 * CLEAN_KEYS {
            s.apply(i as u64, &[put(&format!("k{i}"), "1", None)])
                .unwrap();
        }
        write_back(&s);
        let cached: usize = s
            .table
            .shards
            .iter()
            .map(|s| s.lock().unwrap().clean.len())
            .sum();
        assert!(cached <= CLEAN_KEYS, "{cached}");
        for i in (0..3 * CLEAN_KEYS).step_by(997) {
            assert_eq!(
                s.get(format!("k{i}").as_bytes()).unwrap().unwrap().value,
                b"1"
            );
        }
    }
}
