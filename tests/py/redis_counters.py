"""Classic redis-py counter code, unchanged, against Tally's RESP port.

Usage: python3 redis_counters.py HOST PORT PROTOCOL   (PROTOCOL is 2 or 3)
Exits non-zero with the failing assertion on any difference from Redis's behaviour.
"""
import sys
import time

import redis

host, port, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = redis.Redis(host=host, port=port, decode_responses=True, protocol=proto)
p = f"py{proto}:"

# INCRBY on a new and an existing key; negative increments.
assert r.incrby(p + "views", 5) == 5
assert r.incrby(p + "views", 10) == 15
assert r.incrby(p + "views", -20) == -5
assert r.incr(p + "views") == -4
assert r.decr(p + "views") == -5
assert r.decrby(p + "views", 5) == -10
assert r.incr(p + "hits", 1) == 1
assert r.get(p + "views") == "-10"

# INCRBYFLOAT: float from the call, the exact string from GET.
assert r.incrbyfloat(p + "f", 0.1) == 0.1
assert r.incrbyfloat(p + "f", 0.2) == 0.3
assert r.get(p + "f") == "0.3"
r.set(p + "g", 1)
assert r.incrbyfloat(p + "g", -1.1) == -0.1
assert r.get(p + "g") == "-0.1"
r.set(p + "g", "10.5")
assert r.incrbyfloat(p + "g", 0.1) == 10.6 and r.get(p + "g") == "10.6"
r.set(p + "g", 1)
assert r.incrbyfloat(p + "g", 1.0) == 2.0 and r.get(p + "g") == "2"
assert r.incr(p + "g") == 3

# Errors: ResponseError with Redis's message (ERR prefix stripped by redis-py).
r.set(p + "greeting", "hello")
try:
    r.incrby(p + "greeting", 1)
    raise AssertionError("INCRBY on 'hello' must fail")
except redis.exceptions.ResponseError as e:
    assert str(e) == "value is not an integer or out of range", str(e)
assert r.get(p + "greeting") == "hello"
r.set(p + "max", 9223372036854775807)
try:
    r.incr(p + "max")
    raise AssertionError("overflow must fail")
except redis.exceptions.ResponseError as e:
    assert str(e) == "increment or decrement would overflow", str(e)
try:
    r.incrbyfloat(p + "greeting", 1.5)
    raise AssertionError("INCRBYFLOAT on 'hello' must fail")
except redis.exceptions.ResponseError as e:
    assert str(e) == "value is not a valid float", str(e)
try:
    r.expire(p + "views", 10, nx=True, xx=True)
    raise AssertionError("NX with XX must fail")
except redis.exceptions.ResponseError as e:
    assert str(e) == "NX and XX, GT or LT options at the same time are not compatible", str(e)

# The INCR-then-EXPIRE rate limiter with a short window.
LIMIT, WINDOW_MS = 3, 300
def hit(key):
    n = r.incr(key)
    if n == 1:
        r.pexpire(key, WINDOW_MS)
    return n <= LIMIT

key = p + "rl:alice"
assert [hit(key) for _ in range(5)] == [True, True, True, False, False]
assert 0 < r.pttl(key) <= WINDOW_MS
time.sleep(WINDOW_MS / 1000 + 0.1)
assert r.get(key) is None and r.ttl(key) == -2
assert hit(key) and r.get(key) == "1"

# The race-free limiter: MULTI; SET key 0 EX w NX; INCR key; EXEC.
pipe = r.pipeline(transaction=True)
pipe.set(p + "rl2", 0, ex=60, nx=True).incr(p + "rl2")
assert pipe.execute() == [True, 1]
pipe.set(p + "rl2", 0, ex=60, nx=True).incr(p + "rl2")
assert pipe.execute() == [None, 2]
assert 55 <= r.ttl(p + "rl2") <= 60

# Rate limiters in one command: redis-cell's CL.THROTTLE and Redis 8.8's INCREX.
cell = ("CL.THROTTLE", p + "cell", 15, 30, 60)
assert r.execute_command(*cell) == [0, 16, 15, -1, 2]
for _ in range(15):
    assert r.execute_command(*cell)[0] == 0
limited, limit, remaining, retry, reset = r.execute_command(*cell)
assert (limited, limit, remaining) == (1, 16, 0) and 1 <= retry <= 2 and 30 <= reset <= 32, retry
assert [r.increx(p + "rx", ubound=2, ex=60, enx=True) for _ in range(3)] == [[1, 1], [2, 1], [2, 0]]
assert 55 <= r.ttl(p + "rx") <= 60
assert r.increx(p + "rx", byint=-5, lbound=0, saturate=True) == [0, -2]
got = r.increx(p + "rxf", byfloat=0.5, ubound=1)
assert got == (["0.5", "0.5"] if proto == 2 else [0.5, 0.5]), got
try:
    r.execute_command("INCREX", p + "rx", "BOGUS")
    raise AssertionError("INCREX BOGUS must fail")
except redis.exceptions.ResponseError as e:
    assert str(e) == "syntax error", str(e)

# Expiry calls and the other string commands.
assert r.set(p + "s", "v", ex=100) is True
assert r.set(p + "s", "w", nx=True) is None
assert r.set(p + "s", "w", xx=True, get=True) == "v"
assert r.ttl(p + "s") == -1
assert r.expire(p + "s", 100) is True and r.expire(p + "s", 50, gt=True) is False
assert r.expire(p + "missing", 10) is False
assert r.persist(p + "s") is True and r.persist(p + "s") is False
assert r.ttl(p + "missing") == -2 and r.pttl(p + "s") == -1
assert r.expireat(p + "s", 4102444800) is True and r.expiretime(p + "s") == 4102444800
assert r.getex(p + "s", persist=True) == "w" and r.ttl(p + "s") == -1
assert r.getdel(p + "s") == "w" and r.get(p + "s") is None
assert r.mset({p + "a": 1, p + "b": 2}) is True
assert r.mget(p + "a", p + "b", p + "zz") == ["1", "2", None]
assert r.exists(p + "a", p + "a", p + "zz") == 2
assert r.delete(p + "a", p + "a", p + "b") == 2
assert r.getset(p + "c", "x") is None and r.getset(p + "c", "y") == "x"
assert r.setnx(p + "c", "z") is False
assert r.ping() is True
assert r.dbsize() > 0
assert "redis_version" in r.info()
print(f"redis-py protocol {proto}: ok")
