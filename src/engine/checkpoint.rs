//! The checkpoint file: the LSN up to which sled's state is known to be on disk.
//!
//! Written only after `Store::sync` (sled flush + fsync of every sled file) has returned, via a
//! temporary file, fsync, rename and directory fsync, so it never claims more than is durable.
//! WAL segments whose records all lie at or below it may be deleted.
//!
//! Format (`CHECKPOINT`, 20 bytes): `b"TALLYCK1" ++ lsn: u64 LE ++ crc32c(previous 16 bytes): u32 LE`.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
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
