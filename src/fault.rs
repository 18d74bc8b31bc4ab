//! Test seams: crash points and injected I/O faults. Never armed in normal operation.
//!
//! **Fail points** ([`point`]) sit at the dangerous moments of the write path. Armed with the
//! environment variable `TALLY_FAILPOINT=<name>[@<n>]`, the process aborts (no destructors, no
//! flush: a crash) the n-th time it reaches that point (default the first). `tally torture` uses
//! them to land crashes exactly there. Unarmed, a check is one relaxed atomic load.
//!
//! **I/O faults** ([`Faults`]) are per engine: an fsync that fails, a write that hits ENOSPC,
//! a new WAL segment that cannot be created, a checkpoint's fsync of sled that fails, a paused key census, and (for proving the torture harness has teeth)
//! an fsync that is silently skipped. The CLI
//! arms them from `TALLY_FAULTS=fsync-error,enospc,skip-fsync`; tests toggle them directly.
//!
//! **Power-loss simulation** (`TALLY_SIMULATE_POWER_LOSS=1`): the WAL records each segment's
//! really-fsynced length beside it, and checkpoints keep a copy of sled as it was when synced,
//! so `tally torture --power-loss` can drop everything that was never made durable.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Named crash points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Before a record is applied to sled and appended to the WAL buffer.
    WalBeforeAppend,
    /// After a batch is written to the OS, before its fsync.
    WalAfterWrite,
    /// After the fsync, before the waiters are acknowledged.
    WalAfterFsync,
    /// After CHECKPOINT is written, before any segment is removed.
    CheckpointBeforeRemove,
    /// After one covered segment is removed, before the next.
    CheckpointAfterRemove,
    /// Inside a sweep: after a batch of expired keys is logged, before it is acknowledged.
    Sweep,
    /// After a request id is stored in sled, before its record reaches the WAL: in a record of
    /// plain inserts, before the record's op is stored too (see `storage::requests`); in a batch,
    /// with the batch. sled's buffers are written out first, so the crash leaves on disk exactly
    /// the states that startup repairs (`engine::dedupe`).
    StoreAfterRequestId,
}

impl Point {
    /// Every point, for `tally torture`.
    pub const ALL: [Point; 7] = [
        Point::WalBeforeAppend,
        Point::WalAfterWrite,
        Point::WalAfterFsync,
        Point::CheckpointBeforeRemove,
        Point::CheckpointAfterRemove,
        Point::Sweep,
        Point::StoreAfterRequestId,
    ];

    /// The name used in `TALLY_FAILPOINT`.
    pub fn name(self) -> &'static str {
        match self {
            Point::WalBeforeAppend => "wal-before-append",
            Point::WalAfterWrite => "wal-after-write",
            Point::WalAfterFsync => "wal-after-fsync",
            Point::CheckpointBeforeRemove => "checkpoint-before-remove",
            Point::CheckpointAfterRemove => "checkpoint-after-remove",
            Point::Sweep => "sweep",
            Point::StoreAfterRequestId => "store-after-request-id",
        }
    }
}

struct Armed {
    point: Point,
    remaining: AtomicU64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

fn armed_point() -> Option<&'static Armed> {
    armed().as_ref()
}

fn armed() -> &'static Option<Armed> {
    ARMED.get_or_init(|| {
        let spec = std::env::var("TALLY_FAILPOINT").ok()?;
        let (name, n) = match spec.split_once('@') {
            Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
            None => (spec.clone(), 1),
        };
        let point = Point::ALL.into_iter().find(|p| p.name() == name)?;
        Some(Armed {
            point,
            remaining: AtomicU64::new(n.max(1)),
        })
    })
}

/// Crashes the process here if this point is armed and its count is reached.
#[inline]
pub fn point(p: Point) {
    point_after(p, || {});
}

/// As [`point`], running `last` just before the crash (to leave a chosen state on disk).
#[inline]
pub fn point_after(p: Point, last: impl FnOnce()) {
    if let Some(a) = armed()
        && a.point == p
        && a.remaining.fetch_sub(1, Ordering::SeqCst) == 1
    {
        last();
        eprintln!("tally: fail point {} reached: aborting", p.name());
        std::process::abort();
    }
}

/// Says loudly, at startup, which test seams the environment armed: every one of them makes the
/// server unfit for production, and `skip-fsync` silently loses acknowledged writes on power
/// loss. Logged at error level so that no log filter but `off` hides it.
pub fn warn_if_armed(faults: &Faults) {
    let mut armed: Vec<String> = faults
        .armed()
        .iter()
        .map(|f| format!("TALLY_FAULTS={f}"))
        .collect();
    if let Some(a) = armed_point() {
        armed.push(format!("TALLY_FAILPOINT={}", a.point.name()));
    }
    if simulate_power_loss() {
        armed.push("TALLY_SIMULATE_POWER_LOSS=1".into());
    }
    if armed.is_empty() {
        return;
    }
    let skipped = if faults.skip_fsync() {
        ": the WAL fsync is SKIPPED, so acknowledged writes WILL BE LOST on power loss"
    } else {
        ""
    };
    tracing::error!(
        "test-only fault injection is armed ({}){skipped}; never run a production server with \
         these variables set",
        armed.join(", ")
    );
}

/// True when the power-loss simulation is on.
pub fn simulate_power_loss() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TALLY_SIMULATE_POWER_LOSS").is_ok_and(|v| v == "1"))
}

/// Injected I/O faults for one engine.
#[derive(Debug, Default)]
pub struct Faults {
    fsync_error: AtomicBool,
    enospc: AtomicBool,
    skip_fsync: AtomicBool,
    roll_error: AtomicBool,
    checkpoint_fsync_error: AtomicBool,
    census_paused: AtomicBool,
}

impl Faults {
    /// Faults named in `TALLY_FAULTS` (comma-separated: fsync-error, enospc, skip-fsync,
    /// roll-error, checkpoint-fsync-error).
    pub fn from_env() -> Faults {
        let f = Faults::default();
        for name in std::env::var("TALLY_FAULTS").unwrap_or_default().split(',') {
            match name.trim() {
                "fsync-error" => f.set_fsync_error(true),
                "enospc" => f.set_enospc(true),
                "skip-fsync" => f.set_skip_fsync(true),
                "roll-error" => f.set_roll_error(true),
                "checkpoint-fsync-error" => f.set_checkpoint_fsync_error(true),
                _ => {}
            }
        }
        f
    }

    /// The names of the faults switched on.
    pub fn armed(&self) -> Vec<&'static str> {
        [
            ("fsync-error", &self.fsync_error),
            ("enospc", &self.enospc),
            ("skip-fsync", &self.skip_fsync),
            ("roll-error", &self.roll_error),
            ("checkpoint-fsync-error", &self.checkpoint_fsync_error),
            ("census-paused", &self.census_paused),
        ]
        .into_iter()
        .filter(|(_, on)| on.load(Ordering::Relaxed))
        .map(|(name, _)| name)
        .collect()
    }

    /// Every fsync of the WAL fails with EIO.
    pub fn set_fsync_error(&self, on: bool) {
        self.fsync_error.store(on, Ordering::SeqCst);
    }

    /// Every WAL write fails with ENOSPC (until turned off: "space returns").
    pub fn set_enospc(&self, on: bool) {
        self.enospc.store(on, Ordering::SeqCst);
    }

    /// WAL fsyncs are skipped but reported as done. Only for proving that the power-loss
    /// harness detects a missing fsync.
    pub fn set_skip_fsync(&self, on: bool) {
        self.skip_fsync.store(on, Ordering::SeqCst);
    }

    /// Starting a new WAL segment fails after its file is created (as if its header's fsync
    /// failed with ENOSPC).
    pub fn set_roll_error(&self, on: bool) {
        self.roll_error.store(on, Ordering::SeqCst);
    }

    /// Every fsync of sled's files at a checkpoint fails with EIO.
    pub fn set_checkpoint_fsync_error(&self, on: bool) {
        self.checkpoint_fsync_error.store(on, Ordering::SeqCst);
    }

    /// The startup key census makes no progress while set (so a test can watch callers that
    /// wait for it).
    pub fn set_census_paused(&self, on: bool) {
        self.census_paused.store(on, Ordering::SeqCst);
    }

    pub(crate) fn census_paused(&self) -> bool {
        self.census_paused.load(Ordering::Relaxed)
    }

    pub(crate) fn checkpoint_fsync_error(&self) -> bool {
        self.checkpoint_fsync_error.load(Ordering::Relaxed)
    }

    pub(crate) fn roll_error(&self) -> bool {
        self.roll_error.load(Ordering::Relaxed)
    }

    pub(crate) fn fsync_error(&self) -> bool {
        self.fsync_error.load(Ordering::Relaxed)
    }

    pub(crate) fn enospc(&self) -> bool {
        self.enospc.load(Ordering::Relaxed)
    }

    pub(crate) fn skip_fsync(&self) -> bool {
        self.skip_fsync.load(Ordering::Relaxed)
    }
}
