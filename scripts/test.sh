#!/usr/bin/env bash
# The one command that tests everything on a fresh machine: installs the
# servers the tests need, checks formatting and lints, and runs every test
# against real servers that the tests start and stop themselves.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

step "install test servers (redis, memcached, moto, nginx, chromium)"
bash scripts/setup.sh

step "local images for the container-backed tests (no registry needed)"
bash scripts/build-images.sh
# Machines that can pull may point these at the official images instead.
export OFFSTATE_REDIS_IMAGE="${OFFSTATE_REDIS_IMAGE:-offstate-local/redis:7}"
export OFFSTATE_MEMCACHED_IMAGE="${OFFSTATE_MEMCACHED_IMAGE:-offstate-local/memcached:1.6}"
# Fixtures that do not ask for a source run on processes (the quickest);
# the container tests and the container half of each conformance suite ask
# for containers, which this does not change.
export OFFSTATE_TEST_BACKEND="${OFFSTATE_TEST_BACKEND:-process}"

# A clean clone builds once: incremental state would only cost disk.
export CARGO_INCREMENTAL=0

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "docs: rustdoc with warnings denied, long files explained"
bash scripts/check-docs.sh
# The public API is committed (api/*.txt): a change to it shows in review.
python3 scripts/public-api.py --check

step "cargo test (all crates, real servers)"
cargo test --workspace --no-fail-fast

step "fuzz every parser that sees outside input (short, bounded run)"
bash scripts/fuzz.sh all 5

step "no test container or network left behind"
# Fixtures remove their containers when dropped; only a killed test binary
# leaves any (the next test run removes those, by the owner PID label).
if [[ -n "$(docker ps -aq --filter label=offstate-test)$(docker network ls -q --filter label=offstate-test)" ]]; then
  docker ps -a --filter label=offstate-test
  docker network ls --filter label=offstate-test
  echo "test containers or networks were left behind" >&2
  exit 1
fi

step "all checks passed"
