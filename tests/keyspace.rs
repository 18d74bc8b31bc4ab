//! The keyspace commands beyond the differential tests: SCAN's guarantee under concurrent
//! writes and write-backs, KEYS and RANDOMKEY over a store larger than one page, and RENAME /
//! COPY surviving `kill -9` with their TTLs, and FLUSHDB: durable at once, never early.

mod common;

#[path = "common/resp.rs"]
mod resp;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::Proc;
use resp::Resp;

/// The bulk strings of a reply, in order.
fn bulks(reply: &str) -> Vec<String> {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < lines.len() {
        if lines[i].starts_with('$') && lines[i] != "$-1" {
            out.push(lines[i + 1].to_string());
            i += 2;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn scan_returns_every_key_present_throughout_while_others_come_and_go() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let stable: HashSet<String> = (0..3000).map(|i| format!("stable:{i}")).collect();
    for k in &stable {
        c.cmd(&["SET", k, "1"]);
    }
    // Another client adds and deletes keys all over the range, and rewrites stable ones (so
    // they move between the write-back table and sled while the scan runs).
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (addr, stop) = (p.resp.clone(), stop.clone());
        thread::spawn(move || {
            let mut w = Resp::connect(&addr);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("churn:{}", i % 500);
                if i.is_multiple_of(2) {
                    w.cmd(&["SET", &k, "x"]);
                } else {
                    w.cmd(&["DEL", &k]);
                }
                w.cmd(&["INCR", &format!("stable:{}", i % 3000)]);
                i += 1;
            }
        })
    };
    let mut seen = HashSet::new();
    let mut cursor = "0".to_string();
    let mut pages = 0;
    loop {
        let reply = c.cmd(&["SCAN", &cursor, "COUNT", "20"]);
        let mut items = bulks(&reply);
        cursor = items.remove(0);
        seen.extend(items);
        pages += 1;
        assert!(pages < 10_000, "SCAN did not finish");
        if cursor == "0" {
            break;
        }
        thread::sleep(Duration::from_millis(8));
    }
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let missing: Vec<_> = stable.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} stable keys never returned: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        pages > 100,
        "the scan was meant to span write-backs ({pages} pages)"
    );
    // MATCH and a full KEYS agree on the stable keys.
    let all = bulks(&c.cmd(&["KEYS", "stable:*"]));
    assert_eq!(all.iter().cloned().collect::<HashSet<_>>(), stable);
    assert_eq!(bulks(&c.cmd(&["KEYS", "stable:299?"])).len(), 10);
}

#[test]
fn randomkey_returns_only_live_keys() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    assert_eq!(c.cmd(&["RANDOMKEY"]), "$-1\r\n");
    for i in 0..200 {
        c.cmd(&["SET", &format!("gone:{i}"), "1", "PX", "1"]);
    }
    c.cmd(&["SET", "live", "1"]);
    thread::sleep(Duration::from_millis(20));
    for _ in 0..20 {
        assert_eq!(c.cmd(&["RANDOMKEY"]), "$4\r\nlive\r\n");
    }
    for i in 0..50 {
        c.cmd(&["SET", &format!("k{i}"), "1"]);
    }
    let picked: HashSet<String> = (0..50).map(|_| c.cmd(&["RANDOMKEY"])).collect();
    assert!(picked.len() > 3, "RANDOMKEY is not random: {picked:?}");
}

#[test]
fn rename_and_copy_survive_kill_9_with_their_ttls() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    c.cmd(&["SET", "src", "42", "EX", "1000"]);
    assert_eq!(c.cmd(&["RENAME", "src", "dst"]), "+OK\r\n");
    assert_eq!(c.cmd(&["COPY", "dst", "copy"]), ":1\r\n");
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    assert_eq!(c.cmd(&["EXISTS", "src"]), ":0\r\n");
    for k in ["dst", "copy"] {
        assert_eq!(c.cmd(&["GET", k]), "$2\r\n42\r\n");
        let ttl: i64 = c.cmd(&["TTL", k])[1..].trim().parse().unwrap();
        assert!((990..=1000).contains(&ttl), "{k}: TTL {ttl}");
    }
}

/// FLUSHDB is one durable record: after `kill -9` right after its reply (before any
/// write-back or checkpoint), the keys written before it, including ones already written
/// back to sled, are gone and the ones after it are there, TTL index included.
#[test]
fn flushdb_is_durable_and_survives_kill_9_before_any_write_back() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    for i in 0..200 {
        c.cmd(&["SET", &format!("old:{i}"), "1"]);
        c.cmd(&["SET", &format!("ttl:{i}"), "1", "EX", "1000"]);
    }
    // Past a write-back: the old keys are in sled's files too.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.cmd(&["FLUSHDB"]), "+OK\r\n");
    assert_eq!(c.cmd(&["DBSIZE"]), ":0\r\n");
    assert_eq!(c.cmd(&["SET", "after", "1", "PX", "300"]), "+OK\r\n");
    assert_eq!(c.cmd(&["SET", "kept", "1"]), "+OK\r\n");
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let mut keys = bulks(&c.cmd(&["KEYS", "*"]));
    keys.sort();
    assert_eq!(keys, ["after", "kept"]);
    // The sweeper still finds the key set after the clear.
    let t = std::time::Instant::now();
    while c.cmd(&["DBSIZE"]) != ":1\r\n" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the TTL index lost 'after'"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // And again across a clean restart (the checkpoint path).
    assert_eq!(c.cmd(&["FLUSHALL"]), "+OK\r\n");
    let mut p = p;
    assert!(p.term().success());
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    assert_eq!(c.cmd(&["DBSIZE"]), ":0\r\n");
    assert_eq!(c.cmd(&["KEYS", "*"]), "*0\r\n");
}
