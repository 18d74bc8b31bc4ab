//! Crash recovery: WAL cut at every byte, flipped bits, restart and kill -9 of the real binary,
//! the data-directory lock, shutdown, periodic fsync. (Checkpoints and the key census are in
//! `checkpoints.rs`; the torn-sector rule in `wal_scan.rs`.)

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Proc, connect, frame_ends};
use tally::clock::SystemClock;
use tally::config::Config;
use tally::engine::Engine;
use tally::grpc::pb::*;

fn open(dir: &Path) -> tally::Result<Arc<Engine>> {
    Engine::open(Config::new(dir), Arc::new(SystemClock))
}

fn only_segment(dir: &Path) -> PathBuf {
    let segs: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs[0].clone()
}

/// The ops of the cut test: each is one record; the model after k records is known.
enum Step {
    Set(&'static str, &'static str),
    Incr(&'static str, i64),
    Del(&'static str),
}

const STEPS: &[Step] = &[
    Step::Incr("c", 1),
    Step::Set("a", "hello"),
    Step::Incr("c", 41),
    Step::Set("b", "7"),
    Step::Del("a"),
    Step::Incr("b", -8),
    Step::Incr("c", 100),
    Step::Set("a", "again"),
    Step::Del("c"),
    Step::Incr("c", 5),
];

fn model(k: usize) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for s in &STEPS[..k] {
        match s {
            Step::Set(key, v) => {
                m.insert(key.to_string(), v.to_string());
            }
            Step::Incr(key, by) => {
                let old: i64 = m.get(*key).map_or(0, |v: &String| v.parse().unwrap());
                m.insert(key.to_string(), (old + by).to_string());
            }
            Step::Del(key) => {
                m.remove(*key);
            }
        }
    }
    m
}

fn state(e: &Engine) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for k in ["a", "b", "c"] {
        if let Some(v) = e.get(k.as_bytes()).unwrap().value {
            m.insert(k.to_string(), String::from_utf8(v).unwrap());
        }
    }
    m
}

/// Writes STEPS with the engine and returns the WAL segment's bytes.
fn write_steps(dir: &Path) -> Vec<u8> {
    let e = open(dir).unwrap();
    for s in STEPS {
        let lsn = match s {
            Step::Set(k, v) => {
                e.set(k.as_bytes(), v.as_bytes(), &Default::default())
                    .unwrap()
                    .lsn
            }
            Step::Incr(k, by) => e.incr(k.as_bytes(), *by).unwrap().lsn,
            Step::Del(k) => e.delete(&[k.as_bytes().to_vec()]).unwrap().lsn,
        };
        e.wait(lsn).unwrap();
    }
    assert_eq!(state(&e), model(STEPS.len()));
    e.close().unwrap();
    drop(e);
    std::fs::read(only_segment(dir)).unwrap()
}

#[test]
fn wal_cut_at_every_byte_recovers_the_complete_record_prefix() {
    let src = tempfile::tempdir().unwrap();
    let seg = write_steps(src.path());
    let ends = frame_ends(&seg);
    assert_eq!(ends.len(), STEPS.len());
    let name = only_segment(src.path()).file_name().unwrap().to_owned();
    // A crash cuts a write short; what follows is either the end of the file or, since the
    // writer zero-fills ahead of its records, zeros (never inside the 8-byte magic, which is
    // fsync'd when the segment is created, before any zero-fill).
    let cuts = (0..=seg.len()).flat_map(|c| [(c, 0), (c, if c >= 8 { 4096 } else { 0 })]);
    for (cut, zero_tail) in cuts {
        // Only the WAL: the state must come from replay alone.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("wal")).unwrap();
        let mut file = seg[..cut].to_vec();
        file.resize(cut + zero_tail, 0);
        std::fs::write(d.path().join("wal").join(&name), &file).unwrap();
        // A record is whole if its bytes are all there: those past the cut may have been zeros
        // already (a record ending in a zero deadline, say), and the zero-fill restores them.
        let complete = ends
            .iter()
            .filter(|&&end| end <= cut || (end <= file.len() && file[..end] == seg[..end]))
            .count();
        let e = open(d.path()).unwrap_or_else(|err| panic!("cut {cut} + {zero_tail} zeros: {err}"));
        assert_eq!(
            state(&e),
            model(complete),
            "cut at byte {cut} + {zero_tail} zeros"
        );
        assert_eq!(
            e.stats().last_lsn,
            complete as u64,
            "cut at byte {cut} + {zero_tail} zeros"
        );
        // The torn tail was truncated, and new records continue the LSN sequence.
        let ack = e.incr(b"after", 1).unwrap();
        assert_eq!(ack.lsn, complete as u64 + 1);
        e.wait(ack.lsn).unwrap();
        e.close().unwrap();
        drop(e);
        let e = open(d.path()).unwrap();
        assert_eq!(e.get(b"after").unwrap().value.as_deref(), Some(&b"1"[..]));
    }
}

#[test]
fn flipped_bit_before_the_tail_stops_startup() {
    let src = tempfile::tempdir().unwrap();
    let seg = write_steps(src.path());
    let ends = frame_ends(&seg);
    let name = only_segment(src.path())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // Flip every bit of the third record (header and body): always corruption, never a silent
    // truncation that would drop records 4..10.
    let (start, end) = (ends[1], ends[2]);
    for byte in start..end {
        for bit in 0..8 {
            let mut bad = seg.clone();
            bad[byte] ^= 1 << bit;
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir(d.path().join("wal")).unwrap();
            std::fs::write(d.path().join("wal").join(&name), &bad).unwrap();
            let err = match open(d.path()) {
                Ok(_) => panic!("byte {byte} bit {bit}: startup accepted a damaged record"),
                Err(e) => e,
            };
            assert!(err.is_corruption(), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&name) && msg.contains(&format!("offset {start}")),
                "{msg}"
            );
        }
    }
    // Damage to the last record is indistinguishable from a torn write: it is dropped.
    let mut bad = seg.clone();
    let last = seg.len() - 1;
    bad[last] ^= 0x10;
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("wal")).unwrap();
    std::fs::write(d.path().join("wal").join(&name), &bad).unwrap();
    let e = open(d.path()).unwrap();
    assert_eq!(state(&e), model(STEPS.len() - 1));
}

#[test]
fn the_binary_refuses_a_corrupt_wal_with_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let seg = write_steps(d.path());
    let ends = frame_ends(&seg);
    // Remove the checkpoint and sled so the WAL must be replayed from the start.
    std::fs::remove_dir_all(d.path().join("sled")).unwrap();
    std::fs::remove_file(d.path().join("CHECKPOINT")).unwrap();
    let path = only_segment(d.path());
    let mut bad = seg.clone();
    bad[ends[0] + 20] ^= 4;
    std::fs::write(&path, &bad).unwrap();
    let (ok, _, err) = common::serve_to_exit(d.path(), "off");
    assert!(!ok);
    assert!(
        err.contains("corruption") && err.contains(&format!("offset {}", ends[0])),
        "{err}"
    );
    // Nothing was changed: the damaged segment is still there, byte for byte.
    assert_eq!(std::fs::read(&path).unwrap(), bad);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_acknowledged_state_after_term_and_after_kill9() {
    let d = tempfile::tempdir().unwrap();
    for (round, graceful) in [(1, true), (2, false), (3, false)] {
        let mut p = Proc::start(d.path(), &[]);
        let mut c = connect(&p.addr).await;
        if round > 1 {
            let v = c
                .get(GetRequest { key: "n".into() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(v.value, (100 * (round - 1)).to_string(), "round {round}");
            assert!(
                !c.get(GetRequest { key: "gone".into() })
                    .await
                    .unwrap()
                    .into_inner()
                    .found
            );
            assert_eq!(
                c.get(GetRequest { key: "s".into() })
                    .await
                    .unwrap()
                    .into_inner()
                    .value,
                "text"
            );
        }
        for _ in 0..100 {
            c.incr(IncrRequest {
                key: "n".into(),
                by: None,
                ..Default::default()
            })
            .await
            .unwrap();
        }
        c.set(SetRequest {
            key: "s".into(),
            value: "text".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        c.set(SetRequest {
            key: "gone".into(),
            value: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        c.delete(DeleteRequest {
            keys: vec!["gone".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        if graceful {
            assert!(p.term().success());
        } else {
            p.kill9();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_under_concurrent_load_loses_nothing_acknowledged_and_doubles_nothing() {
    const KEYS: usize = 8;
    const CYCLES: usize = 4;
    let d = tempfile::tempdir().unwrap();
    // Small segments and checkpoints, so kills also land around rolls and checkpoints.
    let extra = ["--wal-segment-bytes", "4096", "--checkpoint-bytes", "16384"];
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let unknown: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    for cycle in 0..CYCLES {
        let mut p = Proc::start(d.path(), &extra);
        let mut c = connect(&p.addr).await;
        for k in 0..KEYS {
            let r = c
                .get(GetRequest {
                    key: format!("k{k}"),
                })
                .await
                .unwrap()
                .into_inner();
            let v: u64 = if r.found { r.value.parse().unwrap() } else { 0 };
            let (a, u) = (
                acked[k].load(Ordering::SeqCst),
                unknown[k].load(Ordering::SeqCst),
            );
            assert!(
                v >= a,
                "cycle {cycle} key k{k}: lost writes: value {v} < acknowledged {a}"
            );
            assert!(
                v <= a + u,
                "cycle {cycle} key k{k}: doubled: value {v} > acked {a} + unknown {u}"
            );
            // Whatever survived of the unknown ones is now the new baseline.
            acked[k].store(v, Ordering::SeqCst);
            unknown[k].store(0, Ordering::SeqCst);
        }
        let stop = Instant::now() + Duration::from_millis(300 + 150 * cycle as u64);
        let mut tasks = Vec::new();
        for t in 0..8 {
            let mut c = connect(&p.addr).await;
            let (acked, unknown) = (acked.clone(), unknown.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                loop {
                    let k = i % KEYS;
                    i += 3;
                    unknown[k].fetch_add(1, Ordering::SeqCst);
                    match c
                        .incr(IncrRequest {
                            key: format!("k{k}"),
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(_) => {
                            unknown[k].fetch_sub(1, Ordering::SeqCst);
                            acked[k].fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => return, // the server died: this one stays unknown
                    }
                }
            }));
        }
        tokio::time::sleep_until(stop.into()).await;
        p.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let total: u64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert!(
        total > 100,
        "the load generator made too little progress: {total}"
    );
}

/// A load balancer's `Health/Watch` stream never ends on its own. Shutdown must still finish:
/// the watcher is told NOT_SERVING, the stream is closed after the grace, the WAL is closed
/// cleanly and every acknowledged write is there after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_is_not_held_open_by_a_health_watch_stream() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &["--shutdown-grace-ms", "300"]);
    let mut c = connect(&p.addr).await;
    for _ in 0..5 {
        c.incr(IncrRequest {
            key: "n".into(),
            by: None,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let ch = tonic::transport::Endpoint::from_shared(p.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(ch)
        .watch(HealthCheckRequest {
            service: "tally.v1.CounterService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // The watcher stays connected (this task holds the stream) while the server shuts down.
    let status = tokio::task::block_in_place(|| p.term_within(Duration::from_secs(10)));
    let status = status.expect("shutdown waited for the Health/Watch stream to end");
    assert!(status.success(), "{status:?}");
    let mut told = Vec::new();
    while let Ok(Some(m)) = watch.message().await {
        told.push(m.status);
    }
    assert_eq!(told, [ServingStatus::NotServing as i32]);
    // A clean close: the WAL holds records only (no zero-filled tail left behind).
    let seg = std::fs::read(only_segment(d.path())).unwrap();
    assert_eq!(frame_ends(&seg).len(), 5);
    let p = Proc::start(d.path(), &[]);
    let mut c = connect(&p.addr).await;
    let v = c.get(GetRequest { key: "n".into() }).await.unwrap();
    assert_eq!(v.into_inner().value, "5");
}

#[test]
fn a_second_server_on_the_same_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let _p = Proc::start(d.path(), &[]);
    let before: Vec<_> = walk(d.path());
    let t = Instant::now();
    let (ok, out, err) = common::serve_to_exit(d.path(), "off");
    assert!(!ok);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(err.contains("in use by another tally process"), "{err}");
    assert!(out.is_empty(), "the second server must not start serving");
    assert_eq!(
        walk(d.path()),
        before,
        "the refused server changed the directory"
    );
}

fn walk(p: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else if e.path().parent().unwrap().ends_with("wal") || e.file_name() == "CHECKPOINT" {
            out.push((e.path(), e.metadata().unwrap().len()));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_fsync_survives_a_killed_process() {
    // `--fsync periodic` acknowledges after the write to the OS: kill -9 keeps the page cache,
    // so nothing acknowledged is lost (only a power loss can lose the last ~100 ms).
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &["--fsync", "periodic"]);
    let mut c = connect(&p.addr).await;
    for i in 1..=500 {
        let v = c
            .incr(IncrRequest {
                key: format!("k{}", i % 7),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(v.into_inner().value > 0);
    }
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = connect(&p.addr).await;
    let mut total = 0;
    for k in 0..7 {
        let r = c
            .get(GetRequest {
                key: format!("k{k}"),
            })
            .await
            .unwrap()
            .into_inner();
        total += r.value.parse::<i64>().unwrap();
    }
    assert_eq!(total, 500);
}
