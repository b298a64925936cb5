#!/usr/bin/env bash
# Benchmarks offstate against tower-sessions and against Redis itself, on
# loopback, and writes bench/results/REPORT.md and bench/results/http.svg.
#
#   scripts/bench.sh                 # the full run (about 7 minutes after the build)
#   BENCH_SECONDS=3 scripts/bench.sh # shorter runs while developing
#
# Needs redis-server, redis-cli and redis-benchmark (apt: redis-server,
# redis-tools), memcached, moto_server (scripts/setup.sh installs these),
# and valgrind for the instruction counts (apt: valgrind;
# scripts/icount.sh measures one case of them). The run starts its own redis-server, memcached and moto on free
# loopback ports and stops them at the end; nothing else is touched.
#
# Settings (environment):
#   BENCH_SECONDS        length of each 90/10 HTTP run (default 10)
#   BENCH_SHORT_SECONDS  length of each read-only / write-only run (default 6,
#                        in 3 turns; with 3, two runs of code with the same
#                        instruction counts gave adds-only ratios of 1.11
#                        and 0.99)
#   BENCH_CLIENTS        concurrent clients (default 50)
#   BENCH_RAW_REQUESTS   requests per redis-benchmark test (default 200000)
#   BENCH_CRITERION_SECONDS  criterion measurement time per case (default 3)
#   BENCH_ICOUNT_REQUESTS    requests in the two callgrind runs of each
#                            instruction count, SMALL,LARGE (default 200,1200)
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

seconds=${BENCH_SECONDS:-10}
short=${BENCH_SHORT_SECONDS:-6}
clients=${BENCH_CLIENTS:-50}
raw=${BENCH_RAW_REQUESTS:-200000}
crit=${BENCH_CRITERION_SECONDS:-3}
icount=${BENCH_ICOUNT_REQUESTS:-200,1200}

# moto_server from scripts/setup.sh, if it is not on PATH already.
if ! command -v moto_server >/dev/null 2>&1 && [ -x "$root/.offstate-run/venv/bin/moto_server" ]; then
    export PATH="$root/.offstate-run/venv/bin:$PATH"
fi
for program in redis-server redis-cli redis-benchmark memcached; do
    if ! command -v "$program" >/dev/null 2>&1; then
        echo "bench.sh: $program not found; run scripts/setup.sh (apt: redis-server redis-tools memcached)" >&2
        exit 1
    fi
done
if ! command -v valgrind >/dev/null 2>&1; then
    echo "bench.sh: valgrind not found, needed for the instruction counts (apt: valgrind)" >&2
    exit 1
fi

echo "== build (release)" >&2
cargo build --release -p offstate-bench --bins
cargo bench -p offstate-bench --bench overhead --no-run

echo "== 1. middleware overhead (criterion)" >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
cargo bench -p offstate-bench --bench overhead -- \
    --warm-up-time 1 --measurement-time "$crit" --noplot

echo "== 2-7. HTTP, instructions per request, backend limit, lost updates, per-backend counts, bytes per session" >&2
"$target_dir/release/offstate-bench" run \
    --seconds "$seconds" --short-seconds "$short" --clients "$clients" \
    --raw-requests "$raw" --icount-requests "$icount" \
    --out "$root/bench/results" --criterion "$target_dir/criterion" >/dev/null

echo "== done: bench/results/REPORT.md, bench/results/http.svg" >&2
