"""redis-py's scripting and CAS idioms, unchanged, against Tally's RESP port.

Usage: python3 redis_scripts.py HOST PORT PROTOCOL   (PROTOCOL is 2 or 3)
"""
import sys
import threading
import time

import redis

host, port, proto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = redis.Redis(host=host, port=port, decode_responses=True, protocol=proto)
p = f"pys{proto}:"

# register_script: EVALSHA, falling back to SCRIPT LOAD on NOSCRIPT (after a SCRIPT FLUSH).
LIMITER = """
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return c
"""
hit = r.register_script(LIMITER)
assert hit(keys=[p + "rl"], args=[60]) == 1
assert hit(keys=[p + "rl"], args=[60]) == 2
assert 59 <= r.ttl(p + "rl") <= 60
r.script_flush()
assert r.script_exists(hit.sha) == [False]
assert hit(keys=[p + "rl"], args=[60]) == 3
assert r.script_exists(hit.sha) == [True]

# The same script as a rate limiter whose window rolls: a 1 s window, limit 3.
def allowed(key):
    return hit(keys=[key], args=[1]) <= 3

key = p + "window"
assert [allowed(key) for _ in range(5)] == [True, True, True, False, False]
assert r.ttl(key) in (0, 1)
time.sleep(1.2)
assert allowed(key), "the window did not roll"
assert r.get(key) == "1"

# A WATCH CAS loop (r.transaction) with three competing writers: the count is exact.
counter = p + "cas"
r.delete(counter)
PER_WRITER = 200

def writer():
    c = redis.Redis(host=host, port=port, decode_responses=True, protocol=proto)
    for _ in range(PER_WRITER):
        def bump(pipe):
            v = int(pipe.get(counter) or 0)
            pipe.multi()
            pipe.set(counter, v + 1)
        c.transaction(bump, counter)

threads = [threading.Thread(target=writer) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert r.get(counter) == str(3 * PER_WRITER), r.get(counter)

# A WatchError reaches the caller when the watched key changes under a manual pipeline.
with r.pipeline() as pipe:
    pipe.watch(counter)
    r.incr(counter)
    pipe.multi()
    pipe.incr(counter)
    try:
        pipe.execute()
        raise AssertionError("EXEC was not aborted")
    except redis.WatchError:
        pass

# Errors from scripts are ResponseErrors with Redis's text.
try:
    r.eval("return redis.call('nope')", 0)
    raise AssertionError("no error")
except redis.ResponseError as e:
    assert str(e).startswith("Unknown Redis command called from script"), str(e)
try:
    r.evalsha("0" * 40, 0)
    raise AssertionError("no error")
except redis.exceptions.NoScriptError:
    pass
print("ok")
