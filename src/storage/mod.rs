//! The state machine's storage: one sled tree holding values and the TTL index.
//!
//! Owns the key encodings and keeps the TTL index consistent with the values: every change goes
//! through [`Store::apply`]. Promises nothing about durability by itself: sled's `flush()` is not
//! an fsync on Linux, so [`Store::sync`] adds real fsyncs, and the WAL stays the source of truth
//! in between.
//!
//! While serving (once the startup census is done), `apply` writes into the write-back table
//! in front of sled (module `table`), which reaches sled once the WAL has made it durable. What
//! follows is how `apply` writes sled itself: during replay and the census.
//!
//! Why plain inserts for a one-op record (an INCR, a SET) and not `apply_batch`: in sled 0.34
//! every `apply_batch` (and `transaction`) seals and writes an IO buffer, ~45 µs of kernel time
//! per call against ~0.4 µs for `insert`; it was the largest cost per request. One key's change
//! does not need it: `apply` orders its inserts so that the only possible leftover of a crash
//! or error part-way is a stale index entry, which the sweeper treats as a hint that it
//! re-checks; the engine's startup census ([`Store::census_step`]) counts the keys and would
//! also add a missing entry. A record of several ops is one `apply_batch`, so an
//! unacknowledged multi-key write cannot survive a crash half-applied, nor a sled error leave
//! its first ops visible.
//! A value is one sled entry, so a reader of one key sees a record's effect on it whole; a
//! reader that needs several keys at one instant must hold their stripe locks (engine).
//!
//! Layout (one tree):
//! ```text
//! 'v' ++ key                           -> deadline_ms: i64 LE (0 = no TTL) ++ value bytes
//! 't' ++ deadline_ms: u64 BE ++ key    -> ""   (TTL index, ordered by deadline)
//! 'r', 'o'                             -> request ids (module `requests`)
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fault::Faults;
use crate::wal::Op;

mod clear;
mod requests;
mod scan;
mod table;
mod write_back;
pub use requests::{Aged, Stored};

/// How long `open` waits for a sled lock left by a store of this process being dropped.
const OPEN_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

const VALUE: u8 = b'v';
const TTL: u8 = b't';

/// A stored value with its expiry deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value bytes.
    pub value: Vec<u8>,
    /// Absolute unix-ms deadline, if the key has a TTL.
    pub deadline_ms: Option<i64>,
}

/// How an `apply` changed the key counts.
#[derive(Debug, Default, Clone, Copy)]
pub struct Delta {
    /// Keys created minus keys removed.
    pub keys: i64,
    /// Keys that gained a TTL minus keys that lost one.
    pub ttl_keys: i64,
    /// Request ids stored anew (a replaced one does not count).
    pub requests: i64,
    /// The record cleared every key first (FLUSHDB): `keys` and `ttl_keys` are the new
    /// totals, not changes.
    pub reset: bool,
}

/// What one [`Store::census_step`] saw.
#[derive(Debug, Default)]
pub struct CensusStep {
    /// Values counted.
    pub keys: i64,
    /// Of those, values with a deadline.
    pub ttl_keys: i64,
    /// Index entries that were missing and were added.
    pub repaired: u64,
    /// The last key counted; `None` when there was nothing after `after`.
    pub last: Option<Vec<u8>>,
}

/// The sled-backed store.
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    /// Values written since the last write-back (module `table`).
    table: table::Table,
}

fn value_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(VALUE);
    k.extend_from_slice(key);
    k
}

fn ttl_key(deadline_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(TTL);
    // Deadlines that reach the store are in the future, hence positive; BE keeps them ordered.
    k.extend_from_slice(&(deadline_ms as u64).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Just the deadline of a stored entry, without copying the value.
fn decode_deadline(raw: &[u8]) -> Result<Option<i64>> {
    let d = raw.get(..8).ok_or_else(|| {
        Error::Corruption(format!("stored value of {} bytes is too short", raw.len()))
    })?;
    let d = i64::from_le_bytes(d.try_into().unwrap());
    Ok((d != 0).then_some(d))
}

fn decode_entry(raw: &[u8]) -> Result<Entry> {
    if raw.len() < 8 {
        return Err(Error::Corruption(format!(
            "stored value of {} bytes is too short",
            raw.len()
        )));
    }
    let d = i64::from_le_bytes(raw[..8].try_into().unwrap());
    Ok(Entry {
        value: raw[8..].to_vec(),
        deadline_ms: (d != 0).then_some(d),
    })
}

/// How the counts move when a key goes from (`was`, with `old` deadline) to (`is`, `new`).
fn change(was: bool, old: Option<i64>, is: bool, new: Option<i64>) -> Delta {
    Delta {
        keys: i64::from(is) - i64::from(was),
        ttl_keys: i64::from(new.is_some()) - i64::from(old.is_some()),
        ..Delta::default()
    }
}

/// A key's state as the counts and the TTL index see it: `None` absent, else its deadline.
type KeyState = Option<Option<i64>>;

/// Each data op of a record, with its key's state just before it (after the record's earlier
/// ops on the key). `before` reads a key's state before the record. All the reads, and so all
/// the errors, happen here, before anything is written.
fn transitions(
    ops: &[Op],
    mut before: impl FnMut(&[u8]) -> Result<KeyState>,
) -> Result<Vec<(&Op, KeyState)>> {
    /// Up to this many ops, a key's earlier op is found by scanning (the common one-op case
    /// allocates no map).
    const SCAN: usize = 16;
    let mut out: Vec<(&Op, KeyState)> = Vec::with_capacity(ops.len());
    let mut index: HashMap<&[u8], KeyState> = HashMap::new();
    for op in ops.iter().filter(|op| !op.is_request()) {
        let key = op.key();
        let earlier = if out.len() <= SCAN {
            out.iter()
                .rev()
                .find(|(o, _)| o.key() == key)
                .map(|(o, _)| state_after(o))
        } else {
            index.get(key).copied()
        };
        let old = match earlier {
            Some(s) => s,
            None => before(key)?,
        };
        if out.len() == SCAN {
            index.extend(out.iter().map(|(o, _)| (o.key(), state_after(o))));
        }
        if out.len() >= SCAN {
            index.insert(key, state_after(op));
        }
        out.push((op, old));
    }
    Ok(out)
}

/// The key's state after `op`.
fn state_after(op: &Op) -> KeyState {
    match op {
        Op::Put { deadline_ms, .. } => Some(*deadline_ms),
        Op::Delete { .. } | Op::Request { .. } | Op::Clear => None,
    }
}

fn encode_entry(value: &[u8], deadline_ms: Option<i64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&deadline_ms.unwrap_or(0).to_le_bytes());
    v.extend_from_slice(value);
    v
}

impl Store {
    /// Opens (or creates) the store in `path`. The caller holds the data directory's LOCK, so
    /// if sled's own file lock is still held it can only be by a previous store of this process
    /// that is being dropped: sled's IO threads release their references a moment after the
    /// `Db` goes. We retry for up to `OPEN_RETRY` rather than fail.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Store> {
        let started = std::time::Instant::now();
        loop {
            // No background flusher: durability comes from the WAL and from `sync` at
            // checkpoints, and sled's periodic flush (pwrite + sync_file_range every 500 ms)
            // cost more CPU and disk time than the whole request path under load.
            match sled::Config::new()
                .path(path)
                .flush_every_ms(None)
                .cache_capacity(cache_bytes)
                .open()
            {
                Ok(db) => {
                    return Ok(Store {
                        db,
                        path: path.to_path_buf(),
                        table: Default::default(),
                    });
                }
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < OPEN_RETRY =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The entry under `key`, expired or not: the write-back table's, else sled's.
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        if let Some(state) = self.table_get(key) {
            return Ok(state);
        }
        if self.sled_stale() {
            return Ok(None);
        }
        self.db
            .get(value_key(key))?
            .map(|raw| decode_entry(&raw))
            .transpose()
    }

    /// Applies `ops` (the record `lsn`), keeping the TTL index in step, and says how the counts
    /// moved. Idempotent: it reads the current state itself, so replaying a record already
    /// reflected in sled changes nothing.
    pub fn apply(&self, lsn: u64, ops: &[Op]) -> Result<Delta> {
        self.apply_counting(lsn, ops, |_| true)
    }

    /// As [`Store::apply`], counting in the delta only the ops whose key `counted` accepts (the
    /// startup census counts the others itself).
    ///
    /// One op (with or without a request id) is plain inserts, ordered so that a crash part-way
    /// leaves at most a stale index entry, or an id whose op a startup repair redoes (see the
    /// module doc and `requests`); an error part-way takes the id back out. Several ops (MSET, DEL of many keys, EXEC,
    /// an expiry batch) are one sled batch: every read and decode that can fail happens first,
    /// then `apply_batch` makes them visible together and sled recovers all or none of them, so
    /// neither an error nor a crash can leave half a record applied.
    pub fn apply_counting(
        &self,
        lsn: u64,
        ops: &[Op],
        counted: impl Fn(&[u8]) -> bool,
    ) -> Result<Delta> {
        if let Some(i) = ops.iter().rposition(Op::is_clear) {
            return self.apply_clear(lsn, ops, i, counted);
        }
        if self.table.enabled() {
            // Only once the census is done, so every key counts.
            return self.apply_to_table(lsn, ops);
        }
        let data = ops.iter().filter(|op| !op.is_request()).count();
        if data <= 1 {
            let mut delta = Delta::default();
            // The ids first: see `requests` for why.
            let mut stored = None;
            if let Some((id, created_ms, entry)) = ops.iter().find_map(Op::as_request) {
                let old = self.put_request(lsn, id, entry, created_ms)?;
                delta.requests = i64::from(old.is_none());
                stored = Some((id, old));
                self.crash_point_after_request();
            }
            if let Some(op) = ops.iter().find(|op| !op.is_request()) {
                let d = match self.apply_one(op, counted(op.key())) {
                    Ok(d) => d,
                    Err(e) => {
                        // Nothing is logged: the id must not claim a write that did not happen.
                        if let Some((id, old)) = stored {
                            self.unput_request(lsn, id, old)?;
                        }
                        return Err(e);
                    }
                };
                delta.keys = d.keys;
                delta.ttl_keys = d.ttl_keys;
            }
            return Ok(delta);
        }
        let staged = transitions(ops, |key| match self.db.get(value_key(key))? {
            Some(raw) => Ok(Some(decode_deadline(&raw)?)),
            None => Ok(None),
        })?;
        let mut batch = sled::Batch::default();
        let mut delta = Delta::default();
        for (id, created_ms, entry) in ops.iter().filter_map(Op::as_request) {
            delta.requests +=
                i64::from(self.batch_request(&mut batch, lsn, id, entry, created_ms)?);
        }
        for (op, old) in staged {
            let key = op.key();
            let new = match op {
                Op::Put {
                    value, deadline_ms, ..
                } => {
                    if let Some(d) = deadline_ms {
                        batch.insert(ttl_key(*d, key), &[][..]);
                    }
                    batch.insert(value_key(key), encode_entry(value, *deadline_ms));
                    Some(*deadline_ms)
                }
                Op::Delete { .. } => {
                    batch.remove(value_key(key));
                    None
                }
                Op::Request { .. } | Op::Clear => unreachable!("transitions skips these ops"),
            };
            if let Some(Some(d)) = old
                && new.flatten() != Some(d)
            {
                batch.remove(ttl_key(d, key));
            }
            if counted(key) {
                let d = change(old.is_some(), old.flatten(), new.is_some(), new.flatten());
                delta.keys += d.keys;
                delta.ttl_keys += d.ttl_keys;
            }
        }
        self.db.apply_batch(batch)?;
        if ops.iter().any(Op::is_request) {
            self.crash_point_after_request();
        }
        Ok(delta)
    }

    /// The `store-after-request-id` fail point (tests): writes sled's buffers out, then crashes.
    fn crash_point_after_request(&self) {
        crate::fault::point_after(crate::fault::Point::StoreAfterRequestId, || {
            let _ = self.db.flush();
        });
    }

    /// One op as plain inserts (see [`Store::apply_counting`]).
    fn apply_one(&self, op: &Op, counted: bool) -> Result<Delta> {
        let key = op.key();
        let vkey = value_key(key);
        let old = match op {
            Op::Put {
                value, deadline_ms, ..
            } => {
                // Index entry first, value second, old entry last: sled recovers a prefix
                // of its writes, so after any crash a value with a deadline has its index
                // entry, and the only possible leftover is a stale entry (a hint the
                // sweeper re-checks and drops).
                if let Some(d) = deadline_ms {
                    self.db.insert(ttl_key(*d, key), &[][..])?;
                }
                self.db.insert(&vkey, encode_entry(value, *deadline_ms))?
            }
            Op::Delete { .. } => self.db.remove(&vkey)?,
            Op::Request { .. } | Op::Clear => unreachable!("stored by the caller"),
        };
        let old_deadline = match &old {
            Some(raw) => decode_deadline(raw)?,
            None => None,
        };
        let new_deadline = match op {
            Op::Put { deadline_ms, .. } => *deadline_ms,
            Op::Delete { .. } | Op::Request { .. } | Op::Clear => None,
        };
        if let Some(d) = old_deadline
            && Some(d) != new_deadline
        {
            self.db.remove(ttl_key(d, key))?;
        }
        let is_put = matches!(op, Op::Put { .. });
        Ok(if counted {
            change(old.is_some(), old_deadline, is_put, new_deadline)
        } else {
            Delta::default()
        })
    }

    /// One step of the startup census: counts the values with keys after `after` (all when
    /// `None`), up to `limit` of them, and adds any index entry a value with a deadline lacks
    /// (the belt to `apply`'s ordering braces). Stale index entries are left to the sweeper.
    pub fn census_step(&self, after: Option<&[u8]>, limit: usize) -> Result<CensusStep> {
        use std::ops::Bound;
        let start = match after {
            Some(k) => Bound::Excluded(value_key(k)),
            None => Bound::Included(vec![VALUE]),
        };
        let mut step = CensusStep::default();
        for r in self
            .db
            .range::<Vec<u8>, _>((start, Bound::Excluded(vec![VALUE + 1])))
            .take(limit)
        {
            let (k, raw) = r?;
            step.keys += 1;
            if let Some(d) = decode_deadline(&raw)? {
                step.ttl_keys += 1;
                let tk = ttl_key(d, &k[1..]);
                if !self.db.contains_key(&tk)? {
                    self.db.insert(tk, &[][..])?;
                    step.repaired += 1;
                }
            }
            step.last = Some(k[1..].to_vec());
        }
        Ok(step)
    }

    /// Up to `limit` TTL-index entries with a deadline strictly before `before_ms`, earliest
    /// first, as (key, deadline).
    pub fn due(&self, before_ms: i64, limit: usize) -> Result<Vec<(Vec<u8>, i64)>> {
        let mut out = Vec::new();
        for r in self.db.range(vec![TTL]..ttl_key(before_ms.max(0), b"")) {
            let (k, _) = r?;
            let d = u64::from_be_bytes(k[1..9].try_into().unwrap()) as i64;
            out.push((k[9..].to_vec(), d));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Drops one TTL-index entry that no longer matches its key (a stale hint).
    pub fn remove_index(&self, key: &[u8], deadline_ms: i64) -> Result<()> {
        self.db.remove(ttl_key(deadline_ms, key))?;
        Ok(())
    }

    /// The earliest deadline in the TTL index.
    pub fn earliest_deadline(&self) -> Result<Option<i64>> {
        Ok(self
            .db
            .scan_prefix([TTL])
            .next()
            .transpose()?
            .map(|(k, _)| u64::from_be_bytes(k[1..9].try_into().unwrap()) as i64))
    }

    /// Makes everything applied so far durable: sled's `flush()` writes its buffers with `pwrite`
    /// and `sync_file_range` (which flushes neither metadata nor the device cache), so we then
    /// `fsync` every file and directory sled keeps. fsync acts on the inode, whichever descriptor
    /// wrote it, so this covers sled's own writes. `faults` can make the fsyncs fail (tests).
    pub fn sync(&self, faults: &Faults) -> Result<(), SyncFailure> {
        self.db.flush().map_err(|e| SyncFailure::Fsync(e.into()))?;
        sync_tree(&self.path, faults)
    }
}

/// How [`Store::sync`] failed, which decides what the engine may do next.
#[derive(Debug)]
pub enum SyncFailure {
    /// No fsync failed (a directory could not be listed, a file opened): nothing was lost, a
    /// later checkpoint can try again.
    Retry(Error),
    /// sled's flush or an fsync failed. Linux may have dropped the dirty pages and marked them
    /// clean, so a retry could "succeed" without the data: the state in sled's files is unknown
    /// and no checkpoint may ever claim it (fail-stop, as for the WAL's own fsync).
    Fsync(Error),
}

fn sync_tree(dir: &Path, faults: &Faults) -> Result<(), SyncFailure> {
    let retry = |what: String, e| SyncFailure::Retry(Error::io(what, e));
    let rd = std::fs::read_dir(dir).map_err(|e| retry(format!("reading {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| retry("listing sled directory".into(), e))?;
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| retry("stat in sled directory".into(), e))?;
        if ft.is_dir() {
            sync_tree(&path, faults)?;
        } else if ft.is_file() {
            let f = match std::fs::File::open(&path) {
                Ok(f) => f,
                // sled removed it (an old snapshot) since the listing: nothing to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(retry(format!("opening {}", path.display()), e)),
            };
            let synced = if faults.checkpoint_fsync_error() {
                Err(std::io::Error::from_raw_os_error(5)) // EIO
            } else {
                f.sync_all()
            };
            synced.map_err(|e| {
                SyncFailure::Fsync(Error::io(format!("fsync of {}", path.display()), e))
            })?;
        }
    }
    let d = std::fs::File::open(dir).map_err(|e| retry(format!("opening {}", dir.display()), e))?;
    d.sync_all().map_err(|e| {
        SyncFailure::Fsync(Error::io(
            format!("fsync of directory {}", dir.display()),
            e,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn put(key: &str, value: &str, deadline_ms: Option<i64>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            deadline_ms,
        }
    }

    pub(super) fn open() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("sled"), 1 << 20).unwrap();
        (d, s)
    }

    #[test]
    fn a_record_that_fails_part_way_applies_none_of_its_ops() {
        let (_d, s) = open();
        // A damaged stored value under "b": decoding it (to fix the TTL index) fails.
        s.db.insert(value_key(b"b"), &b"bad"[..]).unwrap();
        let e = s
            .apply(1, &[put("a", "1", None), put("b", "2", None)])
            .unwrap_err();
        assert!(e.is_corruption(), "{e}");
        assert_eq!(
            s.get(b"a").unwrap(),
            None,
            "the first op of a failed record is visible"
        );
    }

    #[test]
    fn several_ops_on_one_key_in_one_record_leave_the_index_and_counts_right() {
        let (_d, s) = open();
        s.apply(1, &[put("k", "0", Some(500))]).unwrap();
        let ops = [
            put("k", "1", Some(100)),
            put("k", "2", Some(200)),
            Op::Delete { key: "x".into() },
            put("x", "3", Some(300)),
            put("y", "4", None),
            Op::Delete { key: "y".into() },
        ];
        let d = s.apply(2, &ops).unwrap();
        assert_eq!((d.keys, d.ttl_keys), (1, 1));
        assert_eq!(s.get(b"k").unwrap().unwrap().deadline_ms, Some(200));
        assert_eq!(s.get(b"y").unwrap(), None);
        let due: Vec<(Vec<u8>, i64)> = s.due(i64::MAX, 10).unwrap();
        assert_eq!(due, vec![(b"k".to_vec(), 200), (b"x".to_vec(), 300)]);
        // Counting only some keys (the census's cursor) leaves the rest out of the delta.
        let d = s
            .apply_counting(3, &[put("k", "5", None), put("z", "6", Some(9))], |k| {
                k == b"z"
            })
            .unwrap();
        assert_eq!((d.keys, d.ttl_keys), (1, 1));
    }
}
