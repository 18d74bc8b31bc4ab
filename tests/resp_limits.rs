//! CL.THROTTLE (redis-cell's GCRA limiter) and INCREX (Redis 8.8's bounded, expiring increment)
//! over RESP: replies, rounding, the window rolling on a manual clock, option errors, MULTI/EXEC,
//! COMMAND INFO, and acknowledged calls surviving kill -9.

mod common;

#[path = "common/resp.rs"]
mod resp;

use std::sync::Arc;

use common::Proc;
use common::kv::{T0, manual};
use resp::Resp;
use tally::clock::ManualClock;

/// An array of integers as RESP encodes it.
fn ints(v: &[i64]) -> String {
    let mut s = format!("*{}\r\n", v.len());
    for n in v {
        s += &format!(":{n}\r\n");
    }
    s
}

/// A two-element array of bulk strings (INCREX BYFLOAT in RESP2).
fn bulks(a: &str, b: &str) -> String {
    format!("*2\r\n${}\r\n{a}\r\n${}\r\n{b}\r\n", a.len(), b.len())
}

fn err(msg: &str) -> String {
    format!("-ERR {msg}\r\n")
}

/// Runs `f` with a RESP client of an in-process server on a manual clock at `T0`.
async fn on_manual_clock(f: impl FnOnce(&mut Resp, &ManualClock) + Send + 'static) {
    let (s, clock, _d) = manual().await;
    let addr = s.resp.clone();
    let c: Arc<ManualClock> = clock.clone();
    tokio::task::spawn_blocking(move || f(&mut Resp::connect(&addr), &c))
        .await
        .unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cl_throttle_bursts_refuses_and_rolls() {
    on_manual_clock(|c, clock| {
        // redis-cell's README example.
        let r = c.cmd(&["CL.THROTTLE", "user123", "15", "30", "60"]);
        assert_eq!(r, ints(&[0, 16, 15, -1, 2]));
        // A burst of 3 (max_burst 2), then 1 per 60 s: the 4th is refused for 60 s, and the
        // limiter is full again 180 s after the burst.
        let hit = ["CL.THROTTLE", "api:alice", "2", "1", "60"];
        assert_eq!(c.cmd(&hit), ints(&[0, 3, 2, -1, 60]));
        assert_eq!(c.cmd(&hit), ints(&[0, 3, 1, -1, 120]));
        assert_eq!(c.cmd(&hit), ints(&[0, 3, 0, -1, 180]));
        assert_eq!(c.cmd(&hit), ints(&[1, 3, 0, 60, 180]));
        // A refused request used nothing: 59.999 s later it is still refused, 1 ms rounds up.
        clock.advance(59_999);
        assert_eq!(c.cmd(&hit), ints(&[1, 3, 0, 1, 121]));
        // The window rolls: one more request is allowed a period after the burst.
        clock.advance(1);
        assert_eq!(c.cmd(&hit), ints(&[0, 3, 0, -1, 180]));
        assert_eq!(c.cmd(&hit), ints(&[1, 3, 0, 60, 180]));
        // After the whole reset time the full burst is back.
        clock.advance(180_000);
        assert_eq!(c.cmd(&hit), ints(&[0, 3, 2, -1, 60]));
        // Sub-second times round up to whole seconds: 3 per second is one every 333.3 ms.
        let fast = ["CL.THROTTLE", "fast", "0", "3", "1"];
        assert_eq!(c.cmd(&fast), ints(&[0, 1, 0, -1, 1]));
        assert_eq!(c.cmd(&fast), ints(&[1, 1, 0, 1, 1]));
        clock.advance(334);
        assert_eq!(c.cmd(&fast), ints(&[0, 1, 0, -1, 1]));
        // Quantity 0 only looks; a quantity over the limit is refused for good (-1).
        let peek = ["CL.THROTTLE", "q", "4", "1", "1", "0"];
        assert_eq!(c.cmd(&peek), ints(&[0, 5, 5, -1, 0]));
        assert_eq!(
            c.cmd(&["CL.THROTTLE", "q", "4", "1", "1", "2"]),
            ints(&[0, 5, 3, -1, 2])
        );
        assert_eq!(c.cmd(&peek), ints(&[0, 5, 3, -1, 2]));
        assert_eq!(c.cmd(&peek), ints(&[0, 5, 3, -1, 2]));
        assert_eq!(
            c.cmd(&["CL.THROTTLE", "q", "4", "1", "1", "6"]),
            ints(&[1, 5, 3, -1, 2])
        );
        // The key holds the theoretical arrival time and expires when the limiter is full.
        assert_eq!(c.cmd(&["PTTL", "q"]), ":2000\r\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cl_throttle_errors_and_multi() {
    on_manual_clock(|c, _| {
        let arity = err("wrong number of arguments for 'cl.throttle' command");
        assert_eq!(c.cmd(&["CL.THROTTLE", "k", "1", "1"]), arity);
        assert_eq!(c.cmd(&["cl.throttle", "k", "1", "1", "1", "1", "1"]), arity);
        let not_int = err("value is not an integer or out of range");
        for args in [
            ["k", "x", "1", "1", "1"],
            ["k", "1", "1.5", "1", "1"],
            ["k", "1", "1", "", "1"],
            ["k", "1", "1", "1", "one"],
        ] {
            let mut cmd = vec!["CL.THROTTLE"];
            cmd.extend(args);
            assert_eq!(c.cmd(&cmd), not_int, "{args:?}");
        }
        for (args, msg) in [
            (["k", "-1", "1", "1"], "max_burst must be >= 0"),
            (["k", "1", "0", "1"], "count_per_period must be > 0"),
            (["k", "1", "1", "0"], "period_ms must be > 0"),
            (["k", "1", "1", "-5"], "period_ms must be > 0"),
            (
                ["k", "1", "1", "9223372036854775807"],
                "period_ms and max_burst are too large",
            ),
        ] {
            let mut cmd = vec!["CL.THROTTLE"];
            cmd.extend(args);
            assert_eq!(c.cmd(&cmd), err(msg), "{args:?}");
        }
        assert_eq!(
            c.cmd(&["CL.THROTTLE", "k", "1", "1", "1", "-1"]),
            err("quantity must be >= 0")
        );
        assert_eq!(c.cmd(&["EXISTS", "k"]), ":0\r\n");
        // A key holding something else.
        c.cmd(&["SET", "s", "hello"]);
        assert_eq!(c.cmd(&["CL.THROTTLE", "s", "1", "1", "1"]), not_int);
        assert_eq!(c.cmd(&["GET", "s"]), "$5\r\nhello\r\n");
        // Inside MULTI: two requests in one transaction, the second refused.
        assert_eq!(c.cmd(&["MULTI"]), "+OK\r\n");
        let hit = ["CL.THROTTLE", "m", "0", "1", "60"];
        assert_eq!(c.cmd(&hit), "+QUEUED\r\n");
        assert_eq!(c.cmd(&hit), "+QUEUED\r\n");
        let exec = c.cmd(&["EXEC"]);
        let want = format!(
            "*2\r\n{}{}",
            ints(&[0, 1, 0, -1, 60]),
            ints(&[1, 1, 0, 60, 60])
        );
        assert_eq!(exec, want);
        // COMMAND INFO shows both commands with Redis-style flags and key positions.
        let info = c.cmd(&["COMMAND", "INFO", "cl.throttle", "INCREX"]);
        let flags = "*3\r\n+write\r\n+denyoom\r\n+fast\r\n:1\r\n:1\r\n:1\r\n";
        let throttle = format!("*6\r\n$11\r\ncl.throttle\r\n:-5\r\n{flags}");
        let increx = format!("*6\r\n$6\r\nincrex\r\n:-2\r\n{flags}");
        assert_eq!(info, format!("*2\r\n{throttle}{increx}"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn increx_bounds_saturate_and_ttl() {
    on_manual_clock(|c, clock| {
        // The rate limiter: 2 hits per 60 s window, the window starting at the first hit (ENX).
        let hit = ["INCREX", "rl", "UBOUND", "2", "EX", "60", "ENX"];
        assert_eq!(c.cmd(&hit), ints(&[1, 1]));
        clock.advance(10_000);
        assert_eq!(c.cmd(&hit), ints(&[2, 1]));
        assert_eq!(c.cmd(&["PTTL", "rl"]), ":50000\r\n", "ENX set the TTL once");
        // Over the bound: [current, 0], value and TTL untouched.
        assert_eq!(c.cmd(&hit), ints(&[2, 0]));
        assert_eq!(c.cmd(&["PTTL", "rl"]), ":50000\r\n");
        clock.advance(50_001);
        assert_eq!(c.cmd(&hit), ints(&[1, 1]));
        assert_eq!(c.cmd(&["PTTL", "rl"]), ":60000\r\n");
        // Without ENX, EX sets the TTL on every applied call.
        assert_eq!(c.cmd(&["INCREX", "rl", "PX", "1500"]), ints(&[2, 1]));
        assert_eq!(c.cmd(&["PTTL", "rl"]), ":1500\r\n");

        // BYINT, the default of 1, LBOUND, SATURATE.
        assert_eq!(c.cmd(&["INCREX", "n"]), ints(&[1, 1]));
        assert_eq!(c.cmd(&["INCREX", "n", "byint", "5"]), ints(&[6, 5]));
        let down = ["INCREX", "n", "BYINT", "-10", "LBOUND", "0"];
        assert_eq!(c.cmd(&down), ints(&[6, 0]));
        let mut sat = down.to_vec();
        sat.push("SATURATE");
        assert_eq!(c.cmd(&sat), ints(&[0, -6]));
        assert_eq!(c.cmd(&["GET", "n"]), "$1\r\n0\r\n");
        // Refused on a missing key: nothing is created.
        assert_eq!(c.cmd(&["INCREX", "none", "UBOUND", "0"]), ints(&[0, 0]));
        assert_eq!(c.cmd(&["EXISTS", "none"]), ":0\r\n");
        // The type's limit is a bound too: past int64 is refused, or saturated.
        c.cmd(&["SET", "big", "9223372036854775806"]);
        let over = ["INCREX", "big", "BYINT", "5"];
        assert_eq!(c.cmd(&over), ints(&[9223372036854775806, 0]));
        assert_eq!(
            c.cmd(&[&over[..], &["SATURATE"]].concat()),
            ints(&[i64::MAX, 1])
        );
        // INCRBY keeps Redis 7's error.
        assert_eq!(
            c.cmd(&["INCRBY", "big", "1"]),
            err("increment or decrement would overflow")
        );

        // EX/PX are relative, EXAT/PXAT absolute; PERSIST removes the TTL; no option keeps it.
        clock.set(T0 + 100_000);
        let secs = (T0 / 1000 + 130).to_string();
        assert_eq!(c.cmd(&["INCREX", "t", "EXAT", &secs]), ints(&[1, 1]));
        assert_eq!(c.cmd(&["PTTL", "t"]), ":30000\r\n");
        let ms = (T0 + 100_005).to_string();
        assert_eq!(c.cmd(&["INCREX", "t", "PXAT", &ms]), ints(&[2, 1]));
        assert_eq!(c.cmd(&["PTTL", "t"]), ":5\r\n");
        assert_eq!(c.cmd(&["INCREX", "t", "EX", "100"]), ints(&[3, 1]));
        assert_eq!(c.cmd(&["INCREX", "t"]), ints(&[4, 1]));
        assert_eq!(c.cmd(&["TTL", "t"]), ":100\r\n");
        assert_eq!(c.cmd(&["INCREX", "t", "PERSIST"]), ints(&[5, 1]));
        assert_eq!(c.cmd(&["TTL", "t"]), ":-1\r\n");
        // ENX leaves an existing TTL alone and sets one where there is none.
        c.cmd(&["EXPIRE", "t", "7"]);
        assert_eq!(c.cmd(&["INCREX", "t", "EX", "100", "ENX"]), ints(&[6, 1]));
        assert_eq!(c.cmd(&["TTL", "t"]), ":7\r\n");
        // Inside MULTI.
        c.cmd(&["MULTI"]);
        c.cmd(&["INCREX", "tx", "UBOUND", "1"]);
        c.cmd(&["INCREX", "tx", "UBOUND", "1"]);
        assert_eq!(
            c.cmd(&["EXEC"]),
            format!("*2\r\n{}{}", ints(&[1, 1]), ints(&[1, 0]))
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn increx_byfloat_replies_as_redis_prints_floats() {
    on_manual_clock(|c, _| {
        assert_eq!(
            c.cmd(&["INCREX", "f", "BYFLOAT", "0.1"]),
            bulks("0.1", "0.1")
        );
        let capped = ["INCREX", "f", "BYFLOAT", "0.2", "UBOUND", "0.3"];
        assert_eq!(c.cmd(&capped), bulks("0.3", "0.2"));
        assert_eq!(c.cmd(&capped), bulks("0.3", "0"));
        let floor = ["INCREX", "f", "BYFLOAT", "-1", "LBOUND", "0", "SATURATE"];
        assert_eq!(c.cmd(&floor), bulks("0", "-0.3"));
        assert_eq!(c.cmd(&["GET", "f"]), "$1\r\n0\r\n");
        // An integer counter can take a float step, with a TTL (INCRBYFLOAT cannot set one).
        c.cmd(&["SET", "g", "10"]);
        let g = ["INCREX", "g", "BYFLOAT", "2.5e0", "EX", "60", "ENX"];
        assert_eq!(c.cmd(&g), bulks("12.5", "2.5"));
        assert_eq!(c.cmd(&["TTL", "g"]), ":60\r\n");
        // RESP3 sends the two numbers as doubles, as Redis 8.8 does.
        c.cmd(&["HELLO", "3"]);
        assert_eq!(
            c.cmd(&["INCREX", "g", "BYFLOAT", "0.5"]),
            "*2\r\n,13\r\n,0.5\r\n"
        );
        assert_eq!(
            c.cmd(&["INCREX", "g"]),
            ints(&[14, 1]),
            "BYINT stays integers"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn increx_option_errors_change_nothing() {
    on_manual_clock(|c, _| {
        let syntax = err("syntax error");
        let not_int = err("value is not an integer or out of range");
        let not_float = err("value is not a valid float");
        let bad_expire = err("invalid expire time in 'increx' command");
        let cases: &[(&[&str], &str)] = &[
            (&["BOGUS"], &syntax),
            (&["BYINT"], &syntax),
            (&["BYINT", "1", "BYFLOAT", "1"], &syntax),
            (&["BYINT", "1", "BYINT", "2"], &syntax),
            (&["LBOUND", "1", "LBOUND", "2"], &syntax),
            (&["EX", "10", "PX", "10"], &syntax),
            (&["EX", "10", "PERSIST"], &syntax),
            (&["PERSIST", "EXAT", "10"], &syntax),
            (&["ENX"], &syntax),
            (&["PERSIST", "ENX"], &syntax),
            (&["UBOUND"], &syntax),
            (&["BYINT", "x"], &not_int),
            (&["BYINT", "1.5"], &not_int),
            (&["LBOUND", "1.5"], &not_int),
            (&["UBOUND", "ten"], &not_int),
            (&["EX", "soon"], &not_int),
            (&["BYFLOAT", "x"], &not_float),
            (&["BYFLOAT", "1", "UBOUND", "x"], &not_float),
            (&["EX", "0"], &bad_expire),
            (&["PX", "-1"], &bad_expire),
            (&["EXAT", "0"], &bad_expire),
            (&["PXAT", "0", "UBOUND", "0"], &bad_expire),
            (
                &["LBOUND", "5", "UBOUND", "1"],
                "-ERR lower_bound 5 is greater than upper_bound 1\r\n",
            ),
        ];
        for (opts, want) in cases {
            let cmd = [&["INCREX", "k"][..], opts].concat();
            assert_eq!(c.cmd(&cmd), *want, "{opts:?}");
        }
        assert_eq!(c.cmd(&["EXISTS", "k"]), ":0\r\n");
        assert_eq!(
            c.cmd(&["INCREX"]),
            err("wrong number of arguments for 'increx' command")
        );
        // A key holding something else.
        c.cmd(&["SET", "s", "hello"]);
        assert_eq!(c.cmd(&["INCREX", "s", "EX", "10"]), not_int);
        assert_eq!(c.cmd(&["INCREX", "s", "BYFLOAT", "1"]), not_float);
        assert_eq!(c.cmd(&["TTL", "s"]), ":-1\r\n");
    })
    .await;
}

#[test]
fn acknowledged_throttle_and_increx_survive_kill9() {
    let d = tempfile::tempdir().unwrap();
    let mut p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    let hit = ["CL.THROTTLE", "api:bob", "0", "1", "3600"];
    assert_eq!(c.cmd(&hit), ints(&[0, 1, 0, -1, 3600]));
    let count = ["INCREX", "rl:bob", "UBOUND", "1", "EX", "3600", "ENX"];
    assert_eq!(c.cmd(&count), ints(&[1, 1]));
    assert_eq!(
        c.cmd(&["INCREX", "f", "BYFLOAT", "1.5"]),
        bulks("1.5", "1.5")
    );
    p.kill9();
    let p = Proc::start(d.path(), &[]);
    let mut c = Resp::connect(&p.resp);
    assert!(
        c.cmd(&hit).starts_with("*5\r\n:1\r\n:1\r\n:0\r\n"),
        "limiter state lost in a crash"
    );
    assert_eq!(c.cmd(&count), ints(&[1, 0]), "counter lost in a crash");
    let ttl: i64 = c.cmd(&["TTL", "rl:bob"])[1..].trim().parse().unwrap();
    assert!((3500..=3600).contains(&ttl), "TTL lost in a crash: {ttl}");
    assert_eq!(c.cmd(&["GET", "f"]), "$3\r\n1.5\r\n");
}
