//! How the engine runs its background threads (`spawn_background`: checkpoints, write-backs,
//! the census, request-id cleanup) and stops them, and the lock on the data directory.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::warn;

use super::{Engine, LOCK_RETRY};
use crate::error::{Error, Result};

impl Engine {
    /// Runs `tick` on a named thread until the engine closes; `tick` returns how long to sleep
    /// before the next call. Between ticks the thread holds only a `Weak` reference, and
    /// [`Engine::close`] wakes it and joins it.
    pub fn spawn_background(
        self: &Arc<Self>,
        name: &str,
        mut tick: impl FnMut(&Engine) -> Duration + Send + 'static,
    ) {
        let weak = Arc::downgrade(self);
        let bg = self.background.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                loop {
                    let sleep = {
                        let Some(e) = weak.upgrade() else { return };
                        if e.is_closed() {
                            return;
                        }
                        tick(&e)
                    };
                    if !bg.sleep(sleep) {
                        return;
                    }
                }
            });
        match spawned {
            Ok(h) => self
                .background
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(h),
            Err(e) => warn!("could not start the {name} thread: {e}"),
        }
    }
}

/// The stop signal and handles of the engine's background threads.
#[derive(Default)]
pub(super) struct Background {
    stopped: Mutex<bool>,
    wake: Condvar,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Background {
    /// Sleeps up to `d`; false once stopped.
    pub(super) fn sleep(&self, d: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, d, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        !*stopped
    }

    pub(super) fn stop_and_join(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            // The last reference can be dropped on a background thread; it cannot join itself.
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

pub(super) fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    // A lock released a moment ago can still be held by a forked child of this process until
    // its exec closes the inherited descriptor (flock belongs to the open file description).
    // So retry briefly before declaring the directory in use by someone else.
    let started = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_RETRY => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked(format!(
                    "data directory {} is in use by another tally process (it holds {})",
                    dir.display(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e));
            }
        }
    }
}
