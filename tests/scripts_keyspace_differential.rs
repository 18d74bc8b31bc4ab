//! Differential tests for Lua scripting, WATCH and the keyspace commands: the same commands against a real
//! redis-server 7.0 and Tally's RESP port, in RESP2 and RESP3; every reply must be identical,
//! byte for byte (error texts, the script sha and line they name, every Lua <-> RESP
//! conversion, the sandbox's messages).
//! Deliberate differences are tested in tests/scripts.rs instead.

mod common;

#[path = "common/differential.rs"]
mod differential;
#[path = "common/lua_libs.rs"]
mod lua_libs;
#[path = "common/redis.rs"]
mod redis;
#[path = "common/resp.rs"]
mod resp;

use common::Proc;
use redis::RedisServer;

/// Keys the cases use; deleted on both servers before each group.
const KEYS: &[&str] = &[
    "k",
    "s",
    "f",
    "w",
    "x",
    "rl",
    "a",
    "b",
    "nokey",
    "k1",
    "k2",
    "k3",
    "k4",
    "k5",
    "k6",
    "user:1:count",
    "user:2:sum",
    "user:10:count",
    "h[x]",
    "zz",
    "mm",
];

/// `EVAL <body> 0` (most cases take no keys).
fn eval(body: &str) -> Vec<&str> {
    vec!["EVAL", body, "0"]
}

/// WATCH `keys`, then `between`, then MULTI, `queued`, EXEC.
fn watched<'a>(keys: &[&'a str], between: &[&[&'a str]], queued: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut watch = vec!["WATCH"];
    watch.extend_from_slice(keys);
    let mut out = vec![watch];
    out.extend(between.iter().map(|c| c.to_vec()));
    out.extend([vec!["MULTI"], queued.to_vec(), vec!["EXEC"]]);
    out
}

/// Groups of commands; each group runs on a fresh pair of connections.
fn groups() -> Vec<Vec<Vec<&'static str>>> {
    vec![
        // Lua -> RESP conversions.
        vec![
            eval("return 3.99"),
            eval("return -3.99"),
            eval("return {1/0, -1/0, 0/0, 2^63, -2^63, 2^62}"),
            eval("return {1,2,nil,4}"),
            eval("return {1.9, -1.9, 'x', {1, {2}}}"),
            eval("return false"),
            eval("return true"),
            eval("return nil"),
            eval("return {err='My Error'}"),
            eval("return {1,{err='x'},'a'}"),
            eval("return {ok='FINE'}"),
            eval("return {ok=1}"),
            eval("return {err=1}"),
            eval("return {double=1.5}"),
            eval("return redis.status_reply('FINE')"),
            eval("return redis.error_reply('My Error')"),
            eval("return redis.error_reply('oops')"),
            eval("return redis.error_reply('-WRONG thing')"),
            eval("return redis.error_reply(5)"),
            eval("return redis.status_reply({})"),
            eval("return 'a' .. 1"),
            eval("return unpack({1,2})"),
            eval("return coroutine.wrap(function() return 7 end)()"),
            eval("redis.setresp(3); return true"),
            eval("redis.setresp(3); return false"),
            eval("redis.setresp(3); return {double=2.5}"),
            eval("redis.setresp(4)"),
        ],
        // RESP -> Lua conversions, through redis.call.
        vec![
            eval("return redis.call('set','s','hello')"),
            eval("return redis.call('get','s')"),
            eval("return redis.call('get','nokey')"),
            eval("return tostring(redis.call('get','nokey'))"),
            eval("redis.setresp(3); return redis.call('get','nokey')"),
            eval("redis.setresp(3); return tostring(redis.call('get','nokey'))"),
            eval("return redis.call('ping')"),
            eval("return type(redis.call('ping'))"),
            eval("return redis.call('ping').ok"),
            eval("return redis.call('incrbyfloat','f','1.5')"),
            eval("return redis.call('mget','s','nokey')"),
            eval("return redis.call('exists','s','nokey')"),
            eval("return redis.call('SET','x','1','GET')"),
            eval("return redis.call('get', 1)"),
            eval("return redis.call('set', 'k', 1.5)"),
            eval("return redis.call('get', 'k')"),
            eval("return select('#', redis.call('ping'))"),
            vec![
                "EVAL",
                "return KEYS[1]..ARGV[1]..#KEYS..#ARGV",
                "1",
                "a",
                "b",
            ],
            vec![
                "EVAL",
                "return {KEYS[1], ARGV[1], ARGV[2]}",
                "1",
                "k",
                "v",
                "",
            ],
        ],
        // Errors inside redis.call and redis.pcall.
        vec![
            eval("return redis.call('set','s','hello')"),
            eval("return redis.call('nope')"),
            eval("return redis.pcall('nope')"),
            eval("return redis.call('incr')"),
            eval("return redis.call('incr','s')"),
            eval("return redis.pcall('incr','s')"),
            eval("local e = redis.pcall('incr','s'); return e.err"),
            eval("local ok = pcall(redis.call,'incr','s') return tostring(ok)"),
            eval("local ok, e = pcall(redis.call,'incr','s') return e.err"),
            eval("return redis.call('set','k','v','ex','x')"),
            eval("return redis.call('multi')"),
            eval("return redis.call('eval','return 1',0)"),
            eval("return redis.call('hello')"),
            eval("return redis.call('get', {})"),
            eval("return redis.call()"),
            eval("local x = 1\nlocal y = 2\nreturn redis.call('nope')"),
            vec!["EVAL_RO", "return redis.call('set','a','b')", "0"],
            vec!["EVAL_RO", "return redis.call('get','s')", "0"],
        ],
        // Compile and runtime errors, and the sandbox.
        vec![
            eval("return 'a' .. "),
            eval("error('boom')"),
            eval("error({err='X boom'})"),
            eval("local t = nil; return t.x"),
            eval("\n\nerror('on line three')"),
            eval("a = 1"),
            eval("return a"),
            eval("return x.y"),
            eval("_G.x = 1"),
            eval("rawset(_G,'x',1)"),
            eval("string.x = 1"),
            eval("redis.call = nil"),
            eval("return os"),
            eval("return io"),
            eval("return require"),
            eval("return loadfile"),
            eval("return dofile"),
            eval("return print"),
            eval("return tostring(getfenv)"),
            eval("return loadstring('return 5')()"),
            eval("return loadstring('x = 5')()"),
            eval("return string.len('abc')"),
            eval("return math.floor(2.7)"),
            eval("return table.concat({'a','b'}, '-')"),
            eval("return redis.log(redis.LOG_WARNING, 'from a test')"),
            eval(
                "return {redis.LOG_DEBUG, redis.LOG_VERBOSE, redis.LOG_NOTICE, redis.LOG_WARNING}",
            ),
            eval("return redis.REDIS_VERSION"),
            eval("return redis.REDIS_VERSION_NUM"),
            eval("return redis.sha1hex('')"),
            eval("return redis.sha1hex('hello')"),
        ],
        // cjson and bit.
        vec![
            eval("return cjson.encode({1,2,{a=1}})"),
            eval("return cjson.encode({})"),
            eval("return cjson.encode({a='x/y'})"),
            eval("return cjson.encode('a\\1\"\\\\')"),
            eval("return cjson.encode(1.5)"),
            eval("return cjson.encode(100000000000000)"),
            eval("return cjson.encode({[1]=1,[3]=3})"),
            eval("return cjson.encode({[20]=1})"),
            eval("return cjson.encode({true, false, cjson.null})"),
            eval("return cjson.decode('[1,2,{\"a\":3}]')[3].a"),
            eval("return cjson.decode('{\"a\":[1,2.5,\"x\"]}').a"),
            eval("return cjson.decode('nope')"),
            eval("return cjson.decode('null') == cjson.null"),
            eval("return bit.band(7,3)"),
            eval("return bit.tohex(255)"),
            eval("return bit.tohex(-1, -4)"),
            eval("return bit.lshift(1, 31)"),
            eval("return {bit.bnot(0), bit.rol(1, 33), bit.arshift(-256, 4), bit.rshift(-1, 28)}"),
            eval("return {bit.bor(1, 2, 4), bit.bxor(5, 3), bit.tobit(4294967297), bit.bswap(1)}"),
        ],
        // struct and cmsgpack, binary results escaped (see `lua_libs::exact`).
        lua_libs::STRUCT
            .iter()
            .map(|b| eval(lua_libs::exact(b)))
            .collect(),
        lua_libs::CMSGPACK
            .iter()
            .map(|b| eval(lua_libs::exact(b)))
            .collect(),
        // EVAL arguments, EVALSHA and the script cache.
        vec![
            vec!["EVAL", "return 1", "-1"],
            vec!["EVAL", "return 1", "2", "a"],
            vec!["EVAL", "return 1", "x"],
            vec!["EVAL", "return 1"],
            vec!["EVALSHA", "0000000000000000000000000000000000000000", "0"],
            vec!["EVALSHA", "abc", "0"],
            vec!["SCRIPT", "LOAD", "return 'loaded'"],
            vec!["EVALSHA", "c3a6a2ab4ff37b0a1f59a5b8fd6390e38ba1c5dc", "0"],
            vec!["EVALSHA", "C3A6A2AB4FF37B0A1F59A5B8FD6390E38BA1C5DC", "0"],
            vec![
                "EVALSHA_RO",
                "c3a6a2ab4ff37b0a1f59a5b8fd6390e38ba1c5dc",
                "0",
            ],
            vec![
                "SCRIPT",
                "EXISTS",
                "c3a6a2ab4ff37b0a1f59a5b8fd6390e38ba1c5dc",
                "0000000000000000000000000000000000000000",
            ],
            vec!["SCRIPT", "LOAD", "return 'a' .."],
            vec!["SCRIPT", "FLUSH"],
            vec![
                "SCRIPT",
                "EXISTS",
                "c3a6a2ab4ff37b0a1f59a5b8fd6390e38ba1c5dc",
            ],
            vec!["EVALSHA", "c3a6a2ab4ff37b0a1f59a5b8fd6390e38ba1c5dc", "0"],
            vec!["SCRIPT", "FLUSH", "ASYNC"],
            vec!["SCRIPT", "FLUSH", "BOGUS"],
            vec!["SCRIPT", "KILL"],
            vec!["SCRIPT", "BOGUS"],
            vec!["SCRIPT", "LOAD"],
        ],
        // The rate limiter of REDIS_SEMANTICS §7, and scripts inside MULTI.
        vec![
            vec![
                "EVAL",
                "local c = redis.call('INCR', KEYS[1]) if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return c",
                "1",
                "rl",
                "60",
            ],
            vec![
                "EVAL",
                "local c = redis.call('INCR', KEYS[1]) if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return c",
                "1",
                "rl",
                "60",
            ],
            vec!["TTL", "rl"],
            vec!["MULTI"],
            vec!["EVAL", "return redis.call('incr', KEYS[1])", "1", "a"],
            vec!["INCR", "a"],
            vec!["EVAL", "return redis.call('nope')", "0"],
            vec!["EXEC"],
            vec!["GET", "a"],
            // A runtime error keeps the writes made before it.
            eval("redis.call('set', 'b', '1'); error('after the write')"),
            vec!["GET", "b"],
        ],
        // TYPE, TOUCH, RENAME, RENAMENX, COPY (the TTL moves or is copied with the value).
        vec![
            vec!["SET", "k1", "v"],
            vec!["SET", "k2", "v", "EX", "100"],
            vec!["TYPE", "k1"],
            vec!["TYPE", "nokey"],
            vec!["TOUCH", "k1", "k1", "nokey"],
            vec!["RENAME", "nokey", "x"],
            vec!["RENAMENX", "nokey", "x"],
            vec!["RENAME", "k1", "k1"],
            vec!["RENAMENX", "k1", "k1"],
            vec!["RENAME", "k2", "k3"],
            vec!["TTL", "k3"],
            vec!["EXISTS", "k2"],
            vec!["RENAMENX", "k3", "k1"],
            vec!["RENAMENX", "k3", "k4"],
            vec!["GET", "k4"],
            vec!["TTL", "k4"],
            vec!["SET", "k5", "old", "EX", "50"],
            vec!["RENAME", "k1", "k5"],
            vec!["TTL", "k5"],
            vec!["COPY", "k4", "k6"],
            vec!["TTL", "k6"],
            vec!["COPY", "k4", "k6"],
            vec!["COPY", "k4", "k6", "REPLACE"],
            vec!["COPY", "k4", "k4"],
            vec!["COPY", "nokey", "x"],
            vec!["COPY", "k4", "k6", "DB", "0", "REPLACE"],
            vec!["COPY", "k4", "k6", "BOGUS"],
            vec!["COPY", "k4", "k6", "DB"],
            vec!["COPY", "k4", "k6", "DB", "x"],
            vec!["RENAME", "k4"],
            vec!["SET", "k1", "5"],
            vec![
                "EVAL",
                "redis.call('rename', 'k1', 'k2') return redis.call('incr', 'k2')",
                "0",
            ],
            vec!["GET", "k1"],
        ],
        // KEYS and SCAN on a known set (SCAN's order is its own; here one page holds all).
        vec![
            vec!["SET", "user:1:count", "1"],
            vec!["SET", "user:2:sum", "1"],
            vec!["SET", "user:10:count", "1"],
            vec!["SET", "h[x]", "1"],
            vec!["KEYS", "user:?:count"],
            vec!["KEYS", "user:[0-9]:*"],
            vec!["KEYS", "user:[^1]*"],
            vec!["KEYS", "h\\[x]"],
            vec!["KEYS", "nomatch*"],
            vec!["SCAN", "0", "MATCH", "user:?:count", "COUNT", "1000"],
            vec![
                "SCAN", "0", "MATCH", "user:*", "COUNT", "1000", "TYPE", "hash",
            ],
            vec!["SCAN", "x"],
            vec!["SCAN", "0", "COUNT", "0"],
            vec!["SCAN", "0", "COUNT"],
            vec!["SCAN", "0", "COUNT", "x"],
            vec!["SCAN", "0", "BOGUS", "1"],
            vec![
                "EVAL",
                "redis.call('set','zz','1') return redis.call('keys','z*')",
                "0",
            ],
            vec!["EVAL", "return redis.call('type','zz')", "0"],
            vec!["MULTI"],
            vec!["SET", "mm", "1"],
            vec!["KEYS", "mm"],
            vec!["DEL", "mm"],
            vec!["KEYS", "mm"],
            vec!["EXEC"],
        ],
        // FLUSHDB / FLUSHALL, also inside MULTI and scripts; WATCH aborted by them.
        vec![
            vec!["SET", "k1", "1"],
            vec!["SET", "k2", "2", "EX", "100"],
            vec!["FLUSHDB", "BOGUS"],
            vec!["FLUSHDB", "ASYNC", "SYNC"],
            vec!["WATCH", "k1", "nokey"],
            vec!["FLUSHDB"],
            vec!["MULTI"],
            vec!["GET", "k1"],
            vec!["EXEC"],
            vec!["DBSIZE"],
            vec!["KEYS", "*"],
            vec!["SCAN", "0"],
            vec!["SET", "k3", "3"],
            vec!["WATCH", "nokey"],
            vec!["FLUSHALL", "SYNC"],
            vec!["MULTI"],
            vec!["PING"],
            vec!["EXEC"],
            vec!["MULTI"],
            vec!["SET", "a", "1"],
            vec!["FLUSHALL"],
            vec!["SET", "b", "2"],
            vec!["EXEC"],
            vec!["KEYS", "*"],
            vec![
                "EVAL",
                "redis.call('set','s',1) redis.call('flushdb') return redis.call('keys', '*')",
                "0",
            ],
            vec!["FLUSHDB", "ASYNC"],
            vec!["RANDOMKEY"],
        ],
        // WATCH: EXEC aborted (null) by a change on the same connection, kept otherwise.
        [
            vec![vec!["SET", "w", "1"]],
            watched(&["w"], &[&["SET", "w", "2"]], &["INCR", "w"]),
            vec![vec!["GET", "w"]],
            watched(&["w", "x"], &[], &["INCR", "w"]),
            watched(
                &["w"],
                &[&["EVAL", "return redis.call('incr', KEYS[1])", "1", "w"]],
                &["INCR", "w"],
            ),
            watched(&["w"], &[&["UNWATCH"], &["SET", "w", "5"]], &["GET", "w"]),
            vec![
                vec!["WATCH", "w"],
                vec!["MULTI"],
                vec!["WATCH", "w"],
                vec!["DISCARD"],
            ],
            vec![
                vec!["SET", "w", "6"],
                vec!["MULTI"],
                vec!["GET", "w"],
                vec!["EXEC"],
            ],
            watched(
                &["nokey"],
                &[&["SET", "nokey", "1"], &["DEL", "nokey"]],
                &["PING"],
            ),
            vec![vec!["WATCH"], vec!["UNWATCH", "x"]],
        ]
        .concat(),
    ]
}

/// KEYS and SCAN answer in an order of their own: the reply's lines, bulk strings sorted.
fn unordered(reply: &str) -> String {
    let lines: Vec<&str> = reply.split("\r\n").collect();
    let mut headers = Vec::new();
    let mut bulks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].starts_with('$') && i + 1 < lines.len() {
            bulks.push(format!("{}\r\n{}", lines[i], lines[i + 1]));
            i += 2;
        } else {
            headers.push(lines[i].to_string());
            i += 1;
        }
    }
    bulks.sort();
    format!("{headers:?} {bulks:?}")
}

fn run(tally_addr: &str, redis_addr: &str, resp3: bool) {
    let mut del = vec!["DEL"];
    del.extend_from_slice(KEYS);
    let setup = [del, vec!["SCRIPT", "FLUSH"]];
    differential::assert_same(
        tally_addr,
        redis_addr,
        resp3,
        &setup,
        &groups(),
        |cmd, r| {
            if ["KEYS", "SCAN"].contains(&cmd[0]) {
                unordered(&r)
            } else {
                r
            }
        },
    );
}

#[test]
fn scripts_and_watch_match_redis_resp2() {
    let redis = RedisServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let tally = Proc::start(d.path(), &[]);
    run(&tally.resp, &redis.addr, false);
}

#[test]
fn scripts_and_watch_match_redis_resp3() {
    let redis = RedisServer::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let tally = Proc::start(d.path(), &[]);
    run(&tally.resp, &redis.addr, true);
}
