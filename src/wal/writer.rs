//! The group-commit writer thread and the segment it appends to.
//!
//! One thread owns the active segment. It swaps the shared buffer out, writes it with one
//! `write`, fsyncs once for the whole batch, then releases every waiter the fsync covers; while
//! it is in the syscall the next batch fills up. A full segment is fsync'd and sealed before the
//! next one is created, so only the newest can hold a torn tail. Failure handling (fail-stop,
//! ENOSPC retry) is described in the parent module.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::{FsyncMode, SegmentInfo, Shared, segment};
use crate::error::{Error, Result};
use crate::fault::{self, Faults, Point};

/// Wait between retries of a write that hit ENOSPC.
const NO_SPACE_RETRY: Duration = Duration::from_millis(100);

/// The segment being appended to; owned by the writer thread.
pub(super) struct Active {
    file: File,
    /// Bytes written (and not rolled back).
    len: u64,
    /// Bytes covered by a real fsync.
    synced_len: u64,
    /// Power-loss simulation only: `<segment>.synced`, holding the fsynced length.
    synced_file: Option<File>,
}

impl Active {
    pub(super) fn new(file: File, info: &SegmentInfo) -> Result<Active> {
        let mut a = Active {
            file,
            len: info.len,
            synced_len: info.len,
            synced_file: None,
        };
        if fault::simulate_power_loss() {
            let side = info.path.with_extension("synced");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&side)
                .map_err(|e| Error::io(format!("opening {}", side.display()), e))?;
            a.synced_file = Some(f);
            // Whatever is in the segment now survived (or was just created durable).
            a.record_synced();
        }
        Ok(a)
    }

    /// One 8-byte `pwrite` in place: a killed process leaves either the old or the new value,
    /// never an empty file. No fsync: it only has to outlive the process, as the page cache
    /// does on kill -9.
    fn record_synced(&self) {
        use std::os::unix::fs::FileExt;
        if let Some(f) = &self.synced_file {
            let _ = f.write_all_at(&self.len.to_le_bytes(), 0);
        }
    }

    /// Writes `buf` at the end. On failure the segment is cut back to its previous length, so a
    /// retry cannot leave half a batch in front of the whole one.
    fn write(&mut self, faults: &Faults, buf: &[u8]) -> io::Result<()> {
        let r = if faults.enospc() {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            self.file.write_all(buf)
        };
        match r {
            Ok(()) => {
                self.len += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    /// fdatasync, honouring injected faults; in power-loss simulation, records the length that
    /// is now really durable beside the segment. `group_commit` marks the fsync that
    /// acknowledgements wait for: the one the `skip-fsync` fault removes.
    fn sync(&mut self, faults: &Faults, group_commit: bool) -> io::Result<()> {
        if faults.fsync_error() {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if group_commit && faults.skip_fsync() {
            return Ok(());
        }
        self.file.sync_data()?;
        self.synced_len = self.len;
        self.record_synced();
        Ok(())
    }
}

/// The group-commit loop.
pub(super) fn run(shared: Arc<Shared>, mut active: Active) {
    let mode = shared.config.fsync;
    let faults = &shared.config.faults;
    let mut spare: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut last_sync = Instant::now();
    loop {
        let (batch_last, closing) = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while st.buf.is_empty() && !st.closed {
                st.writer_idle = true;
                st = match mode {
                    FsyncMode::Always => shared.work.wait(st).unwrap_or_else(|p| p.into_inner()),
                    FsyncMode::Periodic(every) => {
                        if st.written > st.synced && last_sync.elapsed() >= every {
                            break;
                        }
                        shared
                            .work
                            .wait_timeout(st, every)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
            }
            st.writer_idle = false;
            std::mem::swap(&mut st.buf, &mut spare);
            (st.next_lsn - 1, st.closed)
        };
        let had_data = !spare.is_empty();
        if had_data {
            if let Err(msg) = write_batch(&shared, &mut active, &spare) {
                return fail(&shared, msg);
            }
            fault::point(Point::WalAfterWrite);
        }
        spare.clear();
        let want_sync = match mode {
            FsyncMode::Always => had_data || closing,
            FsyncMode::Periodic(every) => closing || last_sync.elapsed() >= every,
        };
        if want_sync {
            if let Err(e) = active.sync(faults, true) {
                // Never retried: after a failed fsync the kernel may have dropped the pages.
                return fail(
                    &shared,
                    format!("WAL fdatasync failed: {e}; refusing further writes"),
                );
            }
            last_sync = Instant::now();
            if had_data {
                fault::point(Point::WalAfterFsync);
            }
        }
        let ready = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.written = batch_last;
            if want_sync {
                st.synced = batch_last;
            }
            let acked = st.acked(mode);
            let rest = st.waiters.split_off(&(acked + 1));
            std::mem::replace(&mut st.waiters, rest)
        };
        shared.acked.notify_all();
        for w in ready.into_values().flatten() {
            w(Ok(()));
        }
        if closing {
            return;
        }
        if let Err(e) = maybe_roll(&shared, &mut active, batch_last) {
            return fail(
                &shared,
                format!("WAL segment roll failed: {e}; refusing further writes"),
            );
        }
    }
}

/// Writes one batch. Out of space: the records are already applied, so they must not be
/// dropped; new appends are refused (`Error::NoSpace`) and the write is retried until space
/// returns. Any other error is fatal.
fn write_batch(shared: &Shared, active: &mut Active, batch: &[u8]) -> Result<(), String> {
    let mut warned = false;
    loop {
        match active.write(&shared.config.faults, batch) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                let closed = {
                    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.no_space = true;
                    st.closed
                };
                if closed {
                    return Err(format!("WAL write failed at shutdown: {e}"));
                }
                if !warned {
                    warn!(
                        "WAL write failed: {e}; refusing new writes and retrying until space returns"
                    );
                    warned = true;
                }
                std::thread::sleep(NO_SPACE_RETRY);
            }
            Err(e) => return Err(format!("WAL write failed: {e}; refusing further writes")),
        }
    }
    if warned {
        info!("WAL write succeeded again; accepting writes");
        shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .no_space = false;
    }
    let mut segs = shared.segments.lock().unwrap_or_else(|p| p.into_inner());
    segs.last_mut().expect("active segment").len += batch.len() as u64;
    shared
        .disk_bytes
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    Ok(())
}

/// Seals the active segment once it is full and starts the next one at `last + 1`.
fn maybe_roll(shared: &Shared, active: &mut Active, last: u64) -> Result<()> {
    if active.len < shared.config.segment_bytes {
        return Ok(());
    }
    if active.synced_len < active.len {
        // A sealed segment must be wholly durable: only the newest may hold a torn tail.
        active
            .sync(&shared.config.faults, false)
            .map_err(|e| Error::io("fdatasync before sealing a segment", e))?;
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.synced = st.synced.max(last);
    }
    let (f, info) = segment::create(&shared.dir, last + 1)?;
    *active = Active::new(f, &info)?;
    shared.disk_bytes.fetch_add(info.len, Ordering::Relaxed);
    shared
        .segments
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(info);
    debug!(first_lsn = last + 1, "started a new WAL segment");
    Ok(())
}

fn fail(shared: &Shared, msg: String) {
    error!("{msg}");
    let waiters = {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.failed = Some(msg.clone());
        std::mem::take(&mut st.waiters)
    };
    shared.acked.notify_all();
    for w in waiters.into_values().flatten() {
        w(Err(Error::Unavailable(msg.clone())));
    }
}
