//! WATCH's bookkeeping: which keys some connection watches, and a version for each that every
//! write of the key moves on (a client's own write, another's, the sweeper's expiry, a script,
//! a gRPC call: all go through `Engine::write`).
//!
//! A watch is taken under the key's stripe lock and every write bumps under the stripe locks
//! of its keys (or the world lock), so a version read at WATCH and compared at EXEC (again
//! under the stripe lock) misses no write in between. A key that was live at WATCH and has
//! merely expired by EXEC (no write yet) also counts as changed, as in Redis 7.
//! Costs the hot path one relaxed load while nothing is watched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Engine;
use super::tx::Tx;
use crate::error::Result;
use crate::wal::Op;

/// Every watched key's version.
#[derive(Default)]
pub(super) struct Watches {
    /// Number of live [`Watched`] tokens.
    active: AtomicUsize,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    keys: HashMap<Vec<u8>, Slot>,
    /// The last version handed out.
    clock: u64,
}

struct Slot {
    watchers: usize,
    version: u64,
}

/// One key a connection watches: give it back with [`Engine::unwatch`].
#[derive(Debug)]
pub struct Watched {
    key: Vec<u8>,
    version: u64,
    live: bool,
}

impl Watched {
    /// The watched key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl Watches {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves on the version of every watched key in `ops`.
    pub(super) fn touched(&self, ops: &[Op]) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut s = self.slots();
        for op in ops.iter().filter(|op| !op.is_request() && !op.is_clear()) {
            if s.keys.contains_key(op.key()) {
                s.clock += 1;
                let v = s.clock;
                if let Some(slot) = s.keys.get_mut(op.key()) {
                    slot.version = v;
                }
            }
        }
    }
}

impl Watches {
    /// Moves on every watched key that `exists` (a clear of the keyspace: as Redis, a
    /// watched key that was not there is not changed by it).
    pub(super) fn touched_existing(&self, exists: impl Fn(&[u8]) -> bool) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut s = self.slots();
        s.clock += 1;
        let v = s.clock;
        for (k, slot) in s.keys.iter_mut() {
            if exists(k) {
                slot.version = v;
            }
        }
    }
}

impl Engine {
    /// WATCH: notes each key's version and whether it is live now.
    pub fn watch(&self, keys: &[&[u8]]) -> Result<Vec<Watched>> {
        let ack = self.run(keys, |tx| {
            let mut s = self.watches.slots();
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let live = tx.entry(k)?.is_some();
                let version = match s.keys.get_mut(*k) {
                    Some(slot) => {
                        slot.watchers += 1;
                        slot.version
                    }
                    None => {
                        s.keys.insert(
                            k.to_vec(),
                            Slot {
                                watchers: 1,
                                version: 0,
                            },
                        );
                        0
                    }
                };
                self.watches.active.fetch_add(1, Ordering::Relaxed);
                out.push(Watched {
                    key: k.to_vec(),
                    version,
                    live,
                });
            }
            Ok(out)
        })?;
        // A read: nothing to wait for (WATCH replies OK whatever it saw).
        Ok(ack.value)
    }

    /// UNWATCH (and EXEC, DISCARD, a closed connection): forgets `watched`.
    pub fn unwatch(&self, watched: Vec<Watched>) {
        if watched.is_empty() {
            return;
        }
        let mut s = self.watches.slots();
        for w in watched {
            self.watches.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(slot) = s.keys.get_mut(&w.key) {
                slot.watchers -= 1;
                if slot.watchers == 0 {
                    s.keys.remove(&w.key);
                }
            }
        }
    }

    /// True if no watched key changed since WATCH. Call inside a `run` over the watched keys.
    pub fn watches_intact(&self, watched: &[Watched], tx: &Tx<'_>) -> Result<bool> {
        for w in watched {
            let version = self.watches.slots().keys.get(&w.key).map(|s| s.version);
            if version != Some(w.version) || (w.live && tx.entry(&w.key)?.is_none()) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
