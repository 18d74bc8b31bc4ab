//! Lua scripts beyond what the differential tests compare: a script that runs away (BUSY,
//! SCRIPT KILL, UNKILLABLE), one that allocates without bound, the cache after a restart,
//! WATCH aborted by other clients and the sweeper, and `kill -9` while multi-key scripts run:
//! every script's writes are all there or all absent, nothing acknowledged is lost.
//! The one deliberate difference from Redis (a stopped server stops even an UNKILLABLE
//! script) is tested here too.

mod common;

#[path = "common/resp.rs"]
mod resp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::Proc;
use resp::Resp;

const BUSY: &str =
    "-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n";

/// Sends `args` from a new connection on another thread; the reply comes back on join.
fn in_background(addr: &str, args: &[&str]) -> thread::JoinHandle<String> {
    let addr = addr.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let h = thread::spawn(move || {
        let mut c = Resp::connect(&addr);
        c.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
    });
    thread::sleep(Duration::from_millis(100));
    h
}

/// Polls `args` until the reply is `want` (bounded).
fn until(c: &mut Resp, args: &[&str], want: &str) {
    let t = Instant::now();
    loop {
        let got = c.cmd(args);
        if got == want {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{args:?}: still {got:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_runaway_script_gets_busy_replies_then_script_kill_stops_it() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &["--busy-script-ms", "300"]);
    let mut c = Resp::connect(&p.resp);
    assert_eq!(
        c.cmd(&["SCRIPT", "KILL"]),
        "-NOTBUSY No scripts in execution right now.\r\n"
    );
    let looping = in_background(&p.resp, &["EVAL", "while true do end", "0"]);
    // Past the threshold every command is refused, engine command or not.
    until(&mut c, &["INCR", "n"], BUSY);
    assert_eq!(c.cmd(&["PING"]), BUSY);
    assert_eq!(c.cmd(&["EVAL", "return 1", "0"]), BUSY);
    assert_eq!(c.cmd(&["SCRIPT", "KILL"]), "+OK\r\n");
    let reply = looping.join().unwrap();
    assert!(
        reply.starts_with("-ERR Script killed by user with SCRIPT KILL... script: "),
        "{reply:?}"
    );
    assert_eq!(c.cmd(&["INCR", "n"]), ":1\r\n");
    // A loop inside a coroutine the script made is stopped too.
    let looping = in_background(
        &p.resp,
        &[
            "EVAL",
            "coroutine.wrap(function() while true do end end)()",
            "0",
        ],
    );
    until(&mut c, &["PING"], BUSY);
    assert_eq!(c.cmd(&["SCRIPT", "KILL"]), "+OK\r\n");
    assert!(looping.join().unwrap().starts_with("-ERR Script killed"));

    // A script that wrote cannot be killed (its writes could not be undone in Redis); a stopped
    // server stops it anyway, and what it wrote was never acknowledged.
    let writer = in_background(
        &p.resp,
        &["EVAL", "redis.call('set', 'w', 1) while true do end", "0"],
    );
    until(&mut c, &["PING"], BUSY);
    assert!(
        c.cmd(&["SCRIPT", "KILL"])
            .starts_with("-UNKILLABLE Sorry the script already executed write commands")
    );
    let mut p = p;
    assert!(
        p.term_within(Duration::from_secs(10)).is_some(),
        "shutdown hung behind the script"
    );
    assert!(writer.join().unwrap().starts_with("-ERR Script killed"));
}

#[test]
fn a_script_past_the_memory_cap_fails_alone() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &["--script-memory-bytes", "8388608"]);
    let mut c = Resp::connect(&p.resp);
    let hog = "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 100) .. i end";
    for _ in 0..3 {
        assert_eq!(
            c.cmd(&["EVAL", hog, "0"]),
            "-ERR script ran out of memory: the Lua interpreter is capped at 8388608 bytes \
             (--script-memory-bytes)\r\n"
        );
        assert_eq!(
            c.cmd(&["EVAL", "return #string.rep('x', 1000)", "0"]),
            ":1000\r\n"
        );
    }
    assert_eq!(c.cmd(&["INCR", "n"]), ":1\r\n");
    // A large script (900 KB, 90,000 lines) compiles and runs; one past the 1 MiB bulk limit is
    // refused by the protocol layer, and only its connection closes.
    let body = format!("local x = 0\n{}return x", "x = x + 1\n".repeat(90_000));
    assert_eq!(c.cmd(&["EVAL", &body, "0"]), ":90000\r\n");
    let mut big = Resp::connect(&p.resp);
    let huge = format!("return '{}'", "a".repeat(1 << 20));
    assert_eq!(
        big.cmd(&["EVAL", &huge, "0"]),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    assert_eq!(c.cmd(&["PING"]), "+PONG\r\n");
}

#[test]
fn the_script_cache_is_not_kept_across_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let body = "return redis.call('incr', KEYS[1])";
    let sha = {
        let p = Proc::start(d.path(), &[]);
        let mut c = Resp::connect(&p.resp);
        let sha = c.cmd(&["SCRIPT", "LOAD", body]);
        let sha = sha.lines().nth(1).unwrap().to_string();
        assert_eq!(c.cmd(&["EVALSHA", &sha, "1", "k"]), ":1\r\n");
        sha
    };
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    assert_eq!(
        c.cmd(&["EVALSHA", &sha, "1", "k"]),
        "-NOSCRIPT No matching script. Please use EVAL.\r\n"
    );
    assert_eq!(c.cmd(&["EVAL", body, "1", "k"]), ":2\r\n");
    assert_eq!(c.cmd(&["EVALSHA", &sha, "1", "k"]), ":3\r\n");
}

#[test]
fn watch_is_aborted_by_other_clients_scripts_and_the_sweeper() {
    let d = tempfile::tempdir().unwrap();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let mut other = Resp::connect(&p.resp);
    let exec = |c: &mut Resp| {
        assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
        assert_eq!(c.cmd(&["INCR", "w"]), "+QUEUED\r\n");
        c.cmd(&["EXEC"])
    };
    // Each kind of change by someone else aborts; nothing of the transaction is applied.
    let changes: &[&[&str]] = &[
        &["SET", "w", "10"],
        &["INCR", "w"],
        &["DEL", "w"],
        &["EXPIRE", "w", "100"],
        &["EVAL", "redis.call('incrby', KEYS[1], 5)", "1", "w"],
    ];
    for change in changes {
        c.cmd(&["SET", "w", "1"]);
        assert_eq!(c.cmd(&["WATCH", "w"]), "+OK\r\n");
        other.cmd(change);
        let before = c.cmd(&["GET", "w"]);
        assert_eq!(exec(&mut c), "*-1\r\n", "{change:?} did not abort");
        assert_eq!(c.cmd(&["GET", "w"]), before);
    }
    // The sweeper's removal of an expired key is a change too.
    c.cmd(&["SET", "w", "1", "PX", "50"]);
    assert_eq!(c.cmd(&["WATCH", "w"]), "+OK\r\n");
    until(&mut other, &["DBSIZE"], ":0\r\n");
    assert_eq!(exec(&mut c), "*-1\r\n");
    // Untouched, it runs.
    c.cmd(&["SET", "w", "1"]);
    c.cmd(&["WATCH", "w"]);
    other.cmd(&["SET", "unrelated", "1"]);
    assert_eq!(exec(&mut c), "*1\r\n:2\r\n");
}

#[test]
fn after_kill_9_each_scripts_writes_are_all_there_or_all_absent() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    // Each client's script writes its sequence number to three keys; the reply is that number.
    let body = "for _, k in ipairs(KEYS) do redis.call('set', k, ARGV[1]) end \
                return redis.call('incr', KEYS[1] .. ':n')";
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (addr, stop) = (p.resp.clone(), stop.clone());
            thread::spawn(move || {
                let mut acked = 0u64;
                let mut c = Resp::connect(&addr);
                let keys: Vec<String> = ["a", "b", "c"].iter().map(|k| format!("{k}{i}")).collect();
                for seq in 1..=100_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let n = seq.to_string();
                    let mut args = vec!["EVAL", body, "3"];
                    args.extend(keys.iter().map(String::as_str));
                    args.push(&n);
                    let Some(reply) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.cmd(&args)))
                            .ok()
                    else {
                        break;
                    };
                    if reply.is_empty() || !reply.starts_with(':') {
                        break;
                    }
                    acked = seq;
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    p.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<u64> = clients.into_iter().map(|h| h.join().unwrap_or(0)).collect();
    assert!(
        acked.iter().all(|&n| n > 0),
        "no script acknowledged: {acked:?}"
    );
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    for (i, &n) in acked.iter().enumerate() {
        let vals: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|k| c.cmd(&["GET", &format!("{k}{i}")]))
            .collect();
        assert!(
            vals[0] == vals[1] && vals[1] == vals[2],
            "client {i}: half a script: {vals:?}"
        );
        let stored: u64 = vals[0].lines().nth(1).unwrap().parse().unwrap();
        assert!(stored >= n, "client {i}: acknowledged {n}, stored {stored}");
        assert!(
            stored <= n + 1,
            "client {i}: stored {stored} past the one in flight after {n}"
        );
        let count = c.cmd(&["GET", &format!("a{i}:n")]);
        assert_eq!(count.lines().nth(1).unwrap(), stored.to_string());
    }
}
