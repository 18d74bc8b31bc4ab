//! Differential tests: the same command sequences against a real redis-server 7.0 and Tally's
//! RESP port; every reply must be byte-for-byte identical. Sequences follow REDIS_SEMANTICS.
//! Deliberate differences are tested in tests/resp.rs instead: SELECT of a database other
//! than 0 (Tally has one), and CLIENT SETINFO (Redis 7.2+, sent by redis-py).

mod common;

#[path = "common/differential.rs"]
mod differential;
#[path = "common/redis.rs"]
mod redis;
#[path = "common/resp.rs"]
mod resp;

use common::Proc;
use redis::RedisServer;
use resp::Resp;

/// Keys the scripts use; deleted on both servers before each script.
const KEYS: &[&str] = &["k", "k2", "n", "f", "a", "b", "c", "missing", "h", "rl"];

/// Splits a script line into arguments; `\0` in a line stands for a NUL byte and `""` for an
/// empty argument.
fn args(line: &str) -> Vec<String> {
    line.split(' ')
        .map(|a| {
            if a == "\"\"" {
                String::new()
            } else {
                a.replace("\\0", "\0").replace("\\s", " ")
            }
        })
        .collect()
}

const SCRIPTS: &[&[&str]] = &[
    // INCR family and argument parsing (§2, §3).
    &[
        "INCR n",
        "INCR n",
        "INCRBY n 5",
        "INCRBY n -10",
        "DECR n",
        "DECRBY n 3",
        "GET n",
        "INCRBY n 1.5",
        "INCRBY n +1",
        "INCRBY n 01",
        "INCRBY n \\s1",
        "INCRBY n 9223372036854775808",
        "DECRBY n -9223372036854775808",
        "DECRBY missing -9223372036854775808",
        "GET missing",
        "DECR missing",
        "INCRBY n \"\"",
    ],
    // Stored values under string2ll.
    &[
        "SET k 0",
        "INCR k",
        "SET k -1",
        "INCR k",
        "SET k 9223372036854775806",
        "INCR k",
        "SET k -9223372036854775808",
        "INCR k",
        "SET k hello",
        "INCR k",
        "GET k",
        "SET k \\s1",
        "INCR k",
        "SET k 1\\s",
        "INCR k",
        "SET k +1",
        "INCR k",
        "SET k 01",
        "INCR k",
        "SET k 00",
        "INCR k",
        "SET k -01",
        "INCR k",
        "SET k 1.0",
        "INCR k",
        "SET k 1e3",
        "INCR k",
        "SET k 0x10",
        "INCR k",
        "SET k \"\"",
        "INCR k",
        "SET k -0",
        "INCR k",
        "SET k -",
        "INCR k",
        "SET k 1\\02",
        "INCR k",
        "SET k 12345678901234567890",
        "INCR k",
        "SET k 9223372036854775808",
        "INCR k",
        "SET k -9223372036854775809",
        "INCR k",
        "SET k 9223372036854775807",
        "INCR k",
        "GET k",
    ],
    // Overflow.
    &[
        "SET n 9223372036854775807",
        "INCR n",
        "INCRBY n 0",
        "SET n -9223372036854775808",
        "DECR n",
        "DECRBY n 1",
        "INCRBY n -1",
        "SET n 1",
        "INCRBY n 9223372036854775807",
        "SET n -1",
        "INCRBY n -9223372036854775808",
        "SET n 0",
        "DECRBY n 9223372036854775807",
        "DECRBY n 1",
        "GET n",
    ],
    // INCRBYFLOAT (§4).
    &[
        "INCRBYFLOAT f 10.5",
        "INCRBYFLOAT f 0.1",
        "DEL f",
        "INCRBYFLOAT f 0.1",
        "INCRBYFLOAT f 0.2",
        "SET f 1",
        "INCRBYFLOAT f -1.1",
        "SET f 5.0e3",
        "INCRBYFLOAT f 2.0e2",
        "SET f 17179869184",
        "INCRBYFLOAT f 1.5",
        "SET f 100",
        "INCRBYFLOAT f -99.99",
        "SET f 1",
        "INCRBYFLOAT f 1e-17",
        "DEL f",
        "INCRBYFLOAT f 1234567890.123456789",
        "SET f 9223372036854775807",
        "INCRBYFLOAT f 1",
        "SET f 1",
        "INCRBYFLOAT f 1.0",
        "INCR f",
        "INCRBYFLOAT f 0.5",
        "INCR f",
        "INCRBYFLOAT f abc",
        "INCRBYFLOAT f \\s1",
        "INCRBYFLOAT f nan",
        "INCRBYFLOAT f inf",
        "INCRBYFLOAT f 1e5000",
        "INCRBYFLOAT f 0x10",
        "INCRBYFLOAT f -0",
        "SET f hello",
        "INCRBYFLOAT f 1",
        "SET f 1e4932",
        "INCRBYFLOAT f 1.18e4932",
        "SET f 1.7976931348623157e308",
        "INCRBYFLOAT f 1.7976931348623157e308",
        "GET f",
        "DEL f",
        "INCRBYFLOAT f -0.0",
        "INCRBYFLOAT f 3.14159265358979323846",
    ],
    // SET options.
    &[
        "SET k v NX",
        "SET k w NX",
        "GET k",
        "SET k w XX",
        "SET k2 v XX",
        "GET k2",
        "SET k v NX XX",
        "SET k v GET",
        "SET k2 v GET",
        "SET k v NX GET",
        "SET k v EX 0",
        "SET k v EX -1",
        "SET k v EX abc",
        "SET k v EX 10 PX 10",
        "SET k v KEEPTTL EX 10",
        "SET k v EX",
        "SET k v PX 9223372036854775807",
        "SET k v EX 9223372036854775",
        "SET k v EXAT 9223372036854775",
        "TTL k",
        "SET k v PXAT 9223372036854775807",
        "SET k v PXAT 1",
        "GET k",
        "SET k v NX NX",
        "SET k v EX 100",
        "TTL k",
        "SET k w KEEPTTL",
        "TTL k",
        "SET k x",
        "TTL k",
        "SET k v BOGUS",
        "SET k v EXAT 4102444800",
        "EXPIRETIME k",
        "PEXPIRETIME k",
        "SET k v ex 100 nx",
        "SET k v xx px 100000",
        "TTL k",
        "SET k v GET GET",
    ],
    // SETNX, SETEX, PSETEX, GETSET, GETDEL, GETEX.
    &[
        "SETNX k 1",
        "SETNX k 2",
        "GET k",
        "SETEX k 100 v",
        "TTL k",
        "SETEX k 0 v",
        "SETEX k -5 v",
        "SETEX k abc v",
        "PSETEX k 100000 v",
        "TTL k",
        "PSETEX k 0 v",
        "GETSET k w",
        "TTL k",
        "GETSET missing x",
        "GETDEL missing",
        "GETDEL missing",
        "GETEX nokey EX 0",
        "GETEX k EX 0",
        "GETEX k EX abc",
        "GETEX k KEEPTTL",
        "GETEX k NX",
        "GETEX k EX 10 PX 10",
        "GETEX k EX 100",
        "TTL k",
        "GETEX k PERSIST",
        "TTL k",
        "GETEX k",
        "GETEX k PXAT 1",
        "GET k",
        "SET k v",
        "GETEX k EXAT 4102444800500",
        "GETEX k EX 9223372036854775",
        "GETEX k PERSIST EX 1",
    ],
    // DEL, UNLINK, EXISTS, MGET, MSET.
    &[
        "SET c 1",
        "DEL c c",
        "SET c 1",
        "EXISTS c c c",
        "EXISTS missing",
        "MSET a 1 b",
        "MSET a 1 a 2",
        "GET a",
        "MGET a b missing a",
        "MSET a 1 b 2 c 3",
        "UNLINK a b missing",
        "EXISTS a b c",
        "DEL",
        "SET a 1",
        "EXPIRE a 100",
        "MSET a 2",
        "TTL a",
    ],
    // EXPIRE family (§5).
    &[
        "SET k v",
        "EXPIRE k abc foo",
        "EXPIRE k 1 2",
        "EXPIRE k 10 NX XX",
        "EXPIRE k 10 NX GT",
        "EXPIRE k 10 GT LT",
        "EXPIRE k 1.5",
        "EXPIRE k \"\"",
        "EXPIRE k \\s1",
        "EXPIRE k 9223372036854775808",
        "EXPIRE k 9223370399119966",
        "EXPIRE k 9223372036854776",
        "EXPIRE k 10000000000000000",
        "EXPIRE k -9223372036854776",
        "EXPIRE k -9999999999999999",
        "PEXPIRE k 9223372036854770000",
        "EXPIREAT k 9223372036854776",
        "TTL k",
        "EXPIREAT k 9223372036854775",
        "PEXPIREAT k 9223372036854770000",
        "PERSIST k",
        "PERSIST k",
        "EXPIRE missing 10",
        "EXPIRE missing 10 NX",
        "EXPIRE k 100 XX",
        "EXPIRE k 100 GT",
        "EXPIRE k 100 LT",
        "TTL k",
        "EXPIRE k 200 NX",
        "EXPIRE k 50 GT",
        "EXPIRE k 200 GT",
        "TTL k",
        "EXPIRE k 300 LT",
        "EXPIRE k 150 LT",
        "TTL k",
        "EXPIRE k 100 xx lt",
        "TTL k",
        "EXPIRE k 500 gt xx",
        "TTL k",
        "EXPIRE k 0",
        "GET k",
        "SET k v",
        "EXPIRE k -10",
        "EXISTS k",
        "SET k v",
        "EXPIRE k -10 LT",
        "SET k v",
        "EXPIREAT k 1",
        "SET k v",
        "EXPIREAT k -1",
        "SET k v",
        "PEXPIREAT k 0",
        "SET k v",
        "PEXPIRE k -9223372036854775808",
        "EXISTS k",
        "SET k v",
        "PEXPIRE k 0",
        "TTL k",
        "PTTL k",
        "EXPIRETIME k",
        "PEXPIRETIME k",
        "SET k v",
        "TTL k",
        "PTTL k",
        "EXPIRETIME k",
        "PEXPIRETIME k",
        "SET k v PXAT 4102444800500",
        "EXPIRETIME k",
        "PEXPIRETIME k",
        "EXPIRE k 1 BOGUS",
        "EXPIRE k 1 nx nx",
        "PERSIST missing",
        "EXPIRE k",
        "TTL",
    ],
    // The rate limiters of §7.
    &[
        "INCR rl",
        "TTL rl",
        "EXPIRE rl 60",
        "INCR rl",
        "TTL rl",
        "MULTI",
        "SET k 0 EX 60 NX",
        "INCR k",
        "EXEC",
        "MULTI",
        "SET k 0 EX 60 NX",
        "INCR k",
        "EXEC",
        "TTL k",
        "INCR k2",
        "EXPIRE k2 60 NX",
        "INCR k2",
        "EXPIRE k2 30 NX",
        "TTL k2",
    ],
    // MULTI / EXEC / DISCARD.
    &[
        "MULTI",
        "SET h hello",
        "INCR h",
        "INCRBY h x",
        "INCR n",
        "EXEC",
        "GET n",
        "EXEC",
        "DISCARD",
        "MULTI",
        "MULTI",
        "INCR n",
        "DISCARD",
        "GET n",
        "MULTI",
        "INCR",
        "INCR n",
        "EXEC",
        "GET n",
        "MULTI",
        "NOSUCH x",
        "EXEC",
        "MULTI",
        "EXEC",
        "MULTI",
        "SET k v EX 0",
        "GET k",
        "EXEC",
        "MULTI",
        "PING",
        "ECHO hi",
        "INCR n",
        "EXEC",
    ],
    // Errors, connection commands.
    &[
        "FOO",
        "FOO bar baz",
        "incr",
        "INCRBY n",
        "GETEX",
        "DEL",
        "MSET a",
        "SELECT 0",
        "SELECT abc",
        "PING",
        "PING hello",
        "PING a b",
        "ECHO x",
        "ECHO",
        "CLIENT GETNAME",
        "CLIENT SETNAME tally-test",
        "CLIENT GETNAME",
        "CLIENT SETNAME has\\sspace",
        "CLIENT NOSUCH",
        "CLIENT",
        "HELLO 4",
        "HELLO abc",
        "DBSIZE",
        "SET k v",
        "COMMAND NOSUCH",
        "QUIT",
    ],
];

fn run_differential(tally_addr: &str, redis_addr: &str, resp3: bool) {
    let lines: Vec<Vec<Vec<String>>> = SCRIPTS
        .iter()
        .map(|script| script.iter().map(|line| args(line)).collect())
        .collect();
    let groups: Vec<Vec<Vec<&str>>> = lines
        .iter()
        .map(|g| {
            g.iter()
                .map(|a| a.iter().map(String::as_str).collect())
                .collect()
        })
        .collect();
    let mut del = vec!["DEL"];
    del.extend_from_slice(KEYS);
    differential::assert_same(tally_addr, redis_addr, resp3, &[del], &groups, |_, r| r);
}

/// The same scripts, each sent as one pipelined write: the reply streams must be identical.
#[test]
fn pipelined_replies_match_redis() {
    let redis = RedisServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let tally = Proc::start(d.path(), &[]);
    for (si, script) in SCRIPTS.iter().enumerate() {
        let mut streams = Vec::new();
        for addr in [&tally.resp, &redis.addr] {
            let mut c = Resp::connect(addr);
            let mut del = vec!["DEL"];
            del.extend_from_slice(KEYS);
            c.cmd(&del);
            let mut batch = Vec::new();
            for line in script.iter() {
                let a = args(line);
                batch.extend_from_slice(&resp::encode(
                    &a.iter().map(String::as_str).collect::<Vec<_>>(),
                ));
            }
            c.send_raw(&batch);
            streams.push((0..script.len()).map(|_| c.reply()).collect::<Vec<_>>());
        }
        assert_eq!(
            streams[0], streams[1],
            "script {si}: tally (left) and redis (right) differ"
        );
    }
}

#[test]
fn replies_match_redis_byte_for_byte_resp2() {
    let redis = RedisServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let tally = Proc::start(d.path(), &[]);
    run_differential(&tally.resp, &redis.addr, false);
}

#[test]
fn replies_match_redis_byte_for_byte_resp3() {
    let redis = RedisServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let tally = Proc::start(d.path(), &[]);
    run_differential(&tally.resp, &redis.addr, true);
}
