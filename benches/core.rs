//! Criterion micro-benchmarks of the hot paths: WAL append + group commit (1, 8, 64 writers),
//! the engine's increment (one hot key, 100k cold keys), a 10k-command transaction, RESP request
//! parsing, proto decoding.
//! Run: `cargo bench --bench core`. (`cargo test --all-targets` runs each once, as a smoke test.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use tally::clock::SystemClock;
use tally::config::Config;
use tally::engine::Engine;
use tally::grpc::pb::IncrRequest;
use tally::wal::{FsyncMode, Op, Wal, WalConfig};

/// Appends + waits from `writers` threads, `per_writer` records each; returns the elapsed time.
fn group_commit(wal: &Arc<Wal>, writers: usize, per_writer: u64) -> Duration {
    let op = [Op::Put {
        key: b"bench".to_vec(),
        value: b"12345".to_vec(),
        deadline_ms: None,
    }];
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| {
                for _ in 0..per_writer {
                    let lsn = wal.append(&op).unwrap();
                    wal.wait(lsn).unwrap();
                }
            });
        }
    });
    start.elapsed()
}

fn wal(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = WalConfig {
        dir: dir.path().join("wal"),
        segment_bytes: 64 << 20,
        fsync: FsyncMode::Always,
        faults: Arc::default(),
    };
    let wal = Arc::new(Wal::open(cfg, 0, &mut |_| Ok(())).unwrap().0);
    let mut g = c.benchmark_group("wal_group_commit_fdatasync");
    g.sample_size(10);
    for writers in [1usize, 8, 64] {
        g.throughput(Throughput::Elements(writers as u64));
        g.bench_function(format!("{writers}_writers"), |b| {
            b.iter_custom(|iters| group_commit(&wal, writers, iters))
        });
    }
    g.finish();
}

fn engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine_incr");
    g.throughput(Throughput::Elements(1));
    // The default sled cache (4 MiB) and a 64 MiB one: 100k cold keys do not fit the first, so
    // this shows what the memory default costs per increment.
    for (label, cache) in [
        ("", tally::config::DEFAULT_CACHE_BYTES),
        ("64MiB_cache/", 64 << 20),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path());
        // Periodic fsync: this measures the CPU path (lock, sled, WAL buffer), not the disk.
        cfg.fsync = FsyncMode::Periodic(Duration::from_millis(100));
        cfg.cache_bytes = cache;
        let e = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
        g.bench_function(format!("{label}hot_key"), |b| {
            b.iter(|| e.incr(b"hot", 1).unwrap().value)
        });
        let keys: Vec<Vec<u8>> = (0..100_000)
            .map(|i| format!("cold:{i}").into_bytes())
            .collect();
        let mut i = 0usize;
        g.bench_function(format!("{label}100k_cold_keys"), |b| {
            b.iter(|| {
                i = (i + 7919) % keys.len();
                e.incr(&keys[i], 1).unwrap().value
            })
        });
        e.close().unwrap();
    }
    g.finish();
    // One transaction (an EXEC) of 10,000 increments over 1,000 keys: reading its own writes
    // is linear in its length (it used to scan every earlier op per command).
    let mut g = c.benchmark_group("engine_transaction");
    g.throughput(Throughput::Elements(10_000));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    cfg.fsync = FsyncMode::Periodic(Duration::from_millis(100));
    let e = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| format!("t:{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    g.bench_function("10k_incr_in_one_exec", |b| {
        b.iter(|| {
            e.run(&refs, |tx| {
                for i in 0..10_000 {
                    tx.incr(refs[i % refs.len()], 1)?;
                }
                Ok(())
            })
            .unwrap()
            .lsn
        })
    });
    g.finish();
    e.close().unwrap();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    let req = b"*2\r\n$4\r\nINCR\r\n$16\r\ncounter:00012345\r\n";
    g.bench_function("resp_incr", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&req[..]);
            tally::resp::parse::next(&mut buf).unwrap().unwrap().len()
        })
    });
    let pb = IncrRequest {
        key: "counter:00012345".into(),
        by: Some(5),
        ..Default::default()
    }
    .encode_to_vec();
    g.bench_function("proto_incr_request", |b| {
        b.iter(|| IncrRequest::decode(&pb[..]).unwrap().by)
    });
    g.finish();
}

criterion_group!(benches, wal, engine, decode);
criterion_main!(benches);
