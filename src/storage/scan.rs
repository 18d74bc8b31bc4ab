//! Reading the key range in order (SCAN, KEYS, RANDOMKEY): sled's `'v'` range with the
//! write-back table laid over it.
//!
//! The table is read first, then sled. A key not in the table at that moment is in sled
//! already (the table lets a key go only after writing it back), so a key present throughout
//! is seen by one of the two reads even while a write-back moves it; a key deleted or added
//! meanwhile may or may not be seen. That is SCAN's guarantee.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::{Entry, Store, VALUE, decode_entry, value_key};
use crate::error::Result;

impl Store {
    /// Up to `limit` keys after `after` (from the start when `None`), in key order, with
    /// their entries, expired ones included; fewer than `limit` only at the end of the range.
    pub fn keys_after(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Entry)>> {
        let limit = limit.max(1);
        let overlay = self.table_after(after);
        let start = match after {
            Some(k) => Bound::Excluded(value_key(k)),
            None => Bound::Included(vec![VALUE]),
        };
        let mut page = BTreeMap::new();
        let mut full = false;
        // After a FLUSHDB that sled has not had yet, only the table holds keys.
        let sled_range = if self.sled_stale() { 0 } else { limit };
        for r in self
            .db
            .range::<Vec<u8>, _>((start, Bound::Excluded(vec![VALUE + 1])))
            .take(sled_range)
        {
            let (k, raw) = r?;
            page.insert(k[1..].to_vec(), decode_entry(&raw)?);
            full = page.len() == limit;
        }
        // Past a full page of sled, the next call covers what follows.
        let end = if full {
            page.keys().next_back().cloned()
        } else {
            None
        };
        for (k, state) in overlay {
            if end.as_ref().is_some_and(|e| &k > e) {
                continue;
            }
            match state {
                Some(e) => {
                    page.insert(k, e);
                }
                None => {
                    page.remove(&k);
                }
            }
        }
        Ok(page.into_iter().take(limit).collect())
    }
}
