//! The write-back table: the newest state of the keys written since the last write-back, in
//! memory, so that the hot path of a write costs a hash-map insert instead of sled's.
//!
//! Profiled at 50 clients of `redis-benchmark -t incr -r 1000`, sled's `get` plus `insert`
//! (with the leaf rewrites and allocations they bring) was about a third of Tally's user-space
//! CPU per request. Now:
//! - Once the startup census is done (see `engine::census`; until then, and during replay,
//!   writes go to sled as before), [`Store::apply`] puts a record's new values here, and
//!   [`Store::get`] looks here before sled. A deleted key is kept as a tombstone.
//! - Every write-back (the engine's `tally-write-back` thread, every `WRITE_BACK_INTERVAL` or
//!   sooner once `WRITE_BACK_KEYS` wait, and
//!   each checkpoint before it syncs sled) *seals* the table, with appends paused, so that the
//!   sealed generation is the state after one LSN (a cut). It waits until the WAL has made
//!   every record up to the cut durable, then writes the generation to sled with plain inserts.
//!   So sled never holds the effect of a record the log could lose; a crash part-way leaves
//!   sled with some keys of durable records newer than the checkpoint, which replay rewrites
//!   (so a record is never left half-applied). Reads meanwhile see the sealed generation. Its
//!   values then join
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
//! Readers of sled's key range (SCAN, KEYS) merge this table in (module `scan`).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Delta, Entry, Store, decode_deadline, transitions, ttl_key, value_key};
use crate::error::{Error, Result};
use crate::wal::Op;
use tracing::warn;

/// Keys, and value bytes, written back per pause of appends (a few hundred µs of sled
/// inserts; one larger value goes alone).
pub(super) const WRITE_BACK_CHUNK: usize = 256;
/// See [`WRITE_BACK_CHUNK`].
pub(super) const WRITE_BACK_CHUNK_BYTES: usize = 1 << 20;
/// Shards of the table: a key's shard lock is held only for one map operation.
pub(super) const SHARDS: usize = 64;
/// Most clean values cached (see the module doc), by count and by bytes (keys and values plus
/// [`SLOT_OVERHEAD`] each): 16k small counters take about 2 MiB. A hot set larger than this is
/// read from sled, as every key was before the table.
pub const CLEAN_KEYS: usize = 16_384;
/// See [`CLEAN_KEYS`].
pub const CLEAN_BYTES: usize = 8 << 20;
/// What one cached key costs beyond its bytes (two `Vec`s, the deadline, the map's slot).
pub(super) const SLOT_OVERHEAD: usize = 80;
/// Keys written but not yet written back, past which writes are refused (`Unavailable`). Only
/// reached when writing back keeps failing: a write-back runs every second, and a second of
/// writes is far fewer keys.
pub const MAX_DIRTY_KEYS: usize = 4_000_000;

/// A key's state in the table: `None` is a tombstone (deleted since the last write-back).
pub(super) type State = Option<Entry>;
pub(super) type Generation = HashMap<Vec<u8>, State>;

#[derive(Default)]
pub(super) struct Shard {
    /// Written since the last seal.
    pub(super) current: Generation,
    /// Sealed, being written to sled.
    pub(super) sealed: Arc<Generation>,
    /// Values known to equal sled's (no tombstones), at most `CLEAN_KEYS / SHARDS` keys and
    /// `CLEAN_BYTES / SHARDS` bytes.
    pub(super) clean: Generation,
    /// Bytes of `clean`, as [`CLEAN_BYTES`] counts them.
    pub(super) clean_bytes: usize,
}

/// See the module doc.
pub(super) struct Table {
    /// Off during replay and the census: writes then go straight to sled.
    enabled: AtomicBool,
    pub(super) shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Serializes write-backs; true while a sealed generation is still to be written (a
    /// failed write-back leaves it for the next).
    pub(super) sealed: Mutex<bool>,
    /// Keys in `current` and `sealed` (a key in both counts twice), against `max_dirty`.
    pub(super) dirty: AtomicUsize,
    /// [`MAX_DIRTY_KEYS`] (smaller in tests).
    max_dirty: usize,
    /// Clears (FLUSHDB) applied so far, and how many of them sled's values have had: while
    /// they differ, sled's values are stale and a key the table lacks is absent (module
    /// `clear`).
    pub(super) clears: AtomicU64,
    pub(super) cleared_in_sled: AtomicU64,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            enabled: AtomicBool::new(false),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            sealed: Mutex::new(false),
            dirty: AtomicUsize::new(0),
            max_dirty: MAX_DIRTY_KEYS,
            clears: AtomicU64::new(0),
            cleared_in_sled: AtomicU64::new(0),
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

    /// Every key after `after` the table holds, with its newest state (`None`: deleted).
    pub(super) fn after(&self, after: Option<&[u8]>) -> Vec<(Vec<u8>, State)> {
        let mut out = Vec::new();
        let wanted = |k: &[u8]| after.is_none_or(|a| k > a);
        for s in self.shards.iter() {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            // The newest generation holding a key wins, as in `with`.
            let newer = |k: &Vec<u8>, gens: &[&Generation]| gens.iter().any(|g| g.contains_key(k));
            let gens = [&s.current, &*s.sealed, &s.clean];
            for (i, g) in gens.iter().enumerate() {
                for (k, v) in g.iter() {
                    if wanted(k) && !newer(k, &gens[..i]) {
                        out.push((k.clone(), v.clone()));
                    }
                }
            }
        }
        out
    }
}

/// Makes `state` what the data op `op` leaves, reusing its value's buffer.
fn set_state(state: &mut State, op: &Op) {
    match (op, state.as_mut()) {
        (
            Op::Put {
                value, deadline_ms, ..
            },
            Some(e),
        ) => {
            e.value.clear();
            e.value.extend_from_slice(value);
            e.deadline_ms = *deadline_ms;
        }
        (
            Op::Put {
                value, deadline_ms, ..
            },
            None,
        ) => {
            *state = Some(Entry {
                value: value.clone(),
                deadline_ms: *deadline_ms,
            })
        }
        (Op::Delete { .. }, _) => *state = None,
        (Op::Request { .. } | Op::Clear, _) => unreachable!("transitions skips these ops"),
    }
}

impl Store {
    /// Turns the table on (the engine does, with appends paused, once the census is done).
    pub fn enable_table(&self) {
        self.table.enabled.store(true, Ordering::Release);
    }

    /// True once the table is on (the census is done; see `enable_table`).
    pub fn table_enabled(&self) -> bool {
        self.table.enabled()
    }

    /// Keys held in the write-back table.
    pub fn table_keys(&self) -> usize {
        self.table.len()
    }

    /// Keys written and not yet written back (cheap: one atomic load).
    pub fn dirty_keys(&self) -> usize {
        self.table.dirty.load(Ordering::Relaxed)
    }

    /// Every key after `after` the table holds, with its newest state (module `scan`).
    pub(super) fn table_after(&self, after: Option<&[u8]>) -> Vec<(Vec<u8>, Option<Entry>)> {
        self.table.after(after)
    }

    /// The key's state in the table, if it holds it: `Some(None)` for a deleted key.
    pub(super) fn table_get(&self, key: &[u8]) -> Option<Option<Entry>> {
        self.table.with(key, Clone::clone)
    }

    /// [`Store::apply`] with the table on: ids into sled first (see `requests`), then the new
    /// deadlines' index entries, then the values into the table, then the old deadlines' index
    /// entries out. Every read, decode and insert that can fail happens before the table
    /// changes, so an error leaves none of the record applied (the id is taken back out, an
    /// index entry added is a stale hint); a failed removal only leaves a stale hint too.
    /// Refused while the table holds more than [`MAX_DIRTY_KEYS`] keys not yet in sled.
    pub(super) fn apply_to_table(&self, lsn: u64, ops: &[Op]) -> Result<Delta> {
        let dirty = self.table.dirty.load(Ordering::Relaxed);
        if dirty >= self.table.max_dirty {
            return Err(Error::Unavailable(format!(
                "{dirty} written keys are waiting to be written back to sled (the most is {}): \
                 writing back is failing, see the log; writes are refused until it succeeds",
                self.table.max_dirty
            )));
        }
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
                if let Some(d) = super::state_after(op).flatten()
                    && old.flatten() != Some(d)
                {
                    self.db.insert(ttl_key(d, op.key()), &[][..])?;
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
        for (op, old) in &staged {
            let new = super::state_after(op);
            let d = super::change(old.is_some(), old.flatten(), new.is_some(), new.flatten());
            delta.keys += d.keys;
            delta.ttl_keys += d.ttl_keys;
            let mut shard = self.table.shard(op.key());
            match shard.current.get_mut(op.key()) {
                // In place: a hot key's write allocates nothing.
                Some(state) => set_state(state, op),
                None => {
                    let mut state = None;
                    set_state(&mut state, op);
                    shard.current.insert(op.key().to_vec(), state);
                    self.table.dirty.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for (op, old) in staged {
            if let Some(d) = old.flatten()
                && super::state_after(op).flatten() != Some(d)
                && let Err(e) = self.db.remove(ttl_key(d, op.key()))
            {
                // Applied already: the entry stays as a stale hint the sweeper drops.
                warn!("removing a TTL index entry failed ({e}); the sweeper will drop it");
            }
        }
        Ok(delta)
    }

    /// Whether `key` exists (`None`: absent) and its deadline, table first.
    fn deadline_of(&self, key: &[u8]) -> Result<Option<Option<i64>>> {
        if let Some(s) = self.table.with(key, |s| s.as_ref().map(|e| e.deadline_ms)) {
            return Ok(s);
        }
        if self.sled_stale() {
            return Ok(None);
        }
        match self.db.get(value_key(key))? {
            Some(raw) => Ok(Some(decode_deadline(&raw)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open, put};
    use super::*;

    fn write_back(s: &Store) -> usize {
        s.write_back(|f| f(), || Ok(())).unwrap()
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
        s.write_back(
            |seal| seal(),
            || {
                // Sealed, not yet written: still readable.
                assert_eq!(s.get(b"k").unwrap().unwrap().value, b"1");
                Ok(())
            },
        )
        .unwrap();
        s.apply(2, &[put("k", "2", None)]).unwrap();
        assert_eq!(s.get(b"k").unwrap().unwrap().value, b"2");
        write_back(&s);
        assert_eq!(s.get(b"k").unwrap().unwrap().value, b"2");
    }

    #[test]
    fn writes_are_refused_while_too_many_keys_wait_for_write_back_and_resume_after() {
        let (_d, mut s) = open();
        s.table.max_dirty = 3;
        s.enable_table();
        for i in 0..3 {
            s.apply(i, &[put(&format!("k{i}"), "1", None)]).unwrap();
        }
        let e = s.apply(4, &[put("k3", "1", None)]).unwrap_err();
        assert!(e.to_string().contains("waiting to be written back"), "{e}");
        assert_eq!(s.get(b"k3").unwrap(), None);
        write_back(&s);
        s.apply(5, &[put("k3", "1", None)]).unwrap();
        s.apply(6, &[put("k0", "2", None)]).unwrap();
        assert_eq!(s.get(b"k0").unwrap().unwrap().value, b"2");
    }

    #[test]
    fn nothing_reaches_sled_before_the_wal_says_it_is_durable() {
        let (_d, s) = open();
        s.enable_table();
        s.apply(1, &[put("k", "1", None)]).unwrap();
        let not_yet = || Err(crate::error::Error::NoSpace);
        assert!(s.write_back(|seal| seal(), not_yet).is_err());
        assert_eq!(
            s.db.get(value_key(b"k")).unwrap(),
            None,
            "written before durable"
        );
        assert_eq!(
            s.get(b"k").unwrap().unwrap().value,
            b"1",
            "the table lost it"
        );
        // The sealed generation waits for the next write-back, and goes first.
        s.apply(2, &[put("k", "2", None)]).unwrap();
        assert_eq!(write_back(&s), 2);
        assert_eq!(s.get(b"k").unwrap().unwrap().value, b"2");
        assert!(s.db.get(value_key(b"k")).unwrap().is_some());
    }

    #[test]
    fn the_clean_cache_is_bounded_in_bytes_too() {
        let (_d, s) = open();
        s.enable_table();
        let big = "x".repeat(256 << 10);
        for i in 0..(2 * CLEAN_BYTES) / big.len() {
            s.apply(i as u64, &[put(&format!("k{i}"), &big, None)])
                .unwrap();
        }
        write_back(&s);
        let shards = s.table.shards.iter().map(|s| s.lock().unwrap());
        let bytes: usize = shards.map(|s| s.clean_bytes).sum();
        assert!(bytes <= CLEAN_BYTES, "{bytes}");
        assert_eq!(s.get(b"k7").unwrap().unwrap().value.len(), big.len());
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
