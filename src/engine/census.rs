//! The startup key census: after a restart the engine serves at once and counts its keys (and
//! keys with a TTL) in the background, in key order, `census_step_keys` keys per step with
//! appends paused. Promises: once done, `Engine::keys`/`ttl_keys` are exact, whatever writes ran
//! meanwhile. Until then `Engine::stats` answers at once with the partial counts and says so
//! (`Stats::keys_exact`): it never blocks a caller, which on the servers would be a tokio worker.
//! Callers that want exact counts wait first: [`Engine::on_census_done`] runs a callback when
//! the census ends (the servers await that, up to [`CENSUS_WAIT`]), and
//! [`Engine::wait_for_census`] blocks. It also adds any TTL-index entry a crash left missing
//! (see `storage`: that should never be needed).
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

/// How long a caller that wants exact key counts should wait for the census before answering
/// with what is counted so far (marked as partial).
pub const CENSUS_WAIT: Duration = Duration::from_secs(30);

/// A callback run once the census is done (or the engine closes).
pub type CensusWaiter = Box<dyn FnOnce() + Send>;

/// Where the census is.
#[derive(Default)]
pub(super) struct Census {
    /// The last key counted (`None`: none yet).
    cursor: Mutex<Option<Vec<u8>>>,
    done: AtomicBool,
    finished: Condvar,
    /// Run when it is done; `done` is set under this lock, so none is missed.
    waiters: Mutex<Vec<CensusWaiter>>,
}

impl Census {
    /// Marks the census done and runs the waiters.
    fn finish(&self) {
        {
            let _w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            self.done.store(true, Ordering::Release);
        }
        self.release();
    }

    /// Runs the waiters registered so far (all of them once done; at close, without marking
    /// the census done).
    pub(super) fn release(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        self.finished.notify_all();
        for w in waiters {
            w();
        }
    }
}

impl Engine {
    /// Starts the census thread.
    pub(super) fn spawn_census(self: &Arc<Self>) {
        let started = Instant::now();
        self.spawn_background("tally-census", move |e| {
            if e.config.faults.census_paused() {
                return Duration::from_millis(5);
            }
            e.census_tick(started)
        });
    }

    fn census_tick(&self, started: Instant) -> Duration {
        match self.census_step() {
            Ok(false) => Duration::ZERO,
            Ok(true) => {
                info!(
                    keys = self.keys.load(Ordering::Relaxed),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "key census done"
                );
                Duration::from_secs(u64::from(u32::MAX)) // done: idle until close
            }
            Err(err) => {
                error!("key census: {err}; retrying");
                Duration::from_secs(1)
            }
        }
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
                    // From now on writes go to the write-back table (see `storage`): the
                    // census, which reads sled, no longer has to see them there.
                    self.store.enable_table();
                    self.census.finish()
                }
            }
            Ok(self.census.done.load(Ordering::Relaxed))
        })
    }

    /// Applies `ops` to the store and returns how the key counts move, leaving out keys the
    /// census has yet to reach. Must run under the WAL lock (inside `Wal::append_with`).
    pub(super) fn apply_counted(&self, lsn: u64, ops: &[Op]) -> Result<Delta> {
        if self.census.done.load(Ordering::Acquire) {
            return self.store.apply(lsn, ops);
        }
        let cursor = self.census.cursor.lock().unwrap_or_else(|p| p.into_inner());
        self.store
            .apply_counting(lsn, ops, |key| cursor.as_deref().is_some_and(|c| key <= c))
    }

    /// True once the census has counted every key (`Stats` key counts are exact).
    pub fn census_done(&self) -> bool {
        self.census.done.load(Ordering::Acquire)
    }

    /// Runs `w` once the census is done, at once if it is, or when the engine closes. `w` runs
    /// on the census thread: it must be quick and must not block (it completes a channel).
    pub fn on_census_done(&self, w: CensusWaiter) {
        {
            let mut waiters = self
                .census
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !self.census.done.load(Ordering::Acquire) && !self.is_closed() {
                waiters.push(w);
                return;
            }
        }
        w();
    }

    /// Blocks (up to [`CENSUS_WAIT`], or until close) until the census is done. Not for async
    /// code: that awaits [`Engine::on_census_done`] instead.
    pub fn wait_for_census(&self) {
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
