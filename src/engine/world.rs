//! The world lock: what makes a Lua script (and FLUSHDB) atomic against every other command,
//! not just the ones sharing its keys.
//!
//! Every keyed command takes the lock shared before its stripe locks (`Engine::lock_keys`);
//! [`Engine::run_exclusive`] takes it alone. Shared is one atomic add on the hot path.
//!
//! Behind a running script a taker never blocks on the lock itself: it waits on a condvar
//! that the script's end signals, for at most what is left of `busy_script`, so a script that
//! runs away cannot park a tokio worker for ever inside `RwLock::read`; past `busy_script` it
//! gives up with [`Error::Busy`] (Redis's `-BUSY`), leaving workers free for `SCRIPT KILL`.
//! Before that it waits, as a Redis client waits behind a running script. (Polling with
//! sleeps instead cost a script under 50 clients five times Redis's CPU, mostly sleeps and
//! wake-ups.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
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
    /// Moves on when an exclusive holder lets go; `ended` and `wake` signal it.
    releases: AtomicU64,
    ended: Mutex<()>,
    wake: Condvar,
    /// Takers asleep on `wake` (the end of a script signals only when there are some).
    waiters: AtomicUsize,
}

/// Counts a sleeping taker for as long as it sleeps.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl World {
    pub(super) fn new(busy: Duration) -> World {
        World {
            lock: RwLock::new(()),
            script_since: AtomicU64::new(0),
            origin: Instant::now(),
            busy,
            releases: AtomicU64::new(0),
            ended: Mutex::new(()),
            wake: Condvar::new(),
            waiters: AtomicUsize::new(0),
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

    /// What a taker that found the lock held does before trying again (`seen`: `releases`
    /// before it tried): behind a script, wait for its end for at most what is left of
    /// `busy_script`, or fail with [`Error::Busy`]; otherwise (another taker is just getting
    /// or leaving it) yield.
    fn wait(&self, seen: u64) -> Result<()> {
        match self.script_elapsed() {
            Some(d) if d >= self.busy => Err(Error::Busy),
            Some(d) => {
                self.waiters.fetch_add(1, Ordering::AcqRel);
                let _counted = Waiting(&self.waiters);
                let g = self.ended.lock().unwrap_or_else(|p| p.into_inner());
                let _ = self
                    .wake
                    .wait_timeout_while(g, self.busy - d, |_| {
                        self.releases.load(Ordering::Acquire) == seen
                    })
                    .unwrap_or_else(|p| p.into_inner());
                Ok(())
            }
            None => {
                std::thread::yield_now();
                Ok(())
            }
        }
    }

    /// The lock, shared; see the module doc.
    pub(super) fn shared(&self) -> Result<RwLockReadGuard<'_, ()>> {
        loop {
            let seen = self.releases.load(Ordering::Acquire);
            match self.lock.try_read() {
                Ok(g) => return Ok(g),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) => self.wait(seen)?,
            }
        }
    }

    /// The lock, alone. Behind a running script it waits as [`World::shared`] does (so a
    /// second script gets `-BUSY` too, rather than parking a worker); behind shared holders
    /// it blocks, which std's RwLock makes fair to writers: new shared takers wait behind it.
    fn exclusive(&self) -> Result<Exclusive<'_>> {
        loop {
            let seen = self.releases.load(Ordering::Acquire);
            let guard = match self.lock.try_write() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) if self.script_elapsed().is_some() => {
                    self.wait(seen)?;
                    continue;
                }
                Err(TryLockError::WouldBlock) => {
                    self.lock.write().unwrap_or_else(|p| p.into_inner())
                }
            };
            let since = self.origin.elapsed().as_nanos() as u64 + 1;
            self.script_since.store(since, Ordering::Release);
            return Ok(Exclusive {
                guard: Some(guard),
                world: self,
            });
        }
    }
}

/// The lock held alone. Dropping it clears the running-script mark, lets go of the lock, and
/// only then wakes the waiters (woken earlier, they would find it still held).
struct Exclusive<'a> {
    guard: Option<RwLockWriteGuard<'a, ()>>,
    world: &'a World,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        let w = self.world;
        w.script_since.store(0, Ordering::Release);
        drop(self.guard.take());
        w.releases.fetch_add(1, Ordering::AcqRel);
        // A waiter counts itself before it takes `ended` and checks `releases`; taking `ended`
        // between the change and the notify means none misses it.
        if w.waiters.load(Ordering::Acquire) > 0 {
            drop(w.ended.lock().unwrap_or_else(|p| p.into_inner()));
            w.wake.notify_all();
        }
    }
}

impl Engine {
    /// Runs `f` with no other command running (a script's whole run): like [`Engine::run`]
    /// (one frozen time, every op `f` produced in one WAL record, nothing if `f` fails), but
    /// over any keys. While it runs past `busy_script`, other commands fail with
    /// [`Error::Busy`].
    pub fn run_exclusive<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<R>) -> Result<Ack<R>> {
        let _alone = self.world.exclusive()?;
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
