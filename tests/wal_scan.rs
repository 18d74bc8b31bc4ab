//! The WAL's startup scan on damage a crash can leave (cuts at every byte and flipped bits are in
//! `recovery.rs`). A power loss inside a multi-sector group commit: the disk may keep any subset
//! of the batch's sectors, so the newest segment can hold a bad frame (a lost sector, read as
//! zeros) followed by more data of the same unacknowledged batch. Recovery truncates that as a
//! torn tail and keeps the durable prefix; the same damage in a sealed segment, or a bad frame
//! with no lost sector (a flipped bit), is still corruption that stops startup. Segments missing
//! wholly below the checkpoint are no loss; missing past it, they are.

use std::path::Path;

use tally::wal::record::{self, Op};
use tally::wal::segment::{self, MAGIC, SECTOR};

/// Frames for LSNs `first..=last`, each holding one Put with a `value_len`-byte value.
fn frames(first: u64, last: u64, value_len: usize) -> (Vec<u8>, Vec<usize>) {
    let mut buf = Vec::new();
    let mut starts = Vec::new();
    for lsn in first..=last {
        starts.push(buf.len());
        let op = Op::Put {
            key: format!("k{lsn}").into_bytes(),
            value: vec![b'a' + (lsn % 26) as u8; value_len],
            deadline_ms: None,
        };
        record::encode(&mut buf, lsn, &[op]);
    }
    (buf, starts)
}

/// A segment starting at `first`: the magic, then `body`, then `zeros` bytes of
/// zero-filled space (as the writer preallocates).
fn write_segment(dir: &Path, first: u64, body: &[u8], zeros: usize) {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(body);
    b.resize(b.len() + zeros, 0);
    std::fs::write(dir.join(segment::name(first)), b).unwrap();
}

/// Runs recovery; returns the LSNs replayed, or the error text.
fn recover(dir: &Path) -> Result<Vec<u64>, String> {
    recover_after(dir, 0)
}

/// Runs recovery with checkpoint `ckpt`.
fn recover_after(dir: &Path, ckpt: u64) -> Result<Vec<u64>, String> {
    let mut lsns = Vec::new();
    segment::recover(dir, ckpt, &mut |r| {
        lsns.push(r.lsn);
        Ok(())
    })
    .map(|_| lsns)
    .map_err(|e| e.to_string())
}

/// Four durable small records, then an unsynced batch of 16 records of 300 bytes (about ten
/// sectors). Returns the segment bytes after the magic and the frame starts (file offsets).
fn durable_then_batch() -> (Vec<u8>, Vec<usize>) {
    durable_then_batch_padded(8)
}

/// As `durable_then_batch`, the first record's value `pad` bytes long (to move the batch's
/// start against sector boundaries).
fn durable_then_batch_padded(pad: usize) -> (Vec<u8>, Vec<usize>) {
    let (mut body, mut starts) = frames(1, 1, pad);
    let (more, mstarts) = frames(2, 4, 8);
    starts.extend(mstarts.iter().map(|s| s + body.len()));
    body.extend_from_slice(&more);
    let (batch, bstarts) = frames(5, 20, 300);
    starts.extend(bstarts.iter().map(|s| s + body.len()));
    body.extend_from_slice(&batch);
    let starts = starts.iter().map(|s| s + MAGIC.len()).collect();
    (body, starts)
}

/// Index of the frame holding file offset `at`.
fn frame_at(starts: &[usize], at: usize) -> usize {
    starts.iter().rposition(|&s| s <= at).unwrap()
}

#[test]
fn a_lost_sector_inside_the_last_batch_is_a_torn_tail() {
    let (body, starts) = durable_then_batch();
    // Lose the third sector after the batch starts; the sectors after it reached the disk.
    let lost = (starts[4] / SECTOR + 3) * SECTOR;
    let k = frame_at(&starts, lost);
    assert!(
        k > 4 && k < 19,
        "the hole must sit inside the batch (frame {k})"
    );
    let mut damaged = body.clone();
    let off = lost - MAGIC.len();
    damaged[off..off + SECTOR].fill(0);
    let d = tempfile::tempdir().unwrap();
    write_segment(d.path(), 1, &damaged, 64 << 10);
    let lsns = recover(d.path()).expect("a torn batch must not stop startup");
    // Frame k (LSN k + 1) lies on the lost sector: everything before it is kept, nothing after.
    assert_eq!(lsns, (1..=k as u64).collect::<Vec<_>>());
    let len = std::fs::metadata(d.path().join(segment::name(1)))
        .unwrap()
        .len();
    assert_eq!(len as usize, starts[k], "truncated at the torn frame");
    // And the truncated segment opens cleanly again.
    assert_eq!(recover(d.path()).unwrap(), lsns);
}

#[test]
fn any_subset_of_the_batch_sectors_recovers_a_prefix_of_what_was_written() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..600 {
        // The batch starts anywhere against a sector boundary, a few bytes before one included.
        let (body, starts) = durable_then_batch_padded(round % 520);
        let batch_start = starts[4];
        let end = MAGIC.len() + body.len();
        let mut damaged = body.clone();
        // Every third round keeps the first unsynced sector (a hole later in the batch);
        // otherwise it is lost (the hard case). Each later one is lost with p = 1/2.
        let mut sector = batch_start / SECTOR;
        let mut first = true;
        while sector * SECTOR < end + (64 << 10) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (first && round % 3 != 0) || (!first && x.is_multiple_of(2)) {
                let from = (sector * SECTOR).max(batch_start) - MAGIC.len();
                let to = ((sector + 1) * SECTOR).min(end) - MAGIC.len();
                if from < to {
                    damaged[from..to].fill(0);
                }
            }
            first = false;
            sector += 1;
        }
        let d = tempfile::tempdir().unwrap();
        write_segment(d.path(), 1, &damaged, 64 << 10);
        let lsns = recover(d.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            lsns.len() >= 4,
            "round {round}: lost durable records: {lsns:?}"
        );
        assert_eq!(
            lsns,
            (1..=lsns.len() as u64).collect::<Vec<_>>(),
            "round {round}"
        );
    }
}

#[test]
fn a_flipped_bit_before_more_data_is_still_corruption() {
    let (mut body, starts) = durable_then_batch();
    body[starts[8] - MAGIC.len() + 40] ^= 0x10;
    let d = tempfile::tempdir().unwrap();
    write_segment(d.path(), 1, &body, 64 << 10);
    let e = recover(d.path()).unwrap_err();
    assert!(
        e.contains(&format!("offset {}", starts[8])) && e.contains("refusing to start"),
        "{e}"
    );
}

#[test]
fn a_lost_sector_in_a_sealed_segment_is_corruption() {
    let (mut body, starts) = durable_then_batch();
    let lost = (starts[4] / SECTOR + 3) * SECTOR - MAGIC.len();
    body[lost..lost + SECTOR].fill(0);
    let d = tempfile::tempdir().unwrap();
    write_segment(d.path(), 1, &body, 0);
    let (next, _) = frames(21, 22, 8);
    write_segment(d.path(), 21, &next, 0);
    let e = recover(d.path()).unwrap_err();
    assert!(e.contains("00000000000000000001.wal"), "{e}");
}

#[test]
fn segments_missing_below_the_checkpoint_are_no_loss() {
    let d = tempfile::tempdir().unwrap();
    let (a, _) = frames(1, 4, 8);
    write_segment(d.path(), 1, &a, 0);
    // LSNs 5..=10 were in segments the checkpoint at 10 covered, and their removal persisted
    // before the removal of the older segment 1.
    let (b, _) = frames(11, 12, 8);
    write_segment(d.path(), 11, &b, 0);
    assert_eq!(recover_after(d.path(), 10).unwrap(), vec![11, 12]);
    // With the checkpoint at 9, LSN 10 is missing: that is lost data.
    let e = recover_after(d.path(), 9).unwrap_err();
    assert!(
        e.contains("starts at LSN 11 but the previous segment ends at LSN 4"),
        "{e}"
    );
}

/// Real damage far from the end is corruption even when it looks like a lost sector: more than
/// 2 MiB of data after it cannot be one unsynced batch. So a value with a sector of zeros of its
/// own plus a flipped bit, or a zeroed sector of synced data, stops startup.
#[test]
fn a_zero_sector_far_from_the_end_is_corruption() {
    let (mut body, starts) = frames(1, 3, 2000); // values of 2000 zero-free bytes
    let zeros = Op::Put {
        key: b"z".to_vec(),
        value: vec![0; 2000],
        deadline_ms: None,
    };
    let zeros_at = MAGIC.len() + body.len();
    record::encode(&mut body, 4, &[zeros]);
    let (tail, _) = frames(5, 1200, 2000); // 2.4 MB of acknowledged records after it
    body.extend_from_slice(&tail);
    let mut flipped = body.clone();
    flipped[zeros_at - MAGIC.len() + 30] ^= 1;
    let d = tempfile::tempdir().unwrap();
    write_segment(d.path(), 1, &flipped, 64 << 10);
    let e = recover(d.path()).unwrap_err();
    assert!(e.contains(&format!("offset {zeros_at}")), "{e}");
    let mut holed = body.clone();
    let s = (starts[2] / SECTOR + 1) * SECTOR - MAGIC.len();
    holed[s..s + SECTOR].fill(0);
    std::fs::remove_file(d.path().join(segment::name(1))).unwrap();
    write_segment(d.path(), 1, &holed, 64 << 10);
    assert!(
        recover(d.path()).is_err(),
        "a hole 2.4 MB before the end passed for torn"
    );
}
