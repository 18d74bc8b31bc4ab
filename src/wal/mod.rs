//! Tally's write-ahead log: the durability point.
//!
//! Owns: record framing (`record`), segment files and the startup scan (`segment`), and the
//! group-commit writer below. Promises: an LSN handed out by [`Wal::append`] is *acknowledged*
//! (waiters on it are released) only after the bytes of that record and of every earlier record
//! are written and, in [`FsyncMode::Always`], `fdatasync`'d. LSNs are contiguous and survive
//! restarts (the next LSN is one past the newest found in the WAL or the checkpoint).
//!
//! Group commit: appenders encode their record into a shared buffer under a mutex (no I/O there)
//! and return at once; a writer swaps the buffer out, writes it with one `write`, and fsyncs
//! once for the whole batch. While it waits on the disk the next batch fills up, so the batch
//! size follows the load without a timer. The writer is normally the writer thread, woken by
//! the first waiter (not by appends). When the log is idle, a lone waiter leads the batch on its
//! own thread instead ([`Wal::commit_inline`]): one client then pays one write + fsync and no
//! thread hand-offs. Whoever holds the `io` lock is the writer.
//!
//! Fail-stop: if an fsync (or a write, for any reason but a full disk) fails, every pending and
//! future waiter gets `Error::Unavailable`. We never retry an fsync: after a failed fsync Linux
//! may have dropped the dirty pages, so a retry can "succeed" without the data (the PostgreSQL
//! fsyncgate lesson). A write that hits ENOSPC is different: nothing was lost, the batch is still
//! in memory, so the writer cuts the segment back, refuses new appends with `Error::NoSpace`
//! (before they touch the state), and retries the batch until space returns. A new segment that
//! cannot be created (ENOSPC, EMFILE) is not fatal either: the full one stays active and the roll
//! is retried, once no trace of the failed segment is left on disk.
//!
//! Leaves out on purpose: what a record means (the engine's job) and when segments may be removed
//! (the engine's checkpoint decides; [`Wal::remove_through`] only deletes what it is told).

pub mod record;
pub mod segment;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};

pub use record::{Op, Record};
pub use segment::SegmentInfo;

use crate::error::{Error, Result};
use crate::fault::{self, Faults, Point};

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
    /// The acknowledged LSN (`State::acked`), readable without the state lock.
    acked_lsn: AtomicU64,
    /// fdatasync calls so far (for `Stats`).
    fsyncs: AtomicU64,
    /// Mirrors `State::writer_idle`, so that under load (writer busy) a waiter can skip
    /// `commit_inline` without taking the state lock.
    writer_parked: AtomicBool,
    /// Whoever holds `io` is in an fsync or a segment roll: in `Periodic`, a caller then leaves
    /// the batch to that writer rather than block on `io` that long.
    slow_io: AtomicBool,
    /// The active segment: whoever holds this lock is the writer (see `writer::Io`).
    io: Mutex<writer::Io>,
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
    /// The writer thread is blocked on `work` waiting for records. Appending never wakes it;
    /// the first waiter does (`notify`, `wait`), and only then: while it is busy writing or in
    /// fsync it looks at the buffer again by itself, which saves a futex wake per write under
    /// load, and an idle log lets a lone waiter commit inline (`Wal::commit_inline`).
    writer_idle: bool,
    closed: bool,
    waiters: BTreeMap<u64, Vec<Waiter>>,
    /// Threads blocked in `Wal::wait`: the writer signals `acked` only if there are any
    /// (a condvar notify is a futex syscall even with nobody waiting).
    blocked: usize,
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
    /// fdatasync calls on segments since open.
    pub fsyncs: u64,
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
        let last_lsn = rec.last_lsn;
        let active = match segments.last() {
            Some(last) => writer::Active::new(segment::open_append(last)?, last)?,
            None => {
                let (f, info) = segment::create(&config.dir, rec.last_lsn + 1)?;
                let a = writer::Active::new(f, &info)?;
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
                blocked: 0,
            }),
            work: Condvar::new(),
            acked: Condvar::new(),
            disk_bytes: AtomicU64::new(segments.iter().map(|s| s.len).sum()),
            acked_lsn: AtomicU64::new(last_lsn),
            fsyncs: AtomicU64::new(0),
            writer_parked: AtomicBool::new(false),
            slow_io: AtomicBool::new(false),
            io: Mutex::new(writer::Io {
                active,
                spare: Vec::with_capacity(1 << 16),
            }),
            segments: Mutex::new(segments),
            dir: config.dir.clone(),
            config,
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tally-wal".into())
            .spawn(move || writer::run(s))
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
        self.append_with(ops, |_| Ok(()))
    }

    /// Like [`Wal::append`], but first runs `apply` (given the record's LSN) under the log's
    /// lock and appends only if it succeeds. The engine applies the record to its state here, so that (1) LSN order is
    /// apply order, and (2) every LSN `<= last_lsn()` is already applied, which is what makes a
    /// checkpoint at `last_lsn()` sound. Nothing is applied when the log refuses appends.
    /// A record too large for the reader ([`record::MAX_BODY`]) is refused with
    /// `InvalidArgument` before anything is applied.
    pub fn append_with(&self, ops: &[Op], apply: impl FnOnce(u64) -> Result<()>) -> Result<u64> {
        record::check_size(ops)?;
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
        let lsn = st.next_lsn;
        apply(lsn)?;
        st.next_lsn += 1;
        record::encode(&mut st.buf, lsn, ops);
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

    /// True if `lsn` is already acknowledged. Lock-free.
    pub fn is_acked(&self, lsn: u64) -> bool {
        self.shared.acked_lsn.load(Ordering::Acquire) >= lsn
    }

    /// Makes `lsn` acknowledged by writing (and, in `Always`, fsyncing) the buffer on the
    /// calling thread: in `Always` only if the log is idle and nobody else waits, in `Periodic`
    /// unless an fsync is due. `None` if it did not (then use `notify` or `wait`). See
    /// `writer::commit_inline`.
    pub fn commit_inline(&self, lsn: u64) -> Option<Result<()>> {
        writer::commit_inline(&self.shared, lsn)
    }

    /// Blocks until `lsn` is acknowledged, or fails if the log has failed.
    pub fn wait(&self, lsn: u64) -> Result<()> {
        let mode = self.shared.config.fsync;
        self.wait_until(lsn, false, |st| st.acked(mode))
    }

    /// Blocks until `lsn` is covered by an fsync (in `Periodic` that can take an fsync
    /// interval), or fails if the log has failed, or with `NoSpace` while the disk is full (a
    /// background caller must not sit out the outage: shutdown would wait for it).
    pub fn wait_synced(&self, lsn: u64) -> Result<()> {
        self.wait_until(lsn, true, |st| st.synced)
    }

    /// True while the last WAL write hit a full disk (appends are refused until a retry works).
    pub fn out_of_space(&self) -> bool {
        self.lock().no_space
    }

    fn wait_until(
        &self,
        lsn: u64,
        give_up_on_no_space: bool,
        reached: impl Fn(&State) -> u64,
    ) -> Result<()> {
        let mut st = self.lock();
        loop {
            if reached(&st) >= lsn {
                return Ok(());
            }
            if let Some(m) = &st.failed {
                return Err(Error::Unavailable(m.clone()));
            }
            if give_up_on_no_space && st.no_space {
                return Err(Error::NoSpace);
            }
            if st.writer_idle {
                self.shared.work.notify_one();
            }
            st.blocked += 1;
            st = self
                .shared
                .acked
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
            st.blocked -= 1;
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
        if st.writer_idle {
            drop(st);
            self.shared.work.notify_one();
        }
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

    /// Number of segment files (the active one included).
    pub fn segment_count(&self) -> usize {
        self.shared
            .segments
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
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
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
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

    /// Stops acknowledging writes for good, as a failed WAL fsync does (the engine calls this
    /// when a checkpoint's fsync of sled fails). Pending waiters get `Error::Unavailable(msg)`;
    /// the first failure's message stands.
    pub fn fail_stop(&self, msg: String) {
        writer::fail(&self.shared, msg);
        self.shared.work.notify_all();
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
