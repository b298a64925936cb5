#!/usr/bin/env bash
# The one command that tests everything on a fresh machine: installs the
# servers the tests need, checks formatting and lints, and runs every test
# against real servers that the tests start and stop themselves.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "install test servers (redis, memcached, moto)"
bash scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (all crates, real servers)"
cargo test --workspace --no-fail-fast

step "all checks passed"
