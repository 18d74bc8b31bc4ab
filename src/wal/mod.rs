//! Tally's write-ahead log: the durability point.
//!
//! Owns: record framing (`record`), segment files and the startup scan (`segment`), and the
//! group-commit writer below. Promises: an LSN handed out by [`Wal::append`] is *acknowledged*
//! (waiters on it are released) only after the bytes of that record and of every earlier record
//! are written and, in [`FsyncMode::Always`], `fdatasync`'d. LSNs are contiguous and survive
//! restarts (the next LSN is one past the newest found in the WAL or the checkpoint).
//!
//! Group commit: appenders encode their record into a shared buffer under a mutex (no I/O there)
//! and return at once; one writer thread swaps the buffer out, writes it with one `write`, and
//! fsyncs once for the whole batch. While it waits on the disk the next batch fills up, so the
//! batch size follows the load without a timer.
//!
//! Fail-stop: if an fsync (or a write, for any reason but a full disk) fails, every pending and
//! future waiter gets `Error::Unavailable`. We never retry an fsync: after a failed fsync Linux
//! may have dropped the dirty pages, so a retry can "succeed" without the data (the PostgreSQL
//! fsyncgate lesson). A write that hits ENOSPC is different: nothing was lost, the batch is still
//! in memory, so the writer cuts the segment back, refuses new appends with `Error::NoSpace`
//! (before they touch the state), and retries the batch until space returns.
//!
//! Leaves out on purpose: what a record means (the engine's job) and when segments may be removed
//! (the engine's checkpoint decides; [`Wal::remove_through`] only deletes what it is told).

pub mod record;
pub mod segment;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

pub use record::{Op, Record};
pub use segment::SegmentInfo;

use crate::error::{Error, Result};
use crate::fault::{self, Faults, Point};

/// Wait between retries of a write that hit ENOSPC.
const NO_SPACE_RETRY: Duration = Duration::from_millis(100);

/// When an appended record counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// After the `fdatasync` that covers it. Nothing acknowledged is lost on a crash or power loss.
    Always,
    /// After the `write` to the OS; an fsync runs every given interval. A process crash loses
    /// nothing; a power loss or kernel crash loses up to one interval of acknowledged writes.
    Periodic(Duration),
}

/// How the WAL is set up.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Directory holding the segment files.
    pub dir: PathBuf,
    /// A segment is sealed and a new one started once it reaches this size.
    pub segment_bytes: u64,
    /// Acknowledgement rule.
    pub fsync: FsyncMode,
    /// Injected I/O faults (tests only; all off by default).
    pub faults: Arc<Faults>,
}

/// A callback run once the LSN it waits for is acknowledged (or the WAL has failed).
pub type Waiter = Box<dyn FnOnce(Result<()>) + Send>;

/// The log. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread when the buffer gains a record or the log closes.
    work: Condvar,
    /// Wakes blocking waiters when the acknowledged LSN moves or the log fails.
    acked: Condvar,
    /// All segments, oldest first; the last is the one being appended to.
    segments: Mutex<Vec<SegmentInfo>>,
    /// Sum of the segments' lengths, readable without a lock (the checkpointer polls it).
    disk_bytes: AtomicU64,
    dir: PathBuf,
    config: WalConfig,
}

struct State {
    buf: Vec<u8>,
    next_lsn: u64,
    /// Highest LSN handed to the OS with `write`.
    written: u64,
    /// Highest LSN covered by an fsync.
    synced: u64,
    failed: Option<String>,
    /// The last write hit ENOSPC: refuse new appends until a retry succeeds.
    no_space: bool,
    /// The writer is blocked on `work` waiting for records. Appenders wake it only then: while
    /// it is busy writing or in fsync it looks at the buffer again by itself, and skipping the
    /// futex wake on every append saves a syscall per write under load.
    writer_idle: bool,
    closed: bool,
    waiters: BTreeMap<u64, Vec<Waiter>>,
}

impl State {
    fn acked(&self, mode: FsyncMode) -> u64 {
        match mode {
            FsyncMode::Always => self.synced,
            FsyncMode::Periodic(_) => self.written,
        }
    }
}

/// Sizes for `Stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalStats {
    /// Bytes in all segment files.
    pub bytes: u64,
    /// Number of segment files.
    pub segments: u64,
    /// Highest LSN covered by an fsync.
    pub synced_lsn: u64,
    /// Highest LSN handed out.
    pub last_lsn: u64,
}

impl Wal {
    /// Opens the WAL in `config.dir`, replaying every record newer than `checkpoint_lsn` through
    /// `apply`, and starts the writer thread. Returns the log and the number of records replayed.
    pub fn open(
        config: WalConfig,
        checkpoint_lsn: u64,
        apply: &mut dyn FnMut(Record) -> Result<()>,
    ) -> Result<(Wal, u64)> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io(format!("creating {}", config.dir.display()), e))?;
        let rec = segment::recover(&config.dir, checkpoint_lsn, apply)?;
        let mut segments = rec.segments;
        if rec.wal_end < checkpoint_lsn && !segments.is_empty() {
            // The log ends before the checkpoint (it lost synced data, or predates our rule that
            // checkpoints never pass the fsynced LSN): every record in it is covered by sled,
            // so start clean at checkpoint + 1 instead of continuing a segment out of sequence.
            warn!(
                wal_end = rec.wal_end,
                checkpoint_lsn, "WAL ends before the checkpoint; starting a new segment after it"
            );
            for s in segments.drain(..) {
                std::fs::remove_file(&s.path)
                    .map_err(|e| Error::io(format!("removing {}", s.path.display()), e))?;
                let _ = std::fs::remove_file(s.path.with_extension("synced"));
            }
        }
        let active = match segments.last() {
            Some(last) => Active::new(segment::open_append(last)?, last)?,
            None => {
                let (f, info) = segment::create(&config.dir, rec.last_lsn + 1)?;
                let a = Active::new(f, &info)?;
                segments.push(info);
                a
            }
        };
        info!(
            last_lsn = rec.last_lsn,
            replayed = rec.replayed,
            segments = segments.len(),
            "WAL opened"
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buf: Vec::with_capacity(1 << 16),
                next_lsn: rec.last_lsn + 1,
                written: rec.last_lsn,
                synced: rec.last_lsn,
                failed: None,
                no_space: false,
                writer_idle: false,
                closed: false,
                waiters: BTreeMap::new(),
            }),
            work: Condvar::new(),
            acked: Condvar::new(),
            disk_bytes: AtomicU64::new(segments.iter().map(|s| s.len).sum()),
            segments: Mutex::new(segments),
            dir: config.dir.clone(),
            config,
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tally-wal".into())
            .spawn(move || writer(s, active))
            .map_err(|e| Error::io("spawning the WAL writer thread", e))?;
        Ok((
            Wal {
                shared,
                writer: Mutex::new(Some(handle)),
            },
            rec.replayed,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record holding `ops` and returns its LSN. Does no I/O: the record becomes
    /// durable when the writer's next batch covers it; wait with [`Wal::wait`] or [`Wal::notify`].
    pub fn append(&self, ops: &[Op]) -> Result<u64> {
        self.append_with(ops, || Ok(()))
    }

    /// Like [`Wal::append`], but first runs `apply` under the log's lock and appends only if it
    /// succeeds. The engine applies the record to its state here, so that (1) LSN order is
    /// apply order, and (2) every LSN `<= last_lsn()` is already applied, which is what makes a
    /// checkpoint at `last_lsn()` sound. Nothing is applied when the log refuses appends.
    pub fn append_with(&self, ops: &[Op], apply: impl FnOnce() -> Result<()>) -> Result<u64> {
        let mut st = self.lock();
        if let Some(m) = &st.failed {
            return Err(Error::Unavailable(m.clone()));
        }
        if st.closed {
            return Err(Error::Unavailable("server is shutting down".into()));
        }
        if st.no_space {
            return Err(Error::NoSpace);
        }
        fault::point(Point::WalBeforeAppend);
        apply()?;
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        record::encode(&mut st.buf, lsn, ops);
        let wake = st.writer_idle;
        drop(st);
        if wake {
            self.shared.work.notify_one();
        }
        Ok(lsn)
    }

    /// The newest LSN covered by an fsync.
    pub fn synced_lsn(&self) -> u64 {
        self.lock().synced
    }

    /// The newest LSN handed out (0 before the first record ever).
    pub fn last_lsn(&self) -> u64 {
        self.lock().next_lsn - 1
    }

    /// True if `lsn` is already acknowledged.
    pub fn is_acked(&self, lsn: u64) -> bool {
        self.lock().acked(self.shared.config.fsync) >= lsn
    }

    /// Blocks until `lsn` is acknowledged, or fails if the log has failed.
    pub fn wait(&self, lsn: u64) -> Result<()> {
        let mode = self.shared.config.fsync;
        let mut st = self.lock();
        loop {
            if st.acked(mode) >= lsn {
                return Ok(());
            }
            if let Some(m) = &st.failed {
                return Err(Error::Unavailable(m.clone()));
            }
            st = self
                .shared
                .acked
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Runs `w` once `lsn` is acknowledged (at once if it already is), on the writer thread.
    /// `w` must be quick and must not block: typically it completes a oneshot channel.
    pub fn notify(&self, lsn: u64, w: Waiter) {
        let mut st = self.lock();
        if st.acked(self.shared.config.fsync) >= lsn {
            drop(st);
            return w(Ok(()));
        }
        if let Some(m) = &st.failed {
            let m = m.clone();
            drop(st);
            return w(Err(Error::Unavailable(m)));
        }
        st.waiters.entry(lsn).or_default().push(w);
    }

    /// Deletes sealed segments whose records all have LSN <= `lsn`. The caller promises that the
    /// state those records produced is durable elsewhere (the checkpoint contract).
    pub fn remove_through(&self, lsn: u64) -> Result<usize> {
        let mut segs = self
            .shared
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        // Never the last (active) segment: the writer holds it open.
        while segs.len() > 1 && segs[1].first_lsn <= lsn + 1 {
            let s = segs.remove(0);
            self.shared.disk_bytes.fetch_sub(s.len, Ordering::Relaxed);
            std::fs::remove_file(&s.path)
                .map_err(|e| Error::io(format!("removing {}", s.path.display()), e))?;
            let _ = std::fs::remove_file(s.path.with_extension("synced"));
            if n == 0 {
                fault::point(Point::CheckpointAfterRemove);
            }
            debug!(segment = %s.path.display(), "removed checkpointed WAL segment");
            n += 1;
        }
        drop(segs);
        if n > 0 {
            segment::sync_dir(&self.shared.dir)?;
        }
        Ok(n)
    }

    /// Bytes in all segment files, without taking a lock.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// Sizes and positions, for `Stats`.
    pub fn stats(&self) -> WalStats {
        let (synced_lsn, last_lsn) = {
            let st = self.lock();
            (st.synced, st.next_lsn - 1)
        };
        let segs = self
            .shared
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        WalStats {
            bytes: self.disk_bytes(),
            segments: segs.len() as u64,
            synced_lsn,
            last_lsn,
        }
    }

    /// Stops accepting appends, lets the writer write and fsync what is buffered, and joins it.
    pub fn close(&self) {
        self.lock().closed = true;
        self.shared.work.notify_all();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }

    /// Why the log stopped acknowledging writes, if it did (fail-stop).
    pub fn failure(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// Runs `f` while no record can be appended (the log's lock is held).
    pub fn with_appends_paused<R>(&self, f: impl FnOnce() -> R) -> R {
        let _st = self.lock();
        f()
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.close();
    }
}

/// The segment being appended to; owned by the writer thread.
struct Active {
    file: File,
    /// Bytes written (and not rolled back).
    len: u64,
    /// Bytes covered by a real fsync.
    synced_len: u64,
    /// Power-loss simulation only: `<segment>.synced`, holding the fsynced length.
    synced_file: Option<File>,
}

impl Active {
    fn new(file: File, info: &SegmentInfo) -> Result<Active> {
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
fn writer(shared: Arc<Shared>, mut active: Active) {
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
