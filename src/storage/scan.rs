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

/// Entries, and the last key a page covers (`None`: the end of the range).
pub type ScanPage = (Vec<(Vec<u8>, Entry)>, Option<Vec<u8>>);

impl Store {
    /// Up to `limit` keys after `after` (from the start when `None`), in key order, with
    /// their entries, expired ones included, and the last key the page covers (the next page
    /// starts after it; `None`: the range is done). A page may hold fewer than `limit` keys
    /// and not be the last (keys deleted in the table).
    pub fn keys_after(&self, after: Option<&[u8]>, limit: usize) -> Result<ScanPage> {
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
        let truncated = page.len() > limit;
        let entries: Vec<(Vec<u8>, Entry)> = page.into_iter().take(limit).collect();
        let end = if truncated {
            entries.last().map(|(k, _)| k.clone())
        } else {
            end
        };
        Ok((entries, end))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open, put};
    use crate::wal::Op;

    /// A key deleted in the table shortens a page without ending the range, and keys only the
    /// table holds appear in order.
    #[test]
    fn pages_merge_the_table_and_go_on_past_deletions() {
        let (_d, s) = open();
        s.enable_table();
        let ops: Vec<Op> = (0..30)
            .map(|i| put(&format!("k{i:02}"), "v", None))
            .collect();
        s.apply(1, &ops).unwrap();
        s.write_back(|f| f(), || Ok(())).unwrap();
        s.apply(2, &[Op::Delete { key: "k05".into() }]).unwrap();
        s.apply(3, &[put("k05x", "new", None)]).unwrap();
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, end) = s.keys_after(after.as_deref(), 10).unwrap();
            seen.extend(page.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()));
            match end {
                Some(e) => after = Some(e),
                None => break,
            }
        }
        let mut want: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
        want.retain(|k| k != "k05");
        want.push("k05x".into());
        want.sort();
        assert_eq!(seen, want);
    }
}
