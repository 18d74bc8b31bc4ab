//! Group commit shares fsyncs between concurrent clients on every runtime shape. In particular a
//! one-worker runtime must never let a waiter commit inline: the blocked worker is the only one
//! that could run the other clients, so each of them would find the log idle in turn and pay a
//! whole fsync alone (50 clients once fell from 47k to 6k INCR/s that way). And one group commit
//! is at most 1 MiB. Counted in fsyncs (`Stats::wal_fsyncs`), not timed.

use std::sync::Arc;

use tally::clock::SystemClock;
use tally::config::Config;
use tally::engine::Engine;

const CLIENTS: usize = 64;
const ROUNDS: usize = 10;

/// `CLIENTS` tasks, each doing `ROUNDS` increments one after another (wait for the ack, then the
/// next), like clients of a server. Returns the fsyncs they cost.
fn fsyncs_for_concurrent_clients(rt: tokio::runtime::Runtime) -> u64 {
    let d = tempfile::tempdir().unwrap();
    let e = Engine::open(Config::new(d.path()), Arc::new(SystemClock)).unwrap();
    let before = e.stats().wal_fsyncs;
    rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let e = e.clone();
                tokio::spawn(async move {
                    for _ in 0..ROUNDS {
                        let ack = e.incr(format!("client:{i}").as_bytes(), 1).unwrap();
                        tally::durable::acked(&e, ack.lsn).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let fsyncs = e.stats().wal_fsyncs - before;
    for i in 0..CLIENTS {
        let v = e.get(format!("client:{i}").as_bytes()).unwrap().value;
        assert_eq!(v.as_deref(), Some(ROUNDS.to_string().as_bytes()));
    }
    e.close().unwrap();
    fsyncs
}

/// Asserts the clients cost at most one fsync per `writes_per_fsync` writes.
fn assert_batched(rt: tokio::runtime::Runtime, writes_per_fsync: u64) {
    let fsyncs = fsyncs_for_concurrent_clients(rt);
    let writes = (CLIENTS * ROUNDS) as u64;
    assert!(
        fsyncs * writes_per_fsync <= writes,
        "{fsyncs} fsyncs for {writes} writes from {CLIENTS} concurrent clients"
    );
}

#[test]
fn one_worker_runtime_batches_fsyncs() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    // One fsync per round is the ideal; a fsync per write is the failure this guards against.
    assert_batched(rt.unwrap(), 4);
}

#[test]
fn two_worker_runtime_batches_fsyncs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    assert_batched(rt.unwrap(), 2);
}

/// One group commit writes at most 1 MiB (`segment::MAX_BATCH`; recovery's torn-tail rule
/// relies on it): 3 MiB appended at once is written, and fsynced, in at least three batches.
#[test]
fn a_group_commit_writes_at_most_one_mebibyte() {
    use tally::wal::{FsyncMode, Op, Wal, WalConfig};
    let d = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        dir: d.path().join("wal"),
        segment_bytes: 64 << 20,
        fsync: FsyncMode::Always,
        faults: Arc::default(),
    };
    let wal = Wal::open(cfg, 0, &mut |_| Ok(())).unwrap().0;
    let op = [Op::Put {
        key: b"k".to_vec(),
        value: vec![b'v'; 1000],
        deadline_ms: None,
    }];
    let before = wal.stats().fsyncs;
    let mut last = 0;
    for _ in 0..3 * 1024 {
        last = wal.append(&op).unwrap();
    }
    wal.wait(last).unwrap();
    let fsyncs = wal.stats().fsyncs - before;
    assert!(fsyncs >= 3, "3 MiB committed in {fsyncs} fsyncs");
    assert!(wal.stats().bytes >= 3 << 20);
}

/// In `--fsync periodic` an fsync also runs once 1 MiB is written and unsynced, whatever the
/// interval (which bounds what a power loss can tear): 3 MiB with an hour's interval still
/// costs an fsync.
#[test]
fn periodic_mode_fsyncs_once_a_mebibyte_is_unsynced() {
    use tally::wal::{FsyncMode, Op, Wal, WalConfig};
    let d = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        dir: d.path().join("wal"),
        segment_bytes: 64 << 20,
        fsync: FsyncMode::Periodic(std::time::Duration::from_secs(3600)),
        faults: Arc::default(),
    };
    let wal = Wal::open(cfg, 0, &mut |_| Ok(())).unwrap().0;
    let op = [Op::Put {
        key: b"k".to_vec(),
        value: vec![b'v'; 1000],
        deadline_ms: None,
    }];
    let mut last = 0;
    for _ in 0..3 * 1024 {
        last = wal.append(&op).unwrap();
    }
    wal.wait(last).unwrap();
    let fsyncs = wal.stats().fsyncs;
    assert!(
        fsyncs >= 1,
        "3 MiB written with {fsyncs} fsyncs in periodic mode"
    );
}
