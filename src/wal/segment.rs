//! Segment files: naming, creation, and the startup scan that replays them.
//!
//! A segment is `wal/<first_lsn, 20 digits>.wal`: the 8-byte magic `TALLYWL1`, then frames
//! (see `record`). The name gives the LSN of its first record, so the set of files says which
//! LSNs exist without opening them. A segment is fsync'd before the next one is created, so only
//! the newest segment can end in a torn write.
//!
//! The newest segment is zero-filled ahead of its records (see `writer`: an `fdatasync` that does
//! not grow the file skips a journal commit), so a crash leaves its records, then perhaps the
//! prefix of an unfinished write, then zeros. It is cut back to its records at startup, and a
//! segment is cut back before it is sealed, so sealed segments hold records only.
//!
//! Damage rules at startup:
//! - in the newest segment, a tail of zeros is unused space (truncated quietly); an unfinished
//!   frame at the end, a bad frame followed by nothing but zeros (a write cut short: its
//!   header, or its body, with zeros where the rest was to go), or a bad frame with a *torn
//!   sector* is a torn write: it and everything after it is truncated with a warning that names
//!   the segment and offset (nothing in it was acknowledged, since acks follow the fsync);
//! - a torn sector (etcd's torn-entry check, tightened): a group commit writes many sectors at
//!   once, and a power loss before its fsync may persist any subset of them, so a lost sector
//!   inside the batch reads as zeros (space ahead of the records is zero-filled and files are
//!   never reused) while later sectors of the same batch hold data. A bad frame is such a hole
//!   if a whole 512-byte sector starting inside it is zero, or its first, partial sector is zero
//!   from its start and that provably erased its header (see `lost_header_prefix`), *and* at
//!   most `2 * MAX_BATCH` (2 MiB) of data follow it. The bound is what keeps real damage to
//!   synced data from passing for a torn tail: in `--fsync always` only the last batch is
//!   unsynced (a later batch is written only after this one's fsync returned, which would have
//!   made it whole) and a batch is at most `MAX_BATCH` unless it is one larger record; in
//!   `periodic`, an fsync runs once `MAX_BATCH` bytes are unsynced. Everything from the hole
//!   on goes;
//! - a gap between segments that the checkpoint covers wholly is harmless (a crash while the
//!   checkpoint removed them), logged and skipped;
//! - anything else (a bad frame with data after it, damage in a sealed segment, an LSN that is not
//!   the previous plus one, a missing segment past the checkpoint) is corruption, and startup
//!   stops.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::record::{self, FRAME_HEADER, Frame, Record};
use crate::error::{Error, Result};

/// First bytes of every segment; the digit is the format version.
pub const MAGIC: &[u8; 8] = b"TALLYWL1";

/// One segment file on disk.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    /// LSN of the first record this segment holds (or will hold).
    pub first_lsn: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
}

/// File name of the segment starting at `first_lsn`.
pub fn name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.wal")
}

/// The segments in `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<SegmentInfo>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("listing WAL directory", e))?;
        let file_name = entry.file_name();
        let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        let Ok(first_lsn) = stem.parse::<u64>() else {
            continue;
        };
        let len = entry
            .metadata()
            .map_err(|e| Error::io("stat WAL segment", e))?
            .len();
        out.push(SegmentInfo {
            first_lsn,
            path: entry.path(),
            len,
        });
    }
    out.sort_by_key(|s| s.first_lsn);
    Ok(out)
}

/// Creates a new empty segment, durable (file and directory entry) before it is used.
pub fn create(dir: &Path, first_lsn: u64) -> Result<(File, SegmentInfo)> {
    let path = dir.join(name(first_lsn));
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all(MAGIC)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    sync_dir(dir)?;
    Ok((
        f,
        SegmentInfo {
            first_lsn,
            path,
            len: MAGIC.len() as u64,
        },
    ))
}

/// Durably removes what a failed [`create`] of the segment starting at `first_lsn` may have
/// left behind (nothing, an empty file, or a header).
pub fn discard(dir: &Path, first_lsn: u64) -> Result<()> {
    let path = dir.join(name(first_lsn));
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

/// fsyncs a directory so that file creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("fsync of directory {}", dir.display()), e))
}

/// The outcome of [`recover`].
pub struct Recovered {
    /// The segments left on disk, oldest first (the last one is reopened for appends).
    pub segments: Vec<SegmentInfo>,
    /// The last LSN found, or `checkpoint_lsn` when the WAL holds nothing newer.
    pub last_lsn: u64,
    /// The last LSN the segments actually reach (their first LSN minus one when empty).
    pub wal_end: u64,
    /// How many records were passed to `apply`.
    pub replayed: u64,
}

/// Checks every segment in `dir` and passes each record newer than `checkpoint_lsn` to `apply`,
/// in LSN order. Truncates a torn tail; returns `Error::Corruption` for any other damage.
pub fn recover(
    dir: &Path,
    checkpoint_lsn: u64,
    apply: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<Recovered> {
    let mut segments = list(dir)?;
    let mut expected: Option<u64> = None;
    let mut replayed = 0;
    let count = segments.len();
    for (i, seg) in segments.iter_mut().enumerate() {
        let is_last = i + 1 == count;
        let seg_name = name(seg.first_lsn);
        let data = fs::read(&seg.path)
            .map_err(|e| Error::io(format!("reading {}", seg.path.display()), e))?;
        if i == 0 && seg.first_lsn > checkpoint_lsn + 1 {
            return Err(Error::Corruption(format!(
                "WAL segment {seg_name} starts at LSN {} but the checkpoint covers only up to LSN \
                 {checkpoint_lsn}: records in between are missing",
                seg.first_lsn
            )));
        }
        if let Some(e) = expected
            && e != seg.first_lsn
        {
            if e < seg.first_lsn && seg.first_lsn <= checkpoint_lsn + 1 {
                // Segments the checkpoint covers wholly are missing (a crash while removing them
                // can persist a later removal before an earlier one): nothing is lost.
                warn!(
                    segment = %seg_name,
                    missing_from = e,
                    missing_to = seg.first_lsn - 1,
                    checkpoint_lsn,
                    "WAL segments below the checkpoint are missing; they are covered by it"
                );
            } else {
                return Err(Error::Corruption(format!(
                    "WAL segment {seg_name} starts at LSN {} but the previous segment ends at \
                     LSN {}",
                    seg.first_lsn,
                    e - 1
                )));
            }
        }
        let mut next = seg.first_lsn;
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            if is_last && MAGIC.starts_with(&data) {
                // Crashed while creating the segment: it holds no record yet.
                warn!(segment = %seg_name, "WAL segment header incomplete; rewriting it");
                rewrite_header(seg)?;
                expected = Some(next);
                continue;
            }
            return Err(record::corruption(&seg_name, 0, "bad segment header"));
        }
        let mut off = MAGIC.len();
        while off < data.len() {
            let rest = &data[off..];
            let torn = match record::decode(rest) {
                Frame::Record(r, n) => {
                    if r.lsn != next {
                        return Err(record::corruption(
                            &seg_name,
                            off as u64,
                            &format!("record has LSN {} where {next} was expected", r.lsn),
                        ));
                    }
                    if r.lsn > checkpoint_lsn {
                        apply(r)?;
                        replayed += 1;
                    }
                    next += 1;
                    off += n;
                    continue;
                }
                Frame::Incomplete => is_last,
                Frame::BadHeader => {
                    is_last
                        && (zeros(&rest[FRAME_HEADER.min(rest.len())..])
                            || torn_sector(&data, off, FRAME_HEADER))
                }
                Frame::BadBody(_, n) => {
                    is_last && (zeros(&rest[n..]) || torn_sector(&data, off, n))
                }
            };
            if !torn {
                let what = match record::decode(rest) {
                    Frame::BadBody(m, _) => format!("bad record ({m})"),
                    Frame::BadHeader => "bad record header".to_string(),
                    _ => "incomplete record in a sealed segment".to_string(),
                };
                return Err(record::corruption(&seg_name, off as u64, &what));
            }
            if zeros(rest) {
                debug!(segment = %seg_name, offset = off, "cutting unused preallocated WAL space");
            } else {
                warn!(
                    segment = %seg_name,
                    offset = off,
                    dropped_bytes = rest.len(),
                    "truncating torn WAL tail (a write cut short by a crash or power loss; it \
                     was never acknowledged)"
                );
            }
            truncate(seg, off as u64)?;
            break;
        }
        expected = Some(next);
    }
    let wal_end = expected.map_or(0, |e| e - 1);
    let last_lsn = wal_end.max(checkpoint_lsn);
    Ok(Recovered {
        segments,
        last_lsn,
        wal_end,
        replayed,
    })
}

fn zeros(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// The smallest unit a disk writes atomically; a power loss keeps or loses whole sectors.
pub const SECTOR: usize = 512;

/// Most bytes one group commit writes (a larger record goes alone), and in `--fsync periodic`
/// most bytes written and not yet fsynced before an fsync is due. So the unsynced tail a power
/// loss can tear is at most two of these: a bad frame with more data than that after it lies
/// in synced data, and is corruption whatever it looks like.
pub const MAX_BATCH: usize = 1 << 20;

/// True if the frame at `off`, `len` bytes long, lies on a sector that never reached the disk,
/// and is close enough to the end of the data to be in the unsynced tail:
/// - a sector that starts within the frame is all zeros, or the frame's first, partial sector
///   is all zeros from the frame's start for at least a whole header (a lost sector of the
///   batch reads as zeros: the space is zero-filled ahead and files are never reused); a
///   shorter zero run can be a record's own zero bytes, so it does not count;
/// - at most `2 * MAX_BATCH` bytes of data follow the frame.
///
/// The bytes of the first sector before `off` belong to the previous, durable record and are
/// not looked at.
fn torn_sector(data: &[u8], off: usize, len: usize) -> bool {
    let frame_end = (off + len).min(data.len());
    let data_end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if data_end.saturating_sub(frame_end) > 2 * MAX_BATCH {
        return false;
    }
    let mut at = off;
    while at < frame_end {
        let sector_end = (at / SECTOR + 1) * SECTOR;
        let chunk = &data[at..sector_end.min(data.len())];
        if zeros(chunk) {
            if at.is_multiple_of(SECTOR) && sector_end <= data.len() {
                return true; // a whole lost sector
            }
            if at == off && lost_header_prefix(data, off, chunk.len()) {
                return true;
            }
        }
        at = sector_end;
    }
    false
}

/// The frame at `off` starts `k` bytes before a sector boundary and those `k` bytes are zero:
/// was that a lost sector? Yes if they cover the whole length field (`k >= 4`: no real frame
/// has length 0), or if some value of the lost length bytes passes the header's own check
/// (`len_crc`, in the sector that did reach the disk): then the rest of the header is real and
/// only its start was lost. Otherwise the zeros may be the length's own (a length that is a
/// multiple of 256), and the damage is not shown to be a lost sector.
fn lost_header_prefix(data: &[u8], off: usize, k: usize) -> bool {
    if k >= 4 {
        return true;
    }
    let Some(header) = data.get(off..off + FRAME_HEADER) else {
        return false;
    };
    let len_crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let mut len: [u8; 4] = header[..4].try_into().unwrap();
    (0..1u32 << (8 * k)).any(|low| {
        len[..k].copy_from_slice(&low.to_le_bytes()[..k]);
        crc32c::crc32c(&len) == len_crc && u32::from_le_bytes(len) as usize <= record::MAX_BODY
    })
}

fn truncate(seg: &mut SegmentInfo, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .map_err(|e| Error::io(format!("opening {}", seg.path.display()), e))?;
    f.set_len(len)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("truncating {}", seg.path.display()), e))?;
    seg.len = len;
    Ok(())
}

fn rewrite_header(seg: &mut SegmentInfo) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&seg.path)
        .map_err(|e| Error::io(format!("opening {}", seg.path.display()), e))?;
    f.write_all(MAGIC)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("rewriting {}", seg.path.display()), e))?;
    seg.len = MAGIC.len() as u64;
    Ok(())
}

/// Opens an existing segment for writing; the writer writes at explicit offsets (never
/// `O_APPEND`, which would put records after the preallocated zeros).
pub fn open_append(seg: &SegmentInfo) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .open(&seg.path)
        .map_err(|e| Error::io(format!("opening {}", seg.path.display()), e))
}
