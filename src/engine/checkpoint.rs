//! The checkpoint file: the LSN up to which sled's state is known to be on disk.
//!
//! Also the checkpoint itself ([`Engine::checkpoint`]) and when one is due.
//!
//! Written only after `Store::sync` (sled flush + fsync of every sled file) has returned, via a
//! temporary file, fsync, rename and directory fsync, so it never claims more than is durable.
//! WAL segments whose records all lie at or below it may be deleted.
//!
//! Format (`CHECKPOINT`, 20 bytes): `b"TALLYCK1" ++ lsn: u64 LE ++ crc32c(previous 16 bytes): u32 LE`.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::info;

use super::Engine;
use crate::error::{Error, Result};
use crate::fault::{self, Point};
use crate::storage::SyncFailure;
use crate::wal::segment::sync_dir;

const MAGIC: &[u8; 8] = b"TALLYCK1";
/// File name inside the data directory.
pub const FILE: &str = "CHECKPOINT";

/// Reads the checkpoint LSN; 0 when there is no checkpoint yet.
pub fn read(dir: &Path) -> Result<u64> {
    let path = dir.join(FILE);
    let b = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    if b.len() != 20 || &b[..8] != MAGIC || crc32c::crc32c(&b[..16]).to_le_bytes() != b[16..20] {
        return Err(Error::Corruption(format!("{} is damaged", path.display())));
    }
    Ok(u64::from_le_bytes(b[8..16].try_into().unwrap()))
}

/// Durably records `lsn` as the checkpoint.
pub fn write(dir: &Path, lsn: u64) -> Result<()> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("CHECKPOINT.tmp");
    let io = |e| Error::io(format!("writing {}", tmp.display()), e);
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(&b).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, dir.join(FILE)).map_err(io)?;
    sync_dir(dir)
}

impl Engine {
    /// Makes sled durable up to the newest LSN and drops the WAL segments that covers.
    /// Returns the checkpoint LSN.
    pub fn checkpoint(&self) -> Result<u64> {
        let mut last = self
            .checkpoint_lsn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Every LSN <= l is already applied to sled (see `Wal::append_with`), and, taking the
        // fsynced LSN rather than the newest, the checkpoint never runs ahead of the durable
        // log: after a power loss the WAL still reaches at least `l`, so recovery continues the
        // LSN sequence in the newest segment. (sled may hold newer, unacknowledged effects.)
        if let Some(why) = self.wal.failure() {
            return Err(Error::Unavailable(why));
        }
        let l = self.wal.synced_lsn();
        if l == *last {
            return Ok(l);
        }
        let started = Instant::now();
        // Every record <= l is in the table or sled; this puts it all in sled.
        self.write_back()?;
        let synced = if fault::simulate_power_loss() {
            // Keep a copy of sled exactly as synced, taken with appends paused so the files are
            // quiet and consistent: torture's power loss rolls sled back to it.
            // (No write-back may write sled meanwhile either: it takes its lock before
            // pausing appends, so this takes them in that order too.)
            self.store.with_write_back_paused(|| {
                self.wal.with_appends_paused(|| {
                    self.store.sync(&self.config.faults)?;
                    snapshot_dir(
                        &self.config.data_dir.join("sled"),
                        &self.config.data_dir.join("sled.synced"),
                    )
                    .map_err(SyncFailure::Retry)
                })
            })
        } else {
            self.store.sync(&self.config.faults)
        };
        match synced {
            Ok(()) => {}
            Err(SyncFailure::Retry(e)) => return Err(e),
            Err(SyncFailure::Fsync(e)) => {
                // Never retried: the kernel may have dropped sled's dirty pages, and a later
                // fsync that "succeeds" would let us delete the WAL that is now their only copy.
                // Keep every segment, take no more checkpoints, refuse writes (fail-stop, as for
                // the WAL's fsync); a restart replays the WAL from the last good checkpoint.
                let msg = format!(
                    "checkpoint failed: {e}; sled's files may have lost writes, so the WAL is \
                     kept and no further writes are accepted (restart to recover from the WAL)"
                );
                self.wal.fail_stop(msg.clone());
                return Err(Error::Unavailable(msg));
            }
        }
        write(&self.config.data_dir, l)?;
        *last = l;
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        fault::point(Point::CheckpointBeforeRemove);
        let removed = self.wal.remove_through(l)?;
        info!(
            lsn = l,
            removed_segments = removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checkpoint"
        );
        Ok(l)
    }

    /// Writes the write-back table to sled (see `storage`), sealing it with appends paused,
    /// once the WAL has made everything appended before the seal durable. Returns the keys
    /// written.
    pub(super) fn write_back(&self) -> Result<usize> {
        self.store.write_back(
            |seal| self.wal.with_appends_paused(seal),
            || self.wal.wait_synced(self.wal.last_lsn()),
        )
    }

    /// Not while the disk is full: a checkpoint writes the table back first, which waits for
    /// the WAL to make its cut durable (see `write_back`), so it would only fail. (So a WAL that
    /// filled the disk is not shrunk by a checkpoint until space returns.)
    pub(super) fn checkpoint_due(&self, last_run: Instant) -> bool {
        self.wal.failure().is_none()
            && !self.wal.out_of_space()
            && self.checkpoint_size_or_age_due(last_run)
    }

    /// Due by size when the WAL is over `checkpoint_bytes` *and* has a sealed segment the
    /// checkpoint could remove: the active segment alone over the threshold (a large
    /// `--wal-segment-bytes`, or one that cannot roll) is not shrunk by a checkpoint, and taking
    /// one every poll (10 ms) would only fsync sled over and over. Due by age as before.
    fn checkpoint_size_or_age_due(&self, last_run: Instant) -> bool {
        (self.wal.disk_bytes() >= self.config.checkpoint_bytes && self.wal.segment_count() > 1)
            || (last_run.elapsed() >= self.config.checkpoint_interval
                && self.wal.last_lsn()
                    > *self
                        .checkpoint_lsn
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()))
    }
}

/// Replaces `to` with a copy of the directory tree `from` (power-loss simulation only). At
/// every instant one complete copy exists: `to`, or else `<to>.old` (see torture's
/// `lose_unsynced`).
fn snapshot_dir(from: &Path, to: &Path) -> Result<()> {
    let (tmp, old) = (to.with_extension("tmp"), to.with_extension("old"));
    let io = |what: &str, e| Error::io(format!("{what} for the sled snapshot"), e);
    let _ = std::fs::remove_dir_all(&tmp);
    copy_tree(from, &tmp).map_err(|e| io("copying", e))?;
    let _ = std::fs::remove_dir_all(&old);
    if to.exists() {
        std::fs::rename(to, &old).map_err(|e| io("renaming", e))?;
    }
    std::fs::rename(&tmp, to).map_err(|e| io("renaming", e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}
