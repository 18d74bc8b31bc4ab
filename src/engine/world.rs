//! The world lock: what makes a Lua script (and, later, FLUSHDB) atomic against every other
//! command, not just the ones sharing its keys.
//!
//! Every keyed command takes the lock shared before its stripe locks (`Engine::lock_keys`);
//! [`Engine::run_exclusive`] takes it alone. Shared is one atomic add on the hot path.
//!
//! A shared taker never blocks on the lock itself: it polls `try_read`, so a script that runs
//! away cannot park a tokio worker inside `RwLock::read`, and after `busy_script` of a
//! script's run it gives up with [`Error::Busy`] (Redis's `-BUSY`), leaving workers free for
//! `SCRIPT KILL`. Before that it waits, as a Redis client waits behind a running script.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use super::tx::Tx;
use super::{Ack, Engine};
use crate::error::{Error, Result};

/// The lock and what the exclusive holder is doing.
pub(super) struct World {
    lock: RwLock<()>,
    /// When the running script began, as nanoseconds since `origin` plus one (0: none).
    script_since: AtomicU64,
    origin: Instant,
    busy: Duration,
}

impl World {
    pub(super) fn new(busy: Duration) -> World {
        World {
            lock: RwLock::new(()),
            script_since: AtomicU64::new(0),
            origin: Instant::now(),
            busy,
        }
    }

    /// How long the running script has run, if one runs.
    pub(super) fn script_elapsed(&self) -> Option<Duration> {
        match self.script_since.load(Ordering::Acquire) {
            0 => None,
            t => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(t - 1)),
            ),
        }
    }

    /// The lock, shared; see the module doc.
    pub(super) fn shared(&self) -> Result<RwLockReadGuard<'_, ()>> {
        let mut spins = 0u32;
        loop {
            match self.lock.try_read() {
                Ok(g) => return Ok(g),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
            if self.script_elapsed().is_some_and(|d| d >= self.busy) {
                return Err(Error::Busy);
            }
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// The lock, alone. Behind a running script it polls like [`World::shared`] (so a second
    /// script gets `-BUSY` too, rather than parking a worker); otherwise it blocks, which
    /// std's RwLock makes fair to writers: new shared takers wait behind it.
    fn exclusive(&self) -> Result<RwLockWriteGuard<'_, ()>> {
        loop {
            match self.lock.try_write() {
                Ok(g) => return Ok(g),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
            match self.script_elapsed() {
                Some(d) if d >= self.busy => return Err(Error::Busy),
                Some(_) => std::thread::sleep(Duration::from_micros(100)),
                None => return Ok(self.lock.write().unwrap_or_else(|p| p.into_inner())),
            }
        }
    }
}

/// Clears the running-script mark however the script ends.
struct ScriptMark<'a>(&'a World);

impl Drop for ScriptMark<'_> {
    fn drop(&mut self) {
        self.0.script_since.store(0, Ordering::Release);
    }
}

impl Engine {
    /// Runs `f` with no other command running (a script's whole run): like [`Engine::run`]
    /// (one frozen time, every op `f` produced in one WAL record, nothing if `f` fails), but
    /// over any keys. While it runs past `busy_script`, other commands fail with
    /// [`Error::Busy`].
    pub fn run_exclusive<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R>) -> Result<Ack<R>> {
        let _g = self.world.exclusive()?;
        let since = self.world.origin.elapsed().as_nanos() as u64 + 1;
        self.world.script_since.store(since, Ordering::Release);
        let _mark = ScriptMark(&self.world);
        let mut tx = Tx::new(self, self.clock.now_ms());
        tx.exclusive = true;
        self.finish(tx, f)
    }

    /// How long the running script has run, if one runs (SCRIPT KILL, the busy reply).
    pub fn script_elapsed(&self) -> Option<Duration> {
        self.world.script_elapsed()
    }

    /// How long a script runs before other commands get `-BUSY`.
    pub fn busy_script(&self) -> Duration {
        self.world.busy
    }
}
