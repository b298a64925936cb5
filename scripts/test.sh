#!/usr/bin/env bash
# The one command that tests everything on a fresh machine: installs the
# servers the tests need, checks formatting and lints, and runs every test
# against real servers that the tests start and stop themselves.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n==> %s\n' "$*"; }

# Two slow jobs that the checks before the tests do not need run beside
# them, and are waited for (their logs printed) where they are needed:
# installing the servers (mostly network and disk), then, niced so that the
# tests keep the CPU they ask for, building the fuzz targets while the tests
# run (mostly waiting on servers: about a third of the CPU is busy).
logs="$(mktemp -d)"
# On an early exit, the jobs beside are waited for (an apt-get killed
# half-way would leave dpkg locked), not left running.
trap 'wait; rm -rf "$logs"' EXIT
declare -A beside_pids=()
beside() { # NAME COMMAND...
  local name="$1"
  shift
  ("$@") >"$logs/$name.log" 2>&1 &
  beside_pids[$name]=$!
}
await() { # NAME: its log, and its exit status
  local name="$1" status=0
  wait "${beside_pids[$name]}" || status=$?
  step "$name (ran beside the steps above)"
  cat "$logs/$name.log"
  if [ "$status" -ne 0 ]; then
    echo "$name failed (exit $status)" >&2
    exit "$status"
  fi
}

beside "install test servers (redis, memcached, moto, nginx, chromium) and local images" \
  bash -c 'bash scripts/setup.sh && bash scripts/build-images.sh'
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

step "cargo test: build"
cargo test --workspace --no-run

await "install test servers (redis, memcached, moto, nginx, chromium) and local images"
beside "build the fuzz targets" nice -n 19 bash scripts/fuzz.sh all build

step "cargo test (all crates, real servers)"
cargo test --workspace --no-fail-fast

await "build the fuzz targets"
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
