#!/usr/bin/env bash
# Tally's RESP port vs redis-server with the same durability promise, in one run on one machine:
#   redis-server --appendonly yes --appendfsync always   (fsync before reply)
#   tally serve                                          (fsync before reply, the default)
# Both get `redis-benchmark -t incr,get -c CLIENTS -n REQUESTS`, alternating ROUNDS times.
# Usage: bash benches/redis_compare.sh [requests] [rounds] [clients]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}; rounds=${2:-2}; clients=${3:-50}
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null \
    || { echo "needs redis-server and redis-benchmark (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rport=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work/redis" --save '' \
    --appendonly yes --appendfsync always > /dev/null &
target/release/tally serve --data-dir "$work/tally" --grpc-addr 127.0.0.1:0 \
    --resp-addr 127.0.0.1:0 --log-level warn > "$work/tally.out" &
for _ in $(seq 100); do grep -q "serving RESP" "$work/tally.out" 2>/dev/null && break; sleep 0.05; done
tport=$(sed -n 's/.*serving RESP on 127.0.0.1://p' "$work/tally.out")
sleep 0.3

declare -A sum
bench() { # $1 label, $2 port
    while IFS=, read -r test rps _; do
        test=${test//\"/}; rps=${rps//\"/}
        echo "$1 $test $rps"
        sum[$1-$test]=$(awk -v a="${sum[$1-$test]:-0}" -v b="$rps" 'BEGIN { print a + b }')
    done < <(redis-benchmark -p "$2" -t incr,get -c "$clients" -n "$n" --csv | tail -n +2)
}
for _ in $(seq "$rounds"); do
    bench redis-always "$rport"
    bench tally "$tport"
done
for t in INCR GET; do
    awk -v a="${sum[tally-$t]}" -v b="${sum[redis-always-$t]}" -v t="$t" -v c="$clients" \
        'BEGIN { printf "%s c=%s: tally %.0f/s, redis always %.0f/s, ratio %.2f\n", t, c, a/'"$rounds"', b/'"$rounds"', a/b }'
done
