//! The startup key census: after a restart the engine serves at once and counts its keys (and
//! keys with a TTL) in the background, in key order, `census_step_keys` keys per step with
//! appends paused. Promises: once done, `Engine::keys`/`ttl_keys` are exact, whatever writes ran
//! meanwhile; until then `Engine::stats` waits for it (up to [`CENSUS_WAIT`]). It also adds any
//! TTL-index entry a crash left missing (see `storage`: that should never be needed).
//!
//! Why exact: a write applies and counts under the WAL lock, and a census step runs under that
//! lock too. A write to a key at or before the cursor (already counted) adjusts the counters
//! itself; a write past it does not, since the census will count the key in its new state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::Engine;
use crate::error::Result;
use crate::storage::Delta;
use crate::wal::Op;

/// How long `stats` waits for the census before answering with what is counted so far.
const CENSUS_WAIT: Duration = Duration::from_secs(30);

/// Where the census is.
#[derive(Default)]
pub(super) struct Census {
    /// The last key counted (`None`: none yet).
    cursor: Mutex<Option<Vec<u8>>>,
    done: AtomicBool,
    finished: Condvar,
}

impl Engine {
    /// Starts the census thread.
    pub(super) fn spawn_census(self: &Arc<Self>) {
        let started = Instant::now();
        self.spawn_background("tally-census", move |e| match e.census_step() {
            Ok(false) => Duration::ZERO,
            Ok(true) => {
                info!(
                    keys = e.keys.load(Ordering::Relaxed),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "key census done"
                );
                Duration::from_secs(u64::from(u32::MAX)) // done: idle until close
            }
            Err(err) => {
                error!("key census: {err}; retrying");
                Duration::from_secs(1)
            }
        });
    }

    /// One census step, with appends paused: counts the next `census_step_keys` keys (1024 by
    /// default, well under a millisecond). True once every key is counted.
    fn census_step(&self) -> Result<bool> {
        self.wal.with_appends_paused(|| {
            let mut cursor = self.census.cursor.lock().unwrap_or_else(|p| p.into_inner());
            let step = self
                .store
                .census_step(cursor.as_deref(), self.config.census_step_keys.max(1))?;
            self.keys.fetch_add(step.keys, Ordering::Relaxed);
            self.ttl_keys.fetch_add(step.ttl_keys, Ordering::Relaxed);
            if step.repaired > 0 {
                warn!(
                    repaired = step.repaired,
                    "added TTL index entries missing after a crash"
                );
            }
            match step.last {
                Some(k) => *cursor = Some(k),
                None => {
                    self.census.done.store(true, Ordering::Release);
                    self.census.finished.notify_all();
                }
            }
            Ok(self.census.done.load(Ordering::Relaxed))
        })
    }

    /// Applies `ops` to the store and returns how the key counts move, leaving out keys the
    /// census has yet to reach. Must run under the WAL lock (inside `Wal::append_with`).
    pub(super) fn apply_counted(&self, ops: &[Op]) -> Result<Delta> {
        if self.census.done.load(Ordering::Acquire) {
            return self.store.apply(ops);
        }
        let cursor = self.census.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let mut delta = Delta::default();
        for op in ops {
            let d = self.store.apply(std::slice::from_ref(op))?;
            if cursor.as_deref().is_some_and(|c| op.key() <= c) {
                delta.keys += d.keys;
                delta.ttl_keys += d.ttl_keys;
            }
        }
        Ok(delta)
    }

    /// Waits (up to [`CENSUS_WAIT`], or until close) for the census to finish.
    pub(super) fn wait_for_census(&self) {
        if self.census.done.load(Ordering::Acquire) {
            return;
        }
        let cursor = self.census.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .census
            .finished
            .wait_timeout_while(cursor, CENSUS_WAIT, |_| {
                !self.census.done.load(Ordering::Acquire) && !self.is_closed()
            })
            .unwrap_or_else(|p| p.into_inner());
    }
}
