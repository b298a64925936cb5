#!/usr/bin/env bash
# Instructions per request for one case, counted by callgrind: a figure
# that does not move with the machine's load, for whoever optimises the
# hot path.
#
#   scripts/icount.sh CASE LIB [in-process|http] [--top N]
#
#   CASE  read | add | cached-read | cached-add   (cached-*: offstate over HTTP only)
#   LIB   offstate | tower-sessions | none
#
#   scripts/icount.sh read offstate                # in process (default)
#   scripts/icount.sh add tower-sessions http      # the app server over HTTP
#   scripts/icount.sh cached-read offstate http --top 20
#
# The case runs twice under `valgrind --tool=callgrind`, with SMALL and
# LARGE requests on one existing session; the figure is
# (I_large - I_small) / (LARGE - SMALL), so start-up and warm-up cancel.
# In process, the measured program is the criterion app of
# bench/src/overhead.rs (tower oneshot, in-memory stores). Over HTTP it is
# the bench's app server (`offstate-bench serve`) on a redis-server started
# for the run, and only the app process is counted (HTTP parsing, the
# session layer, the Redis client), not Redis.
#
# Both callgrind files stay in target/icount/; the script prints the
# command that shows where the instructions go:
#   callgrind_annotate --inclusive=yes target/icount/<case>-<LARGE>.callgrind
# With --top N it also prints the N functions with the most inclusive
# instructions per request (same difference of the two runs).
#
# Settings (environment):
#   ICOUNT_REQUESTS  SMALL,LARGE (default 200,1200)
#   OFFSTATE_BENCH_RECORDER=prometheus  in process: install a Prometheus
#                    metrics recorder first (the cost of offstate's metrics;
#                    default: no recorder)
#
# Needs valgrind (apt: valgrind) and, over HTTP, redis-server.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ $# -lt 2 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
case_name=$1
lib=$2
shift 2
place=()
if [ $# -gt 0 ]; then
    case $1 in
        in-process) shift ;;
        http) place=(--http); shift ;;
    esac
fi

if ! command -v valgrind >/dev/null 2>&1; then
    echo "icount.sh: valgrind not found (apt: valgrind)" >&2
    exit 1
fi

nice -n 10 cargo build --release -p offstate-bench --bins >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target_dir/release/offstate-bench" icount --case "$case_name" --lib "$lib" "${place[@]}" \
    --requests "${ICOUNT_REQUESTS:-200,1200}" "$@"
