#!/usr/bin/env python3
"""Tally vs Redis with the same durability promise, side by side in one run on one machine.

    python3 benches/compare.py [--secs 5] [--rounds 2] [--only throughput|footprint|api|scripts]

Throughput (the ratio table):
  * starts redis-server twice (`appendonly yes` with `appendfsync always`, and with `everysec`)
    and Tally twice (`--fsync always`, the default, and `--fsync periodic`), all on loopback with
    data in a temporary directory;
  * measures the same disk's raw `write(64 B) + fdatasync` rate (`tally bench --raw-fsync`);
  * runs `redis-benchmark -t incr -r 1000` at 1, 16 and 50 clients against every server, and
    `tally bench` (gRPC Incr, 1000 keys) at 1, 16 and 64 in flight against both Tallys (over
    up to 4 HTTP/2 connections: one connection is one hyper task, i.e. one core);
  * runs the same loads against `tally ceiling` (the same client, parser and tonic stack
    answering from memory, no engine, no log): the most any server reaches here;
  * samples each server's CPU (utime + stime from /proc/PID/stat) across every RESP run and
    prints it per acknowledged INCR;
  * alternates the servers inside every round (so a slow minute hits all of them) and prints
    the mean of the rounds and the ratios the performance issue asks about.

Footprint:
  * restart time with 1,000,000 records in the WAL tail (loaded, kill -9, time to "serving");
  * RSS holding 1,000,000 counters, Tally vs Redis (`INCR c:<i>` for i < 1M, via
    `redis-cli --pipe`), and Tally's on-disk bytes per counter after a checkpoint.

API (Tally alone, `--fsync always`; the gRPC API issue's two goals):
  * gRPC `Incr` with a new request id on every call vs without, at 16 and 64 in flight
    (goal >= 0.9x);
  * a `Txn` of 100 `Incr` ops at 16 in flight, in increments per second, vs unary `Incr` at 16
    in flight (goal >= 10x).

Scripts (the scripting issue's goal):
  * `redis-benchmark -c 50 EVALSHA <sha> 1 rl:<rand> 60` with the incr-then-expire limiter,
    Tally `--fsync always` against Redis `appendfsync always` (goal >= 1.0x), with each
    server's CPU per script.

Needs redis-server, redis-benchmark, redis-cli (Debian's redis-server package). Builds the
release binary first. Never run it while something else loads the machine.
"""

import argparse
import csv
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TALLY = os.path.join(ROOT, "target", "release", "tally")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing listening on {port} after {timeout}s")


class Server:
    def __init__(self, name, argv, resp_port, grpc_port=None):
        self.name, self.resp_port, self.grpc_port = name, resp_port, grpc_port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(resp_port, self.proc)
        if grpc_port:
            wait_port(grpc_port, self.proc)

    def cpu_secs(self):
        """utime + stime of the server process so far (all its threads), in seconds."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis(name, work, fsync):
    port = free_port()
    d = os.path.join(work, name)
    os.makedirs(d)
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
            "--appendonly", "yes", "--appendfsync", fsync]
    return Server(name, argv, port)


def tally(name, work, fsync, extra=()):
    rport, gport = free_port(), free_port()
    argv = [TALLY, "serve", "--data-dir", os.path.join(work, name), "--grpc-addr",
            f"127.0.0.1:{gport}", "--resp-addr", f"127.0.0.1:{rport}", "--log-level", "warn",
            "--fsync", fsync, *extra, *os.environ.get("TALLY_EXTRA", "").split()]
    return Server(name, argv, rport, gport)


def ceiling(name):
    rport, gport = free_port(), free_port()
    argv = [TALLY, "ceiling", "--grpc-addr", f"127.0.0.1:{gport}", "--resp-addr",
            f"127.0.0.1:{rport}"]
    return Server(name, argv, rport, gport)


def redis_benchmark(port, clients, secs, server=None):
    """(ops/s, p99 us, server CPU us per INCR): the last from the server's utime + stime across
    the run, divided by the requests (all acknowledged: redis-benchmark counts replies)."""
    # Size the run to about `secs` seconds at the rates seen on a 2-core VM.
    n = int(secs * {1: 5000, 16: 40000}.get(clients, 70000))
    cpu0 = server.cpu_secs() if server else 0
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "incr", "-r", "1000", "-c",
                          str(clients), "-n", str(n), "--csv"],
                         check=True, capture_output=True, text=True).stdout
    cpu = (server.cpu_secs() - cpu0) * 1e6 / n if server else 0
    row = list(csv.DictReader(io.StringIO(out)))[0]
    return float(row["rps"]), float(row["p99_latency_ms"]) * 1000, cpu


LIMITER = ("local c = redis.call('INCR', KEYS[1]) "
           "if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return c")


def scripts(a, work):
    """EVALSHA of the incr-then-expire limiter (REDIS_SEMANTICS §7), 50 clients, durable:
    Tally `always` against Redis `always`, with each server's CPU per script."""
    servers = {"redis-always": redis("redis-always-eval", work, "always"),
               "tally": tally("tally-eval", work, "always")}
    res = {k: [] for k in servers}
    try:
        for _ in range(a.rounds):
            for name, srv in servers.items():
                sha = subprocess.run(["redis-cli", "-p", str(srv.resp_port), "SCRIPT", "LOAD", LIMITER],
                                     check=True, capture_output=True, text=True).stdout.strip()
                n = int(a.secs * 40000)
                cpu0 = srv.cpu_secs()
                out = subprocess.run(["redis-benchmark", "-p", str(srv.resp_port), "-c", "50", "-n",
                                      str(n), "-r", "1000", "--csv", "EVALSHA", sha, "1",
                                      "rl:__rand_int__", "60"],
                                     check=True, capture_output=True, text=True).stdout
                cpu = (srv.cpu_secs() - cpu0) * 1e6 / n
                row = list(csv.DictReader(io.StringIO(out)))[0]
                res[name].append((float(row["rps"]), cpu))
    finally:
        for srv in servers.values():
            srv.stop()
    best = {k: max(v) for k, v in res.items()}
    print("\nEVALSHA limiter, 50 clients, durable (best of rounds)")
    for k, (ops, cpu) in best.items():
        print(f"  {k:14s} {ops:10.0f}/s  server CPU {cpu:5.1f} us/script")
    print(f"  tally/redis    {best['tally'][0] / best['redis-always'][0]:.2f}x")


def tally_bench(args, secs):
    out = subprocess.run([TALLY, "bench", *args, "--duration", str(secs)], check=True,
                         capture_output=True, text=True).stdout
    f = dict(re.findall(r"(\w+)=(\S+)", out))
    if int(f.get("errors", "0")) > 0:
        sys.exit(f"tally bench {args} got errors: {out}")
    return float(f["ops_per_sec"]), float(f["p99_us"])


def throughput(a, work):
    servers = {
        "redis-always": redis("redis-always", work, "always"),
        "tally": tally("tally", work, "always"),
        "redis-everysec": redis("redis-everysec", work, "everysec"),
        "tally-periodic": tally("tally-periodic", work, "periodic"),
        # The same client against a server that does no work (`tally ceiling`).
        "ceiling": ceiling("ceiling"),
    }
    res = {}  # (target, load) -> [(ops, p99)]

    def add(key, v):
        res.setdefault(key, []).append(v)
        cpu = f"  cpu {v[2]:5.1f} us/op" if len(v) > 2 and v[2] else ""
        print(f"  {key[0]:15} {key[1]:12} {v[0]:9.0f} ops/s  p99 {v[1]:7.0f} us{cpu}", flush=True)

    try:
        for r in range(a.rounds):
            print(f"round {r + 1}/{a.rounds}", flush=True)
            add(("disk", "raw-fsync"), tally_bench(["--raw-fsync", work], a.secs))
            for c in (1, 16, 50):
                for name, s in servers.items():
                    add((name, f"resp c={c}"), redis_benchmark(s.resp_port, c, a.secs, s))
            for c in (1, 16, 64):
                for name in ("tally", "tally-periodic", "ceiling"):
                    s = servers[name]
                    add((name, f"grpc c={c}"),
                        tally_bench(["--addr", f"http://127.0.0.1:{s.grpc_port}", "--concurrency",
                                     str(c), "--connections", str(min(c, 4)), "--keys", "1000"],
                                    a.secs))
    finally:
        for s in servers.values():
            s.stop()

    def ops(t, load):
        return statistics.mean(v[0] for v in res[(t, load)])

    def p99(t, load):
        return statistics.mean(v[1] for v in res[(t, load)])

    def cpu(t, load):
        return statistics.mean(v[2] for v in res[(t, load)])

    print(f"\nmean of {a.rounds} round(s), {a.secs:g} s per run; ratios are Tally / reference\n")
    print("| load | Tally always | Redis always | ratio | Tally periodic | Redis everysec | ratio |")
    print("|---|---|---|---|---|---|---|")
    for c in (1, 16, 50):
        load = f"resp c={c}"
        print(f"| RESP INCR, {c} clients (ops/s) | {ops('tally', load):.0f} | "
              f"{ops('redis-always', load):.0f} | "
              f"**{ops('tally', load) / ops('redis-always', load):.2f}** | "
              f"{ops('tally-periodic', load):.0f} | {ops('redis-everysec', load):.0f} | "
              f"{ops('tally-periodic', load) / ops('redis-everysec', load):.2f} |")
    for c, rc in ((1, 1), (16, 16), (64, 50)):
        load, rload = f"grpc c={c}", f"resp c={rc}"
        print(f"| gRPC Incr, {c} in flight vs Redis RESP {rc} clients (ops/s) | "
              f"{ops('tally', load):.0f} | {ops('redis-always', rload):.0f} | "
              f"**{ops('tally', load) / ops('redis-always', rload):.2f}** | "
              f"{ops('tally-periodic', load):.0f} | {ops('redis-everysec', rload):.0f} | "
              f"{ops('tally-periodic', load) / ops('redis-everysec', rload):.2f} |")
    print("\nagainst the in-memory ceiling (`tally ceiling`: the same client and stack, no engine, "
          "no log)\n")
    print("| load | ceiling ops/s | Tally always / ceiling | Tally periodic / ceiling | "
          "Redis always / ceiling |")
    print("|---|---|---|---|---|")
    for c in (1, 16, 50):
        load = f"resp c={c}"
        print(f"| RESP INCR, {c} clients | {ops('ceiling', load):.0f} | "
              f"{ops('tally', load) / ops('ceiling', load):.2f} | "
              f"{ops('tally-periodic', load) / ops('ceiling', load):.2f} | "
              f"{ops('redis-always', load) / ops('ceiling', load):.2f} |")
    for c in (1, 16, 64):
        load = f"grpc c={c}"
        print(f"| gRPC Incr, {c} in flight | {ops('ceiling', load):.0f} | "
              f"**{ops('tally', load) / ops('ceiling', load):.2f}** | "
              f"{ops('tally-periodic', load) / ops('ceiling', load):.2f} | |")
    print("\nserver CPU (utime + stime) per acknowledged INCR, us; goal: Tally periodic <= Redis "
          "everysec\n")
    print("| RESP INCR | Tally always | Redis always | Tally periodic | Redis everysec | "
          "periodic / everysec | ceiling |")
    print("|---|---|---|---|---|---|---|")
    for c in (1, 16, 50):
        load = f"resp c={c}"
        print(f"| {c} clients | {cpu('tally', load):.1f} | {cpu('redis-always', load):.1f} | "
              f"{cpu('tally-periodic', load):.1f} | {cpu('redis-everysec', load):.1f} | "
              f"**{cpu('tally-periodic', load) / cpu('redis-everysec', load):.2f}** | "
              f"{cpu('ceiling', load):.1f} |")
    raw = ops("disk", "raw-fsync")
    raw99 = p99("disk", "raw-fsync")
    print(f"\nraw write+fdatasync: {raw:.0f}/s, p99 {raw99:.0f} us")
    print("| 1 client, durable | ops/s | p99 us | p99 / raw fsync p99 | ops / raw fsync rate |")
    print("|---|---|---|---|---|")
    for label, t, load in (("Tally RESP", "tally", "resp c=1"),
                           ("Tally gRPC", "tally", "grpc c=1"),
                           ("Redis always", "redis-always", "resp c=1")):
        print(f"| {label} | {ops(t, load):.0f} | {p99(t, load):.0f} | "
              f"**{p99(t, load) / raw99:.2f}** | {ops(t, load) / raw:.2f} |")


def api(a, work):
    s = tally("tally-api", work, "always")
    res = {}

    def run(label, extra, c):
        v = tally_bench(["--addr", f"http://127.0.0.1:{s.grpc_port}", "--concurrency", str(c),
                         "--connections", str(min(c, 4)), "--keys", "1000", *extra], a.secs)
        res.setdefault(label, []).append(v)
        print(f"  {label:28} {v[0]:9.0f} incr/s  p99 {v[1]:7.0f} us", flush=True)

    try:
        for r in range(a.rounds):
            print(f"api round {r + 1}/{a.rounds}", flush=True)
            for c in (16, 64):
                run(f"incr c={c}", [], c)
                run(f"incr+id c={c}", ["--request-ids"], c)
            run("txn100 c=16", ["--txn-ops", "100"], 16)
    finally:
        s.stop()

    def ops(label):
        return statistics.mean(v[0] for v in res[label])

    print(f"\nmean of {a.rounds} round(s), {a.secs:g} s per run, Tally --fsync always\n")
    print("| load | increments/s | reference | ratio | goal |")
    print("|---|---|---|---|---|")
    for c in (16, 64):
        print(f"| gRPC Incr with a request id, {c} in flight | {ops(f'incr+id c={c}'):.0f} | "
              f"{ops(f'incr c={c}'):.0f} (without) | "
              f"**{ops(f'incr+id c={c}') / ops(f'incr c={c}'):.2f}** | >= 0.9 |")
    print(f"| Txn of 100 Incr, 16 in flight | {ops('txn100 c=16'):.0f} | "
          f"{ops('incr c=16'):.0f} (unary Incr, 16 in flight) | "
          f"**{ops('txn100 c=16') / ops('incr c=16'):.1f}** | >= 10 |")


def pipe_counters(port, n):
    """INCR c:0 .. c:n-1 through redis-cli --pipe (which ends with an ECHO it waits for)."""
    payload = b"".join(b"*2\r\n$4\r\nINCR\r\n$%d\r\nc:%d\r\n" % (len(b"c:%d" % i), i)
                       for i in range(n))
    out = subprocess.run(["redis-cli", "-p", str(port), "--pipe"], input=payload, check=True,
                         capture_output=True).stdout.decode()
    if "errors: 0" not in out:
        sys.exit(f"redis-cli --pipe reported errors: {out}")


def du(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(d, f))
    return total


def footprint(a, work):
    n = a.counters
    print(f"footprint with {n} counters", flush=True)
    r = redis("redis-fp", work, "always")
    try:
        pipe_counters(r.resp_port, n)
        redis_rss = r.rss_kib()
    finally:
        r.stop()

    # Restart with n records in the WAL tail: no checkpoint may run while loading.
    big = ["--checkpoint-bytes", str(1 << 40), "--checkpoint-interval-secs", "100000"]
    t = tally("tally-fp", work, "always", big)
    try:
        pipe_counters(t.resp_port, n)
        loaded_rss = t.rss_kib()
    finally:
        t.stop(signal.SIGKILL)
    wal_bytes = du(os.path.join(work, "tally-fp", "wal"))
    started = time.time()
    t = tally("tally-fp", work, "always", big)
    ready = time.time() - started
    rss_after_restart = t.rss_kib()
    t.stop()  # a graceful stop checkpoints
    disk = du(os.path.join(work, "tally-fp", "sled"))
    print(f"| measure | value |\n|---|---|")
    print(f"| restart with {n} records in the WAL tail ({wal_bytes / 2**20:.0f} MiB), "
          f"start to serving | {ready:.2f} s |")
    print(f"| Tally RSS after loading {n} counters | {loaded_rss / 1024:.0f} MiB |")
    print(f"| Tally RSS after the restart | {rss_after_restart / 1024:.0f} MiB |")
    print(f"| Redis RSS holding the same counters | {redis_rss / 1024:.0f} MiB |")
    print(f"| Tally RSS / Redis RSS (after loading) | **{loaded_rss / redis_rss:.2f}** |")
    print(f"| Tally on-disk bytes per counter after a checkpoint (sled) | {disk / n:.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--secs", type=float, default=5, help="seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    p.add_argument("--counters", type=int, default=1_000_000, help="footprint key count")
    p.add_argument("--only", choices=["throughput", "footprint", "api", "scripts"])
    a = p.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool} (apt-get install redis-server)")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
          f"{subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}")
    with tempfile.TemporaryDirectory(prefix="tally-compare-") as work:
        if a.only in (None, "throughput"):
            throughput(a, work)
        if a.only in (None, "footprint"):
            footprint(a, work)
        if a.only in (None, "api"):
            api(a, work)
        if a.only in (None, "scripts"):
            scripts(a, work)


if __name__ == "__main__":
    main()
