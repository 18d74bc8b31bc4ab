//! The engine: the only write path, recovery, and checkpoints. Plain blocking Rust; it knows
//! nothing of gRPC or tokio.
//!
//! A write runs in three steps:
//! 1. under the key's stripe lock (per-key serialization, so a read-modify-write such as Incr is
//!    atomic), read the current entry and compute the new one;
//! 2. under the WAL's lock, apply it to sled and append the record (`Wal::append_with`), so LSN
//!    order is apply order and every LSN handed out is already in sled;
//! 3. return an [`Ack`] carrying the LSN; the caller replies only once the WAL acknowledges it.
//!
//! Reads return an [`Ack`] too, carrying the newest LSN at the time of the read: a reply never
//! shows a value whose record could still be lost.
//!
//! Recovery: open sled, read the checkpoint LSN, replay every newer WAL record (physical, so
//! idempotent; in sorted batches, module `replay`), then serve while a background census counts
//! the keys (module `census`).
//! Checkpoint: note `L = wal.synced_lsn()` (never ahead of the durable log);
//! `Store::sync` (sled flush plus fsync of every sled file) makes all of `<= L` durable in sled;
//! record `L` in `CHECKPOINT`; delete the segments at or below `L`. sled may hold effects of records newer than `L` (even of records
//! that were never made durable and so never acknowledged): replay overwrites every key a newer
//! durable record touched, and an unacknowledged write that survives is indistinguishable from
//! one whose reply was lost.

mod background;
mod census;
mod checkpoint;
mod dedupe;
mod expire;
mod increx;
mod keyspace;
mod replay;
mod throttle;
mod tx;
mod txn;
mod watch;
mod world;

use background::{Background, lock_dir};
use census::Census;
pub use census::{CENSUS_WAIT, CensusWaiter};
pub use checkpoint::copy_tree;
pub use dedupe::{DedupeStats, Once, RequestId};
pub use expire::{Condition, Expiry, Ttl};
pub use increx::{IncrEx, IncrExFloat, IncrExFloatOutcome, IncrExOutcome, TtlChange};
use replay::Replay;
pub use throttle::{Throttle, ThrottleOutcome};
pub use tx::{GetEx, Tx};
pub use txn::{Compare, CompareOp, MAX_TXN_ITEMS, Target, Txn, TxnOp, TxnOutcome, TxnResult};
pub use watch::Watched;

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLockReadGuard};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::storage::{Delta, Store};
use crate::wal::{Op, Waiter, Wal, WalConfig};

/// Number of key-lock stripes. Two keys share a stripe with probability 1/STRIPES; that only
/// serializes them, it never changes a result.
const STRIPES: usize = 1024;
/// How long `open` retries a held LOCK before reporting the directory in use.
const LOCK_RETRY: Duration = Duration::from_millis(500);
/// How often the checkpointer checks whether a checkpoint is due (two atomic loads), so WAL
/// disk use overshoots `checkpoint_bytes` by at most this long's worth of writes.
const CHECKPOINT_POLL: Duration = Duration::from_millis(10);

/// How often the write-back table goes to sled (see `storage`): a key written many times in
/// between costs sled one write. At 100 ms, 1,000 hot keys' write-backs were a fifth of the
/// server's user CPU at 50 clients; the table holds at most this long's worth of keys.
const WRITE_BACK_INTERVAL: Duration = Duration::from_secs(1);
/// ...or sooner, once this many keys wait: a bulk load of new keys would otherwise hold a
/// second of them (a million counters loaded at full speed took RSS from 47 to 226 MiB).
const WRITE_BACK_KEYS: usize = 16_384;

/// Options of [`Engine::set`], as Redis SET's.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetOptions {
    /// Set a TTL (EX/PX/EXAT/PXAT). `None` clears the TTL unless `keep_ttl`.
    pub expiry: Option<Expiry>,
    /// Keep the key's current TTL (KEEPTTL).
    pub keep_ttl: bool,
    /// Only if the key does not exist.
    pub nx: bool,
    /// Only if the key exists.
    pub xx: bool,
    /// Return the old value.
    pub get: bool,
}

/// What [`Engine::set`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetOutcome {
    /// False when NX or XX refused the write.
    pub applied: bool,
    /// The old value, when `get` was asked and the key existed.
    pub old: Option<Vec<u8>>,
}

/// A result that may be shown to a client once `lsn` is acknowledged by the WAL.
#[derive(Debug)]
#[must_use = "reply only after the LSN is acknowledged"]
pub struct Ack<T> {
    /// The result.
    pub value: T,
    /// Wait for this LSN before replying.
    pub lsn: u64,
}

/// Counters and positions, for `Stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Keys physically stored (expired ones count until the sweeper removes them).
    pub keys: u64,
    /// Stored keys that have a deadline.
    pub keys_with_ttl: u64,
    /// Keys removed by the sweeper since startup.
    pub expired: u64,
    /// WAL bytes on disk.
    pub wal_bytes: u64,
    /// WAL segment files.
    pub wal_segments: u64,
    /// Highest LSN covered by an fsync.
    pub durable_lsn: u64,
    /// Newest LSN handed out.
    pub last_lsn: u64,
    /// LSN of the last checkpoint.
    pub checkpoint_lsn: u64,
    /// fdatasync calls on the WAL since open.
    pub wal_fsyncs: u64,
    /// Checkpoints taken since open.
    pub checkpoints: u64,
    /// Request ids remembered, and what became of them (see `dedupe`).
    pub requests: DedupeStats,
    /// False while the startup census is still counting: `keys` and `keys_with_ttl` are then
    /// partial.
    pub keys_exact: bool,
}

/// The counter engine. Open it with [`Engine::open`]; share the `Arc`.
pub struct Engine {
    store: Store,
    wal: Wal,
    clock: Arc<dyn Clock>,
    stripes: Box<[Mutex<()>]>,
    hasher: RandomState,
    /// Taken shared by every keyed command, alone by a script (module `world`).
    world: world::World,
    /// WATCH's key versions.
    watches: watch::Watches,
    /// SCAN's cursors.
    cursors: keyspace::Cursors,
    keys: AtomicI64,
    ttl_keys: AtomicI64,
    /// The startup census: `keys`/`ttl_keys` are exact once it is done.
    census: Census,
    expired: AtomicU64,
    /// Request-id counters.
    dedupe: dedupe::Dedupe,
    /// Checkpoints taken since open.
    checkpoints: AtomicU64,
    /// Serializes checkpoints; holds the last checkpoint LSN.
    checkpoint_lsn: Mutex<u64>,
    closed: AtomicBool,
    background: Arc<Background>,
    config: Config,
    /// Held (flock) for the engine's lifetime so a second process cannot open the directory.
    _lock: File,
}

impl Engine {
    /// Locks and opens the data directory, replays the WAL, and starts the checkpointer.
    pub fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Engine>> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating data directory {}", dir.display()), e))?;
        let lock = lock_dir(dir)?;
        let started = Instant::now();
        let store = Store::open(&dir.join("sled"), config.cache_bytes)?;
        let opened_at = started.elapsed();
        let ckpt = checkpoint::read(dir)?;
        let wal_config = WalConfig {
            dir: dir.join("wal"),
            segment_bytes: config.segment_bytes,
            fsync: config.fsync,
            faults: config.faults.clone(),
        };
        let mut replay = Replay::default();
        let (wal, replayed) =
            Wal::open(wal_config, ckpt, &mut |r| replay.push(&store, r.lsn, r.ops))?;
        replay.finish(&store)?;
        info!(
            data_dir = %dir.display(),
            checkpoint_lsn = ckpt,
            replayed,
            sled_open_ms = opened_at.as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "engine recovered; counting keys in the background"
        );
        let engine = Arc::new(Engine {
            store,
            wal,
            clock,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
            world: world::World::new(config.busy_script),
            watches: Default::default(),
            cursors: Default::default(),
            keys: AtomicI64::new(0),
            ttl_keys: AtomicI64::new(0),
            census: Census::default(),
            expired: AtomicU64::new(0),
            dedupe: Default::default(),
            checkpoints: AtomicU64::new(0),
            checkpoint_lsn: Mutex::new(ckpt),
            closed: AtomicBool::new(false),
            background: Arc::default(),
            config,
            _lock: lock,
        });
        engine.repair_requests()?;
        engine.spawn_census();
        engine.spawn_dedupe();
        let (mut last_write_back, mut failed) = (Instant::now(), false);
        engine.spawn_background("tally-write-back", move |e| {
            let dirty = e.store.dirty_keys();
            let since = last_write_back.elapsed();
            let due = ((dirty > 0 || e.store.clear_pending()) && since >= WRITE_BACK_INTERVAL)
                || (dirty >= WRITE_BACK_KEYS && !failed && since >= CHECKPOINT_POLL);
            // Not after a fail-stop (the WAL has what there is), nor while the disk is full
            // (the cut cannot become durable; writes are refused meanwhile).
            if due && e.wal.failure().is_none() && !e.wal.out_of_space() {
                failed = match e.write_back() {
                    Ok(_) => false,
                    Err(err) => {
                        // The table keeps the values (and the WAL has them); retried after a
                        // whole interval, not at every poll.
                        warn!("write-back to sled failed: {err}");
                        true
                    }
                };
                last_write_back = Instant::now();
            }
            CHECKPOINT_POLL
        });
        let mut last_run = Instant::now();
        engine.spawn_background("tally-checkpoint", move |e| {
            if e.checkpoint_due(last_run) {
                if let Err(err) = e.checkpoint() {
                    // The WAL still holds everything; a failed checkpoint only delays cleanup.
                    warn!("checkpoint failed: {err}");
                }
                last_run = Instant::now();
            }
            CHECKPOINT_POLL
        });
        Ok(engine)
    }

    /// The engine's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn stripe_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// Takes the world lock shared (module `world`), then locks the stripes of all `keys` in
    /// index order (so two multi-key writers cannot deadlock). A stripe is locked once even if
    /// several keys share it (std mutexes are not reentrant).
    fn lock_keys<'a>(&'a self, keys: impl Iterator<Item = &'a [u8]>) -> Result<Locks<'a>> {
        let world = self.world.shared()?;
        let mut idx: Vec<usize> = keys.map(|k| self.stripe_of(k)).collect();
        idx.sort_unstable();
        idx.dedup();
        let stripes = idx
            .into_iter()
            .map(|i| self.stripes[i].lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        Ok(Locks {
            _stripes: stripes,
            _world: world,
        })
    }

    /// Applies and logs `ops` as one record.
    fn write(&self, ops: &[Op]) -> Result<u64> {
        if ops.iter().any(Op::is_clear) {
            // Before it applies (it runs alone, so nothing changes meanwhile).
            self.watches
                .touched_existing(|k| self.store.get(k).ok().flatten().is_some());
        }
        let mut delta = Delta::default();
        let lsn = self.wal.append_with(ops, |lsn| {
            delta = self.apply_counted(lsn, ops)?;
            Ok(())
        })?;
        if delta.requests != 0 {
            self.dedupe
                .entries
                .fetch_add(delta.requests, Ordering::Relaxed);
        }
        if delta.reset {
            self.keys.store(delta.keys, Ordering::Relaxed);
            self.ttl_keys.store(delta.ttl_keys, Ordering::Relaxed);
        } else {
            self.keys.fetch_add(delta.keys, Ordering::Relaxed);
            self.ttl_keys.fetch_add(delta.ttl_keys, Ordering::Relaxed);
        }
        self.watches.touched(ops);
        Ok(lsn)
    }

    /// An Ack for a reply that changed nothing but observed the current state.
    fn observed<T>(&self, value: T) -> Ack<T> {
        Ack {
            value,
            lsn: self.wal.last_lsn(),
        }
    }

    /// Runs `f` as one atomic command (or MULTI/EXEC group) over `keys`: takes their stripe
    /// locks, freezes the clock, and logs every op `f` produced as a single record. If `f` fails,
    /// nothing is written. `keys` must name every key `f` touches.
    pub fn run<R>(
        &self,
        keys: &[&[u8]],
        f: impl FnOnce(&mut Tx<'_>) -> Result<R>,
    ) -> Result<Ack<R>> {
        self.run_with(keys, None, f)
    }

    /// [`Engine::run`], holding also the stripe of request id `id` (see `dedupe`).
    fn run_with<R>(
        &self,
        keys: &[&[u8]],
        id: Option<&[u8]>,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R>,
    ) -> Result<Ack<R>> {
        for k in keys {
            config::check_key(k)?;
        }
        let _g = self.lock_keys(keys.iter().copied().chain(id))?;
        self.finish(Tx::new(self, self.clock.now_ms()), f)
    }

    /// Runs `f` in `tx` and logs what it produced as one record (nothing if it failed).
    fn finish<R>(
        &self,
        mut tx: Tx<'_>,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R>,
    ) -> Result<Ack<R>> {
        let value = f(&mut tx)?;
        if let Some(n) = tx.too_large {
            return Err(crate::wal::record::too_large(n));
        }
        if tx.ops.is_empty() {
            return Ok(self.observed(value));
        }
        let lsn = self.write(&tx.ops)?;
        Ok(Ack { value, lsn })
    }

    /// Redis INCRBY: adds `by` to the integer at `key` (missing counts as 0), keeping its TTL.
    pub fn incr(&self, key: &[u8], by: i64) -> Result<Ack<i64>> {
        self.run(&[key], |tx| tx.incr(key, by))
    }

    /// INCREX: the bounded, expiring increment (see `increx`).
    pub fn increx(&self, key: &[u8], req: &IncrEx) -> Result<Ack<IncrExOutcome>> {
        self.run(&[key], |tx| tx.increx(key, req))
    }

    /// One GCRA rate-limit request (see `throttle`).
    pub fn throttle(&self, key: &[u8], t: &Throttle) -> Result<Ack<ThrottleOutcome>> {
        self.run(&[key], |tx| tx.throttle(key, t))
    }

    /// Redis INCRBYFLOAT, bit-exact (see `value::incr_by_float`); returns the stored string.
    pub fn incr_by_float(&self, key: &[u8], by: &[u8]) -> Result<Ack<Vec<u8>>> {
        self.run(&[key], |tx| tx.incr_by_float(key, by))
    }

    /// The value at `key`, if present and not expired.
    pub fn get(&self, key: &[u8]) -> Result<Ack<Option<Vec<u8>>>> {
        self.run(&[key], |tx| tx.get(key))
    }

    /// Redis SET with its options (see [`SetOptions`]).
    pub fn set(&self, key: &[u8], value: &[u8], opts: &SetOptions) -> Result<Ack<SetOutcome>> {
        self.run(&[key], |tx| tx.set(key, value, opts, "set"))
    }

    /// Redis DEL: removes the keys atomically (one record) and counts those that existed;
    /// a key named twice counts once.
    pub fn delete(&self, keys: &[Vec<u8>]) -> Result<Ack<i64>> {
        let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        self.run(&keys, |tx| tx.delete(&keys))
    }

    /// Current counters and positions, at once. Right after a restart the key counts are
    /// partial until the background census is done (`keys_exact` false); see `census` for how
    /// to wait for it.
    pub fn stats(&self) -> Stats {
        let w = self.wal.stats();
        Stats {
            keys_exact: self.census_done(),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            requests: self.dedupe_stats(),
            keys: self.keys.load(Ordering::Relaxed).max(0) as u64,
            keys_with_ttl: self.ttl_keys.load(Ordering::Relaxed).max(0) as u64,
            expired: self.expired.load(Ordering::Relaxed),
            wal_bytes: w.bytes,
            wal_segments: w.segments,
            durable_lsn: w.synced_lsn,
            last_lsn: w.last_lsn,
            wal_fsyncs: w.fsyncs,
            checkpoint_lsn: *self
                .checkpoint_lsn
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The LSN a reply carrying `err` must wait for, as a read waits for what it observed: the
    /// newest one logged if the error reveals stored state (INCR on a value another client set
    /// a moment ago, not yet fsync'd: the error must not outlive that value in a crash), else 0.
    pub fn lsn_seen_by(&self, err: &Error) -> u64 {
        if err.reveals_state() {
            self.wal.last_lsn()
        } else {
            0
        }
    }

    /// True if `lsn` is acknowledged already (the caller can reply without waiting).
    pub fn is_acked(&self, lsn: u64) -> bool {
        self.wal.is_acked(lsn)
    }

    /// Commits `lsn` on the calling thread if the WAL is idle; see [`Wal::commit_inline`].
    /// Blocks for one write + fsync when it does.
    pub fn commit_inline(&self, lsn: u64) -> Option<Result<()>> {
        self.wal.commit_inline(lsn)
    }

    /// Blocks until `lsn` is acknowledged.
    pub fn wait(&self, lsn: u64) -> Result<()> {
        self.wal.wait(lsn)
    }

    /// Calls `w` once `lsn` is acknowledged; see [`Wal::notify`].
    pub fn notify(&self, lsn: u64, w: Waiter) {
        self.wal.notify(lsn, w)
    }

    /// Graceful stop: refuse new writes, write and fsync what the WAL holds, checkpoint.
    /// Idempotent.
    /// Background threads are stopped and joined first, so once this returns no thread holds a
    /// reference and dropping the caller's `Arc` releases the data directory at once.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.background.stop_and_join();
        self.census.release();
        self.wal.close();
        if let Some(why) = self.wal.failure() {
            // Fail-stop: do not checkpoint. sled holds changes the WAL could not make durable,
            // and a checkpoint would declare them durable. Recovery replays from the last good
            // checkpoint instead.
            warn!("not checkpointing at shutdown: {why}");
            return Ok(());
        }
        self.checkpoint()?;
        info!("engine closed");
        Ok(())
    }

    /// Why the engine stopped acknowledging writes, if it did (a failed WAL write or fsync).
    pub fn failure(&self) -> Option<String> {
        self.wal.failure()
    }

    /// When writes are acknowledged.
    pub fn fsync_mode(&self) -> crate::wal::FsyncMode {
        self.config.fsync
    }

    /// True once [`Engine::close`] has begun.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// The locks a keyed command holds (stripes released before the world lock).
struct Locks<'a> {
    _stripes: Vec<MutexGuard<'a, ()>>,
    _world: RwLockReadGuard<'a, ()>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            error!("closing the engine: {e}");
        }
    }
}
