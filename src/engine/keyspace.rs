//! The keyspace commands' engine side: ordered reads of the whole key range (SCAN, KEYS,
//! RANDOMKEY) that see this command's or transaction's own writes, SCAN's cursors, and
//! RENAME, COPY and TOUCH. They run in a [`Tx`] like every command, so they work inside
//! MULTI/EXEC and scripts; the whole-range reads take no stripe locks (none name their keys).
//!
//! A SCAN cursor is a number standing for the last key returned (Redis's cursors are numbers
//! too): the engine remembers at most [`MAX_CURSORS`] of them, [`MAX_CURSOR_BYTES`] of keys in
//! all, and forgets the oldest first. A forgotten or unknown cursor starts the scan over,
//! which keeps SCAN's promise (every key present throughout is returned at least once) at the
//! cost of repeats.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use super::tx::Tx;
use crate::error::{Error, Result};
use crate::wal::Op;

/// Most SCAN cursors remembered.
pub const MAX_CURSORS: usize = 10_000;
/// Most key bytes the remembered cursors hold.
pub const MAX_CURSOR_BYTES: usize = 16 << 20;

/// A page of live keys and where the next one starts (`None`: the end).
pub type Page = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// SCAN's cursors: number -> the last key returned.
#[derive(Default)]
pub struct Cursors {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    last: u64,
    keys: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
    bytes: usize,
}

impl Cursors {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new cursor for a scan that returned up to `key`.
    fn save(&self, key: Vec<u8>) -> u64 {
        let mut t = self.table();
        if t.last == 0 {
            // Random start, so cursors of a restarted server are unlikely to be taken as new.
            t.last = rand::random::<u32>() as u64;
        }
        t.last += 1;
        let id = t.last;
        t.bytes += key.len();
        t.keys.insert(id, key);
        t.order.push_back(id);
        while t.order.len() > MAX_CURSORS || t.bytes > MAX_CURSOR_BYTES {
            let Some(old) = t.order.pop_front() else {
                break;
            };
            if let Some(k) = t.keys.remove(&old) {
                t.bytes -= k.len();
            }
        }
        id
    }

    fn load(&self, id: u64) -> Option<Vec<u8>> {
        self.table().keys.get(&id).cloned()
    }
}

impl Tx<'_> {
    /// Live keys after `after`, about `limit` of them, and where the next page starts
    /// (`None`: the end).
    pub fn keys_page(&self, after: Option<&[u8]>, limit: usize) -> Result<Page> {
        let (stored, end) = self.store.keys_after(after, limit)?;
        let mut page: BTreeMap<Vec<u8>, Option<i64>> = stored
            .into_iter()
            .map(|(k, e)| (k, e.deadline_ms))
            .collect();
        // This transaction's own writes in the same range.
        let in_range =
            |k: &[u8]| after.is_none_or(|a| k > a) && end.as_deref().is_none_or(|e| k <= e);
        for op in self.ops.iter() {
            match op {
                Op::Clear => page.clear(),
                Op::Put {
                    key, deadline_ms, ..
                } if in_range(key) => {
                    page.insert(key.clone(), *deadline_ms);
                }
                Op::Delete { key } if in_range(key) => {
                    page.remove(key);
                }
                _ => {}
            }
        }
        let now = self.now();
        let keys = page
            .into_iter()
            .filter(|(_, d)| d.is_none_or(|d| now <= d))
            .map(|(k, _)| k)
            .collect();
        Ok((keys, end))
    }

    /// SCAN: a page of about `count` keys from `cursor` (0: the start) and the next cursor
    /// (0: done).
    pub fn scan(&self, cursor: u64, count: usize) -> Result<(u64, Vec<Vec<u8>>)> {
        let after = match cursor {
            0 => None,
            c => self.cursors.load(c),
        };
        let (keys, next) = self.keys_page(after.as_deref(), count)?;
        let keys = keys
            .into_iter()
            .map(|k| self.returning(k))
            .collect::<Result<_>>()?;
        Ok((next.map_or(0, |k| self.cursors.save(k)), keys))
    }

    /// KEYS: every live key `keep` accepts, counted against the reply limit.
    pub fn all_keys(&self, keep: impl Fn(&[u8]) -> bool) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (keys, next) = self.keys_page(after.as_deref(), 1024)?;
            for k in keys.into_iter().filter(|k| keep(k)) {
                out.push(self.returning(k)?);
            }
            match next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// RANDOMKEY: one of the live keys following a random point of the range (or the first
    /// ones), picked at random.
    pub fn random_key(&self) -> Result<Option<Vec<u8>>> {
        use rand::seq::IndexedRandom;
        let start: [u8; 8] = rand::random();
        for after in [Some(&start[..]), None] {
            let mut after = after.map(<[u8]>::to_vec);
            // Past expired keys still waiting for the sweeper, a bounded walk.
            for _ in 0..16 {
                let (keys, next) = self.keys_page(after.as_deref(), 64)?;
                if let Some(k) = keys.choose(&mut rand::rng()) {
                    return Ok(Some(k.clone()));
                }
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
        }
        Ok(None)
    }

    /// RENAME (`nx`: RENAMENX): moves the value and its TTL; false when NX refused.
    pub fn rename(&mut self, src: &[u8], dst: &[u8], nx: bool) -> Result<bool> {
        let Some(e) = self.entry(src)? else {
            return Err(Error::InvalidArgument("no such key".into()));
        };
        if src == dst {
            return Ok(!nx);
        }
        if nx && self.entry(dst)?.is_some() {
            return Ok(false);
        }
        self.remove(src)?;
        self.put(dst, e.value, e.deadline_ms)?;
        Ok(true)
    }

    /// COPY: copies the value and its TTL; false when the source is missing, or the
    /// destination exists and `replace` is not set.
    pub fn copy(&mut self, src: &[u8], dst: &[u8], replace: bool) -> Result<bool> {
        if src == dst {
            return Err(Error::InvalidArgument(
                "source and destination objects are the same".into(),
            ));
        }
        let Some(e) = self.entry(src)? else {
            return Ok(false);
        };
        if !replace && self.entry(dst)?.is_some() {
            return Ok(false);
        }
        self.put(dst, e.value, e.deadline_ms)?;
        Ok(true)
    }
}
