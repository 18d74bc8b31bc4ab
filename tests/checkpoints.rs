//! Checkpoints and the startup key census: checkpoints bound WAL disk use and keep state, do not
//! storm when only the active segment is over the threshold, sealed segments hold records only,
//! and the key counts are exact when writes race the census.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use common::frame_ends;
use tally::clock::SystemClock;
use tally::config::Config;
use tally::engine::Engine;

fn open(dir: &std::path::Path) -> tally::Result<Arc<Engine>> {
    Engine::open(Config::new(dir), Arc::new(SystemClock))
}

#[test]
fn checkpoints_bound_wal_disk_use_and_keep_state() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.segment_bytes = 4096;
    cfg.checkpoint_bytes = 64 * 1024;
    let e = Engine::open(cfg.clone(), Arc::new(SystemClock)).unwrap();
    let mut max_bytes = 0;
    for i in 0..100_000u64 {
        let a = e.incr(format!("k{}", i % 100).as_bytes(), 1).unwrap();
        if i % 64 == 0 {
            e.wait(a.lsn).unwrap();
            max_bytes = max_bytes.max(e.stats().wal_bytes);
        }
    }
    let s = e.stats();
    assert!(s.checkpoint_lsn > 0, "no checkpoint ran: {s:?}");
    // 100k records of ~46 bytes is ~4.6 MB of WAL; checkpoints keep it near the threshold.
    assert!(max_bytes < 1 << 20, "WAL grew to {max_bytes} bytes");
    e.wait(100_000).unwrap();
    let l = e.checkpoint().unwrap();
    assert_eq!(l, 100_000);
    assert!(e.stats().wal_segments <= 2, "{:?}", e.stats());
    e.close().unwrap();
    drop(e);
    let e = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    for k in 0..100 {
        assert_eq!(
            e.get(format!("k{k}").as_bytes()).unwrap().value.unwrap(),
            b"1000"
        );
    }
    // LSNs continue past the checkpoint.
    assert_eq!(e.incr(b"k0", 1).unwrap().lsn, 100_001);
}

/// After a restart the key census runs in the background while clients write. Writes land on
/// both sides of its cursor (keys it has counted and keys it has not reached); the counts it
/// ends with must equal what is really stored, and a fresh census after another restart must
/// agree.
#[test]
fn key_counts_are_exact_when_writes_race_the_startup_census() {
    use tally::engine::{Condition, Expiry, SetOptions};
    const N: usize = 40_000;
    let dir = tempfile::tempdir().unwrap();
    let ttl = SetOptions {
        expiry: Some(Expiry::In(3_600_000)),
        ..Default::default()
    };
    let key = |i: usize| format!("k{i:06}").into_bytes();
    {
        let e = open(dir.path()).unwrap();
        for i in 0..N {
            if i % 4 == 0 {
                let _ = e.set(&key(i), b"1", &ttl).unwrap();
            } else {
                let _ = e.incr(&key(i), 1).unwrap();
            }
        }
        e.close().unwrap();
    }
    // One key per census step, so the census is still running while the writes below go on.
    let mut config = Config::new(dir.path());
    config.census_step_keys = 1;
    let e = Engine::open(config, Arc::new(SystemClock)).unwrap();
    // Model of the stored keys: (exists, has ttl) per key.
    let mut keys: BTreeMap<Vec<u8>, bool> = (0..N).map(|i| (key(i), i % 4 == 0)).collect();
    // Spread over the whole key space, in an order that is not the census's.
    for i in (0..N).rev().step_by(7) {
        match i % 5 {
            0 => {
                let _ = e.delete(&[key(i)]).unwrap();
                keys.remove(&key(i));
            }
            1 => {
                let k = [key(i), b"new".to_vec()].concat();
                let _ = e.set(&k, b"5", &ttl).unwrap();
                keys.insert(k, true);
            }
            2 => {
                let _ = e.persist(&key(i)).unwrap();
                keys.insert(key(i), false);
            }
            3 => {
                let _ = e
                    .expire(&key(i), Expiry::In(60_000), Condition::None)
                    .unwrap();
                keys.insert(key(i), true);
            }
            _ => {
                let _ = e.incr(&[key(i), b"n".to_vec()].concat(), 1).unwrap();
                keys.insert([key(i), b"n".to_vec()].concat(), false);
            }
        }
    }
    let want = (
        keys.len() as u64,
        keys.values().filter(|t| **t).count() as u64,
    );
    e.wait_for_census();
    let s = e.stats();
    assert!(s.keys_exact);
    assert_eq!(
        (s.keys, s.keys_with_ttl),
        want,
        "counts with writes during the census"
    );
    e.close().unwrap();
    drop(e);
    let e = open(dir.path()).unwrap();
    e.wait_for_census();
    let s = e.stats();
    assert_eq!(
        (s.keys, s.keys_with_ttl),
        want,
        "counts from a fresh census"
    );
}

#[test]
fn sealed_segments_hold_records_only() {
    // The zero-filled space ahead of the records is cut off before a segment is sealed (startup
    // would call zeros in a sealed segment damage). Checkpoints are kept out of the way so no
    // segment is deleted while the test looks.
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.segment_bytes = 4096;
    cfg.checkpoint_bytes = u64::MAX;
    let e = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    for i in 0..2_000u64 {
        let a = e.incr(format!("k{}", i % 100).as_bytes(), 1).unwrap();
        if i % 64 == 0 {
            e.wait(a.lsn).unwrap();
        }
    }
    e.wait(2_000).unwrap();
    let mut segs: Vec<PathBuf> = std::fs::read_dir(d.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop(); // the active one may end in zeros
    // 2,000 records of ~30 bytes fill more than ten segments of 4 KiB.
    assert!(segs.len() >= 10, "only {} sealed segments", segs.len());
    for seg in segs {
        let bytes = std::fs::read(&seg).unwrap();
        let ends = frame_ends(&bytes);
        // A zero-filled tail would parse as empty frames; real records are never empty.
        let starts = std::iter::once(8).chain(ends.iter().copied());
        assert!(
            starts.zip(&ends).all(|(a, &b)| b - a > 12),
            "{} ends in zeros",
            seg.display()
        );
        assert_eq!(
            ends.last().copied(),
            Some(bytes.len()),
            "{} has bytes after its last record",
            seg.display()
        );
    }
    e.close().unwrap();
}

/// The active segment alone over --checkpoint-bytes (here: a 16 MiB segment, a 4 KiB
/// threshold) cannot be shrunk by a checkpoint, so it must not trigger one every poll.
#[test]
fn an_active_segment_over_the_threshold_causes_no_checkpoint_storm() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(d.path());
    cfg.checkpoint_bytes = 4096;
    let e = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    for i in 0..2_000u64 {
        let a = e.incr(format!("k{}", i % 100).as_bytes(), 1).unwrap();
        e.wait(a.lsn).unwrap();
    }
    let s = e.stats();
    assert!(s.wal_bytes > 4096 && s.wal_segments == 1, "{s:?}");
    assert_eq!(s.checkpoints, 0, "{s:?}");
    e.close().unwrap();
}
