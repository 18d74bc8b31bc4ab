//! Power-loss simulation for `tally torture --power-loss`: what a machine that lost power finds
//! on disk, given what the server really fsynced (recorded beside each segment, see
//! `tally::fault`).
//!
//! sled is rolled back to its copy from the last checkpoint. Every WAL segment keeps its synced
//! length; the newest also had a batch written and not yet fsynced, and the disk may have kept
//! any part of it. Each crash picks one of three fates for that unsynced tail:
//! - lost whole (the segment is cut at its synced length);
//! - a prefix of its sectors kept (the segment is cut at a random sector boundary past it);
//! - holes: each of its sectors lost or kept at random (the first lost more often), the file
//!   length unchanged, so recovery meets a bad frame followed by more data (the torn-sector rule in
//!   `tally::wal::segment`). Chosen four times in five when the unsynced data spans sectors.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rand::Rng;
use rand::rngs::StdRng;
use tally::wal::segment::{MAGIC, SECTOR};

/// Applies a power loss to the data directory `dir`. Returns 1 if it left a hole (a lost
/// sector with kept data after it) in the newest segment's unsynced tail, else 0.
pub fn lose_unsynced(dir: &Path, rng: &mut StdRng) -> Result<u64, Box<dyn std::error::Error>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    segments.retain(|p| p.extension().is_some_and(|e| e == "wal"));
    segments.sort(); // names are zero-padded first LSNs
    let mut torn = 0;
    for (i, path) in segments.iter().enumerate() {
        let synced = std::fs::read(path.with_extension("synced"))
            .ok()
            .and_then(|b| b.try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let len = f.metadata()?.len();
        if len <= synced {
            continue;
        }
        // Below the magic, the segment's creation itself may not have finished: its header is
        // fsynced before any record goes in, so only a whole cut is possible then.
        let newest = i + 1 == segments.len() && synced >= MAGIC.len() as u64;
        // Holes are the interesting fate when the unsynced data spans sectors: favour them then.
        let spans = newest && data_end(&f, synced, len)? / SECTOR as u64 > synced / SECTOR as u64;
        let fate = match (newest, spans) {
            (false, _) => 0,
            (true, true) if rng.random_bool(0.8) => 2,
            (true, _) => rng.random_range(0..3),
        };
        match fate {
            0 => f.set_len(synced)?,
            1 => {
                let cut = rng.random_range(synced..=len);
                f.set_len((cut / SECTOR as u64 * SECTOR as u64).max(synced))?;
            }
            _ => torn += u64::from(punch_holes(&f, synced, len, rng)?),
        }
    }
    let sled = dir.join("sled");
    let _ = std::fs::remove_dir_all(&sled);
    let _ = std::fs::remove_dir_all(dir.join("sled.synced.tmp"));
    // The engine swaps snapshots through `sled.synced.old`; whichever complete copy exists wins.
    let (synced, old) = (dir.join("sled.synced"), dir.join("sled.synced.old"));
    if synced.exists() {
        let _ = std::fs::remove_dir_all(&old);
        tally::engine::copy_tree(&synced, &sled)?;
    } else if old.exists() {
        std::fs::rename(&old, &synced)?;
        tally::engine::copy_tree(&synced, &sled)?;
    }
    Ok(torn)
}

/// One past the last non-zero byte in `[from, len)`, or `from` if there is none.
fn data_end(f: &std::fs::File, from: u64, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; (len - from) as usize];
    f.read_exact_at(&mut buf, from)?;
    Ok(from
        + buf
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |p| p as u64 + 1))
}

/// Zeroes the unsynced bytes `[synced, len)` sector by sector, each lost with probability 1/2
/// (3/4 for the first, until one is lost). (Bytes of a sector before `synced` were durable.)
/// True if a lost sector is followed by a kept one that holds data.
fn punch_holes(
    f: &std::fs::File,
    synced: u64,
    len: u64,
    rng: &mut StdRng,
) -> std::io::Result<bool> {
    let sector = SECTOR as u64;
    let mut at = synced;
    let (mut lost_before, mut hole) = (false, false);
    while at < len {
        let end = ((at / sector + 1) * sector).min(len);
        let mut buf = vec![0u8; (end - at) as usize];
        // The first sector is lost more often: the hard case, a hole with everything after it.
        if rng.random_bool(if lost_before { 0.5 } else { 0.75 }) {
            f.write_all_at(&buf, at)?;
            lost_before = true;
        } else {
            f.read_exact_at(&mut buf, at)?;
            hole |= lost_before && buf.iter().any(|&b| b != 0);
        }
        at = end;
    }
    Ok(hole)
}
