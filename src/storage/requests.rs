//! Request ids in the store, for exactly-once retries (the engine's `dedupe` decides what they
//! mean; this module only keeps them). Two namespaces of the one tree, beside the values:
//! ```text
//! 'r' ++ id                        -> lsn: u64 LE ++ created_ms: i64 LE ++ entry
//! 'o' ++ lsn: u64 BE ++ id         -> created_ms: i64 LE      (age index, oldest first)
//! ```
//! An `'o'` entry whose `'r'` is gone or carries another LSN is stale: a hint, dropped when met.
//!
//! Insert order, for a record that is plain inserts (see the parent module): age index first,
//! then the id, then the record's own op. sled recovers a prefix of its writes, so after a crash
//! every id has its index entry, and a stored id whose record's op may be missing has an LSN
//! newer than anything the WAL kept: [`Store::requests_after`] finds those at startup, and the
//! engine repairs them from the copy of the op the entry carries.

use std::ops::Bound;

use super::Store;
use crate::error::{Error, Result};
use crate::wal::Op;

const ID: u8 = b'r';
const AGE: u8 = b'o';

fn id_key(id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(ID);
    k.extend_from_slice(id);
    k
}

fn age_key(lsn: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + id.len());
    k.push(AGE);
    k.extend_from_slice(&lsn.to_be_bytes());
    k.extend_from_slice(id);
    k
}

fn stored(lsn: u64, created_ms: i64, entry: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + entry.len());
    v.extend_from_slice(&lsn.to_le_bytes());
    v.extend_from_slice(&created_ms.to_le_bytes());
    v.extend_from_slice(entry);
    v
}

/// A stored request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The LSN of the record that wrote it.
    pub lsn: u64,
    /// When the id was first used, unix ms.
    pub created_ms: i64,
    /// What the engine stored with it.
    pub entry: Vec<u8>,
}

fn decode(raw: &[u8]) -> Result<Stored> {
    if raw.len() < 16 {
        return Err(Error::Corruption("stored request id is too short".into()));
    }
    Ok(Stored {
        lsn: u64::from_le_bytes(raw[..8].try_into().unwrap()),
        created_ms: i64::from_le_bytes(raw[8..16].try_into().unwrap()),
        entry: raw[16..].to_vec(),
    })
}

fn lsn_of(raw: &[u8]) -> Result<u64> {
    raw.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| Error::Corruption("stored request id is too short".into()))
}

/// One entry of the age index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aged {
    /// The LSN of the record that wrote the id.
    pub lsn: u64,
    /// The id.
    pub id: Vec<u8>,
    /// When the id was first used, unix ms.
    pub created_ms: i64,
}

fn decode_age(k: &[u8], v: &[u8]) -> Result<Aged> {
    if k.len() < 9 || v.len() < 8 {
        return Err(Error::Corruption(
            "damaged request-id age index entry".into(),
        ));
    }
    Ok(Aged {
        lsn: u64::from_be_bytes(k[1..9].try_into().unwrap()),
        id: k[9..].to_vec(),
        created_ms: i64::from_le_bytes(v[..8].try_into().unwrap()),
    })
}

impl Store {
    /// What is stored under request id `id`.
    pub fn request(&self, id: &[u8]) -> Result<Option<Stored>> {
        self.db.get(id_key(id))?.map(|raw| decode(&raw)).transpose()
    }

    /// Stores `id` as written by record `lsn`, as plain inserts in the order the module doc
    /// gives. Returns what was stored under the id before (`None`: the id is new), for
    /// [`Store::unput_request`].
    pub(super) fn put_request(
        &self,
        lsn: u64,
        id: &[u8],
        entry: &[u8],
        created_ms: i64,
    ) -> Result<Option<Stored>> {
        self.db
            .insert(age_key(lsn, id), &created_ms.to_le_bytes()[..])?;
        let old = self.db.insert(id_key(id), stored(lsn, created_ms, entry))?;
        let old = old.map(|raw| decode(&raw)).transpose()?;
        if let Some(o) = &old
            && o.lsn != lsn
        {
            self.db.remove(age_key(o.lsn, id))?;
        }
        Ok(old)
    }

    /// Undoes [`Store::put_request`] of record `lsn` when the rest of its record could not be
    /// applied: the record is not logged (its LSN goes to the next write), so the id must not
    /// claim it.
    pub(super) fn unput_request(&self, lsn: u64, id: &[u8], old: Option<Stored>) -> Result<()> {
        // Unless `old` came from record `lsn` itself (a replayed record stored again).
        let own_index = old.as_ref().is_none_or(|o| o.lsn != lsn);
        match old {
            Some(o) => {
                self.db
                    .insert(age_key(o.lsn, id), &o.created_ms.to_le_bytes()[..])?;
                self.db
                    .insert(id_key(id), stored(o.lsn, o.created_ms, &o.entry))?;
            }
            None => {
                self.db.remove(id_key(id))?;
            }
        }
        if own_index {
            self.db.remove(age_key(lsn, id))?;
        }
        Ok(())
    }

    /// Stores a request-id op found in the WAL at startup (replay needs no crash ordering:
    /// nothing is served until it ends, and a crash replays again). An id sled holds from a
    /// newer record is kept: that record (reusing an expired id) may be one the WAL lost, which
    /// startup repair must still find.
    pub fn replay_request(&self, lsn: u64, op: &Op) -> Result<()> {
        if let Some((id, created_ms, entry)) = op.as_request() {
            if self.request(id)?.is_some_and(|st| st.lsn > lsn) {
                return Ok(());
            }
            self.put_request(lsn, id, entry, created_ms)?;
        }
        Ok(())
    }

    /// As [`Store::put_request`], into `batch` (a record of several ops). True if new.
    pub(super) fn batch_request(
        &self,
        batch: &mut sled::Batch,
        lsn: u64,
        id: &[u8],
        entry: &[u8],
        created_ms: i64,
    ) -> Result<bool> {
        let old = self.db.get(id_key(id))?;
        if let Some(raw) = &old {
            let old_lsn = lsn_of(raw)?;
            if old_lsn != lsn {
                batch.remove(age_key(old_lsn, id));
            }
        }
        batch.insert(age_key(lsn, id), &created_ms.to_le_bytes()[..]);
        batch.insert(id_key(id), stored(lsn, created_ms, entry));
        Ok(old.is_none())
    }

    /// Up to `limit` age-index entries, oldest first, from LSN `from` on.
    pub fn requests_by_age(&self, from: u64, limit: usize) -> Result<Vec<Aged>> {
        let start = Bound::Included(age_key(from, b""));
        let mut out = Vec::new();
        for r in self
            .db
            .range::<Vec<u8>, _>((start, Bound::Excluded(vec![AGE + 1])))
            .take(limit)
        {
            let (k, v) = r?;
            out.push(decode_age(&k, &v)?);
        }
        Ok(out)
    }

    /// The ids whose age-index entry is newer than `lsn` and matches the stored id (stale index
    /// entries met on the way are dropped), oldest first: at startup, the ids whose records the
    /// WAL did not keep.
    pub fn requests_after(&self, lsn: u64) -> Result<Vec<Aged>> {
        let mut out = Vec::new();
        let Some(from) = lsn.checked_add(1) else {
            return Ok(Vec::new());
        };
        for a in self.requests_by_age(from, usize::MAX)? {
            match self.request(&a.id)? {
                Some(st) if st.lsn == a.lsn => out.push(a),
                _ => {
                    self.db.remove(age_key(a.lsn, &a.id))?;
                }
            }
        }
        Ok(out)
    }

    /// Forgets the id of age-index entry `a` (expired or evicted), if it still belongs to that
    /// record; the index entry goes either way. Not logged: a record replayed after a crash may
    /// bring the id back, which only answers a late retry with its true response. True if an
    /// id was removed.
    pub fn remove_request(&self, a: &Aged) -> Result<bool> {
        let key = id_key(&a.id);
        let removed = match self.db.get(&key)? {
            Some(raw) if lsn_of(&raw)? == a.lsn => {
                self.db.remove(&key)?;
                true
            }
            _ => false,
        };
        self.db.remove(age_key(a.lsn, &a.id))?;
        Ok(removed)
    }

    /// Request ids stored.
    pub fn count_requests(&self) -> Result<u64> {
        let mut n = 0;
        for r in self.db.scan_prefix([ID]) {
            r?;
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("sled"), 1 << 20).unwrap();
        (d, s)
    }

    fn req(entry: &str) -> Op {
        Op::Request {
            id: b"id".to_vec(),
            created_ms: 7,
            entry: entry.into(),
        }
    }

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: b"1".to_vec(),
            deadline_ms: None,
        }
    }

    /// A write whose op fails after its id was stored is not logged, so its LSN goes to the
    /// next write: the id must be back as it was, or a retry would be told it applied.
    #[test]
    fn an_id_is_taken_back_when_its_write_fails() {
        let (_d, s) = open();
        s.apply(3, &[put("a"), req("first")]).unwrap();
        s.db.insert(super::super::value_key(b"bad"), &b"x"[..])
            .unwrap();
        assert!(s.apply(5, &[put("bad"), req("second")]).is_err());
        let st = s.request(b"id").unwrap().unwrap();
        assert_eq!((st.lsn, st.entry.as_slice()), (3, &b"first"[..]));
        let ages: Vec<u64> = s
            .requests_by_age(0, 10)
            .unwrap()
            .iter()
            .map(|a| a.lsn)
            .collect();
        assert_eq!(ages, [3]);
        // A new id is removed outright. (The failed write did store its value: `apply_one`
        // inserts before it decodes the old one, so put the damage back.)
        s.db.insert(super::super::value_key(b"bad"), &b"x"[..])
            .unwrap();
        let other = Op::Request {
            id: b"new".to_vec(),
            created_ms: 7,
            entry: b"e".to_vec(),
        };
        assert!(s.apply(6, &[put("bad"), other]).is_err());
        assert_eq!(s.request(b"new").unwrap(), None);
        assert_eq!(s.count_requests().unwrap(), 1);
    }

    /// Replaying an older record of an id (used again after its window) must not hide the
    /// newer record's id that sled kept, which startup repair looks for past the WAL's end.
    #[test]
    fn replay_keeps_a_newer_record_of_the_same_id() {
        let (_d, s) = open();
        s.apply(200, &[req("newer")]).unwrap();
        s.replay_request(100, &req("older")).unwrap();
        assert_eq!(s.request(b"id").unwrap().unwrap().lsn, 200);
        let after: Vec<u64> = s
            .requests_after(199)
            .unwrap()
            .iter()
            .map(|a| a.lsn)
            .collect();
        assert_eq!(after, [200]);
    }
}
