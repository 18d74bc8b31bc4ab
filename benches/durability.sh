#!/usr/bin/env bash
# Durable vs --fsync periodic vs the disk's raw fsync rate, in one run on one machine.
# Usage: bash benches/durability.sh [seconds-per-run]   (builds the release binary first)
# Prints one line per run and the ratios; the server and its data live in a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release --quiet
bin=target/release/tally
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

start() { # $1 = fsync mode; sets addr
    rm -rf "$work/data"
    "$bin" serve --data-dir "$work/data" --grpc-addr 127.0.0.1:0 --resp-addr off --log-level warn --fsync "$1" \
        > "$work/out" &
    for _ in $(seq 100); do grep -q serving "$work/out" 2>/dev/null && break; sleep 0.05; done
    addr=http://$(sed -n 's/.*serving gRPC on //p' "$work/out")
}

declare -A rate
run() { # $1 = label, rest = bench args
    local label=$1; shift
    line=$("$bin" bench "$@" --duration "$secs")
    echo "$label $line"
    rate[$label]=$(sed -n 's/.*ops_per_sec=\([0-9]*\).*/\1/p' <<<"$line")
}

run raw "--raw-fsync" "$work"
for mode in always periodic; do
    start "$mode"
    run "$mode-c1" --addr "$addr" --concurrency 1 --keys 1000
    run "$mode-c64" --addr "$addr" --concurrency 64 --keys 1000
    kill %1; wait %1 2>/dev/null || true
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "ratio always-c1 / raw-fsync      = $(ratio "${rate[always-c1]}" "${rate[raw]}")"
echo "ratio always-c64 / raw-fsync     = $(ratio "${rate[always-c64]}" "${rate[raw]}")"
echo "ratio always-c1 / periodic-c1    = $(ratio "${rate[always-c1]}" "${rate[periodic-c1]}")"
echo "ratio always-c64 / periodic-c64  = $(ratio "${rate[always-c64]}" "${rate[periodic-c64]}")"
