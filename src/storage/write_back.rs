//! The write-back itself (see `table` for the design): sealing the table at a cut, waiting
//! for the WAL to make the cut durable, writing the sealed generation to sled in key order,
//! and retiring it into the clean cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::table::{
    CLEAN_BYTES, CLEAN_KEYS, Generation, SHARDS, SLOT_OVERHEAD, State, Table, WRITE_BACK_CHUNK,
    WRITE_BACK_CHUNK_BYTES,
};
use super::{Store, encode_entry, value_key};
use crate::error::Result;

impl Store {
    /// Runs `f` while no write-back runs (so nothing writes sled's values; the power-loss
    /// simulation copies sled's files in it). Take it before pausing appends, as
    /// [`Store::write_back`] does.
    pub fn with_write_back_paused<R>(&self, f: impl FnOnce() -> R) -> R {
        let _g = self.table.sealed.lock().unwrap_or_else(|p| p.into_inner());
        f()
    }

    /// One write-back (see the module doc): writes a generation left by a failed one, then
    /// seals the table inside `paused` (which must run its argument with appends paused) and
    /// writes the sealed generation to sled. Before writing a generation it calls
    /// `durable`, which must return once every record appended so far is durable in the WAL:
    /// sled then never holds the effect of a record the log could still lose (of a multi-key
    /// record, part of it could survive a crash that way: replay of an older record of one of
    /// its keys would overwrite that key and leave the others). Returns the keys written.
    pub fn write_back(
        &self,
        paused: impl Fn(&mut dyn FnMut()),
        durable: impl Fn() -> Result<()>,
    ) -> Result<usize> {
        let mut pending = self.table.sealed.lock().unwrap_or_else(|p| p.into_inner());
        let clears_before = self.table.clears.load(Ordering::Acquire);
        // A FLUSHDB reaches sled's values once durable and before any generation sealed
        // after it (a clear empties the generations sealed before it, so a generation that
        // still holds keys is newer than every clear counted now).
        let clear_sled = || -> Result<()> {
            let clears = self.table.clears.load(Ordering::Acquire);
            if clears != self.table.cleared_in_sled.load(Ordering::Acquire) {
                durable()?;
                self.clear_sled_values(&paused)?;
                self.table.cleared_in_sled.store(clears, Ordering::Release);
            }
            Ok(())
        };
        let mut written = 0;
        if *pending {
            clear_sled()?;
            durable()?;
            written += self.write_sealed(&paused)?;
            *pending = false;
        }
        let mut any = false;
        paused(&mut || {
            for s in self.table.shards.iter() {
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
                if !s.current.is_empty() {
                    // Sized as the last one was: the next interval is likely alike.
                    let next = HashMap::with_capacity(s.current.len());
                    s.sealed = Arc::new(std::mem::replace(&mut s.current, next));
                    any = true;
                }
            }
        });
        if any {
            *pending = true;
        }
        clear_sled()?;
        if any {
            durable()?;
            written += self.write_sealed(&paused)?;
            *pending = false;
        }
        // A FLUSHDB while this ran may have emptied a generation before it was written: its
        // values are then in neither sled nor (after a checkpoint at the cut) the WAL, unless
        // the clear itself is durable. So wait for it before saying the cut is in sled.
        if self.table.clears.load(Ordering::Acquire) != clears_before {
            durable()?;
        }
        Ok(written)
    }

    /// Writes the sealed generation to sled, in key order (each sled leaf once), with plain
    /// inserts, then drops it from the table. Not one `apply_batch`: a batch of a million keys
    /// took sled gigabytes and seconds (RSS 2.3 GiB loading a million counters), and it need
    /// not be atomic, because every record it holds is durable in the WAL by now (`durable` in
    /// [`Store::write_back`]) and newer than the last checkpoint (which wrote back everything
    /// before it), so after a crash part-way replay rewrites every key it touched.
    ///
    /// The inserts run with appends paused, [`WRITE_BACK_CHUNK`] keys (at most
    /// [`WRITE_BACK_CHUNK_BYTES`] of values) at a time, so sled is never
    /// written by two threads at once (as before the table, when every write to sled ran
    /// under the WAL's lock): with the write-back's inserts running beside the apply path's,
    /// sled 0.34 hung in its final flush at shutdown in about half the runs of
    /// `tests/abuse.rs` (1 MiB values).
    fn write_sealed(&self, paused: &impl Fn(&mut dyn FnMut())) -> Result<usize> {
        let sealed: Vec<Arc<Generation>> = self
            .table
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).sealed.clone())
            .collect();
        let mut all: Vec<(&Vec<u8>, &State)> = sealed.iter().flat_map(|g| g.iter()).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // No reads: the TTL index is already exact (kept at apply time, see the module doc).
        let mut rest = &all[..];
        while !rest.is_empty() {
            let mut bytes = 0;
            let n = rest
                .iter()
                .take(WRITE_BACK_CHUNK)
                .take_while(|(_, st)| {
                    bytes += st.as_ref().map_or(0, |e| e.value.len());
                    bytes <= WRITE_BACK_CHUNK_BYTES
                })
                .count()
                .max(1);
            let (chunk, later) = rest.split_at(n);
            rest = later;
            let mut r: Result<()> = Ok(());
            paused(&mut || {
                r = chunk.iter().try_for_each(|(key, state)| {
                    match state {
                        Some(e) => self
                            .db
                            .insert(value_key(key), encode_entry(&e.value, e.deadline_ms))?,
                        None => self.db.remove(value_key(key))?,
                    };
                    Ok(())
                });
            });
            r?;
        }
        let n = all.len();
        drop(all);
        drop(sealed);
        self.table.retire_sealed();
        Ok(n)
    }
}

impl Table {
    /// Drops the sealed generations, now in sled, keeping their values as clean ones.
    fn retire_sealed(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|p| p.into_inner());
            let sealed = std::mem::take(&mut s.sealed);
            // Unique: only write-backs clone it, and they are serialized.
            let sealed = Arc::try_unwrap(sealed).unwrap_or_else(|a| (*a).clone());
            self.dirty.fetch_sub(sealed.len(), Ordering::Relaxed);
            let s = &mut *s;
            for (key, state) in sealed {
                let cost = |k: &[u8], v: &State| {
                    k.len() + v.as_ref().map_or(0, |e| e.value.len()) + SLOT_OVERHEAD
                };
                if let Some((k, old)) = s.clean.remove_entry(&key) {
                    s.clean_bytes -= cost(&k, &old);
                }
                if state.is_none() {
                    continue;
                }
                let c = cost(&key, &state);
                if s.clean.len() >= CLEAN_KEYS / SHARDS || s.clean_bytes + c > CLEAN_BYTES / SHARDS
                {
                    s.clean.clear();
                    s.clean_bytes = 0;
                }
                if c <= CLEAN_BYTES / SHARDS {
                    s.clean_bytes += c;
                    s.clean.insert(key, state);
                }
            }
        }
    }
}
