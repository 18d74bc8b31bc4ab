//! Injected I/O faults through the real gRPC server: a failed fsync is fail-stop (log, health
//! NOT_SERVING, writes UNAVAILABLE, restart recovers every acknowledged write), and ENOSPC
//! refuses new writes with RESOURCE_EXHAUSTED, loses nothing, and heals when space returns. An
//! error that reveals a stored value waits, like a read, for that value to be durable.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, InProc};
use tally::clock::SystemClock;
use tally::config::Config;
use tally::engine::Engine;
use tally::fault::Faults;
use tally::grpc::pb::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn incr(key: &str) -> IncrRequest {
    IncrRequest {
        key: key.into(),
        by: None,
        ..Default::default()
    }
}

/// An in-process server on `dir` whose I/O faults the test switches.
async fn start_with_faults(dir: &std::path::Path) -> (InProc, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let mut cfg = Config::new(dir);
    cfg.faults = faults.clone();
    (InProc::start(cfg, Arc::new(SystemClock)).await, faults)
}

fn reopen(dir: &std::path::Path) -> Arc<Engine> {
    Engine::open(Config::new(dir), Arc::new(SystemClock)).unwrap()
}

fn value(e: &Engine, key: &str) -> Option<String> {
    e.get(key.as_bytes())
        .unwrap()
        .value
        .map(|v| String::from_utf8(v).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_fsync_is_fail_stop_and_restart_keeps_every_acknowledged_write() {
    let d = tempfile::tempdir().unwrap();
    let (s, faults) = start_with_faults(d.path()).await;
    let mut c = s.client().await;
    for i in 1..=10 {
        assert_eq!(c.incr(incr("n")).await.unwrap().into_inner().value, i);
    }
    faults.set_fsync_error(true);
    let e = c.incr(incr("n")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("fdatasync failed"), "{}", e.message());
    // Fail-stop: no retry-and-pretend, even after the fault is gone.
    faults.set_fsync_error(false);
    let e = c.incr(incr("after")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let ch = tonic::transport::Endpoint::from_shared(s.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = HealthClient::new(ch);
    let t = Instant::now();
    loop {
        let req = tonic_health::pb::HealthCheckRequest {
            service: "tally.v1.CounterService".into(),
        };
        let st = h.check(req).await.unwrap().into_inner().status;
        if st == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "health still says {st}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.engine.failure().is_some());
    s.stop().await;
    // The acknowledged prefix: all 10 acked increments; the one that got UNAVAILABLE has an
    // unknown outcome (its bytes may have reached the disk); the refused write never applied.
    let e = reopen(d.path());
    let n: i64 = value(&e, "n").unwrap().parse().unwrap();
    assert!((10..=11).contains(&n), "n = {n}");
    assert_eq!(value(&e, "after"), None);
}

/// An error computed from a stored value ("not an integer") reveals that value as surely as a
/// read, so it waits, as a read does, until the value is durable. A value whose fsync failed
/// is never reported: not by Get, not by Incr's error, over gRPC or RESP.
#[tokio::test(flavor = "multi_thread")]
async fn an_error_that_reveals_a_value_waits_for_it_to_be_durable() {
    let d = tempfile::tempdir().unwrap();
    let (s, faults) = start_with_faults(d.path()).await;
    let mut c = s.client().await;
    let set = |value: &str| SetRequest {
        key: "s".into(),
        value: value.into(),
        ..Default::default()
    };
    c.set(set("7")).await.unwrap();
    // Durable state: the error is reported as usual.
    c.set(set("seven")).await.unwrap();
    let e = c.incr(incr("s")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // "abc" is applied, but its fsync fails: nobody may learn of it.
    faults.set_fsync_error(true);
    assert_eq!(
        c.set(set("abc")).await.unwrap_err().code(),
        Code::Unavailable
    );
    faults.set_fsync_error(false);
    let e = c.get(GetRequest { key: "s".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let e = c.incr(incr("s")).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unavailable,
        "Incr revealed the value: {e:?}"
    );
    // RESP: the connection closes without a reply rather than send the error.
    let addr = s.resp.clone();
    let got = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        sock.write_all(b"*2\r\n$4\r\nINCR\r\n$1\r\ns\r\n").unwrap();
        let mut got = Vec::new();
        let _ = sock.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(got, "", "RESP revealed the value");
    s.stop().await;
}

/// A server that acknowledged ten increments of "n", then a full disk (ENOSPC on WAL writes).
async fn ten_increments_then_a_full_disk() -> (tempfile::TempDir, InProc, Arc<Faults>, Client) {
    let d = tempfile::tempdir().unwrap();
    let (s, faults) = start_with_faults(d.path()).await;
    let mut c = s.client().await;
    for _ in 0..10 {
        c.incr(incr("n")).await.unwrap();
    }
    faults.set_enospc(true);
    (d, s, faults, c)
}

#[tokio::test(flavor = "multi_thread")]
async fn enospc_refuses_writes_loses_nothing_and_heals_when_space_returns() {
    let (d, s, faults, mut c) = ten_increments_then_a_full_disk().await;
    // Keep sending until the server refuses. A write that was already applied when the disk
    // filled up waits (its batch is retried); one that arrives after is refused untouched.
    let mut pending = Vec::new();
    let t = Instant::now();
    let refusal = loop {
        let mut c2 = c.clone();
        let mut task = tokio::spawn(async move { c2.incr(incr("n")).await });
        match tokio::time::timeout(Duration::from_millis(50), &mut task).await {
            Ok(r) => break r.unwrap().unwrap_err(),
            Err(_) => pending.push(task),
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no write was refused"
        );
    };
    assert_eq!(refusal.code(), Code::ResourceExhausted);
    assert!(
        refusal.message().contains("no space left on device"),
        "{}",
        refusal.message()
    );
    assert!(
        !pending.is_empty(),
        "the first write after the disk filled up should be waiting"
    );
    // Space returns: the waiting writes complete, new ones succeed.
    faults.set_enospc(false);
    let mut acked = 10;
    for p in pending {
        p.await.unwrap().unwrap();
        acked += 1;
    }
    let v = c.incr(incr("n")).await.unwrap().into_inner().value;
    acked += 1;
    assert_eq!(v, acked, "the refused write must not have applied");
    s.stop().await;
    assert_eq!(value(&reopen(d.path()), "n"), Some(acked.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_while_the_disk_is_full_ends_and_keeps_what_was_acknowledged() {
    let (d, s, _faults, c) = ten_increments_then_a_full_disk().await;
    // Applied (so it waits in the write-back table), but its WAL write hits the full disk.
    let mut c2 = c.clone();
    let stuck = tokio::spawn(async move { c2.incr(incr("n")).await });
    // Past a write-back interval: the write-back must not sit out the outage waiting for that
    // record to become durable, or the shutdown below, which joins it, never ends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("shutdown hung while the disk was full");
    assert!(
        stuck.await.unwrap().is_err(),
        "the stuck write was acknowledged"
    );
    assert_eq!(value(&reopen(d.path()), "n"), Some("10".to_string()));
}

fn wal_config(dir: &std::path::Path, faults: &Arc<Faults>) -> tally::wal::WalConfig {
    tally::wal::WalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 1 << 20,
        fsync: tally::wal::FsyncMode::Always,
        faults: faults.clone(),
    }
}

fn put(key: &str) -> Vec<tally::wal::Op> {
    vec![tally::wal::Op::Put {
        key: key.as_bytes().to_vec(),
        value: b"1".to_vec(),
        deadline_ms: None,
    }]
}

/// Replays the WAL in `dir` and returns the keys of its records, in order.
fn logged_keys(dir: &std::path::Path) -> Vec<String> {
    let mut keys = Vec::new();
    let (wal, _) = tally::wal::Wal::open(wal_config(dir, &Arc::default()), 0, &mut |r| {
        keys.extend(
            r.ops
                .iter()
                .map(|op| String::from_utf8(op.key().to_vec()).unwrap()),
        );
        Ok(())
    })
    .unwrap();
    drop(wal);
    keys
}

/// A lone waiter on an idle log writes and fsyncs the batch itself (no hand-off to the writer
/// thread); the inline path keeps the log's rules: fail-stop on a failed fsync, and on ENOSPC
/// the batch goes back to the writer thread, which retries it once space returns.
#[test]
fn inline_commit_is_durable_fail_stop_and_hands_enospc_to_the_writer() {
    use tally::error::Error;
    use tally::wal::Wal;
    let noop = &mut |_| Ok(());

    // Durable, and acknowledged on return.
    let d = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let (wal, _) = Wal::open(wal_config(d.path(), &faults), 0, noop).unwrap();
    // Right after open the writer thread may not be parked yet: until it is, callers wait.
    let lead = |lsn| {
        let t = Instant::now();
        loop {
            match wal.commit_inline(lsn) {
                Some(r) => return r,
                None if t.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                None => panic!("the idle log never let a waiter lead"),
            }
        }
    };
    let lsn = wal.append(&put("a")).unwrap();
    assert!(!wal.is_acked(lsn));
    lead(lsn).unwrap();
    assert!(wal.is_acked(lsn));
    assert!(
        matches!(wal.commit_inline(lsn), Some(Ok(()))),
        "already acked"
    );

    // ENOSPC: nothing is lost; new appends are refused until the writer's retry succeeds.
    faults.set_enospc(true);
    std::thread::sleep(Duration::from_millis(50)); // let the writer park again
    let lsn = wal.append(&put("b")).unwrap();
    assert!(
        wal.commit_inline(lsn).is_none(),
        "handed to the writer thread"
    );
    assert!(matches!(wal.append(&put("x")), Err(Error::NoSpace)));
    faults.set_enospc(false);
    wal.wait(lsn).unwrap();
    let lsn = wal.append(&put("c")).unwrap();
    lead(lsn).unwrap();

    // A failed fsync: this waiter and every later one get Unavailable; no retry.
    faults.set_fsync_error(true);
    let lsn = wal.append(&put("lost")).unwrap();
    let r = lead(lsn);
    assert!(matches!(r, Err(Error::Unavailable(_))), "{r:?}");
    faults.set_fsync_error(false);
    assert!(matches!(wal.append(&put("y")), Err(Error::Unavailable(_))));
    assert!(matches!(wal.wait(lsn), Err(Error::Unavailable(_))));
    drop(wal);
    let keys = logged_keys(d.path());
    assert_eq!(&keys[..3], ["a", "b", "c"], "{keys:?}");
}

/// A new segment that cannot be created (a full disk, no descriptor left) is not fatal: what
/// the failed try created is removed, the full segment keeps taking records, and the roll
/// happens once it can. Every record is acknowledged and replays, in order, after a restart.
#[test]
fn a_failed_segment_roll_keeps_appending_and_rolls_once_it_can() {
    use tally::wal::Wal;
    let wal_files = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("wal".as_ref()))
            .count()
    };
    let d = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let mut cfg = wal_config(d.path(), &faults);
    cfg.segment_bytes = 256;
    let (wal, _) = Wal::open(cfg, 0, &mut |_| Ok(())).unwrap();
    let mut keys = Vec::new();
    let mut write = |range: std::ops::Range<usize>| {
        for i in range {
            let k = format!("k{i}");
            wal.wait(wal.append(&put(&k)).unwrap()).unwrap();
            keys.push(k);
        }
    };
    faults.set_roll_error(true);
    write(0..100); // about 30 bytes a record: many times the segment size
    assert_eq!(wal_files(d.path()), 1, "a failed segment was left behind");
    faults.set_roll_error(false);
    std::thread::sleep(Duration::from_millis(150)); // past the wait between tries
    write(100..200);
    assert!(wal_files(d.path()) > 3, "the WAL never rolled again");
    assert!(wal.failure().is_none());
    wal.close();
    drop(wal);
    assert_eq!(logged_keys(d.path()), keys);
}

/// A checkpoint whose fsync of sled fails is fail-stop: Linux may have dropped the dirty pages,
/// so a retry that "succeeds" would let the checkpoint delete the WAL that is their only copy.
#[test]
fn a_failed_checkpoint_fsync_is_fail_stop_and_keeps_the_wal() {
    let d = tempfile::tempdir().unwrap();
    let faults = Arc::new(Faults::default());
    let mut cfg = Config::new(d.path());
    cfg.faults = faults.clone();
    cfg.segment_bytes = 4096; // several sealed segments a checkpoint would remove
    cfg.checkpoint_bytes = u64::MAX;
    cfg.checkpoint_interval = Duration::from_secs(3600);
    let e = Engine::open(cfg, Arc::new(SystemClock)).unwrap();
    for i in 1..=300 {
        let a = e.incr(format!("k{}", i % 7).as_bytes(), 1).unwrap();
        e.wait(a.lsn).unwrap();
    }
    let before = e.stats();
    assert!(before.wal_segments > 2, "{before:?}");
    faults.set_checkpoint_fsync_error(true);
    let err = e.checkpoint().unwrap_err().to_string();
    assert!(
        err.contains("checkpoint failed") && err.contains("no further writes are accepted"),
        "{err}"
    );
    // The fault is gone, but nothing is retried: no checkpoint, no write, health goes down.
    faults.set_checkpoint_fsync_error(false);
    assert!(
        e.checkpoint().is_err(),
        "a checkpoint ran after a failed fsync"
    );
    assert!(matches!(
        e.incr(b"after", 1),
        Err(tally::Error::Unavailable(_))
    ));
    assert!(e.failure().is_some());
    let after = e.stats();
    assert_eq!(after.checkpoint_lsn, before.checkpoint_lsn);
    assert_eq!(
        after.wal_segments, before.wal_segments,
        "WAL segments removed"
    );
    e.close().unwrap();
    drop(e);
    let e = reopen(d.path());
    let total: i64 = (0..7)
        .map(|k| value(&e, &format!("k{k}")).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(total, 300);
    assert_eq!(value(&e, "after"), None);
}

/// Right after a restart the key counts come from a background census. Stats and DBSIZE wait
/// for it without holding a tokio worker: on a one-worker runtime, other calls are served
/// meanwhile (a blocking wait would stall them all for up to 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn waiting_for_the_key_census_blocks_no_worker() {
    let d = tempfile::tempdir().unwrap();
    {
        let e = reopen(d.path());
        for i in 0..10 {
            let a = e.incr(format!("k{i}").as_bytes(), 1).unwrap();
            e.wait(a.lsn).unwrap();
        }
        e.close().unwrap();
    }
    let faults = Arc::new(Faults::default());
    faults.set_census_paused(true);
    let mut cfg = Config::new(d.path());
    cfg.faults = faults.clone();
    let s = InProc::start(cfg, Arc::new(SystemClock)).await;
    assert!(!s.engine.census_done());
    assert!(!s.engine.stats().keys_exact);
    let mut c = s.client().await;
    let stats = tokio::spawn({
        let mut c = c.clone();
        async move { c.stats(StatsRequest {}).await.unwrap().into_inner() }
    });
    let resp = s.resp.clone();
    let dbsize = tokio::task::spawn_blocking(move || {
        let mut r = std::net::TcpStream::connect(resp).unwrap();
        std::io::Write::write_all(&mut r, b"DBSIZE\r\n").unwrap();
        let mut out = [0u8; 16];
        let n = std::io::Read::read(&mut r, &mut out).unwrap();
        String::from_utf8_lossy(&out[..n]).into_owned()
    });
    // Served while Stats and DBSIZE wait for the census.
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(5), c.incr(incr("n"))).await;
        assert!(r.expect("Incr stalled behind a census wait").is_ok());
    }
    assert!(!stats.is_finished() && !dbsize.is_finished());
    faults.set_census_paused(false);
    let st = stats.await.unwrap();
    assert_eq!((st.keys, st.keys_counting), (11, false));
    assert_eq!(dbsize.await.unwrap(), ":11\r\n");
    s.stop().await;
}

/// `TALLY_FAULTS` is a test seam compiled into the shipped binary: arming it, `skip-fsync` above
/// all, must never go unnoticed.
#[test]
fn armed_faults_are_announced_loudly_at_startup() {
    use std::io::{BufRead, Read};
    let d = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::bin())
        .args(["serve", "--grpc-addr", "127.0.0.1:0", "--resp-addr", "off"])
        .args(["--log-level", "error", "--data-dir"])
        .arg(d.path())
        .env("TALLY_FAULTS", "skip-fsync")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("tally: serving gRPC on "), "{line}");
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("test-only fault injection is armed (TALLY_FAULTS=skip-fsync)")
            && err.contains("acknowledged writes WILL BE LOST on power loss"),
        "{err}"
    );
}
